//! Seeding the stat cache of a restored tree, so the save that usually follows a restore in CI
//! (restore, install a little more, save) reads only what changed, not every file again.
//!
//! A restore knows each file's object: it just wrote it. What it must not do is vouch for a file
//! someone else changed after the restore wrote it, with a stat that still matches. That is
//! git's "racy clean" problem, and the answer is the filesystem's own clock: after every file is
//! written (and before the tree is visible at its final path) the restore creates a probe file
//! in the staged tree and touches it until its ctime moves past its creation's timestamp tick
//! (≤ 50 ms; one jiffy on ext4, immediate with multigrain timestamps). That ctime is later than
//! every restored file's, and any later change to a file gives it a ctime at least as late, which
//! no longer matches. A restored file whose ctime is strictly older is cached. Where the clock
//! does not move in time (whole-second timestamps), files in the probe's tick are left out, as
//! are files an adapter rewrote (their content is no longer the object's).

use super::Committed;
use crate::error::{IoContext, Result};
use crate::snapshot::EntryKind;
use crate::statcache::{StatCache, StatRow};
use crate::Store;
use rayon::prelude::*;
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

/// Write the stat cache of the committed tree: every restored file not rewritten by an adapter
/// and older than the clock probe. Returns how many files it holds.
pub(super) fn seed(store: &Store, done: &Committed) -> Result<u64> {
    let Some(clock) = done.clock else {
        return Ok(0);
    };
    // The next save of this tree must use the same scanner for its notes to be valid; snapshots
    // from before the scanner was recorded are not seeded.
    let Some(scanner) = store.index().snapshot_scanner(done.snapshot)? else {
        return Ok(0);
    };
    // A save keys its cache by the absolute, not canonicalized, path: the same here.
    let dest = std::path::absolute(&done.dest).at("resolve", &done.dest)?;
    let rows: Vec<(Vec<u8>, StatRow)> = done
        .manifest
        .entries
        .par_iter()
        .filter(|e| e.kind == EntryKind::File && !done.rewritten.contains(&e.path))
        .filter_map(|e| {
            let object = e.object?;
            let m = std::fs::symlink_metadata(dest.join(OsStr::from_bytes(&e.path))).ok()?;
            let ctime_ns = m.ctime() * 1_000_000_000 + m.ctime_nsec();
            let mtime_ns = m.mtime() * 1_000_000_000 + m.mtime_nsec();
            let exec = m.mode() & 0o111 != 0;
            (m.is_file() && m.len() == e.size && exec == object.exec && ctime_ns < clock && mtime_ns < clock).then(
                || {
                    (
                        e.path.clone(),
                        StatRow {
                            size: e.size,
                            mtime_ns,
                            ctime_ns,
                            ino: m.ino(),
                            object,
                            note: e.note.clone(),
                        },
                    )
                },
            )
        })
        .collect();
    let cache = StatCache::new(scanner, rows);
    store.index().put_statcache(&dest, &cache)?;
    Ok(cache.len() as u64)
}
