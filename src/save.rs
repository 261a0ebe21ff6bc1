//! Save: walk a tree (or take a list of paths), hash what changed, ingest new content, and
//! commit the snapshot in one transaction.
//!
//! Files whose (size, mtime, ctime, inode) match the stat cache of the previous save from the
//! same path are not read again. Hashing and ingest run in parallel; each file is read once.

use crate::error::{Error, IoContext, Result};
use crate::index::{NewSnapshot, SnapshotRow, StatRow};
use crate::progress::{self, Progress};
use crate::repo::{now_ns, Store};
use crate::snapshot::{Entry, EntryKind, Manifest};
use rayon::prelude::*;
use std::collections::HashMap;
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
    abs: PathBuf,
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
    let (mut scanned, skipped) = match &req.selection {
        Selection::Tree => scan_tree(&root, req.xattrs, store_id)?,
        Selection::Paths(paths) => (scan_paths(&root, paths, req.xattrs)?, Vec::new()),
    };
    scanned.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));

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

    let cache = store.index().statcache(&root)?;
    let scanner_id = req.scanner.map(|s| s.id()).unwrap_or_default();
    let mut statrows: Vec<(Vec<u8>, StatRow)> = Vec::new();
    // Stat-cache hits, checked in parallel: the object-exists check is a stat per file.
    let hits: Vec<Option<&StatRow>> = scanned
        .par_iter()
        .enumerate()
        .map(|(i, s)| {
            if s.entry.kind != EntryKind::File || follower_of.contains_key(&i) {
                return None;
            }
            let exec = s.entry.mode & 0o111 != 0;
            cache.get(&s.entry.path).filter(|c| {
                c.size == s.entry.size
                    && c.mtime_ns == s.entry.mtime_ns
                    && c.ctime_ns == s.ctime_ns
                    && c.ino == s.ino
                    && c.exec == exec
                    && c.scanner == scanner_id
                    && store.objects.exists(&c.object)
            })
        })
        .collect();
    let mut to_hash = Vec::new();
    for (i, (s, hit)) in scanned.iter_mut().zip(hits).enumerate() {
        if s.entry.kind != EntryKind::File || follower_of.contains_key(&i) {
            continue;
        }
        match hit {
            Some(c) => {
                s.entry.object = Some(c.object);
                s.entry.note = c.note.clone();
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
            let ing = store
                .objects
                .ingest(&s.abs, exec, mtime, scan_fn.as_ref().map(|f| f as crate::store::ScanFn))?;
            progress::with(req.progress, |p| p.inc(s.entry.size));
            Ok((i, ing))
        })
        .collect::<Result<_>>()?;
    progress::with(req.progress, |p| p.finish());

    let (mut new_objects, mut new_bytes) = (0u64, 0u64);
    for (i, ing) in results {
        if ing.new {
            new_objects += 1;
            new_bytes += ing.size;
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
    // Racy files (git's term): changed within a timestamp tick of this save, a later rewrite
    // could keep the same size, mtime and ctime. They are not cached, so the next save reads
    // them again. One second covers filesystems with whole-second timestamps.
    let racy_after = started_ns - 1_000_000_000;
    for s in &scanned {
        if s.entry.mtime_ns.max(s.ctime_ns) >= racy_after {
            continue;
        }
        if let (EntryKind::File, Some(obj)) = (s.entry.kind, s.entry.object) {
            statrows.push((
                s.entry.path.clone(),
                StatRow {
                    size: s.entry.size,
                    mtime_ns: s.entry.mtime_ns,
                    ctime_ns: s.ctime_ns,
                    ino: s.ino,
                    exec: obj.exec,
                    scanner: scanner_id.clone(),
                    object: obj,
                    note: s.entry.note.clone(),
                },
            ));
        }
    }

    let manifest = Manifest {
        entries: scanned.into_iter().map(|s| s.entry).collect(),
    };
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
            statcache: statrows,
        })?,
    };
    Ok(SaveReport {
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
    })
}

/// Build an entry from `lstat` data; None for special files.
fn entry_for(root: &Path, abs: &Path, m: &Metadata, xattrs: bool) -> Result<Option<Scanned>> {
    let rel = abs.strip_prefix(root).expect("walked path is under its root");
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
            std::fs::read_link(abs)
                .at("read symlink", abs)?
                .as_os_str()
                .as_bytes()
                .to_vec(),
        )
    } else {
        None
    };
    let xattrs = if xattrs && kind != EntryKind::Symlink {
        read_xattrs(abs)?
    } else {
        Vec::new()
    };
    Ok(Some(Scanned {
        entry: Entry {
            path: rel.as_os_str().as_bytes().to_vec(),
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
        abs: abs.to_path_buf(),
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

/// Walk the tree, then `lstat` and describe every path in parallel: on an unchanged re-save the
/// per-path `lstat` is most of the work. The walk itself only reads directories (`getdents`
/// gives the file types); directories are stat'ed during the walk, to skip the store.
fn scan_tree(root: &Path, xattrs: bool, skip_dir: Option<(u64, u64)>) -> Result<(Vec<Scanned>, Vec<PathBuf>)> {
    let mut paths = Vec::new();
    let mut it = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter();
    while let Some(item) = it.next() {
        let de = item.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            match e.into_io_error() {
                Some(io) => Error::io("read", path, io),
                None => Error::Other(format!("filesystem loop at {}", path.display())),
            }
        })?;
        if de.depth() == 0 {
            continue;
        }
        // Never snapshot the store into itself (`save dir . --store .envsnap`).
        if de.file_type().is_dir() && skip_dir.is_some() {
            let m = std::fs::symlink_metadata(de.path()).at("stat", de.path())?;
            if Some((m.dev(), m.ino())) == skip_dir {
                it.skip_current_dir();
                continue;
            }
        }
        paths.push(de.into_path());
    }
    let described: Vec<(PathBuf, Option<Scanned>)> = paths
        .into_par_iter()
        .map(|p| {
            let m = std::fs::symlink_metadata(&p).at("stat", &p)?;
            let s = entry_for(root, &p, &m, xattrs)?;
            Ok((p, s))
        })
        .collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(described.len());
    let mut skipped = Vec::new();
    for (p, s) in described {
        match s {
            Some(s) => out.push(s),
            None => skipped.push(p),
        }
    }
    Ok((out, skipped))
}

fn scan_paths(root: &Path, paths: &[Vec<u8>], xattrs: bool) -> Result<Vec<Scanned>> {
    let mut sorted: Vec<&Vec<u8>> = paths.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut out = Vec::with_capacity(sorted.len());
    for rel in sorted {
        crate::snapshot::check_rel_path(rel)
            .map_err(|why| Error::Usage(format!("cannot save path {:?}: {why}", String::from_utf8_lossy(rel))))?;
        let abs = root.join(std::ffi::OsStr::from_bytes(rel));
        let m = std::fs::symlink_metadata(&abs).at("stat", &abs)?;
        if let Some(s) = entry_for(root, &abs, &m, xattrs)? {
            out.push(s);
        }
    }
    Ok(out)
}
