//! `envsnap gc --remote`: drop refs, then remove unreferenced data in two phases, safely beside
//! concurrent saves and restores.
//!
//! 1. **Refs.** Every key's older refs (superseded by a newer save) go. Keys not created or
//!    restored (`uses/`) within `--max-age` go, then least recently used keys until the
//!    distinct objects fit `--max-size`, never the `--keep-last` most recently used.
//! 2. **Mark.** Packs none of whose objects a remaining snapshot references, and packs no
//!    index names (a killed save's), are taken out of the index (a new index file replaces
//!    the old ones) and recorded in `gc/pending-<time>` with their index entries. From now on
//!    saves do not count on them and upload such objects again.
//! 3. **Sweep**, in a later run at least `--grace` (default 24 h) after the mark, so any save
//!    that read the old index has finished: a marked pack is deleted unless a snapshot now
//!    references one of its objects (a save that was in flight at the mark: the pack is put
//!    back into the index), the index names it again, or it was written after the mark.
//!    Marked manifests are deleted unless referenced again or rewritten after the mark (a
//!    push always rewrites its manifest before its ref, which is what makes this safe).
//!
//! Repacking packs that are mostly garbage is not done: a pack goes only when all of it is.

use super::client::Listed;
use super::layout::{self, RefName};
use super::pack::{self, Loc, PackLocs};
use super::Remote;
use crate::error::{Error, Result};
use crate::store::ObjectId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct RemoteGcOptions {
    pub max_age: Option<Duration>,
    pub max_size: Option<u64>,
    pub keep_last: usize,
    pub grace: Duration,
    pub dry_run: bool,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RemoteGcReport {
    pub removed_keys: Vec<String>,
    pub removed_refs: u64,
    pub kept_keys: u64,
    /// Packs and manifests marked in this run (deleted by a run after the grace period).
    pub marked_packs: u64,
    pub marked_manifests: u64,
    /// Deleted in this run (marked by an earlier one).
    pub deleted_packs: u64,
    pub deleted_pack_bytes: u64,
    pub deleted_manifests: u64,
    /// Marked packs put back because a snapshot references them again.
    pub restored_packs: u64,
    /// The index files were replaced by one.
    pub index_files_replaced: bool,
}

/// More index files than this are merged into one by gc.
const MAX_INDEX_FILES: usize = 16;

#[derive(serde::Serialize, serde::Deserialize)]
struct Pending {
    marked_ns: i64,
    packs: Vec<String>,
    manifests: Vec<String>,
    /// The marked packs' index entries (an index file's bytes, hex), to put back if needed.
    index: String,
}

impl Remote {
    pub fn gc(&self, opts: &RemoteGcOptions) -> Result<RemoteGcReport> {
        let mut rep = RemoteGcReport::default();
        let now = crate::repo::now_ns();
        let c = &self.client;

        // 1. Refs.
        let refs: Vec<RefName> = self.refs("", false)?;
        let uses = self.last_uses()?;
        let mut newest: BTreeMap<String, RefName> = BTreeMap::new();
        let mut drop_refs: Vec<RefName> = Vec::new();
        for r in refs {
            match newest.get(&r.key) {
                None => {
                    newest.insert(r.key.clone(), r);
                }
                Some(_) => drop_refs.push(r), // listed newest first: this one is superseded
            }
        }
        let last_used = |r: &RefName| uses.get(&r.key).copied().unwrap_or(r.created_ns).max(r.created_ns);
        let mut live: Vec<RefName> = newest.into_values().collect();
        live.sort_by_key(|r| std::cmp::Reverse(last_used(r)));
        let protected: HashSet<String> = live.iter().take(opts.keep_last).map(|r| r.key.clone()).collect();
        let mut dropped_keys: HashSet<String> = HashSet::new();
        if let Some(age) = opts.max_age {
            let cutoff = now - age.as_nanos() as i64;
            for r in &live {
                if last_used(r) < cutoff && !protected.contains(&r.key) {
                    dropped_keys.insert(r.key.clone());
                }
            }
        }
        let docs: HashMap<String, super::doc::Doc> = {
            let ids: Vec<String> = live
                .iter()
                .map(|r| r.manifest.clone())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            ids.clone().into_iter().zip(self.docs(ids)?).collect()
        };
        let objects_of =
            |m: &str| -> Result<HashMap<ObjectId, u64>> { super::sync::objects_of(std::slice::from_ref(&docs[m])) };
        if let Some(max) = opts.max_size {
            // Least recently used first, until the distinct objects of what stays fit.
            let mut sizes: HashMap<ObjectId, u64> = HashMap::new();
            let mut users: HashMap<ObjectId, usize> = HashMap::new();
            for r in live.iter().filter(|r| !dropped_keys.contains(&r.key)) {
                for (o, n) in objects_of(&r.manifest)? {
                    sizes.insert(o, n);
                    *users.entry(o).or_default() += 1;
                }
            }
            let mut total: u64 = sizes.values().sum();
            for r in live.iter().rev() {
                if total <= max {
                    break;
                }
                if dropped_keys.contains(&r.key) || protected.contains(&r.key) {
                    continue;
                }
                dropped_keys.insert(r.key.clone());
                for (o, n) in objects_of(&r.manifest)? {
                    let u = users.get_mut(&o).expect("counted");
                    *u -= 1;
                    if *u == 0 {
                        total -= n;
                    }
                }
            }
        }
        for r in &live {
            if dropped_keys.contains(&r.key) {
                drop_refs.push(r.clone());
            }
        }
        let live: Vec<RefName> = live.into_iter().filter(|r| !dropped_keys.contains(&r.key)).collect();
        rep.kept_keys = live.len() as u64;
        rep.removed_keys = dropped_keys.into_iter().collect();
        rep.removed_keys.sort();
        rep.removed_refs = drop_refs.len() as u64;
        if opts.dry_run {
            return Ok(rep);
        }
        for r in &drop_refs {
            c.block_on(c.delete(&r.path))??;
        }
        // Use records only matter for ordering: the newest per remaining key stays, the rest
        // (older ones, and every one of a dropped key) go.
        let mut use_list = c.block_on(c.list("uses/"))??;
        // S3 lists in name order, a filesystem in any order.
        use_list.sort_by(|a, b| a.path.cmp(&b.path));
        let live_keys: HashSet<&str> = live.iter().map(|r| r.key.as_str()).collect();
        let mut newest_use: HashSet<String> = HashSet::new();
        for u in &use_list {
            // In name order a key's newest use comes first.
            if let Ok(n) = layout::parse_ref(&u.path) {
                if !live_keys.contains(n.key.as_str()) || !newest_use.insert(n.key.clone()) {
                    c.block_on(c.delete(&u.path))??;
                }
            }
        }

        // What the remaining snapshots reference. Refs written since the listing above are
        // newer saves: their data is protected by the grace period, not by this set.
        let referenced_manifests: HashSet<String> = self.refs("", false)?.into_iter().map(|r| r.manifest).collect();
        let mut referenced: HashSet<ObjectId> = HashSet::new();
        let ids: Vec<String> = referenced_manifests.iter().cloned().collect();
        for d in self.docs(ids)? {
            referenced.extend(super::sync::objects_of(std::slice::from_ref(&d))?.into_keys());
        }

        // 3. Sweep what earlier runs marked, once their grace period is over.
        let pack_list: HashMap<String, Listed> = c
            .block_on(c.list("packs/"))??
            .into_iter()
            .filter_map(|l| {
                let name = l.path.rsplit('/').next()?.to_string();
                layout::is_hex64(&name).then_some((name, l))
            })
            .collect();
        let mut guard = self.index(true)?;
        let cache = guard.as_mut().expect("loaded");
        let indexed_packs: HashSet<[u8; 32]> = cache.entries().map(|(_, l)| l.pack).collect();
        let grace = opts.grace.as_nanos() as i64;
        let mut still_pending: HashSet<String> = HashSet::new();
        for p in c.block_on(c.list("gc/pending-"))?? {
            let Some(bytes) = c.block_on(c.read_opt(&p.path))?? else {
                continue;
            };
            let pending: Pending = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Remote(format!("remote {}: corrupt gc record {}: {e}", self.url(), p.path)))?;
            if now - pending.marked_ns < grace {
                still_pending.extend(pending.packs.iter().cloned());
                continue;
            }
            let entries = if pending.index.is_empty() {
                Vec::new()
            } else {
                let raw = decode_hex(&pending.index)
                    .ok_or_else(|| Error::Remote(format!("remote {}: corrupt gc record {}", self.url(), p.path)))?;
                let name = blake3::hash(&raw).to_hex().to_string();
                pack::decode_index(&name, &raw)?
            };
            let mut by_pack: HashMap<[u8; 32], Vec<(ObjectId, Loc)>> = HashMap::new();
            for (id, l) in entries {
                by_pack.entry(l.pack).or_default().push((id, l));
            }
            let mut back: Vec<PackLocs> = Vec::new();
            for name in &pending.packs {
                let Some(hash) = decode_hex(name).and_then(|h| <[u8; 32]>::try_from(h).ok()) else {
                    continue;
                };
                let Some(listed) = pack_list.get(name) else { continue };
                let locs = by_pack.remove(&hash).unwrap_or_default();
                let modified = match listed.modified_ns {
                    Some(t) => Some(t),
                    None => c.block_on(c.modified(&listed.path))??,
                };
                if indexed_packs.contains(&hash) || modified.is_none_or(|t| t >= pending.marked_ns) {
                    continue; // written or indexed again since the mark
                }
                if locs.iter().any(|(id, _)| referenced.contains(id)) {
                    back.push((hash, locs));
                    continue;
                }
                c.block_on(c.delete(&listed.path))??;
                rep.deleted_packs += 1;
                rep.deleted_pack_bytes += listed.size;
            }
            if !back.is_empty() {
                rep.restored_packs += back.len() as u64;
                let (name, bytes) = pack::encode_index(&back)?;
                c.block_on(c.write(&layout::index_path(&name), bytes.clone()))??;
                cache.add(&name, &bytes, back.into_iter().flat_map(|(_, l)| l).collect())?;
            }
            for m in &pending.manifests {
                if referenced_manifests.contains(m) || !layout::is_hex64(m) {
                    continue;
                }
                let path = layout::manifest_path(m);
                match c.block_on(c.modified(&path))?? {
                    Some(t) if t < pending.marked_ns => {
                        c.block_on(c.delete(&path))??;
                        rep.deleted_manifests += 1;
                    }
                    _ => {}
                }
            }
            c.block_on(c.delete(&p.path))??;
        }

        // 2. Mark: unreferenced packs leave the index now and are deleted after the grace.
        let mut garbage: BTreeMap<[u8; 32], Vec<(ObjectId, Loc)>> = BTreeMap::new();
        let mut keep: Vec<(ObjectId, Loc)> = Vec::new();
        let mut by_pack: HashMap<[u8; 32], Vec<(ObjectId, Loc)>> = HashMap::new();
        for (id, l) in cache.entries() {
            by_pack.entry(l.pack).or_default().push((*id, *l));
        }
        // Only packs older than the grace period: a young unreferenced pack is a save in
        // flight (packs and index written, ref not yet), to be judged by a later run.
        let old_enough = |name: &str| -> Result<bool> {
            let Some(l) = pack_list.get(name) else { return Ok(false) };
            let t = match l.modified_ns {
                Some(t) => Some(t),
                None => c.block_on(c.modified(&l.path))??,
            };
            Ok(t.is_some_and(|t| now - t >= grace))
        };
        for (pack, locs) in by_pack {
            if locs.iter().any(|(id, _)| referenced.contains(id)) || !old_enough(&pack::hex(&pack))? {
                keep.extend(locs);
            } else {
                garbage.insert(pack, locs);
            }
        }
        let indexed: HashSet<String> = cache.entries().map(|(_, l)| pack::hex(&l.pack)).collect();
        let mut marked_packs: Vec<String> = garbage.keys().map(pack::hex).collect();
        // Packs no index names: a killed save's.
        for name in pack_list.keys() {
            if !indexed.contains(name) && !still_pending.contains(name) && old_enough(name)? {
                marked_packs.push(name.clone());
            }
        }
        let manifests: Vec<String> = c
            .block_on(c.list("manifests/"))??
            .into_iter()
            .filter_map(|l| l.path.strip_prefix("manifests/").map(str::to_string))
            .filter(|m| layout::is_hex64(m) && !referenced_manifests.contains(m))
            .collect();
        rep.marked_packs = marked_packs.len() as u64;
        rep.marked_manifests = manifests.len() as u64;
        let garbage: Vec<PackLocs> = garbage.into_iter().collect();
        if !marked_packs.is_empty() || !manifests.is_empty() {
            let index = if garbage.is_empty() {
                String::new()
            } else {
                let (_, bytes) = pack::encode_index(&garbage)?;
                bytes.iter().map(|b| format!("{b:02x}")).collect()
            };
            let rec = Pending {
                marked_ns: now,
                packs: marked_packs,
                manifests,
                index,
            };
            let json = serde_json::to_vec(&rec).map_err(|e| Error::Other(e.to_string()))?;
            c.block_on(c.write(&layout::gc_pending_path(now), json))??;
        }
        // One index file for what stays replaces the ones read, when garbage left the index or
        // saves have written many small ones (a fresh runner reads every index file). Files
        // other saves wrote meanwhile are not touched.
        let old: Vec<String> = cache.file_names().cloned().collect();
        if !garbage.is_empty() || old.len() > MAX_INDEX_FILES {
            let mut by_pack: BTreeMap<[u8; 32], Vec<(ObjectId, Loc)>> = BTreeMap::new();
            for (id, l) in keep {
                by_pack.entry(l.pack).or_default().push((id, l));
            }
            let packs: Vec<PackLocs> = by_pack.into_iter().collect();
            let mut new_name = None;
            if !packs.is_empty() {
                let (name, bytes) = pack::encode_index(&packs)?;
                c.block_on(c.write(&layout::index_path(&name), bytes.clone()))??;
                cache.add(&name, &bytes, packs.into_iter().flat_map(|(_, l)| l).collect())?;
                new_name = Some(name);
            }
            for o in old.into_iter().filter(|o| Some(o) != new_name.as_ref()) {
                c.block_on(c.delete(&layout::index_path(&o)))??;
                cache.forget(&o);
            }
            rep.index_files_replaced = true;
        }
        Ok(rep)
    }
}

impl Remote {
    /// The index entries of packs gc has marked but not deleted: a restore whose snapshot was
    /// saved by a save in flight during the mark finds its objects here until the sweep puts
    /// them back into the index.
    pub(crate) fn pending_entries(&self) -> Result<HashMap<ObjectId, Loc>> {
        let c = &self.client;
        let mut out = HashMap::new();
        for p in c.block_on(c.list("gc/pending-"))?? {
            let Some(bytes) = c.block_on(c.read_opt(&p.path))?? else {
                continue;
            };
            let Ok(pending) = serde_json::from_slice::<Pending>(&bytes) else {
                continue;
            };
            let Some(raw) = decode_hex(&pending.index) else {
                continue;
            };
            let name = blake3::hash(&raw).to_hex().to_string();
            if let Ok(entries) = pack::decode_index(&name, &raw) {
                out.extend(entries);
            }
        }
        Ok(out)
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
