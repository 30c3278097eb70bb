//! The one diff used by start-up (a diff from empty), `apply` and SIGHUP.

use std::collections::BTreeMap;

use crate::{ServiceName, ServiceSpec};

/// Which services a new spec adds, changes, removes or leaves as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<ServiceName>,
    pub changed: Vec<ServiceName>,
    pub removed: Vec<ServiceName>,
    pub unchanged: Vec<ServiceName>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// Compares two sets of services entry by entry: a service is `changed` when any of its
/// validated values differ (so reformatting the file or reordering keys changes nothing).
pub fn diff(
    old: &BTreeMap<ServiceName, ServiceSpec>,
    new: &BTreeMap<ServiceName, ServiceSpec>,
) -> Diff {
    let mut d = Diff::default();
    for (name, spec) in new {
        match old.get(name) {
            None => d.added.push(name.clone()),
            Some(prev) if prev != spec => d.changed.push(name.clone()),
            Some(_) => d.unchanged.push(name.clone()),
        }
    }
    d.removed = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    d
}
