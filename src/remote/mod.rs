//! A remote store on S3-compatible object storage (or a shared filesystem): keys live there and
//! the local store is an object cache and the staging area of saves.
//!
//! - [`url`]: `s3://bucket/prefix` and `file:///path`;
//! - [`aws_config`]: region and endpoint from the AWS CLI's shared config files;
//! - [`client`]: opendal behind retry-with-jitter, timeouts and a concurrency limit, on one
//!   lazily started tokio runtime used only for remote I/O;
//! - [`layout`]: the versioned object names (`envsnap-v1/{packs,index,manifests,refs,uses,gc}`);
//! - [`pack`]: packs of independently decompressible zstd frames and their index files;
//! - [`index_cache`]: the local copy of the remote's index (what the remote holds, for free);
//! - [`doc`]: the snapshot manifest document;
//! - [`sync`]: push (packs → index → manifest → ref) and pull (ranged, coalesced, verified);
//! - [`gc`]: remote garbage collection in two phases, repacking mostly-garbage packs;
//! - [`check`]: `verify` against the remote (structure; `--deep` hashes every pack).
//!
//! Write order makes every key whole when visible: packs, then the index naming them, then the
//! manifest, then the ref. Refs are append-only names that sort newest first, so no
//! compare-and-swap is needed (servers that ignore conditional writes are fine).

pub mod aws_config;
pub mod check;
pub mod client;
pub mod doc;
pub mod gc;
pub mod index_cache;
pub mod layout;
pub mod pack;
pub mod sync;
pub mod url;

pub use client::StatsReport;
pub use layout::RefName;
pub use sync::{DirectSource, PullReport, PushReport};
pub use url::RemoteUrl;

use crate::error::{Error, IoContext, Result};
use crate::repo::Hit;
use crate::Store;
use client::Client;
use index_cache::IndexCache;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

pub struct Remote {
    pub client: Client,
    cache: PathBuf,
    index: Mutex<Option<IndexCache>>,
}

/// One snapshot as the remote lists it: the newest ref of a key and its document.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RemoteSnapshot {
    pub key: String,
    pub created_ns: i64,
    pub manifest: String,
    pub kind: String,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub source: PathBuf,
    pub tool_version: String,
    pub last_restored_ns: Option<i64>,
}

impl Remote {
    /// Connect lazily: nothing is requested until an operation needs it.
    pub fn open(url: &str, store: &Store) -> Result<Remote> {
        let url = RemoteUrl::parse(url)?;
        let cache = index_cache::cache_dir(store.root(), &url.to_string());
        std::fs::create_dir_all(cache.join("manifests")).at("create directory", cache.join("manifests"))?;
        Ok(Remote {
            client: Client::new(url)?,
            cache,
            index: Mutex::new(None),
        })
    }

    pub fn url(&self) -> String {
        self.client.url.to_string()
    }

    pub fn stats(&self) -> StatsReport {
        self.client.report()
    }

    /// The cached index, refreshed from the remote at most once per process unless `force`.
    fn index(&self, force: bool) -> Result<MutexGuard<'_, Option<IndexCache>>> {
        let mut g = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() || force {
            let mut c = match g.take() {
                Some(c) => c,
                None => IndexCache::open(self.cache.clone())?,
            };
            self.client.block_on(c.refresh(&self.client))??;
            *g = Some(c);
        }
        Ok(g)
    }

    /// Every ref whose key starts with `prefix` (all pages), newest first.
    pub fn refs(&self, prefix: &str, exact: bool) -> Result<Vec<RefName>> {
        let p = if exact {
            layout::refs_of_key(prefix)
        } else {
            layout::refs_with_prefix(prefix)
        };
        let listed = self.client.block_on(self.client.list(&p))??;
        // A foreign or malformed name under refs/ is skipped, never trusted.
        let mut refs: Vec<RefName> = listed
            .iter()
            .filter_map(|l| layout::parse_ref(&l.path).ok())
            .filter(|r| {
                if exact {
                    r.key == prefix
                } else {
                    r.key.starts_with(prefix)
                }
            })
            .collect();
        refs.sort_by(|a, b| b.created_ns.cmp(&a.created_ns).then_with(|| a.path.cmp(&b.path)));
        Ok(refs)
    }

    /// The local lookup's rules on the remote: the exact key's newest ref, else for each
    /// fallback prefix in order the newest ref of any key starting with it.
    pub fn lookup(&self, key: &str, fallbacks: &[String]) -> Result<Option<(RefName, Hit)>> {
        crate::key::validate(key)?;
        for f in fallbacks {
            crate::key::validate(f)?;
        }
        if let Some(r) = self.refs(key, true)?.into_iter().next() {
            return Ok(Some((r, Hit::Exact)));
        }
        for f in fallbacks {
            if let Some(r) = self.refs(f, false)?.into_iter().next() {
                return Ok(Some((r, Hit::Fallback)));
            }
        }
        Ok(None)
    }

    /// The newest ref of every key starting with `prefix`, with its document.
    pub fn list(&self, prefix: &str) -> Result<Vec<RemoteSnapshot>> {
        let refs = self.refs(prefix, false)?;
        let mut seen = std::collections::HashSet::new();
        let newest: Vec<RefName> = refs.into_iter().filter(|r| seen.insert(r.key.clone())).collect();
        self.describe(newest)
    }

    /// The snapshot exactly `key` names now, if any.
    pub fn show(&self, key: &str) -> Result<Option<RemoteSnapshot>> {
        let newest: Vec<RefName> = self.refs(key, true)?.into_iter().take(1).collect();
        Ok(self.describe(newest)?.pop())
    }

    fn describe(&self, newest: Vec<RefName>) -> Result<Vec<RemoteSnapshot>> {
        let uses = self.last_uses()?;
        let docs = self.docs(newest.iter().map(|r| r.manifest.clone()).collect())?;
        Ok(newest
            .into_iter()
            .zip(docs)
            .map(|(r, d)| RemoteSnapshot {
                last_restored_ns: uses.get(&r.key).copied(),
                key: r.key,
                created_ns: r.created_ns,
                manifest: r.manifest,
                kind: d.kind.clone(),
                files: d.files,
                dirs: d.dirs,
                symlinks: d.symlinks,
                bytes: d.bytes,
                source: d.to_snapshot("x", 0).map(|(row, _)| row.source).unwrap_or_default(),
                tool_version: d.tool_version.clone(),
            })
            .collect())
    }

    /// When each key was last restored (from `uses/`).
    pub fn last_uses(&self) -> Result<std::collections::HashMap<String, i64>> {
        let listed = self.client.block_on(self.client.list("uses/"))??;
        let mut out = std::collections::HashMap::new();
        for l in listed {
            if let Ok(u) = layout::parse_ref(&l.path) {
                let e = out.entry(u.key).or_insert(u.created_ns);
                *e = (*e).max(u.created_ns);
            }
        }
        Ok(out)
    }

    /// Documents by id, from the local cache or downloaded (in parallel) and verified.
    pub fn docs(&self, ids: Vec<String>) -> Result<Vec<doc::Doc>> {
        use futures::StreamExt;
        let dir = self.cache.join("manifests");
        let client = &self.client;
        let got: Vec<Result<doc::Doc>> = self.client.block_on(
            futures::stream::iter(ids)
                .map(|id| {
                    let dir = dir.clone();
                    async move {
                        let local = dir.join(&id);
                        if let Ok(b) = std::fs::read(&local) {
                            if let Ok(d) = doc::Doc::decode(&id, &b) {
                                return Ok(d);
                            }
                        }
                        let b = client.read_opt(&layout::manifest_path(&id)).await?.ok_or_else(|| {
                            Error::Remote(format!(
                                "remote {}: manifest {id} is missing (a ref names it): the remote is damaged",
                                client.url
                            ))
                        })?;
                        let d = doc::Doc::decode(&id, &b)?;
                        keep_file(&dir, &id, &b)?;
                        Ok(d)
                    }
                })
                .buffered(client::CONCURRENCY)
                .collect(),
        )?;
        got.into_iter().collect()
    }

    /// A restore records its use with one small write (gc's least-recently-restored order).
    pub fn record_use(&self, r: &RefName) -> Result<()> {
        let p = layout::use_path(&r.key, crate::repo::now_ns(), &r.manifest);
        self.client.block_on(self.client.write(&p, Vec::new()))?
    }

    /// Put a small object at `path` under the layout root (e.g. `events/…`): for other
    /// commands' records. `path` must be relative and stay out of the data prefixes.
    pub fn put_small(&self, path: &str, data: Vec<u8>) -> Result<()> {
        check_free_path(path)?;
        self.client.block_on(self.client.write(path, data))?
    }

    /// Every object under `prefix` (all pages) with its size.
    pub fn list_prefix(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let listed = self.client.block_on(self.client.list(prefix))??;
        Ok(listed.into_iter().map(|l| (l.path, l.size)).collect())
    }

    /// Read a small object; `None` when it does not exist.
    pub fn get_small(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.client.block_on(self.client.read_opt(path))?
    }
}

/// Other commands may write only under prefixes the remote format does not own.
fn check_free_path(path: &str) -> Result<()> {
    let owned = ["packs/", "index/", "manifests/", "refs/", "uses/", "gc/"];
    let clean =
        !path.is_empty() && !path.starts_with('/') && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if !clean || owned.iter().any(|o| path.starts_with(o)) {
        return Err(Error::Usage(format!(
            "remote object path {path:?} is not a free relative path (use e.g. events/…)"
        )));
    }
    Ok(())
}

/// Write a cache file atomically (temp file + rename).
fn keep_file(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = tempfile::NamedTempFile::new_in(dir).at("create temporary file in", dir)?;
    std::fs::write(tmp.path(), bytes).at("write", tmp.path())?;
    tmp.persist(dir.join(name))
        .map_err(|e| Error::io("rename into", dir.join(name), e.error))?;
    Ok(())
}

/// `envsnap delete` with a remote: every ref of each key goes (so no older ref resurfaces),
/// with its use records; the data goes with the next `gc --remote`s (two phases).
impl crate::delete::KeyDeleter for Remote {
    fn delete_keys(&self, req: &crate::delete::DeleteRequest) -> Result<crate::delete::DeleteReport> {
        use crate::delete::{DeleteReport, DeletedKey};
        for k in req.keys.iter().chain(&req.prefixes) {
            crate::key::validate(k)?;
        }
        let mut report = DeleteReport {
            dry_run: req.dry_run,
            ..Default::default()
        };
        // Key -> all its refs, newest first.
        let mut chosen: std::collections::BTreeMap<String, Vec<RefName>> = Default::default();
        for k in &req.keys {
            let refs = self.refs(k, true)?;
            if refs.is_empty() {
                report.missing_keys.push(k.clone());
            }
            for r in refs {
                chosen.entry(r.key.clone()).or_default().push(r);
            }
        }
        for p in &req.prefixes {
            let refs = self.refs(p, false)?;
            if refs.is_empty() {
                report.empty_prefixes.push(p.clone());
            }
            for r in refs {
                let v = chosen.entry(r.key.clone()).or_default();
                if !v.iter().any(|x| x.path == r.path) {
                    v.push(r);
                }
            }
        }
        let newest: Vec<&RefName> = chosen.values().filter_map(|v| v.first()).collect();
        let docs = self.docs(newest.iter().map(|r| r.manifest.clone()).collect())?;
        for (r, d) in newest.iter().zip(&docs) {
            report.deleted.push(DeletedKey {
                key: r.key.clone(),
                kind: d.kind.clone(),
                files: d.files,
                bytes: d.bytes,
                created_ns: r.created_ns,
            });
        }
        if req.dry_run {
            return Ok(report);
        }
        let c = &self.client;
        for (key, refs) in &chosen {
            for r in refs {
                c.block_on(c.delete(&r.path))??;
            }
            for u in c.block_on(c.list(&layout::refs_of_key(key).replacen("refs/", "uses/", 1)))?? {
                c.block_on(c.delete(&u.path))??;
            }
        }
        Ok(report)
    }
}

/// Run `f` on each item from this many threads at once (remote reads block on the network, so
/// they want more threads than rayon's one per core), taking items in their order: callers
/// put the longest reads first so they start early.
pub(crate) fn concurrently<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
    let queue = std::sync::Mutex::new(items.into_iter());
    std::thread::scope(|s| {
        for _ in 0..client::CONCURRENCY.min(8) {
            s.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                let Some(item) = next else { break };
                f(item);
            });
        }
    });
}
