//! Seeding the stat cache of a restored tree, so the save that usually follows a restore in CI
//! (restore, install a little more, save) reads only what changed, not every file again.
//!
//! A restore knows each file's object: it just wrote it. What it must not do is vouch for a file
//! whose content is not that object's any more, with a stat that still matches.
//! - Each file's inode and ctime are stamped the moment it is complete (`link::Stamp`: from the
//!   open file after its attributes are set, or right after the hard link). Only a file still
//!   exactly so is cached: a file an adapter replaced (a venv's retargeted `bin/python`) or
//!   anyone wrote to since has another inode or a later ctime. Files an adapter rewrote are
//!   excluded by name as well.
//! - Later changes are git's "racy clean" problem, answered with the filesystem's own clock:
//!   once every file is written, the restore creates a probe file in the staged tree and touches
//!   it until its ctime moves past its creation's timestamp tick (≤ 50 ms; one jiffy on ext4,
//!   immediate with multigrain timestamps). That ctime is later than every restored file's, and
//!   any later change to a file gives it a ctime at least as late, which no longer matches. A
//!   restored file whose ctime is strictly older is cached. Where the clock does not move in
//!   time (whole-second timestamps), files in the probe's tick are left out.
//! - The rows are taken in the staging directory, before the rename: nothing at the final path
//!   can be swapped in between. (A hardlinked file is the store object's inode, reachable through
//!   the store; writing to it there corrupts the store whatever the cache says, which `verify`
//!   reports. See the hardlink caveat in the README.)

use super::{Committed, Plan, Stamp};
use crate::error::{IoContext, Result};
use crate::snapshot::EntryKind;
use crate::statcache::{StatCache, StatRow};
use crate::Store;
use rayon::prelude::*;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The filesystem's idea of "now" in the staged tree, past the timestamp tick of everything
/// written so far: the ctime of a probe file, touched until it moves (see the module doc).
pub(super) fn fs_clock(staged: &Path) -> Result<i64> {
    let probe = tempfile::Builder::new()
        .prefix(".envsnap-clock")
        .tempfile_in(staged)
        .at("create a clock probe in", staged)?;
    let ctime = || -> Result<i64> {
        let m = probe.as_file().metadata().at("stat", probe.path())?;
        Ok(m.ctime() * 1_000_000_000 + m.ctime_nsec())
    };
    let first = ctime()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(50);
    loop {
        probe
            .as_file()
            .set_modified(std::time::SystemTime::now())
            .at("touch", probe.path())?;
        let now = ctime()?;
        if now > first {
            return Ok(now);
        }
        if std::time::Instant::now() > deadline {
            return Ok(first);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The stat-cache rows for a staged tree, taken in the staging directory after the clock probe
/// and before the rename: every restored file not rewritten by an adapter, still exactly as
/// materialized (same inode and ctime: nothing replaced or wrote to it since), and older than
/// the clock.
pub(super) fn rows(
    staged: &Path,
    plan: &Plan,
    stamps: &HashMap<Vec<u8>, Stamp>,
    clock: i64,
) -> Vec<(Vec<u8>, StatRow)> {
    plan.manifest
        .entries
        .par_iter()
        .filter(|e| e.kind == EntryKind::File && !plan.private_copies.contains(&e.path))
        .filter_map(|e| {
            let object = e.object?;
            let stamp = stamps.get(&e.path)?;
            let m = std::fs::symlink_metadata(staged.join(OsStr::from_bytes(&e.path))).ok()?;
            let mtime_ns = m.mtime() * 1_000_000_000 + m.mtime_nsec();
            let exec = m.mode() & 0o111 != 0;
            let unchanged = Stamp::of(&m) == *stamp && m.is_file() && m.len() == e.size && exec == object.exec;
            (unchanged && stamp.ctime_ns < clock && mtime_ns < clock).then(|| {
                (
                    e.path.clone(),
                    StatRow {
                        size: e.size,
                        mtime_ns,
                        ctime_ns: stamp.ctime_ns,
                        ino: stamp.ino,
                        object,
                        note: e.note.clone(),
                    },
                )
            })
        })
        .collect()
}

/// Write the rows as the stat cache of the committed tree, under the snapshot's scanner id.
/// Returns how many files it holds.
pub(super) fn seed(store: &Store, done: Committed) -> Result<u64> {
    // The next save of this tree must use the same scanner for its notes to be valid; snapshots
    // from before the scanner was recorded are not seeded.
    let Some(scanner) = store.index().snapshot_scanner(done.snapshot)? else {
        return Ok(0);
    };
    // A save keys its cache by the absolute, not canonicalized, path: the same here.
    let dest = std::path::absolute(&done.dest).at("resolve", &done.dest)?;
    let cache = StatCache::new(scanner, done.seed_rows);
    store.index().put_statcache(&dest, &cache)?;
    Ok(cache.len() as u64)
}
