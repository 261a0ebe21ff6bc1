//! `envsnap verify` against a remote: structure, without downloading packs; with `--deep`,
//! every pack the index names is downloaded, hashed against its name, and every indexed
//! object in it decompressed and hashed.

use super::layout;
use super::pack::{self, Loc};
use super::Remote;
use crate::error::Result;
use crate::store::ObjectId;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// A pack to read whole: its hash, its size as listed, and its index entries.
type WholePack = ([u8; 32], u64, Vec<(ObjectId, Loc)>);

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RemoteVerifyReport {
    pub keys: u64,
    pub objects: u64,
    pub packs: u64,
    /// Packs were downloaded and hashed (`--deep`).
    pub deep: bool,
    /// With `deep`: the packs, objects and pack bytes that were read and checked.
    pub checked_packs: u64,
    pub checked_objects: u64,
    pub checked_bytes: u64,
    /// One line per problem, naming the key, object, pack or manifest.
    pub problems: Vec<String>,
}

impl Remote {
    /// Every key's newest manifest decodes, matches its name and passes the path-safety rules;
    /// every object it references is in the index; every indexed pack exists and is long
    /// enough for the ranges the index gives. With `deep`, every such pack is also read
    /// whole (see [`Remote::check_pack`]).
    pub fn verify(&self, deep: bool) -> Result<RemoteVerifyReport> {
        let mut rep = RemoteVerifyReport {
            deep,
            ..Default::default()
        };
        let mut newest = HashMap::new();
        for r in self.refs("", false)? {
            newest.entry(r.key.clone()).or_insert(r);
        }
        rep.keys = newest.len() as u64;
        let guard = self.index(true)?;
        let cache = guard.as_ref().expect("loaded");
        for r in newest.values() {
            let doc = match self.docs(vec![r.manifest.clone()]) {
                Ok(mut d) => d.pop().expect("one"),
                Err(e) => {
                    rep.problems.push(format!("key {}: {e}", r.key));
                    continue;
                }
            };
            match doc.to_snapshot(&r.key, r.created_ns) {
                Err(e) => rep.problems.push(format!("key {}: {e}", r.key)),
                Ok((_, m)) => {
                    for e in m.files() {
                        let id = e.object.expect("validated");
                        if !cache.contains(&id) {
                            rep.problems.push(format!(
                                "key {}: object {id} ({}) is in no pack index",
                                r.key,
                                e.path_lossy()
                            ));
                        }
                    }
                }
            }
        }
        let listed: HashMap<String, u64> = self
            .client
            .block_on(self.client.list("packs/"))??
            .into_iter()
            .map(|l| (l.path, l.size))
            .collect();
        let mut need: HashMap<String, u64> = HashMap::new();
        let mut objects = HashSet::new();
        let mut by_pack: HashMap<[u8; 32], Vec<(ObjectId, Loc)>> = HashMap::new();
        for (id, l) in cache.entries() {
            objects.insert(*id);
            let p = layout::pack_path(&pack::hex(&l.pack));
            let end = l.offset + l.clen as u64;
            let e = need.entry(p).or_default();
            *e = (*e).max(end);
            by_pack.entry(l.pack).or_default().push((*id, *l));
        }
        drop(guard);
        rep.objects = objects.len() as u64;
        rep.packs = need.len() as u64;
        let mut whole: Vec<WholePack> = Vec::new();
        for (hash, locs) in by_pack {
            let p = layout::pack_path(&pack::hex(&hash));
            let end = need[&p];
            match listed.get(&p) {
                None => rep.problems.push(format!("pack {p} is missing")),
                Some(n) if *n < end => rep
                    .problems
                    .push(format!("pack {p} is truncated ({n} bytes, the index needs {end})")),
                Some(n) => whole.push((hash, *n, locs)),
            }
        }
        if deep {
            self.check_packs(whole, &mut rep);
        }
        rep.problems.sort();
        Ok(rep)
    }

    /// Read each pack whole (several packs at once, each in bounded ranges in order), check
    /// it hashes to its name, and decompress and hash every indexed object in it. Every
    /// failure is a problem line naming the pack (and the object), never an abort.
    fn check_packs(&self, mut packs: Vec<WholePack>, rep: &mut RemoteVerifyReport) {
        // Largest first, so the long reads start early.
        packs.sort_by_key(|p| std::cmp::Reverse(p.1));
        let out = Mutex::new((Vec::new(), 0u64, 0u64, 0u64));
        super::concurrently(packs, |(hash, size, locs)| {
            let mut problems = Vec::new();
            let objects = self.check_pack(&hash, size, locs, &mut problems);
            let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
            o.0.extend(problems);
            o.1 += 1;
            o.2 += objects;
            o.3 += size;
        });
        let (problems, packs, objects, bytes) = out.into_inner().unwrap_or_else(|p| p.into_inner());
        rep.problems.extend(problems);
        rep.checked_packs = packs;
        rep.checked_objects = objects;
        rep.checked_bytes = bytes;
    }

    /// One pack, read in ranges of at most [`super::sync::MAX_SPAN`] bytes (or one object's
    /// frame, if larger) in order, so memory stays bounded and the pack hash is incremental.
    /// Returns the objects checked.
    fn check_pack(
        &self,
        hash: &[u8; 32],
        size: u64,
        mut locs: Vec<(ObjectId, Loc)>,
        problems: &mut Vec<String>,
    ) -> u64 {
        let name = pack::hex(hash);
        let path = layout::pack_path(&name);
        locs.sort_by_key(|(_, l)| l.offset);
        let mut hasher = blake3::Hasher::new();
        let mut next = locs.into_iter().peekable();
        let mut pos = 0;
        let mut checked = 0;
        while pos < size {
            // The range starting here, stretched to hold whole every frame that starts in it.
            let mut end = (pos + super::sync::MAX_SPAN).min(size);
            let mut objs = Vec::new();
            while let Some(o) = next.next_if(|(_, l)| l.offset < end) {
                end = end.max(o.1.offset + o.1.clen as u64);
                objs.push(o);
            }
            let data = match self.client.block_on(self.client.read_range(&path, pos, end)) {
                Ok(Ok(d)) => d,
                Ok(Err(e)) | Err(e) => {
                    problems.push(format!("pack {path}: {e}"));
                    return checked;
                }
            };
            hasher.update(&data);
            for (id, l) in objs {
                let a = (l.offset - pos) as usize;
                let frame = &data[a..a + l.clen as usize];
                if let Err(e) = pack::decompress_verified(frame, &id, l.size, &path) {
                    problems.push(e.to_string());
                }
                checked += 1;
            }
            pos = end;
        }
        let got = hasher.finalize();
        if got.as_bytes() != hash {
            problems.push(format!(
                "corrupt pack {path} on the remote: its content does not match its name (its BLAKE3 is {})",
                got.to_hex()
            ));
        }
        checked
    }
}
