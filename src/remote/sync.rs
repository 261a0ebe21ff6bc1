//! Moving snapshots between the local store and the remote.
//!
//! **Push** (after every save with a remote, and `envsnap push`): refresh the cached index (one
//! listing), pack the objects the remote lacks, upload the packs in parallel, then one index
//! file naming them, then the manifest, then the ref. A push killed
//! anywhere leaves at worst unreferenced packs or an unreferenced manifest, which the next push
//! ignores (or reuses) and gc removes; no key ever names missing data.
//!
//! **Pull** (a restore with a remote, and `envsnap pull`): read the manifest, check it like a
//! local one, find the objects the local store lacks in the cached index, read just their byte
//! ranges (nearby ranges coalesced, in parallel), verify each object's BLAKE3 before it enters
//! the local store, then commit the snapshot to the local index under its key.

use super::layout::{self, RefName};
use super::pack::{self, Loc, PackBuilder, PackLocs};

/// An object a pull needs: where it is, and the mtime its local copy gets.
type Wanted = (ObjectId, Loc, i64);
/// One ranged read: pack, start, end, and the objects in it.
type Span = ([u8; 32], u64, u64, Vec<Wanted>);
use super::{doc::Doc, Remote};
use crate::error::{Error, Result};
use crate::index::{NewSnapshot, SnapshotRow};
use crate::statcache::StatCache;
use crate::store::{ObjectId, ObjectStat};
use crate::Store;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::sync::Mutex;

/// Ranges of one pack closer than this are read as one request (reading a gap is cheaper than
/// another round trip).
const COALESCE_GAP: u64 = 1 << 20;
/// One ranged read never spans more than this: bounded memory per request.
pub(crate) const MAX_SPAN: u64 = 48 << 20;

/// One pack's wanted objects as coalesced ranges `(start, end, objects)`, in offset order:
/// neighbours closer than [`COALESCE_GAP`] share one read of at most [`MAX_SPAN`] bytes (or
/// one object's frame, if longer).
pub(crate) fn coalesce<T>(mut objs: Vec<T>, loc: impl Fn(&T) -> Loc) -> Vec<(u64, u64, Vec<T>)> {
    objs.sort_by_key(|o| loc(o).offset);
    let mut out: Vec<(u64, u64, Vec<T>)> = Vec::new();
    for o in objs {
        let l = loc(&o);
        let (s, e) = (l.offset, l.offset + l.clen as u64);
        match out.last_mut() {
            Some((cs, ce, v)) if s <= *ce + COALESCE_GAP && e - *cs <= MAX_SPAN => {
                *ce = (*ce).max(e);
                v.push(o);
            }
            _ => out.push((s, e, vec![o])),
        }
    }
    out
}
/// Objects compressed together before being appended to packs (bounded memory).
const BATCH_BYTES: u64 = 64 << 20;
/// Pack uploads in flight at once.
const UPLOADS: usize = 4;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PushReport {
    pub key: String,
    pub manifest: String,
    /// Objects the remote lacked, and their uncompressed bytes.
    pub objects: u64,
    pub object_bytes: u64,
    pub packs: u64,
    pub pack_bytes: u64,
    /// The manifest document's compressed size (written on every push).
    pub manifest_bytes: u64,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PullReport {
    pub key: String,
    pub manifest: String,
    /// Objects fetched (the local store lacked them) and their uncompressed bytes.
    pub objects: u64,
    pub object_bytes: u64,
    pub packs: u64,
    pub ranges: u64,
}

impl Remote {
    /// Upload the local snapshot under `key` (see the module docs for the order).
    pub fn push(&self, store: &Store, key: &str) -> Result<PushReport> {
        crate::key::validate(key)?;
        let (row, manifest, scanner) = {
            let idx = store.index();
            let row = idx.get(key)?.ok_or_else(|| {
                Error::Usage(format!(
                    "no local snapshot with key {key:?} to push (see `envsnap list --no-remote`)"
                ))
            })?;
            let manifest = idx.manifest(row.id)?;
            let scanner = idx.snapshot_scanner(row.id)?;
            (row, manifest, scanner)
        };
        let (mid, mbytes) = Doc::new(&row, &manifest, scanner).encode()?;
        let mut report = PushReport {
            key: key.to_string(),
            manifest: mid.clone(),
            ..Default::default()
        };
        // What the remote lacks, from the cached index: no per-object request.
        let mut guard = self.index(true)?;
        let cache = guard.as_mut().expect("index loaded");
        let mut seen = HashSet::new();
        let mut needed: Vec<(ObjectId, u64)> = Vec::new();
        for e in manifest.files() {
            let id = e.object.expect("validated: files have objects");
            if !cache.contains(&id) && seen.insert(id) {
                needed.push((id, e.size));
            }
        }
        let lost: HashSet<ObjectId> = needed
            .iter()
            .filter(|(id, _)| !store.objects.exists(id))
            .map(|(id, _)| *id)
            .collect();
        if !lost.is_empty() {
            return Err(self.lost(store, &lost));
        }
        if !needed.is_empty() {
            let packs = self.upload_packs(store, &needed, &mut report)?;
            let (name, bytes) = pack::encode_index(&packs)?;
            self.client
                .block_on(self.client.write(&layout::index_path(&name), bytes.clone()))??;
            cache.add(&name, &bytes, packs.into_iter().flat_map(|(_, l)| l).collect())?;
        }
        drop(guard);
        // Always written, even when the remote has it: the fresh write is what tells a
        // concurrent gc's sweep (which spares anything written after its mark) that the
        // manifest is in use again, so a gc can never delete it between this write and the ref.
        let mpath = layout::manifest_path(&mid);
        self.client.block_on(self.client.write(&mpath, mbytes.clone()))??;
        report.manifest_bytes = mbytes.len() as u64;
        let _ = super::keep_file(&self.cache.join("manifests"), &mid, &mbytes);
        let rpath = layout::ref_path(key, row.created_ns, &mid);
        self.client.block_on(self.client.write(&rpath, Vec::new()))??;
        Ok(report)
    }

    /// Compress the objects into packs (in parallel, in batches) while earlier packs upload.
    fn upload_packs(
        &self,
        store: &Store,
        needed: &[(ObjectId, u64)],
        report: &mut PushReport,
    ) -> Result<Vec<PackLocs>> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<([u8; 32], Vec<u8>)>(UPLOADS);
        let rx = Mutex::new(rx);
        let failed: Mutex<Option<Error>> = Mutex::new(None);
        let mut packs = Vec::new();
        std::thread::scope(|s| -> Result<()> {
            for _ in 0..UPLOADS {
                s.spawn(|| loop {
                    let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((hash, data)) = next else { break };
                    let path = layout::pack_path(&pack::hex(&hash));
                    let r = self.client.block_on(self.client.write(&path, data)).and_then(|r| r);
                    if let Err(e) = r {
                        failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                    }
                });
            }
            let result = (|| -> Result<()> {
                let mut builder = PackBuilder::default();
                let mut start = 0;
                while start < needed.len() {
                    let mut end = start;
                    let mut raw = 0;
                    while end < needed.len() && (end == start || raw < BATCH_BYTES) {
                        raw += needed[end].1;
                        end += 1;
                    }
                    let frames: Vec<Result<(ObjectId, u64, Vec<u8>)>> = needed[start..end]
                        .par_iter()
                        .map(|(id, size)| {
                            let mut f = store.objects.open(id)?;
                            // Sized up front: growing by doubling copies a large object
                            // several times and faults in fresh pages at each step.
                            let mut data = Vec::with_capacity(*size as usize + 1);
                            f.read_to_end(&mut data)
                                .map_err(|e| Error::io("read", store.objects.path(id), e))?;
                            if blake3::hash(&data).as_bytes() != &id.hash {
                                return Err(Error::Corrupt {
                                    id: id.to_string(),
                                    path: store.objects.path(id),
                                });
                            }
                            Ok((*id, data.len() as u64, pack::compress(&data)?))
                        })
                        .collect();
                    for f in frames {
                        let (id, size, frame) = f?;
                        report.objects += 1;
                        report.object_bytes += size;
                        builder.push(id, size, &frame);
                        if builder.full() {
                            self.send_pack(std::mem::take(&mut builder), &tx, &mut packs, report, &failed)?;
                        }
                    }
                    start = end;
                }
                if !builder.is_empty() {
                    self.send_pack(builder, &tx, &mut packs, report, &failed)?;
                }
                Ok(())
            })();
            drop(tx);
            result
        })?;
        if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        Ok(packs)
    }

    /// Objects the snapshot names that neither the local store nor the remote holds: a restore
    /// wrote them straight into a tree and the remote has dropped them since (gc). The stat
    /// cache must not vouch for them again: the next save reads those files and uploads them.
    fn lost(&self, store: &Store, lost: &HashSet<ObjectId>) -> Error {
        let _ = store.index().retain_statcache(|o| !lost.contains(o));
        let first = lost.iter().next().expect("some are lost");
        Error::Remote(format!(
            "remote {}: {} objects (e.g. {first}) are neither in the local store nor on the remote any more: save again (the files holding them are read anew)",
            self.url(),
            lost.len()
        ))
    }

    fn send_pack(
        &self,
        builder: PackBuilder,
        tx: &std::sync::mpsc::SyncSender<([u8; 32], Vec<u8>)>,
        packs: &mut Vec<PackLocs>,
        report: &mut PushReport,
        failed: &Mutex<Option<Error>>,
    ) -> Result<()> {
        if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(e);
        }
        let (hash, data, locs) = builder.finish();
        report.packs += 1;
        report.pack_bytes += data.len() as u64;
        packs.push((hash, locs));
        tx.send((hash, data))
            .map_err(|_| Error::Remote(format!("remote {}: pack upload stopped", self.url())))
    }

    /// Fetch the snapshot `r` names into the local store and index; returns its local row.
    pub fn pull(&self, store: &Store, r: &RefName) -> Result<(SnapshotRow, PullReport)> {
        self.pull_with(store, r, true).map(|(row, rep, _)| (row, rep))
    }

    /// The snapshot `r` names committed to the local index, its objects not fetched: a restore
    /// then fetches the ones the local store lacks straight into the tree it builds
    /// ([`DirectSource`]), writing each file once. Also returns whether this call added the
    /// row (a restore that fails then takes it out again: see [`Remote::unpull`]).
    pub fn pull_manifest(&self, store: &Store, r: &RefName) -> Result<(SnapshotRow, bool)> {
        self.pull_with(store, r, false).map(|(row, _, added)| (row, added))
    }

    /// Take out a row [`Remote::pull_manifest`] added, after the restore it was for failed:
    /// the local index then holds no snapshot whose objects were never fetched.
    pub fn unpull(&self, store: &Store, row: &SnapshotRow) -> Result<()> {
        store.index().delete_snapshots(&[row.id])
    }

    fn pull_with(&self, store: &Store, r: &RefName, fetch: bool) -> Result<(SnapshotRow, PullReport, bool)> {
        let doc = self.docs(vec![r.manifest.clone()])?.pop().expect("one doc");
        let (row, manifest) = doc.to_snapshot(&r.key, r.created_ns)?;
        let mut report = PullReport {
            key: r.key.clone(),
            manifest: r.manifest.clone(),
            ..Default::default()
        };
        // Objects the local store lacks, each with the mtime of its first entry.
        let mut seen = HashSet::new();
        let mut needed: Vec<(ObjectId, i64)> = Vec::new();
        for e in manifest.files() {
            let id = e.object.expect("validated: files have objects");
            if seen.insert(id) && !store.objects.exists(&id) {
                needed.push((id, e.mtime_ns));
            }
        }
        let written = if needed.is_empty() || !fetch {
            Vec::new()
        } else {
            let written: Mutex<Vec<(ObjectId, ObjectStat)>> = Mutex::new(Vec::new());
            let into_store = |id: &ObjectId, content: &[u8], mtime: i64| -> Result<()> {
                let t = filetime::FileTime::from_unix_time(
                    mtime.div_euclid(1_000_000_000),
                    mtime.rem_euclid(1_000_000_000) as u32,
                );
                if let Some(st) = store.objects.put_verified(id, content, t)? {
                    written.lock().unwrap_or_else(|p| p.into_inner()).push((*id, st));
                }
                Ok(())
            };
            self.fetch(&r.key, &needed, &mut report, &into_store)?;
            written.into_inner().unwrap_or_else(|p| p.into_inner())
        };
        let existing = store.index().same_snapshot(&row, &manifest)?;
        if existing.is_none() {
            let statcache = StatCache::new(doc.scanner.clone().unwrap_or_default(), Vec::new());
            store.index().commit_snapshot(NewSnapshot {
                row: &row,
                manifest: &manifest,
                statcache: &statcache,
                keep_statcache: true,
                objects: &written,
            })?;
        } else if !written.is_empty() {
            store.index().record_objects(&written)?;
        }
        let local = store.index().get(&r.key)?.ok_or_else(|| {
            Error::Other(format!(
                "snapshot {} vanished from the local index while it was pulled",
                r.key
            ))
        })?;
        Ok((local, report, existing.is_none()))
    }

    /// Returns the objects written, as written (for the index's object stats).
    ///
    /// A pack the index named may be gone by the time it is read: gc repacked it (its live
    /// objects now sit in a new pack a newer index file names) and a later gc swept it after
    /// the grace period, while this process held the old index. Such objects are located again
    /// after one forced refresh of the index; only a pack that is still named afterwards and
    /// still missing is an error.
    fn fetch(&self, key: &str, needed: &[(ObjectId, i64)], report: &mut PullReport, sink: Sink) -> Result<()> {
        let mut todo: Vec<(ObjectId, i64)> = needed.to_vec();
        let mut gone: HashSet<[u8; 32]> = HashSet::new();
        for attempt in 0..2 {
            // The manifest was written after the index naming its objects: a refresh finds them
            // all. A retry always refreshes.
            let mut guard = self.index(attempt > 0)?;
            if todo.iter().any(|(id, _)| !guard.as_ref().expect("loaded").contains(id)) && attempt == 0 {
                drop(guard);
                guard = self.index(true)?;
            }
            let cache = guard.as_ref().expect("loaded");
            let pending = if todo.iter().any(|(id, _)| !cache.contains(id)) {
                self.pending_entries()?
            } else {
                HashMap::new()
            };
            let mut by_pack: BTreeMap<[u8; 32], Vec<Wanted>> = BTreeMap::new();
            for (id, mtime) in &todo {
                let loc = cache.get(id).or_else(|| pending.get(id)).ok_or_else(|| {
                    Error::Remote(format!(
                        "remote {}: snapshot {key} references object {id} that no pack index lists: the remote is incomplete or damaged",
                        self.url()
                    ))
                })?;
                if gone.contains(&loc.pack) {
                    return Err(missing_pack(&self.url(), &loc.pack, key, id));
                }
                by_pack.entry(loc.pack).or_default().push((*id, *loc, *mtime));
            }
            drop(guard);
            report.packs += by_pack.len() as u64;
            let missing = self.fetch_packs(by_pack, report, sink)?;
            if missing.is_empty() {
                break;
            }
            if attempt > 0 {
                let (pack, objs) = &missing[0];
                return Err(missing_pack(&self.url(), pack, key, &objs[0].0));
            }
            // Those packs were not read after all: the retry counts where the objects are now.
            report.packs -= missing.len() as u64;
            todo.clear();
            for (pack, objs) in missing {
                gone.insert(pack);
                todo.extend(objs.into_iter().map(|(id, _, mtime)| (id, mtime)));
            }
        }
        Ok(())
    }

    /// Fetch objects (each verified) into `sink` instead of the local store; `key` names the
    /// snapshot in errors.
    pub fn fetch_objects(&self, key: &str, needed: &[(ObjectId, i64)], sink: Sink) -> Result<PullReport> {
        let mut report = PullReport {
            key: key.to_string(),
            ..Default::default()
        };
        if !needed.is_empty() {
            self.fetch(key, needed, &mut report, sink)?;
        }
        Ok(report)
    }

    /// Read the objects' coalesced ranges in parallel into the local store. Returns the packs
    /// that do not exist on the remote, with the objects that were wanted from them.
    fn fetch_packs(
        &self,
        by_pack: BTreeMap<[u8; 32], Vec<Wanted>>,
        report: &mut PullReport,
        sink: Sink,
    ) -> Result<Vec<([u8; 32], Vec<Wanted>)>> {
        // Coalesce each pack's ranges.
        let mut ranges: Vec<Span> = by_pack
            .into_iter()
            .flat_map(|(pack, objs)| {
                coalesce(objs, |o| o.1)
                    .into_iter()
                    .map(move |(start, end, v)| (pack, start, end, v))
            })
            .collect();
        report.ranges += ranges.len() as u64;
        // Largest first, so the long reads start early.
        ranges.sort_by_key(|r| std::cmp::Reverse(r.2 - r.1));
        let failed: Mutex<Option<Error>> = Mutex::new(None);
        let missing: Mutex<BTreeMap<[u8; 32], Vec<Wanted>>> = Mutex::new(BTreeMap::new());
        let fetched = std::sync::atomic::AtomicU64::new(0);
        let fetched_bytes = std::sync::atomic::AtomicU64::new(0);
        super::concurrently(ranges, |(pack, start, end, objs)| {
            if failed.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                return;
            }
            match self.fetch_range(&pack, start, end, &objs, sink) {
                Ok(Some(bytes)) => {
                    fetched.fetch_add(objs.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    fetched_bytes.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(None) => missing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(pack)
                    .or_default()
                    .extend(objs),
                Err(e) => {
                    failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                }
            }
        });
        if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        report.objects += fetched.into_inner();
        report.object_bytes += fetched_bytes.into_inner();
        Ok(missing
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .into_iter()
            .collect())
    }

    /// Read one coalesced range, decompress and verify each object, add it to the local store.
    fn fetch_range(&self, pack: &[u8; 32], start: u64, end: u64, objs: &[Wanted], sink: Sink) -> Result<Option<u64>> {
        let name = pack::hex(pack);
        let path = layout::pack_path(&name);
        let Some(data) = self.client.block_on(self.client.read_range_opt(&path, start, end))?? else {
            return Ok(None);
        };
        let mut bytes = 0;
        for (id, loc, mtime) in objs {
            let a = (loc.offset - start) as usize;
            let frame = &data[a..a + loc.clen as usize];
            let content = pack::decompress_verified(frame, id, loc.size, &name)?;
            sink(id, &content, *mtime)?;
            bytes += loc.size;
        }
        Ok(Some(bytes))
    }
}

/// Where fetched objects go, each verified against its BLAKE3 and size first: (object,
/// content, the mtime of its first entry). Called from several threads at once.
pub type Sink<'a> = &'a (dyn Fn(&ObjectId, &[u8], i64) -> Result<()> + Sync);

/// A remote as a restore's [`ObjectSource`](crate::restore::ObjectSource): the objects the
/// local store lacks go straight into the restored tree, not into the local store first, so
/// each file is written once.
pub struct DirectSource {
    remote: std::sync::Arc<Remote>,
    key: String,
    /// What the fetch moved, for the restore's summary.
    pub report: Mutex<PullReport>,
}

impl DirectSource {
    pub fn new(remote: std::sync::Arc<Remote>, key: &str) -> DirectSource {
        DirectSource {
            remote,
            key: key.to_string(),
            report: Mutex::new(PullReport::default()),
        }
    }
}

impl crate::restore::ObjectSource for DirectSource {
    fn fetch(&self, wanted: &[(ObjectId, i64)], put: &(dyn Fn(&ObjectId, &[u8]) -> Result<()> + Sync)) -> Result<()> {
        let rep = self
            .remote
            .fetch_objects(&self.key, wanted, &|id, content, _| put(id, content))?;
        *self.report.lock().unwrap_or_else(|p| p.into_inner()) = rep;
        Ok(())
    }
}

/// A pack that is gone even after the index was refreshed: one line naming it.
fn missing_pack(url: &str, pack: &[u8; 32], key: &str, id: &ObjectId) -> Error {
    Error::Remote(format!(
        "remote {url}: pack {} is missing (snapshot {key} needs object {id} from it): the remote is damaged; run `envsnap verify`",
        layout::pack_path(&pack::hex(pack))
    ))
}

/// Distinct objects of manifests, for gc and verify.
pub fn objects_of(docs: &[Doc]) -> Result<HashMap<ObjectId, u64>> {
    let mut out = HashMap::new();
    for d in docs {
        let (_, m) = d.to_snapshot("gc", 0)?;
        for e in m.files() {
            if let Some(o) = e.object {
                out.insert(o, e.size);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64, clen: u32) -> Loc {
        Loc {
            pack: [0; 32],
            offset,
            clen,
            size: clen as u64,
        }
    }

    #[test]
    fn coalesce_joins_near_frames_and_splits_at_gaps_and_the_span_limit() {
        // Out of order; 10..20 and 25..30 are a small gap apart; 5 MiB on is beyond the gap.
        let far = 5 << 20;
        let r = coalesce(vec![at(25, 5), at(10, 10), at(far, 100)], |l| *l);
        let shape: Vec<(u64, u64, usize)> = r.iter().map(|(s, e, v)| (*s, *e, v.len())).collect();
        assert_eq!(shape, vec![(10, 30, 2), (far, far + 100, 1)]);
        // Adjacent frames stop sharing a read once it would exceed MAX_SPAN.
        let big = (MAX_SPAN / 2) as u32;
        let r = coalesce(vec![at(0, big), at(big as u64, big), at(2 * big as u64, big)], |l| *l);
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|(s, e, _)| e - s <= MAX_SPAN));
    }
}
