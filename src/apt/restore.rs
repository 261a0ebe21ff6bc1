//! Restore an apt snapshot into ROOT as if dpkg had installed it.
//!
//! Order (chosen so an interrupted restore can simply be re-run):
//! 1. compatibility check (read-only; a conflict is a miss and nothing is written);
//! 2. dpkg locks;
//! 3. payload: directories, then files and symlinks, each written to a temp name and renamed;
//! 4. paths the install removed;
//! 5. shared state merged record by record (temp + rename per file), dpkg's `status` last, so
//!    dpkg only sees the packages as installed once everything else is in place;
//! 6. `ldconfig -r ROOT`.
//!
//! Every step is idempotent (merges re-apply the same record ops), so killing the restore at any
//! point leaves ROOT with some extra untracked files at worst, and running it again completes it.

use super::core::{Entry, EntryKind, LinkMode, Manifest, RestoreOptions, SnapshotRow, Store};
use super::delta::SharedChange;
use super::dpkg;
use super::merge::{self, Class};
use super::AptMeta;
use crate::error::{Error, IoContext, Result};
use rayon::prelude::*;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AptRestoreReport {
    pub root: PathBuf,
    pub packages: Vec<String>,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub removed: u64,
    pub merged: Vec<String>,
    pub dry_run: bool,
    pub seconds: f64,
}

/// Parse a snapshot's meta (error when it is not an apt snapshot of a known format).
pub fn meta_of(snap: &SnapshotRow) -> Result<AptMeta> {
    if snap.kind != "apt" {
        return Err(Error::Usage(format!(
            "snapshot '{}' is of kind {}, not apt",
            snap.key, snap.kind
        )));
    }
    serde_json::from_value(snap.meta.clone())
        .map_err(|e| Error::Other(format!("snapshot '{}': unreadable apt metadata: {e}", snap.key)))
}

fn os_id(os_release: &str) -> (String, String) {
    let get = |k: &str| {
        os_release
            .lines()
            .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    (get("ID"), get("VERSION_ID"))
}

/// The compatibility rule (see docs/apt.md). Returns the conflicts, empty when compatible.
pub fn check_compat(meta: &AptMeta, manifest: &Manifest, root: &Path) -> Result<Vec<String>> {
    let mut conflicts = Vec::new();
    let (sid, sver) = os_id(&meta.os_release);
    let (tid, tver) = os_id(&super::baseline::os_release(root));
    if (sid, sver) != (tid.clone(), tver.clone()) {
        conflicts.push(format!(
            "os-release: snapshot is {} {}, target is {tid} {tver}",
            os_id(&meta.os_release).0,
            os_id(&meta.os_release).1
        ));
        return Ok(conflicts);
    }
    let target = dpkg::installed_packages(root)?;
    let tmap: HashMap<(&str, &str), &str> = target
        .iter()
        .map(|p| ((p.name.as_str(), p.arch.as_str()), p.version.as_str()))
        .collect();
    for p in &meta.packages {
        if let Some(tv) = tmap.get(&(p.name.as_str(), p.arch.as_str())) {
            if *tv != p.version && Some(*tv) != p.base_version.as_deref() {
                conflicts.push(format!(
                    "{}:{} is installed at {tv} on the target, the snapshot has {}",
                    p.name, p.arch, p.version
                ));
            }
        }
    }
    let base: HashMap<(&str, &str), &str> = meta
        .base_packages
        .iter()
        .map(|p| ((p.name.as_str(), p.arch.as_str()), p.version.as_str()))
        .collect();
    for p in &meta.removed_packages {
        if let Some(tv) = tmap.get(&(p.name.as_str(), p.arch.as_str())) {
            if *tv != p.version {
                conflicts.push(format!(
                    "{}:{} (removed by the snapshot) is installed at {tv} on the target, the snapshot's base had {}",
                    p.name, p.arch, p.version
                ));
            }
        }
    }
    // Files the snapshot writes that a target package outside the snapshot owns: that package
    // must be exactly as in the snapshot's base, or the snapshot would clobber another version.
    let ours: HashSet<&str> = meta
        .packages
        .iter()
        .map(|p| p.name.as_str())
        .chain(meta.removed_packages.iter().map(|p| p.name.as_str()))
        .collect();
    let aliases = merged_usr_aliases(root);
    let mut paths: HashSet<String> = HashSet::new();
    for e in manifest.entries.iter().filter(|e| e.kind != EntryKind::Dir) {
        let p = format!("/{}", String::from_utf8_lossy(&e.path));
        // dpkg's file lists may name `/lib/x` for what merged-/usr stores at `/usr/lib/x`.
        for (short, long) in &aliases {
            if let Some(rest) = p.strip_prefix(long.as_str()) {
                paths.insert(format!("{short}{rest}"));
            }
        }
        paths.insert(p);
    }
    let base_by_name: HashMap<&str, Vec<&str>> = meta.base_packages.iter().fold(HashMap::new(), |mut m, p| {
        m.entry(p.name.as_str()).or_default().push(p.version.as_str());
        m
    });
    let mut bad: BTreeSet<String> = BTreeSet::new();
    for (path, owners) in dpkg::owners(root, &paths)? {
        for o in owners {
            if ours.contains(o.as_str()) {
                continue;
            }
            let tvs: Vec<&str> = target
                .iter()
                .filter(|p| p.name == o)
                .map(|p| p.version.as_str())
                .collect();
            let ok = tvs
                .iter()
                .all(|tv| base_by_name.get(o.as_str()).is_some_and(|bv| bv.contains(tv)));
            if !ok {
                bad.insert(format!(
                    "{o} {} owns {path}, which the snapshot changes, but {o} is not at the snapshot's base version ({})",
                    tvs.join(","),
                    base.iter().find(|((n, _), _)| *n == o).map(|(_, v)| *v).unwrap_or("not installed")
                ));
            }
        }
    }
    conflicts.extend(bad);
    Ok(conflicts)
}

/// Top-level merged-/usr symlinks of ROOT as ("/bin/", "/usr/bin/") prefix pairs.
fn merged_usr_aliases(root: &Path) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else { return v };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.to_string_lossy().trim_start_matches('/').to_string();
            if t == format!("usr/{name}") {
                v.push((format!("/{name}/"), format!("/usr/{name}/")));
            }
        }
    }
    v
}

/// Restore `snap` into `root` (default: the root it was saved from).
pub fn restore(
    store: &Store,
    snap: &SnapshotRow,
    root: Option<&Path>,
    opts: &RestoreOptions,
    dry_run: bool,
) -> Result<AptRestoreReport> {
    let t0 = std::time::Instant::now();
    let meta = meta_of(snap)?;
    let root = root.map(Path::to_path_buf).unwrap_or_else(|| meta.root.clone());
    let root = std::fs::canonicalize(&root).at("resolve", &root)?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 && !dry_run {
        return Err(Error::Usage(format!(
            "restoring an apt snapshot into {} needs root (file owners, dpkg's database); run it with sudo",
            root.display()
        )));
    }
    let manifest = store.manifest(snap.id)?;
    // Whatever the index says, nothing may be written outside ROOT.
    manifest.validate_paths(&snap.key)?;
    for rel in meta.removed_paths.iter().chain(meta.shared.iter().map(|s| &s.path)) {
        crate::snapshot::check_rel_path(rel.as_bytes())
            .map_err(|why| Error::Other(format!("apt snapshot '{}': refusing path {rel:?}: {why}", snap.key)))?;
    }
    if let Some(s) = meta.shared.iter().find(|s| merge::class_of(&s.path) != Some(s.class)) {
        return Err(Error::Other(format!(
            "apt snapshot '{}': {} is not a shared state file",
            snap.key, s.path
        )));
    }
    let conflicts = check_compat(&meta, &manifest, &root)?;
    if !conflicts.is_empty() {
        return Err(Error::Miss(format!(
            "apt snapshot '{}' does not fit {}: {}",
            snap.key,
            root.display(),
            conflicts.join("; ")
        )));
    }
    let mut rep = AptRestoreReport {
        root: root.clone(),
        packages: meta
            .packages
            .iter()
            .map(|p| format!("{}:{}={}", p.name, p.arch, p.version))
            .collect(),
        dry_run,
        ..Default::default()
    };
    for e in &manifest.entries {
        match e.kind {
            EntryKind::File => {
                rep.files += 1;
                rep.bytes += e.size;
            }
            EntryKind::Dir => rep.dirs += 1,
            EntryKind::Symlink => rep.symlinks += 1,
        }
    }
    rep.merged = meta.shared.iter().map(|s| s.path.clone()).collect();
    if dry_run {
        rep.seconds = t0.elapsed().as_secs_f64();
        return Ok(rep);
    }

    let _locks = super::lock::lock(&root)?;
    // Hardlinks would let a later chmod/chown by dpkg or a maintainer script change the store's
    // objects: system trees always get their own inodes.
    let link = if opts.link == LinkMode::Hardlink {
        LinkMode::Auto
    } else {
        opts.link
    };
    place_payload(store, &manifest, &root, link)?;
    rep.removed = remove_paths(&meta, &root)?;
    // status last: see the module comment.
    let (status, rest): (Vec<&SharedChange>, Vec<&SharedChange>) =
        meta.shared.iter().partition(|s| s.path == "var/lib/dpkg/status");
    for sc in rest.into_iter().chain(status) {
        merge_one(sc, &root)?;
    }
    ldconfig(&root)?;
    rep.seconds = t0.elapsed().as_secs_f64();
    Ok(rep)
}

fn abs(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(std::ffi::OsStr::from_bytes(rel))
}

fn place_payload(store: &Store, manifest: &Manifest, root: &Path, link: LinkMode) -> Result<()> {
    // Directories first, in path order so parents precede children. An existing directory (or a
    // symlink to one, e.g. merged-/usr `/lib`) is kept; only its mode/owner are set.
    for e in manifest.entries.iter().filter(|e| e.kind == EntryKind::Dir) {
        let p = abs(root, &e.path);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => {
                if std::fs::symlink_metadata(&p)
                    .map(|l| l.file_type().is_symlink())
                    .unwrap_or(false)
                {
                    continue;
                }
                if m.mode() & 0o7777 == e.mode && m.uid() == e.uid && m.gid() == e.gid {
                    continue;
                }
            }
            Ok(_) => {
                std::fs::remove_file(&p).at("remove", &p)?;
                std::fs::create_dir(&p).at("create directory", &p)?;
            }
            Err(_) => match std::fs::create_dir(&p) {
                Ok(()) => {}
                Err(er) if er.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(er) => return Err(Error::io("create directory", &p, er)),
            },
        }
        std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid)).at("chown", &p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode)).at("chmod", &p)?;
    }
    let others: Vec<&Entry> = manifest.entries.iter().filter(|e| e.kind != EntryKind::Dir).collect();
    // Creating thousands of small files is bound by filesystem latency (journal, inode
    // allocation), not CPU: more threads than cores keep the disk queue full.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads().max(2) * 4)
        .build()
        .map_err(|e| Error::Other(format!("thread pool: {e}")))?;
    pool.install(|| {
        others.par_iter().try_for_each(|e| -> Result<()> {
            let p = abs(root, &e.path);
            // A directory where the snapshot has a file: only replace it when empty.
            if let Ok(m) = std::fs::symlink_metadata(&p) {
                if m.is_dir() {
                    std::fs::remove_dir(&p).at("remove directory", &p)?;
                }
            }
            match e.kind {
                EntryKind::File => crate::restore::place_file(store, e, &p, link, true).map(|_| ()),
                EntryKind::Symlink => place_symlink(e, &p),
                EntryKind::Dir => Ok(()),
            }
        })
    })
}

fn place_symlink(e: &Entry, p: &Path) -> Result<()> {
    let target = e.target.as_deref().unwrap_or_default();
    if let Ok(cur) = std::fs::read_link(p) {
        if cur.as_os_str().as_bytes() == target {
            return Ok(());
        }
    }
    let dir = p.parent().expect("payload path has a parent");
    let h = blake3::hash(p.as_os_str().as_bytes()).to_hex();
    let tmp = dir.join(format!(".envsnap-{}-{}", std::process::id(), &h[..12]));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &tmp).at("create symlink", &tmp)?;
    std::os::unix::fs::lchown(&tmp, Some(e.uid), Some(e.gid)).at("chown", &tmp)?;
    let t = filetime::FileTime::from_unix_time(
        e.mtime_ns.div_euclid(1_000_000_000),
        e.mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_symlink_file_times(&tmp, t, t).at("set mtime of", &tmp)?;
    std::fs::rename(&tmp, p).at("rename into place", p)
}

/// Remove what the install removed, unless a target package the snapshot knows nothing about
/// owns it (drifted target).
fn remove_paths(meta: &AptMeta, root: &Path) -> Result<u64> {
    if meta.removed_paths.is_empty() {
        return Ok(0);
    }
    let q: HashSet<String> = meta.removed_paths.iter().map(|p| format!("/{p}")).collect();
    let owners = dpkg::owners(root, &q)?;
    let ours: HashSet<&str> = meta
        .packages
        .iter()
        .map(|p| p.name.as_str())
        .chain(meta.removed_packages.iter().map(|p| p.name.as_str()))
        .collect();
    let base: HashSet<&str> = meta.base_packages.iter().map(|p| p.name.as_str()).collect();
    let mut n = 0;
    // Deepest first so directories are empty when their turn comes.
    let mut paths: Vec<&String> = meta.removed_paths.iter().collect();
    paths.sort_by(|a, b| b.cmp(a));
    for rel in paths {
        let foreign = owners.get(&format!("/{rel}")).is_some_and(|os| {
            os.iter()
                .any(|o| !ours.contains(o.as_str()) && !base.contains(o.as_str()))
        });
        if foreign {
            continue;
        }
        let p = root.join(rel);
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        let r = if m.is_dir() {
            std::fs::remove_dir(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match r {
            Ok(()) => n += 1,
            // A directory that still has the target's files stays.
            Err(e) if m.is_dir() => {
                let _ = e;
            }
            Err(e) => return Err(Error::io("read", &p, e)),
        }
    }
    Ok(n)
}

/// Write `text` over `p` atomically, keeping the target's mode/owner when it had the file.
fn write_atomic(p: &Path, text: &[u8], mode: u32, uid: u32, gid: u32) -> Result<()> {
    let (mode, uid, gid) = match std::fs::metadata(p) {
        Ok(m) => (m.mode() & 0o7777, m.uid(), m.gid()),
        Err(_) => (mode, uid, gid),
    };
    let dir = p.parent().expect("state file has a parent");
    std::fs::create_dir_all(dir).at("create directory", dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".envsnap-")
        .tempfile_in(dir)
        .at("create temporary file in", dir)?;
    tmp.write_all(text).at("write", p)?;
    let tp = tmp.path().to_path_buf();
    std::os::unix::fs::chown(&tp, Some(uid), Some(gid)).at("chown", &tp)?;
    std::fs::set_permissions(&tp, std::fs::Permissions::from_mode(mode)).at("chmod", &tp)?;
    tmp.persist(p).map_err(|e| Error::io("rename into place", p, e.error))?;
    Ok(())
}

fn read_opt(p: &Path) -> Result<Option<String>> {
    match std::fs::read(p) {
        Ok(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| Error::Other(format!("{}: shared state file is not UTF-8", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", p, e)),
    }
}

fn merge_one(sc: &SharedChange, root: &Path) -> Result<()> {
    let p = root.join(&sc.path);
    let theirs = read_opt(&p)?;
    if sc.class != Class::Alternatives {
        let merged = merge::apply(sc.class, theirs.as_deref().unwrap_or(""), &sc.ops);
        if theirs.as_deref() != Some(merged.as_str()) {
            write_atomic(&p, merged.as_bytes(), sc.mode, sc.uid, sc.gid)?;
        }
        return Ok(());
    }
    let merged = merge::merge_alternatives(sc.base.as_deref(), sc.ours.as_deref(), theirs.as_deref());
    match &merged {
        Some(m) if theirs.as_deref() != Some(m.as_str()) => write_atomic(&p, m.as_bytes(), sc.mode, sc.uid, sc.gid)?,
        None if theirs.is_some() => std::fs::remove_file(&p).at("remove", &p)?,
        _ => {}
    }
    // The payload already carries the snapshot's /etc/alternatives links; they are only right
    // when the merge result is the snapshot's file. Otherwise point them at the merged choice.
    if merged == sc.ours {
        return Ok(());
    }
    let Some(alt) = merged.as_deref().and_then(merge::parse_alt) else {
        return Ok(());
    };
    let name = sc.path.rsplit('/').next().unwrap_or_default();
    let etc = root.join("etc/alternatives");
    let cur = std::fs::read_link(etc.join(name))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let Some(choice) = alt.selected(cur.as_deref()) else {
        return Ok(());
    };
    set_link(&etc.join(name), Some(&choice.path))?;
    for (sname, _) in &alt.slaves {
        set_link(&etc.join(sname), choice.slaves.get(sname).map(String::as_str))?;
    }
    Ok(())
}

fn set_link(p: &Path, target: Option<&str>) -> Result<()> {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = p.with_file_name(format!(".envsnap-{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    match target {
        Some(t) => {
            std::os::unix::fs::symlink(t, &tmp).at("create symlink", &tmp)?;
            std::fs::rename(&tmp, p).at("rename into place", p)
        }
        None => match std::fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("read", p, e)),
            _ => Ok(()),
        },
    }
}

/// Rebuild ROOT's linker cache (`/etc/ld.so.cache` is never restored, it is regenerated).
pub fn ldconfig(root: &Path) -> Result<()> {
    let mut cmd = std::process::Command::new(find_ldconfig());
    if root != Path::new("/") {
        cmd.arg("-r").arg(root);
    }
    let out = cmd.output().at("run", "ldconfig")?;
    if !out.status.success() {
        return Err(Error::Other(format!(
            "ldconfig -r {} failed: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn find_ldconfig() -> PathBuf {
    for p in ["/sbin/ldconfig", "/usr/sbin/ldconfig"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("ldconfig")
}
