//! Integration tests for the core: save, restore, lookup, gc, verify, via the real binary.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

/// A tree with every kind of thing a restore must reproduce exactly.
fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("pkg/sub")).unwrap();
    fs::create_dir_all(root.join("empty/nested-empty")).unwrap();
    fs::write(root.join("pkg/module.py"), b"print('hello')\n").unwrap();
    fs::write(
        root.join("pkg/data.bin"),
        (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect::<Vec<_>>(),
    )
    .unwrap();
    fs::write(root.join("pkg/sub/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(root.join("pkg/sub/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    // Same bytes, one executable, one not: hardlink restores must keep both modes.
    fs::write(root.join("pkg/sub/plain-copy"), b"#!/bin/sh\necho tool\n").unwrap();
    fs::write(root.join("pkg/readonly.txt"), b"ro").unwrap();
    fs::set_permissions(root.join("pkg/readonly.txt"), fs::Permissions::from_mode(0o444)).unwrap();
    fs::write(root.join("pkg/setgid"), b"sg").unwrap();
    fs::set_permissions(root.join("pkg/setgid"), fs::Permissions::from_mode(0o2755)).unwrap();
    fs::write(root.join("zero-length"), b"").unwrap();
    fs::write(root.join("name with spaces ünï"), b"unicode").unwrap();
    symlink("module.py", root.join("pkg/relative-link")).unwrap();
    symlink("/usr/bin/env", root.join("absolute-link")).unwrap();
    symlink("does/not/exist", root.join("dangling-link")).unwrap();
    fs::hard_link(root.join("pkg/module.py"), root.join("hardlink-to-module.py")).unwrap();
    fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o750)).unwrap();
    // Distinct nanosecond mtimes everywhere, directories last (children first).
    let mut paths: Vec<_> = walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in paths.iter().enumerate() {
        set_mtime(p, 1_600_000_000 + i as i64, 123_456_789 + i as u32);
    }
}

/// `verify` is clean and KEY restores to OUT exactly as EXPECTED.
fn verified_and_restores_as(store: &Path, key: &str, expected: &Path, out: &Path) {
    assert_eq!(code(&envsnap(store, &["verify"])), 0);
    restore_json(store, out.to_str().unwrap(), &["--key", key]);
    assert_eq!(describe(out), describe(expected));
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn round_trip_is_exact_for_copy_and_auto() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    build_tree(&src);
    save_dir(&store, src.to_str().unwrap(), "k");
    let want = describe(&src);
    for mode in ["copy", "auto", "reflink"] {
        let dest = d.path().join(format!("out-{mode}"));
        let j = ok_json(&envsnap(
            &store,
            &[
                "--json",
                "restore",
                dest.to_str().unwrap(),
                "--key",
                "k",
                "--link",
                mode,
            ],
        ));
        assert_eq!(j["hit"], "exact");
        assert!(j["link"].as_str().unwrap().contains("copy") || j["link"].as_str().unwrap().contains("reflink"));
        let got = describe(&dest);
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
        for (p, w) in &want {
            assert_eq!(&got[p], w, "{mode}: {p} differs");
        }
    }
}

#[test]
fn hardlink_restore_shares_store_inodes_and_keeps_exec_bits() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    build_tree(&src);
    save_dir(&store, src.to_str().unwrap(), "k");
    let dest = d.path().join("out");
    let j = restore_json(&store, dest.to_str().unwrap(), &["--key", "k", "--link", "hardlink"]);
    assert_eq!(j["link"], "hardlink");
    let (want, got) = (describe(&src), describe(&dest));
    for (p, w) in &want {
        let g = &got[p];
        assert_eq!((g.kind, &g.content, &g.target), (w.kind, &w.content, &w.target), "{p}");
        if w.kind == "file" {
            assert_eq!(g.mode & 0o111 != 0, w.mode & 0o111 != 0, "exec bit of {p}");
            assert!(
                fs::metadata(dest.join(p)).unwrap().nlink() >= 2,
                "{p} should share the store's inode"
            );
        } else {
            assert_eq!(g, w, "{p}");
        }
    }
    // The store is untouched by the restore.
    assert_eq!(code(&envsnap(&store, &["verify"])), 0);
}

#[test]
fn lookup_exact_beats_newer_prefix_and_newest_prefix_wins_in_fallback_order() {
    let d = tmp();
    let store = d.path().join("store");
    let save = |key: &str, content: &str| {
        let src = d.path().join(format!("src-{key}"));
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("which"), content).unwrap();
        save_dir(&store, src.to_str().unwrap(), key);
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    save("deps-linux-aaa", "exact");
    save("deps-linux-bbb", "newer");
    save("deps-mac-ccc", "mac");
    save("Deps-linux-zzz", "other case");
    let restore = |args: &[&str]| {
        let dest = d.path().join("out");
        let _ = fs::remove_dir_all(&dest);
        let mut a = vec!["--json", "restore", dest.to_str().unwrap()];
        a.extend_from_slice(args);
        let j = ok_json(&envsnap(&store, &a));
        (j, fs::read_to_string(dest.join("which")).unwrap())
    };
    let (j, c) = restore(&["--key", "deps-linux-aaa", "--fallback", "deps-linux-"]);
    assert_eq!((j["hit"].as_str(), c.as_str()), (Some("exact"), "exact"));
    let (j, c) = restore(&["--key", "deps-linux-nope", "--fallback", "deps-linux-"]);
    assert_eq!(
        (j["hit"].as_str(), j["matched_key"].as_str(), c.as_str()),
        (Some("fallback"), Some("deps-linux-bbb"), "newer")
    );
    // Fallbacks are tried in order: the first prefix with a match wins even if another is newer.
    let (j, _) = restore(&["--key", "x", "--fallback", "deps-linux-a", "--fallback", "deps-mac-"]);
    assert_eq!(j["matched_key"], "deps-linux-aaa");
    let (j, _) = restore(&["--key", "x", "--fallback", "nothing-", "--fallback", "deps-mac-"]);
    assert_eq!(j["matched_key"], "deps-mac-ccc");
    // Keys are case-sensitive.
    let (j, _) = restore(&["--key", "x", "--fallback", "Deps-"]);
    assert_eq!(j["matched_key"], "Deps-linux-zzz");
}

#[test]
fn miss_exits_1_and_creates_nothing() {
    let d = tmp();
    let store = d.path().join("store");
    let dest = d.path().join("deep/out");
    let o = envsnap(
        &store,
        &[
            "--json",
            "restore",
            dest.to_str().unwrap(),
            "--key",
            "none",
            "--fallback",
            "no-",
        ],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["hit"], "miss");
    assert!(!d.path().join("deep").exists());
}

#[test]
fn existing_destination_needs_force_and_is_untouched_without_it() {
    let d = tmp();
    let (src, store, dest) = (d.path().join("src"), d.path().join("store"), d.path().join("dest"));
    build_tree(&src);
    save_dir(&store, src.to_str().unwrap(), "k");
    fs::create_dir_all(&dest).unwrap();
    fs::write(dest.join("precious"), b"keep me").unwrap();
    let o = envsnap(&store, &["restore", dest.to_str().unwrap(), "--key", "k"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(fs::read(dest.join("precious")).unwrap(), b"keep me");
    // --dry-run changes nothing either.
    restore_json(&store, dest.to_str().unwrap(), &["--key", "k", "--force", "--dry-run"]);
    assert!(dest.join("precious").exists());
    restore_json(&store, dest.to_str().unwrap(), &["--key", "k", "--force"]);
    assert!(!dest.join("precious").exists());
    assert_eq!(describe(&dest), describe(&src));
    // An empty directory is replaced without --force; a file in the way is refused.
    let empty = d.path().join("empty-dest");
    fs::create_dir(&empty).unwrap();
    restore_json(&store, empty.to_str().unwrap(), &["--key", "k"]);
    let file = d.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    assert_eq!(
        code(&envsnap(&store, &["restore", file.to_str().unwrap(), "--key", "k"])),
        2
    );
    // No staging leftovers next to the destinations.
    let leftovers: Vec<_> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("envsnap-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn restore_defaults_to_the_saved_path() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    build_tree(&src);
    let want = describe(&src);
    save_dir(&store, src.to_str().unwrap(), "k");
    fs::remove_dir_all(&src).unwrap();
    restore_json(&store, "--key", &["k"]);
    assert_eq!(describe(&src), want);
}

#[test]
fn unchanged_resave_hashes_nothing_and_dedupes_across_keys() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    build_tree(&src);
    // Files changed within a second of a save are "racy" and never cached: let them age.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let s = src.to_str().unwrap();
    let first = save_dir(&store, s, "a");
    assert!(first["new_objects"].as_u64().unwrap() > 0);
    let again = save_dir(&store, s, "b");
    assert_eq!(again["hashed_files"], 0, "unchanged re-save must not read files");
    assert_eq!(again["new_bytes"], 0);
    // A touched file is re-hashed but adds no object (same content); a changed one adds one.
    set_mtime(&src.join("pkg/module.py"), 1_700_000_000, 0);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let touched = save_dir(&store, s, "c");
    assert_eq!(touched["hashed_files"], 1);
    assert_eq!(touched["new_objects"], 0);
    fs::write(src.join("pkg/new.txt"), b"new content").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let changed = save_dir(&store, s, "c");
    assert_eq!(
        (changed["hashed_files"].as_u64(), changed["new_objects"].as_u64()),
        (Some(1), Some(1))
    );
    let show = ok_json(&envsnap(&store, &["--json", "show", "a"]));
    assert_eq!(show["unique_bytes"], 0, "everything in `a` is shared with `b`");
}

#[test]
fn an_unchanged_resave_of_the_same_key_rewrites_nothing() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    build_tree(&src);
    std::thread::sleep(std::time::Duration::from_millis(1100)); // let the files stop being racy
    let s = src.to_str().unwrap();
    let first = save_dir(&store, s, "k");
    let again = save_dir(&store, s, "k");
    assert_eq!(
        again["snapshot_id"], first["snapshot_id"],
        "the same snapshot, not a rewrite"
    );
    assert_eq!(again["hashed_files"], 0);
    // `unchanged` is what CI steps report ("nothing written"): true only for this case.
    assert_eq!(
        (first["unchanged"].as_bool(), again["unchanged"].as_bool()),
        (Some(false), Some(true))
    );
    // A deleted file reads nothing and adds no object, yet the tree changed.
    fs::remove_file(src.join("zero-length")).unwrap();
    let deleted = save_dir(&store, s, "k");
    assert_eq!(
        (deleted["hashed_files"].as_u64(), deleted["new_objects"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(deleted["unchanged"], false, "a deletion is a change");
    // …and it counts as the newest for fallback lookups, like any save.
    let other = d.path().join("other");
    fs::create_dir_all(&other).unwrap();
    save_dir(&store, other.to_str().unwrap(), "k-other");
    std::thread::sleep(std::time::Duration::from_millis(5));
    save_dir(&store, s, "k");
    let out = d.path().join("out");
    let j = restore_json(&store, out.to_str().unwrap(), &["--key", "x", "--fallback", "k"]);
    assert_eq!(j["matched_key"], "k");
    assert_eq!(describe(&out), describe(&src));
}

#[test]
fn saving_an_existing_key_points_it_at_the_new_snapshot() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("v"), b"1").unwrap();
    save_dir(&store, src.to_str().unwrap(), "k");
    fs::write(src.join("v"), b"2").unwrap();
    save_dir(&store, src.to_str().unwrap(), "k");
    let out = d.path().join("out");
    restore_json(&store, out.to_str().unwrap(), &["--key", "k"]);
    assert_eq!(fs::read(out.join("v")).unwrap(), b"2");
    let list = ok_json(&envsnap(&store, &["--json", "list"]));
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1);
}

#[test]
fn hostile_entries_planted_in_the_index_are_refused_and_nothing_escapes() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("dir/f"), b"payload").unwrap();
    symlink(d.path(), src.join("link")).unwrap();
    save_dir(&store, src.to_str().unwrap(), "k");
    // Crafted through the library, so the rows carry valid digests (digests are not secrets:
    // anyone who can write the index can compute them): the path rules must still hold.
    let mut idx = envsnap::index::Index::open(&store.join("index.sqlite")).unwrap();
    let good = idx.get("k").unwrap().unwrap();
    let manifest = idx.manifest(good.id).unwrap();
    let hostile: [&[u8]; 4] = [
        b"../escaped",
        b"/tmp/absolute-escape",
        b"dir/../../escaped2",
        b"link/through-symlink",
    ];
    for (i, path) in hostile.iter().enumerate() {
        let key = format!("evil{i}");
        let mut m = manifest.clone();
        let mut evil = m.get(b"dir/f").unwrap().clone();
        evil.path = path.to_vec();
        m.entries.push(evil);
        m.entries.sort_by(|a, b| a.path.cmp(&b.path));
        let mut row = good.clone();
        row.key = key.clone();
        plant_snapshot(&mut idx, &row, &m);
        let dest = d.path().join(format!("out{i}"));
        let o = envsnap(&store, &["restore", dest.to_str().unwrap(), "--key", &key]);
        assert_eq!(code(&o), 2, "{}: {}", String::from_utf8_lossy(path), stderr(&o));
        assert!(stderr(&o).contains("refusing unsafe entry"), "{}", stderr(&o));
        assert!(!dest.exists());
    }
    assert!(!d.path().join("escaped").exists() && !d.path().join("escaped2").exists());
    assert!(!d.path().join("through-symlink").exists());
    assert!(!Path::new("/tmp/absolute-escape").exists());
}

#[test]
fn a_flipped_byte_is_caught_by_verify_and_by_restore() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    build_tree(&src);
    // Let the files age past the racy window, so the stat cache holds them: the re-save after
    // the repair must not trust a cached hash whose object was removed.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    save_dir(&store, src.to_str().unwrap(), "k");
    let obj = flip_a_byte(&store);
    let gh = d.path().join("gh");
    let o = envsnap_env(
        &store,
        &["restore", d.path().join("o").to_str().unwrap(), "--key", "k"],
        &[("GITHUB_OUTPUT", gh.to_str().unwrap())],
    );
    assert_eq!(code(&o), 2);
    assert!(fs::read_to_string(&gh).unwrap().contains("cache-hit=false"));
    let o = envsnap(&store, &["--json", "verify"]);
    assert_eq!(code(&o), 2);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["corrupt"][0], obj);
    assert_eq!(j["broken_snapshots"][0], "k");
    for mode in ["copy", "auto"] {
        let dest = d.path().join(format!("out-{mode}"));
        let o = envsnap(
            &store,
            &["restore", dest.to_str().unwrap(), "--key", "k", "--link", mode],
        );
        assert_eq!(code(&o), 2, "{mode}");
        assert!(stderr(&o).contains("corrupt"), "{}", stderr(&o));
        assert!(!dest.exists(), "a failed restore must leave no tree");
    }
    // --repair removes the bad object (and the snapshot it broke: exit 0, the store is sound);
    // saving the tree again stores it anew and all is well.
    assert_eq!(code(&envsnap(&store, &["verify", "--repair"])), 0);
    let again = save_dir(&store, src.to_str().unwrap(), "k");
    assert_eq!(again["new_objects"], 1, "the removed object is stored anew");
    verified_and_restores_as(&store, "k", &src, &d.path().join("out"));
}

/// The usual CI round: restore, install a little, save. The save used to read every restored
/// file again (a new runner has new inodes, so the last save's stat cache cannot match); the
/// restore now records the restored files' stats against the filesystem's clock.
#[test]
fn a_save_right_after_a_restore_reads_only_what_changed() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    build_tree(&src);
    fs::create_dir_all(src.join("many")).unwrap();
    for i in 0..400 {
        fs::write(src.join(format!("many/f{i}")), format!("file number {i:05}")).unwrap();
    }
    save_dir(&store, src.to_str().unwrap(), "a");
    let out = d.path().join("out");
    let o = out.to_str().unwrap();
    restore_json(&store, o, &["--key", "a"]);
    let j = save_dir(&store, o, "b");
    let files = j["files"].as_u64().unwrap();
    assert!(
        j["hashed_files"].as_u64().unwrap() <= files / 10,
        "a save right after a restore read {} of {files} files",
        j["hashed_files"]
    );
    assert_eq!(j["new_objects"], 0);
    // A restored file changed afterwards is read again, even with its size and mtime put back
    // (its ctime moves, and the restore only vouched for files older than its clock probe).
    let f7 = out.join("many/f7");
    let mtime = fs::symlink_metadata(&f7).unwrap().mtime();
    fs::write(&f7, b"FILE NUMBER 00007").unwrap();
    set_mtime(&f7, mtime, 0);
    let j = save_dir(&store, o, "c");
    assert_eq!(j["new_objects"], 1, "the changed file was missed");
    assert!(j["hashed_files"].as_u64().unwrap() <= files / 10);
    let out2 = d.path().join("out2");
    restore_json(&store, out2.to_str().unwrap(), &["--key", "c"]);
    assert_eq!(describe(&out2), describe(&out));
    assert_eq!(fs::read(out2.join("many/f7")).unwrap(), b"FILE NUMBER 00007");
}

/// The stat cache is trusted without a stat per object: gc must forget the cached hashes of
/// the objects it deletes, or the next save would reference objects that are gone.
#[test]
fn a_resave_after_gc_freed_its_objects_stores_them_again() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    build_tree(&src);
    std::thread::sleep(std::time::Duration::from_millis(1100)); // not racy: cached
    let s = src.to_str().unwrap();
    let first = save_dir(&store, s, "a");
    assert_eq!(save_dir(&store, s, "a")["hashed_files"], 0, "the cache is in use");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let j = ok_json(&envsnap(&store, &["--json", "gc", "--max-age", "1ms"]));
    assert_eq!(j["kept_snapshots"], 0);
    let again = save_dir(&store, s, "b");
    assert_eq!(again["new_objects"], first["new_objects"]);
    assert_eq!(again["hashed_files"], first["hashed_files"], "every file is read again");
    verified_and_restores_as(&store, "b", &src, &d.path().join("out"));
}

/// A save trusts the stat cache. An object lost outside envsnap that no snapshot referenced any
/// more (its key had been re-saved) stayed in the cache through `verify --repair`, and the next
/// save referenced it: a snapshot that could not be restored.
#[test]
fn verify_repair_forgets_cached_objects_lost_outside_envsnap() {
    let d = tmp();
    let (a, b, store) = (d.path().join("a"), d.path().join("b"), d.path().join("store"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    fs::write(a.join("f"), b"only in a").unwrap();
    fs::write(b.join("g"), b"only in b").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100)); // not racy: cached
    save_dir(&store, a.to_str().unwrap(), "k1");
    save_dir(&store, b.to_str().unwrap(), "k1"); // a's object is now unreferenced, still cached
    let hex = blake3::hash(b"only in a").to_hex().to_string();
    fs::remove_file(store.join("objects-v1").join(&hex[..2]).join(&hex[2..])).unwrap();
    assert_eq!(code(&envsnap(&store, &["verify", "--repair"])), 0);
    let j = save_dir(&store, a.to_str().unwrap(), "k2");
    assert_eq!(j["new_objects"], 1, "the lost object is stored again: {j}");
    assert_eq!(code(&envsnap(&store, &["verify"])), 0);
    let out = d.path().join("out");
    restore_json(&store, out.to_str().unwrap(), &["--key", "k2"]);
    assert_eq!(fs::read(out.join("f")).unwrap(), b"only in a");
}

/// Switching a new index to WAL takes an exclusive lock without SQLite's busy handler: the
/// first saves into a fresh store, started together, failed with "database is locked".
#[test]
fn concurrent_first_saves_into_a_fresh_store_do_not_fail_with_database_locked() {
    let d = tmp();
    let src = d.path().join("src");
    build_tree(&src);
    for round in 0..8 {
        let store = d.path().join(format!("store{round}"));
        let children = (0..4).map(|i| spawn_save(&store, &src, &format!("k{i}"))).collect();
        wait_all_ok(children, &format!("round {round}"));
    }
}

#[test]
fn two_concurrent_saves_into_one_store_both_succeed() {
    let d = tmp();
    let store = d.path().join("store");
    let mut children = Vec::new();
    for i in 0..4 {
        let src = d.path().join(format!("src{i}"));
        build_tree(&src);
        fs::write(src.join("unique"), format!("tree {i}")).unwrap();
        children.push(spawn_save(&store, &src, &format!("key{i}")));
    }
    wait_all_ok(children, "concurrent saves");
    let list = ok_json(&envsnap(&store, &["--json", "list"]));
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 4);
    assert_eq!(code(&envsnap(&store, &["verify"])), 0);
    for i in 0..4 {
        let out = d.path().join(format!("out{i}"));
        ok_json(&envsnap(
            &store,
            &["--json", "restore", out.to_str().unwrap(), "--key", &format!("key{i}")],
        ));
        assert_eq!(fs::read_to_string(out.join("unique")).unwrap(), format!("tree {i}"));
    }
}

#[test]
fn gc_keeps_what_is_referenced_and_frees_what_is_not() {
    let d = tmp();
    let store = d.path().join("store");
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("shared"), b"shared by both").unwrap();
    fs::write(src.join("only-old"), vec![7u8; 100_000]).unwrap();
    save_dir(&store, src.to_str().unwrap(), "old");
    fs::remove_file(src.join("only-old")).unwrap();
    fs::write(src.join("only-new"), vec![9u8; 50_000]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    save_dir(&store, src.to_str().unwrap(), "new");
    // Nothing is older than 7 days: nothing goes.
    let j = ok_json(&envsnap(&store, &["--json", "gc"]));
    assert_eq!(j["removed_objects"], 0);
    // A size budget drops the least recently used snapshot and only its own objects.
    let j = ok_json(&envsnap(&store, &["--json", "gc", "--max-size", "60KB"]));
    assert_eq!(j["removed_snapshots"], serde_json::json!(["old"]));
    assert_eq!(j["removed_objects"], 1);
    assert_eq!(j["freed_bytes"], 100_000);
    let out = d.path().join("out");
    restore_json(&store, out.to_str().unwrap(), &["--key", "new"]);
    assert_eq!(fs::read(out.join("shared")).unwrap(), b"shared by both");
    assert_eq!(code(&envsnap(&store, &["verify"])), 0);
    // --keep-last protects the most recently used even past --max-age.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let j = ok_json(&envsnap(
        &store,
        &["--json", "gc", "--max-age", "1ms", "--keep-last", "1"],
    ));
    assert_eq!(j["kept_snapshots"], 1);
    let j = ok_json(&envsnap(&store, &["--json", "gc", "--max-age", "1ms"]));
    assert_eq!(j["kept_snapshots"], 0);
    let objs = walkdir::WalkDir::new(store.join("objects-v1"))
        .into_iter()
        .filter(|e| e.as_ref().unwrap().file_type().is_file())
        .count();
    assert_eq!(objs, 0, "every unreferenced object is gone");
}

#[test]
fn github_output_lines_for_exact_fallback_and_miss() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    save_dir(&store, src.to_str().unwrap(), "pre-1");
    let gh = d.path().join("gh_output");
    let ghs = gh.to_str().unwrap();
    let run = |args: &[&str]| {
        let _ = fs::remove_file(&gh);
        let o = envsnap_env(&store, args, &[("GITHUB_OUTPUT", ghs)]);
        (code(&o), fs::read_to_string(&gh).unwrap_or_default())
    };
    let out = |n: &str| d.path().join(n).to_string_lossy().into_owned();
    assert_eq!(
        run(&["restore", &out("a"), "--key", "pre-1"]),
        (0, "cache-hit=true\nmatched-key=pre-1\nhit=exact\n".into())
    );
    assert_eq!(
        run(&["restore", &out("b"), "--key", "pre-2", "--fallback", "pre-"]),
        (0, "cache-hit=false\nmatched-key=pre-1\nhit=fallback\n".into())
    );
    assert_eq!(
        run(&["restore", &out("c"), "--key", "zzz"]),
        (1, "cache-hit=false\nmatched-key=\nhit=miss\n".into())
    );
    // A dry run restores nothing and tells the job nothing.
    assert_eq!(
        run(&["restore", &out("dry"), "--key", "pre-1", "--dry-run"]),
        (0, String::new())
    );
    // A restore that fails after the lookup must not tell the job it hit.
    fs::create_dir_all(d.path().join("occupied")).unwrap();
    fs::write(d.path().join("occupied/x"), b"x").unwrap();
    assert_eq!(
        run(&["restore", &out("occupied"), "--key", "pre-1"]),
        (2, "cache-hit=false\nmatched-key=\nhit=miss\n".into())
    );
}

#[test]
fn bad_input_is_one_clear_line_and_exit_2() {
    let d = tmp();
    let store = d.path().join("store");
    let file = d.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    let long = "k".repeat(513);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["save", "dir", d.path().to_str().unwrap(), "--key", "a,b"],
            "commas",
        ),
        (
            vec!["save", "dir", d.path().to_str().unwrap(), "--key", &long],
            "at most 512",
        ),
        (
            vec!["save", "dir", d.path().to_str().unwrap(), "--key", "tab\there"],
            "control",
        ),
        (
            vec!["save", "dir", "/definitely/missing/path", "--key", "k"],
            "/definitely/missing/path",
        ),
        (
            vec!["save", "dir", file.to_str().unwrap(), "--key", "k"],
            "not a directory",
        ),
        (vec!["restore", "--key", "k", "--fallback", "a,b"], "commas"),
        (vec!["show", "nope"], "no snapshot"),
    ];
    for (args, needle) in cases {
        let o = envsnap(&store, &args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(needle), "{args:?}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
    }
    // Argument errors are clap's whole message (tests/cli.rs), still exit 2 and named.
    let o = envsnap(&store, &["restore", "--key", "k", "--link", "teleport"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("link mode"), "{}", stderr(&o));
    // A store path that is a file.
    let o = envsnap(&file, &["list"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("a-file"), "{}", stderr(&o));
}

#[test]
fn special_files_are_skipped_with_a_warning_naming_them() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let fifo = src.join("a-fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let _sock = std::os::unix::net::UnixListener::bind(src.join("a-socket")).unwrap();
    let o = envsnap(&store, &["save", "dir", src.to_str().unwrap(), "--key", "k"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("a-fifo") && stderr(&o).contains("a-socket"),
        "{}",
        stderr(&o)
    );
    let out = d.path().join("out");
    restore_json(&store, out.to_str().unwrap(), &["--key", "k"]);
    assert!(out.join("f").exists() && !out.join("a-fifo").exists());
}

#[test]
fn store_survives_a_tar_round_trip_like_a_ci_cache_step() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    build_tree(&src);
    save_dir(&store, src.to_str().unwrap(), "k");
    // No absolute symlinks, sockets or other specials inside the store.
    for e in walkdir::WalkDir::new(&store) {
        let e = e.unwrap();
        let ft = e.file_type();
        assert!(
            ft.is_file() || ft.is_dir(),
            "{} is neither file nor dir",
            e.path().display()
        );
    }
    let tarball = d.path().join("cache.tzst");
    let sh = |cmd: String| {
        assert!(
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .status()
                .unwrap()
                .success(),
            "{cmd}"
        )
    };
    sh(format!(
        "tar --posix -cf - -C {} . | zstd -q -T0 -o {}",
        store.display(),
        tarball.display()
    ));
    let store2 = d.path().join("store2");
    fs::create_dir(&store2).unwrap();
    sh(format!(
        "zstd -q -d -c {} | tar -xf - -C {}",
        tarball.display(),
        store2.display()
    ));
    assert_eq!(code(&envsnap(&store2, &["verify"])), 0);
    let out = d.path().join("out");
    restore_json(&store2, out.to_str().unwrap(), &["--key", "k"]);
    assert_eq!(describe(&out), describe(&src));
}

#[test]
fn ownership_is_restored_when_running_as_root() {
    if !require_root("creating files owned by another user") {
        return;
    }
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    build_tree(&src);
    std::os::unix::fs::chown(src.join("pkg/module.py"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(src.join("absolute-link"), Some(42), Some(43)).unwrap();
    std::os::unix::fs::chown(src.join("pkg/sub"), Some(99), Some(98)).unwrap();
    std::os::unix::fs::chown(src.join("pkg/setgid"), Some(7), Some(8)).unwrap();
    fs::set_permissions(src.join("pkg/setgid"), fs::Permissions::from_mode(0o6755)).unwrap();
    let want = describe(&src);
    save_dir(&store, src.to_str().unwrap(), "k");
    let out = d.path().join("out");
    restore_json(&store, out.to_str().unwrap(), &["--key", "k"]);
    let got = describe(&out);
    assert_eq!(got["pkg/module.py"].uid, 1234);
    assert_eq!(got["absolute-link"].gid, 43);
    assert_eq!(got["pkg/setgid"].mode, 0o6755, "setuid/setgid survive the chown");
    assert_eq!(got, want);
}

#[test]
fn full_disk_during_save_and_restore_leaves_nothing_half_written() {
    if !require_root("mounting a small tmpfs") {
        return;
    }
    let d = tmp();
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("small"), b"fits").unwrap();
    fs::write(src.join("big"), vec![1u8; 2 << 20]).unwrap();
    let store_mnt = Mount::tmpfs(&d.path().join("store-fs"), "size=1m");
    let store = store_mnt.0.join("store");
    let o = envsnap(&store, &["save", "dir", src.to_str().unwrap(), "--key", "k"]);
    assert_eq!(code(&o), 2);
    let e = stderr(&o);
    assert!(e.contains("disk full") && e.contains(store.to_str().unwrap()), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    let list = ok_json(&envsnap(&store, &["--json", "list"]));
    assert_eq!(
        list["snapshots"].as_array().unwrap().len(),
        0,
        "no snapshot became visible"
    );
    assert_eq!(
        code(&envsnap(&store, &["verify"])),
        0,
        "no half-written object is visible"
    );

    // Restore into a destination that fills up: no half tree is left.
    let good_store = d.path().join("store");
    save_dir(&good_store, src.to_str().unwrap(), "k");
    let dest_mnt = Mount::tmpfs(&d.path().join("dest-fs"), "size=1m");
    let dest = dest_mnt.0.join("out");
    let o = envsnap(&good_store, &["restore", dest.to_str().unwrap(), "--key", "k"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("disk full"), "{}", stderr(&o));
    assert_eq!(
        fs::read_dir(&dest_mnt.0).unwrap().count(),
        0,
        "nothing left on the full filesystem"
    );
}

#[test]
fn read_only_store_is_a_clear_error() {
    if !require_root("mounting a read-only tmpfs") {
        return;
    }
    let d = tmp();
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let m = Mount::tmpfs(&d.path().join("ro"), "size=4m");
    let store = m.0.join("store");
    save_dir(&store, src.to_str().unwrap(), "k");
    m.remount("ro");
    let o = envsnap(&store, &["save", "dir", src.to_str().unwrap(), "--key", "k2"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("read-only") && stderr(&o).contains(store.to_str().unwrap()),
        "{}",
        stderr(&o)
    );
    let fresh = m.0.join("new-store");
    let o = envsnap(&fresh, &["save", "dir", src.to_str().unwrap(), "--key", "k"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("read-only") && stderr(&o).contains("new-store"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_restore_killed_midway_leaves_no_tree_and_a_rerun_completes() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    fs::create_dir_all(&src).unwrap();
    for i in 0..3000 {
        fs::write(src.join(format!("f{i}")), format!("content {i}").repeat(50)).unwrap();
    }
    save_dir(&store, src.to_str().unwrap(), "k");
    let dest = d.path().join("out");
    let mut child = std::process::Command::new(bin())
        .args([
            "--store",
            store.to_str().unwrap(),
            "restore",
            dest.to_str().unwrap(),
            "--key",
            "k",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(30));
    let _ = child.kill();
    let _ = child.wait();
    // Either the restore finished before the kill, or nothing is at the destination.
    if dest.exists() {
        assert_eq!(
            fs::read_dir(&dest).unwrap().count(),
            3000,
            "a partial tree at the destination"
        );
        fs::remove_dir_all(&dest).unwrap();
    }
    restore_json(&store, dest.to_str().unwrap(), &["--key", "k"]);
    assert_eq!(describe(&dest), describe(&src));
    // The killed restore's staging directory was cleaned up by the rerun.
    let names: Vec<String> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".envsnap-")), "{names:?}");
}

#[test]
fn gc_running_beside_saves_never_breaks_a_snapshot() {
    let d = tmp();
    let store = d.path().join("store");
    let s = store.to_str().unwrap().to_string();
    // Seed the store so gc has work from the start.
    let seed = d.path().join("seed");
    build_tree(&seed);
    save_dir(&store, seed.to_str().unwrap(), "seed");
    let gc_store = s.clone();
    let gc = std::thread::spawn(move || {
        for _ in 0..15 {
            let o = envsnap(Path::new(&gc_store), &["gc", "--max-age", "0s"]);
            assert_eq!(code(&o), 0, "{}", stderr(&o));
        }
    });
    for i in 0..6 {
        let src = d.path().join(format!("src{i}"));
        build_tree(&src);
        fs::write(src.join("unique"), vec![i as u8; 300_000]).unwrap();
        ok_json(&envsnap(
            &store,
            &[
                "--json",
                "save",
                "dir",
                src.to_str().unwrap(),
                "--key",
                &format!("k{i}"),
            ],
        ));
    }
    gc.join().unwrap();
    // Whatever gc removed, every snapshot that is left is whole.
    let o = envsnap(&store, &["--json", "verify"]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
    let list = ok_json(&envsnap(&store, &["--json", "list"]));
    for snap in list["snapshots"].as_array().unwrap() {
        let key = snap["key"].as_str().unwrap();
        let out = d.path().join(format!("out-{key}"));
        ok_json(&envsnap(
            &store,
            &["--json", "restore", out.to_str().unwrap(), "--key", key],
        ));
    }
}

/// The first parallel scan recursed once per directory level and overflowed its stack on a
/// deep tree (a debug build aborted at ~2,000 levels): the scan is iterative now.
#[test]
fn a_tree_1900_directories_deep_saves_and_restores() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    let mut deepest = src.clone();
    for _ in 0..1900 {
        deepest.push("d");
    }
    fs::create_dir_all(&deepest).unwrap();
    fs::write(deepest.join("f"), b"at the bottom").unwrap();
    let j = save_dir(&store, src.to_str().unwrap(), "deep");
    assert_eq!((j["files"].as_u64(), j["dirs"].as_u64()), (Some(1), Some(1900)));
    // Restored next to the source under a name no longer than "src", so every path still fits.
    let out = d.path().join("out");
    restore_json(&store, out.to_str().unwrap(), &["--key", "deep"]);
    assert_eq!(describe(&out), describe(&src));
}

#[test]
fn large_files_stream_through_the_store_and_the_store_inside_the_tree_is_skipped() {
    let d = tmp();
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // Above the in-memory limit: streamed into a temporary object while hashed.
    let big: Vec<u8> = (0..(9u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(src.join("big.bin"), &big).unwrap();
    fs::write(src.join("small"), b"s").unwrap();
    // `save dir . --store ./.envsnap`: the store must not snapshot itself.
    let store = src.join(".envsnap");
    let j = save_dir(&store, src.to_str().unwrap(), "k");
    assert_eq!(j["files"], 2, "{j}");
    let again = save_dir(&store, src.to_str().unwrap(), "k2");
    assert_eq!(again["new_objects"], 0);
    let out = d.path().join("out");
    restore_json(&store, out.to_str().unwrap(), &["--key", "k"]);
    assert_eq!(fs::read(out.join("big.bin")).unwrap(), big);
    assert!(!out.join(".envsnap").exists());
}

#[test]
fn force_restore_over_a_tree_holding_the_store_keeps_the_store() {
    let d = tmp();
    let proj = d.path().join("proj");
    fs::create_dir_all(&proj).unwrap();
    fs::write(proj.join("f"), b"x").unwrap();
    let store = proj.join(".envsnap");
    save_dir(&store, proj.to_str().unwrap(), "k");
    let o = envsnap(&store, &["restore", proj.to_str().unwrap(), "--key", "k", "--force"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("the store"), "{}", stderr(&o));
    assert_eq!(code(&envsnap(&store, &["verify"])), 0, "the store is intact");
    assert!(proj.join("f").exists());
}

#[test]
fn hardlink_restore_refuses_a_symlink_planted_in_the_store() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"payload!").unwrap();
    save_dir(&store, src.to_str().unwrap(), "k");
    let victim = d.path().join("victim");
    fs::write(&victim, b"victim!!").unwrap(); // same size as the object
    let obj = walkdir::WalkDir::new(store.join("objects-v1"))
        .into_iter()
        .map(|e| e.unwrap())
        .find(|e| e.file_type().is_file())
        .unwrap();
    fs::remove_file(obj.path()).unwrap();
    symlink(&victim, obj.path()).unwrap();
    for mode in ["hardlink", "copy"] {
        let out = d.path().join(format!("out-{mode}"));
        let o = envsnap(
            &store,
            &["restore", out.to_str().unwrap(), "--key", "k", "--link", mode],
        );
        assert_eq!(code(&o), 2, "{mode}: {}", stderr(&o));
        assert!(!out.exists());
    }
    assert_eq!(fs::read(&victim).unwrap(), b"victim!!");
}
