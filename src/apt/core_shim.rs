//! TEMPORARY stand-in for the core API (CORE_API.md) so apt can be tested end to end before the
//! core lands. Same names and signatures as the parts apt uses; replaced by re-exports on merge.
#![allow(dead_code)]

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub object: Option<String>,
    pub target: Option<Vec<u8>>,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRow {
    pub id: i64,
    pub key: String,
    pub kind: String,
    pub source: PathBuf,
    pub meta: serde_json::Value,
}

pub enum Hit {
    Exact,
    Fallback,
}

pub enum Selection {
    Tree,
    Paths(Vec<Vec<u8>>),
}

pub struct SaveRequest {
    pub key: String,
    pub kind: String,
    pub root: PathBuf,
    pub meta: serde_json::Value,
    pub selection: Selection,
    pub xattrs: bool,
}

pub struct SaveReport {
    pub snapshot_id: i64,
    pub files: u64,
    pub bytes: u64,
}

pub struct Store {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Snap {
    row: SnapshotRow,
    manifest: Manifest,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir.join("shim-v0/objects")).map_err(|e| Error::io(dir, e))?;
        Ok(Store { dir: dir.to_path_buf() })
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    fn snaps(&self) -> Vec<Snap> {
        let mut v: Vec<Snap> = std::fs::read_dir(self.dir.join("shim-v0"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect();
        v.sort_by_key(|s| -s.row.id);
        v
    }
    pub fn lookup(&self, key: &str, fallbacks: &[String]) -> Result<Option<(SnapshotRow, Hit)>> {
        let s = self.snaps();
        if let Some(x) = s.iter().find(|s| s.row.key == key) {
            return Ok(Some((x.row.clone(), Hit::Exact)));
        }
        for f in fallbacks {
            if let Some(x) = s.iter().find(|s| s.row.key.starts_with(f.as_str())) {
                return Ok(Some((x.row.clone(), Hit::Fallback)));
            }
        }
        Ok(None)
    }
    pub fn manifest(&self, id: i64) -> Result<Manifest> {
        self.snaps()
            .into_iter()
            .find(|s| s.row.id == id)
            .map(|s| s.manifest)
            .ok_or_else(|| Error::Other(format!("no snapshot {id}")))
    }
}

pub fn save(store: &Store, req: SaveRequest) -> Result<SaveReport> {
    let Selection::Paths(paths) = req.selection else { return Err(Error::Other("shim: Paths only".into())) };
    let mut entries = Vec::new();
    let (mut files, mut bytes) = (0, 0);
    for rel in paths {
        let p = req.root.join(std::ffi::OsStr::from_bytes(&rel));
        let m = std::fs::symlink_metadata(&p).map_err(|e| Error::io(&p, e))?;
        let ft = m.file_type();
        let xattrs = if req.xattrs && !ft.is_symlink() {
            xattr::list(&p)
                .map(|l| l.filter_map(|n| Some((n.to_string_lossy().into_owned(), xattr::get(&p, &n).ok()??))).collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut e = Entry {
            path: rel,
            kind: EntryKind::File,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            object: None,
            target: None,
            xattrs,
        };
        if ft.is_dir() {
            e.kind = EntryKind::Dir;
        } else if ft.is_symlink() {
            e.kind = EntryKind::Symlink;
            e.target = Some(std::fs::read_link(&p).map_err(|e| Error::io(&p, e))?.as_os_str().as_bytes().to_vec());
        } else if ft.is_file() {
            let data = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            let h = blake3::hash(&data).to_hex().to_string();
            let o = store.dir.join("shim-v0/objects").join(&h);
            if !o.exists() {
                std::fs::write(&o, &data).map_err(|e| Error::io(&o, e))?;
            }
            files += 1;
            bytes += data.len() as u64;
            e.object = Some(h);
        } else {
            continue;
        }
        entries.push(e);
    }
    let id = store.snaps().first().map(|s| s.row.id + 1).unwrap_or(1);
    let row = SnapshotRow { id, key: req.key, kind: req.kind, source: req.root, meta: req.meta };
    let snap = Snap { row, manifest: Manifest { entries } };
    let p = store.dir.join(format!("shim-v0/{id}.json"));
    std::fs::write(&p, serde_json::to_vec(&snap).unwrap()).map_err(|e| Error::io(&p, e))?;
    Ok(SaveReport { snapshot_id: id, files, bytes })
}

/// Write a regular file entry at `dest` (temp in the same dir, then rename).
pub fn place_file(store: &Store, entry: &Entry, dest: &Path) -> Result<()> {
    let o = store.dir.join("shim-v0/objects").join(entry.object.as_ref().unwrap());
    let dir = dest.parent().unwrap();
    let mut tmp = tempfile::Builder::new().prefix(".envsnap-").tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    let data = std::fs::read(&o).map_err(|e| Error::io(&o, e))?;
    tmp.write_all(&data).map_err(|e| Error::io(dest, e))?;
    let tp = tmp.path().to_path_buf();
    std::os::unix::fs::chown(&tp, Some(entry.uid), Some(entry.gid)).map_err(|e| Error::io(&tp, e))?;
    // chmod after chown (chown clears setuid/setgid), xattrs last (chown clears capabilities).
    std::fs::set_permissions(&tp, std::os::unix::fs::PermissionsExt::from_mode(entry.mode))
        .map_err(|e| Error::io(&tp, e))?;
    for (n, v) in &entry.xattrs {
        xattr::set(&tp, n, v).map_err(|e| Error::io(&tp, e))?;
    }
    let t = filetime::FileTime::from_unix_time(entry.mtime_ns.div_euclid(1_000_000_000), entry.mtime_ns.rem_euclid(1_000_000_000) as u32);
    filetime::set_file_mtime(&tp, t).map_err(|e| Error::io(&tp, e))?;
    tmp.persist(dest).map_err(|e| Error::io(dest, e.error))?;
    Ok(())
}
