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
use crate::error::{Error, IoContext, Result};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
    /// The link mode actually used for payload files (`reflink`, `copy`, or a `+`-joined mix).
    pub link: String,
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
pub fn check_compat(meta: &AptMeta, manifest: &Manifest, root: &Path) -> Result<Vec<String>> {
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
    conflicts.extend(missing_dependencies(meta, root)?);
    // Users and groups the snapshot adds must not take an id the target gives another name.
    for sc in meta.shared.iter().filter(|s| s.class == Class::ColonLines) {
        let theirs = read_opt(&root.join(&sc.path))?.unwrap_or_default();
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
fn missing_dependencies(meta: &AptMeta, root: &Path) -> Result<Vec<String>> {
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
    let target_text = read_opt(&root.join("var/lib/dpkg/status"))?.unwrap_or_default();
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
    // dpkg's locks before reading its database: the check must see the state the restore writes
    // over (a dry run only reads, and takes none).
    let locks = if dry_run { None } else { Some(super::lock::lock(&root)?) };
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
    rep.link = place_payload(store, &manifest, &root, link)?;
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

/// Test hook: `ENVSNAP_TEST_ABORT_AFTER_FILES=N` makes the process exit with status 137 (as if
/// SIGKILLed) right after the N-th payload file is placed, so tests can check that an interrupted
/// restore leaves a re-runnable state. Not meant for any other use.
fn abort_after_files() -> Option<u64> {
    std::env::var("ENVSNAP_TEST_ABORT_AFTER_FILES").ok()?.parse().ok()
}

/// Remove temporary names (`.<name>.envsnap-<pid>-…`) that a killed restore (its pid is gone)
/// left in `dir`. Only names with that shape are looked at.
fn remove_stale_temps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
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
        let p = e.path();
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                let _ = crate::restore::remove_tree(&p);
            }
            Ok(_) => {
                let _ = std::fs::remove_file(&p);
            }
            Err(_) => {}
        }
    }
}

/// Place files, symlinks and directories; returns the link mode actually used for files.
fn place_payload(store: &Store, manifest: &Manifest, root: &Path, link: LinkMode) -> Result<String> {
    // Leftovers of a killed restore, in the directories this one writes to.
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for e in &manifest.entries {
        if let Some(d) = abs(root, &e.path).parent() {
            dirs.insert(d.to_path_buf());
        }
    }
    for d in &dirs {
        remove_stale_temps(d);
    }
    // Directories first, in path order so parents precede children. An existing directory (or a
    // symlink to one, e.g. merged-/usr `/lib`) is kept; only its mode/owner are set here, the
    // rest of its attributes once its contents are in place (see below).
    let mut placed_dirs: Vec<(&Entry, PathBuf)> = Vec::new();
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
                placed_dirs.push((e, p.clone()));
                if m.mode() & 0o7777 == e.mode && m.uid() == e.uid && m.gid() == e.gid {
                    continue;
                }
            }
            Ok(_) => {
                std::fs::remove_file(&p).at("remove", &p)?;
                std::fs::create_dir(&p).at("create directory", &p)?;
                placed_dirs.push((e, p.clone()));
            }
            Err(_) => {
                match std::fs::create_dir(&p) {
                    Ok(()) => {}
                    Err(er) if er.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(er) => return Err(Error::io("create directory", &p, er)),
                }
                placed_dirs.push((e, p.clone()));
            }
        }
        std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid)).at("chown", &p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode)).at("chmod", &p)?;
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
            let p = abs(root, &e.path);
            // A directory where the snapshot has a file: only replace it when empty.
            if let Ok(m) = std::fs::symlink_metadata(&p) {
                if m.is_dir() {
                    std::fs::remove_dir(&p).at("remove directory", &p)?;
                }
            }
            match e.kind {
                EntryKind::File => {
                    link_stats.record(crate::restore::place_file(store, e, &p, link, true)?);
                    let n = placed.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    if abort_after == Some(n) {
                        std::process::exit(137);
                    }
                    Ok(())
                }
                EntryKind::Symlink => place_symlink(e, &p),
                EntryKind::Dir => Ok(()),
            }
        })
    })?;
    // Directory mtimes (and xattrs) last, deepest first: placing entries changes the mtime of
    // their parent.
    placed_dirs.sort_by(|a, b| b.0.path.cmp(&a.0.path));
    for (e, p) in placed_dirs {
        crate::restore::apply_attrs(&p, e, true)?;
    }
    Ok(link_stats.summary())
}

fn place_symlink(e: &Entry, p: &Path) -> Result<()> {
    let target = e.target.as_deref().unwrap_or_default();
    if let Ok(cur) = std::fs::read_link(p) {
        if cur.as_os_str().as_bytes() == target {
            return Ok(());
        }
    }
    let dir = p.parent().expect("payload path has a parent");
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.envsnap-{}-link", std::process::id()));
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
    let owners = owners(root, &q)?;
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
    remove_stale_temps(dir);
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.envsnap-{}-", std::process::id()))
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
        let merged = merge::apply(&sc.path, sc.class, theirs.as_deref().unwrap_or(""), &sc.ops);
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
    if let Some(dir) = p.parent() {
        remove_stale_temps(dir);
    }
    let tmp = p.with_file_name(format!(".{name}.envsnap-{}-link", std::process::id()));
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
