//! Restore an apt snapshot into ROOT as if dpkg had installed it.
//!
//! Order (chosen so an interrupted restore can simply be re-run):
//! 1. dpkg locks;
//! 2. compatibility check (read-only; a conflict is a miss and nothing is written);
//! 3. payload: directories, then files and symlinks, each written to a temp name and renamed,
//!    then the directories' attributes (mtime, xattrs), deepest first; temp names left by a killed
//!    restore (`.<name>.envsnap-<pid>-…` of a dead pid) in the directories written are removed;
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
use crate::beneath::{self, Dir, Root, Symlinks};
use crate::error::{Error, IoContext, Result};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
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
    /// The link mode actually used for payload files (`reflink`, `copy`, or a `+`-joined mix).
    pub link: String,
    /// Per-install identity: what was regenerated, kept or left out (one line each).
    pub identity: Vec<String>,
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

/// `debian-12`, `debian-trixie`… (the `{os-release}` token's parser and spelling).
fn os_id(os_release: &str) -> String {
    let fields = crate::key::system::parse_os_release(os_release);
    crate::key::system::os_release_id(&fields).unwrap_or_else(|| "unknown".to_string())
}

/// Owners of absolute `paths` on ROOT (`dpkg::owners`), keyed by the path asked for: dpkg's
/// file lists may name `/lib/x` for what merged-/usr stores at `/usr/lib/x`, so each path is
/// also looked up under its short alias.
fn owners(root: &Path, paths: &HashSet<String>) -> Result<BTreeMap<String, Vec<String>>> {
    let aliases = merged_usr_aliases(root);
    let mut q: HashSet<String> = paths.clone();
    let mut alias_of: HashMap<String, String> = HashMap::new();
    for p in paths {
        for (short, long) in &aliases {
            if let Some(rest) = p.strip_prefix(long.as_str()) {
                let a = format!("{short}{rest}");
                q.insert(a.clone());
                alias_of.insert(a, p.clone());
            }
        }
    }
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, os) in dpkg::owners(root, &q)? {
        let key = if paths.contains(&path) {
            path
        } else {
            alias_of.get(&path).cloned().unwrap_or(path)
        };
        let v = out.entry(key).or_default();
        for o in os {
            if !v.contains(&o) {
                v.push(o);
            }
        }
    }
    Ok(out)
}

/// The compatibility rule (see docs/apt.md). Returns the conflicts, empty when compatible.
pub fn check_compat(meta: &AptMeta, manifest: &Manifest, rootd: &Root) -> Result<Vec<String>> {
    let root = rootd.path();
    let mut conflicts = Vec::new();
    let sid = os_id(&meta.os_release);
    let tid = os_id(&super::baseline::os_release(root));
    if sid != tid {
        conflicts.push(format!("os-release: snapshot is {sid}, target is {tid}"));
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
    let ours = meta.own_package_names();
    let paths: HashSet<String> = manifest
        .entries
        .iter()
        .filter(|e| e.kind != EntryKind::Dir)
        .map(|e| format!("/{}", String::from_utf8_lossy(&e.path)))
        .collect();
    let base_by_name: HashMap<&str, Vec<&str>> = meta.base_packages.iter().fold(HashMap::new(), |mut m, p| {
        m.entry(p.name.as_str()).or_default().push(p.version.as_str());
        m
    });
    let mut bad: BTreeSet<String> = BTreeSet::new();
    for (path, os) in owners(root, &paths)? {
        for o in os {
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
    conflicts.extend(missing_dependencies(meta, rootd)?);
    // Users and groups the snapshot adds must not take an id the target gives another name.
    for sc in meta.shared.iter().filter(|s| s.class == Class::ColonLines) {
        let theirs = read_opt(rootd, &sc.path)?.unwrap_or_default();
        conflicts.extend(merge::id_conflicts(&sc.path, &theirs, &sc.ops));
    }
    Ok(conflicts)
}

/// Full value of a deb822 field, continuation lines joined.
fn field_full(st: &dpkg::Stanza, name: &str) -> Option<String> {
    let mut out: Option<String> = None;
    for line in st.text.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(v) = out.as_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if out.is_some() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case(name) {
                out = Some(v.trim().to_string());
            }
        }
    }
    out
}

/// One alternative of a dependency: `name[:arch] [(op version)]`.
fn parse_dep(alt: &str) -> (String, Option<(String, String)>) {
    let alt = alt.trim();
    let (name, rest) = match alt.find(|c: char| c.is_whitespace() || c == '(' || c == '[') {
        Some(i) => (&alt[..i], &alt[i..]),
        None => (alt, ""),
    };
    let name = name.split(':').next().unwrap_or(name).to_string();
    let cons = rest.find('(').and_then(|i| {
        let inner = rest[i + 1..].split(')').next()?.trim();
        let op_len = inner.find(|c: char| !"<>=".contains(c)).unwrap_or(inner.len());
        Some((inner[..op_len].to_string(), inner[op_len..].trim().to_string()))
    });
    (name, cons)
}

/// Dependencies (Depends, Pre-Depends) of the snapshot's packages that neither the snapshot nor
/// the target provides: on the source they came from the snapshot's base, which the restore does
/// not write, so restoring would record packages as installed with unmet dependencies.
fn missing_dependencies(meta: &AptMeta, rootd: &Root) -> Result<Vec<String>> {
    let Some(status) = meta.shared.iter().find(|s| s.path == "var/lib/dpkg/status") else {
        return Ok(Vec::new());
    };
    let ours: Vec<dpkg::Stanza> = status
        .ops
        .set
        .iter()
        .flat_map(|(_, t)| dpkg::parse_stanzas(t))
        .filter(dpkg::is_present)
        .collect();
    let target_text = read_opt(rootd, "var/lib/dpkg/status")?.unwrap_or_default();
    let target: Vec<dpkg::Stanza> = dpkg::parse_stanzas(&target_text)
        .into_iter()
        .filter(dpkg::is_present)
        .collect();
    let snap_names: HashSet<&str> = meta.packages.iter().map(|p| p.name.as_str()).collect();
    // name -> versions available on the target (real packages, and virtual ones via Provides).
    let mut have: HashMap<String, Vec<Option<String>>> = HashMap::new();
    for st in ours.iter().chain(target.iter()) {
        for pv in field_full(st, "Provides").iter().flat_map(|v| v.split(',')) {
            let (n, c) = parse_dep(pv);
            have.entry(n).or_default().push(c.map(|(_, v)| v));
        }
    }
    for st in &target {
        if let (Some(n), Some(v)) = (st.field("Package"), st.field("Version")) {
            have.entry(n.to_string()).or_default().push(Some(v.to_string()));
        }
    }
    let mut missing: BTreeSet<String> = BTreeSet::new();
    for st in &ours {
        let pkg = st.field("Package").unwrap_or("?");
        for f in ["Pre-Depends", "Depends"] {
            let Some(v) = field_full(st, f) else { continue };
            for group in v.split(',').filter(|g| !g.trim().is_empty()) {
                let alts: Vec<(String, Option<(String, String)>)> = group.split('|').map(parse_dep).collect();
                let ok = alts.iter().any(|(n, c)| {
                    snap_names.contains(n.as_str())
                        || have.get(n).is_some_and(|vs| {
                            vs.iter().any(|v| match (c, v) {
                                (None, _) => true,
                                (Some((op, want)), Some(v)) => dpkg::version_satisfies(v, op, want),
                                (Some(_), None) => false,
                            })
                        })
                });
                if !ok {
                    missing.insert(format!("{pkg} needs {}", group.trim()));
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![format!(
        "dependencies from the snapshot's base are not installed on the target: {}",
        missing.into_iter().collect::<Vec<_>>().join(", ")
    )])
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
    // Whatever the index says, nothing may be written outside ROOT: the snapshot's own paths
    // first (never through a symlink it creates), then the target's (never through a symlink
    // leading out of ROOT), before anything is written.
    check_snapshot_paths(&snap.key, &meta, &manifest)?;
    let rootd = Root::open(&root)?;
    preflight(&rootd, &meta, &manifest)?;
    // dpkg's locks before reading its database: the check must see the state the restore writes
    // over (a dry run only reads, and takes none).
    let locks = if dry_run {
        None
    } else {
        Some(super::lock::lock(&rootd)?)
    };
    let conflicts = check_compat(&meta, &manifest, &rootd)?;
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
        rep.identity = meta
            .identity
            .iter()
            .map(|i| format!("would keep the target's own or regenerate {}", i.describe()))
            .collect();
        rep.link = opts.link.as_str().to_string();
        rep.seconds = t0.elapsed().as_secs_f64();
        return Ok(rep);
    }

    let _locks = locks;
    // Hardlinks would let a later chmod/chown by dpkg or a maintainer script change the store's
    // objects: system trees always get their own inodes.
    let link = if opts.link == LinkMode::Hardlink {
        LinkMode::Auto
    } else {
        opts.link
    };
    rep.link = place_payload(store, &manifest, &rootd, link)?;
    rep.removed = remove_paths(&meta, &rootd)?;
    // status last: see the module comment.
    let (status, rest): (Vec<&SharedChange>, Vec<&SharedChange>) =
        meta.shared.iter().partition(|s| s.path == "var/lib/dpkg/status");
    for sc in rest.into_iter().chain(status) {
        merge_one(sc, &rootd)?;
    }
    ldconfig(&root)?;
    // Last: the packages' own tools run in a root where the packages are installed.
    rep.identity = meta.identity.iter().map(|i| i.regenerate(&root)).collect();
    rep.seconds = t0.elapsed().as_secs_f64();
    Ok(rep)
}

/// The paths the snapshot names, checked against the snapshot itself before anything is read or
/// written: payload entries only under directory entries of the snapshot (so never through a
/// symlink it creates), removed paths and shared state files clean and not under a symlink or
/// file of the snapshot, and alternatives' link names plain file names.
fn check_snapshot_paths(key: &str, meta: &AptMeta, manifest: &Manifest) -> Result<()> {
    manifest.validate_tree(key)?;
    let refuse = |path: &str, why: &'static str| Error::UnsafeEntry {
        key: key.to_string(),
        path: path.to_string(),
        why,
    };
    let under_non_dir = |rel: &str| {
        let mut p = rel.as_bytes();
        while let Some(i) = p.iter().rposition(|&c| c == b'/') {
            p = &p[..i];
            if manifest.get(p).is_some_and(|e| e.kind != EntryKind::Dir) {
                return true;
            }
        }
        false
    };
    for rel in meta.removed_paths.iter().chain(meta.shared.iter().map(|s| &s.path)) {
        crate::snapshot::check_rel_path(rel.as_bytes()).map_err(|why| refuse(rel, why))?;
        if under_non_dir(rel) {
            return Err(refuse(rel, "it lies under a symlink or file the snapshot creates"));
        }
    }
    for sc in meta.shared.iter().filter(|s| s.class == Class::Alternatives) {
        let name = sc.path.rsplit('/').next().unwrap_or_default();
        let slaves = sc
            .ours
            .as_deref()
            .and_then(merge::parse_alt)
            .map(|a| a.slaves)
            .unwrap_or_default();
        for n in std::iter::once(name).chain(slaves.iter().map(|(n, _)| n.as_str())) {
            let link = format!("etc/alternatives/{n}");
            if !is_plain_name(n) {
                return Err(refuse(&link, "an alternatives link name must be a plain file name"));
            }
            if under_non_dir(&link)
                || manifest
                    .get(b"etc/alternatives")
                    .is_some_and(|e| e.kind != EntryKind::Dir)
            {
                return Err(refuse(&link, "it lies under a symlink or file the snapshot creates"));
            }
        }
    }
    Ok(())
}

fn is_plain_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains('/') && !n.contains('\0')
}

/// Resolve, before anything is written, every directory the restore will write in (or the
/// deepest part of it that exists): a symlink on the target that leads out of ROOT is refused
/// here, so such a restore writes nothing at all.
fn preflight(rootd: &Root, meta: &AptMeta, manifest: &Manifest) -> Result<()> {
    let mut dirs: BTreeSet<Vec<u8>> = BTreeSet::new();
    for e in &manifest.entries {
        dirs.insert(beneath::split(&e.path).0.to_vec());
        if e.kind == EntryKind::Dir {
            dirs.insert(e.path.clone());
        }
    }
    for rel in meta.removed_paths.iter().chain(meta.shared.iter().map(|s| &s.path)) {
        dirs.insert(beneath::split(rel.as_bytes()).0.to_vec());
    }
    dirs.insert(b"var/lib/dpkg".to_vec());
    dirs.insert(b"etc/alternatives".to_vec());
    let mut ok: HashSet<Vec<u8>> = HashSet::new();
    for d in dirs {
        let mut p: &[u8] = &d;
        loop {
            if ok.contains(p) {
                break;
            }
            match rootd.dir_io(p, Symlinks::Beneath) {
                Ok(_) => {
                    ok.insert(p.to_vec());
                    break;
                }
                // Created (or a file replaced by a directory) by the restore: check what exists.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) && !p.is_empty() => {
                    p = beneath::split(p).0;
                }
                Err(e) => return Err(rootd.error(p, e)),
            }
        }
    }
    Ok(())
}

/// `mkdir -p` beneath ROOT (new directories 0755 root:root, as dpkg's database directories).
fn mkdir_all(rootd: &Root, rel: &[u8]) -> Result<Dir> {
    match rootd.dir_io(rel, Symlinks::Beneath) {
        Ok(d) => return Ok(d),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !rel.is_empty() => {}
        Err(e) => return Err(rootd.error(rel, e)),
    }
    let (parent, name) = beneath::split(rel);
    let pd = mkdir_all(rootd, parent)?;
    match pd.mkdir(name, 0o755) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("create directory", pd.display(name), e)),
    }
    rootd.dir(rel, Symlinks::Beneath)
}

/// Test hook: `ENVSNAP_TEST_ABORT_AFTER_FILES=N` makes the process exit with status 137 (as if
/// SIGKILLed) right after the N-th payload file is placed, so tests can check that an interrupted
/// restore leaves a re-runnable state. Not meant for any other use.
fn abort_after_files() -> Option<u64> {
    std::env::var("ENVSNAP_TEST_ABORT_AFTER_FILES").ok()?.parse().ok()
}

/// Remove temporary names (`.<name>.envsnap-<pid>-…`) that a killed restore (its pid is gone)
/// left in `dir`. Only names with that shape are looked at.
fn remove_stale_temps(dir: &Dir) {
    let Ok(names) = dir.names() else { return };
    for name in names {
        let Ok(name) = String::from_utf8(name) else { continue };
        if !name.starts_with('.') {
            continue;
        }
        let Some(i) = name.rfind(".envsnap-") else { continue };
        let Some(pid) = name[i + ".envsnap-".len()..]
            .split('-')
            .next()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid <= 0 || pid as u32 == std::process::id() {
            continue;
        }
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive =
            unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if alive {
            continue;
        }
        match dir.lstat(name.as_bytes()) {
            Ok(Some(st)) if st.kind == beneath::Kind::Dir => {
                // remove_dir_all never follows symlinks inside the tree it removes.
                let _ = crate::restore::remove_tree(&dir.fd_path(name.as_bytes()));
            }
            Ok(Some(_)) => {
                let _ = dir.unlink(name.as_bytes());
            }
            _ => {}
        }
    }
}

/// Place files, symlinks and directories; returns the link mode actually used for files.
fn place_payload(store: &Store, manifest: &Manifest, rootd: &Root, link: LinkMode) -> Result<String> {
    // Leftovers of a killed restore, in the directories this one writes to.
    let mut dirs: BTreeSet<&[u8]> = BTreeSet::new();
    for e in &manifest.entries {
        dirs.insert(beneath::split(&e.path).0);
    }
    for d in &dirs {
        if let Ok(d) = rootd.dir_io(d, Symlinks::Beneath) {
            remove_stale_temps(&d);
        }
    }
    // Directories first, in path order so parents precede children. An existing directory (or a
    // symlink to one beneath ROOT, e.g. merged-/usr `/lib`) is kept; only its mode/owner are set
    // here, the rest of its attributes once its contents are in place (see below).
    let mut placed_dirs: Vec<&Entry> = Vec::new();
    for e in manifest.entries.iter().filter(|e| e.kind == EntryKind::Dir) {
        let (parent, name) = rootd.parent(&e.path, Symlinks::Beneath)?;
        let here = parent.display(name);
        match parent.lstat(name)? {
            Some(st) if st.kind == beneath::Kind::Dir => {
                placed_dirs.push(e);
                if st.mode == e.mode && st.uid == e.uid && st.gid == e.gid {
                    continue;
                }
            }
            Some(st) if st.kind == beneath::Kind::Symlink && rootd.dir_io(&e.path, Symlinks::Beneath).is_ok() => {
                continue;
            }
            Some(_) => {
                parent.unlink(name).at("remove", &here)?;
                parent.mkdir(name, 0o700).at("create directory", &here)?;
                placed_dirs.push(e);
            }
            None => {
                match parent.mkdir(name, 0o700) {
                    Ok(()) => {}
                    Err(er) if er.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(er) => return Err(Error::io("create directory", &here, er)),
                }
                placed_dirs.push(e);
            }
        }
        // Owner before mode: chown clears setgid bits (`/var/log/redis` is 2750).
        parent.lchown(name, e.uid, e.gid).at("chown", &here)?;
        parent.chmod(name, e.mode).at("chmod", &here)?;
    }
    let others: Vec<&Entry> = manifest.entries.iter().filter(|e| e.kind != EntryKind::Dir).collect();
    let abort_after = abort_after_files();
    let placed = std::sync::atomic::AtomicU64::new(0);
    let link_stats = crate::restore::LinkStats::default();
    // Creating thousands of small files is bound by filesystem latency (journal, inode
    // allocation), not CPU: more threads than cores keep the disk queue full.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads().max(2) * 4)
        .build()
        .map_err(|e| Error::Other(format!("thread pool: {e}")))?;
    pool.install(|| {
        others.par_iter().try_for_each(|e| -> Result<()> {
            let (parent, name) = rootd.parent(&e.path, Symlinks::Beneath)?;
            // A directory where the snapshot has a file: only replace it when empty.
            if parent.lstat(name)?.is_some_and(|st| st.kind == beneath::Kind::Dir) {
                parent.rmdir(name).at("remove directory", parent.display(name))?;
            }
            match e.kind {
                EntryKind::File => {
                    // The path names the open directory itself (`/proc/self/fd/N/name`), so the
                    // file lands exactly there; the final name is replaced by rename, not followed.
                    let used = crate::restore::place_file(store, e, &parent.fd_path(name), link, true)
                        .map_err(|er| parent.fix_error(er))?;
                    link_stats.record(used);
                    let n = placed.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    if abort_after == Some(n) {
                        std::process::exit(137);
                    }
                    Ok(())
                }
                EntryKind::Symlink => place_symlink(e, &parent, name),
                EntryKind::Dir => Ok(()),
            }
        })
    })?;
    // Directory mtimes (and xattrs) last, deepest first: placing entries changes the mtime of
    // their parent.
    placed_dirs.sort_by(|a, b| b.path.cmp(&a.path));
    for e in placed_dirs {
        let (parent, name) = rootd.parent(&e.path, Symlinks::Beneath)?;
        // Checked just before use: a directory, not a symlink, so the path-based calls below
        // act on it and nothing else.
        if !parent.lstat(name)?.is_some_and(|st| st.kind == beneath::Kind::Dir) {
            return Err(Error::Other(format!(
                "{}: no longer a directory during the restore",
                parent.display(name).display()
            )));
        }
        crate::restore::apply_attrs(&parent.fd_path(name), e, true).map_err(|er| parent.fix_error(er))?;
    }
    Ok(link_stats.summary())
}

fn place_symlink(e: &Entry, dir: &Dir, name: &[u8]) -> Result<()> {
    let target = e.target.as_deref().unwrap_or_default();
    if let Ok(cur) = dir.read_link(name) {
        if cur == target {
            return Ok(());
        }
    }
    let tmp = format!(".{}.envsnap-{}-link", String::from_utf8_lossy(name), std::process::id());
    let tmp = tmp.as_bytes();
    let _ = dir.unlink(tmp);
    dir.symlink(target, tmp).at("create symlink", dir.display(tmp))?;
    dir.lchown(tmp, e.uid, e.gid).at("chown", dir.display(tmp))?;
    let t = filetime::FileTime::from_unix_time(
        e.mtime_ns.div_euclid(1_000_000_000),
        e.mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_symlink_file_times(dir.fd_path(tmp), t, t).at("set mtime of", dir.display(tmp))?;
    dir.rename(tmp, name).at("rename into place", dir.display(name))
}

/// Remove what the install removed, unless a target package the snapshot knows nothing about
/// owns it (drifted target).
fn remove_paths(meta: &AptMeta, rootd: &Root) -> Result<u64> {
    if meta.removed_paths.is_empty() {
        return Ok(0);
    }
    let q: HashSet<String> = meta.removed_paths.iter().map(|p| format!("/{p}")).collect();
    let owners = owners(rootd.path(), &q)?;
    let ours = meta.own_package_names();
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
        let (dir, name) = beneath::split(rel.as_bytes());
        let parent = match rootd.dir_io(dir, Symlinks::Beneath) {
            Ok(d) => d,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => continue,
            Err(e) => return Err(rootd.error(rel.as_bytes(), e)),
        };
        let Some(st) = parent.lstat(name)? else { continue };
        if st.kind == beneath::Kind::Dir {
            // A directory that still has the target's files stays.
            if parent.rmdir(name).is_ok() {
                n += 1;
            }
            continue;
        }
        parent.unlink(name).at("remove", parent.display(name))?;
        n += 1;
    }
    Ok(n)
}

/// Write `text` over ROOT/`rel` atomically, keeping the target's mode/owner when it had the file.
fn write_atomic(rootd: &Root, rel: &str, text: &[u8], mode: u32, uid: u32, gid: u32) -> Result<()> {
    let (dir, name) = beneath::split(rel.as_bytes());
    let d = mkdir_all(rootd, dir)?;
    let (mode, uid, gid) = match d.lstat(name)? {
        Some(st) if st.kind == beneath::Kind::File => (st.mode, st.uid, st.gid),
        _ => (mode, uid, gid),
    };
    remove_stale_temps(&d);
    let sname = String::from_utf8_lossy(name);
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{sname}.envsnap-{}-", std::process::id()))
        .tempfile_in(d.fd_path(b""))
        .at("create temporary file in", d.path())?;
    tmp.write_all(text).at("write", d.display(name))?;
    let f = tmp.as_file();
    std::os::unix::fs::fchown(f, Some(uid), Some(gid)).at("chown", d.display(name))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .at("chmod", d.display(name))?;
    let tname = tmp
        .path()
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_default();
    // Renamed through the directory's descriptor; the temporary file is ours from here on.
    let (_, tpath) = tmp.keep().map_err(|e| Error::io("keep", d.display(name), e.error))?;
    d.rename(&tname, name)
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tpath);
        })
        .at("rename into place", d.display(name))
}

/// A shared state file of ROOT as text (`None` when absent); a symlink there is an error.
fn read_opt(rootd: &Root, rel: &str) -> Result<Option<String>> {
    let (dir, name) = beneath::split(rel.as_bytes());
    let d = match rootd.dir_io(dir, Symlinks::Beneath) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(rootd.error(rel.as_bytes(), e)),
    };
    match d.read(name)? {
        None => Ok(None),
        Some(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| Error::Other(format!("{}: shared state file is not UTF-8", d.display(name).display()))),
    }
}

fn merge_one(sc: &SharedChange, rootd: &Root) -> Result<()> {
    let theirs = read_opt(rootd, &sc.path)?;
    if sc.class != Class::Alternatives {
        let merged = merge::apply(&sc.path, sc.class, theirs.as_deref().unwrap_or(""), &sc.ops);
        if theirs.as_deref() != Some(merged.as_str()) {
            write_atomic(rootd, &sc.path, merged.as_bytes(), sc.mode, sc.uid, sc.gid)?;
        }
        return Ok(());
    }
    let merged = merge::merge_alternatives(sc.base.as_deref(), sc.ours.as_deref(), theirs.as_deref());
    match &merged {
        Some(m) if theirs.as_deref() != Some(m.as_str()) => {
            write_atomic(rootd, &sc.path, m.as_bytes(), sc.mode, sc.uid, sc.gid)?
        }
        None if theirs.is_some() => {
            let (parent, name) = rootd.parent(sc.path.as_bytes(), Symlinks::Beneath)?;
            parent.unlink(name).at("remove", parent.display(name))?
        }
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
    let etc = mkdir_all(rootd, b"etc/alternatives")?;
    let cur = etc
        .read_link(name.as_bytes())
        .ok()
        .map(|p| String::from_utf8_lossy(&p).into_owned());
    let Some(choice) = alt.selected(cur.as_deref()) else {
        return Ok(());
    };
    set_link(&etc, name, Some(&choice.path))?;
    for (sname, _) in &alt.slaves {
        set_link(&etc, sname, choice.slaves.get(sname).map(String::as_str))?;
    }
    Ok(())
}

/// Point `/etc/alternatives/<name>` at `target` (or remove it). Names come from admin files (the
/// snapshot's or the target's): anything but a plain file name is refused.
fn set_link(etc: &Dir, name: &str, target: Option<&str>) -> Result<()> {
    if !is_plain_name(name) {
        return Err(Error::Other(format!(
            "refusing alternatives link {name:?} in {}: not a plain file name",
            etc.path().display()
        )));
    }
    remove_stale_temps(etc);
    let tmp = format!(".{name}.envsnap-{}-link", std::process::id());
    let _ = etc.unlink(tmp.as_bytes());
    match target {
        Some(t) => {
            etc.symlink(t.as_bytes(), tmp.as_bytes())
                .at("create symlink", etc.display(tmp.as_bytes()))?;
            etc.rename(tmp.as_bytes(), name.as_bytes())
                .at("rename into place", etc.display(name.as_bytes()))
        }
        None => match etc.unlink(name.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("remove", etc.display(name.as_bytes()), e))
            }
            _ => Ok(()),
        },
    }
}

/// Rebuild ROOT's linker cache (`/etc/ld.so.cache` is never restored, it is regenerated).
///
/// `-i`: ldconfig's aux cache (`/var/cache/ldconfig/aux-cache`) remembers each library's soname
/// by (inode, ctime in seconds, size, device). It is the only input of ldconfig that differs from
/// one run to the next (inode numbers), and a restore invalidates it wholesale: it writes
/// hundreds of files right after the target's own apt run (a drifted base) recorded entries,
/// and an entry that matches a different file makes ldconfig take that file's soname, so the new
/// cache lacks a library. Reading every library again costs a fraction of a second.
pub fn ldconfig(root: &Path) -> Result<()> {
    let mut cmd = std::process::Command::new(find_ldconfig());
    cmd.arg("-i");
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
