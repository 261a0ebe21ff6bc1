//! Content-addressed objects: one per distinct (content, exec bit), named by BLAKE3.
//!
//! Objects are stored uncompressed and read-only so a restore can reflink or hardlink them.
//! The executable bit is part of an object's identity: a hardlinked restore shares the object's
//! inode, and so its mode, so `#!/bin/sh` scripts and plain copies of the same bytes must be
//! two objects (pnpm's `-exec` variant does the same). Names: `<hex>` and `<hex>.x`.

mod local;

pub(crate) use local::link_fd;
pub use local::{private_dir, tighten_dir, with_buffer, Ingested, LocalObjects, ScanFn, OBJECTS_DIR};

use crate::error::{Error, Result};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    pub hash: [u8; 32],
    pub exec: bool,
}

impl ObjectId {
    pub fn new(hash: blake3::Hash, exec: bool) -> Self {
        ObjectId {
            hash: *hash.as_bytes(),
            exec,
        }
    }

    pub fn hex(&self) -> String {
        blake3::Hash::from_bytes(self.hash).to_hex().to_string()
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())?;
        if self.exec {
            f.write_str(".x")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

impl FromStr for ObjectId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (hex, exec) = match s.strip_suffix(".x") {
            Some(h) => (h, true),
            None => (s, false),
        };
        let hash =
            blake3::Hash::from_hex(hex).map_err(|_| Error::Other(format!("malformed object id {s:?} in the index")))?;
        Ok(ObjectId::new(hash, exec))
    }
}

/// An object file's (size, mtime, inode) as envsnap wrote or last verified it. A hardlink
/// restore compares it with one `fstat` of the object: any write since changes the mtime (or,
/// replaced by another file, the inode), and then the object is hashed again before use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: u64,
}

impl ObjectStat {
    pub fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        ObjectStat {
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ino: m.ino(),
        }
    }
}

/// What every object store does, local directory or remote bucket. A missing object is the
/// typed [`Error::MissingObject`], so a local cache layered over a remote can fall through.
pub trait ObjectStore: Send + Sync {
    fn contains(&self, id: &ObjectId) -> Result<bool>;
    /// Store the content of `src` (already verified to hash to `id`).
    fn put_file(&self, id: &ObjectId, src: &Path) -> Result<()>;
    /// Write the object's content to `dest` (created or replaced), verifying it.
    fn get_to(&self, id: &ObjectId, dest: &Path) -> Result<()>;
    /// Every object id present.
    fn list(&self) -> Result<Vec<ObjectId>>;
    fn remove(&self, id: &ObjectId) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_round_trips_through_its_name() {
        let h = blake3::hash(b"hello");
        for exec in [false, true] {
            let id = ObjectId::new(h, exec);
            let parsed: ObjectId = id.to_string().parse().unwrap();
            assert_eq!(parsed, id);
        }
        assert!("zz".parse::<ObjectId>().is_err());
    }
}
