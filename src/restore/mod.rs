//! Restore, as plan-then-apply: [`plan`] validates the snapshot and the destination and
//! writes nothing (it is `--dry-run`); [`Plan::apply`] materializes the tree in a temporary
//! sibling of the destination and returns a [`Staged`] tree, which an adapter may fix up
//! before [`Staged::commit`] renames it into place. A failed or interrupted restore leaves no
//! half tree at the destination: dropping a `Staged` removes it.

pub mod link;
mod seed;
pub mod staging;

pub use link::{LinkMode, LinkStats, LinkUsed, Stamp};
pub use staging::Leftovers;

use crate::error::{Error, IoContext, Result};
use crate::index::SnapshotRow;
use crate::progress::{self, Progress};
use crate::repo::Store;
use crate::snapshot::{Entry, EntryKind, Manifest};
use crate::store::ObjectId;
use link::{materialize, ns_to_filetime, set_xattrs};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub link: LinkMode,
    /// Replace a non-empty destination.
    pub force: bool,
    /// Restore owners (default: when running as root).
    pub chown: bool,
    /// Where objects the local store lacks come from (a remote); without one they are an error.
    pub source: Option<Source>,
}

/// Objects the local store lacks, delivered straight into the tree a restore builds, so each
/// file is written once (a remote: `remote::DirectSource`).
pub trait ObjectSource: Send + Sync {
    /// Hand each of `wanted` (object, mtime of its first entry), verified, to `put` once;
    /// `put` may be called from several threads at once.
    fn fetch(&self, wanted: &[(ObjectId, i64)], put: &(dyn Fn(&ObjectId, &[u8]) -> Result<()> + Sync)) -> Result<()>;
}

/// An [`ObjectSource`] in [`RestoreOptions`].
#[derive(Clone)]
pub struct Source(pub std::sync::Arc<dyn ObjectSource>);

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Source(..)")
    }
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            link: LinkMode::Auto,
            force: false,
            chown: is_root(),
            source: None,
        }
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Everything a restore will do, computed without writing.
pub struct Plan {
    pub snapshot: SnapshotRow,
    pub manifest: Manifest,
    pub dest: PathBuf,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub link: LinkMode,
    pub chown: bool,
    pub force: bool,
    /// The destination exists and is not empty: it will be replaced (`--force`).
    pub replaces: bool,
    /// Paths an adapter will rewrite: they get a private copy, never a link to the store.
    pub private_copies: HashSet<Vec<u8>>,
    /// Without `chown` (not root): entries saved with another owner, which will be the
    /// restoring user's (see [`Plan::owners_not_set`]).
    pub foreign_owners: u64,
    /// The first such entry: (path, uid, gid).
    pub foreign_example: Option<(String, u32, u32)>,
    /// Where objects the local store lacks come from ([`RestoreOptions::source`]).
    pub source: Option<Source>,
}

impl Plan {
    /// What a restore without `chown` cannot reproduce, as one line for a warning; None when
    /// every entry is owned as it will be.
    pub fn owners_not_set(&self) -> Option<String> {
        let (path, uid, gid) = self.foreign_example.as_ref()?;
        Some(format!(
            "not running as root: {} entries saved with other owners (e.g. {path:?} uid {uid} gid {gid}) are \
             restored as owned by you, and their setuid/setgid bits may be dropped; restore as root to keep owners",
            self.foreign_owners
        ))
    }
}

/// Is `p` missing, an empty directory, or something else (and what, for the message)?
enum DestState {
    Missing,
    Empty,
    /// "is not empty", "is a file", …: what a restore without `--force` refuses to replace.
    Occupied(&'static str),
}

fn dest_state(p: &Path) -> Result<DestState> {
    match fs::symlink_metadata(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(DestState::Missing),
        Err(e) => Err(Error::io("stat", p, e)),
        Ok(m) if m.is_dir() => {
            let mut rd = fs::read_dir(p).at("list", p)?;
            Ok(if rd.next().is_none() {
                DestState::Empty
            } else {
                DestState::Occupied("exists and is not empty")
            })
        }
        Ok(m) if m.is_file() => Ok(DestState::Occupied("is a file")),
        Ok(m) if m.file_type().is_symlink() => Ok(DestState::Occupied("is a symlink")),
        Ok(_) => Ok(DestState::Occupied("is a special file")),
    }
}

/// The absolute destination for `dest`. `..` means what the kernel makes of it, as it does for
/// a save's source: the part up to the last `..` is resolved on the filesystem (through
/// symlinks, so it must exist); the rest is created by the restore.
pub fn resolve_dest(dest: &Path) -> Result<PathBuf> {
    use std::path::Component;
    let abs = std::path::absolute(dest).at("resolve", dest)?;
    let comps: Vec<Component> = abs.components().collect();
    let Some(last) = comps.iter().rposition(|c| *c == Component::ParentDir) else {
        return Ok(abs);
    };
    let head: PathBuf = comps[..=last].iter().collect();
    let tail: PathBuf = comps[last + 1..].iter().collect();
    Ok(fs::canonicalize(&head).at("resolve", &head)?.join(tail))
}

/// Validate the snapshot's entries and the destination. Writes nothing.
pub fn plan(snapshot: &SnapshotRow, manifest: Manifest, dest: &Path, opts: &RestoreOptions) -> Result<Plan> {
    manifest.validate_tree(&snapshot.key)?;
    let dest = resolve_dest(dest)?;
    if dest.parent().is_none() {
        return Err(Error::Usage(format!("cannot restore a tree onto {}", dest.display())));
    }
    let replaces = match dest_state(&dest)? {
        DestState::Missing | DestState::Empty => false,
        DestState::Occupied(_) if opts.force => true,
        DestState::Occupied(what) => {
            return Err(Error::Usage(format!(
                "{} {what}: pass --force to replace it, or restore elsewhere",
                dest.display()
            )))
        }
    };
    let count = |k| manifest.entries.iter().filter(|e| e.kind == k).count() as u64;
    // SAFETY: geteuid/getegid have no preconditions and cannot fail.
    let me = unsafe { (libc::geteuid(), libc::getegid()) };
    let foreign: Vec<&Entry> = if opts.chown {
        Vec::new()
    } else {
        manifest.entries.iter().filter(|e| (e.uid, e.gid) != me).collect()
    };
    Ok(Plan {
        foreign_owners: foreign.len() as u64,
        foreign_example: foreign.first().map(|e| (e.path_lossy(), e.uid, e.gid)),
        files: count(EntryKind::File),
        dirs: count(EntryKind::Dir),
        symlinks: count(EntryKind::Symlink),
        bytes: manifest.files().map(|e| e.size).sum(),
        snapshot: snapshot.clone(),
        manifest,
        dest,
        link: opts.link,
        chown: opts.chown,
        force: opts.force,
        replaces,
        private_copies: HashSet::new(),
        source: opts.source.clone(),
    })
}

fn rel_path(base: &Path, rel: &[u8]) -> PathBuf {
    base.join(OsStr::from_bytes(rel))
}

/// Files whose objects the local store lacks, fetched from `source` and written straight into
/// the staged tree (one write each; every path sharing an object gets the same bytes).
fn write_fetched(
    source: &dyn ObjectSource,
    entries: &[&Entry],
    base: &Path,
    chown: bool,
    stats: &LinkStats,
    progress: Option<&dyn Progress>,
) -> Result<HashMap<Vec<u8>, Stamp>> {
    let mut by_id: HashMap<ObjectId, Vec<&Entry>> = HashMap::new();
    let mut wanted = Vec::new();
    for e in entries {
        let id = e.object.expect("files carry objects");
        let users = by_id.entry(id).or_default();
        if users.is_empty() {
            wanted.push((id, e.mtime_ns));
        }
        users.push(e);
    }
    let stamps: std::sync::Mutex<HashMap<Vec<u8>, Stamp>> = Default::default();
    let delivered: std::sync::Mutex<HashSet<ObjectId>> = Default::default();
    source.fetch(&wanted, &|id, content| {
        let Some(users) = by_id.get(id) else {
            return Ok(()); // not asked for
        };
        if !delivered.lock().unwrap_or_else(|p| p.into_inner()).insert(*id) {
            return Ok(());
        }
        for e in users {
            let p = rel_path(base, &e.path);
            let stamp = link::write_file(e, &p, content, chown)?;
            stats.record(LinkUsed::Copy);
            progress::with(progress, |pr| pr.inc(e.size));
            stamps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(e.path.clone(), stamp);
        }
        Ok(())
    })?;
    let delivered = delivered.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some((id, _)) = wanted.iter().find(|(id, _)| !delivered.contains(id)) {
        // The source reports its own failures; this is a source that skipped one.
        return Err(Error::MissingObject { id: id.to_string() });
    }
    Ok(stamps.into_inner().unwrap_or_else(|p| p.into_inner()))
}

impl Plan {
    /// Materialize the tree in a temporary sibling of the destination.
    pub fn apply(self, store: &Store, progress: Option<&dyn Progress>) -> Result<Staged> {
        let _lock = store.lock_shared()?;
        // `save dir . --store .envsnap` skips the store; replacing `.` must not delete it.
        let canon_dest = self.dest.canonicalize().unwrap_or_else(|_| self.dest.clone());
        if store.root().starts_with(&canon_dest) || canon_dest.starts_with(store.root()) {
            return Err(Error::Usage(format!(
                "cannot restore to {}: the store {} is there; restore elsewhere or move the store",
                self.dest.display(),
                store.root().display()
            )));
        }
        let parent = self.dest.parent().expect("checked in plan").to_path_buf();
        fs::create_dir_all(&parent).at("create directory", &parent)?;
        staging::clean(&self.dest);
        let record = staging::Record::create(store.root(), &self.dest);
        let staging = tempfile::Builder::new()
            .prefix(&staging::prefix(&self.dest))
            .tempdir_in(&parent)
            .at("create a staging directory in", &parent)?;
        let lease = staging::Lease::take(staging.path());
        let base = staging.path().to_path_buf();

        // Directories first (sorted order puts parents before children); owner-writable until
        // commit so adapters can still write into them.
        for e in self.manifest.entries.iter().filter(|e| e.kind == EntryKind::Dir) {
            let p = rel_path(&base, &e.path);
            fs::create_dir(&p).at("create directory", &p)?;
        }

        // Files: one per hard-link group first (in parallel), then the other members as links.
        let stats = LinkStats::default();
        let mut leaders: HashMap<u64, &Entry> = HashMap::new();
        let mut firsts: Vec<&Entry> = Vec::new();
        let mut followers = Vec::new();
        for e in self.manifest.files() {
            match e.link_group {
                Some(g) if leaders.contains_key(&g) => followers.push(e),
                Some(g) => {
                    leaders.insert(g, e);
                    firsts.push(e);
                }
                None => firsts.push(e),
            }
        }
        // With a source, what the local store lacks is fetched straight into place below.
        let fetched: Vec<&Entry> = match &self.source {
            Some(_) => {
                let (here, elsewhere) = firsts
                    .into_iter()
                    .partition(|e| store.objects.exists(&e.object.expect("files carry objects")));
                firsts = here;
                elsewhere
            }
            None => Vec::new(),
        };
        progress::with(progress, |p| p.start("restoring", self.bytes));
        let mut stamps: HashMap<Vec<u8>, Stamp> = firsts
            .par_iter()
            .map(|e| {
                let p = rel_path(&base, &e.path);
                let mode = if self.private_copies.contains(&e.path) {
                    LinkMode::Copy
                } else {
                    self.link
                };
                let (_, stamp) = materialize(store, e, &p, mode, self.chown, &stats)?;
                progress::with(progress, |pr| pr.inc(e.size));
                Ok((e.path.clone(), stamp))
            })
            .collect::<Result<_>>()?;
        if let (Some(Source(source)), false) = (&self.source, fetched.is_empty()) {
            stamps.extend(write_fetched(&**source, &fetched, &base, self.chown, &stats, progress)?);
        }
        progress::with(progress, |p| p.finish());
        stats.record_checked(store)?;
        for e in &followers {
            let leader = leaders[&e.link_group.expect("followers have a group")];
            let (from, to) = (rel_path(&base, &leader.path), rel_path(&base, &e.path));
            fs::hard_link(&from, &to).at("hardlink", &to)?;
        }
        // Linking followers changed their inode's ctime: stamp every hard-link group anew.
        for e in self.manifest.files().filter(|e| e.link_group.is_some()) {
            let p = rel_path(&base, &e.path);
            stamps.insert(e.path.clone(), Stamp::of(&fs::symlink_metadata(&p).at("stat", &p)?));
        }

        for e in self.manifest.entries.iter().filter(|e| e.kind == EntryKind::Symlink) {
            let p = rel_path(&base, &e.path);
            let target = OsStr::from_bytes(e.target.as_deref().expect("validated"));
            std::os::unix::fs::symlink(target, &p).at("create symlink", &p)?;
            if self.chown {
                std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid)).at("chown", &p)?;
            }
            filetime::set_symlink_file_times(&p, ns_to_filetime(e.mtime_ns), ns_to_filetime(e.mtime_ns))
                .at("set mtime of", &p)?;
        }

        Ok(Staged {
            dir: Some(staging),
            _lease: lease,
            _record: record,
            link_used: stats.summary(),
            hardlink_copied: stats.hardlink_copied(),
            plan: self,
            stamps,
        })
    }
}

/// A fully materialized tree waiting to be renamed into place.
pub struct Staged {
    dir: Option<tempfile::TempDir>,
    /// Held while the restore runs: its staging directory is not a dead one's leftover.
    _lease: Option<staging::Lease>,
    /// This restore in `<store>/restores/`, so gc can clean up if it is killed.
    _record: Option<staging::Record>,
    link_used: String,
    hardlink_copied: u64,
    pub plan: Plan,
    /// Each restored file as materialized (see `seed`).
    stamps: HashMap<Vec<u8>, Stamp>,
}

impl Staged {
    /// Where the tree is now (write fixups here, for the final path `plan.dest`).
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("not committed").path()
    }

    /// The link mode actually used: `reflink`, `copy`, `hardlink` or a `+`-joined mix.
    pub fn link_used(&self) -> &str {
        &self.link_used
    }

    /// Files a hardlink restore copied because linking would have widened their mode.
    pub fn hardlink_copied(&self) -> u64 {
        self.hardlink_copied
    }

    /// Set directory attributes (children first, so their mtimes stick), then rename the tree
    /// into place, replacing the destination only if it was empty or `--force` was given.
    pub fn commit(mut self) -> Result<Committed> {
        let base = self.path().to_path_buf();
        // Every file is written (adapters' fixups included) and the tree is not visible yet:
        // read the filesystem's clock and take the stat-cache rows for the files still exactly
        // as materialized (see `seed`). Without the clock (say, the disk filled up) the restore
        // stands; only the seeding is skipped.
        let seed_rows = match seed::fs_clock(&base) {
            Ok(clock) => seed::rows(&base, &self.plan, &self.stamps, clock),
            Err(_) => Vec::new(),
        };
        let plan = &self.plan;
        for e in plan.manifest.entries.iter().rev().filter(|e| e.kind == EntryKind::Dir) {
            set_dir_attrs(
                &rel_path(&base, &e.path),
                e.uid,
                e.gid,
                e.mode,
                e.mtime_ns,
                plan.chown,
                e,
            )?;
        }
        let s = &plan.snapshot;
        let root_entry = Entry {
            path: Vec::new(),
            kind: EntryKind::Dir,
            mode: s.root_mode,
            uid: s.root_uid,
            gid: s.root_gid,
            size: 0,
            mtime_ns: s.root_mtime_ns,
            object: None,
            target: None,
            link_group: None,
            xattrs: Vec::new(),
            note: None,
        };
        set_dir_attrs(
            &base,
            s.root_uid,
            s.root_gid,
            s.root_mode,
            s.root_mtime_ns,
            plan.chown,
            &root_entry,
        )?;

        let staged = self.dir.take().expect("not committed").keep();
        let dest = plan.dest.clone();
        let result = match dest_state(&dest) {
            Ok(DestState::Missing) | Ok(DestState::Empty) => {
                // rename(2) replaces an empty directory atomically.
                fs::rename(&staged, &dest).at("rename into place", &dest)
            }
            Ok(DestState::Occupied(_)) if plan.force => staging::swap(&staged, &dest),
            Ok(DestState::Occupied(what)) => Err(Error::Usage(format!(
                "{} appeared while restoring and {}: pass --force to replace it",
                dest.display(),
                what.trim_start_matches("exists and ")
            ))),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = remove_tree(&staged);
        }
        result?;
        Ok(Committed {
            snapshot: self.plan.snapshot.id,
            dest: self.plan.dest.clone(),
            seed_rows,
        })
    }
}

/// A tree in place at `dest`.
pub struct Committed {
    snapshot: i64,
    dest: PathBuf,
    /// The stat-cache rows taken before the rename (see `seed`).
    seed_rows: Vec<(Vec<u8>, crate::statcache::StatRow)>,
}

impl Committed {
    /// Write the destination's stat cache from what was restored, so the next save from there
    /// does not read the restored files again. Returns the number of files cached. A failure
    /// here costs only that re-read: callers report it and keep the restore.
    pub fn seed_statcache(self, store: &Store) -> Result<u64> {
        seed::seed(store, self)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            let _ = remove_tree(&d.keep());
        }
    }
}

fn set_dir_attrs(p: &Path, uid: u32, gid: u32, mode: u32, mtime_ns: i64, chown: bool, e: &Entry) -> Result<()> {
    if chown {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).at("chown", p)?;
    }
    set_xattrs(p, e)?;
    fs::set_permissions(p, Permissions::from_mode(mode)).at("chmod", p)?;
    filetime::set_file_mtime(p, ns_to_filetime(mtime_ns)).at("set mtime of", p)
}

/// Remove what killed restores of `dest` left beside it, and put back the old tree a killed
/// `--force` restore had moved aside while the destination is missing (see [`staging`]).
/// `Plan::apply` does this too; callers run it before [`plan`] so a recovered tree is seen.
pub fn clean_leftovers(dest: &Path) -> Leftovers {
    match std::path::absolute(dest) {
        Ok(d) if d.parent().is_some() => staging::clean(&d),
        _ => Leftovers::default(),
    }
}

/// `rm -rf` that also copes with read-only directories (restored trees may have them).
pub fn remove_tree(p: &Path) -> io::Result<()> {
    // What `--force` replaced (or a killed restore left) may be a file or a symlink, not a tree.
    match fs::symlink_metadata(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Ok(m) if !m.is_dir() => return fs::remove_file(p),
        _ => {}
    }
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            for d in walkdir::WalkDir::new(p).into_iter().filter_map(|e| e.ok()) {
                if d.file_type().is_dir() {
                    let _ = fs::set_permissions(d.path(), Permissions::from_mode(0o700));
                }
            }
            fs::remove_dir_all(p)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Restore one file into an existing tree (the apt adapter): a temporary file next to `dest`
/// renamed over it, so a reader sees the old file or the new one, never a partial one.
pub fn place_file(store: &Store, entry: &Entry, dest: &Path, link: LinkMode, chown: bool) -> Result<LinkUsed> {
    let parent = dest
        .parent()
        .ok_or_else(|| Error::Usage(format!("cannot write {}", dest.display())))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A name unique to this process and call; materialize creates it with O_EXCL.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = parent.join(format!(".{name}.envsnap-{}-{seq}", std::process::id()));
    let stats = LinkStats::default();
    let (used, _) = materialize(store, entry, &tmp, link, chown, &stats).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    stats.record_checked(store)?;
    fs::rename(&tmp, dest)
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
        .at("rename into place", dest)?;
    Ok(used)
}

/// Set an entry's owner, mode, xattrs and mtime on an existing path (apt: directories).
pub fn apply_attrs(path: &Path, entry: &Entry, chown: bool) -> Result<()> {
    match entry.kind {
        EntryKind::Symlink => {
            if chown {
                std::os::unix::fs::lchown(path, Some(entry.uid), Some(entry.gid)).at("chown", path)?;
            }
            let t = ns_to_filetime(entry.mtime_ns);
            filetime::set_symlink_file_times(path, t, t).at("set mtime of", path)
        }
        _ => set_dir_attrs(path, entry.uid, entry.gid, entry.mode, entry.mtime_ns, chown, entry),
    }
}
