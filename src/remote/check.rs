//! `envsnap verify` against a remote: structure, without downloading packs.

use super::layout;
use super::Remote;
use crate::error::Result;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RemoteVerifyReport {
    pub keys: u64,
    pub objects: u64,
    pub packs: u64,
    /// One line per problem, naming the key, object, pack or manifest.
    pub problems: Vec<String>,
}

impl Remote {
    /// Every key's newest manifest decodes, matches its name and passes the path-safety rules;
    /// every object it references is in the index; every indexed pack exists and is long
    /// enough for the ranges the index gives.
    pub fn verify(&self) -> Result<RemoteVerifyReport> {
        let mut rep = RemoteVerifyReport::default();
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
        for (id, l) in cache.entries() {
            objects.insert(*id);
            let p = layout::pack_path(&super::pack::hex(&l.pack));
            let end = l.offset + l.clen as u64;
            let e = need.entry(p).or_default();
            *e = (*e).max(end);
        }
        rep.objects = objects.len() as u64;
        rep.packs = need.len() as u64;
        for (p, end) in &need {
            match listed.get(p) {
                None => rep.problems.push(format!("pack {p} is missing")),
                Some(n) if n < end => rep
                    .problems
                    .push(format!("pack {p} is truncated ({n} bytes, the index needs {end})")),
                _ => {}
            }
        }
        rep.problems.sort();
        Ok(rep)
    }
}
