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
    /// Devices, FIFOs and sockets that were skipped.
    pub skipped_special: Vec<PathBuf>,
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

fn mtime_ns(m: &Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

fn ctime_ns(m: &Metadata) -> i64 {
    m.ctime() * 1_000_000_000 + m.ctime_nsec()
}

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
            Selection::Paths(paths) => scan_paths(&root, paths, req.xattrs).map(|s| (s, Vec::new())),
        };
        (scan, cache.join().expect("loading the stat cache panicked"))
    });
    let (mut scanned, skipped) = scan?;
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
    let results: Vec<(usize, crate::store::Ingested)> = to_hash
        .par_iter()
        .map(|&i| {
            let s = &scanned[i];
            let exec = s.entry.mode & 0o111 != 0;
            let mtime = filetime::FileTime::from_unix_time(
                s.entry.mtime_ns.div_euclid(1_000_000_000),
                s.entry.mtime_ns.rem_euclid(1_000_000_000) as u32,
            );
            let rel = s.entry.path.as_slice();
            let scan_fn = req.scanner.map(|sc| move |c: &[u8]| sc.scan(rel, c));
            let ing = store.objects.ingest(
                &root.join(OsStr::from_bytes(rel)),
                exec,
                mtime,
                scan_fn.as_ref().map(|f| f as crate::store::ScanFn),
            )?;
            progress::with(req.progress, |p| p.inc(s.entry.size));
            Ok((i, ing))
        })
        .collect::<Result<_>>()?;
    progress::with(req.progress, |p| p.finish());

    let (mut new_objects, mut new_bytes) = (0u64, 0u64);
    let mut written = Vec::new();
    for (i, ing) in results {
        if ing.new {
            new_objects += 1;
            new_bytes += ing.size;
        }
        if let Some(stat) = ing.stat {
            written.push((ing.id, stat));
        }
        let e = &mut scanned[i].entry;
        e.object = Some(ing.id);
        e.size = ing.size; // the content we stored, even if the file changed since it was stat'ed
        e.note = ing.note;
    }
    for (&f, &leader) in &follower_of {
        let (obj, size, note) = (
            scanned[leader].entry.object,
            scanned[leader].entry.size,
            scanned[leader].entry.note.clone(),
        );
        let e = &mut scanned[f].entry;
        e.object = obj;
        e.size = size;
        e.note = note;
    }
    let (entries, stat_ids): (Vec<Entry>, Vec<StatId>) = scanned
        .into_iter()
        .zip(was_hit)
        .map(|(s, hit)| {
            let id = StatId {
                ctime_ns: s.ctime_ns,
                ino: s.ino,
                hit,
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
        root_mtime_ns: mtime_ns(&root_meta),
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
    let snapshot_id = match unchanged {
        Some(id) => {
            store.index().touch_created(id, row.created_ns)?;
            id
        }
        None => store.index().commit_snapshot(NewSnapshot {
            row: &row,
            manifest: &manifest,
            statcache: &stat_cache(&manifest, &stat_ids, started_ns, scanner_id),
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
        skipped_special: skipped,
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
    for (e, &StatId { ctime_ns, ino, hit }) in manifest.entries.iter().zip(stat_ids) {
        if !hit && e.mtime_ns.max(ctime_ns) >= racy_after {
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
    Ok(Some(Scanned {
        entry: Entry {
            path: rel,
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: if kind == EntryKind::File { m.len() } else { 0 },
            mtime_ns: mtime_ns(m),
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
fn scan_tree(root: &Path, xattrs: bool, skip_dir: Option<(u64, u64)>) -> Result<(Vec<Scanned>, Vec<PathBuf>)> {
    enum Found {
        Entry(Scanned),
        Special(PathBuf),
        TheStore,
    }
    // `dir` is relative to the root, empty for the root itself.
    let scan_dir = |dir: &[u8], parallel: bool| -> Result<Vec<Found>> {
        let dir_abs = root.join(OsStr::from_bytes(dir));
        let entries = std::fs::read_dir(&dir_abs)
            .and_then(|rd| rd.collect::<std::io::Result<Vec<_>>>())
            .at("read directory", &dir_abs)?;
        let describe = |de: &std::fs::DirEntry| {
            let name = de.file_name();
            let mut rel = Vec::with_capacity(dir.len() + 1 + name.len());
            if !dir.is_empty() {
                rel.extend_from_slice(dir);
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            let m = de.metadata().at("stat", de.path())?;
            // Never snapshot the store into itself (`save dir . --store .envsnap`).
            if m.is_dir() && Some((m.dev(), m.ino())) == skip_dir {
                return Ok(Found::TheStore);
            }
            Ok(match entry_for(root, rel, &m, xattrs)? {
                Some(s) => Found::Entry(s),
                None => Found::Special(de.path()),
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
                Found::TheStore => {}
            }
        }
    }
    special.sort();
    Ok((scanned, special))
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
