//! apt snapshots: capture what `apt-get install` changed under ROOT (against a baseline taken by
//! `apt begin`) and restore it into another ROOT as if dpkg had installed it. See docs/apt.md.

pub mod baseline;
pub mod delta;
pub mod dpkg;
pub mod identity;
pub mod install;
pub mod lock;
pub mod merge;
pub mod restore;

/// The core items apt uses, in one place.
pub(crate) mod core {
    pub use crate::index::SnapshotRow;
    pub use crate::repo::{Hit, Store};
    pub use crate::restore::{LinkMode, RestoreOptions};
    pub use crate::save::{save, SaveRequest, Selection};
    pub use crate::snapshot::{Entry, EntryKind, Manifest};
}

use crate::error::{Error, IoContext, Result};
use delta::{PkgChange, SharedChange};
use dpkg::Pkg;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use install::{install, InstallOutcome, InstallReport, InstallRequest};
pub use restore::{restore, AptRestoreReport};

/// The `meta` JSON of a snapshot of kind `apt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AptMeta {
    pub version: u32,
    /// The root the snapshot was saved from (default restore target).
    pub root: PathBuf,
    pub os_release: String,
    /// Base fingerprint: installed packages when `apt begin` ran.
    pub base_packages: Vec<Pkg>,
    /// Packages the install added or changed.
    pub packages: Vec<PkgChange>,
    /// Packages the install removed.
    pub removed_packages: Vec<Pkg>,
    /// Root-relative paths the install removed.
    pub removed_paths: Vec<String>,
    /// Shared state files, applied by merge (not part of the payload).
    pub shared: Vec<SharedChange>,
    /// Per-install identity the install created, left out of the payload and regenerated (or
    /// the target's own kept) at restore.
    #[serde(default)]
    pub identity: Vec<identity::Identity>,
}

impl AptMeta {
    /// Names of the packages the snapshot installed, changed or removed: files they own are the
    /// snapshot's to write.
    pub fn own_package_names(&self) -> std::collections::HashSet<&str> {
        self.packages
            .iter()
            .map(|p| p.name.as_str())
            .chain(self.removed_packages.iter().map(|p| p.name.as_str()))
            .collect()
    }
}

pub fn canonical_root(root: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(root).at("resolve", root)
}

#[derive(Debug, Clone, Serialize)]
pub struct BeginReport {
    pub root: PathBuf,
    pub baseline: PathBuf,
    pub entries: u64,
    pub packages: u64,
    pub seconds: f64,
}

/// `envsnap apt begin [ROOT]`.
pub fn begin(store: &core::Store, root: &Path) -> Result<BeginReport> {
    let root = canonical_root(root)?;
    let t0 = std::time::Instant::now();
    let h = baseline::begin(store.root(), &root)?;
    let path = baseline::baseline_path(store.root(), &root);
    let entries = baseline::read(&path).map(|b| b.recs.len() as u64).unwrap_or(0);
    Ok(BeginReport {
        root,
        baseline: path,
        entries,
        packages: h.packages.len() as u64,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct AptSaveReport {
    pub snapshot_id: i64,
    pub key: String,
    pub root: PathBuf,
    pub packages: Vec<String>,
    pub payload_entries: u64,
    pub removed_paths: u64,
    pub merged_files: u64,
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// `envsnap save apt [ROOT] --key KEY`.
pub fn save(store: &core::Store, root: &Path, key: &str) -> Result<AptSaveReport> {
    let t0 = std::time::Instant::now();
    let root = canonical_root(root)?;
    let bpath = baseline::baseline_path(store.root(), &root);
    if !bpath.exists() {
        return Err(Error::Usage(format!(
            "no apt baseline for {}: run `envsnap apt begin {}` before `apt-get install`, then `envsnap save apt`",
            root.display(),
            root.display()
        )));
    }
    let base = baseline::read(&bpath)?;
    let d = delta::compute(&root, &base)?;
    let meta = AptMeta {
        version: 1,
        root: root.clone(),
        os_release: base.header.os_release.clone(),
        base_packages: base.header.packages.clone(),
        packages: d.packages.clone(),
        removed_packages: d.removed_packages.clone(),
        removed_paths: d.removed.clone(),
        shared: d.shared.clone(),
        identity: d.identity.clone(),
    };
    let paths: Vec<Vec<u8>> = d.payload.iter().map(|r| r.path.clone()).collect();
    let n = paths.len() as u64;
    let meta_json = serde_json::to_value(&meta).map_err(|e| Error::Other(e.to_string()))?;
    let rep = core::save(
        store,
        core::SaveRequest {
            key: key.to_string(),
            kind: "apt".to_string(),
            root: root.clone(),
            meta: meta_json,
            selection: core::Selection::Paths(paths),
            xattrs: true,
            scanner: None,
            progress: None,
        },
    )?;
    Ok(AptSaveReport {
        snapshot_id: rep.snapshot_id,
        key: key.to_string(),
        root,
        packages: d
            .packages
            .iter()
            .map(|p| format!("{}:{}={}", p.name, p.arch, p.version))
            .collect(),
        payload_entries: n,
        removed_paths: d.removed.len() as u64,
        merged_files: d.shared.len() as u64,
        files: rep.files,
        bytes: rep.bytes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
