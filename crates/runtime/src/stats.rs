//! CPU and resident memory of process trees, from /proc.

use std::collections::HashMap;

/// Cumulative CPU time and current RSS of one process and all its descendants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeSample {
    /// utime + stime of the whole tree, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
}

/// Samples the trees rooted at each of `roots` with one scan of /proc.
pub fn sample_trees(_roots: &[u32]) -> HashMap<u32, TreeSample> {
    HashMap::new()
}

/// Clock ticks per second (for turning tick deltas into CPU %).
pub fn ticks_per_second() -> u64 {
    100
}
