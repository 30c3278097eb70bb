//! The embedded store: one SQLite file in `data_dir` (WAL mode).
//!
//! It is the record of desired state and of what berth did: each service's entry from
//! the file (what `apply` diffs against), what was set at run time (scale, stopped,
//! maintenance, current release), releases, instance records (what re-adoption reads
//! after a restart of berth) and a bounded event log.
//!
//! **Boundary:** only this module knows SQL. Values are JSON of the `spec` and
//! `instance` types, so a schema change of those types needs no migration as long as
//! serde can read old rows.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use spec::ServiceSpec;

use crate::instance::Instance;

/// How many events the log keeps; older ones are deleted.
pub const EVENTS_KEPT: i64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store: corrupt record: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A service's desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub name: String,
    /// The service's entry as last applied from the file.
    pub spec: ServiceSpec,
    /// Set by `berth scale`; overrides `spec.instances` until the file's entry changes.
    pub scale: Option<u32>,
    /// Set by `berth stop`, cleared by `berth start`.
    pub stopped: bool,
    pub maintenance: bool,
    /// The live release number.
    pub release: u32,
    /// Bumped by every restart and release change: instances of an older rollout are
    /// replaced.
    pub rollout: u64,
    /// The number of the next instance id (`NAME-N`).
    pub next_index: u32,
    /// The deploy in progress, if any.
    #[serde(default)]
    pub deploy: Option<crate::deploy::Deploy>,
}

impl ServiceRecord {
    /// How many instances should run.
    pub fn desired(&self) -> u32 {
        if self.stopped {
            0
        } else {
            self.scale.unwrap_or(self.spec.instances)
        }
    }
}

/// One release of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub service: String,
    pub version: u32,
    /// live | deploying | failed | rolled-back | superseded
    pub status: String,
    pub created_ms: u64,
    pub trigger: String,
    pub reason: Option<String>,
    /// The spec its instances run.
    pub spec: ServiceSpec,
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub seq: u64,
    pub time_ms: u64,
    pub service: Option<String>,
    pub instance: Option<String>,
    pub kind: String,
    pub message: String,
}

#[derive(Debug)]
pub struct Store {
    db: Connection,
}

impl Store {
    /// Opens (and creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS services(name TEXT PRIMARY KEY, data TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS releases(service TEXT NOT NULL, version INTEGER NOT NULL,
                 data TEXT NOT NULL, PRIMARY KEY(service, version));
             CREATE TABLE IF NOT EXISTS instances(id TEXT PRIMARY KEY, service TEXT NOT NULL,
                 data TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS events(seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 time_ms INTEGER NOT NULL, service TEXT, instance TEXT, kind TEXT NOT NULL,
                 message TEXT NOT NULL);",
        )?;
        Ok(Store { db })
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> Result<Store> {
        Self::open(Path::new(":memory:"))
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .db
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.db.execute(
            "INSERT INTO meta(key, value) VALUES(?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    pub fn services(&self) -> Result<Vec<ServiceRecord>> {
        self.load_json("SELECT data FROM services ORDER BY name", [])
    }

    pub fn put_service(&self, s: &ServiceRecord) -> Result<()> {
        self.db.execute(
            "INSERT INTO services(name, data) VALUES(?1, ?2)
             ON CONFLICT(name) DO UPDATE SET data = excluded.data",
            params![s.name, serde_json::to_string(s)?],
        )?;
        Ok(())
    }

    /// Deletes a service with its releases (its instances are deleted one by one as they
    /// stop).
    pub fn delete_service(&self, name: &str) -> Result<()> {
        self.db
            .execute("DELETE FROM services WHERE name = ?1", [name])?;
        self.db
            .execute("DELETE FROM releases WHERE service = ?1", [name])?;
        Ok(())
    }

    pub fn releases(&self, service: &str) -> Result<Vec<ReleaseRecord>> {
        self.load_json(
            "SELECT data FROM releases WHERE service = ?1 ORDER BY version DESC",
            [service],
        )
    }

    pub fn release(&self, service: &str, version: u32) -> Result<Option<ReleaseRecord>> {
        let data: Option<String> = self
            .db
            .query_row(
                "SELECT data FROM releases WHERE service = ?1 AND version = ?2",
                params![service, version],
                |r| r.get(0),
            )
            .optional()?;
        Ok(data.map(|d| serde_json::from_str(&d)).transpose()?)
    }

    pub fn put_release(&self, r: &ReleaseRecord) -> Result<()> {
        self.db.execute(
            "INSERT INTO releases(service, version, data) VALUES(?1, ?2, ?3)
             ON CONFLICT(service, version) DO UPDATE SET data = excluded.data",
            params![r.service, r.version, serde_json::to_string(r)?],
        )?;
        Ok(())
    }

    pub fn instances(&self) -> Result<Vec<Instance>> {
        self.load_json("SELECT data FROM instances ORDER BY service, id", [])
    }

    pub fn put_instance(&self, i: &Instance) -> Result<()> {
        self.db.execute(
            "INSERT INTO instances(id, service, data) VALUES(?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET data = excluded.data",
            params![i.id, i.service, serde_json::to_string(i)?],
        )?;
        Ok(())
    }

    pub fn delete_instance(&self, id: &str) -> Result<()> {
        self.db
            .execute("DELETE FROM instances WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Appends an event and trims the log to [`EVENTS_KEPT`].
    pub fn add_event(
        &self,
        time_ms: u64,
        service: Option<&str>,
        instance: Option<&str>,
        kind: &str,
        message: &str,
    ) -> Result<EventRecord> {
        self.db.execute(
            "INSERT INTO events(time_ms, service, instance, kind, message) VALUES(?1, ?2, ?3, ?4, ?5)",
            params![time_ms as i64, service, instance, kind, message],
        )?;
        let seq = self.db.last_insert_rowid();
        if seq % 100 == 0 {
            self.db
                .execute("DELETE FROM events WHERE seq <= ?1", [seq - EVENTS_KEPT])?;
        }
        Ok(EventRecord {
            seq: seq as u64,
            time_ms,
            service: service.map(str::to_owned),
            instance: instance.map(str::to_owned),
            kind: kind.to_owned(),
            message: message.to_owned(),
        })
    }

    /// Events with a sequence number above `after`, oldest first, at most `limit`;
    /// with `after = None`, the last `limit` events.
    pub fn events(&self, after: Option<u64>, limit: u32) -> Result<Vec<EventRecord>> {
        let map = |r: &rusqlite::Row<'_>| {
            Ok(EventRecord {
                seq: r.get::<_, i64>(0)? as u64,
                time_ms: r.get::<_, i64>(1)? as u64,
                service: r.get(2)?,
                instance: r.get(3)?,
                kind: r.get(4)?,
                message: r.get(5)?,
            })
        };
        let cols = "seq, time_ms, service, instance, kind, message";
        let mut out = match after {
            Some(after) => {
                let mut st = self.db.prepare_cached(&format!(
                    "SELECT {cols} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
                ))?;
                st.query_map(params![after as i64, limit], map)?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            }
            None => {
                let mut st = self.db.prepare_cached(&format!(
                    "SELECT {cols} FROM events ORDER BY seq DESC LIMIT ?1"
                ))?;
                let mut v = st
                    .query_map(params![limit], map)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                v.reverse();
                v
            }
        };
        out.truncate(limit as usize);
        Ok(out)
    }

    fn load_json<T: serde::de::DeserializeOwned, P: rusqlite::Params>(
        &self,
        sql: &str,
        p: P,
    ) -> Result<Vec<T>> {
        let mut st = self.db.prepare_cached(sql)?;
        let rows = st.query_map(p, |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            let row: String = row?;
            out.push(serde_json::from_str(&row)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::State;

    #[test]
    fn events_are_ordered_and_followable() {
        let s = Store::in_memory().unwrap();
        for i in 0..5 {
            s.add_event(i, Some("web"), None, "test", &format!("e{i}"))
                .unwrap();
        }
        let last2 = s.events(None, 2).unwrap();
        assert_eq!(
            last2.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["e3", "e4"]
        );
        let after = s.events(Some(last2[0].seq), 10).unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].message, "e4");
    }

    #[test]
    fn the_event_log_is_bounded() {
        let s = Store::in_memory().unwrap();
        for i in 0..(EVENTS_KEPT as u64 + 300) {
            s.add_event(i, None, None, "test", "x").unwrap();
        }
        let n: i64 =
            s.db.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
                .unwrap();
        assert!(n <= EVENTS_KEPT + 100, "{n} events kept");
    }

    #[test]
    fn instances_round_trip() {
        let s = Store::in_memory().unwrap();
        let mut i = Instance::new("web-1".into(), "web".into(), 1, 0, Some(20001));
        i.state = State::Running;
        i.pid = Some(7);
        s.put_instance(&i).unwrap();
        i.restarts = 2;
        s.put_instance(&i).unwrap();
        assert_eq!(s.instances().unwrap(), vec![i]);
        s.delete_instance("web-1").unwrap();
        assert!(s.instances().unwrap().is_empty());
    }

    #[test]
    fn meta_upserts() {
        let s = Store::in_memory().unwrap();
        assert_eq!(s.meta("k").unwrap(), None);
        s.set_meta("k", "1").unwrap();
        s.set_meta("k", "2").unwrap();
        assert_eq!(s.meta("k").unwrap().as_deref(), Some("2"));
    }
}
