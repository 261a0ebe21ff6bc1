//! The local object directory: `objects-v1/ab/cdef…[.x]`, written via temp file + rename.

use super::{ObjectId, ObjectStat, ObjectStore};
use crate::error::{Error, IoContext, Result};
use std::fs::{self, File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Versioned so that a future layout never misreads old data.
pub const OBJECTS_DIR: &str = "objects-v1";

/// Files up to this size are read into memory whole (one read, one write); larger ones are
/// streamed to a temporary object while being hashed, so each file is still read once.
const WHOLE_FILE_LIMIT: u64 = 8 << 20;
const CHUNK: usize = 1 << 20;
const SCAN_LIMIT: u64 = 512 << 20;

pub struct LocalObjects {
    root: PathBuf,
    tmp: PathBuf,
}

enum Occupant {
    Nothing,
    File,
    Other,
}

/// Create a directory private to its owner (0700, like `~/.ssh`): a store holds copies of
/// whatever was saved, secrets included. An existing one is left as it is.
pub fn private_dir(p: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().recursive(true).mode(0o700).create(p) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(Error::io("create directory", p, e)),
        _ => Ok(()),
    }
}

/// Tighten an existing store directory to 0700 if it is ours and open to others (stores
/// created before they were private). One `stat`; a directory owned by someone else is left
/// alone (root restoring from a user's store must not change it). Best effort: a read-only
/// store stays usable for restores.
pub fn tighten_dir(p: &Path) {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if let Ok(m) = fs::symlink_metadata(p) {
        if m.is_dir() && m.uid() == me && m.mode() & 0o077 != 0 {
            let _ = fs::set_permissions(p, Permissions::from_mode(m.mode() & 0o7700));
        }
    }
}

/// A look at a file's whole content while it is in memory anyway (see `save::ContentScanner`).
pub type ScanFn<'a> = &'a dyn Fn(&[u8]) -> Option<String>;

/// Run `f` with this thread's reusable I/O buffer. Allocating (and zeroing) a fresh buffer per
/// file costs more than copying a typical 6 KB file.
pub fn with_buffer<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; CHUNK]);
    }
    BUF.with(|b| f(&mut b.borrow_mut()))
}

/// The result of ingesting one file.
pub struct Ingested {
    pub id: ObjectId,
    pub size: u64,
    /// True when this call added the object to the store.
    pub new: bool,
    /// The new object as written (the index records it for hardlink restores).
    pub stat: Option<ObjectStat>,
    /// The adapter's note for this content, when a scanner was given.
    pub note: Option<String>,
}

impl LocalObjects {
    /// `root` is `<store>/objects-v1`, `tmp` a scratch directory on the same filesystem.
    pub fn new(root: PathBuf, tmp: PathBuf) -> Result<Self> {
        private_dir(&root)?;
        private_dir(&tmp)?;
        tighten_dir(&root);
        tighten_dir(&tmp);
        // All 256 shard directories up front: saves then never mkdir per object.
        if !root.join("ff").is_dir() {
            for i in 0..=255u8 {
                private_dir(&root.join(format!("{i:02x}")))?;
            }
        }
        Ok(LocalObjects { root, tmp })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Where an object lives (whether or not it exists).
    pub fn path(&self, id: &ObjectId) -> PathBuf {
        let name = id.to_string();
        self.root.join(&name[..2]).join(&name[2..])
    }

    /// An object is there: a regular file under its name (anything else is corrupt).
    pub fn exists(&self, id: &ObjectId) -> bool {
        matches!(self.occupant(id), Occupant::File)
    }

    /// Hash `src` and add it to the store unless an object with that content and exec bit is
    /// already there. `mtime` becomes the new object's mtime (hardlinked restores show it).
    /// `scan` sees the whole content of every file up to 512 MiB.
    pub fn ingest(&self, src: &Path, exec: bool, mtime: filetime::FileTime, scan: Option<ScanFn>) -> Result<Ingested> {
        let mut file = File::open(src).at("read", src)?;
        let len = file.metadata().at("stat", src)?.len();
        // A scanner needs the whole content at once; beyond SCAN_LIMIT the file is streamed and
        // not scanned (adapters look for paths in scripts and libraries, not in huge blobs).
        let scan = scan.filter(|_| len <= SCAN_LIMIT);
        if len <= WHOLE_FILE_LIMIT || scan.is_some() {
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf).at("read", src)?;
            let id = ObjectId::new(blake3::hash(&buf), exec);
            let note = scan.and_then(|f| f(&buf));
            let stat = if self.needs_write(&id)? {
                self.write_new(&id, &buf, mtime)?
            } else {
                None
            };
            return Ok(Ingested {
                id,
                size: buf.len() as u64,
                new: stat.is_some(),
                stat,
                note,
            });
        }
        // Large file: copy into a temporary object while hashing; keep it only if new.
        let mut tmp = self.temp_file()?;
        let mut hasher = blake3::Hasher::new();
        let size = with_buffer(|buf| -> Result<u64> {
            let mut size = 0u64;
            loop {
                let n = match file.read(buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::io("read", src, e)),
                };
                hasher.update(&buf[..n]);
                tmp.write_all(&buf[..n]).at("write", tmp.path())?;
                size += n as u64;
            }
            Ok(size)
        })?;
        let id = ObjectId::new(hasher.finalize(), exec);
        let stat = if self.needs_write(&id)? {
            Some(self.persist(tmp, &id, mtime)?)
        } else {
            None
        };
        Ok(Ingested {
            id,
            size,
            new: stat.is_some(),
            stat,
            note: None,
        })
    }

    /// Add an object whose content is in memory (fetched from a remote), after checking it
    /// hashes to `id`. Returns the object as written if this call added it.
    pub fn put_verified(&self, id: &ObjectId, data: &[u8], mtime: filetime::FileTime) -> Result<Option<ObjectStat>> {
        if blake3::hash(data).as_bytes() != &id.hash {
            return Err(Error::Corrupt {
                id: id.to_string(),
                path: self.path(id),
            });
        }
        if self.exists(id) {
            return Ok(None);
        }
        self.write_new(id, data, mtime)
    }

    fn temp_file(&self) -> Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix("obj-")
            .tempfile_in(&self.tmp)
            .at("create temporary file in", &self.tmp)
    }

    /// Write a new object from memory. On Linux an `O_TMPFILE` inode in the shard directory is
    /// written, given its mode and mtime, then linked under its name: never visible partially,
    /// and cheaper than creating a named temporary file and renaming it (two directory updates,
    /// the dominant cost of a cold save of many small files). Falls back to temp file + rename
    /// where `O_TMPFILE` is unsupported. Returns the object as written if this call added it.
    fn write_new(&self, id: &ObjectId, data: &[u8], mtime: filetime::FileTime) -> Result<Option<ObjectStat>> {
        use std::os::unix::fs::OpenOptionsExt;
        let dest = self.path(id);
        let shard = dest.parent().expect("object path has a shard directory");
        let mode = if id.exec { 0o555 } else { 0o444 };
        let opened = fs::OpenOptions::new()
            .write(true)
            .mode(mode)
            .custom_flags(libc::O_TMPFILE)
            .open(shard);
        let mut f = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                private_dir(shard)?;
                return self.write_new(id, data, mtime);
            }
            Err(_) => {
                let mut tmp = self.temp_file()?;
                tmp.write_all(data).at("write", tmp.path())?;
                return self.persist(tmp, id, mtime).map(Some);
            }
        };
        f.write_all(data).at("write", &dest)?;
        filetime::set_file_handle_times(&f, None, Some(mtime)).at("set mtime of", &dest)?;
        let stat = ObjectStat::of(&f.metadata().at("stat", &dest)?);
        use std::os::fd::AsRawFd;
        let Err(err) = link_fd(f.as_raw_fd(), &dest) else {
            return Ok(Some(stat));
        };
        match err.kind() {
            // A concurrent save linked the same content first.
            io::ErrorKind::AlreadyExists => Ok(None),
            // No /proc: the portable way.
            io::ErrorKind::NotFound => {
                let mut tmp = self.temp_file()?;
                tmp.write_all(data).at("write", tmp.path())?;
                self.persist(tmp, id, mtime).map(Some)
            }
            _ => Err(Error::io("link into", &dest, err)),
        }
    }

    /// Make a finished temporary file the object `id`: read-only, then renamed into place so a
    /// partially written object is never visible under its name.
    fn persist(&self, tmp: tempfile::NamedTempFile, id: &ObjectId, mtime: filetime::FileTime) -> Result<ObjectStat> {
        let dest = self.path(id);
        let mode = if id.exec { 0o555 } else { 0o444 };
        tmp.as_file()
            .set_permissions(Permissions::from_mode(mode))
            .at("chmod", tmp.path())?;
        filetime::set_file_handle_times(tmp.as_file(), None, Some(mtime)).at("set mtime of", tmp.path())?;
        // rename keeps the inode: this is the object as written.
        let stat = ObjectStat::of(&tmp.as_file().metadata().at("stat", tmp.path())?);
        let shard = dest.parent().expect("object path has a shard directory");
        private_dir(shard)?;
        // A concurrent save may have renamed the same content into place first: renaming over
        // it is harmless (same bytes), and hardlinked restores keep the inode they have.
        tmp.persist(&dest)
            .map_err(|e| Error::io("rename into", &dest, e.error))?;
        Ok(stat)
    }

    /// Copy an object's content to `dest` while hashing it; a mismatch is [`Error::Corrupt`] and
    /// `dest` is left for the caller to discard.
    pub fn copy_verified(&self, id: &ObjectId, dest: &mut File, dest_path: &Path) -> Result<u64> {
        let src = self.path(id);
        let mut f = self.open(id)?;
        let mut hasher = blake3::Hasher::new();
        let n_total = with_buffer(|buf| -> Result<u64> {
            let mut n_total = 0u64;
            loop {
                let n = match f.read(buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::io("read", &src, e)),
                };
                hasher.update(&buf[..n]);
                dest.write_all(&buf[..n]).at("write", dest_path)?;
                n_total += n as u64;
            }
            Ok(n_total)
        })?;
        if hasher.finalize().as_bytes() != &id.hash {
            return Err(Error::Corrupt {
                id: id.to_string(),
                path: src,
            });
        }
        Ok(n_total)
    }

    /// Re-hash an object and compare with its name.
    pub fn check(&self, id: &ObjectId) -> Result<bool> {
        let path = self.path(id);
        let mut f = self.open(id)?;
        let mut hasher = blake3::Hasher::new();
        // update_reader streams with a large buffer; objects can be gigabytes.
        hasher.update_reader(&mut f).at("read", &path)?;
        Ok(hasher.finalize().as_bytes() == &id.hash)
    }

    /// Open an object for reading: regular files only. `O_NOFOLLOW`: a symlink planted in the
    /// store (a tampered cache archive) is never followed; `O_NONBLOCK`: a FIFO planted there
    /// does not block the open (it has no effect on a regular file's reads); the type is
    /// checked on the open descriptor, so nothing can be swapped in between. Anything but a
    /// regular file is [`Error::Corrupt`] (verify --repair removes it, the next save of that
    /// content writes it anew).
    pub fn open(&self, id: &ObjectId) -> Result<File> {
        self.open_checked(id).map(|(f, _)| f)
    }

    /// [`open`](Self::open), also returning the descriptor's `fstat`.
    pub fn open_checked(&self, id: &ObjectId) -> Result<(File, fs::Metadata)> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(id);
        let corrupt = || Error::Corrupt {
            id: id.to_string(),
            path: path.clone(),
        };
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                _ if e.kind() == io::ErrorKind::NotFound => Error::MissingObject { id: id.to_string() },
                // A symlink (O_NOFOLLOW), a socket, a device without a driver.
                Some(libc::ELOOP) | Some(libc::ENXIO) | Some(libc::ENODEV) => corrupt(),
                _ => Error::io("open object", &path, e),
            })?;
        let m = f.metadata().at("stat", &path)?;
        if !m.file_type().is_file() {
            return Err(corrupt());
        }
        Ok((f, m))
    }

    /// What occupies an object's name: nothing, a regular file, or something else (a
    /// directory, FIFO or symlink planted in the store: corrupt).
    fn occupant(&self, id: &ObjectId) -> Occupant {
        match fs::symlink_metadata(self.path(id)) {
            Err(_) => Occupant::Nothing,
            Ok(m) if m.file_type().is_file() => Occupant::File,
            Ok(_) => Occupant::Other,
        }
    }

    /// Make room for a new object: a non-regular file under its name is removed, so the save
    /// that has the content heals the store.
    fn needs_write(&self, id: &ObjectId) -> Result<bool> {
        match self.occupant(id) {
            Occupant::File => Ok(false),
            Occupant::Nothing => Ok(true),
            Occupant::Other => self.delete(id).map(|_| true),
        }
    }

    /// Every object file present, with its size. Stray names (temporary leftovers, foreign
    /// files) are ignored rather than misread.
    pub fn scan(&self) -> Result<Vec<(ObjectId, u64)>> {
        let mut out = Vec::new();
        for shard in fs::read_dir(&self.root).at("list", &self.root)? {
            let shard = shard.at("list", &self.root)?;
            let sname = shard.file_name();
            let Some(sname) = sname.to_str().filter(|s| s.len() == 2) else {
                continue;
            };
            let sdir = shard.path();
            if !sdir.is_dir() {
                continue;
            }
            for obj in fs::read_dir(&sdir).at("list", &sdir)? {
                let obj = obj.at("list", &sdir)?;
                let Some(rest) = obj.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let Ok(id) = format!("{sname}{rest}").parse::<ObjectId>() else {
                    continue;
                };
                let size = obj.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((id, size));
            }
        }
        Ok(out)
    }

    /// Remove an object; a missing one is not an error. A directory planted under an object's
    /// name (corrupt) is removed with its content.
    pub fn delete(&self, id: &ObjectId) -> Result<()> {
        let p = self.path(id);
        let r = match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => crate::restore::remove_tree(&p),
            _ => fs::remove_file(&p),
        };
        match r {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("remove", &p, e)),
            _ => Ok(()),
        }
    }

    /// Move a corrupt object out of `objects-v1` into `quarantine/` (kept for inspection;
    /// `verify --repair` deletes it): restores no longer find it, the next save of its content
    /// writes it anew. Returns where it went.
    pub fn quarantine(&self, id: &ObjectId) -> Result<PathBuf> {
        let q = self.quarantine_dir();
        private_dir(&q)?;
        let dest = q.join(format!("{id}-{}-{}", std::process::id(), crate::repo::now_ns()));
        let src = self.path(id);
        fs::rename(&src, &dest).at("move to quarantine", &src)?;
        Ok(dest)
    }

    /// `<store>/quarantine`: corrupt objects a restore moved aside (kept as evidence until `verify --repair`).
    pub fn quarantine_dir(&self) -> PathBuf {
        self.root.parent().unwrap_or(&self.root).join("quarantine")
    }
}

impl ObjectStore for LocalObjects {
    fn contains(&self, id: &ObjectId) -> Result<bool> {
        Ok(self.exists(id))
    }

    fn put_file(&self, id: &ObjectId, src: &Path) -> Result<()> {
        if self.exists(id) {
            return Ok(());
        }
        let mut tmp = self.temp_file()?;
        let mut f = File::open(src).at("read", src)?;
        io::copy(&mut f, tmp.as_file_mut()).at("write", tmp.path())?;
        let mtime = filetime::FileTime::from_last_modification_time(&f.metadata().at("stat", src)?);
        self.persist(tmp, id, mtime).map(|_| ())
    }

    fn get_to(&self, id: &ObjectId, dest: &Path) -> Result<()> {
        let mut out = File::create(dest).at("create", dest)?;
        self.copy_verified(id, &mut out, dest).map(|_| ())
    }

    fn list(&self) -> Result<Vec<ObjectId>> {
        Ok(self.scan()?.into_iter().map(|(id, _)| id).collect())
    }

    fn remove(&self, id: &ObjectId) -> Result<()> {
        self.delete(id)
    }
}

/// `linkat("/proc/self/fd/N", dest, AT_SYMLINK_FOLLOW)`: a new name for an open file's inode,
/// without the privilege `AT_EMPTY_PATH` needs.
pub(crate) fn link_fd(fd: std::os::fd::RawFd, dest: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let proc_path = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
    let dest_c = std::ffi::CString::new(dest.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: both are valid NUL-terminated paths; linkat does not retain them.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc_path.as_ptr(),
            libc::AT_FDCWD,
            dest_c.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_dedupes_and_keeps_exec_variants_apart() {
        let d = tempfile::tempdir().unwrap();
        let objs = LocalObjects::new(d.path().join("o"), d.path().join("t")).unwrap();
        let src = d.path().join("f");
        fs::write(&src, b"same bytes").unwrap();
        let t = filetime::FileTime::from_unix_time(1_600_000_000, 5);
        let a = objs.ingest(&src, false, t, None).unwrap();
        let b = objs.ingest(&src, false, t, None).unwrap();
        let c = objs.ingest(&src, true, t, None).unwrap();
        assert!(a.new && !b.new && c.new);
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        let meta = fs::metadata(objs.path(&c.id)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o555);
        assert!(objs.check(&a.id).unwrap());
        assert_eq!(objs.scan().unwrap().len(), 2);
    }
}
