//! `envsnap delete`: drop keys on purpose. A deleted key stops resolving at once (exact lookups
//! and fallbacks skip it); its data stays until the next gc, which frees what no remaining
//! snapshot references. Nothing another key still references is lost, because gc counts
//! references over the snapshots that remain.
//!
//! Where keys live is behind [`KeyDeleter`]: the local store deletes index rows.

use crate::error::Result;
use crate::repo::Store;
use crate::store::ObjectId;
use std::collections::{HashMap, HashSet};

/// What to delete: exact keys and/or every key starting with a prefix.
#[derive(Clone, Debug, Default)]
pub struct DeleteRequest {
    pub keys: Vec<String>,
    pub prefixes: Vec<String>,
    /// Report what would be deleted, delete nothing.
    pub dry_run: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DeletedKey {
    pub key: String,
    pub kind: String,
    pub files: u64,
    pub bytes: u64,
    pub created_ns: i64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DeleteReport {
    pub deleted: Vec<DeletedKey>,
    /// Keys asked for that have no snapshot.
    pub missing_keys: Vec<String>,
    /// Prefixes no key starts with.
    pub empty_prefixes: Vec<String>,
    pub dry_run: bool,
    /// Objects only the deleted snapshots referenced: the next gc removes them. None where
    /// the store cannot tell cheaply (a remote).
    pub reclaimable_objects: Option<u64>,
    pub reclaimable_bytes: Option<u64>,
}

impl DeleteReport {
    /// Something asked for was not there (the CLI exits 1, like a miss).
    pub fn missed(&self) -> bool {
        !self.missing_keys.is_empty() || !self.empty_prefixes.is_empty()
    }
}

pub trait KeyDeleter {
    fn delete_keys(&self, req: &DeleteRequest) -> Result<DeleteReport>;
}

impl KeyDeleter for Store {
    fn delete_keys(&self, req: &DeleteRequest) -> Result<DeleteReport> {
        for k in req.keys.iter().chain(&req.prefixes) {
            crate::key::validate(k)?;
        }
        // Shared, like a save: gc (exclusive) never computes its live set while rows vanish.
        let _lock = self.lock_shared()?;
        let mut report = DeleteReport {
            dry_run: req.dry_run,
            ..Default::default()
        };
        let mut chosen = Vec::new();
        let mut seen = HashSet::new();
        {
            let idx = self.index();
            for k in &req.keys {
                match idx.get(k)? {
                    Some(row) => {
                        if seen.insert(row.id) {
                            chosen.push(row);
                        }
                    }
                    None => report.missing_keys.push(k.clone()),
                }
            }
            for p in &req.prefixes {
                let rows = idx.list(Some(p))?;
                if rows.is_empty() {
                    report.empty_prefixes.push(p.clone());
                }
                for row in rows {
                    if seen.insert(row.id) {
                        chosen.push(row);
                    }
                }
            }
        }
        // What the next gc frees: objects referenced by deleted snapshots and by no other.
        let refs = self.index().object_refs()?;
        let mut size_of: HashMap<ObjectId, u64> = HashMap::new();
        let mut kept: HashSet<ObjectId> = HashSet::new();
        for (snap, obj, size) in refs {
            if seen.contains(&snap) {
                size_of.insert(obj, size);
            } else {
                kept.insert(obj);
            }
        }
        let (mut objects, mut bytes) = (0, 0);
        for (obj, size) in &size_of {
            if !kept.contains(obj) {
                objects += 1;
                bytes += size;
            }
        }
        report.reclaimable_objects = Some(objects);
        report.reclaimable_bytes = Some(bytes);
        if !req.dry_run && !chosen.is_empty() {
            let ids: Vec<i64> = chosen.iter().map(|r| r.id).collect();
            self.index().delete_snapshots(&ids)?;
        }
        report.deleted = chosen
            .into_iter()
            .map(|r| DeletedKey {
                key: r.key,
                kind: r.kind,
                files: r.files,
                bytes: r.bytes,
                created_ns: r.created_ns,
            })
            .collect();
        Ok(report)
    }
}
