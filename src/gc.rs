//! Garbage collection: drop old snapshots, then least recently used ones until the store fits,
//! then every object no snapshot references. Runs under the exclusive store lock.

use crate::error::Result;
use crate::repo::{now_ns, Store};
use crate::store::ObjectId;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Remove snapshots not created or restored within this long (GitHub's rule: 7 days).
    pub max_age: Option<Duration>,
    /// Then remove least recently used snapshots until the objects fit in this many bytes.
    pub max_size: Option<u64>,
    /// Never remove the N most recently used snapshots.
    pub keep_last: usize,
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_size: None,
            keep_last: 0,
            dry_run: false,
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub removed_snapshots: Vec<String>,
    pub kept_snapshots: u64,
    pub removed_objects: u64,
    pub freed_bytes: u64,
    /// Bytes of objects left in the store.
    pub store_bytes: u64,
    pub removed_temp_files: u64,
    /// Staging directories of killed restores (found through `<store>/restores/`), removed.
    pub removed_staging: Vec<std::path::PathBuf>,
    /// Destinations whose old tree a killed `restore --force` had moved aside, put back.
    pub recovered_trees: Vec<std::path::PathBuf>,
    /// Old trees kept because their destination exists again: the user's to delete.
    pub kept_old_trees: Vec<std::path::PathBuf>,
}

pub fn gc(store: &Store, opts: &GcOptions) -> Result<GcReport> {
    let _lock = store.lock_exclusive()?;
    let mut report = GcReport::default();
    let mut snaps = store.index().list(None)?;
    // Most recently used first.
    snaps.sort_by_key(|s| std::cmp::Reverse(s.last_used_ns()));
    let protected: HashSet<i64> = snaps.iter().take(opts.keep_last).map(|s| s.id).collect();

    // Object sizes and reference counts per snapshot.
    let refs = store.index().object_refs()?;
    let mut per_snap: HashMap<i64, HashSet<ObjectId>> = HashMap::new();
    let mut size_of: HashMap<ObjectId, u64> = HashMap::new();
    for (s, o, n) in refs {
        per_snap.entry(s).or_default().insert(o);
        size_of.insert(o, n);
    }
    let mut refcount: HashMap<ObjectId, u64> = HashMap::new();
    for objs in per_snap.values() {
        for o in objs {
            *refcount.entry(*o).or_default() += 1;
        }
    }
    let mut live_bytes: u64 = refcount.keys().map(|o| size_of[o]).sum();

    let mut remove: Vec<i64> = Vec::new();
    let mut drop_snapshot = |id: i64, refcount: &mut HashMap<ObjectId, u64>, live: &mut u64| {
        for o in per_snap.get(&id).into_iter().flatten() {
            let c = refcount.get_mut(o).expect("counted");
            *c -= 1;
            if *c == 0 {
                *live -= size_of[o];
            }
        }
        remove.push(id);
    };
    let now = now_ns();
    let mut remaining = Vec::new();
    for s in &snaps {
        let too_old = opts
            .max_age
            .is_some_and(|a| now - s.last_used_ns() > a.as_nanos() as i64);
        if too_old && !protected.contains(&s.id) {
            drop_snapshot(s.id, &mut refcount, &mut live_bytes);
            report.removed_snapshots.push(s.key.clone());
        } else {
            remaining.push(s);
        }
    }
    if let Some(max) = opts.max_size {
        // Least recently used go first.
        for s in remaining.iter().rev() {
            if live_bytes <= max {
                break;
            }
            if protected.contains(&s.id) {
                continue;
            }
            drop_snapshot(s.id, &mut refcount, &mut live_bytes);
            report.removed_snapshots.push(s.key.clone());
        }
    }
    report.kept_snapshots = (snaps.len() - remove.len()) as u64;
    let live: HashSet<ObjectId> = refcount.into_iter().filter(|(_, c)| *c > 0).map(|(o, _)| o).collect();

    // Sweep: every object file nobody references any more (including leftovers of saves that
    // failed before committing).
    let present = store.objects.scan()?;
    let mut store_bytes = 0;
    for (id, size) in &present {
        if live.contains(id) {
            store_bytes += size;
        } else {
            report.removed_objects += 1;
            report.freed_bytes += size;
        }
    }
    report.store_bytes = store_bytes;
    if opts.dry_run {
        return Ok(report);
    }
    store.index().delete_snapshots(&remove)?;
    // The stat cache first: a save trusts it without checking the object exists, so it must
    // never name an object that is gone (not even after a gc killed midway).
    store.index().retain_statcache(|o| live.contains(o))?;
    let dead: Vec<ObjectId> = present
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !live.contains(id))
        .collect();
    store.index().forget_objects(&dead)?;
    for id in &dead {
        store.objects.delete(id)?;
    }
    // With the exclusive lock held no save is running: every temporary file is garbage.
    if let Ok(rd) = std::fs::read_dir(store.objects.tmp_dir()) {
        for e in rd.flatten() {
            if std::fs::remove_file(e.path()).is_ok() {
                report.removed_temp_files += 1;
            }
        }
    }
    // What killed restores left beside their destinations (never an old tree that may be the
    // only copy: see `restore::staging`).
    let left = crate::restore::staging::clean_recorded(store.root());
    report.removed_staging = left.removed;
    report.recovered_trees = left.recovered;
    report.kept_old_trees = left.kept;
    Ok(report)
}
