//! The manifest document a remote stores per snapshot: everything the local index keeps for it
//! except the key and the times (those are in the ref's name), as zstd-compressed JSON named by
//! the BLAKE3 of the JSON. Identical content saved under another key is the same document, so
//! it costs nothing but a ref. A document read back goes through the same path-safety rules as
//! a local manifest before anything is written.

use crate::error::{Error, Result};
use crate::index::SnapshotRow;
use crate::snapshot::{Entry, EntryKind, Manifest};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

const FORMAT: &str = "envsnap-manifest-v1";
/// A manifest that inflates beyond this is refused (a hostile remote's zip bomb).
const LIMIT: u64 = 2 << 30;

#[derive(Serialize, Deserialize)]
pub struct Doc {
    format: String,
    pub kind: String,
    source: Bytes,
    pub tool_version: String,
    pub meta: serde_json::Value,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    root_mode: u32,
    root_uid: u32,
    root_gid: u32,
    root_mtime_ns: i64,
    pub scanner: Option<String>,
    entries: Vec<DocEntry>,
}

/// Bytes as a string when they are UTF-8 (nearly always), else base64.
#[derive(Serialize, Deserialize, Clone)]
#[serde(untagged)]
enum Bytes {
    Text(String),
    Raw { b64: String },
}

impl Bytes {
    fn from(b: &[u8]) -> Bytes {
        match std::str::from_utf8(b) {
            Ok(s) => Bytes::Text(s.to_string()),
            Err(_) => Bytes::Raw {
                b64: base64::engine::general_purpose::STANDARD.encode(b),
            },
        }
    }
    fn to_vec(&self) -> Result<Vec<u8>> {
        match self {
            Bytes::Text(s) => Ok(s.as_bytes().to_vec()),
            Bytes::Raw { b64 } => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| Error::Remote("manifest on the remote has bad base64".into())),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct DocEntry {
    p: Bytes,
    k: u8,
    m: u32,
    u: u32,
    g: u32,
    s: u64,
    t: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    l: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    h: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    x: Vec<(String, Bytes)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
}

impl Doc {
    pub fn new(row: &SnapshotRow, manifest: &Manifest, scanner: Option<String>) -> Doc {
        Doc {
            format: FORMAT.into(),
            kind: row.kind.clone(),
            source: Bytes::from(row.source.as_os_str().as_bytes()),
            tool_version: row.tool_version.clone(),
            meta: row.meta.clone(),
            files: row.files,
            dirs: row.dirs,
            symlinks: row.symlinks,
            bytes: row.bytes,
            root_mode: row.root_mode,
            root_uid: row.root_uid,
            root_gid: row.root_gid,
            root_mtime_ns: row.root_mtime_ns,
            scanner,
            entries: manifest
                .entries
                .iter()
                .map(|e| DocEntry {
                    p: Bytes::from(&e.path),
                    k: e.kind.code() as u8,
                    m: e.mode,
                    u: e.uid,
                    g: e.gid,
                    s: e.size,
                    t: e.mtime_ns,
                    o: e.object.map(|o| o.to_string()),
                    l: e.target.as_deref().map(Bytes::from),
                    h: e.link_group,
                    x: e.xattrs.iter().map(|(k, v)| (k.clone(), Bytes::from(v))).collect(),
                    n: e.note.clone(),
                })
                .collect(),
        }
    }

    /// (id, compressed bytes): the id is the BLAKE3 of the JSON.
    pub fn encode(&self) -> Result<(String, Vec<u8>)> {
        let json = serde_json::to_vec(self).map_err(|e| Error::Other(format!("cannot encode manifest: {e}")))?;
        let id = blake3::hash(&json).to_hex().to_string();
        Ok((id, super::pack::compress(&json)?))
    }

    /// Decode a downloaded document and check it is the one its name says.
    pub fn decode(id: &str, bytes: &[u8]) -> Result<Doc> {
        let bad = |why: String| Error::Remote(format!("corrupt manifest {id} on the remote: {why}"));
        let mut json = Vec::new();
        zstd::stream::Decoder::new(bytes)
            .map_err(|e| bad(e.to_string()))?
            .take(LIMIT)
            .read_to_end(&mut json)
            .map_err(|e| bad(format!("not zstd ({e})")))?;
        if blake3::hash(&json).to_hex().as_str() != id {
            return Err(bad("its content does not match its name".into()));
        }
        let doc: Doc = serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))?;
        if doc.format != FORMAT {
            return Err(bad(format!("unknown format {:?}: upgrade envsnap", doc.format)));
        }
        Ok(doc)
    }

    /// The snapshot row (id 0) and manifest, checked by the same rules as a local manifest.
    pub fn to_snapshot(&self, key: &str, created_ns: i64) -> Result<(SnapshotRow, Manifest)> {
        let bad = |why: String| Error::Remote(format!("manifest of {key} on the remote is invalid: {why}"));
        let mut entries = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let kind = EntryKind::from_code(e.k as i64).map_err(|e| bad(e.to_string()))?;
            entries.push(Entry {
                path: e.p.to_vec()?,
                kind,
                mode: e.m & 0o7777,
                uid: e.u,
                gid: e.g,
                size: e.s,
                mtime_ns: e.t,
                object: e.o.as_deref().map(str::parse).transpose()?,
                target: e.l.as_ref().map(Bytes::to_vec).transpose()?,
                link_group: e.h,
                xattrs: e
                    .x
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.to_vec()?)))
                    .collect::<Result<_>>()?,
                note: e.n.clone(),
            });
        }
        let manifest = Manifest { entries };
        manifest.validate_paths(key)?;
        let row = SnapshotRow {
            id: 0,
            key: key.to_string(),
            kind: self.kind.clone(),
            created_ns,
            source: PathBuf::from(std::ffi::OsStr::from_bytes(&self.source.to_vec()?)),
            tool_version: self.tool_version.clone(),
            meta: self.meta.clone(),
            files: self.files,
            dirs: self.dirs,
            symlinks: self.symlinks,
            bytes: self.bytes,
            root_mode: self.root_mode & 0o7777,
            root_uid: self.root_uid,
            root_gid: self.root_gid,
            root_mtime_ns: self.root_mtime_ns,
            last_restored_ns: None,
        };
        Ok((row, manifest))
    }
}
