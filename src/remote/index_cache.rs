//! The local copy of a remote's pack index, kept in the local store under
//! `remotes-v1/<blake3(url)>/index/` (outside `index.sqlite`: it is a cache of immutable,
//! self-verifying files). Refreshing lists `index/` on the remote once and downloads only
//! the files not seen before; files gone from the remote (replaced by gc) are dropped. So
//! deciding which objects the remote lacks costs one request, never one per object.

use super::client::Client;
use super::layout;
use super::pack::{decode_index, Loc};
use crate::error::{Error, IoContext, Result};
use crate::store::ObjectId;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const CACHE_DIR: &str = "remotes-v1";

/// A downloaded index file: name, bytes, entries.
type Fetched = (String, Vec<u8>, Vec<(ObjectId, Loc)>);

pub struct IndexCache {
    dir: PathBuf,
    files: BTreeMap<String, Vec<(ObjectId, Loc)>>,
    map: HashMap<ObjectId, Loc>,
}

/// `<store>/remotes-v1/<blake3(url)>`: one cache per remote URL.
pub fn cache_dir(store_root: &Path, url: &str) -> PathBuf {
    let h = blake3::hash(url.as_bytes()).to_hex();
    store_root.join(CACHE_DIR).join(&h.as_str()[..32])
}

impl IndexCache {
    /// Load what is cached locally (no request). A cached file that no longer verifies is
    /// discarded and fetched again by the next refresh.
    pub fn open(dir: PathBuf) -> Result<IndexCache> {
        let idx = dir.join("index");
        std::fs::create_dir_all(&idx).at("create directory", &idx)?;
        let mut files = BTreeMap::new();
        for e in std::fs::read_dir(&idx).at("list", &idx)? {
            let e = e.at("list", &idx)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !layout::is_hex64(&name) {
                continue;
            }
            let bytes = std::fs::read(e.path()).at("read", e.path())?;
            match decode_index(&name, &bytes) {
                Ok(locs) => {
                    files.insert(name, locs);
                }
                Err(_) => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let mut c = IndexCache {
            dir,
            files,
            map: HashMap::new(),
        };
        c.rebuild();
        Ok(c)
    }

    fn rebuild(&mut self) {
        self.map.clear();
        for locs in self.files.values() {
            for (id, l) in locs {
                self.map.entry(*id).or_insert(*l);
            }
        }
    }

    pub fn get(&self, id: &ObjectId) -> Option<&Loc> {
        self.map.get(id)
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.map.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every (object, location) the remote's index holds.
    pub fn entries(&self) -> impl Iterator<Item = (&ObjectId, &Loc)> {
        self.map.iter()
    }

    /// Every pack any index file names, including packs whose objects all have another
    /// location first (their entries are shadowed in [`Self::entries`]).
    pub fn named_packs(&self) -> std::collections::HashSet<[u8; 32]> {
        self.files.values().flatten().map(|(_, l)| l.pack).collect()
    }

    /// The index files the cache holds, by name.
    pub fn file_names(&self) -> impl Iterator<Item = &String> {
        self.files.keys()
    }

    /// List `index/` on the remote (one request), download the files not cached yet (in
    /// parallel), verify and keep them; forget files the remote no longer has.
    pub async fn refresh(&mut self, client: &Client) -> Result<()> {
        // gc writes a replacement index file before it deletes the ones it replaces: a file
        // that vanished between the listing and its download means a newer listing names its
        // replacement. A few rounds settle it (each loses only to another gc run).
        for _ in 0..4 {
            if self.refresh_once(client).await? {
                return Ok(());
            }
        }
        Err(crate::error::Error::Remote(format!(
            "remote {}: its index files kept changing while they were read (gc running in a loop?): try again",
            client.url
        )))
    }

    /// One listing and download round; `Ok(false)`: a listed file was gone when read.
    async fn refresh_once(&mut self, client: &Client) -> Result<bool> {
        use futures::StreamExt;
        let listed = client.list("index/").await?;
        let names: Vec<String> = listed
            .iter()
            .filter_map(|l| l.path.strip_prefix("index/"))
            .filter(|n| layout::is_hex64(n))
            .map(str::to_string)
            .collect();
        let gone: Vec<String> = self.files.keys().filter(|k| !names.contains(k)).cloned().collect();
        for g in &gone {
            self.files.remove(g);
            let _ = std::fs::remove_file(self.dir.join("index").join(g));
        }
        let new: Vec<String> = names.into_iter().filter(|n| !self.files.contains_key(n)).collect();
        let fetched: Vec<Result<Option<Fetched>>> = futures::stream::iter(new)
            .map(|name| async move {
                let Some(bytes) = client.read_opt(&layout::index_path(&name)).await? else {
                    return Ok(None);
                };
                let locs = decode_index(&name, &bytes)?;
                Ok(Some((name, bytes, locs)))
            })
            .buffer_unordered(super::client::CONCURRENCY)
            .collect()
            .await;
        let mut whole = true;
        for f in fetched {
            let Some((name, bytes, locs)) = f? else {
                whole = false;
                continue;
            };
            self.keep(&name, &bytes)?;
            self.files.insert(name, locs);
        }
        self.rebuild();
        Ok(whole)
    }

    /// Record an index file this process wrote (already on the remote).
    pub fn add(&mut self, name: &str, bytes: &[u8], locs: Vec<(ObjectId, Loc)>) -> Result<()> {
        self.keep(name, bytes)?;
        for (id, l) in &locs {
            self.map.entry(*id).or_insert(*l);
        }
        self.files.insert(name.to_string(), locs);
        Ok(())
    }

    /// Forget an index file (gc replaced it on the remote).
    pub fn forget(&mut self, name: &str) {
        self.files.remove(name);
        let _ = std::fs::remove_file(self.dir.join("index").join(name));
        self.rebuild();
    }

    fn keep(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let dir = self.dir.join("index");
        let tmp = tempfile::NamedTempFile::new_in(&dir).at("create temporary file in", &dir)?;
        std::fs::write(tmp.path(), bytes).at("write", tmp.path())?;
        tmp.persist(dir.join(name))
            .map_err(|e| Error::io("rename into", dir.join(name), e.error))?;
        Ok(())
    }
}
