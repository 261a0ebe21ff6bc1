//! The baseline: an lstat-only scan of the parts of ROOT that apt, dpkg and maintainer scripts
//! write, plus the base fingerprint and copies of the shared state files (so a later save can
//! diff them record by record). Stored as `<store>/apt-baselines-v1/<blake3(root)>.zst`.

use super::dpkg::{self, Pkg};
use super::merge;
use crate::error::{Error, IoContext, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub const KIND_FILE: u8 = 0;
pub const KIND_DIR: u8 = 1;
pub const KIND_SYMLINK: u8 = 2;
pub const KIND_OTHER: u8 = 3;

/// One lstat result. Anything that changes a file's content or inode changes ctime or ino, so
/// comparing these fields is enough to find what apt touched without reading content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub path: Vec<u8>,
    pub kind: u8,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
}

/// Everything `apt begin` records besides the file list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    pub root: PathBuf,
    pub created_ns: i64,
    /// The store dir as excluded from the scan (relative to ROOT), when it lies inside ROOT.
    pub excluded_store: Option<String>,
    pub packages: Vec<Pkg>,
    pub os_release: String,
    /// Contents of the shared state files at baseline time (root-relative path -> text).
    pub shared: BTreeMap<String, String>,
    pub seconds: f64,
}

pub struct Baseline {
    pub header: Header,
    pub recs: Vec<Rec>,
}

/// Top-level entries of ROOT that are scanned (all of `/var`, minus [`EXCLUDED`] and logs).
fn top_included(name: &str) -> bool {
    matches!(name, "usr" | "etc" | "opt" | "bin" | "sbin" | "var") || name.starts_with("lib")
}

/// Paths never scanned (relative to ROOT): apt's downloaded lists and archives, and what is not
/// package state (temporary files; man-db's index, which `mandb` rebuilds).
const EXCLUDED: &[&str] = &["var/lib/apt/lists", "var/cache/apt", "var/cache/man", "var/tmp"];

/// Under `/var/log` only directories (with their owner and mode: `/var/log/redis` is 2750
/// redis:adm) and the files dpkg owns are recorded, never log contents.
const LOG: &[u8] = b"var/log/";

/// Root-relative paths under `/var/log` that ROOT's dpkg file lists name.
fn dpkg_owned_logs(root: &Path) -> std::collections::HashSet<Vec<u8>> {
    let mut out = std::collections::HashSet::new();
    let info = root.join("var/lib/dpkg/info");
    let Ok(rd) = std::fs::read_dir(&info) else { return out };
    for e in rd.flatten() {
        if !e.file_name().as_bytes().ends_with(b".list") {
            continue;
        }
        let Ok(text) = std::fs::read(e.path()) else { continue };
        for line in text.split(|&b| b == b'\n') {
            if let Some(rel) = line.strip_prefix(b"/") {
                if rel.starts_with(LOG) {
                    out.insert(rel.to_vec());
                }
            }
        }
    }
    out
}

/// What a walk skips: excluded subtrees, and log contents dpkg does not own.
struct Filter {
    excl: Vec<Vec<u8>>,
    owned_logs: std::collections::HashSet<Vec<u8>>,
}

/// Scan ROOT. `exclude` holds extra root-relative paths (the envsnap store).
pub fn scan(root: &Path, exclude: &[String]) -> Result<Vec<Rec>> {
    let mut starts: Vec<String> = Vec::new();
    let rd = std::fs::read_dir(root).at("read directory", root)?;
    for ent in rd {
        let ent = ent.at("read directory", root)?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if top_included(&name) {
            starts.push(name);
        }
    }
    let mut excl: Vec<Vec<u8>> = EXCLUDED.iter().map(|s| s.as_bytes().to_vec()).collect();
    excl.extend(exclude.iter().map(|s| s.as_bytes().to_vec()));
    let filter = Filter {
        excl,
        owned_logs: dpkg_owned_logs(root),
    };
    let mut recs: Vec<Rec> = Vec::new();
    let parts: Vec<Result<Vec<Rec>>> = starts.par_iter().map(|s| walk(root, s.as_bytes(), &filter)).collect();
    for p in parts {
        recs.extend(p?);
    }
    recs.sort_by(|a, b| a.path.cmp(&b.path));
    recs.dedup_by(|a, b| a.path == b.path);
    Ok(recs)
}

fn stat_rec(root: &Path, rel: &[u8]) -> Result<Option<Rec>> {
    let p = root.join(std::ffi::OsStr::from_bytes(rel));
    match std::fs::symlink_metadata(&p) {
        Ok(m) => Ok(Some(rec_of(rel.to_vec(), &m))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", &p, e)),
    }
}

fn rec_of(path: Vec<u8>, m: &std::fs::Metadata) -> Rec {
    let ft = m.file_type();
    let kind = if ft.is_file() {
        KIND_FILE
    } else if ft.is_dir() {
        KIND_DIR
    } else if ft.is_symlink() {
        KIND_SYMLINK
    } else {
        KIND_OTHER
    };
    Rec {
        path,
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        size: m.size(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        ino: m.ino(),
    }
}

/// Walk one subtree with lstat (symlinks, e.g. merged-/usr `/bin -> usr/bin`, are recorded and
/// not followed); subdirectories are walked in parallel.
fn walk(root: &Path, rel: &[u8], filter: &Filter) -> Result<Vec<Rec>> {
    if filter.excl.iter().any(|e| e.as_slice() == rel) {
        return Ok(Vec::new());
    }
    let Some(r) = stat_rec(root, rel)? else {
        return Ok(Vec::new());
    };
    let is_dir = r.kind == KIND_DIR;
    let mut out = vec![r];
    if !is_dir {
        return Ok(out);
    }
    let dir = root.join(std::ffi::OsStr::from_bytes(rel));
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        // Unreadable dirs (non-root begin on a host) are recorded but not descended.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(out),
        Err(e) => return Err(Error::io("read directory", &dir, e)),
    };
    let mut subdirs = Vec::new();
    for ent in rd {
        let ent = ent.at("read directory", &dir)?;
        let mut child = rel.to_vec();
        child.push(b'/');
        child.extend_from_slice(ent.file_name().as_bytes());
        let ft = ent.file_type().at("stat", ent.path())?;
        if ft.is_dir() {
            subdirs.push(child);
        } else if child.starts_with(LOG) && !filter.owned_logs.contains(&child) {
            continue;
        } else {
            let m = match ent.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("stat", ent.path(), e)),
            };
            out.push(rec_of(child, &m));
        }
    }
    let subs: Vec<Result<Vec<Rec>>> = subdirs.par_iter().map(|c| walk(root, c, filter)).collect();
    for s in subs {
        out.extend(s?);
    }
    Ok(out)
}

/// Read ROOT's shared state files (those [`merge::class_of`] knows) that exist.
pub fn read_shared(root: &Path, recs: &[Rec]) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for r in recs {
        if r.kind != KIND_FILE {
            continue;
        }
        let Ok(rel) = std::str::from_utf8(&r.path) else {
            continue;
        };
        if merge::class_of(rel).is_some() {
            let p = root.join(rel);
            let bytes = std::fs::read(&p).at("read", &p)?;
            let text = String::from_utf8(bytes)
                .map_err(|_| Error::Other(format!("{}: shared state file is not UTF-8", p.display())))?;
            m.insert(rel.to_string(), text);
        }
    }
    Ok(m)
}

pub fn os_release(root: &Path) -> String {
    for p in ["etc/os-release", "usr/lib/os-release"] {
        if let Ok(t) = std::fs::read_to_string(root.join(p)) {
            return t;
        }
    }
    String::new()
}

/// `<store>/apt-baselines-v1/<blake3 of canonical ROOT>.zst`
pub fn baseline_path(store_dir: &Path, root: &Path) -> PathBuf {
    let h = blake3::hash(root.as_os_str().as_bytes());
    store_dir
        .join("apt-baselines-v1")
        .join(format!("{}.zst", &h.to_hex()[..32]))
}

/// Root-relative path of the store when it lies inside ROOT (so scans skip it).
pub fn store_exclusion(store_dir: &Path, root: &Path) -> Option<String> {
    let s = std::fs::canonicalize(store_dir).unwrap_or_else(|_| store_dir.to_path_buf());
    let rel = s.strip_prefix(root).ok()?;
    let r = rel.to_string_lossy().into_owned();
    (!r.is_empty()).then_some(r)
}

/// Take a baseline of ROOT (canonical) and write it into the store.
pub fn begin(store_dir: &Path, root: &Path) -> Result<Header> {
    let t0 = std::time::Instant::now();
    let excluded_store = store_exclusion(store_dir, root);
    let excl: Vec<String> = excluded_store.iter().cloned().collect();
    let recs = scan(root, &excl)?;
    let shared = read_shared(root, &recs)?;
    let packages = dpkg::installed_from_status(shared.get("var/lib/dpkg/status").map(String::as_str).unwrap_or(""));
    let header = Header {
        version: 1,
        root: root.to_path_buf(),
        created_ns: now_ns(),
        excluded_store,
        packages,
        os_release: os_release(root),
        shared,
        seconds: t0.elapsed().as_secs_f64(),
    };
    let b = Baseline { header, recs };
    write(&baseline_path(store_dir, root), &b)?;
    let mut h = b.header;
    h.seconds = t0.elapsed().as_secs_f64();
    Ok(h)
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Format: zstd( u32 header length, header JSON, then records:
/// u32 path len, path, u8 kind, u32 mode, uid, gid, u64 size, i64 mtime, i64 ctime, u64 ino ).
pub fn write(path: &Path, b: &Baseline) -> Result<()> {
    let dir = path.parent().expect("baseline path has a parent");
    std::fs::create_dir_all(dir).at("create directory", dir)?;
    let mut buf = Vec::with_capacity(b.recs.len() * 100);
    let hj = serde_json::to_vec(&b.header).map_err(|e| Error::Other(e.to_string()))?;
    buf.extend_from_slice(&(hj.len() as u32).to_le_bytes());
    buf.extend_from_slice(&hj);
    for r in &b.recs {
        buf.extend_from_slice(&(r.path.len() as u32).to_le_bytes());
        buf.extend_from_slice(&r.path);
        buf.push(r.kind);
        for v in [r.mode, r.uid, r.gid] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        buf.extend_from_slice(&r.size.to_le_bytes());
        buf.extend_from_slice(&r.mtime_ns.to_le_bytes());
        buf.extend_from_slice(&r.ctime_ns.to_le_bytes());
        buf.extend_from_slice(&r.ino.to_le_bytes());
    }
    let z = zstd::bulk::compress(&buf, 3).at("compress", path)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).at("create temporary file in", dir)?;
    tmp.write_all(&z).at("write", path)?;
    tmp.persist(path)
        .map_err(|e| Error::io("rename into place", path, e.error))?;
    Ok(())
}

pub fn read(path: &Path) -> Result<Baseline> {
    let f = std::fs::File::open(path).at("open", path)?;
    let mut buf = Vec::new();
    zstd::stream::read::Decoder::new(f)
        .and_then(|mut d| d.read_to_end(&mut buf))
        .at("read", path)?;
    let bad = || {
        Error::Other(format!(
            "{}: corrupt apt baseline (run `envsnap apt begin` again)",
            path.display()
        ))
    };
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let s = buf.get(pos..pos + n).ok_or_else(bad)?;
        pos += n;
        Ok(s)
    };
    let hl = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
    let header: Header = serde_json::from_slice(take(hl)?).map_err(|_| bad())?;
    let mut recs = Vec::new();
    loop {
        let Ok(lb) = take(4) else { break };
        let pl = u32::from_le_bytes(lb.try_into().unwrap()) as usize;
        let path = take(pl)?.to_vec();
        let kind = take(1)?[0];
        let mut u32s = [0u32; 3];
        for v in u32s.iter_mut() {
            *v = u32::from_le_bytes(take(4)?.try_into().unwrap());
        }
        let size = u64::from_le_bytes(take(8)?.try_into().unwrap());
        let mtime_ns = i64::from_le_bytes(take(8)?.try_into().unwrap());
        let ctime_ns = i64::from_le_bytes(take(8)?.try_into().unwrap());
        let ino = u64::from_le_bytes(take(8)?.try_into().unwrap());
        recs.push(Rec {
            path,
            kind,
            mode: u32s[0],
            uid: u32s[1],
            gid: u32s[2],
            size,
            mtime_ns,
            ctime_ns,
            ino,
        });
    }
    Ok(Baseline { header, recs })
}
