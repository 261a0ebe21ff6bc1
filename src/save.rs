//! Save: walk a tree (or take a list of paths), hash what changed, ingest new content, and
//! commit the snapshot in one transaction.
//!
//! Files whose (size, mtime, ctime, inode) match the stat cache of the previous save from the
//! same path are not read again. Hashing and ingest run in parallel; each file is read once.

use crate::error::{Error, IoContext, Result};
use crate::index::{NewSnapshot, SnapshotRow};
use crate::progress::{self, Progress};
use crate::repo::{now_ns, Store};
use crate::snapshot::{Entry, EntryKind, Manifest};
use crate::statcache::{StatCache, StatRow};
use rayon::prelude::*;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to put in the snapshot.
pub enum Selection {
    /// The whole tree under the root.
    Tree,
    /// Exactly these relative paths (directories are not recursed): the apt adapter's delta.
    Paths(Vec<Vec<u8>>),
}

/// An adapter hook that looks at each file's content while it is hashed anyway, and keeps a
/// note about it (the venv adapter records where a file holds absolute paths). Notes are cached
/// with the stat cache, keyed by `id()`, so an unchanged re-save does not read files again.
pub trait ContentScanner: Sync {
    /// A fingerprint of the scanner's parameters; cached notes from another id are not reused.
    fn id(&self) -> String;
    fn scan(&self, rel: &[u8], content: &[u8]) -> Option<String>;
}

pub struct SaveRequest<'a> {
    pub key: String,
    pub kind: String,
    pub root: PathBuf,
    pub meta: serde_json::Value,
    pub selection: Selection,
    /// Capture extended attributes (the apt adapter needs `security.capability`).
    pub xattrs: bool,
    pub scanner: Option<&'a dyn ContentScanner>,
    pub progress: Option<&'a dyn Progress>,
}

impl<'a> SaveRequest<'a> {
    /// A plain directory save.
    pub fn tree(key: impl Into<String>, kind: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        SaveRequest {
            key: key.into(),
            kind: kind.into(),
            root: root.into(),
            meta: serde_json::json!({}),
            selection: Selection::Tree,
            xattrs: false,
            scanner: None,
            progress: None,
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SaveReport {
    pub snapshot_id: i64,
    pub key: String,
    pub kind: String,
    pub source: PathBuf,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Files read and hashed (the rest came from the stat cache).
    pub hashed_files: u64,
    pub new_objects: u64,
    pub new_bytes: u64,
    /// The key already pointed at exactly this tree: nothing was written (what CI steps use to
    /// say "unchanged" instead of "saved").
    pub unchanged: bool,
    /// Devices, FIFOs and sockets that were skipped.
    pub skipped_special: Vec<PathBuf>,
    /// Paths deleted while the save walked the tree (or before it read them): not saved.
    pub vanished: Vec<PathBuf>,
    /// Files that kept changing while they were read ([`MAX_REREADS`] times): the last read
    /// is saved and may mix old and new content; they are left out of the stat cache.
    pub changed_while_read: Vec<PathBuf>,
    pub seconds: f64,
}

/// One scanned path with the stat fields the cache compares.
struct Scanned {
    entry: Entry,
    ctime_ns: i64,
    ino: u64,
    dev: u64,
    nlink: u64,
}

/// A timestamp in nanoseconds since the epoch, or None outside what an i64 holds (before
/// 1677-09-21 or after 2262-04-11): filesystems store such mtimes, the index cannot.
fn ns(secs: i64, nsec: i64) -> Option<i64> {
    secs.checked_mul(1_000_000_000)?.checked_add(nsec)
}

/// The mtime to store, refusing clearly one that does not fit (never wrapped to 1901).
fn mtime_ns(m: &Metadata, path: &Path) -> Result<i64> {
    ns(m.mtime(), m.mtime_nsec()).ok_or_else(|| mtime_out_of_range(m, path))
}

fn mtime_out_of_range(m: &Metadata, path: &Path) -> Error {
    let when = u64::try_from(m.mtime())
        .ok()
        .and_then(|secs| std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs)))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| format!("{} seconds since 1970", m.mtime()));
    Error::Usage(format!(
        "cannot save {}: its mtime {when} is outside 1677-09-21..2262-04-11, the range envsnap \
         stores to the nanosecond; give it a representable mtime (`touch`) or save without it",
        path.display()
    ))
}

/// ctime only ever compares with itself (the stat cache): saturate rather than fail.
fn ctime_ns(m: &Metadata) -> i64 {
    ns(m.ctime(), m.ctime_nsec()).unwrap_or(if m.ctime() < 0 { i64::MIN } else { i64::MAX })
}

/// How many times a file that changed while it was read is read again.
pub const MAX_REREADS: usize = 3;

pub fn save(store: &Store, req: SaveRequest) -> Result<SaveReport> {
    save_with_manifest(store, req).map(|(report, _)| report)
}

/// [`save`], also returning the manifest it committed (adapters summarize it without loading
/// it back from the index).
pub fn save_with_manifest(store: &Store, req: SaveRequest) -> Result<(SaveReport, Manifest)> {
    let start = Instant::now();
    crate::key::validate(&req.key)?;
    let root = std::path::absolute(&req.root).at("resolve", &req.root)?;
    let root_meta = match std::fs::metadata(&root) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => {
            return Err(Error::Usage(format!(
                "{} is not a directory: save needs a directory",
                root.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Usage(format!(
                "{} does not exist: nothing to save",
                root.display()
            )))
        }
        Err(e) => return Err(Error::io("stat", &root, e)),
    };
    let _lock = store.lock_shared()?;
    let started_ns = now_ns();

    let store_id = std::fs::metadata(store.root()).map(|m| (m.dev(), m.ino())).ok();
    // The stat cache loads while the tree is scanned: on an unchanged re-save both are most of
    // the work, and they touch different files.
    let (scan, cache) = std::thread::scope(|s| {
        let cache = s.spawn(|| store.index().statcache(&root));
        let scan = match &req.selection {
            Selection::Tree => scan_tree(&root, req.xattrs, store_id),
            Selection::Paths(paths) => scan_paths(&root, paths, req.xattrs).map(|scanned| ScanResult {
                scanned,
                special: Vec::new(),
                vanished: Vec::new(),
            }),
        };
        (scan, cache.join().expect("loading the stat cache panicked"))
    });
    let ScanResult {
        mut scanned,
        special: skipped,
        vanished: mut gone,
    } = scan?;
    let cache = cache?;
    // Unstable is fine (paths are unique) and moves these large structs less.
    scanned.sort_unstable_by(|a, b| a.entry.path.cmp(&b.entry.path));

    // Hard links within the tree: the first path of each inode leads, the others follow it.
    let mut by_inode: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
    for (i, s) in scanned.iter().enumerate() {
        if s.entry.kind == EntryKind::File && s.nlink > 1 {
            by_inode.entry((s.dev, s.ino)).or_default().push(i);
        }
    }
    let mut follower_of: HashMap<usize, usize> = HashMap::new();
    for members in by_inode.values().filter(|m| m.len() > 1) {
        let leader = members[0];
        for &m in members {
            scanned[m].entry.link_group = Some(leader as u64);
            if m != leader {
                follower_of.insert(m, leader);
            }
        }
    }

    let scanner_id = req.scanner.map(|s| s.id()).unwrap_or_default();
    // Stat-cache hits, looked up in path order. The cache is trusted to name objects that exist,
    // like git's index: gc and `verify --repair` drop the rows of an object before deleting it.
    // Notes from another scanner are stale: then nothing is a hit.
    let mut cursor = cache.cursor();
    let usable = cache.scanner == scanner_id;
    let mut to_hash = Vec::new();
    let mut was_hit = vec![false; scanned.len()];
    for (i, s) in scanned.iter_mut().enumerate() {
        if s.entry.kind != EntryKind::File || follower_of.contains_key(&i) {
            continue;
        }
        let exec = s.entry.mode & 0o111 != 0;
        let hit = cursor.seek(&s.entry.path).filter(|c| {
            usable
                && c.size == s.entry.size
                && c.mtime_ns == s.entry.mtime_ns
                && c.ctime_ns == s.ctime_ns
                && c.ino == s.ino
                && c.object.exec == exec
        });
        match hit {
            Some(c) => {
                s.entry.object = Some(c.object);
                s.entry.note = c.note.clone();
                was_hit[i] = true;
            }
            None => to_hash.push(i),
        }
    }

    let hash_bytes: u64 = to_hash.iter().map(|&i| scanned[i].entry.size).sum();
    progress::with(req.progress, |p| p.start("hashing", hash_bytes));
    let results: Vec<(usize, Option<Read>)> = to_hash
        .par_iter()
        .map(|&i| {
            let s = &scanned[i];
            let r = read_stable(store, &root, &s.entry.path, StatKey::of_scanned(s), req.scanner)?;
            progress::with(req.progress, |p| p.inc(s.entry.size));
            Ok((i, r))
        })
        .collect::<Result<_>>()?;
    progress::with(req.progress, |p| p.finish());

    let mut out = Applied {
        dropped: vec![false; scanned.len()],
        unstable: vec![false; scanned.len()],
        ..Default::default()
    };
    for (i, r) in results {
        out.apply(i, r, &mut scanned[i], &root, &mut gone);
    }
    // A hard-link group whose first path was deleted: the next member that is still there
    // leads it (read like any file), the rest follow that one.
    let mut orphans: HashMap<usize, Vec<usize>> = HashMap::new();
    for (&f, &leader) in &follower_of {
        if out.dropped[leader] {
            orphans.entry(leader).or_default().push(f);
        }
    }
    for members in orphans.into_values() {
        let mut members = members;
        members.sort_unstable();
        let mut new_leader = None;
        for m in members {
            match new_leader {
                Some(l) => {
                    follower_of.insert(m, l);
                }
                None => {
                    follower_of.remove(&m);
                    let s = &scanned[m];
                    let r = read_stable(store, &root, &s.entry.path, StatKey::of_scanned(s), req.scanner)?;
                    if out.apply(m, r, &mut scanned[m], &root, &mut gone) {
                        new_leader = Some(m);
                    }
                }
            }
        }
    }
    for (&f, &leader) in &follower_of {
        if out.dropped[f] {
            continue;
        }
        let l = &scanned[leader].entry;
        let (obj, size, note, mtime_ns, mode) = (l.object, l.size, l.note.clone(), l.mtime_ns, l.mode);
        let e = &mut scanned[f].entry;
        e.object = obj;
        e.size = size;
        e.note = note;
        // The same inode: what the leader was read with holds for every member.
        e.mtime_ns = mtime_ns;
        e.mode = mode;
        out.unstable[f] = out.unstable[leader];
    }
    gone.sort();
    let Applied {
        dropped,
        unstable,
        mut changed_while_read,
        new_objects,
        new_bytes,
        written,
    } = out;
    changed_while_read.sort();
    let (entries, stat_ids): (Vec<Entry>, Vec<StatId>) = scanned
        .into_iter()
        .zip(was_hit)
        .zip(dropped.iter().zip(&unstable))
        .filter(|(_, (&dropped, _))| !dropped)
        .map(|((s, hit), (_, &unstable))| {
            let id = StatId {
                ctime_ns: s.ctime_ns,
                ino: s.ino,
                hit,
                unstable,
            };
            (s.entry, id)
        })
        .unzip();
    let manifest = Manifest { entries };
    let count = |k| manifest.entries.iter().filter(|e| e.kind == k).count() as u64;
    let (files, dirs, symlinks) = (count(EntryKind::File), count(EntryKind::Dir), count(EntryKind::Symlink));
    let bytes = manifest.files().map(|e| e.size).sum();
    let row = SnapshotRow {
        id: 0,
        key: req.key.clone(),
        kind: req.kind.clone(),
        created_ns: now_ns(),
        source: root.clone(),
        tool_version: crate::TOOL_VERSION.to_string(),
        meta: req.meta,
        files,
        dirs,
        symlinks,
        bytes,
        root_mode: root_meta.mode() & 0o7777,
        root_uid: root_meta.uid(),
        root_gid: root_meta.gid(),
        root_mtime_ns: mtime_ns(&root_meta, &root)?,
        last_restored_ns: None,
    };
    // An unchanged re-save (nothing re-read, same tree, same metadata) rewrites nothing: the key
    // already points at this exact snapshot. It only becomes the newest, as a save would.
    // (Bound first: the index guard must be released before it is taken again.)
    let unchanged = if to_hash.is_empty() {
        store.index().same_snapshot(&row, &manifest)?
    } else {
        None
    };
    let was_unchanged = unchanged.is_some();
    let snapshot_id = match unchanged {
        Some(id) => {
            store.index().touch_created(id, row.created_ns)?;
            id
        }
        None => store.index().commit_snapshot(NewSnapshot {
            row: &row,
            manifest: &manifest,
            statcache: &stat_cache(&manifest, &stat_ids, started_ns, scanner_id),
            keep_statcache: false,
            objects: &written,
        })?,
    };
    let report = SaveReport {
        snapshot_id,
        key: req.key,
        kind: req.kind,
        source: root,
        files,
        dirs,
        symlinks,
        bytes,
        hashed_files: to_hash.len() as u64,
        new_objects,
        new_bytes,
        unchanged: was_unchanged,
        skipped_special: skipped,
        vanished: gone,
        changed_while_read,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((report, manifest))
}

/// What the stat cache keeps of a scanned path besides its entry.
struct StatId {
    ctime_ns: i64,
    ino: u64,
    /// It matched the previous cache row.
    hit: bool,
    /// It kept changing while it was read: never cached.
    unstable: bool,
}

/// The stat cache for the next save from the same path: every file of the manifest, with the
/// (ctime, inode) it was scanned with, except racy ones.
fn stat_cache(manifest: &Manifest, stat_ids: &[StatId], started_ns: i64, scanner: String) -> StatCache {
    // Racy files (git's term): changed within a timestamp tick of this save, a later rewrite
    // could keep the same size, mtime and ctime. They are not cached, so the next save reads
    // them again. One second covers filesystems with whole-second timestamps. A cache hit is
    // kept whatever its age: its row was not racy when it was recorded (by a save, or by a
    // restore against the filesystem's clock), and the file has not changed since.
    let racy_after = started_ns - 1_000_000_000;
    let mut rows = Vec::new();
    for (
        e,
        &StatId {
            ctime_ns,
            ino,
            hit,
            unstable,
        },
    ) in manifest.entries.iter().zip(stat_ids)
    {
        if unstable || (!hit && e.mtime_ns.max(ctime_ns) >= racy_after) {
            continue;
        }
        if let (EntryKind::File, Some(obj)) = (e.kind, e.object) {
            rows.push((
                e.path.clone(),
                StatRow {
                    size: e.size,
                    mtime_ns: e.mtime_ns,
                    ctime_ns,
                    ino,
                    object: obj,
                    note: e.note.clone(),
                },
            ));
        }
    }
    StatCache::new(scanner, rows)
}

/// What reading the files changed in the scan.
#[derive(Default)]
struct Applied {
    /// Deleted before they could be read: not in the snapshot.
    dropped: Vec<bool>,
    /// Changed across every read: not cached.
    unstable: Vec<bool>,
    changed_while_read: Vec<PathBuf>,
    new_objects: u64,
    new_bytes: u64,
    /// Objects this save wrote, with their stat as written.
    written: Vec<(crate::store::ObjectId, crate::store::ObjectStat)>,
}

impl Applied {
    /// Record how file `i` (`s`) was read. False when it was gone.
    fn apply(&mut self, i: usize, r: Option<Read>, s: &mut Scanned, root: &Path, gone: &mut Vec<PathBuf>) -> bool {
        let Some(r) = r else {
            self.dropped[i] = true;
            gone.push(root.join(OsStr::from_bytes(&s.entry.path)));
            return false;
        };
        if r.ing.new {
            self.new_objects += 1;
            self.new_bytes += r.ing.size;
        }
        if let Some(stat) = r.ing.stat {
            self.written.push((r.ing.id, stat));
        }
        if !r.stable {
            self.unstable[i] = true;
            self.changed_while_read
                .push(root.join(OsStr::from_bytes(&s.entry.path)));
        }
        // The entry describes the file as it was read (a re-read took a later stat).
        s.entry.object = Some(r.ing.id);
        s.entry.size = r.ing.size;
        s.entry.note = r.ing.note;
        s.entry.mtime_ns = r.stat.mtime_ns;
        s.entry.mode = r.stat.mode;
        s.ctime_ns = r.stat.ctime_ns;
        s.ino = r.stat.ino;
        true
    }
}

/// The stat fields that change when a file is written, renamed over or chmod'ed.
#[derive(Clone, Copy, PartialEq, Eq)]
struct StatKey {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    mode: u32,
}

impl StatKey {
    fn of_scanned(s: &Scanned) -> StatKey {
        StatKey {
            size: s.entry.size,
            mtime_ns: s.entry.mtime_ns,
            ctime_ns: s.ctime_ns,
            ino: s.ino,
            mode: s.entry.mode,
        }
    }
}

/// One file read into the store.
struct Read {
    ing: crate::store::Ingested,
    /// The file's stat after the read.
    stat: StatKey,
    /// The stat did not change across the read: the content is a state the file had.
    stable: bool,
}

/// Read `root/rel` into the store and check it did not change meanwhile, as tar's "file changed
/// as we read it": its (size, mtime, ctime, inode, mode) after the read must equal those before
/// it (the scan's), else it is read again, up to [`MAX_REREADS`] times. None: it was deleted
/// (or replaced by something that is not a file) before it could be read.
fn read_stable(
    store: &Store,
    root: &Path,
    rel: &[u8],
    mut before: StatKey,
    scanner: Option<&dyn ContentScanner>,
) -> Result<Option<Read>> {
    let path = root.join(OsStr::from_bytes(rel));
    let scan_fn = scanner.map(|sc| move |c: &[u8]| sc.scan(rel, c));
    let mut rereads = 0;
    loop {
        let mtime = filetime::FileTime::from_unix_time(
            before.mtime_ns.div_euclid(1_000_000_000),
            before.mtime_ns.rem_euclid(1_000_000_000) as u32,
        );
        let exec = before.mode & 0o111 != 0;
        let ing = match store
            .objects
            .ingest(&path, exec, mtime, scan_fn.as_ref().map(|f| f as crate::store::ScanFn))
        {
            Ok(i) => i,
            Err(Error::Io { source, path: p, .. }) if p == path && vanished(&source) => return Ok(None),
            Err(e) => return Err(e),
        };
        let after = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => StatKey {
                size: m.len(),
                mtime_ns: mtime_ns(&m, &path)?,
                ctime_ns: ctime_ns(&m),
                ino: m.ino(),
                mode: m.mode() & 0o7777,
            },
            Ok(_) => return Ok(None),
            Err(e) if vanished(&e) => return Ok(None),
            Err(e) => return Err(Error::io("stat", &path, e)),
        };
        let stable = after == before && ing.size == after.size;
        if stable || rereads == MAX_REREADS {
            return Ok(Some(Read {
                ing,
                stat: after,
                stable,
            }));
        }
        rereads += 1;
        before = after;
    }
}

/// Build an entry from `lstat` data of `root/rel`; None for special files.
fn entry_for(root: &Path, rel: Vec<u8>, m: &Metadata, xattrs: bool) -> Result<Option<Scanned>> {
    // The absolute path is only built where it is needed: most entries never use it.
    let abs = || root.join(OsStr::from_bytes(&rel));
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_file() {
        EntryKind::File
    } else {
        return Ok(None);
    };
    let target = if kind == EntryKind::Symlink {
        Some(
            std::fs::read_link(abs())
                .at("read symlink", abs())?
                .as_os_str()
                .as_bytes()
                .to_vec(),
        )
    } else {
        None
    };
    let xattrs = if xattrs && kind != EntryKind::Symlink {
        read_xattrs(&abs())?
    } else {
        Vec::new()
    };
    // The path is built only for the error: this runs for every entry of every save.
    let mtime_ns = ns(m.mtime(), m.mtime_nsec()).ok_or_else(|| mtime_out_of_range(m, &abs()))?;
    Ok(Some(Scanned {
        entry: Entry {
            path: rel,
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: if kind == EntryKind::File { m.len() } else { 0 },
            mtime_ns,
            object: None,
            target,
            link_group: None,
            xattrs,
            note: None,
        },
        ctime_ns: ctime_ns(m),
        ino: m.ino(),
        dev: m.dev(),
        nlink: m.nlink(),
    }))
}

fn read_xattrs(p: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let names = match xattr::list(p) {
        Ok(n) => n,
        // Filesystems without xattr support have none to capture.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(Error::io("list xattrs of", p, e)),
    };
    for name in names {
        let Some(n) = name.to_str() else { continue };
        if let Some(v) = xattr::get(p, &name).at("read xattr of", p)? {
            out.push((n.to_string(), v));
        }
    }
    out.sort();
    Ok(out)
}

/// Scan the tree: each directory is read once and every entry is `lstat`ed relative to the open
/// directory (`DirEntry::metadata` is `statx(dirfd, name)`, no path lookup from the root).
/// Directories are scanned level by level, each level's directories and their entries in
/// parallel: on an unchanged re-save this scan is most of the work. Iterative, so a deep tree
/// cannot overflow a stack. A directory stays open while its entries are stat'ed; entries are
/// stat'ed in parallel only on levels with few directories, so a thread waiting on them cannot
/// steal more directories to open and a wide level never runs out of file descriptors.
/// Special files are returned apart, to be reported. The order is not sorted.
fn scan_tree(root: &Path, xattrs: bool, skip_dir: Option<(u64, u64)>) -> Result<ScanResult> {
    enum Found {
        Entry(Scanned),
        Special(PathBuf),
        /// Deleted between reading its directory and stat'ing it (or its directory was).
        Vanished(PathBuf),
        TheStore,
    }
    // `dir` is relative to the root, empty for the root itself.
    let scan_dir = |dir: &[u8], parallel: bool| -> Result<Vec<Found>> {
        let dir_abs = root.join(OsStr::from_bytes(dir));
        let entries = match std::fs::read_dir(&dir_abs).and_then(|rd| rd.collect::<std::io::Result<Vec<_>>>()) {
            Ok(e) => e,
            // Deleted (or replaced by a file) since its parent was read: skipped, as tar does.
            Err(e) if vanished(&e) => return Ok(vec![Found::Vanished(dir_abs)]),
            Err(e) => return Err(Error::io("read directory", &dir_abs, e)),
        };
        let describe = |de: &std::fs::DirEntry| {
            let name = de.file_name();
            let mut rel = Vec::with_capacity(dir.len() + 1 + name.len());
            if !dir.is_empty() {
                rel.extend_from_slice(dir);
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            let m = match de.metadata() {
                Ok(m) => m,
                Err(e) if vanished(&e) => return Ok(Found::Vanished(de.path())),
                Err(e) => return Err(Error::io("stat", de.path(), e)),
            };
            // Never snapshot the store into itself (`save dir . --store .envsnap`).
            if m.is_dir() && Some((m.dev(), m.ino())) == skip_dir {
                return Ok(Found::TheStore);
            }
            Ok(match entry_for(root, rel, &m, xattrs) {
                Ok(Some(s)) => Found::Entry(s),
                Ok(None) => Found::Special(de.path()),
                // A symlink or xattrs read after the stat, from a path deleted in between.
                Err(Error::Io { source, .. }) if vanished(&source) => Found::Vanished(de.path()),
                Err(e) => return Err(e),
            })
        };
        if parallel {
            entries.par_iter().map(describe).collect()
        } else {
            entries.iter().map(describe).collect()
        }
    };
    let mut scanned = Vec::new();
    let mut special = Vec::new();
    let mut gone = Vec::new();
    let mut level: Vec<Vec<u8>> = vec![Vec::new()];
    while !level.is_empty() {
        let narrow = level.len() < 2 * rayon::current_num_threads();
        let found: Vec<Vec<Found>> = level.par_iter().map(|d| scan_dir(d, narrow)).collect::<Result<_>>()?;
        level = Vec::new();
        for f in found.into_iter().flatten() {
            match f {
                Found::Entry(s) => {
                    if s.entry.kind == EntryKind::Dir {
                        level.push(s.entry.path.clone());
                    }
                    scanned.push(s);
                }
                Found::Special(abs) => special.push(abs),
                Found::Vanished(abs) => gone.push(abs),
                Found::TheStore => {}
            }
        }
    }
    special.sort();
    gone.sort();
    Ok(ScanResult {
        scanned,
        special,
        vanished: gone,
    })
}

struct ScanResult {
    scanned: Vec<Scanned>,
    /// Devices, FIFOs, sockets.
    special: Vec<PathBuf>,
    vanished: Vec<PathBuf>,
}

/// A path that is gone (or is no longer a directory) when it is read: deleted during the save.
fn vanished(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

fn scan_paths(root: &Path, paths: &[Vec<u8>], xattrs: bool) -> Result<Vec<Scanned>> {
    let mut sorted: Vec<&Vec<u8>> = paths.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut out = Vec::with_capacity(sorted.len());
    for rel in sorted {
        crate::snapshot::check_rel_path(rel)
            .map_err(|why| Error::Usage(format!("cannot save path {:?}: {why}", String::from_utf8_lossy(rel))))?;
        let abs = root.join(OsStr::from_bytes(rel));
        let m = std::fs::symlink_metadata(&abs).at("stat", &abs)?;
        if let Some(s) = entry_for(root, rel.clone(), &m, xattrs)? {
            out.push(s);
        }
    }
    Ok(out)
}
