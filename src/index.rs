//! The SQLite index: snapshots by key, their entries, and the stat cache that makes an
//! unchanged re-save a walk and a stat per file.
//!
//! WAL mode lets a restore read while a save writes; `busy_timeout` lets two saves commit one
//! after the other. The schema evolves by numbered migrations tracked in `PRAGMA user_version`.

use crate::error::{Error, Result};
use crate::snapshot::{Entry, EntryKind, Manifest};
use crate::statcache::StatCache;
use crate::store::ObjectId;
use rusqlite::{params, Connection, OptionalExtension};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub const INDEX_FILE: &str = "index.sqlite";

/// Migration N (1-based) brings `user_version` from N-1 to N. Never edit a released one.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "CREATE TABLE snapshots (
        -- AUTOINCREMENT: an id is never reused, so a reader holding an old id cannot load
        -- another snapshot's entries after a re-save or gc.
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        created_ns INTEGER NOT NULL,
        source BLOB NOT NULL,
        tool_version TEXT NOT NULL,
        meta TEXT NOT NULL,
        files INTEGER NOT NULL,
        dirs INTEGER NOT NULL,
        symlinks INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        root_mode INTEGER NOT NULL,
        root_uid INTEGER NOT NULL,
        root_gid INTEGER NOT NULL,
        root_mtime_ns INTEGER NOT NULL,
        last_restored_ns INTEGER
    );
    CREATE TABLE entries (
        snapshot INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
        path BLOB NOT NULL,
        kind INTEGER NOT NULL,
        mode INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        gid INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        object TEXT,
        target BLOB,
        link_group INTEGER,
        xattrs BLOB,
        note TEXT,
        PRIMARY KEY (snapshot, path)
    ) WITHOUT ROWID;
    CREATE INDEX entries_by_object ON entries(object) WHERE object IS NOT NULL;
    CREATE TABLE statcache (
        source BLOB NOT NULL,
        path BLOB NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        exec INTEGER NOT NULL,
        scanner TEXT NOT NULL,
        object TEXT NOT NULL,
        note TEXT,
        PRIMARY KEY (source, path)
    ) WITHOUT ROWID;",
    // 2: `Manifest::digest` of each snapshot, so an unchanged re-save compares one value instead
    // of loading the stored entries (NULL for older snapshots: compared entry by entry); the
    // scanner id of the save, so a restore can seed the destination's stat cache; the
    // stat cache becomes one binary record per source (`statcache.rs`). The old rows are only a
    // cache: the next save from each source reads its files once more. `entries_by_object` is
    // dropped: no query uses it (gc, show and verify scan every entry anyway), and keeping it
    // made each commit insert 11k keys at random places of an index over every snapshot, so a
    // save got slower as the store grew.
    "DROP INDEX IF EXISTS entries_by_object;
    ALTER TABLE snapshots ADD COLUMN manifest_digest TEXT;
    ALTER TABLE snapshots ADD COLUMN scanner TEXT;
    DROP TABLE statcache;
    CREATE TABLE statcache (
        source BLOB PRIMARY KEY,
        scanner TEXT NOT NULL,
        data BLOB NOT NULL
    );",
];

#[derive(Clone, Debug)]
pub struct SnapshotRow {
    pub id: i64,
    pub key: String,
    pub kind: String,
    pub created_ns: i64,
    pub source: PathBuf,
    pub tool_version: String,
    pub meta: serde_json::Value,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub root_mode: u32,
    pub root_uid: u32,
    pub root_gid: u32,
    pub root_mtime_ns: i64,
    pub last_restored_ns: Option<i64>,
}

impl SnapshotRow {
    /// When it was last used: restored, or else created. gc's age and LRU order use this.
    pub fn last_used_ns(&self) -> i64 {
        self.last_restored_ns.unwrap_or(self.created_ns).max(self.created_ns)
    }
}

pub struct Index {
    conn: Connection,
    path: PathBuf,
}

const SNAP_COLS: &str = "id, key, kind, created_ns, source, tool_version, meta, files, dirs, symlinks, bytes, \
                         root_mode, root_uid, root_gid, root_mtime_ns, last_restored_ns";

fn snap_from_row(r: &rusqlite::Row) -> rusqlite::Result<SnapshotRow> {
    let source: Vec<u8> = r.get(4)?;
    let meta: String = r.get(6)?;
    Ok(SnapshotRow {
        id: r.get(0)?,
        key: r.get(1)?,
        kind: r.get(2)?,
        created_ns: r.get(3)?,
        source: PathBuf::from(OsStr::from_bytes(&source)),
        tool_version: r.get(5)?,
        meta: serde_json::from_str(&meta).unwrap_or(serde_json::Value::Null),
        files: r.get::<_, i64>(7)? as u64,
        dirs: r.get::<_, i64>(8)? as u64,
        symlinks: r.get::<_, i64>(9)? as u64,
        bytes: r.get::<_, i64>(10)? as u64,
        root_mode: r.get(11)?,
        root_uid: r.get(12)?,
        root_gid: r.get(13)?,
        root_mtime_ns: r.get(14)?,
        last_restored_ns: r.get(15)?,
    })
}

/// What a save commits: the snapshot row (id ignored) and its manifest.
pub struct NewSnapshot<'a> {
    pub row: &'a SnapshotRow,
    pub manifest: &'a Manifest,
    /// Replaces the stat cache for `row.source`.
    pub statcache: &'a StatCache,
}

impl Index {
    pub fn open(path: &Path) -> Result<Self> {
        let err = |e| Error::index(path, e);
        let conn = Connection::open(path).map_err(err)?;
        let patience = std::time::Duration::from_secs(60);
        conn.busy_timeout(patience).map_err(err)?;
        // Switching a new database to WAL takes an exclusive lock and SQLite does not call the
        // busy handler for it: concurrent first saves into a fresh store got "database is
        // locked". Retry it here, as long as any other statement would wait.
        let start = std::time::Instant::now();
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Ok(()) => break,
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if f.code == rusqlite::ErrorCode::DatabaseBusy && start.elapsed() < patience =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => return Err(err(e)),
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        // A save commits one row per path (11k for the benchmark tree, 2 MB of pages with the
        // index): with SQLite's default 2 MB page cache the transaction spilled pages to the WAL
        // and read them back. Allocated on demand, so small stores pay nothing.
        conn.pragma_update(None, "cache_size", -65536).map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(err)?;
        let mut idx = Index {
            conn,
            path: path.to_path_buf(),
        };
        idx.migrate()?;
        Ok(idx)
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        Error::index(&self.path, e)
    }

    /// A transaction that takes the write lock at BEGIN (IMMEDIATE), waiting for it per the busy
    /// timeout. Every read-then-write goes through here: in a deferred transaction the upgrade
    /// to a writer fails at once, without waiting, if another writer committed in between.
    fn begin_write(&mut self) -> Result<rusqlite::Transaction<'_>> {
        let path = self.path.clone();
        self.conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| Error::index(&path, e))
    }

    fn migrate(&mut self) -> Result<()> {
        let path = self.path.clone();
        let err = |e| Error::index(&path, e);
        // Two processes opening a new store at once must not both migrate.
        let tx = self.begin_write()?;
        let have: usize = tx
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .map_err(err)? as usize;
        if have > MIGRATIONS.len() {
            return Err(Error::Usage(format!(
                "store index {} has schema version {have}, this envsnap knows up to {}: upgrade envsnap",
                path.display(),
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(have) {
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    pub fn schema_version(&self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    pub fn get(&self, key: &str) -> Result<Option<SnapshotRow>> {
        self.conn
            .query_row(
                &format!("SELECT {SNAP_COLS} FROM snapshots WHERE key = ?1"),
                [key],
                snap_from_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The newest snapshot whose key starts with `prefix` (case-sensitive).
    pub fn newest_with_prefix(&self, prefix: &str) -> Result<Option<SnapshotRow>> {
        // substr/length count characters on TEXT, so this is an exact, case-sensitive prefix test
        // (LIKE would be case-insensitive and treat % and _ specially).
        self.conn
            .query_row(
                &format!(
                    "SELECT {SNAP_COLS} FROM snapshots WHERE substr(key, 1, length(?1)) = ?1 \
                     ORDER BY created_ns DESC, id DESC LIMIT 1"
                ),
                [prefix],
                snap_from_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Snapshots whose key starts with `prefix` (all when None), newest first.
    pub fn list(&self, prefix: Option<&str>) -> Result<Vec<SnapshotRow>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {SNAP_COLS} FROM snapshots WHERE ?1 IS NULL OR substr(key, 1, length(?1)) = ?1 \
                 ORDER BY created_ns DESC, id DESC"
            ))
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([prefix], snap_from_row).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| self.err(e))
    }

    /// A snapshot's entries, read in one transaction with a check that the snapshot still
    /// exists: a key re-saved or a snapshot removed by gc since the lookup is an error, never an
    /// empty or foreign tree.
    pub fn manifest(&self, snapshot: i64) -> Result<Manifest> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let exists: Option<String> = tx
            .query_row("SELECT key FROM snapshots WHERE id = ?1", [snapshot], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        if exists.is_none() {
            return Err(Error::Other(format!(
                "snapshot {snapshot} was replaced or removed while it was being restored: run the restore again"
            )));
        }
        let m = self.entries(snapshot)?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(m)
    }

    fn entries(&self, snapshot: i64) -> Result<Manifest> {
        let mut st = self
            .conn
            .prepare(
                "SELECT path, kind, mode, uid, gid, size, mtime_ns, object, target, link_group, xattrs, note \
                 FROM entries WHERE snapshot = ?1 ORDER BY path",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = st.query([snapshot]).map_err(|e| self.err(e))?;
        let mut entries = Vec::new();
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let get_err = |e| Error::index(&self.path, e);
            let object: Option<String> = r.get(7).map_err(get_err)?;
            let xattrs: Option<Vec<u8>> = r.get(10).map_err(get_err)?;
            entries.push(Entry {
                path: r.get(0).map_err(get_err)?,
                kind: EntryKind::from_code(r.get(1).map_err(get_err)?)?,
                mode: r.get(2).map_err(get_err)?,
                uid: r.get(3).map_err(get_err)?,
                gid: r.get(4).map_err(get_err)?,
                size: r.get::<_, i64>(5).map_err(get_err)? as u64,
                mtime_ns: r.get(6).map_err(get_err)?,
                object: object.map(|o| o.parse()).transpose()?,
                target: r.get(8).map_err(get_err)?,
                link_group: r.get::<_, Option<i64>>(9).map_err(get_err)?.map(|g| g as u64),
                xattrs: match xattrs {
                    Some(b) => decode_xattrs(&b)?,
                    None => Vec::new(),
                },
                note: r.get(11).map_err(get_err)?,
            });
        }
        Ok(Manifest { entries })
    }

    /// The stat cache of the last save from `source`; empty if there is none or it was written
    /// in another format.
    pub fn statcache(&self, source: &Path) -> Result<StatCache> {
        let row: Option<(String, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT scanner, data FROM statcache WHERE source = ?1",
                [source.as_os_str().as_bytes()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(row
            .and_then(|(scanner, data)| StatCache::decode(scanner, &data))
            .unwrap_or_default())
    }

    /// Commit a snapshot in one transaction: it replaces any snapshot with the same key (keys
    /// are updatable) and becomes visible only now, after all its objects are in place.
    pub fn commit_snapshot(&mut self, new: NewSnapshot) -> Result<i64> {
        let path = self.path.clone();
        let err = |e| Error::index(&path, e);
        let tx = self.begin_write()?;
        let row = new.row;
        tx.execute("DELETE FROM snapshots WHERE key = ?1", [&row.key])
            .map_err(err)?;
        tx.execute(
            "INSERT INTO snapshots (key, kind, created_ns, source, tool_version, meta, files, dirs, symlinks, bytes, \
             root_mode, root_uid, root_gid, root_mtime_ns, last_restored_ns, manifest_digest, scanner) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, NULL, ?15, ?16)",
            params![
                row.key,
                row.kind,
                row.created_ns,
                row.source.as_os_str().as_bytes(),
                row.tool_version,
                row.meta.to_string(),
                row.files as i64,
                row.dirs as i64,
                row.symlinks as i64,
                row.bytes as i64,
                row.root_mode,
                row.root_uid,
                row.root_gid,
                row.root_mtime_ns,
                new.manifest.digest(),
                new.statcache.scanner,
            ],
        )
        .map_err(err)?;
        let id = tx.last_insert_rowid();
        {
            let mut ins = tx
                .prepare(
                    "INSERT INTO entries (snapshot, path, kind, mode, uid, gid, size, mtime_ns, object, target, \
                     link_group, xattrs, note) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )
                .map_err(err)?;
            for e in &new.manifest.entries {
                ins.execute(params![
                    id,
                    e.path,
                    e.kind.code(),
                    e.mode,
                    e.uid,
                    e.gid,
                    e.size as i64,
                    e.mtime_ns,
                    e.object.map(|o| o.to_string()),
                    e.target,
                    e.link_group.map(|g| g as i64),
                    (!e.xattrs.is_empty()).then(|| encode_xattrs(&e.xattrs)),
                    e.note,
                ])
                .map_err(err)?;
            }
        }
        put_statcache(&tx, &row.source, new.statcache).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(id)
    }

    /// The id of the snapshot under `row.key` if it is exactly `row` + `manifest` (same kind,
    /// source, metadata, root attributes and entries).
    pub fn same_snapshot(&self, row: &SnapshotRow, manifest: &Manifest) -> Result<Option<i64>> {
        let Some(old) = self.get(&row.key)? else {
            return Ok(None);
        };
        let same_row = old.kind == row.kind
            && old.source == row.source
            && old.meta == row.meta
            && (old.files, old.dirs, old.symlinks, old.bytes) == (row.files, row.dirs, row.symlinks, row.bytes)
            && (old.root_mode, old.root_uid, old.root_gid, old.root_mtime_ns)
                == (row.root_mode, row.root_uid, row.root_gid, row.root_mtime_ns);
        if !same_row {
            return Ok(None);
        }
        let stored: Option<String> = self
            .conn
            .query_row("SELECT manifest_digest FROM snapshots WHERE id = ?1", [old.id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?
            .flatten();
        let same = match stored {
            Some(d) => d == manifest.digest(),
            None => self.manifest(old.id)?.entries == manifest.entries,
        };
        Ok(same.then_some(old.id))
    }

    pub fn touch_created(&self, id: i64, now_ns: i64) -> Result<()> {
        self.conn
            .execute(
                "UPDATE snapshots SET created_ns = ?2 WHERE id = ?1",
                params![id, now_ns],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn mark_restored(&self, id: i64, now_ns: i64) -> Result<()> {
        self.conn
            .execute(
                "UPDATE snapshots SET last_restored_ns = ?2 WHERE id = ?1",
                params![id, now_ns],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Delete snapshots (their entries cascade) in one transaction.
    pub fn delete_snapshots(&mut self, ids: &[i64]) -> Result<()> {
        let path = self.path.clone();
        let err = |e| Error::index(&path, e);
        let tx = self.conn.transaction().map_err(err)?;
        for id in ids {
            tx.execute("DELETE FROM snapshots WHERE id = ?1", [id]).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// (snapshot id, object, size) for every file entry: what gc and `show` count with.
    pub fn object_refs(&self) -> Result<Vec<(i64, ObjectId, u64)>> {
        let mut st = self
            .conn
            .prepare("SELECT snapshot, object, size FROM entries WHERE object IS NOT NULL")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)? as u64))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            let (s, o, n) = r.map_err(|e| self.err(e))?;
            out.push((s, o.parse()?, n));
        }
        Ok(out)
    }

    /// The `ContentScanner::id()` the snapshot was saved with (None before schema 2).
    pub fn snapshot_scanner(&self, snapshot: i64) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT scanner FROM snapshots WHERE id = ?1", [snapshot], |r| r.get(0))
            .optional()
            .map(Option::flatten)
            .map_err(|e| self.err(e))
    }

    /// Replace the stat cache of `source` (a restore seeds its destination's).
    pub fn put_statcache(&self, source: &Path, cache: &StatCache) -> Result<()> {
        put_statcache(&self.conn, source, cache).map_err(|e| self.err(e))
    }

    /// Drop the stat-cache rows whose object `keep` refuses, in every source's cache. gc keeps
    /// only objects some snapshot still references, `verify --repair` drops corrupt and missing
    /// ones; both before they delete anything, because a save trusts the cache.
    pub fn retain_statcache(&mut self, mut keep: impl FnMut(&ObjectId) -> bool) -> Result<()> {
        let path = self.path.clone();
        let err = |e| Error::index(&path, e);
        let tx = self.begin_write()?;
        let caches: Vec<(Vec<u8>, String, Vec<u8>)> = {
            let mut st = tx.prepare("SELECT source, scanner, data FROM statcache").map_err(err)?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(err)?;
            rows.collect::<rusqlite::Result<_>>().map_err(err)?
        };
        for (source, scanner, data) in caches {
            match StatCache::decode(scanner, &data) {
                Some(mut c) => {
                    let before = c.len();
                    c.retain_objects(&mut keep);
                    if c.len() != before {
                        tx.execute(
                            "UPDATE statcache SET data = ?2 WHERE source = ?1",
                            params![source, c.encode()],
                        )
                        .map_err(err)?;
                    }
                }
                // Unreadable: it is only a cache.
                None => {
                    tx.execute("DELETE FROM statcache WHERE source = ?1", [source])
                        .map_err(err)?;
                }
            }
        }
        tx.commit().map_err(err)
    }
}

fn put_statcache(conn: &Connection, source: &Path, cache: &StatCache) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO statcache (source, scanner, data) VALUES (?1, ?2, ?3)",
        params![source.as_os_str().as_bytes(), cache.scanner, cache.encode()],
    )
    .map(|_| ())
}

/// xattrs as `name\0len(u32 le)value` records: compact, binary-safe, no extra dependency.
fn encode_xattrs(x: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in x {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

fn decode_xattrs(mut b: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let bad = || Error::Other("malformed xattr record in the index".into());
    let mut out = Vec::new();
    while !b.is_empty() {
        let nul = b.iter().position(|&c| c == 0).ok_or_else(bad)?;
        let name = String::from_utf8(b[..nul].to_vec()).map_err(|_| bad())?;
        b = &b[nul + 1..];
        if b.len() < 4 {
            return Err(bad());
        }
        let len = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
        b = &b[4..];
        if b.len() < len {
            return Err(bad());
        }
        out.push((name, b[..len].to_vec()));
        b = &b[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattrs_round_trip() {
        let x = vec![
            ("security.capability".to_string(), vec![1, 0, 0, 2, 0xff]),
            ("user.a".into(), vec![]),
        ];
        assert_eq!(decode_xattrs(&encode_xattrs(&x)).unwrap(), x);
        assert!(decode_xattrs(b"name\0\x05\0\0\0ab").is_err());
    }

    fn file(path: &str, byte: u8) -> Entry {
        Entry::test_file(path, &[byte])
    }

    /// A store written by the first release (schema 1) is upgraded in place: its snapshots stay
    /// restorable, one without a manifest digest is still recognised as unchanged, and its old
    /// stat-cache rows are dropped (they only cost one re-read).
    #[test]
    fn a_schema_1_store_is_upgraded_and_keeps_its_snapshots() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(INDEX_FILE);
        let c = Connection::open(&p).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.execute(
            "INSERT INTO snapshots (key, kind, created_ns, source, tool_version, meta, files, dirs, symlinks, \
             bytes, root_mode, root_uid, root_gid, root_mtime_ns) \
             VALUES ('k', 'dir', 1, X'2F73', '0.1.0', '{}', 1, 0, 0, 1, 493, 0, 0, 7)",
            [],
        )
        .unwrap();
        let e = file("a", 1);
        c.execute(
            "INSERT INTO entries (snapshot, path, kind, mode, uid, gid, size, mtime_ns, object) \
             VALUES (1, ?1, 0, 420, 0, 0, 1, 5, ?2)",
            params![e.path, e.object.unwrap().to_string()],
        )
        .unwrap();
        c.execute(
            "INSERT INTO statcache VALUES (X'2F73', X'61', 1, 5, 5, 9, 0, '', ?1, NULL)",
            [e.object.unwrap().to_string()],
        )
        .unwrap();
        drop(c);

        let idx = Index::open(&p).unwrap();
        assert_eq!(idx.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let row = idx.get("k").unwrap().unwrap();
        let m = idx.manifest(row.id).unwrap();
        assert_eq!(m.entries, vec![e.clone()]);
        assert!(idx.statcache(Path::new("/s")).unwrap().is_empty());
        // No digest stored: compared entry by entry.
        assert_eq!(idx.same_snapshot(&row, &m).unwrap(), Some(row.id));
        let other = Manifest {
            entries: vec![file("a", 2)],
        };
        assert_eq!(idx.same_snapshot(&row, &other).unwrap(), None);
    }

    #[test]
    fn same_snapshot_compares_the_stored_digest() {
        let d = tempfile::tempdir().unwrap();
        let mut idx = Index::open(&d.path().join(INDEX_FILE)).unwrap();
        let m = Manifest {
            entries: vec![file("a", 1), file("b", 2)],
        };
        let mut row = SnapshotRow {
            id: 0,
            key: "k".into(),
            kind: "dir".into(),
            created_ns: 1,
            source: "/s".into(),
            tool_version: "t".into(),
            meta: serde_json::json!({}),
            files: 2,
            dirs: 0,
            symlinks: 0,
            bytes: 2,
            root_mode: 0o755,
            root_uid: 0,
            root_gid: 0,
            root_mtime_ns: 7,
            last_restored_ns: None,
        };
        let sc = StatCache::default();
        let id = idx
            .commit_snapshot(NewSnapshot {
                row: &row,
                manifest: &m,
                statcache: &sc,
            })
            .unwrap();
        assert_eq!(idx.same_snapshot(&row, &m).unwrap(), Some(id));
        let mut changed = m.clone();
        changed.entries[1].mode = 0o600;
        assert_eq!(idx.same_snapshot(&row, &changed).unwrap(), None);
        row.root_mode = 0o700;
        assert_eq!(idx.same_snapshot(&row, &m).unwrap(), None);
    }

    #[test]
    fn newer_schema_is_refused_not_misread() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(INDEX_FILE);
        drop(Index::open(&p).unwrap());
        let c = Connection::open(&p).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let e = Index::open(&p).err().unwrap();
        assert!(e.to_string().contains("upgrade envsnap"), "{e}");
    }
}
