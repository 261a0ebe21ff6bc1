//! What happened on past runs: one event per `restore` and `save`, kept as a rolling window so
//! `envsnap stats` can show hit ratios, restore times and what the cache saves.
//!
//! Recording is best effort: a restore that is done never fails or waits because its event
//! could not be written (a read-only or busy index): [`EventLog::record`] waits at most
//! [`RECORD_WAIT`] for the index and returns the error for the binary to mention under `-v`.
//!
//! Where events are kept is behind [`EventLog`]: the local store keeps them in its index
//! (table `events`, see docs/architecture.md).

use crate::error::Result;
use crate::repo::Store;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Events older than this are pruned (the rolling window).
pub const MAX_AGE: Duration = Duration::from_secs(90 * 24 * 3600);
/// At most this many events are kept (about 20 MB of index at the most).
pub const MAX_EVENTS: i64 = 100_000;
/// The longest an event write waits for another writer's lock on the index.
pub const RECORD_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Restore,
    Save,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Restore => "restore",
            Op::Save => "save",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "restore" => Some(Op::Restore),
            "save" => Some(Op::Save),
            _ => None,
        }
    }
}

/// How a restore ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HitKind {
    Exact,
    Fallback,
    /// Nothing matched, or an adapter refused the match (no interpreter, a drifted apt base).
    Miss,
    /// The restore failed with an error (exit 2).
    Error,
}

impl HitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HitKind::Exact => "exact",
            HitKind::Fallback => "fallback",
            HitKind::Miss => "miss",
            HitKind::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<HitKind> {
        match s {
            "exact" => Some(HitKind::Exact),
            "fallback" => Some(HitKind::Fallback),
            "miss" => Some(HitKind::Miss),
            "error" => Some(HitKind::Error),
            _ => None,
        }
    }
}

impl From<crate::Hit> for HitKind {
    fn from(h: crate::Hit) -> Self {
        match h {
            crate::Hit::Exact => HitKind::Exact,
            crate::Hit::Fallback => HitKind::Fallback,
        }
    }
}

/// One restore or save.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When the operation started (ns since the Unix epoch).
    pub time_ns: i64,
    pub op: Op,
    /// The key asked for (rendered).
    pub key: String,
    /// The template `--key` was given as, when it was one: stats group by it.
    pub template: Option<String>,
    /// The snapshot's key a restore found (None on a miss).
    pub matched_key: Option<String>,
    /// Restores only.
    pub hit: Option<HitKind>,
    /// Snapshot kind: dir, venv, apt.
    pub kind: Option<String>,
    pub files: u64,
    pub bytes: u64,
    /// How long the operation took.
    pub seconds: f64,
    /// The link mode a restore used.
    pub link: Option<String>,
    /// Adapter facts: what a venv restore's fixups rewrote, what an apt restore merged, a
    /// save's new objects.
    pub detail: Option<serde_json::Value>,
}

/// Where events go and come from.
pub trait EventLog {
    /// Append one event, waiting at most about [`RECORD_WAIT`]. Callers treat an error as a
    /// warning: the operation it describes has already succeeded or failed on its own.
    fn record(&self, ev: &Event) -> Result<()>;
    /// Every event at or after `since_ns`, oldest first.
    fn events_since(&self, since_ns: i64) -> Result<Vec<Event>>;
}

impl EventLog for Store {
    fn record(&self, ev: &Event) -> Result<()> {
        let mut idx = self.index();
        idx.set_busy_timeout(RECORD_WAIT)?;
        let r = crate::index::insert_event(&mut idx, ev, MAX_AGE.as_nanos() as i64, MAX_EVENTS);
        let restored = idx.set_busy_timeout(crate::index::BUSY_TIMEOUT);
        r.and(restored)
    }

    fn events_since(&self, since_ns: i64) -> Result<Vec<Event>> {
        crate::index::events_since(&self.index(), since_ns)
    }
}
