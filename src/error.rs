//! One error type for the library. Every variant names what it was about (a path, a key, an
//! object) so the binary can print a single line that tells the user what to do.

use std::io;
use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a path failed. `action` is a short verb phrase ("read", "create directory").
    #[error("cannot {action} {}: {source}{}", path.display(), io_hint(path, source))]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The SQLite index failed.
    #[error("index {}: {source}{}", path.display(), index_hint(path, source))]
    Index {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// Bad input from the user: a bad key, a missing path, an existing destination.
    #[error("{0}")]
    Usage(String),
    /// Not an error but a cache miss decided by an adapter (the interpreter is gone, the base
    /// image drifted): nothing was written. Exit status 1.
    #[error("{0}")]
    Miss(String),
    /// An object's content does not match its name.
    #[error("object {id} is corrupt ({}): run `envsnap verify --repair`, then save again", path.display())]
    Corrupt { id: String, path: PathBuf },
    /// An object the index references is not in the store. Typed so a cache layered over a
    /// remote store can fall through to the remote.
    #[error("object {id} is not in the local store: restore with the remote that holds it, or run `envsnap verify` and save again")]
    MissingObject { id: String },
    /// A snapshot entry that would write outside the target or through a symlink.
    #[error("refusing unsafe entry {path:?} in snapshot {key}: {why}")]
    UnsafeEntry {
        key: String,
        path: String,
        why: &'static str,
    },
    /// A remote store failed or refused (the message names the remote URL, the operation and
    /// the HTTP status), or holds data that fails verification. Never a miss.
    #[error("{0}")]
    Remote(String),
    #[error("{0}")]
    Other(String),
}

fn io_hint(path: &Path, e: &io::Error) -> String {
    // By kind, not errno: errors wrapped by other crates (tempfile adds the path) keep their kind.
    match e.kind() {
        io::ErrorKind::ReadOnlyFilesystem => {
            " (read-only file system: choose a writable --store or destination)".into()
        }
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => disk_full_hint(path),
        io::ErrorKind::PermissionDenied => " (permission denied: check ownership, or run as root)".into(),
        _ => String::new(),
    }
}

fn index_hint(path: &Path, e: &rusqlite::Error) -> String {
    // SQLite says "disk I/O error" when it cannot grow its shared-memory file on a full disk.
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => disk_full_hint(path),
        Some(rusqlite::ErrorCode::SystemIoFailure) if crate::diskfull::is_full(path) => disk_full_hint(path),
        _ => String::new(),
    }
}

/// Which filesystem is full, and what to do about it: gc helps only when it is the store's.
fn disk_full_hint(path: &Path) -> String {
    let mount = crate::diskfull::mount_point(path);
    match crate::diskfull::store_of(path) {
        Some(store) => format!(
            " (disk full: the filesystem at {} holding the store {} has no space left: free space there, \
             or run `envsnap gc --max-size`)",
            mount.display(),
            store.display()
        ),
        None => format!(
            " (disk full: the filesystem at {} has no space left: free space there, or choose another destination)",
            mount.display()
        ),
    }
}

impl Error {
    pub fn io(action: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn index(path: impl AsRef<Path>, source: rusqlite::Error) -> Self {
        Error::Index {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// The process exit status the CLI uses: 1 for a miss, 2 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Miss(_) => 1,
            _ => 2,
        }
    }

    pub fn is_miss(&self) -> bool {
        matches!(self, Error::Miss(_))
    }

    /// The index could not be written just now: another process holds its write lock past
    /// the wait, or it is read-only. Bookkeeping (a restore's LRU stamp, stat cache and event)
    /// gives up quietly on these.
    pub fn is_index_unavailable(&self) -> bool {
        use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked, ReadOnly};
        matches!(self, Error::Index { source: rusqlite::Error::SqliteFailure(f, _), .. }
            if matches!(f.code, DatabaseBusy | DatabaseLocked | ReadOnly))
    }
}

/// `result.at("read", path)?` turns an `io::Result` into an [`Error::Io`] naming the path.
pub trait IoContext<T> {
    fn at(self, action: &'static str, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, action: &'static str, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(action, path, e))
    }
}
