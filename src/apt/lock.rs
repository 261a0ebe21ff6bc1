//! dpkg's locks, taken the way dpkg and apt take them: an fcntl write lock (F_SETLK, whole
//! file) on `var/lib/dpkg/lock-frontend` (the frontend lock apt holds) and then on
//! `var/lib/dpkg/lock` (the database lock dpkg holds). fcntl locks are released when the fd
//! closes, i.e. also when the process is killed.

use crate::beneath::{Dir, Root, Symlinks};
use crate::error::{Error, IoContext, Result};
use std::fs::File;
use std::os::unix::io::AsRawFd;

pub struct DpkgLocks {
    _files: Vec<File>,
}

fn lock_one(dir: &Dir, name: &str) -> Result<File> {
    let path = dir.display(name.as_bytes());
    // Beneath ROOT and never through a symlink: a lock file is created if missing.
    let f = dir.open_rw(name.as_bytes(), 0o640).at("open", &path)?;
    // SAFETY: flock is plain data; zeroed is a valid value before we set the fields.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = 0;
    fl.l_len = 0;
    // SAFETY: valid fd and pointer to an initialised flock.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) {
            return Err(Error::Other(format!(
                "{}: dpkg lock is held by another process (is apt or dpkg running?)",
                path.display()
            )));
        }
        return Err(Error::io("lock", path, e));
    }
    Ok(f)
}

/// Take `lock-frontend` then `lock` under ROOT; held until the value is dropped.
pub fn lock(root: &Root) -> Result<DpkgLocks> {
    let d = root.dir(b"var/lib/dpkg", Symlinks::Beneath)?;
    let a = lock_one(&d, "lock-frontend")?;
    let b = lock_one(&d, "lock")?;
    Ok(DpkgLocks { _files: vec![a, b] })
}
