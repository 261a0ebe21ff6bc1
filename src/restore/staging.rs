//! Staging directories beside a destination, the swap that puts a staged tree in place, and
//! the cleanup of what killed restores leave behind.
//!
//! Names: `.<dest name>.envsnap-<pid>-<random>` for a staging tree, `…-<pid>-old-<random>` for
//! the directory an old tree is moved into while it is replaced without `RENAME_EXCHANGE`, and
//! `…-<pid>-done-<random>` for that directory once the swap completed. A leftover belongs to a
//! dead restore when its pid is not running **and** nobody holds the `flock` the restore keeps
//! on it (pids are per namespace and get reused; a lock dies with its process).
//!
//! A dead staging tree or `done-` directory is garbage: before the swap the destination still
//! holds the old tree, after it the new one. An `old-` directory may hold the **only copy** of
//! the tree the user had: it is never deleted. If the destination is missing (the restore died
//! between moving the old tree aside and renaming the new one into place) the old tree is put
//! back; otherwise it is kept where it is and reported, for the user to delete.
//!
//! gc does not know where restores write: each restore records its destination in
//! `<store>/restores/<pid>-<random>` (locked while it runs), so gc can clean up after the ones
//! that were killed.

use crate::error::{Error, IoContext, Result};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Directory under the store holding one record per running restore.
pub const RECORDS_DIR: &str = "restores";

/// What was found beside a destination and done about it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Leftovers {
    /// Staging trees of dead restores, removed.
    pub removed: Vec<PathBuf>,
    /// Destinations whose old tree was put back: a `--force` restore died after moving it aside.
    pub recovered: Vec<PathBuf>,
    /// Old trees kept (the destination exists again, so putting them back would replace it):
    /// the user's to inspect and delete.
    pub kept: Vec<PathBuf>,
}

impl Leftovers {
    pub fn extend(&mut self, o: Leftovers) {
        self.removed.extend(o.removed);
        self.recovered.extend(o.recovered);
        self.kept.extend(o.kept);
    }
}

fn name_of(dest: &Path) -> String {
    dest.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `.<name>.envsnap-<pid>-`: this process's staging names for `dest`.
pub fn prefix(dest: &Path) -> String {
    format!(".{}.envsnap-{}-", name_of(dest), std::process::id())
}

/// An exclusive `flock` held for as long as this value lives: the mark of a running restore.
pub struct Lease(#[allow(dead_code)] File);

impl Lease {
    /// Lock `p` (a directory or a file). Best effort: without it, the pid still protects.
    pub fn take(p: &Path) -> Option<Lease> {
        let f = File::open(p).ok()?;
        // SAFETY: flock on a descriptor we own.
        (unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0).then_some(Lease(f))
    }
}

fn pid_running(pid: i32) -> bool {
    // SAFETY: signal 0 only checks whether the process exists.
    pid > 0 && (unsafe { libc::kill(pid, 0) } == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// The restore that made `p` (pid `pid`) is gone: its pid is not running and its lock is free.
fn owner_gone(p: &Path, pid: i32) -> bool {
    !pid_running(pid) && Lease::take(p).is_some()
}

/// Remove what dead restores of `dest` left beside it, put back an old tree a killed `--force`
/// restore had moved aside (when the destination is missing), and report old trees it must keep.
pub fn clean(dest: &Path) -> Leftovers {
    let mut out = Leftovers::default();
    let Some(parent) = dest.parent() else { return out };
    let prefix = format!(".{}.envsnap-", name_of(dest));
    let Ok(rd) = fs::read_dir(parent) else { return out };
    let mut found: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    // `old-` directories last: their staging trees are gone by then.
    found.sort_by_key(|p| {
        p.file_name()
            .is_some_and(|n| n.as_bytes().windows(5).any(|w| w == b"-old-"))
    });
    for p in found {
        let Some(rest) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(&prefix))
        else {
            continue;
        };
        let Some((pid, what)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else { continue };
        if !owner_gone(&p, pid) {
            continue;
        }
        if what.starts_with("old-") {
            recover_old(&p, dest, &mut out);
        } else {
            let gone = match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => super::remove_tree(&p).is_ok(),
                Ok(_) => fs::remove_file(&p).is_ok(),
                Err(_) => false,
            };
            if gone {
                out.removed.push(p);
            }
        }
    }
    out
}

/// A dead `…-old-…` directory: the old tree is in `trash/old`.
fn recover_old(trash: &Path, dest: &Path, out: &mut Leftovers) {
    let old = trash.join("old");
    if fs::symlink_metadata(&old).is_err() {
        // Killed before the old tree was moved in: an empty directory.
        if fs::remove_dir(trash).is_ok() {
            out.removed.push(trash.to_path_buf());
        }
        return;
    }
    if matches!(fs::symlink_metadata(dest), Err(e) if e.kind() == io::ErrorKind::NotFound)
        && fs::rename(&old, dest).is_ok()
    {
        let _ = fs::remove_dir(trash);
        out.recovered.push(dest.to_path_buf());
        return;
    }
    out.kept.push(old);
}

/// Swap the staged tree into `dest`, which holds a tree to replace (`--force`).
///
/// With `renameat2(RENAME_EXCHANGE)` both trees swap atomically and the old one, now at the
/// staging path, is deleted. Without it: the old tree moves into `…-old-…/old`, the new tree
/// is renamed into place, the `old-` directory is renamed `done-` (the swap is complete) and
/// deleted. A kill at any point leaves the old tree at `dest`, or in an `old-` directory that
/// the next restore or gc puts back (see [`clean`]), or the new tree at `dest`.
pub fn swap(staged: &Path, dest: &Path) -> Result<()> {
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::Usage("NUL in path".into()));
    let (a, b) = (c(staged)?, c(dest)?);
    // Test hook: no filesystem here lacks RENAME_EXCHANGE (ext4, xfs, btrfs and tmpfs all have
    // it; some network and FUSE filesystems and old overlayfs do not), so the tests force the
    // fallback with ENVSNAP_TEST_NO_RENAME_EXCHANGE=1.
    let forced = std::env::var_os("ENVSNAP_TEST_NO_RENAME_EXCHANGE").is_some_and(|v| v == "1");
    let err = if forced {
        io::Error::from_raw_os_error(libc::EINVAL)
    } else {
        // The raw system call, not glibc's `renameat2()` wrapper: that wrapper only exists
        // since glibc 2.28, and the wheel's binary must load on glibc 2.17 (manylinux2014).
        // Kernels without the call say ENOSYS, handled as unsupported.
        // SAFETY: both are valid NUL-terminated paths; AT_FDCWD with absolute paths.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            // The new tree is in place; deleting the old one is best effort (a leftover is a
            // dead staging directory, removed by the next restore or gc).
            let _ = super::remove_tree(staged);
            return Ok(());
        }
        io::Error::last_os_error()
    };
    if !matches!(
        err.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    ) {
        return Err(Error::io("swap into place", dest, err));
    }
    let parent = dest.parent().expect("absolute destination has a parent");
    let trash = tempfile::Builder::new()
        .prefix(&format!("{}old-", prefix(dest)))
        .tempdir_in(parent)
        .at("create a directory in", parent)?
        .keep();
    let _lease = Lease::take(&trash);
    let old = trash.join("old");
    if let Err(e) = fs::rename(dest, &old) {
        let _ = fs::remove_dir(&trash);
        return Err(Error::io("move aside", dest, e));
    }
    if let Err(e) = fs::rename(staged, dest) {
        // Put the old tree back: nothing is lost.
        let _ = fs::rename(&old, dest);
        let _ = fs::remove_dir(&trash);
        return Err(Error::io("rename into place", dest, e));
    }
    // The swap is complete: from here on the old tree is garbage.
    let trash_name = trash.file_name().expect("named").to_string_lossy().into_owned();
    let done = parent.join(trash_name.replacen("-old-", "-done-", 1));
    match fs::rename(&trash, &done) {
        Ok(()) => {
            let _ = super::remove_tree(&done);
        }
        Err(_) => {
            let _ = super::remove_tree(&trash);
        }
    }
    Ok(())
}

/// A running restore's entry in `<store>/restores/`: the destination, locked while it runs,
/// removed when it ends. Best effort: a read-only or full store restores without one.
pub struct Record {
    path: PathBuf,
    _lease: Lease,
}

impl Record {
    pub fn create(store_root: &Path, dest: &Path) -> Option<Record> {
        let dir = store_root.join(RECORDS_DIR);
        // Private like the rest of the store: records name where restores write.
        crate::store::private_dir(&dir).ok()?;
        let mut f = tempfile::Builder::new()
            .prefix(&format!("{}-", std::process::id()))
            .tempfile_in(&dir)
            .ok()?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_file().as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return None;
        }
        f.write_all(dest.as_os_str().as_bytes()).ok()?;
        let (file, path) = f.keep().ok()?;
        Some(Record {
            path,
            _lease: Lease(file),
        })
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// gc: clean up beside the destination of every recorded restore that is gone.
pub fn clean_recorded(store_root: &Path) -> Leftovers {
    let mut out = Leftovers::default();
    let dir = store_root.join(RECORDS_DIR);
    let Ok(rd) = fs::read_dir(&dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        let pid = e
            .file_name()
            .to_str()
            .and_then(|n| n.split('-').next()?.parse::<i32>().ok())
            .unwrap_or(0);
        if !owner_gone(&p, pid) {
            continue;
        }
        let mut dest = Vec::new();
        if File::open(&p).and_then(|mut f| f.read_to_end(&mut dest)).is_err() {
            continue;
        }
        let dest = PathBuf::from(std::ffi::OsStr::from_bytes(&dest));
        if dest.is_absolute() {
            out.extend(clean(&dest));
        }
        let _ = fs::remove_file(&p);
    }
    out
}
