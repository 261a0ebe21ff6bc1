//! What happened on past runs: one event per `restore` and `save`, kept as a rolling window so
//! `envsnap stats` can show hit ratios, restore times and what the cache saves.
//!
//! Recording is best effort: a restore that is done never fails or waits because its event
//! could not be written (a read-only or busy index): [`EventLog::record`] waits at most
//! [`RECORD_WAIT`] for the index and returns the error for the binary to mention under `-v`.
//!
//! Where events are kept is behind [`EventLog`]: the local store keeps them in its index
//! (table `events`, see docs/architecture.md).

use crate::error::{Error, Result};
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

/// The longest a remote event write may take (one small PUT; retries included).
pub const REMOTE_RECORD_WAIT: Duration = Duration::from_secs(3);

/// On a remote, events are small append-only objects, so runners sharing a bucket never
/// contend: `events/<time_ns, 20 digits>-<16 hex>.json`, one JSON event each. `gc --remote`
/// compacts them ([`compact_remote`]) into `events/bundle-<newest time_ns, 20 digits>-<blake3>.jsonl.zst`:
/// zstd JSON lines `{"name": <the event object's name>, "event": …}`. A reader dedupes by
/// name, so a reader listing between a bundle's write and the deletion of its inputs (or two
/// gcs compacting the same events) counts each event once.
impl EventLog for crate::remote::Remote {
    fn record(&self, ev: &Event) -> Result<()> {
        let name = format!("events/{:020}-{}.json", ev.time_ns.max(0), unique_hex());
        let body = serde_json::to_vec(ev).map_err(|e| Error::Other(format!("event JSON: {e}")))?;
        let c = &self.client;
        // The timer is made inside the runtime (`timeout` needs its clock).
        let write = async { tokio::time::timeout(REMOTE_RECORD_WAIT, c.write(&name, body)).await };
        match c.block_on(write)? {
            Ok(r) => r,
            Err(_) => Err(Error::Remote(format!(
                "remote {}: writing {name} took longer than {}s: skipped",
                c.url,
                REMOTE_RECORD_WAIT.as_secs()
            ))),
        }
    }

    fn events_since(&self, since_ns: i64) -> Result<Vec<Event>> {
        let listed = self.list_prefix(EVENTS_DIR)?;
        let wanted: Vec<String> = listed
            .into_iter()
            .filter(|(p, _)| parse_event_name(p).is_some_and(|(_, newest)| newest >= since_ns))
            .map(|(p, _)| p)
            .collect();
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (path, bytes) in get_many(self, wanted)? {
            for (name, ev) in decode_event_object(&path, &bytes) {
                if ev.time_ns >= since_ns && seen.insert(name) {
                    out.push(ev);
                }
            }
        }
        out.sort_by_key(|e| e.time_ns);
        Ok(out)
    }
}

const EVENTS_DIR: &str = "events/";

/// A name no other runner picks: the time, pid and a counter, hashed.
fn unique_hex() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&crate::repo::now_ns().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&N.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes());
    if let Ok(host) = std::fs::read("/proc/sys/kernel/random/boot_id") {
        h.update(&host);
    }
    h.finalize().to_hex()[..16].to_string()
}

/// (is a bundle, the newest event time it holds) from an object name under `events/`.
fn parse_event_name(path: &str) -> Option<(bool, i64)> {
    let name = path.strip_prefix(EVENTS_DIR)?;
    let (bundle, rest) = match name.strip_prefix("bundle-") {
        Some(r) => (true, r),
        None => (false, name),
    };
    let t: i64 = rest.get(..20)?.parse().ok()?;
    Some((bundle, t))
}

#[derive(Serialize, Deserialize)]
struct BundleLine {
    name: String,
    event: Event,
}

/// The events an object holds, each with the name it was recorded under. Unreadable objects
/// hold none (a foreign or damaged object never fails `stats`).
fn decode_event_object(path: &str, bytes: &[u8]) -> Vec<(String, Event)> {
    match parse_event_name(path) {
        Some((false, _)) => serde_json::from_slice(bytes)
            .map(|e| vec![(path.to_string(), e)])
            .unwrap_or_default(),
        Some((true, _)) => zstd::decode_all(bytes)
            .ok()
            .map(|raw| {
                raw.split(|&b| b == b'\n')
                    .filter_map(|l| serde_json::from_slice::<BundleLine>(l).ok())
                    .map(|l| (l.name, l.event))
                    .collect()
            })
            .unwrap_or_default(),
        None => Vec::new(),
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CompactReport {
    /// Single event objects folded into the new bundle.
    pub compacted: u64,
    /// Events dropped for being older than the window.
    pub expired: u64,
    /// Objects deleted (inputs of the bundle, expired bundles).
    pub deleted_objects: u64,
    pub bundle: Option<String>,
}

/// `gc --remote`'s part for events: fold the single event objects into one bundle (written
/// before its inputs are deleted), and drop events and bundles older than [`MAX_AGE`].
pub fn compact_remote(remote: &crate::remote::Remote, dry_run: bool) -> Result<CompactReport> {
    let cutoff = crate::repo::now_ns() - MAX_AGE.as_nanos() as i64;
    let mut rep = CompactReport::default();
    let listed = remote.list_prefix(EVENTS_DIR)?;
    let mut singles = Vec::new();
    let mut delete = Vec::new();
    for (p, _) in listed {
        match parse_event_name(&p) {
            Some((true, newest)) if newest < cutoff => delete.push(p),
            Some((false, _)) => singles.push(p),
            _ => {}
        }
    }
    let mut lines = Vec::new();
    let mut newest = 0;
    for (path, bytes) in get_many(remote, singles)? {
        let evs = decode_event_object(&path, &bytes);
        if evs.is_empty() {
            continue; // not ours to fold or delete
        }
        for (name, event) in evs {
            if event.time_ns < cutoff {
                rep.expired += 1;
            } else {
                newest = newest.max(event.time_ns);
                lines.push(BundleLine { name, event });
                rep.compacted += 1;
            }
        }
        delete.push(path);
    }
    if !lines.is_empty() {
        let mut raw = Vec::new();
        for l in &lines {
            serde_json::to_writer(&mut raw, l).map_err(|e| Error::Other(format!("event JSON: {e}")))?;
            raw.push(b'\n');
        }
        let packed = zstd::encode_all(&raw[..], 3).map_err(|e| Error::Other(format!("zstd: {e}")))?;
        let name = format!(
            "{EVENTS_DIR}bundle-{newest:020}-{}.jsonl.zst",
            &blake3::hash(&packed).to_hex()[..32]
        );
        if !dry_run {
            remote.put_small(&name, packed)?;
        }
        rep.bundle = Some(name);
    }
    rep.deleted_objects = delete.len() as u64;
    if !dry_run {
        delete_many(remote, delete)?;
    }
    Ok(rep)
}

/// Read objects in parallel; one deleted since it was listed (compacted) is skipped.
fn get_many(remote: &crate::remote::Remote, paths: Vec<String>) -> Result<Vec<(String, Vec<u8>)>> {
    use futures::StreamExt;
    let c = &remote.client;
    type Got = Result<Option<(String, Vec<u8>)>>;
    let got: Vec<Got> = c.block_on(
        futures::stream::iter(paths)
            .map(|p| async move { Ok(c.read_opt(&p).await?.map(|b| (p, b))) })
            .buffered(crate::remote::client::CONCURRENCY)
            .collect(),
    )?;
    let mut out = Vec::new();
    for g in got {
        out.extend(g?);
    }
    Ok(out)
}

/// Delete objects in parallel (deleting one already gone is fine).
fn delete_many(remote: &crate::remote::Remote, paths: Vec<String>) -> Result<()> {
    use futures::StreamExt;
    let c = &remote.client;
    let done: Vec<Result<()>> = c.block_on(
        futures::stream::iter(paths)
            .map(|p| async move { c.delete(&p).await })
            .buffer_unordered(crate::remote::client::CONCURRENCY)
            .collect(),
    )?;
    done.into_iter().collect()
}
