//! A store directory: objects, index and lock, and how snapshots are found by key.
//!
//! ```text
//! <store>/
//!   objects-v1/ab/cdef…       content-addressed objects (read-only; `.x` suffix = executable)
//!   index.sqlite (+ -wal, -shm) the index
//!   tmp/                       temporary objects, renamed into objects-v1 when complete
//!   lock                       flock: shared for save/restore/verify, exclusive for gc
//! ```
//! Everything is relative and made of plain files and directories, so a CI cache step can tar
//! and untar the store.

use crate::error::{Error, IoContext, Result};
use crate::index::{Index, SnapshotRow, INDEX_FILE};
use crate::lock::{StoreLock, LOCK_FILE};
use crate::snapshot::Manifest;
use crate::store::{LocalObjects, OBJECTS_DIR};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// How a restore matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hit {
    Exact,
    Fallback,
}

impl Hit {
    pub fn as_str(self) -> &'static str {
        match self {
            Hit::Exact => "exact",
            Hit::Fallback => "fallback",
        }
    }
}

pub struct Store {
    root: PathBuf,
    pub objects: LocalObjects,
    index: Mutex<Index>,
    /// The store already had objects but no index when it was opened (see `verify`).
    index_missing: bool,
}

/// The store directory: `explicit` (`--store`), else `$ENVSNAP_STORE`, else
/// `$XDG_CACHE_HOME/envsnap`, else `~/.cache/envsnap`.
pub fn resolve_dir(explicit: Option<PathBuf>) -> Result<PathBuf> {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = explicit.or_else(|| nonempty("ENVSNAP_STORE")) {
        return Ok(p);
    }
    if let Some(x) = nonempty("XDG_CACHE_HOME") {
        return Ok(x.join("envsnap"));
    }
    match nonempty("HOME") {
        Some(h) => Ok(h.join(".cache").join("envsnap")),
        None => Err(Error::Usage(
            "no store directory: pass --store DIR or set ENVSNAP_STORE".into(),
        )),
    }
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn writable(dir: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::Usage(format!("store path {} contains a NUL byte", dir.display())))?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Err(Error::io("write to store", dir, std::io::Error::last_os_error()));
    }
    Ok(())
}

impl Store {
    /// Open (creating on first use) the store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        if root.exists() && !root.is_dir() {
            return Err(Error::Usage(format!("store {} is not a directory", root.display())));
        }
        crate::store::private_dir(root)?;
        let root = root.canonicalize().at("resolve", root)?;
        crate::store::tighten_dir(&root);
        // SQLite would only say "unable to open database file": name the real problem.
        writable(&root)?;
        // An existing store without an index lost every snapshot: `verify` must say so rather
        // than "all intact" over an index created empty just now.
        let index_missing = root.join(OBJECTS_DIR).is_dir() && !root.join(INDEX_FILE).exists();
        let objects = LocalObjects::new(root.join(OBJECTS_DIR), root.join("tmp"))?;
        let index = Index::open(&root.join(INDEX_FILE))?;
        Ok(Store {
            root,
            objects,
            index: Mutex::new(index),
            index_missing,
        })
    }

    /// The store had objects but no index when opened: its snapshots are gone.
    pub fn index_was_missing(&self) -> bool {
        self.index_missing
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn index(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock cannot leave SQLite inconsistent; keep going.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lock_shared(&self) -> Result<StoreLock> {
        StoreLock::shared(&self.root.join(LOCK_FILE))
    }

    pub fn lock_exclusive(&self) -> Result<StoreLock> {
        StoreLock::exclusive(&self.root.join(LOCK_FILE))
    }

    /// actions/cache's lookup: the exact key first; then each fallback prefix in the order
    /// given, taking the newest snapshot whose key starts with it.
    pub fn lookup(&self, key: &str, fallbacks: &[String]) -> Result<Option<(SnapshotRow, Hit)>> {
        crate::key::validate(key)?;
        for f in fallbacks {
            crate::key::validate(f)?;
        }
        let idx = self.index();
        // The row found must carry the key asked for: a damaged SQL index (a flipped rowid in
        // the key index) could otherwise hand back another snapshot.
        if let Some(s) = idx.get(key)?.filter(|s| s.key == key) {
            return Ok(Some((s, Hit::Exact)));
        }
        for f in fallbacks {
            if let Some(s) = idx.newest_with_prefix(f)?.filter(|s| s.key.starts_with(f.as_str())) {
                return Ok(Some((s, Hit::Fallback)));
            }
        }
        Ok(None)
    }

    pub fn manifest(&self, snapshot_id: i64) -> Result<Manifest> {
        self.index().manifest(snapshot_id)
    }

    pub fn mark_restored(&self, snapshot_id: i64) -> Result<()> {
        self.index().mark_restored(snapshot_id, now_ns())
    }
}
