//! Verify: re-hash every object, check every snapshot's row and entries against their
//! digests, find the objects the index references but the store lacks (and those no snapshot
//! references), and name the snapshots they break.

use crate::error::Result;
use crate::store::ObjectId;
use crate::Store;
use rayon::prelude::*;
use std::collections::{BTreeSet, HashMap, HashSet};

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub objects: u64,
    pub bytes: u64,
    pub corrupt: Vec<String>,
    pub missing: Vec<String>,
    /// Objects that could not be read (I/O errors): reported, never deleted.
    pub unreadable: Vec<String>,
    /// Keys of snapshots that reference a corrupt or missing object.
    pub broken_snapshots: Vec<String>,
    /// Corrupt objects removed (`--repair`), so the next save of that content stores it anew.
    pub removed: u64,
    /// Snapshots whose row or entries in the index fail their digests (`key: why`). They are
    /// never restored; `--repair` removes them (listed in `broken_snapshots` too).
    pub damaged_snapshots: Vec<String>,
    /// Objects present that no snapshot references (gc removes them). After a lost index,
    /// that is every object.
    pub unreferenced_objects: u64,
    /// The store had objects but no index: every snapshot is gone (this run created an empty
    /// index).
    pub index_missing: bool,
    /// Keys of the broken snapshots `--repair` removed: their restores become misses (a CI job
    /// rebuilds and saves them again) instead of failing on the object they lack.
    pub removed_snapshots: Vec<String>,
    /// Corrupt objects a restore moved to `quarantine/` (the hardlink guard, or a remote refetch) (`--repair` deletes them).
    pub quarantined: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.corrupt.is_empty()
            && self.missing.is_empty()
            && self.unreadable.is_empty()
            && self.damaged_snapshots.is_empty()
            && !self.index_missing
            && self.quarantined.is_empty()
    }

    /// After `--repair`: is the store sound now? Corrupt objects and every broken snapshot
    /// (damaged, or missing an object) are gone; unreadable objects (never deleted) and a lost
    /// index are not something a repair fixes.
    pub fn repaired(&self) -> bool {
        self.unreadable.is_empty() && !self.index_missing
    }
}

pub fn verify(store: &Store, repair: bool) -> Result<VerifyReport> {
    // Repair deletes objects: exclusive, so no running save relies on one it found present.
    let _lock = if repair {
        store.lock_exclusive()?
    } else {
        store.lock_shared()?
    };
    let present = store.objects.scan()?;
    let qdir = store.objects.quarantine_dir();
    let mut quarantined: Vec<String> = match std::fs::read_dir(&qdir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    quarantined.sort();
    let checked: Vec<(ObjectId, Result<bool>)> = present
        .par_iter()
        .map(|(id, _)| (*id, store.objects.check(id)))
        .collect();
    let mut bad = Vec::new();
    let mut unreadable = Vec::new();
    for (id, r) in checked {
        match r {
            Ok(true) => {}
            // Not a regular file (a FIFO, directory or symlink under an object's name).
            Ok(false) | Err(crate::Error::Corrupt { .. }) => bad.push(id),
            Err(e) => unreadable.push(format!("{id}: {e}")),
        }
    }
    let present_ids: HashSet<ObjectId> = present.iter().map(|(id, _)| *id).collect();
    let manifests = store.index().all_manifests()?;
    let bad_set: HashSet<ObjectId> = bad.iter().copied().collect();
    let mut missing = HashSet::new();
    let mut broken_ids = HashSet::new();
    let mut damaged = Vec::new();
    let mut referenced = HashSet::new();
    for s in &manifests {
        let m = match &s.manifest {
            Ok(m) => m,
            Err(why) => {
                damaged.push(why.clone());
                broken_ids.insert(s.id);
                continue;
            }
        };
        for obj in m.files().filter_map(|e| e.object) {
            referenced.insert(obj);
            if !present_ids.contains(&obj) {
                missing.insert(obj);
                broken_ids.insert(s.id);
            } else if bad_set.contains(&obj) {
                broken_ids.insert(s.id);
            }
        }
    }
    let keys: HashMap<i64, &str> = manifests.iter().map(|s| (s.id, s.key.as_str())).collect();
    let mut broken: Vec<String> = broken_ids
        .iter()
        .filter_map(|id| keys.get(id).map(|k| crate::key::escaped(k).into_owned()))
        .collect();
    broken.sort();
    let unreferenced_objects = present_ids.difference(&referenced).count() as u64;
    let mut removed = 0;
    let mut removed_snapshots = Vec::new();
    if repair {
        // A broken snapshot can never be restored: drop it (its objects go with the next gc),
        // so its restore is a miss that rebuilds it rather than an error. Damaged ones are
        // broken too. First, so no snapshot references a corrupt object once it is deleted.
        let ids: Vec<i64> = broken_ids.iter().copied().collect();
        store.index().delete_snapshots(&ids)?;
        removed_snapshots = broken.clone();
        // A save trusts the stat cache without checking the object exists: keep only rows whose
        // object is present and sound. Not just the objects snapshots reference: a row can name
        // an object no snapshot uses any more (its key was re-saved), lost outside envsnap.
        store
            .index()
            .retain_statcache(|o| present_ids.contains(o) && !bad_set.contains(o))?;
        store.index().forget_objects(&bad)?;
        if !quarantined.is_empty() {
            crate::restore::remove_tree(&qdir).map_err(|e| crate::Error::io("remove", &qdir, e))?;
        }
        for id in &bad {
            store.objects.delete(id)?;
            removed += 1;
        }
    }
    let mut corrupt: Vec<String> = bad.iter().map(|i| i.to_string()).collect();
    corrupt.sort();
    Ok(VerifyReport {
        objects: present.len() as u64,
        bytes: present.iter().map(|(_, n)| n).sum(),
        corrupt,
        missing: missing
            .iter()
            .map(|o| o.to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        unreadable,
        broken_snapshots: broken,
        removed,
        damaged_snapshots: damaged,
        unreferenced_objects,
        index_missing: store.index_was_missing(),
        removed_snapshots,
        quarantined,
    })
}
