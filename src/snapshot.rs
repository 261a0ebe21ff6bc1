//! Snapshot entries and the safety rules a manifest must pass before anything is written.

use crate::error::{Error, Result};
use crate::store::ObjectId;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

impl EntryKind {
    pub fn code(self) -> i64 {
        match self {
            EntryKind::File => 0,
            EntryKind::Dir => 1,
            EntryKind::Symlink => 2,
        }
    }

    pub fn from_code(c: i64) -> Result<Self> {
        Ok(match c {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            2 => EntryKind::Symlink,
            _ => return Err(Error::Other(format!("unknown entry type {c} in the index"))),
        })
    }
}

/// One path of a snapshot, relative to its root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative, `/`-separated, no leading `/`, never empty (the root itself is not an entry).
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub object: Option<ObjectId>,
    pub target: Option<Vec<u8>>,
    /// Hard links within the tree share a group number.
    pub link_group: Option<u64>,
    /// Extended attributes, only captured when the save asked for them.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// An adapter's per-file note (for venvs: where the file holds absolute paths).
    pub note: Option<String>,
}

impl Entry {
    pub fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    /// A plain file entry for unit tests: mode 0644, owner 0, mtime 5 ns.
    #[cfg(test)]
    pub(crate) fn test_file(path: &str, content: &[u8]) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: content.len() as u64,
            mtime_ns: 5,
            object: Some(ObjectId::new(blake3::hash(content), false)),
            target: None,
            link_group: None,
            xattrs: vec![],
            note: None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Manifest {
    /// Sorted by path bytes, so a parent always precedes its children.
    pub entries: Vec<Entry>,
}

impl Manifest {
    pub fn files(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.kind == EntryKind::File)
    }

    pub fn get(&self, path: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.as_slice().cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// A BLAKE3 digest of every field of every entry, in order. Stored with the snapshot so an
    /// unchanged re-save compares one value instead of loading the stored manifest. Every
    /// variable-length field is length-prefixed, so distinct manifests never encode alike.
    pub fn digest(&self) -> String {
        // Encoded into one buffer and hashed once: far faster than many tiny hasher updates.
        fn bytes(b: &mut Vec<u8>, v: &[u8]) {
            b.extend_from_slice(&(v.len() as u64).to_le_bytes());
            b.extend_from_slice(v);
        }
        fn opt(b: &mut Vec<u8>, v: Option<&[u8]>) {
            match v {
                None => b.push(0),
                Some(v) => {
                    b.push(1);
                    bytes(b, v);
                }
            }
        }
        let mut b = Vec::with_capacity(64 + self.entries.len() * 128);
        b.extend_from_slice(b"envsnap-manifest-v1");
        b.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            bytes(&mut b, &e.path);
            b.extend_from_slice(&e.kind.code().to_le_bytes());
            b.extend_from_slice(&e.mode.to_le_bytes());
            b.extend_from_slice(&e.uid.to_le_bytes());
            b.extend_from_slice(&e.gid.to_le_bytes());
            b.extend_from_slice(&e.size.to_le_bytes());
            b.extend_from_slice(&e.mtime_ns.to_le_bytes());
            match e.object {
                None => b.push(0),
                Some(o) => {
                    b.push(1);
                    b.extend_from_slice(&o.hash);
                    b.push(o.exec as u8);
                }
            }
            opt(&mut b, e.target.as_deref());
            opt(&mut b, e.link_group.map(|g| g.to_le_bytes()).as_ref().map(|g| &g[..]));
            b.extend_from_slice(&(e.xattrs.len() as u64).to_le_bytes());
            for (k, v) in &e.xattrs {
                bytes(&mut b, k.as_bytes());
                bytes(&mut b, v);
            }
            opt(&mut b, e.note.as_deref().map(str::as_bytes));
        }
        blake3::hash(&b).to_hex().to_string()
    }

    /// Check every path is a clean relative path (no absolute paths, no `.`/`..`/empty
    /// components, no NUL) and appears once. This guards both tree restores and merges into an
    /// existing root, whatever the index says.
    pub fn validate_paths(&self, key: &str) -> Result<()> {
        let mut prev: Option<&[u8]> = None;
        for e in &self.entries {
            check_rel_path(&e.path).map_err(|why| unsafe_entry(key, e, why))?;
            if prev.is_some_and(|p| p >= e.path.as_slice()) {
                return Err(unsafe_entry(key, e, "duplicate or out-of-order path"));
            }
            prev = Some(&e.path);
            match e.kind {
                EntryKind::File if e.object.is_none() => return Err(unsafe_entry(key, e, "file without an object")),
                EntryKind::Symlink if e.target.is_none() => {
                    return Err(unsafe_entry(key, e, "symlink without a target"))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// For a restore into a fresh directory: additionally every entry's parent must be a
    /// directory entry of the manifest (or the root), so no path passes through a symlink the
    /// snapshot itself creates.
    pub fn validate_tree(&self, key: &str) -> Result<()> {
        self.validate_paths(key)?;
        let kinds: HashMap<&[u8], EntryKind> = self.entries.iter().map(|e| (e.path.as_slice(), e.kind)).collect();
        for e in &self.entries {
            if let Some(slash) = e.path.iter().rposition(|&b| b == b'/') {
                match kinds.get(&e.path[..slash]) {
                    Some(EntryKind::Dir) => {}
                    Some(_) => return Err(unsafe_entry(key, e, "its parent is not a directory (a symlink?)")),
                    None => return Err(unsafe_entry(key, e, "its parent directory is not in the snapshot")),
                }
            }
        }
        Ok(())
    }
}

fn unsafe_entry(key: &str, e: &Entry, why: &'static str) -> Error {
    Error::UnsafeEntry {
        key: key.to_string(),
        path: e.path_lossy(),
        why,
    }
}

/// Why a relative path is unsafe, if it is.
pub fn check_rel_path(p: &[u8]) -> std::result::Result<(), &'static str> {
    if p.is_empty() {
        return Err("empty path");
    }
    if p[0] == b'/' {
        return Err("absolute path");
    }
    if p.contains(&0) {
        return Err("NUL byte in path");
    }
    for c in p.split(|&b| b == b'/') {
        match c {
            b"" => return Err("empty path component"),
            b"." => return Err("`.` component"),
            b".." => return Err("`..` component"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_ns: 0,
            object: (kind == EntryKind::File).then(|| ObjectId::new(blake3::hash(b""), false)),
            target: (kind == EntryKind::Symlink).then(|| b"/etc".to_vec()),
            link_group: None,
            xattrs: vec![],
            note: None,
        }
    }

    #[test]
    fn digest_covers_every_field() {
        let base = Manifest {
            entries: vec![
                e("d", EntryKind::Dir),
                e("d/f", EntryKind::File),
                e("l", EntryKind::Symlink),
            ],
        };
        let d = base.digest();
        assert_eq!(d, base.clone().digest());
        let variants: Vec<fn(&mut Entry)> = vec![
            |e| e.path.push(b'x'),
            |e| e.mode ^= 0o100,
            |e| e.uid += 1,
            |e| e.gid += 1,
            |e| e.size += 1,
            |e| e.mtime_ns += 1,
            |e| e.object = Some(ObjectId::new(blake3::hash(b"x"), false)),
            |e| e.target = Some(b"t".to_vec()),
            |e| e.link_group = Some(0),
            |e| e.xattrs.push(("user.a".into(), vec![])),
            |e| e.note = Some(String::new()),
        ];
        for (i, change) in variants.iter().enumerate() {
            let mut m = base.clone();
            change(&mut m.entries[1]);
            assert_ne!(m.digest(), d, "variant {i} left the digest unchanged");
        }
        // The exec bit is part of the object identity.
        let mut m = base.clone();
        m.entries[1].object = m.entries[1]
            .object
            .map(|o| ObjectId::new(blake3::Hash::from(o.hash), true));
        assert_ne!(m.digest(), d);
    }

    #[test]
    fn hostile_paths_are_refused() {
        for p in ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/"] {
            let m = Manifest {
                entries: vec![e(p, EntryKind::File)],
            };
            assert!(m.validate_paths("k").is_err(), "{p}");
        }
    }

    #[test]
    fn writing_through_a_symlink_is_refused() {
        let m = Manifest {
            entries: vec![e("link", EntryKind::Symlink), e("link/passwd", EntryKind::File)],
        };
        m.validate_paths("k").unwrap();
        assert!(m.validate_tree("k").is_err());
        let ok = Manifest {
            entries: vec![e("d", EntryKind::Dir), e("d/f", EntryKind::File)],
        };
        ok.validate_tree("k").unwrap();
    }
}
