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
//!    references an object of it that no indexed pack holds (a save that was in flight at
//!    the mark: the pack is put back into the index), an index file names it again, or it
//!    was written after the mark.
//!    Marked manifests are deleted unless referenced again or rewritten after the mark (a
//!    push always rewrites its manifest before its ref, which is what makes this safe).
//!
//! **Repack.** A pack still in use whose live bytes are below `--repack-threshold` (default
//! 50 %) of its size has its live objects copied (each frame read by range and checked
//! against its BLAKE3 first) into new packs, which a new index file names in place of it. The
//! old pack is then wholly garbage and goes through the same mark, grace and sweep as any
//! other: a restore that read the old index keeps reading the old pack until the sweep, and
//! one that still holds it after the sweep refreshes its index and finds the new pack.

use super::client::Listed;
use super::layout::{self, RefName};
use super::pack::{self, Loc, PackBuilder, PackLocs};
use super::Remote;
use crate::error::{Error, Result};
use crate::store::ObjectId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct RemoteGcOptions {
    pub max_age: Option<Duration>,
    pub max_size: Option<u64>,
    pub keep_last: usize,
    pub grace: Duration,
    pub dry_run: bool,
    /// Repack a pack whose live bytes are below this percentage of its size; 0: never.
    pub repack_threshold: u8,
}

/// restic's `--max-unused` default is 5 %: it repacks eagerly because its packs are small.
/// Ours are 16 MiB and a repack re-uploads what it keeps, so a pack is rewritten only once
/// most of it is garbage: the copy then costs less than the space it frees.
pub const DEFAULT_REPACK_THRESHOLD: u8 = 50;

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
    /// Packs in use whose live objects were copied into new packs because less than
    /// `--repack-threshold` percent of their bytes were live. They are marked with this run's
    /// garbage and deleted by a run after the grace period (then counted in `deleted_packs`).
    pub repacked_packs: u64,
    /// The size of those packs.
    pub repacked_bytes: u64,
    /// The live (compressed) bytes copied out of them, and the new packs holding them.
    pub repack_copied_bytes: u64,
    pub repack_new_packs: u64,
    /// Packs that could not be repacked (unreadable, or an object fails its BLAKE3 check),
    /// one line each naming the pack and why; they stay in the index as they are.
    pub repack_skipped: Vec<String>,
    /// The index files were replaced by one.
    pub index_files_replaced: bool,
    /// `file://` remotes: temp files of writers killed mid-object, older than the grace period
    /// (removed, or that would be in a dry run).
    pub stale_temp_files: u64,
}

/// A pack to repack: its size, its live entries (to copy) and all its index entries (what
/// the gc record keeps, to put back if a save in flight turns out to need a dead one).
struct Candidate {
    pack: [u8; 32],
    size: u64,
    live: Vec<(ObjectId, Loc)>,
    all: Vec<(ObjectId, Loc)>,
}

/// What the mark phase does to the index.
#[derive(Default)]
struct Plan {
    /// Entries that stay in the index as they are.
    keep: Vec<(ObjectId, Loc)>,
    /// Packs none of whose objects is referenced: they leave the index.
    garbage: BTreeMap<[u8; 32], Vec<(ObjectId, Loc)>>,
    repack: Vec<Candidate>,
    /// Packs with no entry in the index: a killed save's, or every object of theirs has an
    /// earlier location (two saves uploaded the same objects).
    unindexed: Vec<String>,
    /// Some of `unindexed` is still named by an index file, which must be rewritten before
    /// the pack may be deleted.
    shadowed: bool,
}

/// Index entries: objects and where they are.
type Entries = Vec<(ObjectId, Loc)>;

/// Live bytes copied in one go before new packs are written (bounded memory).
const REPACK_BATCH: u64 = 64 << 20;

/// A file:// remote's temp file younger than this may be a live writer's (see
/// `sweep_temp_files`), whatever `--grace` says.
const TEMP_FILE_MIN_AGE: Duration = Duration::from_secs(3600);

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
    /// A `file://` remote stages each write in `.envsnap-tmp/` and renames it into place
    /// (`client.rs`): a writer killed mid-object leaves its temp file behind. Those untouched
    /// for the grace period belong to no live writer.
    fn sweep_temp_files(&self, grace: Duration, dry_run: bool) -> Result<u64> {
        // However short `--grace` is, a large pack being written is not cut off mid-write.
        let grace = grace.max(TEMP_FILE_MIN_AGE);
        let super::url::Scheme::File { path } = &self.client.url.scheme else {
            return Ok(0);
        };
        let dir = path.join(layout::TMP_DIR);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(0);
        };
        let mut n = 0;
        for e in entries.flatten() {
            let stale = e
                .metadata()
                .ok()
                .filter(|m| m.is_file())
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= grace);
            if stale {
                if !dry_run {
                    match std::fs::remove_file(e.path()) {
                        Ok(()) => {}
                        Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(err) => return Err(Error::io("remove", e.path(), err)),
                    }
                }
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn gc(&self, opts: &RemoteGcOptions) -> Result<RemoteGcReport> {
        let mut rep = RemoteGcReport::default();
        let now = crate::repo::now_ns();
        let c = &self.client;

        rep.stale_temp_files = self.sweep_temp_files(opts.grace, opts.dry_run)?;

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
            // What would stay referenced: the kept keys' newest snapshots. Nothing is swept,
            // so every pack a gc record names counts as still pending.
            let referenced_manifests: HashSet<String> = live.iter().map(|r| r.manifest.clone()).collect();
            let mut referenced: HashSet<ObjectId> = HashSet::new();
            for m in &referenced_manifests {
                referenced.extend(objects_of(m)?.into_keys());
            }
            let pack_list = self.pack_list()?;
            let still_pending: HashSet<String> =
                self.pending_records()?.into_iter().flat_map(|(_, p)| p.packs).collect();
            let mut guard = self.index(true)?;
            let cache = guard.as_mut().expect("loaded");
            let plan = self.plan(cache, &pack_list, &referenced, &still_pending, now, opts)?;
            rep.marked_packs = (plan.garbage.len() + plan.unindexed.len()) as u64;
            rep.marked_manifests = self.unreferenced_manifests(&referenced_manifests)?.len() as u64;
            rep.repacked_packs = plan.repack.len() as u64;
            rep.repacked_bytes = plan.repack.iter().map(|c| c.size).sum();
            rep.repack_copied_bytes = plan
                .repack
                .iter()
                .flat_map(|c| &c.live)
                .map(|(_, l)| l.clen as u64)
                .sum();
            // As the copy would fill them.
            let mut fill = 0usize;
            for (_, l) in plan.repack.iter().flat_map(|c| &c.live) {
                if fill == 0 {
                    rep.repack_new_packs += 1;
                    fill = pack::PACK_MAGIC.len();
                }
                fill += l.clen as usize;
                if fill >= pack::pack_target() {
                    fill = 0;
                }
            }
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
        let mut pack_list = self.pack_list()?;
        let mut swept: HashSet<String> = HashSet::new();
        let mut guard = self.index(true)?;
        let cache = guard.as_mut().expect("loaded");
        // Every pack an index file names, even one whose objects all have earlier locations:
        // a pack is never deleted while a runner's index may still point at it.
        let indexed_packs: HashSet<[u8; 32]> = cache.named_packs();
        let grace = opts.grace.as_nanos() as i64;
        let mut still_pending: HashSet<String> = HashSet::new();
        for (path, pending) in self.pending_records()? {
            if now - pending.marked_ns < grace {
                still_pending.extend(pending.packs.iter().cloned());
                continue;
            }
            let entries = if pending.index.is_empty() {
                Vec::new()
            } else {
                let raw = decode_hex(&pending.index)
                    .ok_or_else(|| Error::Remote(format!("remote {}: corrupt gc record {path}", self.url())))?;
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
                // A snapshot needs an object only this pack has (a save that was in flight at
                // the mark counted on it): the pack goes back into the index. Objects another
                // indexed pack holds (a repacked pack's live ones) do not keep it.
                if locs
                    .iter()
                    .any(|(id, _)| referenced.contains(id) && !cache.contains(id))
                {
                    back.push((hash, locs));
                    continue;
                }
                c.block_on(c.delete(&listed.path))??;
                rep.deleted_packs += 1;
                rep.deleted_pack_bytes += listed.size;
                swept.insert(name.clone());
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
            c.block_on(c.delete(&path))??;
        }

        // Gone now: not to be marked again as unindexed below.
        pack_list.retain(|name, _| !swept.contains(name));

        // 2. Mark: unreferenced packs leave the index now and are deleted after the grace;
        // mostly-garbage packs are repacked first and then leave it the same way.
        let mut plan = self.plan(cache, &pack_list, &referenced, &still_pending, now, opts)?;
        // New packs first: a run killed after this leaves only unindexed packs, which a later
        // run marks like a killed save's.
        let (new_packs, repacked) = self.repack(std::mem::take(&mut plan.repack), &mut plan.keep, &mut rep)?;
        let mut marked_packs: Vec<String> = plan.garbage.keys().map(pack::hex).collect();
        marked_packs.extend(plan.unindexed.iter().cloned());
        rep.marked_packs = marked_packs.len() as u64;
        marked_packs.extend(repacked.iter().map(|c| pack::hex(&c.pack)));
        let manifests = self.unreferenced_manifests(&referenced_manifests)?;
        rep.marked_manifests = manifests.len() as u64;
        // The gc record keeps the marked packs' index entries, the repacked ones' dead and live.
        let mut marked_entries: Vec<PackLocs> = std::mem::take(&mut plan.garbage).into_iter().collect();
        marked_entries.extend(repacked.iter().map(|c| (c.pack, c.all.clone())));
        if !marked_packs.is_empty() || !manifests.is_empty() {
            let index = if marked_entries.is_empty() {
                String::new()
            } else {
                let (_, bytes) = pack::encode_index(&marked_entries)?;
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
        // One index file for what stays (and the repacked objects' new places) replaces the
        // ones read, when packs left the index or saves have written many small ones (a fresh
        // runner reads every index file). It is written before the old files go, so every
        // live object is always named by some index file. Files other saves wrote meanwhile
        // are not touched.
        let old: Vec<String> = cache.file_names().cloned().collect();
        if !marked_entries.is_empty() || plan.shadowed || old.len() > MAX_INDEX_FILES {
            let mut by_pack: BTreeMap<[u8; 32], Vec<(ObjectId, Loc)>> = BTreeMap::new();
            for (id, l) in plan.keep.into_iter().chain(new_packs.into_iter().flat_map(|(_, l)| l)) {
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

    /// Every pack on the remote by name.
    fn pack_list(&self) -> Result<HashMap<String, Listed>> {
        let c = &self.client;
        Ok(c.block_on(c.list("packs/"))??
            .into_iter()
            .filter_map(|l| {
                let name = l.path.rsplit('/').next()?.to_string();
                layout::is_hex64(&name).then_some((name, l))
            })
            .collect())
    }

    /// Every gc record (path, record); a record deleted while listed is skipped.
    fn pending_records(&self) -> Result<Vec<(String, Pending)>> {
        let c = &self.client;
        let mut out = Vec::new();
        for p in c.block_on(c.list("gc/pending-"))?? {
            let Some(bytes) = c.block_on(c.read_opt(&p.path))?? else {
                continue;
            };
            let pending: Pending = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Remote(format!("remote {}: corrupt gc record {}: {e}", self.url(), p.path)))?;
            out.push((p.path, pending));
        }
        Ok(out)
    }

    fn unreferenced_manifests(&self, referenced: &HashSet<String>) -> Result<Vec<String>> {
        let c = &self.client;
        Ok(c.block_on(c.list("manifests/"))??
            .into_iter()
            .filter_map(|l| l.path.strip_prefix("manifests/").map(str::to_string))
            .filter(|m| layout::is_hex64(m) && !referenced.contains(m))
            .collect())
    }

    /// Sort the indexed packs into kept, garbage and to repack, and find the unindexed ones.
    /// Only packs older than the grace period are judged: a young pack with unreferenced
    /// objects is a save in flight (packs and index written, ref not yet).
    fn plan(
        &self,
        cache: &super::index_cache::IndexCache,
        pack_list: &HashMap<String, Listed>,
        referenced: &HashSet<ObjectId>,
        still_pending: &HashSet<String>,
        now: i64,
        opts: &RemoteGcOptions,
    ) -> Result<Plan> {
        let c = &self.client;
        let grace = opts.grace.as_nanos() as i64;
        let old_enough = |name: &str| -> Result<bool> {
            let Some(l) = pack_list.get(name) else { return Ok(false) };
            let t = match l.modified_ns {
                Some(t) => Some(t),
                None => c.block_on(c.modified(&l.path))??,
            };
            Ok(t.is_some_and(|t| now - t >= grace))
        };
        let mut plan = Plan::default();
        // `entries` gives each object once, at its first location: a pack's objects that
        // another pack also holds count there only, so duplicates are collected too.
        let mut by_pack: BTreeMap<[u8; 32], Vec<(ObjectId, Loc)>> = BTreeMap::new();
        for (id, l) in cache.entries() {
            by_pack.entry(l.pack).or_default().push((*id, *l));
        }
        let threshold = u64::from(opts.repack_threshold.min(100));
        for (pack, mut locs) in by_pack {
            let name = pack::hex(&pack);
            let live: Vec<(ObjectId, Loc)> = locs.iter().filter(|(id, _)| referenced.contains(id)).copied().collect();
            let live_bytes: u64 = live.iter().map(|(_, l)| l.clen as u64).sum();
            // The frames, without the magic: what the live bytes are a share of.
            let payload = pack_list
                .get(&name)
                .map_or(0, |l| l.size.saturating_sub(pack::PACK_MAGIC.len() as u64));
            let sparse = !live.is_empty() && live_bytes * 100 < threshold * payload;
            if (!live.is_empty() && !sparse) || !old_enough(&name)? {
                plan.keep.extend(locs);
            } else if live.is_empty() {
                plan.garbage.insert(pack, locs);
            } else {
                // Copied in pack order: reads are sequential and the result deterministic.
                let mut live = live;
                live.sort_by_key(|(_, l)| l.offset);
                locs.sort_by_key(|(_, l)| l.offset);
                plan.repack.push(Candidate {
                    pack,
                    size: payload + pack::PACK_MAGIC.len() as u64,
                    live,
                    all: locs,
                });
            }
        }
        let first: HashSet<String> = cache.entries().map(|(_, l)| pack::hex(&l.pack)).collect();
        let named: HashSet<String> = cache.named_packs().iter().map(pack::hex).collect();
        let mut names: Vec<&String> = pack_list.keys().collect();
        names.sort();
        for name in names {
            if !first.contains(name) && !still_pending.contains(name) && old_enough(name)? {
                plan.shadowed |= named.contains(name);
                plan.unindexed.push(name.clone());
            }
        }
        Ok(plan)
    }

    /// Copy the candidates' live objects into new packs, in batches: each frame is read by
    /// range and decompressed and checked against its BLAKE3 before it is copied (as a
    /// restore checks it), so a repack never carries corruption into a pack that looks new.
    /// A candidate that cannot be read or fails a check is skipped (its entries stay in
    /// `keep`, a line in `repack_skipped`). Returns the new packs (uploaded) and the
    /// candidates repacked.
    fn repack(
        &self,
        mut cands: Vec<Candidate>,
        keep: &mut Vec<(ObjectId, Loc)>,
        rep: &mut RemoteGcReport,
    ) -> Result<(Vec<PackLocs>, Vec<Candidate>)> {
        type Frames = Vec<(ObjectId, u64, Vec<u8>)>;
        cands.sort_by_key(|c| c.pack);
        let mut new_packs: Vec<PackLocs> = Vec::new();
        let mut done: Vec<Candidate> = Vec::new();
        let mut builder = PackBuilder::default();
        let c = &self.client;
        let upload = |b: PackBuilder, new_packs: &mut Vec<PackLocs>, rep: &mut RemoteGcReport| -> Result<()> {
            let (hash, data, locs) = b.finish();
            c.block_on(c.write(&layout::pack_path(&pack::hex(&hash)), data))??;
            rep.repack_new_packs += 1;
            new_packs.push((hash, locs));
            Ok(())
        };
        let mut rest = cands.into_iter().peekable();
        while rest.peek().is_some() {
            let mut batch: Vec<Candidate> = Vec::new();
            let mut bytes = 0;
            while let Some(cand) = rest.next_if(|_| batch.is_empty() || bytes < REPACK_BATCH) {
                bytes += cand.live.iter().map(|(_, l)| l.clen as u64).sum::<u64>();
                batch.push(cand);
            }
            // Coalesced ranges of the batch's live frames: (candidate, start, end, objects).
            let spans: Vec<(usize, u64, u64, Entries)> = batch
                .iter()
                .enumerate()
                .flat_map(|(i, cand)| {
                    super::sync::coalesce(cand.live.clone(), |o| o.1)
                        .into_iter()
                        .map(move |(start, end, v)| (i, start, end, v))
                })
                .collect();
            let got: Mutex<Vec<Result<Frames>>> = Mutex::new(batch.iter().map(|_| Ok(Vec::new())).collect());
            super::concurrently(spans, |(i, start, end, objs)| {
                if got.lock().unwrap_or_else(|p| p.into_inner())[i].is_err() {
                    return;
                }
                let path = layout::pack_path(&pack::hex(&batch[i].pack));
                let r = (|| -> Result<Frames> {
                    let data = c.block_on(c.read_range(&path, start, end))??;
                    let mut out = Vec::new();
                    for (id, l) in objs {
                        let a = (l.offset - start) as usize;
                        let frame = &data[a..a + l.clen as usize];
                        pack::decompress_verified(frame, &id, l.size, &path)?;
                        out.push((id, l.size, frame.to_vec()));
                    }
                    Ok(out)
                })();
                let mut g = got.lock().unwrap_or_else(|p| p.into_inner());
                match (r, &mut g[i]) {
                    (Ok(f), Ok(v)) => v.extend(f),
                    (Err(e), slot) => *slot = Err(e),
                    (Ok(_), Err(_)) => {}
                }
            });
            let got = got.into_inner().unwrap_or_else(|p| p.into_inner());
            for (cand, frames) in batch.into_iter().zip(got) {
                let mut frames = match frames {
                    Ok(f) => f,
                    Err(e) => {
                        rep.repack_skipped.push(format!(
                            "pack {} not repacked: {e}",
                            layout::pack_path(&pack::hex(&cand.pack))
                        ));
                        keep.extend(cand.all);
                        continue;
                    }
                };
                // Spans finish in any order; the copy keeps the old pack's order.
                let order: HashMap<ObjectId, u64> = cand.live.iter().map(|(id, l)| (*id, l.offset)).collect();
                frames.sort_by_key(|(id, _, _)| order[id]);
                for (id, size, frame) in frames {
                    rep.repack_copied_bytes += frame.len() as u64;
                    builder.push(id, size, &frame);
                    if builder.full() {
                        upload(std::mem::take(&mut builder), &mut new_packs, rep)?;
                    }
                }
                rep.repacked_packs += 1;
                rep.repacked_bytes += cand.size;
                done.push(cand);
            }
        }
        if !builder.is_empty() {
            upload(builder, &mut new_packs, rep)?;
        }
        Ok((new_packs, done))
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
