//! Link modes: how one store object becomes a file in the destination, with graceful fallback
//! and a record of the mode actually used.

use crate::error::{Error, IoContext, Result};
use crate::repo::Store;
use crate::snapshot::Entry;
use crate::store::{ObjectId, ObjectStat};
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LinkMode {
    /// Reflink (copy-on-write clone) where the filesystem supports it, else copy.
    #[default]
    Auto,
    Reflink,
    /// Share the store's inodes. Only when asked: an edit through a hardlink would change the
    /// store, so restored files keep the object's read-only mode and mtime.
    Hardlink,
    Copy,
}

impl LinkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkMode::Auto => "auto",
            LinkMode::Reflink => "reflink",
            LinkMode::Hardlink => "hardlink",
            LinkMode::Copy => "copy",
        }
    }
}

impl FromStr for LinkMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => LinkMode::Auto,
            "reflink" => LinkMode::Reflink,
            "hardlink" => LinkMode::Hardlink,
            "copy" => LinkMode::Copy,
            _ => {
                return Err(Error::Usage(format!(
                    "unknown link mode {s:?}: use auto, reflink, hardlink or copy"
                )))
            }
        })
    }
}

/// The method that actually produced a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkUsed {
    Reflink,
    Hardlink,
    Copy,
}

/// Counts per method over a whole restore, and whether reflink already proved unsupported
/// (then we stop trying it: one failed ioctl per file is wasted time).
#[derive(Default)]
pub struct LinkStats {
    reflink: AtomicU64,
    hardlink: AtomicU64,
    copy: AtomicU64,
    no_reflink: AtomicBool,
    no_hardlink: AtomicBool,
    /// Files copied in a hardlink restore because the object's shared mode would have given
    /// them a permission bit they do not have.
    hardlink_copied: AtomicU64,
    /// Objects a hardlink restore hashed and found sound: their stat is recorded again in one
    /// transaction at the end ([`LinkStats::record_checked`]), not one commit per file.
    checked: std::sync::Mutex<Vec<(ObjectId, ObjectStat)>>,
}

impl LinkStats {
    pub fn record(&self, used: LinkUsed) {
        let c = match used {
            LinkUsed::Reflink => &self.reflink,
            LinkUsed::Hardlink => &self.hardlink,
            LinkUsed::Copy => &self.copy,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Record the objects this restore hashed and found sound, so the next hardlink restore
    /// trusts their stat again.
    pub fn record_checked(&self, store: &Store) -> Result<()> {
        let checked = std::mem::take(&mut *self.checked.lock().unwrap_or_else(|p| p.into_inner()));
        if checked.is_empty() {
            return Ok(());
        }
        store.index().record_objects(&checked)
    }

    /// Files a hardlink restore copied instead of linking (see [`materialize`]).
    pub fn hardlink_copied(&self) -> u64 {
        self.hardlink_copied.load(Ordering::Relaxed)
    }

    /// "reflink", "copy", "hardlink", or a `+`-joined mix when fallback happened part-way;
    /// "none" for a restore without files.
    pub fn summary(&self) -> String {
        let parts: Vec<&str> = [
            ("reflink", &self.reflink),
            ("hardlink", &self.hardlink),
            ("copy", &self.copy),
        ]
        .iter()
        .filter(|(_, c)| c.load(Ordering::Relaxed) > 0)
        .map(|(n, _)| *n)
        .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("+")
        }
    }
}

/// Errors after which a link of that kind will not work anywhere on this filesystem pair.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EXDEV) | Some(libc::EINVAL) | Some(libc::ENOTTY) | Some(libc::ENOSYS)
    )
}

/// Create the file `dest` (which must not exist) with the content of `entry.object`, using
/// `mode` with fallback to copy, then set its attributes. Copies and reflinks are verified
/// against the object's BLAKE3; hardlinks share the object (see `envsnap verify`).
/// A restored file's inode and ctime as the restore left it. The stat cache is seeded only for
/// files still exactly so when every file is written: a file replaced or written to since (an
/// adapter's fixup, another process) no longer matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub ino: u64,
    pub ctime_ns: i64,
}

impl Stamp {
    pub fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            ino: m.ino(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        }
    }
}

/// Create `dest` with the object's content and the entry's attributes; returns the link mode
/// used and the file's [`Stamp`] once complete.
///
/// `hardlink` shares the object's inode, so the restored file has the object's mode (0444, or
/// 0555 for `.x`) and mtime. It is used only where that mode adds no permission bit the entry
/// lacks (a 0600 file is copied, never handed back readable by all), and only for an object
/// that is still exactly as the index recorded it (size, mtime, inode, one `fstat` of the open
/// object): otherwise the object is hashed first, re-recorded if sound, and quarantined if not
/// (the restore fails). See docs/architecture.md for what each mode guarantees.
pub fn materialize(
    store: &Store,
    entry: &Entry,
    dest: &Path,
    mode: LinkMode,
    chown: bool,
    stats: &LinkStats,
) -> Result<(LinkUsed, Stamp)> {
    let objects = &store.objects;
    let id = entry.object.expect("file entries carry an object");
    if mode == LinkMode::Hardlink && !stats.no_hardlink.load(Ordering::Relaxed) {
        if let Some(done) = hardlink(store, entry, &id, dest, stats)? {
            return Ok(done);
        }
    }
    let mut out = create_private(dest)?;
    let mut used = LinkUsed::Copy;
    if matches!(mode, LinkMode::Auto | LinkMode::Reflink) && !stats.no_reflink.load(Ordering::Relaxed) {
        let mut obj = objects.open(&id)?;
        match reflink_copy::reflink_file(&obj, &out) {
            Ok(()) => {
                verify_object(&mut obj, &id, &objects.path(&id))?;
                used = LinkUsed::Reflink;
            }
            Err(e) => {
                if unsupported(&e) {
                    stats.no_reflink.store(true, Ordering::Relaxed);
                }
            }
        }
    }
    if used == LinkUsed::Copy {
        objects.copy_verified(&id, &mut out, dest)?;
    }
    set_file_attrs(&out, dest, entry, chown)?;
    let stamp = Stamp::of(&out.metadata().at("stat", dest)?);
    stats.record(used);
    Ok((used, stamp))
}

/// A new file only its owner can read until its attributes are set (last): a restored secret
/// is never readable by others meanwhile, and an existing file is never written through.
fn create_private(dest: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .at("create", dest)
}

/// A file whose content came from elsewhere (a remote, already verified): created, written
/// and given its attributes as a copy restore gives them.
pub fn write_file(entry: &Entry, dest: &Path, content: &[u8], chown: bool) -> Result<Stamp> {
    use std::io::Write;
    let mut out = create_private(dest)?;
    out.write_all(content).at("write", dest)?;
    set_file_attrs(&out, dest, entry, chown)?;
    Ok(Stamp::of(&out.metadata().at("stat", dest)?))
}

/// The hardlink part of [`materialize`]: `Ok(None)` means "copy this one instead".
fn hardlink(
    store: &Store,
    entry: &Entry,
    id: &ObjectId,
    dest: &Path,
    stats: &LinkStats,
) -> Result<Option<(LinkUsed, Stamp)>> {
    let src = store.objects.path(id);
    let (mut obj, meta) = store.objects.open_checked(id)?;
    // Never widen: the shared inode's mode must add no permission bit the entry lacks.
    if meta.mode() & 0o7777 & !entry.mode != 0 {
        stats.hardlink_copied.fetch_add(1, Ordering::Relaxed);
        return Ok(None);
    }
    let now = ObjectStat::of(&meta);
    if store.index().object_stat(id)? != Some(now) || now.size != entry.size {
        // Written to since it was recorded (root ignores the read-only mode), replaced, or
        // never recorded (saved before schema 3): hash what is there before sharing it.
        if !hashes_to(&mut obj, id, &src)? {
            // Moved aside so no later restore uses it and the next save of its content writes
            // it anew. (Two threads may race to do it: the second finds it gone.)
            let path = quarantine(store, id).unwrap_or(src);
            return Err(Error::Corrupt {
                id: id.to_string(),
                path,
            });
        }
        if now.size != entry.size {
            return Err(Error::Corrupt {
                id: id.to_string(),
                path: src,
            });
        }
        stats.checked.lock().unwrap_or_else(|p| p.into_inner()).push((*id, now));
    }
    // Link the inode just checked, through the open descriptor: a file swapped in under the
    // name since is never linked. Without /proc, link by name and check the inode.
    use std::os::fd::AsRawFd;
    let linked = match crate::store::link_fd(obj.as_raw_fd(), dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && !std::path::Path::new("/proc/self/fd").exists() => {
            std::fs::hard_link(&src, dest)
        }
        r => r,
    };
    match linked {
        Ok(()) => {
            let m = std::fs::symlink_metadata(dest).at("stat", dest)?;
            if m.ino() != meta.ino() || m.dev() != meta.dev() {
                let _ = std::fs::remove_file(dest);
                return Err(Error::Corrupt {
                    id: id.to_string(),
                    path: src,
                });
            }
            stats.record(LinkUsed::Hardlink);
            Ok(Some((LinkUsed::Hardlink, Stamp::of(&m))))
        }
        // Another filesystem, or too many links to one inode: copy instead, and say so.
        Err(e)
            if unsupported(&e) || e.raw_os_error() == Some(libc::EMLINK) || e.raw_os_error() == Some(libc::EPERM) =>
        {
            if e.raw_os_error() == Some(libc::EXDEV) {
                stats.no_hardlink.store(true, Ordering::Relaxed);
            }
            Ok(None)
        }
        Err(e) => Err(Error::io("hardlink", dest, e)),
    }
}

/// Move a corrupt object aside (so no later restore uses it and the next save of its content
/// writes it anew) and forget it: its recorded stat and every stat-cache row naming it (a save
/// trusts the cache to name sound objects). Returns where it went.
/// Move a corrupt object aside into `<store>/quarantine` and forget what the index knew of it,
/// so no later restore uses it and the next save (or pull) of its content writes it anew.
pub fn quarantine(store: &Store, id: &ObjectId) -> Result<std::path::PathBuf> {
    let path = store.objects.quarantine(id)?;
    let mut idx = store.index();
    idx.retain_statcache(|o| o != id)?;
    idx.forget_objects(&[*id])?;
    Ok(path)
}

fn hashes_to(f: &mut File, id: &ObjectId, path: &Path) -> Result<bool> {
    let mut h = blake3::Hasher::new();
    h.update_reader(f).at("read", path)?;
    Ok(h.finalize().as_bytes() == &id.hash)
}

fn verify_object(f: &mut File, id: &ObjectId, path: &Path) -> Result<()> {
    let mut h = blake3::Hasher::new();
    crate::store::with_buffer(|buf| loop {
        match f.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                h.update(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", path, e)),
        }
    })?;
    if h.finalize().as_bytes() != &id.hash {
        return Err(Error::Corrupt {
            id: id.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Owner (when asked), then xattrs (chown clears `security.capability`; a read-only mode would
/// forbid `user.*` attributes), then mode (after chown, which clears setuid bits), then mtime.
pub fn set_file_attrs(f: &File, path: &Path, e: &Entry, chown: bool) -> Result<()> {
    if chown {
        std::os::unix::fs::fchown(f, Some(e.uid), Some(e.gid)).at("chown", path)?;
    }
    set_xattrs(path, e)?;
    f.set_permissions(Permissions::from_mode(e.mode)).at("chmod", path)?;
    filetime::set_file_handle_times(f, None, Some(ns_to_filetime(e.mtime_ns))).at("set mtime of", path)
}

pub fn set_xattrs(path: &Path, e: &Entry) -> Result<()> {
    for (k, v) in &e.xattrs {
        xattr::set(path, k, v).at("set xattr on", path)?;
    }
    Ok(())
}

pub fn ns_to_filetime(ns: i64) -> filetime::FileTime {
    filetime::FileTime::from_unix_time(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000) as u32)
}
