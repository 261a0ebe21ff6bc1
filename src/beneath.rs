//! Paths resolved beneath a root directory, never through a symlink that leads out of it.
//!
//! A restore writes where a snapshot (input from a shared cache, not trusted state) tells it to.
//! A lexically clean relative path is not enough: `etc/x` is outside ROOT when ROOT's `etc` is a
//! symlink to `/etc`, whether the target already had that symlink or the snapshot created it a
//! moment earlier. So every directory a restore writes in is opened here, relative to an open
//! descriptor of ROOT, and every operation on an entry is done relative to that directory's
//! descriptor (`mkdirat`, `renameat`, `unlinkat`, …) on the final name, which is never followed.
//!
//! Resolution uses `openat2(2)` where the kernel has it (Linux ≥ 5.6) and the same rule done
//! component by component otherwise:
//! - [`Symlinks::Never`] (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): no symlink is followed at all.
//!   For trees envsnap creates itself (staged `dir`/`venv` restores).
//! - [`Symlinks::Beneath`] (`RESOLVE_BENEATH`): symlinks are followed while they stay beneath ROOT
//!   (merged-/usr `bin -> usr/bin`); an absolute symlink, or `..` above ROOT, is an error. For
//!   merges into an existing root (apt), whose own in-root symlinks are part of its layout.
//!
//! Magic links (`/proc/*/fd`) are never followed in either mode.

use crate::error::{Error, IoContext, Result};
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Which symlinks a resolution may follow (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Symlinks {
    Never,
    Beneath,
}

/// An open root directory.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// An open directory beneath a [`Root`]; operations take a single file name, never a path.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// For messages: ROOT joined with the relative path that was resolved.
    path: PathBuf,
}

/// `lstat` of one entry, the fields restores compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    /// `st_mode & 0o7777`
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A single file name: not empty, no `/`, not `.` or `..`.
fn check_name(name: &[u8]) -> io::Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} is not a plain file name", String::from_utf8_lossy(name)),
        ));
    }
    Ok(())
}

fn open_path_dir(dirfd: RawFd, name: &[u8], nofollow: bool) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    let mut flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    if nofollow {
        flags |= libc::O_NOFOLLOW;
    }
    // SAFETY: valid fd and NUL-terminated name; the returned fd is owned below.
    let fd = cvt(unsafe { libc::openat(dirfd, c.as_ptr(), flags) })?;
    // SAFETY: fd was just returned by openat and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn lstat_at(dirfd: RawFd, name: &[u8]) -> io::Result<libc::stat> {
    let c = cstr(name)?;
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, NUL-terminated name, valid out pointer.
    cvt(unsafe { libc::fstatat(dirfd, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn readlink_at(dirfd: RawFd, name: &[u8]) -> io::Result<Vec<u8>> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid fd, name and buffer of the given length.
    let n = unsafe { libc::readlinkat(dirfd, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Forces the component-by-component resolution (tests of the fallback).
static FORCE_FALLBACK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Set once `openat2` turned out to be missing (old kernel, or a seccomp filter that denies it).
static NO_OPENAT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[doc(hidden)]
pub fn force_fallback_for_tests(on: bool) {
    FORCE_FALLBACK.store(on, std::sync::atomic::Ordering::SeqCst);
}

fn openat2_dir(rootfd: RawFd, rel: &[u8], how: Symlinks) -> Option<io::Result<OwnedFd>> {
    use std::sync::atomic::Ordering::Relaxed;
    if FORCE_FALLBACK.load(Relaxed) || NO_OPENAT2.load(Relaxed) {
        return None;
    }
    let c = match cstr(if rel.is_empty() { b"." } else { rel }) {
        Ok(c) => c,
        Err(e) => return Some(Err(e)),
    };
    let mut resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    if how == Symlinks::Never {
        resolve |= libc::RESOLVE_NO_SYMLINKS;
    }
    // SAFETY: open_how is plain data.
    let mut oh: libc::open_how = unsafe { std::mem::zeroed() };
    oh.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    oh.resolve = resolve;
    // A concurrent rename anywhere on the system can make openat2 return EAGAIN for
    // RESOLVE_BENEATH; retry a few times, then resolve by hand.
    for _ in 0..8 {
        // SAFETY: valid fd, path and open_how of the size passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                rootfd,
                c.as_ptr(),
                &oh as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if rc >= 0 {
            // SAFETY: a fresh fd from openat2.
            return Some(Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) }));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => continue,
            Some(libc::ENOSYS) | Some(libc::EPERM) => {
                NO_OPENAT2.store(true, Relaxed);
                return None;
            }
            _ => return Some(Err(e)),
        }
    }
    None
}

/// The same rule as `openat2(RESOLVE_BENEATH [| RESOLVE_NO_SYMLINKS])`, one component at a time:
/// each directory is opened `O_NOFOLLOW` relative to the previous one; a symlink on the way is
/// refused (`Never`) or its relative target spliced into the remaining path (`Beneath`); an
/// absolute target or `..` above the root is `EXDEV`, like the kernel's.
fn resolve_by_hand(rootfd: RawFd, rel: &[u8], how: Symlinks) -> io::Result<OwnedFd> {
    let dup = |fd: RawFd| -> io::Result<OwnedFd> {
        // SAFETY: duplicating a valid fd.
        let n = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: a fresh fd.
        Ok(unsafe { OwnedFd::from_raw_fd(n) })
    };
    let mut stack: Vec<OwnedFd> = vec![dup(rootfd)?];
    let mut todo: std::collections::VecDeque<Vec<u8>> = rel
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        if c == b"." {
            continue;
        }
        if c == b".." {
            if stack.len() == 1 {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            }
            stack.pop();
            continue;
        }
        let cur = stack.last().expect("root stays on the stack").as_raw_fd();
        match open_path_dir(cur, &c, true) {
            Ok(fd) => stack.push(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) || e.raw_os_error() == Some(libc::ELOOP) => {
                let st = lstat_at(cur, &c)?;
                if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
                    return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
                }
                if how == Symlinks::Never {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                links += 1;
                if links > 40 {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = readlink_at(cur, &c)?;
                if target.first() == Some(&b'/') {
                    return Err(io::Error::from_raw_os_error(libc::EXDEV));
                }
                for part in target.split(|&b| b == b'/').rev().filter(|p| !p.is_empty()) {
                    todo.push_front(part.to_vec());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(stack.pop().expect("root stays on the stack"))
}

/// Whether `/proc/self/fd` is there to name an open directory by path (for APIs that take one).
fn proc_fd_available() -> bool {
    static P: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *P.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

impl Root {
    /// Open ROOT itself (the path the user gave: its own components are the user's choice).
    pub fn open(path: &Path) -> Result<Root> {
        let fd = open_path_dir(libc::AT_FDCWD, path.as_os_str().as_bytes(), false).at("open directory", path)?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// ROOT joined with `rel`, for messages.
    pub fn display(&self, rel: &[u8]) -> PathBuf {
        self.path.join(OsStr::from_bytes(rel))
    }

    /// Open the directory `rel` (empty = ROOT) beneath ROOT. Errors: `EXDEV` when a symlink or
    /// `..` leads out of ROOT, `ELOOP` for a symlink under [`Symlinks::Never`], `ENOENT`,
    /// `ENOTDIR`.
    pub fn dir_io(&self, rel: &[u8], how: Symlinks) -> io::Result<Dir> {
        let fd = match openat2_dir(self.fd.as_raw_fd(), rel, how) {
            Some(r) => r?,
            None => resolve_by_hand(self.fd.as_raw_fd(), rel, how)?,
        };
        Ok(Dir {
            fd,
            path: self.display(rel),
        })
    }

    /// [`Root::dir_io`] with an error that names the path and says why it was refused.
    pub fn dir(&self, rel: &[u8], how: Symlinks) -> Result<Dir> {
        self.dir_io(rel, how).map_err(|e| self.error(rel, e))
    }

    /// The directory holding `rel` and `rel`'s final name.
    pub fn parent<'a>(&self, rel: &'a [u8], how: Symlinks) -> Result<(Dir, &'a [u8])> {
        let (dir, name) = split(rel);
        check_name(name).map_err(|e| self.error(rel, e))?;
        Ok((self.dir(dir, how)?, name))
    }

    /// A resolution error as the one-line message users get.
    pub fn error(&self, rel: &[u8], e: io::Error) -> Error {
        let p = self.display(rel);
        match e.raw_os_error() {
            Some(libc::EXDEV) | Some(libc::ELOOP) => Error::Other(format!(
                "refusing {}: a symlink on its path leads out of {} (nothing is written outside the restore root)",
                p.display(),
                self.path.display()
            )),
            _ => Error::io("open directory", p, e),
        }
    }
}

/// `a/b/c` → (`a/b`, `c`); `c` → (``, `c`).
pub fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&rel[..0], rel),
    }
}

impl Dir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The display path of `name` in this directory.
    pub fn display(&self, name: &[u8]) -> PathBuf {
        self.path.join(OsStr::from_bytes(name))
    }

    /// A path naming `name` in this very directory for APIs that only take paths:
    /// `/proc/self/fd/N/name`, where the kernel resolves `N` to this open directory, not by its
    /// path. Without `/proc`, the display path (resolved once more by the kernel: callers must
    /// not depend on it for containment beyond what was checked).
    pub fn fd_path(&self, name: &[u8]) -> PathBuf {
        if proc_fd_available() {
            let mut p = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
            if !name.is_empty() {
                p.push(OsStr::from_bytes(name));
            }
            p
        } else {
            self.display(name)
        }
    }

    /// Rewrite an error about an [`Dir::fd_path`] path to name the display path.
    pub fn fix_error(&self, e: Error) -> Error {
        let prefix = self.fd_path(b"");
        match e {
            Error::Io { action, path, source } => match path.strip_prefix(&prefix) {
                Ok(rest) => Error::Io {
                    action,
                    path: self.path.join(rest),
                    source,
                },
                Err(_) => Error::Io { action, path, source },
            },
            e => e,
        }
    }

    /// `lstat(name)`; `None` when it does not exist.
    pub fn lstat(&self, name: &[u8]) -> Result<Option<Stat>> {
        match lstat_at(self.fd(), name) {
            Ok(st) => {
                let kind = match st.st_mode & libc::S_IFMT {
                    libc::S_IFREG => Kind::File,
                    libc::S_IFDIR => Kind::Dir,
                    libc::S_IFLNK => Kind::Symlink,
                    _ => Kind::Other,
                };
                Ok(Some(Stat {
                    kind,
                    mode: st.st_mode & 0o7777,
                    uid: st.st_uid,
                    gid: st.st_gid,
                    size: st.st_size as u64,
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("stat", self.display(name), e)),
        }
    }

    /// Open the subdirectory `name` without following a symlink there.
    pub fn sub(&self, name: &[u8]) -> Result<Dir> {
        check_name(name).at("open directory", self.display(name))?;
        let fd = open_path_dir(self.fd(), name, true).at("open directory", self.display(name))?;
        Ok(Dir {
            fd,
            path: self.display(name),
        })
    }

    pub fn mkdir(&self, name: &[u8], mode: u32) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid fd and name.
        cvt(unsafe { libc::mkdirat(self.fd(), c.as_ptr(), mode as libc::mode_t) }).map(drop)
    }

    /// Remove a non-directory (a symlink itself, never its target).
    pub fn unlink(&self, name: &[u8]) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid fd and name.
        cvt(unsafe { libc::unlinkat(self.fd(), c.as_ptr(), 0) }).map(drop)
    }

    /// Remove an empty directory.
    pub fn rmdir(&self, name: &[u8]) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid fd and name.
        cvt(unsafe { libc::unlinkat(self.fd(), c.as_ptr(), libc::AT_REMOVEDIR) }).map(drop)
    }

    /// Rename `from` over `to`, both in this directory.
    pub fn rename(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        let (a, b) = (cstr(from)?, cstr(to)?);
        // SAFETY: valid fd and names.
        cvt(unsafe { libc::renameat(self.fd(), a.as_ptr(), self.fd(), b.as_ptr()) }).map(drop)
    }

    pub fn symlink(&self, target: &[u8], name: &[u8]) -> io::Result<()> {
        let (t, n) = (cstr(target)?, cstr(name)?);
        // SAFETY: valid strings and fd.
        cvt(unsafe { libc::symlinkat(t.as_ptr(), self.fd(), n.as_ptr()) }).map(drop)
    }

    pub fn read_link(&self, name: &[u8]) -> io::Result<Vec<u8>> {
        readlink_at(self.fd(), name)
    }

    /// `lchown`: the entry itself, never a symlink's target.
    pub fn lchown(&self, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid fd and name.
        cvt(unsafe { libc::fchownat(self.fd(), c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
    }

    /// `chmod` of a file or directory `name` (a symlink there is an error, never followed).
    pub fn chmod(&self, name: &[u8], mode: u32) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid fd and name; O_PATH opens neither a FIFO nor a device.
        let fd =
            cvt(unsafe { libc::openat(self.fd(), c.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) })?;
        // SAFETY: a fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed stat is a valid out-parameter; fstat takes O_PATH descriptors.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and out pointer.
        cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
        // fchmod does not take O_PATH descriptors on older kernels; the magic link names exactly
        // this inode.
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        let p = cstr(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())?;
        // SAFETY: valid path.
        match cvt(unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) }) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !proc_fd_available() => {
                // No /proc: fchmodat on the name (the entry was just checked not to be a symlink).
                // SAFETY: valid fd and name.
                cvt(unsafe { libc::fchmodat(self.fd(), c.as_ptr(), mode as libc::mode_t, 0) }).map(drop)
            }
            Err(e) => Err(e),
        }
    }

    /// Read a regular file `name` (a symlink there is an error, not followed); `None` if absent.
    pub fn read(&self, name: &[u8]) -> Result<Option<Vec<u8>>> {
        use std::io::Read;
        let c = cstr(name).at("read", self.display(name))?;
        // SAFETY: valid fd and name.
        let fd = unsafe {
            libc::openat(
                self.fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::NotFound {
                return Ok(None);
            }
            return Err(Error::io("read", self.display(name), e));
        }
        // SAFETY: a fresh fd.
        let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let m = f.metadata().at("read", self.display(name))?;
        if !m.is_file() {
            return Err(Error::Other(format!(
                "{}: not a regular file",
                self.display(name).display()
            )));
        }
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).at("read", self.display(name))?;
        Ok(Some(buf))
    }

    /// Open (creating it if needed) the regular file `name` for reading and writing, without
    /// following a symlink there.
    pub fn open_rw(&self, name: &[u8], mode: u32) -> io::Result<std::fs::File> {
        let c = cstr(name)?;
        // SAFETY: valid fd and name.
        let fd = cvt(unsafe {
            libc::openat(
                self.fd(),
                c.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })?;
        // SAFETY: a fresh fd.
        Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Names in this directory (not `.`/`..`).
    pub fn names(&self) -> io::Result<Vec<Vec<u8>>> {
        let rd = std::fs::read_dir(self.fd_path(b""))?;
        let mut v = Vec::new();
        for e in rd {
            v.push(e?.file_name().as_bytes().to_vec());
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        symlink("/", root.join("abs")).unwrap();
        symlink("../outside", root.join("up")).unwrap();
        symlink("../../usr", root.join("usr/bin/dotdot")).unwrap();
        (t, root)
    }

    fn check_rules() {
        let (_t, root) = tree();
        let r = Root::open(&root).unwrap();
        let errno = |rel: &str, how| r.dir_io(rel.as_bytes(), how).err().and_then(|e| e.raw_os_error());
        // Plain directories resolve in both modes.
        assert_eq!(errno("usr/bin", Symlinks::Never), None);
        assert_eq!(errno("", Symlinks::Never), None);
        // In-root relative symlinks: followed only under Beneath.
        assert_eq!(errno("bin", Symlinks::Beneath), None);
        assert_eq!(errno("bin", Symlinks::Never), Some(libc::ELOOP));
        assert_eq!(errno("usr/bin/dotdot/bin", Symlinks::Beneath), None);
        // Out of the root: absolute symlinks, `..` escapes, either way.
        assert_eq!(errno("abs/tmp", Symlinks::Beneath), Some(libc::EXDEV));
        assert_eq!(errno("up", Symlinks::Beneath), Some(libc::EXDEV));
        assert_eq!(errno("usr/../..", Symlinks::Beneath), Some(libc::EXDEV));
        assert!(matches!(
            errno("abs/tmp", Symlinks::Never),
            Some(libc::ELOOP | libc::EXDEV)
        ));
        // The dir really is the one beneath the root.
        let d = r.dir(b"bin", Symlinks::Beneath).unwrap();
        std::fs::write(d.fd_path(b"x"), b"1").unwrap();
        assert_eq!(std::fs::read(root.join("usr/bin/x")).unwrap(), b"1");
        assert_eq!(
            d.fix_error(Error::io("read", d.fd_path(b"y"), io::ErrorKind::Other.into()))
                .to_string(),
            format!("cannot read {}: other error", root.join("bin/y").display())
        );
    }

    #[test]
    fn resolution_stays_beneath_the_root_with_openat2_and_by_hand() {
        check_rules();
        force_fallback_for_tests(true);
        let r = std::panic::catch_unwind(check_rules);
        force_fallback_for_tests(false);
        r.unwrap();
    }

    #[test]
    fn entry_operations_never_follow_the_final_symlink() {
        let (t, root) = tree();
        let r = Root::open(&root).unwrap();
        let outside = t.path().join("outside/secret");
        std::fs::write(&outside, b"s").unwrap();
        symlink(&outside, root.join("usr/link")).unwrap();
        let (d, name) = r.parent(b"usr/link", Symlinks::Never).unwrap();
        assert!(d.chmod(name, 0o777).is_err());
        assert!(d.read(name).is_err());
        assert!(d.open_rw(name, 0o600).is_err());
        d.lchown(name, 0, 0).ok();
        d.unlink(name).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"s");
        assert!(r.parent(b"usr/..", Symlinks::Never).is_err());
    }
}
