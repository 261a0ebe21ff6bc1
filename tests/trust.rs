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

/// Run envsnap, but give up (and fail) after `secs`: a FIFO planted in the store used to block
/// `open(2)` forever.
fn envsnap_within(store: &Path, args: &[&str], secs: u64) -> std::process::Output {
    let mut c = std::process::Command::new(bin())
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("GITHUB_OUTPUT")
        .env_remove("ENVSNAP_STORE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while c.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = c.kill();
            panic!("envsnap {args:?} still running after {secs}s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    c.wait_with_output().unwrap()
}

/// The object file holding `content` (not executable).
fn object_path(store: &Path, content: &[u8]) -> std::path::PathBuf {
    let hex = blake3::hash(content).to_hex().to_string();
    store.join("objects-v1").join(&hex[..2]).join(&hex[2..])
}

/// Write into a read-only file the way root can (others chmod first, as the object's owner
/// can): same size, other bytes, in place (same inode).
fn write_in_place(p: &Path, at: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(p).unwrap().permissions().mode();
    if !is_root() {
        fs::set_permissions(p, fs::Permissions::from_mode(mode | 0o200)).unwrap();
    }
    let mut f = fs::OpenOptions::new().write(true).open(p).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
    drop(f);
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree of two 8 KiB files (same size, for the swap) and a small one.
fn two_blobs(root: &Path) -> (Vec<u8>, Vec<u8>) {
    fs::create_dir_all(root).unwrap();
    let a: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    let b: Vec<u8> = (0..8192u32).map(|i| (i * 13 % 241) as u8).collect();
    fs::write(root.join("a.bin"), &a).unwrap();
    fs::write(root.join("b.bin"), &b).unwrap();
    fs::write(root.join("small"), b"small\n").unwrap();
    (a, b)
}

fn assert_refused_naming(o: &std::process::Output, dest: &Path, what: &str) {
    assert_eq!(code(o), 2, "{what}: {}", stderr(o));
    let e = stderr(o);
    assert!(e.contains("corrupt") && e.contains("verify --repair"), "{what}: {e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{what}: one line: {e}");
    assert!(!dest.exists(), "{what}: a failed restore left a tree");
}

/// As root (CI's usual user) the object's read-only mode does not stop a write through a
/// hardlinked restore: that wrote into the store, and every later hardlink restore of any key
/// sharing the content exited 0 with the modified bytes. Now the object's recorded (size,
/// mtime, inode) no longer match, it is hashed, quarantined, and the restore fails naming it
/// and `verify --repair`; after the repair a save stores the content again.
#[test]
fn a_write_through_a_hardlinked_restore_never_reaches_a_later_restore() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    let (a, _) = two_blobs(&src);
    // Old enough for the stat cache: the re-save below must not trust a row naming the
    // quarantined object.
    for f in ["a.bin", "b.bin", "small"] {
        set_mtime(&src.join(f), 1_600_000_000, 0);
    }
    save_dir(&store, src.to_str().unwrap(), "first");
    save_dir(&store, src.to_str().unwrap(), "second");
    let out1 = d.path().join("out1");
    restore_json(
        &store,
        out1.to_str().unwrap(),
        &["--key", "first", "--link", "hardlink"],
    );
    write_in_place(&out1.join("a.bin"), 100, b"MODIFIED");
    let out2 = d.path().join("out2");
    let o = envsnap(
        &store,
        &[
            "restore",
            out2.to_str().unwrap(),
            "--key",
            "second",
            "--link",
            "hardlink",
        ],
    );
    assert_refused_naming(&o, &out2, "write through a hardlink");
    assert!(
        stderr(&o).contains(&blake3::hash(&a).to_hex().to_string()),
        "{}",
        stderr(&o)
    );
    assert!(
        !object_path(&store, &a).exists(),
        "the modified object is out of objects-v1"
    );
    let v: serde_json::Value = serde_json::from_slice(&envsnap(&store, &["--json", "verify"]).stdout).unwrap();
    assert_eq!(v["quarantined"].as_array().unwrap().len(), 1, "{v}");
    assert!(
        v["broken_snapshots"].as_array().unwrap().contains(&"second".into()),
        "{v}"
    );
    envsnap(&store, &["verify", "--repair"]);
    let again = save_dir(&store, src.to_str().unwrap(), "second");
    assert_eq!(again["new_objects"], 1, "{again}");
    let out3 = d.path().join("out3");
    restore_json(
        &store,
        out3.to_str().unwrap(),
        &["--key", "second", "--link", "hardlink"],
    );
    assert_eq!(fs::read(out3.join("a.bin")).unwrap(), a);
    ok_json(&envsnap(&store, &["--json", "verify"]));
}

/// Hardlink restores used to verify nothing: same-size corruptions of an object (a flipped
/// bit, a zeroed 4 KiB block, random bytes, two objects swapped) were restored with exit 0.
#[test]
fn same_size_corruptions_are_caught_by_hardlink_restores() {
    for kind in ["bit flip", "zeroed 4 KiB", "random bytes", "two objects swapped"] {
        let d = tmp();
        let (src, store) = (d.path().join("src"), d.path().join("store"));
        let (a, b) = two_blobs(&src);
        save_dir(&store, src.to_str().unwrap(), "k");
        let (pa, pb) = (object_path(&store, &a), object_path(&store, &b));
        match kind {
            "bit flip" => write_in_place(&pa, 5000, &[a[5000] ^ 0x10]),
            "zeroed 4 KiB" => write_in_place(&pa, 4096, &[0u8; 4096]),
            "random bytes" => {
                let noise: Vec<u8> = (0..512u32)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                    .collect();
                write_in_place(&pa, 1000, &noise)
            }
            _ => {
                let t = pa.with_extension("swap");
                fs::rename(&pa, &t).unwrap();
                fs::rename(&pb, &pa).unwrap();
                fs::rename(&t, &pb).unwrap();
            }
        }
        let out = d.path().join("out");
        let o = envsnap(
            &store,
            &["restore", out.to_str().unwrap(), "--key", "k", "--link", "hardlink"],
        );
        assert_refused_naming(&o, &out, kind);
    }
}

/// A hardlinked file shares the object's inode and so its mode (0444 / 0555). It is linked
/// only where that adds no permission bit: a 0600 secret or a 0700 script is copied (and
/// counted), never handed back readable by everyone.
#[test]
fn hardlink_restores_copy_files_the_shared_mode_would_widen() {
    use std::os::unix::fs::PermissionsExt;
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    fs::create_dir_all(&src).unwrap();
    for (name, mode) in [
        ("secret", 0o600),
        ("public", 0o644),
        ("private.sh", 0o700),
        ("tool.sh", 0o755),
    ] {
        fs::write(src.join(name), format!("#!/bin/sh\n# {name}\n")).unwrap();
        fs::set_permissions(src.join(name), fs::Permissions::from_mode(mode)).unwrap();
    }
    save_dir(&store, src.to_str().unwrap(), "k");
    let out = d.path().join("out");
    let j = restore_json(&store, out.to_str().unwrap(), &["--key", "k", "--link", "hardlink"]);
    assert_eq!(j["hardlink_copied"], 2, "{j}");
    let t = describe(&out);
    for (name, mode, linked) in [
        ("secret", 0o600, false),
        ("private.sh", 0o700, false),
        ("public", 0o444, true),
        ("tool.sh", 0o555, true),
    ] {
        let m = fs::metadata(out.join(name)).unwrap();
        assert_eq!(t[name].mode, mode, "{name}");
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&m) > 1, linked, "{name}");
    }
}

/// The store is private: its directories are 0700 (objects stay read-only files), and a store
/// made before that is tightened when it is next opened by its owner.
#[test]
fn the_store_is_created_private_and_an_old_open_store_is_tightened() {
    use std::os::unix::fs::PermissionsExt;
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    two_blobs(&src);
    save_dir(&store, src.to_str().unwrap(), "k");
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    for dir in [
        store.clone(),
        store.join("objects-v1"),
        store.join("objects-v1/ab"),
        store.join("tmp"),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    assert_eq!(mode(&object_path(&store, b"small\n")), 0o444);
    fs::set_permissions(&store, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(store.join("objects-v1"), fs::Permissions::from_mode(0o755)).unwrap();
    ok_json(&envsnap(&store, &["--json", "list"]));
    assert_eq!(mode(&store), 0o700);
    assert_eq!(mode(&store.join("objects-v1")), 0o700);
}

/// An object replaced by a FIFO made verify and restore block forever in open(2); one
/// replaced by a directory or a symlink was only "unreadable", kept by `verify --repair`, and
/// a new save of the content did not heal the snapshot. Now each is corrupt: reported at once,
/// removed by repair, and rewritten by the next save of that content.
#[test]
fn fifo_directory_and_symlink_objects_are_corrupt_repaired_and_rewritten() {
    for kind in ["fifo", "directory", "symlink"] {
        let d = tmp();
        let (src, store) = (d.path().join("src"), d.path().join("store"));
        let (a, _) = two_blobs(&src);
        save_dir(&store, src.to_str().unwrap(), "k");
        let obj = object_path(&store, &a);
        let plant = || {
            let _ = fs::remove_file(&obj);
            let _ = fs::remove_dir_all(&obj);
            match kind {
                "fifo" => {
                    let c = std::ffi::CString::new(obj.to_str().unwrap()).unwrap();
                    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
                }
                "directory" => fs::create_dir(&obj).unwrap(),
                _ => std::os::unix::fs::symlink(src.join("a.bin"), &obj).unwrap(),
            }
        };
        plant();
        let o = envsnap_within(&store, &["--json", "verify"], 60);
        assert_eq!(code(&o), 2, "{kind}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["corrupt"][0], format!("{}", blake3::hash(&a).to_hex()), "{kind}: {v}");
        for link in ["copy", "hardlink"] {
            let out = d.path().join(format!("out-{link}"));
            let o = envsnap_within(
                &store,
                &["restore", out.to_str().unwrap(), "--key", "k", "--link", link],
                60,
            );
            assert_refused_naming(&o, &out, &format!("{kind}, {link}"));
        }
        // A save of the same content (from another path: no stat cache) rewrites the object.
        let copy = d.path().join("copy");
        two_blobs(&copy);
        save_dir(&store, copy.to_str().unwrap(), "k2");
        assert!(
            fs::symlink_metadata(&obj).unwrap().is_file(),
            "{kind}: rewritten by the save"
        );
        ok_json(&envsnap(&store, &["--json", "verify"]));
        // And `verify --repair` removes one.
        plant();
        envsnap_within(&store, &["verify", "--repair"], 60);
        assert!(fs::symlink_metadata(&obj).is_err(), "{kind}: removed by repair");
        // Repair removed the snapshots it broke and the stat-cache rows naming the object:
        // saving the original tree again reads that file and stores it.
        let again = save_dir(&store, src.to_str().unwrap(), "k");
        assert_eq!(again["new_objects"], 1, "{kind}: {again}");
        restore_json(
            &store,
            d.path().join("out").to_str().unwrap(),
            &["--key", "k", "--link", "hardlink"],
        );
    }
}

/// Keys read from the index are input: a crafted row whose key holds a newline and a terminal
/// escape must not add `$GITHUB_OUTPUT` lines of its own nor reach the terminal raw.
#[test]
fn a_crafted_key_in_the_index_cannot_inject_outputs_or_escapes() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    two_blobs(&src);
    save_dir(&store, src.to_str().unwrap(), "good");
    let evil = "evil\ncache-hit=true\u{1b}[2J";
    {
        let mut idx = envsnap::index::Index::open(&store.join("index.sqlite")).unwrap();
        let mut row = idx.get("good").unwrap().unwrap();
        let m = idx.manifest(row.id).unwrap();
        row.key = evil.into();
        plant_snapshot(&mut idx, &row, &m);
    }
    let gh = d.path().join("gh");
    let out = d.path().join("out");
    let o = envsnap_env(
        &store,
        &[
            "restore",
            out.to_str().unwrap(),
            "--key",
            "nothing",
            "--fallback",
            "evil",
        ],
        &[("GITHUB_OUTPUT", gh.to_str().unwrap())],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stderr(&o).contains('\u{1b}'), "{}", stderr(&o));
    // GitHub's parser: `name=value`, or `name<<DELIM` … `DELIM`.
    let text = fs::read_to_string(&gh).unwrap();
    let mut outputs = std::collections::BTreeMap::new();
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if let Some((name, delim)) = l.split_once("<<") {
            let mut v = Vec::new();
            for l in lines.by_ref() {
                if l == delim {
                    break;
                }
                v.push(l);
            }
            outputs.insert(name.to_string(), v.join("\n"));
        } else {
            let (k, v) = l.split_once('=').unwrap();
            outputs.insert(k.to_string(), v.to_string());
        }
    }
    assert_eq!(outputs["cache-hit"], "false", "{text}");
    assert_eq!(outputs["hit"], "fallback", "{text}");
    assert_eq!(outputs["matched-key"], evil, "{text}");
    for cmd in [&["list"][..], &["show", evil]] {
        let o = envsnap(&store, cmd);
        let all = String::from_utf8_lossy(&o.stdout).into_owned() + &stderr(&o);
        assert!(!all.contains('\u{1b}'), "{cmd:?}: {all:?}");
    }
}

/// `runuser -u nobody` (or `setpriv` to uid/gid 65534), if this machine has one of them.
fn as_nobody() -> Option<std::process::Command> {
    let have = |tool: &str| {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have("setpriv") {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        Some(c)
    } else if have("runuser") {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "nobody", "--"]);
        Some(c)
    } else {
        None
    }
}

/// Root restores a snapshot another user saved with that user's owners; that user restoring a
/// root-owned tree gets it as their own, exit 0, with a warning naming what it could not set.
#[test]
fn owners_across_users_are_kept_by_root_and_named_when_they_cannot_be_set() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !require_root("switching to an unprivileged user") {
        return;
    }
    let Some(mut nobody) = as_nobody() else {
        skip("owners across users: neither setpriv nor runuser is installed");
        return;
    };
    let d = tmp();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let run_as_nobody = |cmd: &mut std::process::Command, args: &[&str]| {
        let o = cmd
            .arg(bin())
            .args(args)
            .env_remove("GITHUB_OUTPUT")
            .env_remove("ENVSNAP_STORE")
            .output()
            .unwrap();
        (code(&o), stderr(&o))
    };

    // Saved by nobody, into nobody's store; restored by root: nobody's owners.
    let (usrc, ustore) = (d.path().join("user-src"), d.path().join("user-store"));
    two_blobs(&usrc);
    std::os::unix::fs::chown(d.path(), Some(65534), Some(65534)).unwrap();
    for e in walkdir::WalkDir::new(&usrc) {
        std::os::unix::fs::chown(e.unwrap().path(), Some(65534), Some(65534)).unwrap();
    }
    let (c, e) = run_as_nobody(
        &mut as_nobody().unwrap(),
        &[
            "--store",
            ustore.to_str().unwrap(),
            "save",
            "dir",
            usrc.to_str().unwrap(),
            "--key",
            "u",
        ],
    );
    assert_eq!(c, 0, "{e}");
    let out = d.path().join("root-out");
    restore_json(&ustore, out.to_str().unwrap(), &["--key", "u"]);
    let m = fs::metadata(out.join("a.bin")).unwrap();
    assert_eq!((m.uid(), m.gid()), (65534, 65534));
    assert_eq!(
        fs::metadata(&ustore).unwrap().uid(),
        65534,
        "root leaves a user's store theirs"
    );

    // Saved by root (root-owned tree, a setgid dir); the store handed to nobody; nobody
    // restores: exit 0, files are nobody's, and a warning says what could not be set.
    let (rsrc, rstore) = (d.path().join("root-src"), d.path().join("root-store"));
    two_blobs(&rsrc);
    std::os::unix::fs::chown(&rsrc, Some(0), Some(0)).unwrap();
    save_dir(&rstore, rsrc.to_str().unwrap(), "r");
    for e in walkdir::WalkDir::new(&rstore) {
        std::os::unix::fs::lchown(e.unwrap().path(), Some(65534), Some(65534)).unwrap();
    }
    let nout = d.path().join("nobody-out");
    let (c, e) = run_as_nobody(
        &mut nobody,
        &[
            "--store",
            rstore.to_str().unwrap(),
            "restore",
            nout.to_str().unwrap(),
            "--key",
            "r",
        ],
    );
    assert_eq!(c, 0, "{e}");
    assert!(
        e.contains("warning") && e.contains("not running as root") && e.contains("uid 0"),
        "{e}"
    );
    let m = fs::metadata(nout.join("a.bin")).unwrap();
    assert_eq!((m.uid(), m.gid()), (65534, 65534));
    assert_eq!(fs::read(nout.join("small")).unwrap(), b"small\n");
}
