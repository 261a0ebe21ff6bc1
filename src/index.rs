//! The SQLite index: snapshots by key, their entries, and the stat cache that makes an
//! unchanged re-save a walk and a stat per file.
//!
//! WAL mode lets a restore read while a save writes; `busy_timeout` lets two saves commit one
//! after the other. The schema evolves by numbered migrations tracked in `PRAGMA user_version`.

use crate::error::{Error, Result};
use crate::events::{Event, HitKind, Op};
use crate::snapshot::{Entry, EntryKind, Manifest};
use crate::statcache::StatCache;
use crate::store::ObjectId;
pub use crate::store::ObjectStat;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const INDEX_FILE: &str = "index.sqlite";

/// How long a statement waits for another process's write lock before failing.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

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
    // 3: snapshots with the same manifest share it. A save under a new key of content already
    // in the store (CI's common case: the requirements hash changed, the tree did not) wrote
    // every entry again (11k rows, 3x a same-key re-save); now it adds one snapshot row that
    // points at the existing manifest. `manifests.digest` is `Manifest::digest()`; entries are
    // keyed by manifest; a manifest no snapshot references is deleted with its last snapshot.
    // `row_digest` covers the snapshot row's immutable fields (`row_digest()`): with the
    // manifest digest, every field a restore uses is checked when it is loaded.
    // The entries are moved by `migrate_data` (old snapshots without a digest get one there).
    // `objects` records each object's (size, mtime, inode) as written, so a hardlink restore
    // can tell with one fstat whether an object was written to since (see `restore/link.rs`).
    "CREATE TABLE manifests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        digest TEXT NOT NULL UNIQUE
    );
    ALTER TABLE snapshots ADD COLUMN manifest INTEGER REFERENCES manifests(id);
    ALTER TABLE snapshots ADD COLUMN row_digest TEXT;
    CREATE INDEX snapshots_by_manifest ON snapshots(manifest);
    CREATE TABLE manifest_entries (
        manifest INTEGER NOT NULL REFERENCES manifests(id) ON DELETE CASCADE,
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
        PRIMARY KEY (manifest, path)
    ) WITHOUT ROWID;
    CREATE TABLE objects (
        id TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ino INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 4: one row per restore and save (`src/events.rs`), for `envsnap stats`. A rolling window:
    // `insert_event` keeps at most `events::MAX_EVENTS` rows of the last `events::MAX_AGE`.
    "CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        time_ns INTEGER NOT NULL,
        op TEXT NOT NULL,
        key TEXT NOT NULL,
        template TEXT,
        matched_key TEXT,
        hit TEXT,
        kind TEXT,
        files INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        seconds REAL NOT NULL,
        link TEXT,
        detail TEXT
    );
    CREATE INDEX events_by_time ON events(time_ns);",
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
    /// Replaces the stat cache for `row.source` (its scanner is recorded in the row either
    /// way).
    pub statcache: &'a StatCache,
    /// A snapshot pulled from a remote describes another machine's tree: the stat cache of
    /// `row.source` here (notes on this machine's files) is left as it is.
    pub keep_statcache: bool,
    /// The objects this save wrote, as written (see [`ObjectStat`]).
    pub objects: &'a [(ObjectId, ObjectStat)],
}

/// A snapshot and its manifest, or why it cannot be trusted.
pub struct SnapshotManifest {
    pub id: i64,
    pub key: String,
    pub manifest: std::result::Result<Arc<Manifest>, String>,
}

/// The columns of a snapshot row that a restore uses and that never change after the save
/// (not `created_ns` / `last_restored_ns`), as stored: `row_digest` covers them.
const CHECK_COLS: &str = "key, kind, source, tool_version, meta, files, dirs, symlinks, bytes, root_mode, root_uid, \
                          root_gid, root_mtime_ns, manifest_digest, scanner, manifest, row_digest";

struct CheckRow {
    key: String,
    kind: String,
    source: Vec<u8>,
    tool_version: String,
    meta: String,
    counts: [i64; 4],
    root: [i64; 4],
    manifest_digest: Option<String>,
    scanner: Option<String>,
    manifest: Option<i64>,
    row_digest: Option<String>,
}

impl CheckRow {
    fn read(r: &rusqlite::Row) -> rusqlite::Result<Self> {
        Self::read_at(r, 0)
    }

    fn read_at(r: &rusqlite::Row, o: usize) -> rusqlite::Result<Self> {
        Ok(CheckRow {
            key: r.get(o)?,
            kind: r.get(o + 1)?,
            source: r.get(o + 2)?,
            tool_version: r.get(o + 3)?,
            meta: r.get(o + 4)?,
            counts: [r.get(o + 5)?, r.get(o + 6)?, r.get(o + 7)?, r.get(o + 8)?],
            root: [r.get(o + 9)?, r.get(o + 10)?, r.get(o + 11)?, r.get(o + 12)?],
            manifest_digest: r.get(o + 13)?,
            scanner: r.get(o + 14)?,
            manifest: r.get(o + 15)?,
            row_digest: r.get(o + 16)?,
        })
    }

    fn of(row: &SnapshotRow, meta: &str, manifest_digest: &str, scanner: Option<&str>) -> Self {
        CheckRow {
            key: row.key.clone(),
            kind: row.kind.clone(),
            source: row.source.as_os_str().as_bytes().to_vec(),
            tool_version: row.tool_version.clone(),
            meta: meta.to_string(),
            counts: [row.files, row.dirs, row.symlinks, row.bytes].map(|n| n as i64),
            root: [
                row.root_mode as i64,
                row.root_uid as i64,
                row.root_gid as i64,
                row.root_mtime_ns,
            ],
            manifest_digest: Some(manifest_digest.to_string()),
            scanner: scanner.map(str::to_string),
            manifest: None,
            row_digest: None,
        }
    }

    /// BLAKE3 over every field, length-prefixed (as `Manifest::digest`).
    fn digest(&self) -> String {
        let mut b = Vec::with_capacity(256 + self.meta.len());
        let mut bytes = |v: Option<&[u8]>| match v {
            None => b.push(0),
            Some(v) => {
                b.push(1);
                b.extend_from_slice(&(v.len() as u64).to_le_bytes());
                b.extend_from_slice(v);
            }
        };
        bytes(Some(b"envsnap-snapshot-v1"));
        bytes(Some(self.key.as_bytes()));
        bytes(Some(self.kind.as_bytes()));
        bytes(Some(&self.source));
        bytes(Some(self.tool_version.as_bytes()));
        bytes(Some(self.meta.as_bytes()));
        for n in self.counts.iter().chain(&self.root) {
            bytes(Some(&n.to_le_bytes()));
        }
        bytes(self.manifest_digest.as_deref().map(str::as_bytes));
        bytes(self.scanner.as_deref().map(str::as_bytes));
        blake3::hash(&b).to_hex().to_string()
    }

    /// The manifest id, if the row matches its digest.
    fn check(&self) -> Result<i64> {
        if self.row_digest.as_deref() != Some(&self.digest()) {
            return Err(damaged(&self.key, "its snapshot row does not match its digest"));
        }
        self.manifest.ok_or_else(|| damaged(&self.key, "it has no manifest"))
    }
}

/// A snapshot the index cannot vouch for: its row or entries were changed outside envsnap
/// (a flipped bit, an edited database). Never restored.
fn damaged(key: &str, why: &str) -> Error {
    Error::Other(format!(
        "snapshot {} is damaged in the index ({why}): run `envsnap verify --repair`, then save it again",
        crate::key::escaped(key)
    ))
}

impl Index {
    pub fn open(path: &Path) -> Result<Self> {
        match Self::open_with(path, false) {
            // On a full disk SQLite cannot grow the WAL's shared-memory file (`-shm`), so even
            // reading fails ("disk I/O error"). In exclusive locking mode it keeps that index in
            // its own memory instead: list, verify and restore still read the store (their
            // writes fail as "disk full"). Other processes wait while this one holds the lock,
            // which only happens on a full disk.
            Err(Error::Index { source, .. })
                if matches!(
                    source.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::SystemIoFailure | rusqlite::ErrorCode::DiskFull)
                ) && crate::diskfull::is_full(path) =>
            {
                Self::open_with(path, true)
            }
            r => r,
        }
    }

    fn open_with(path: &Path, exclusive: bool) -> Result<Self> {
        let err = |e| Error::index(path, e);
        writable_wal_files(path);
        let conn = Connection::open(path).map_err(err)?;
        let patience = BUSY_TIMEOUT;
        conn.busy_timeout(patience).map_err(err)?;
        if exclusive {
            conn.pragma_update(None, "locking_mode", "EXCLUSIVE").map_err(err)?;
        }
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
                // A read-only index (a store on read-only media, an immutable file) can still
                // be read: restores from it work, their bookkeeping is skipped.
                Err(e) if is_read_only(&e) => break,
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
        // Up to date (the common case): no write lock needed, so opening a store never waits
        // for another process's write. A file SQLite may not write (opened read-only) is
        // usable as it is when it needs no migration.
        let have: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        if have == MIGRATIONS.len() as i64 {
            return Ok(());
        }
        if have > MIGRATIONS.len() as i64 {
            return Err(too_new(&path, have));
        }
        if self.conn.is_readonly(rusqlite::MAIN_DB).map_err(err)? {
            return Err(Error::Usage(format!(
                "store index {} is read-only and needs an upgrade (schema {have} -> {}): make it writable",
                path.display(),
                MIGRATIONS.len()
            )));
        }
        // Two processes opening a new store at once must not both migrate: check again under
        // the write lock.
        let tx = self.begin_write()?;
        let have: usize = tx
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .map_err(err)? as usize;
        if have > MIGRATIONS.len() {
            return Err(too_new(&path, have as i64));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(have) {
            tx.execute_batch(sql).map_err(err)?;
            migrate_data(&tx, &path, i + 1)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// How long a write waits for another writer's lock. Bookkeeping after a restore (LRU
    /// stamp, stat cache, event) lowers it: it must never hold up a restore that is done.
    pub fn set_busy_timeout(&self, wait: std::time::Duration) -> Result<()> {
        self.conn.busy_timeout(wait).map_err(|e| self.err(e))
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
    /// empty or foreign tree. The snapshot row and the entries are checked against their
    /// digests: a damaged index is an error naming the key, never a wrong tree.
    pub fn manifest(&self, snapshot: i64) -> Result<Manifest> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let row = tx
            .query_row(
                &format!("SELECT {CHECK_COLS} FROM snapshots WHERE id = ?1"),
                [snapshot],
                CheckRow::read,
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some(row) = row else {
            return Err(Error::Other(format!(
                "snapshot {snapshot} was replaced or removed while it was being restored: run the restore again"
            )));
        };
        let manifest_id = row.check()?;
        let m = read_entries(&tx, &self.path, manifest_id).map_err(|e| damaged(&row.key, &e.to_string()))?;
        if m.digest() != row.manifest_digest.as_deref().unwrap_or_default() {
            return Err(damaged(&row.key, "its entries do not match their digest"));
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(m)
    }

    /// Every snapshot with its manifest, each distinct manifest read and checked once (gc,
    /// verify, show): `Err(why)` for a snapshot whose row or entries fail their digests.
    pub fn all_manifests(&self) -> Result<Vec<SnapshotManifest>> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let rows: Vec<(i64, CheckRow)> = {
            let mut st = tx
                .prepare(&format!("SELECT id, {CHECK_COLS} FROM snapshots ORDER BY id"))
                .map_err(|e| self.err(e))?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, CheckRow::read_at(r, 1)?)))
                .map_err(|e| self.err(e))?;
            rows.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))?
        };
        let mut loaded: HashMap<i64, std::result::Result<Arc<Manifest>, String>> = HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for (id, row) in rows {
            let manifest = match row.check() {
                Err(e) => Err(e.to_string()),
                Ok(m) => {
                    let got = match loaded.get(&m) {
                        Some(got) => got.clone(),
                        None => {
                            let got = match read_entries(&tx, &self.path, m) {
                                Ok(man) => Ok(Arc::new(man)),
                                Err(e) => Err(e.to_string()),
                            };
                            loaded.insert(m, got.clone());
                            got
                        }
                    };
                    match got {
                        Ok(man) if Some(man.digest()) == row.manifest_digest => Ok(man),
                        Ok(_) => Err(damaged(&row.key, "its entries do not match their digest").to_string()),
                        Err(e) => Err(damaged(&row.key, &e).to_string()),
                    }
                }
            };
            out.push(SnapshotManifest {
                id,
                key: row.key,
                manifest,
            });
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
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
    /// are updatable) and becomes visible only now, after all its objects are in place. A
    /// manifest already in the index (same digest) is shared, not written again. `objects`
    /// are the (size, mtime, inode) of the objects this save wrote.
    pub fn commit_snapshot(&mut self, new: NewSnapshot) -> Result<i64> {
        let path = self.path.clone();
        let err = |e| Error::index(&path, e);
        let tx = self.begin_write()?;
        let row = new.row;
        let old_manifest: Option<Option<i64>> = tx
            .query_row("SELECT manifest FROM snapshots WHERE key = ?1", [&row.key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?;
        tx.execute("DELETE FROM snapshots WHERE key = ?1", [&row.key])
            .map_err(err)?;
        let digest = new.manifest.digest();
        let existing: Option<i64> = tx
            .query_row("SELECT id FROM manifests WHERE digest = ?1", [&digest], |r| r.get(0))
            .optional()
            .map_err(err)?;
        let manifest_id = match existing {
            Some(m) => m,
            None => {
                tx.execute("INSERT INTO manifests (digest) VALUES (?1)", [&digest])
                    .map_err(err)?;
                let m = tx.last_insert_rowid();
                insert_entries(&tx, m, new.manifest).map_err(err)?;
                m
            }
        };
        let meta = row.meta.to_string();
        let scanner = Some(new.statcache.scanner.as_str());
        let row_digest = CheckRow::of(row, &meta, &digest, scanner).digest();
        tx.execute(
            "INSERT INTO snapshots (key, kind, created_ns, source, tool_version, meta, files, dirs, symlinks, bytes, \
             root_mode, root_uid, root_gid, root_mtime_ns, last_restored_ns, manifest_digest, scanner, manifest, \
             row_digest) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, NULL, ?15, ?16, ?17, ?18)",
            params![
                row.key,
                row.kind,
                row.created_ns,
                row.source.as_os_str().as_bytes(),
                row.tool_version,
                meta,
                row.files as i64,
                row.dirs as i64,
                row.symlinks as i64,
                row.bytes as i64,
                row.root_mode,
                row.root_uid,
                row.root_gid,
                row.root_mtime_ns,
                digest,
                scanner,
                manifest_id,
                row_digest,
            ],
        )
        .map_err(err)?;
        let id = tx.last_insert_rowid();
        if let Some(Some(old)) = old_manifest.filter(|m| *m != Some(manifest_id)) {
            drop_unreferenced_manifest(&tx, old).map_err(err)?;
        }
        record_objects(&tx, new.objects).map_err(err)?;
        // A new key over an unchanged tree (CI's common case) has the same stat cache as the
        // last save from that source: leave the 1 MB record alone.
        if new.keep_statcache {
            tx.commit().map_err(err)?;
            return Ok(id);
        }
        let data = new.statcache.encode();
        let stored: Option<(String, Vec<u8>)> = tx
            .query_row(
                "SELECT scanner, data FROM statcache WHERE source = ?1",
                [row.source.as_os_str().as_bytes()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(err)?;
        if stored.as_ref().map(|(s, d)| (s.as_str(), d.as_slice())) != Some((new.statcache.scanner.as_str(), &data)) {
            tx.execute(
                "INSERT OR REPLACE INTO statcache (source, scanner, data) VALUES (?1, ?2, ?3)",
                params![row.source.as_os_str().as_bytes(), new.statcache.scanner, data],
            )
            .map_err(err)?;
        }
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

    /// Delete snapshots (their entries cascade) in one transaction. It reads before it writes,
    /// so it takes the write lock at BEGIN: deferred, a save committing between its SELECT and
    /// DELETE failed gc at once with "database is locked" (seen with gc beside saves).
    pub fn delete_snapshots(&mut self, ids: &[i64]) -> Result<()> {
        let path = self.path.clone();
        let err = |e| Error::index(&path, e);
        let tx = self.begin_write()?;
        for id in ids {
            let m: Option<Option<i64>> = tx
                .query_row("SELECT manifest FROM snapshots WHERE id = ?1", [id], |r| r.get(0))
                .optional()
                .map_err(err)?;
            tx.execute("DELETE FROM snapshots WHERE id = ?1", [id]).map_err(err)?;
            if let Some(Some(m)) = m {
                drop_unreferenced_manifest(&tx, m).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// (snapshot id, object, size) for every file entry: what gc and `show` count with. Every
    /// manifest is checked against its digest: a damaged one is an error naming its key (gc
    /// must not decide what to delete from a damaged index).
    pub fn object_refs(&self) -> Result<Vec<(i64, ObjectId, u64)>> {
        let mut out = Vec::new();
        for s in self.all_manifests()? {
            let m = s.manifest.map_err(Error::Other)?;
            out.extend(m.files().filter_map(|e| Some((s.id, e.object?, e.size))));
        }
        Ok(out)
    }

    /// Whether this store has ever written an object (the `objects` table is not empty): a
    /// store that caches keeps caching; an empty one is a fresh runner's.
    pub fn has_objects(&self) -> Result<bool> {
        self.conn
            .query_row("SELECT EXISTS (SELECT 1 FROM objects)", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// The (size, mtime, inode) recorded for an object, if any.
    pub fn object_stat(&self, id: &ObjectId) -> Result<Option<ObjectStat>> {
        self.conn
            .prepare_cached("SELECT size, mtime_ns, ino FROM objects WHERE id = ?1")
            .and_then(|mut st| {
                st.query_row([id.to_string()], |r| {
                    Ok(ObjectStat {
                        size: r.get::<_, i64>(0)? as u64,
                        mtime_ns: r.get(1)?,
                        ino: r.get::<_, i64>(2)? as u64,
                    })
                })
                .optional()
            })
            .map_err(|e| self.err(e))
    }

    /// Record objects as just written or verified, in one transaction.
    pub fn record_objects(&mut self, objects: &[(ObjectId, ObjectStat)]) -> Result<()> {
        let path = self.path.clone();
        let err = |e| Error::index(&path, e);
        let tx = self.begin_write()?;
        record_objects(&tx, objects).map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Forget the recorded stats of objects about to be deleted or quarantined.
    pub fn forget_objects(&mut self, ids: &[ObjectId]) -> Result<()> {
        let path = self.path.clone();
        let err = |e| Error::index(&path, e);
        let tx = self.begin_write()?;
        for id in ids {
            tx.execute("DELETE FROM objects WHERE id = ?1", [id.to_string()])
                .map_err(err)?;
        }
        tx.commit().map_err(err)
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

/// Append one event and keep the table a rolling window: rows older than `max_age_ns` before
/// this event and all but the newest `max_events` go. Both deletes are index range scans
/// that find nothing most of the time, so pruning costs microseconds per event.
pub(crate) fn insert_event(idx: &mut Index, ev: &Event, max_age_ns: i64, max_events: i64) -> Result<()> {
    let path = idx.path.clone();
    let err = |e| Error::index(&path, e);
    let tx = idx.begin_write()?;
    tx.execute(
        "INSERT INTO events (time_ns, op, key, template, matched_key, hit, kind, files, bytes, seconds, link, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            ev.time_ns,
            ev.op.as_str(),
            ev.key,
            ev.template,
            ev.matched_key,
            ev.hit.map(|h| h.as_str()),
            ev.kind,
            ev.files as i64,
            ev.bytes as i64,
            ev.seconds,
            ev.link,
            ev.detail.as_ref().map(|d| d.to_string()),
        ],
    )
    .map_err(err)?;
    let id = tx.last_insert_rowid();
    tx.execute("DELETE FROM events WHERE time_ns < ?1", [ev.time_ns - max_age_ns])
        .map_err(err)?;
    tx.execute("DELETE FROM events WHERE id <= ?1", [id - max_events])
        .map_err(err)?;
    tx.commit().map_err(err)
}

/// Every event at or after `since_ns`, oldest first.
pub(crate) fn events_since(idx: &Index, since_ns: i64) -> Result<Vec<Event>> {
    let err = |e| Error::index(&idx.path, e);
    let mut st = idx
        .conn
        .prepare(
            "SELECT time_ns, op, key, template, matched_key, hit, kind, files, bytes, seconds, link, detail \
             FROM events WHERE time_ns >= ?1 ORDER BY time_ns, id",
        )
        .map_err(err)?;
    let rows = st
        .query_map([since_ns], |r| {
            let op: String = r.get(1)?;
            let hit: Option<String> = r.get(5)?;
            let detail: Option<String> = r.get(11)?;
            // A row this version cannot read (a newer envsnap's op) is left out.
            let Some(op) = Op::parse(&op) else {
                return Ok(None);
            };
            Ok(Some(Event {
                time_ns: r.get(0)?,
                op,
                key: r.get(2)?,
                template: r.get(3)?,
                matched_key: r.get(4)?,
                hit: hit.as_deref().and_then(HitKind::parse),
                kind: r.get(6)?,
                files: r.get::<_, i64>(7)? as u64,
                bytes: r.get::<_, i64>(8)? as u64,
                seconds: r.get(9)?,
                link: r.get(10)?,
                detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
            }))
        })
        .map_err(err)?;
    let mut out = Vec::new();
    for r in rows {
        out.extend(r.map_err(err)?);
    }
    Ok(out)
}

fn too_new(path: &Path, have: i64) -> Error {
    Error::Usage(format!(
        "store index {} has schema version {have}, this envsnap knows up to {}: upgrade envsnap",
        path.display(),
        MIGRATIONS.len()
    ))
}

/// SQLite creates the `-wal` and `-shm` files with the index's mode. Made while the index was
/// read-only (0444: chmod by hand, a cache step that kept the modes of a read-only copy), they
/// stayed 0444 when the index was made writable again, and every write after that failed with
/// "attempt to write a readonly database" for good. Ours and read-only while the index is
/// writable by us: they get the index's mode, as SQLite would have made them. Best effort.
fn writable_wal_files(path: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let Ok(db) = std::fs::metadata(path) else {
        return;
    };
    if db.uid() != me || db.mode() & 0o200 == 0 {
        return;
    }
    for suffix in ["-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            if m.is_file() && m.uid() == me && m.mode() & 0o200 == 0 {
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(db.mode() & 0o666));
            }
        }
    }
}

fn is_read_only(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ReadOnly)
}

fn put_statcache(conn: &Connection, source: &Path, cache: &StatCache) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO statcache (source, scanner, data) VALUES (?1, ?2, ?3)",
        params![source.as_os_str().as_bytes(), cache.scanner, cache.encode()],
    )
    .map(|_| ())
}

/// A manifest's entries, in path order.
fn read_entries(conn: &Connection, path: &Path, manifest: i64) -> Result<Manifest> {
    let get_err = |e| Error::index(path, e);
    let mut st = conn
        .prepare_cached(
            "SELECT path, kind, mode, uid, gid, size, mtime_ns, object, target, link_group, xattrs, note \
             FROM entries WHERE manifest = ?1 ORDER BY path",
        )
        .map_err(get_err)?;
    let mut rows = st.query([manifest]).map_err(get_err)?;
    let mut entries = Vec::new();
    while let Some(r) = rows.next().map_err(get_err)? {
        entries.push(entry_from_row(r).map_err(|e| match e {
            EntryError::Sql(e) => Error::index(path, e),
            EntryError::Bad(e) => e,
        })?);
    }
    Ok(Manifest { entries })
}

enum EntryError {
    Sql(rusqlite::Error),
    Bad(Error),
}

impl From<rusqlite::Error> for EntryError {
    fn from(e: rusqlite::Error) -> Self {
        EntryError::Sql(e)
    }
}

impl From<Error> for EntryError {
    fn from(e: Error) -> Self {
        EntryError::Bad(e)
    }
}

/// One entry from `path, kind, mode, uid, gid, size, mtime_ns, object, target, link_group,
/// xattrs, note`.
fn entry_from_row(r: &rusqlite::Row) -> std::result::Result<Entry, EntryError> {
    let object: Option<String> = r.get(7)?;
    let xattrs: Option<Vec<u8>> = r.get(10)?;
    Ok(Entry {
        path: r.get(0)?,
        kind: EntryKind::from_code(r.get(1)?)?,
        mode: r.get(2)?,
        uid: r.get(3)?,
        gid: r.get(4)?,
        size: r.get::<_, i64>(5)? as u64,
        mtime_ns: r.get(6)?,
        object: object.map(|o| o.parse()).transpose()?,
        target: r.get(8)?,
        link_group: r.get::<_, Option<i64>>(9)?.map(|g| g as u64),
        xattrs: match xattrs {
            Some(b) => decode_xattrs(&b)?,
            None => Vec::new(),
        },
        note: r.get(11)?,
    })
}

fn insert_entries(conn: &Connection, manifest: i64, m: &Manifest) -> rusqlite::Result<()> {
    let mut ins = conn.prepare(
        "INSERT INTO entries (manifest, path, kind, mode, uid, gid, size, mtime_ns, object, target, \
         link_group, xattrs, note) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    for e in &m.entries {
        ins.execute(params![
            manifest,
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
        ])?;
    }
    Ok(())
}

/// Delete manifest `m` (its entries cascade) unless a snapshot still references it.
fn drop_unreferenced_manifest(conn: &Connection, m: i64) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM manifests WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM snapshots WHERE manifest = ?1)",
        [m],
    )
    .map(|_| ())
}

fn record_objects(conn: &Connection, objects: &[(ObjectId, ObjectStat)]) -> rusqlite::Result<()> {
    let mut ins =
        conn.prepare_cached("INSERT OR REPLACE INTO objects (id, size, mtime_ns, ino) VALUES (?1, ?2, ?3, ?4)")?;
    for (id, s) in objects {
        ins.execute(params![id.to_string(), s.size as i64, s.mtime_ns, s.ino as i64])?;
    }
    Ok(())
}

/// Data moves that a migration's SQL cannot express, run right after it in the same
/// transaction.
fn migrate_data(tx: &Connection, path: &Path, version: usize) -> Result<()> {
    let err = |e| Error::index(path, e);
    if version != 3 {
        return Ok(());
    }
    // Every snapshot points at the manifest of its digest; the first snapshot with a digest
    // brings the entries. A snapshot saved before schema 2 gets its digest computed here. A
    // stored digest is kept even where the rows no longer match it (a damaged index): loading
    // then reports the damage instead of this migration blessing it.
    let snaps: Vec<(i64, CheckRow)> = {
        let mut st = tx
            .prepare(
                "SELECT id, key, kind, source, tool_version, meta, files, dirs, symlinks, bytes, root_mode, \
                 root_uid, root_gid, root_mtime_ns, manifest_digest, scanner, NULL, NULL FROM snapshots ORDER BY id",
            )
            .map_err(err)?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, CheckRow::read_at(r, 1)?)))
            .map_err(err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(err)?
    };
    for (id, mut row) in snaps {
        let digest = match row.manifest_digest.take() {
            Some(d) => d,
            None => {
                let mut st = tx
                    .prepare_cached(
                        "SELECT path, kind, mode, uid, gid, size, mtime_ns, object, target, link_group, xattrs, note \
                         FROM entries WHERE snapshot = ?1 ORDER BY path",
                    )
                    .map_err(err)?;
                let mut rows = st.query([id]).map_err(err)?;
                let mut entries = Vec::new();
                let mut readable = true;
                while let Some(r) = rows.next().map_err(err)? {
                    match entry_from_row(r) {
                        Ok(e) => entries.push(e),
                        Err(_) => readable = false,
                    }
                }
                if readable {
                    Manifest { entries }.digest()
                } else {
                    // Never matches: the snapshot reads as damaged, as it is.
                    format!("unreadable-{id}")
                }
            }
        };
        tx.execute("INSERT OR IGNORE INTO manifests (digest) VALUES (?1)", [&digest])
            .map_err(err)?;
        let fresh = tx.changes() == 1;
        let m: i64 = tx
            .query_row("SELECT id FROM manifests WHERE digest = ?1", [&digest], |r| r.get(0))
            .map_err(err)?;
        if fresh {
            tx.execute(
                "INSERT INTO manifest_entries SELECT ?1, path, kind, mode, uid, gid, size, mtime_ns, object, \
                 target, link_group, xattrs, note FROM entries WHERE snapshot = ?2",
                [m, id],
            )
            .map_err(err)?;
        }
        row.manifest_digest = Some(digest);
        tx.execute(
            "UPDATE snapshots SET manifest = ?1, manifest_digest = ?2, row_digest = ?3 WHERE id = ?4",
            params![m, row.manifest_digest, row.digest(), id],
        )
        .map_err(err)?;
    }
    tx.execute_batch("DROP TABLE entries; ALTER TABLE manifest_entries RENAME TO entries;")
        .map_err(err)
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

    /// An index written by the schema-2 release (`tests/fixtures/schema2-store`: keys `a` and
    /// `b` over the same tree, `c` over a changed one) is upgraded in place: every snapshot
    /// loads with its digest checked, `a` and `b` share one manifest, and the entries moved.
    #[test]
    fn a_schema_2_index_is_upgraded_and_snapshots_share_manifests() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(INDEX_FILE);
        std::fs::write(&p, include_bytes!("../tests/fixtures/schema2-store/index.sqlite")).unwrap();
        let before = Connection::open(&p).unwrap();
        assert_eq!(
            before
                .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            2
        );
        drop(before);
        let idx = Index::open(&p).unwrap();
        assert_eq!(idx.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let m: Vec<Manifest> = ["a", "b", "c"]
            .iter()
            .map(|k| idx.manifest(idx.get(k).unwrap().unwrap().id).unwrap())
            .collect();
        assert_eq!(m[0].entries, m[1].entries);
        assert_ne!(m[0].entries, m[2].entries);
        let files: Vec<String> = m[0].entries.iter().map(Entry::path_lossy).collect();
        assert_eq!(files, ["a.txt", "link", "run.sh", "sub", "sub/hard", "sub/token"]);
        let count = |sql: &str| idx.conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count("SELECT count(*) FROM manifests"), 2);
        assert_eq!(count("SELECT count(DISTINCT manifest) FROM snapshots"), 2);
        assert_eq!(count("SELECT count(*) FROM entries"), 12);
        assert!(idx.all_manifests().unwrap().iter().all(|s| s.manifest.is_ok()));
    }

    fn row(key: &str) -> SnapshotRow {
        SnapshotRow {
            id: 0,
            key: key.into(),
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
        }
    }

    fn commit(idx: &mut Index, key: &str, m: &Manifest) -> i64 {
        idx.commit_snapshot(NewSnapshot {
            row: &row(key),
            manifest: m,
            statcache: &StatCache::default(),
            keep_statcache: false,
            objects: &[],
        })
        .unwrap()
    }

    /// A new key over the same content adds a snapshot row, not a second copy of the entries;
    /// the shared manifest goes with the last snapshot that references it.
    #[test]
    fn same_content_under_new_keys_shares_one_manifest_until_the_last_goes() {
        let d = tempfile::tempdir().unwrap();
        let mut idx = Index::open(&d.path().join(INDEX_FILE)).unwrap();
        let m = Manifest {
            entries: vec![file("a", 1), file("b", 2)],
        };
        let other = Manifest {
            entries: vec![file("a", 3)],
        };
        let count = |idx: &Index, t: &str| {
            idx.conn
                .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get::<_, i64>(0))
                .unwrap()
        };
        let a = commit(&mut idx, "a", &m);
        let b = commit(&mut idx, "b", &m);
        assert_eq!((count(&idx, "manifests"), count(&idx, "entries")), (1, 2));
        assert_eq!(idx.manifest(b).unwrap().entries, m.entries);
        // Re-saving `a` with other content keeps the manifest `b` uses.
        let a2 = commit(&mut idx, "a", &other);
        assert_eq!((count(&idx, "manifests"), count(&idx, "entries")), (2, 3));
        assert!(idx.manifest(a).is_err(), "the replaced snapshot is gone");
        idx.delete_snapshots(&[b]).unwrap();
        assert_eq!((count(&idx, "manifests"), count(&idx, "entries")), (1, 1));
        assert_eq!(idx.manifest(a2).unwrap().entries, other.entries);
        idx.delete_snapshots(&[a2]).unwrap();
        assert_eq!((count(&idx, "manifests"), count(&idx, "entries")), (0, 0));
    }

    /// Rows changed outside envsnap (a flipped bit, an edited database) are never loaded as a
    /// manifest: the error names the key, escaped.
    #[test]
    fn a_changed_row_or_entry_fails_its_digest_naming_the_key() {
        let d = tempfile::tempdir().unwrap();
        let mut idx = Index::open(&d.path().join(INDEX_FILE)).unwrap();
        let m = Manifest {
            entries: vec![file("a", 1), file("b", 2)],
        };
        let id = commit(&mut idx, "k", &m);
        for (sql, undo) in [
            ("UPDATE entries SET mode = 420 + 1", "UPDATE entries SET mode = 420"),
            (
                "UPDATE entries SET mtime_ns = 6 WHERE path = X'62'",
                "UPDATE entries SET mtime_ns = 5",
            ),
            (
                "UPDATE entries SET path = X'63' WHERE path = X'62'",
                "UPDATE entries SET path = X'62' WHERE path = X'63'",
            ),
            (
                "UPDATE snapshots SET root_mode = 511",
                "UPDATE snapshots SET root_mode = 493",
            ),
            (
                "UPDATE snapshots SET root_mtime_ns = 8",
                "UPDATE snapshots SET root_mtime_ns = 7",
            ),
            (
                "UPDATE snapshots SET key = 'k\n' || char(27) || '[2J'",
                "UPDATE snapshots SET key = 'k'",
            ),
        ] {
            idx.manifest(id).unwrap();
            idx.conn.execute_batch(sql).unwrap();
            let e = idx.manifest(id).unwrap_err().to_string();
            assert!(e.contains("snapshot k") && e.contains("damaged"), "{sql}: {e}");
            assert!(!e.chars().any(|c| c.is_control()), "{sql}: {e:?}");
            assert!(idx.all_manifests().unwrap()[0].manifest.is_err(), "{sql}");
            assert!(idx.object_refs().is_err(), "{sql}");
            idx.conn.execute_batch(undo).unwrap();
        }
        idx.manifest(id).unwrap();
    }

    #[test]
    fn wal_files_made_while_the_index_was_read_only_are_writable_once_it_is() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(INDEX_FILE);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let side = |s: &str| PathBuf::from(format!("{}{s}", p.display()));
        drop(Index::open(&p).unwrap());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
        // A restore from the read-only index: SQLite makes its -wal and -shm with mode 0444.
        let ro = Index::open(&p).unwrap();
        assert!(side("-shm").exists(), "the read-only open made no -shm");
        assert_eq!(mode(&side("-shm")), 0o444);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let rw = Index::open(&p).unwrap();
        for s in ["-wal", "-shm"] {
            if side(s).exists() {
                assert_eq!(mode(&side(s)), 0o644, "{s}");
            }
        }
        rw.conn.execute_batch("CREATE TABLE t (x)").unwrap();
        drop((ro, rw));
    }

    #[test]
    fn same_snapshot_compares_the_stored_digest() {
        let d = tempfile::tempdir().unwrap();
        let mut idx = Index::open(&d.path().join(INDEX_FILE)).unwrap();
        let m = Manifest {
            entries: vec![file("a", 1), file("b", 2)],
        };
        let mut row = row("k");
        let sc = StatCache::default();
        let id = idx
            .commit_snapshot(NewSnapshot {
                row: &row,
                manifest: &m,
                statcache: &sc,
                keep_statcache: false,
                objects: &[],
            })
            .unwrap();
        assert_eq!(idx.same_snapshot(&row, &m).unwrap(), Some(id));
        let mut changed = m.clone();
        changed.entries[1].mode = 0o600;
        assert_eq!(idx.same_snapshot(&row, &changed).unwrap(), None);
        row.root_mode = 0o700;
        assert_eq!(idx.same_snapshot(&row, &m).unwrap(), None);
    }

    /// The events table keeps the newest `max_events` rows and none older than the window,
    /// pruned as events are appended.
    #[test]
    fn events_are_a_rolling_window_by_count_and_age() {
        let d = tempfile::tempdir().unwrap();
        let mut idx = Index::open(&d.path().join(INDEX_FILE)).unwrap();
        let ev = |t: i64, key: &str| Event {
            time_ns: t,
            op: Op::Restore,
            key: key.into(),
            template: None,
            matched_key: None,
            hit: Some(HitKind::Miss),
            kind: None,
            files: 0,
            bytes: 0,
            seconds: 0.5,
            link: None,
            detail: Some(serde_json::json!({"n": 1})),
        };
        for (t, k) in [(10, "a"), (20, "b"), (30, "c"), (40, "d")] {
            insert_event(&mut idx, &ev(t, k), 1000, 3).unwrap();
        }
        let keys = |idx: &Index| {
            events_since(idx, i64::MIN)
                .unwrap()
                .into_iter()
                .map(|e| e.key)
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&idx), ["b", "c", "d"]);
        assert_eq!(events_since(&idx, 30).unwrap(), vec![ev(30, "c"), ev(40, "d")]);
        // An event at 2035 with a 1000 ns window drops everything before 1035.
        insert_event(&mut idx, &ev(2035, "e"), 1000, 3).unwrap();
        assert_eq!(keys(&idx), ["e"]);
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
