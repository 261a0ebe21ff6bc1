//! Link modes: how one store object becomes a file in the destination, with graceful fallback
//! and a record of the mode actually used.

use crate::error::{Error, IoContext, Result};
use crate::snapshot::Entry;
use crate::store::{LocalObjects, ObjectId};
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Read};
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
pub fn materialize(
    objects: &LocalObjects,
    entry: &Entry,
    dest: &Path,
    mode: LinkMode,
    chown: bool,
    stats: &LinkStats,
) -> Result<(LinkUsed, Stamp)> {
    let id = entry.object.expect("file entries carry an object");
    if mode == LinkMode::Hardlink && !stats.no_hardlink.load(Ordering::Relaxed) {
        let src = objects.path(&id);
        // Only ever link a regular file: never a symlink planted in the store (a tampered cache).
        match std::fs::symlink_metadata(&src) {
            Ok(m) if m.file_type().is_file() => {}
            Ok(_) => {
                return Err(Error::Corrupt {
                    id: id.to_string(),
                    path: src,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::MissingObject { id: id.to_string() }),
            Err(e) => return Err(Error::io("stat", &src, e)),
        }
        match std::fs::hard_link(&src, dest) {
            Ok(()) => {
                // The inode is the store's: check its size at least, the content is verify's job.
                let m = std::fs::symlink_metadata(dest).at("stat", dest)?;
                if m.len() != entry.size {
                    let _ = std::fs::remove_file(dest);
                    return Err(Error::Corrupt {
                        id: id.to_string(),
                        path: src,
                    });
                }
                stats.record(LinkUsed::Hardlink);
                return Ok((LinkUsed::Hardlink, Stamp::of(&m)));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && !objects.exists(&id) => {
                return Err(Error::MissingObject { id: id.to_string() })
            }
            // Another filesystem, or too many links to one inode: copy instead, and say so.
            Err(e)
                if unsupported(&e)
                    || e.raw_os_error() == Some(libc::EMLINK)
                    || e.raw_os_error() == Some(libc::EPERM) =>
            {
                if e.raw_os_error() == Some(libc::EXDEV) {
                    stats.no_hardlink.store(true, Ordering::Relaxed);
                }
            }
            Err(e) => return Err(Error::io("hardlink", dest, e)),
        }
    }
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .at("create", dest)?;
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
