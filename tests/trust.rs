//! Trust in the store: a schema upgrade keeps snapshots restorable, the index is checked on
//! every load, objects are checked before a hardlink restore shares them, the store is private.

mod common;

use common::*;
use std::fs;
use std::path::Path;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Copy a directory tree (fixtures are checked in; tests work on a copy).
fn copy_tree(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.unwrap();
        let dest = to.join(e.path().strip_prefix(from).unwrap());
        if e.file_type().is_dir() {
            fs::create_dir_all(&dest).unwrap();
        } else {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// A store written by the schema-2 release (`tests/fixtures/schema2-store`, made by that
/// release's binary: keys `a` and `b` over one tree, `c` over a changed `run.sh`) is upgraded
/// on first use; every snapshot restores exactly and verify passes.
#[test]
fn a_schema_2_store_upgrades_and_every_snapshot_restores_exactly() {
    let d = tmp();
    let store = d.path().join("store");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema2-store"),
        &store,
    );
    let mtime = 1_704_164_645_123_456_789;
    for (key, run_sh, run_mtime) in [
        ("a", &b"#!/bin/sh\necho hi\n"[..], mtime),
        ("b", b"#!/bin/sh\necho hi\n", mtime),
        ("c", b"changed\n", 1_704_326_400_000_000_000),
    ] {
        let out = d.path().join(format!("out-{key}"));
        restore_json(&store, out.to_str().unwrap(), &["--key", key, "--link", "copy"]);
        let t = describe(&out);
        let file = |p: &str| t.get(p).unwrap_or_else(|| panic!("{key}: {p} missing"));
        assert_eq!(file("a.txt").content.as_deref(), Some(&b"hello\n"[..]));
        assert_eq!((file("a.txt").mode, file("a.txt").mtime_ns), (0o644, mtime));
        assert_eq!(file("sub/hard").link_group.as_deref(), Some("a.txt"));
        assert_eq!(file("sub/token").content.as_deref(), Some(&b"secret\n"[..]));
        assert_eq!(file("sub/token").mode, 0o600);
        assert_eq!(file("run.sh").content.as_deref(), Some(run_sh));
        assert_eq!((file("run.sh").mode, file("run.sh").mtime_ns), (0o755, run_mtime));
        assert_eq!(file("link").target.as_deref(), Some(Path::new("a.txt")));
        assert_eq!(file("sub").mtime_ns, 1_704_240_000_000_000_000);
    }
    let v = ok_json(&envsnap(&store, &["--json", "verify"]));
    assert_eq!(v["damaged_snapshots"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["unreferenced_objects"], 0, "{v}");
    let db = rusqlite::Connection::open(store.join("index.sqlite")).unwrap();
    let n: i64 = db
        .query_row("SELECT count(*) FROM manifests", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2, "a and b share one manifest");
}

/// A small tree with names, modes and mtimes a damaged index could get wrong.
fn small_tree(root: &Path) {
    fs::create_dir_all(root.join("sub")).unwrap();
    for (p, body, mode) in [
        ("a.txt", &b"alpha\n"[..], 0o644),
        ("sub/run.sh", b"#!/bin/sh\necho hi\n", 0o755),
        ("sub/key", b"secret\n", 0o600),
    ] {
        fs::write(root.join(p), body).unwrap();
        fs::set_permissions(root.join(p), std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        set_mtime(&root.join(p), 1_600_000_000, 123_456_789);
    }
    std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
    set_mtime(&root.join("sub"), 1_600_000_100, 0);
    set_mtime(root, 1_600_000_200, 0);
}

/// Bit flips anywhere in a used byte of `index.sqlite` never yield a restore that exits 0 with
/// a wrong name, mode, mtime or content: each snapshot's row and entries are checked against
/// their digests on load, and the row found must carry the key asked for. (Before: 9 of 80
/// flips restored a wrong file name, mode or mtime with exit 0.)
#[test]
fn flipped_bits_in_the_index_never_restore_a_wrong_tree_with_exit_0() {
    let d = tmp();
    let (src, other, store) = (d.path().join("src"), d.path().join("other"), d.path().join("store"));
    small_tree(&src);
    small_tree(&other);
    fs::write(other.join("a.txt"), b"other\n").unwrap();
    save_dir(&store, src.to_str().unwrap(), "k");
    save_dir(&store, other.to_str().unwrap(), "k-other");
    let db = store.join("index.sqlite");
    assert!(
        !store.join("index.sqlite-wal").exists(),
        "the index is checkpointed on close"
    );
    let pristine = fs::read(&db).unwrap();
    let expected = describe(&src);
    // Every used byte is a candidate (free pages are zero); 120 spread evenly, a different
    // bit each time.
    let used: Vec<usize> = (100..pristine.len()).filter(|&i| pristine[i] != 0).collect();
    let trials = 120.min(used.len());
    let (mut refused, mut exact) = (0, 0);
    for t in 0..trials {
        let pos = used[t * used.len() / trials];
        let mut b = pristine.clone();
        b[pos] ^= 1 << (t % 8);
        fs::write(&db, &b).unwrap();
        for f in ["index.sqlite-wal", "index.sqlite-shm"] {
            let _ = fs::remove_file(store.join(f));
        }
        let dest = d.path().join(format!("out{t}"));
        let o = envsnap(
            &store,
            &["restore", dest.to_str().unwrap(), "--key", "k", "--link", "copy"],
        );
        if code(&o) == 0 {
            assert_eq!(
                describe(&dest),
                expected,
                "flip at byte {pos} bit {}: exit 0 with a wrong tree",
                t % 8
            );
            exact += 1;
        } else {
            assert!(!dest.exists(), "flip at byte {pos}: a failed restore left a tree");
            refused += 1;
        }
    }
    eprintln!("{trials} flips: {exact} restored exactly, {refused} refused");
    assert!(
        refused > 0,
        "no flip was ever caught: the test does not reach the index's rows"
    );
}

/// A deleted index loses every snapshot: `verify` says so (exit 2) and counts the objects no
/// snapshot references, instead of "all intact".
#[test]
fn verify_after_the_index_is_deleted_reports_it_not_all_intact() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    small_tree(&src);
    save_dir(&store, src.to_str().unwrap(), "k");
    let v = ok_json(&envsnap(&store, &["--json", "verify"]));
    assert_eq!(
        (v["index_missing"].as_bool(), v["unreferenced_objects"].as_u64()),
        (Some(false), Some(0))
    );
    for f in ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"] {
        let _ = fs::remove_file(store.join(f));
    }
    let o = envsnap(&store, &["--json", "verify"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["index_missing"], true, "{v}");
    assert_eq!(v["unreferenced_objects"], 3, "{v}");
    assert!(stderr(&o).contains("index was missing"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("all intact"), "{}", stderr(&o));
}
