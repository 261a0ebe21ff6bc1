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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::SnapshotRow;
    use crate::snapshot::{Entry, Manifest};

    /// Only files still exactly as materialized are vouched for: one replaced by another file of
    /// the same size (a venv's retargeted `bin/python`), one written to in place, and one an
    /// adapter rewrote by name are all left out.
    #[test]
    fn rows_skip_files_replaced_written_or_rewritten_since_they_were_stamped() {
        let d = tempfile::tempdir().unwrap();
        let names = ["kept", "replaced", "rewritten", "written"]; // sorted, as a manifest is
        let mut entries = Vec::new();
        let mut stamps = HashMap::new();
        for n in names {
            let p = d.path().join(n);
            std::fs::write(&p, b"same size!").unwrap();
            filetime::set_file_mtime(&p, filetime::FileTime::from_unix_time(1_600_000_000, 0)).unwrap();
            stamps.insert(
                n.as_bytes().to_vec(),
                Stamp::of(&std::fs::symlink_metadata(&p).unwrap()),
            );
            entries.push(Entry::test_file(n, b"same size!"));
        }
        let replacement = d.path().join("new");
        std::fs::write(&replacement, b"SAME SIZE!").unwrap();
        filetime::set_file_mtime(&replacement, filetime::FileTime::from_unix_time(1_600_000_000, 0)).unwrap();
        std::fs::rename(&replacement, d.path().join("replaced")).unwrap();
        let w = d.path().join("written");
        std::fs::write(&w, b"SAME SIZE!").unwrap();
        filetime::set_file_mtime(&w, filetime::FileTime::from_unix_time(1_600_000_000, 0)).unwrap();
        let row = SnapshotRow {
            id: 1,
            key: "k".into(),
            kind: "dir".into(),
            created_ns: 0,
            source: "/s".into(),
            tool_version: "t".into(),
            meta: serde_json::json!({}),
            files: 4,
            dirs: 0,
            symlinks: 0,
            bytes: 40,
            root_mode: 0o755,
            root_uid: 0,
            root_gid: 0,
            root_mtime_ns: 0,
            last_restored_ns: None,
        };
        let mut plan =
            crate::restore::plan(&row, Manifest { entries }, &d.path().join("dest"), &Default::default()).unwrap();
        plan.private_copies.insert(b"rewritten".to_vec());
        let clock = fs_clock(d.path()).unwrap();
        let rows = rows(d.path(), &plan, &stamps, clock);
        let paths: Vec<&[u8]> = rows.iter().map(|(p, _)| p.as_slice()).collect();
        assert_eq!(paths, vec![b"kept".as_slice()]);
    }
}
