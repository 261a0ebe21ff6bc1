//! Faults: kills, full disks, files changing under a save, odd timestamps. Each test runs the
//! real binary and guards one defect found by killing, filling and racing it.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A small tree: `n` files with distinct content, in two directories.
fn small_tree(root: &Path, tag: &str, n: usize) {
    fs::create_dir_all(root.join("a/b")).unwrap();
    for i in 0..n {
        let dir = if i % 2 == 0 { "a" } else { "a/b" };
        fs::write(root.join(dir).join(format!("f{i}")), format!("{tag} {i}\n").repeat(20)).unwrap();
    }
}

/// Names in `dir` that look like envsnap staging leftovers.
fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".envsnap-"))
        .collect()
}

/// The state a `restore --force` killed between moving the old tree aside and renaming the new
/// one into place leaves where RENAME_EXCHANGE is unsupported: `dest` missing, the old tree in
/// `.<name>.envsnap-<pid>-old-<random>/old`. Returns that `old` directory.
fn interrupted_swap(dest: &Path) -> PathBuf {
    let name = dest.file_name().unwrap().to_str().unwrap();
    let trash = dest
        .parent()
        .unwrap()
        .join(format!(".{name}.envsnap-{}-old-Ab12Cd", dead_pid()));
    let old = trash.join("old");
    fs::create_dir_all(old.join("src")).unwrap();
    fs::write(old.join("src/main.rs"), b"the user's only copy\n").unwrap();
    if dest.exists() {
        fs::remove_dir_all(dest).unwrap();
    }
    old
}

#[test]
fn an_old_tree_moved_aside_by_a_killed_force_restore_is_put_back_not_deleted() {
    let d = tmp();
    let (src, store, dest) = (d.path().join("src"), d.path().join("store"), d.path().join("out"));
    small_tree(&src, "snap", 4);
    save_dir(&store, src.to_str().unwrap(), "k");
    interrupted_swap(&dest);
    // The next restore there (without --force) must not delete the old tree: it puts it back
    // and then refuses to replace it.
    let o = envsnap(&store, &["restore", dest.to_str().unwrap(), "--key", "k"]);
    assert_eq!(
        fs::read(dest.join("src/main.rs")).ok().as_deref(),
        Some(&b"the user's only copy\n"[..]),
        "the old tree is back at the destination: {}",
        stderr(&o)
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("put the previous tree back") && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    assert!(leftovers(d.path()).is_empty(), "{:?}", leftovers(d.path()));
}

#[test]
fn an_old_tree_whose_swap_may_have_completed_is_kept_and_named() {
    let d = tmp();
    let (src, store, dest) = (d.path().join("src"), d.path().join("store"), d.path().join("out"));
    small_tree(&src, "snap", 4);
    save_dir(&store, src.to_str().unwrap(), "k");
    let old = interrupted_swap(&dest);
    // Something was put at the destination since: the old tree cannot go back, and may be the
    // only copy of that data.
    fs::create_dir_all(&dest).unwrap();
    fs::write(dest.join("new"), b"x").unwrap();
    let o = envsnap(&store, &["restore", dest.to_str().unwrap(), "--key", "k", "--force"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(describe(&dest), describe(&src));
    assert_eq!(fs::read(old.join("src/main.rs")).unwrap(), b"the user's only copy\n");
    assert!(
        stderr(&o).contains("kept") && stderr(&o).contains(old.to_str().unwrap()),
        "{}",
        stderr(&o)
    );
    // gc keeps it too.
    let rec = store.join("restores");
    fs::create_dir_all(&rec).unwrap();
    fs::write(rec.join(format!("{}-x", dead_pid())), dest.to_str().unwrap()).unwrap();
    let o = envsnap(&store, &["gc"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(old.join("src/main.rs").exists());
    assert!(stderr(&o).contains(old.to_str().unwrap()), "{}", stderr(&o));
}

#[test]
fn gc_puts_back_an_old_tree_a_killed_force_restore_moved_aside() {
    let d = tmp();
    let (src, store, dest) = (d.path().join("src"), d.path().join("store"), d.path().join("out"));
    small_tree(&src, "snap", 4);
    save_dir(&store, src.to_str().unwrap(), "k");
    interrupted_swap(&dest);
    let rec = store.join("restores");
    fs::create_dir_all(&rec).unwrap();
    fs::write(rec.join(format!("{}-x", dead_pid())), dest.to_str().unwrap()).unwrap();
    let o = envsnap(&store, &["gc"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(fs::read(dest.join("src/main.rs")).unwrap(), b"the user's only copy\n");
    assert!(leftovers(d.path()).is_empty(), "{:?}", leftovers(d.path()));
    assert_eq!(fs::read_dir(&rec).unwrap().count(), 0, "the record is gone");
}

#[test]
fn force_restore_without_rename_exchange_replaces_the_tree_and_leaves_nothing() {
    let d = tmp();
    let (src, store, dest) = (d.path().join("src"), d.path().join("store"), d.path().join("out"));
    small_tree(&src, "snap", 6);
    save_dir(&store, src.to_str().unwrap(), "k");
    small_tree(&dest, "previous", 3);
    let o = envsnap_env(
        &store,
        &["restore", dest.to_str().unwrap(), "--key", "k", "--force"],
        &[("ENVSNAP_TEST_NO_RENAME_EXCHANGE", "1")],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(describe(&dest), describe(&src));
    assert!(leftovers(d.path()).is_empty(), "{:?}", leftovers(d.path()));
}

/// Start `envsnap ARGS…`, wait until `ready()` or the process ends, then kill -9 it.
/// Returns whether it was killed while running.
fn kill_when(store: &Path, args: &[&str], env: &[(&str, &str)], ready: impl Fn() -> bool) -> bool {
    let mut c = Command::new(bin());
    c.arg("--store").arg(store).args(args).env_remove("GITHUB_OUTPUT");
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if ready() {
            let _ = child.kill();
            let _ = child.wait();
            return true;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

#[test]
fn gc_removes_the_staging_tree_of_a_killed_restore() {
    let d = tmp();
    let (src, store, dest) = (d.path().join("src"), d.path().join("store"), d.path().join("out"));
    small_tree(&src, "snap", 4000);
    save_dir(&store, src.to_str().unwrap(), "k");
    let mut killed = false;
    for _ in 0..20 {
        let _ = fs::remove_dir_all(&dest);
        killed = kill_when(&store, &["restore", dest.to_str().unwrap(), "--key", "k"], &[], || {
            !leftovers(d.path()).is_empty()
        });
        if killed && !leftovers(d.path()).is_empty() {
            break;
        }
    }
    assert!(killed, "could not kill a restore while it was staging");
    assert!(!leftovers(d.path()).is_empty());
    let o = envsnap(&store, &["gc"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(leftovers(d.path()).is_empty(), "{:?}", leftovers(d.path()));
    assert_eq!(fs::read_dir(store.join("restores")).unwrap().count(), 0);
    assert!(!dest.exists() || describe(&dest) == describe(&src));
}

#[test]
fn bookkeeping_that_fails_after_the_commit_is_a_warning_not_a_failed_restore() {
    let d = tmp();
    let (src, store, dest) = (d.path().join("src"), d.path().join("store"), d.path().join("out"));
    small_tree(&src, "snap", 4);
    save_dir(&store, src.to_str().unwrap(), "k");
    // /dev/full: every write fails with "No space left on device", after the tree is in place.
    let o = envsnap_env(
        &store,
        &["restore", dest.to_str().unwrap(), "--key", "k"],
        &[("GITHUB_OUTPUT", "/dev/full")],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning") && stderr(&o).contains("GITHUB_OUTPUT"),
        "{}",
        stderr(&o)
    );
    assert_eq!(describe(&dest), describe(&src));
}

/// Sets the flag when dropped: a background writer stops even when an assertion fails.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Run `save dir SRC --key KEY --json`; (exit code, JSON or Null, stderr).
fn save_json(store: &Path, src: &Path, key: &str) -> (i32, serde_json::Value, String) {
    let o = envsnap(store, &["--json", "save", "dir", src.to_str().unwrap(), "--key", key]);
    let j = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (code(&o), j, stderr(&o))
}

fn listed(j: &serde_json::Value, field: &str, p: &Path) -> bool {
    j[field]
        .as_array()
        .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(p.to_str().unwrap())))
}

/// Is `content` a state a file had while a writer rewrote it again and again, front to back,
/// each pass stamping every u32 word with its pass number? Then the words read front to back
/// are a newer pass up to where the writer was, the previous one after it: never increasing,
/// never more than one apart. A read the writer overtook has a later word newer than an
/// earlier one, or passes two apart: a state the file never had.
fn a_state_it_had(content: &[u8]) -> bool {
    let words: Vec<u32> = content
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
        .collect();
    let (min, max) = (words.iter().min().unwrap(), words.iter().max().unwrap());
    max - min <= 1 && words.windows(2).all(|w| w[0] >= w[1])
}

#[test]
fn a_file_rewritten_while_save_reads_it_is_read_again_or_reported_never_torn_silently() {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    fs::create_dir_all(&src).unwrap();
    let big = src.join("log.bin");
    // Large enough to be streamed in chunks, so a rewrite lands in the middle of a read.
    const SIZE: usize = 12 << 20;
    fs::write(&big, vec![0u8; SIZE]).unwrap();
    let stop = AtomicBool::new(false);
    let (mut reported, mut clean) = (0, 0);
    std::thread::scope(|s| {
        // However the trials end (a failed assertion too), the writer stops.
        let _stop = StopOnDrop(&stop);
        // The writer rewrites the file in place, front to back, 1 MiB at a time, forever.
        s.spawn(|| {
            let f = fs::OpenOptions::new().write(true).open(&big).unwrap();
            let mut pass = 1u32;
            while !stop.load(Ordering::Relaxed) {
                let chunk: Vec<u8> = std::iter::repeat_n(pass.to_le_bytes(), 1 << 18).flatten().collect();
                for off in (0..SIZE).step_by(1 << 20) {
                    f.write_all_at(&chunk, off as u64).unwrap();
                }
                pass += 1;
            }
        });
        for trial in 0..6 {
            let key = format!("k{trial}");
            let (rc, j, err) = save_json(&store, &src, &key);
            assert_eq!(rc, 0, "{err}");
            if listed(&j, "changed_while_read", &big) {
                assert!(
                    err.contains("changed while it was read") && err.contains(big.to_str().unwrap()),
                    "{err}"
                );
                reported += 1;
                continue;
            }
            // Not reported: what was saved must be a state the file had.
            let out = d.path().join(format!("out{trial}"));
            restore_json(&store, out.to_str().unwrap(), &["--key", &key]);
            assert!(
                a_state_it_had(&fs::read(out.join("log.bin")).unwrap()),
                "trial {trial}: torn content saved without a warning"
            );
            clean += 1;
        }
    });
    eprintln!("{reported} saves reported the file changing, {clean} read a state it had");
    // Once the writer stops, a save reads it whole and caches it again.
    let (rc, j, err) = save_json(&store, &src, "after");
    assert_eq!(rc, 0, "{err}");
    assert!(!listed(&j, "changed_while_read", &big), "{j}");
}

#[test]
fn a_file_deleted_while_save_walks_the_tree_is_skipped_with_a_warning_naming_it() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    small_tree(&src, "keep", 2000);
    let churn = src.join("churn");
    fs::create_dir_all(&churn).unwrap();
    let stop = AtomicBool::new(false);
    let mut vanished_seen = 0;
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        // Files (and directories) appear and disappear all the time, like a build's temp files.
        s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let f = churn.join(format!("t{}", i % 64));
                let dir = churn.join(format!("d{}", i % 8));
                if i % 128 < 64 {
                    let _ = fs::write(&f, b"temporary");
                    let _ = fs::create_dir_all(dir.join("sub"));
                    let _ = fs::write(dir.join("sub/x"), b"x");
                } else {
                    let _ = fs::remove_file(&f);
                    let _ = fs::remove_dir_all(&dir);
                }
                i += 1;
            }
        });
        for trial in 0..15 {
            let key = format!("k{trial}");
            let (rc, j, err) = save_json(&store, &src, &key);
            assert_eq!(rc, 0, "trial {trial}: a deleted file failed the save: {err}");
            let gone = j["vanished"].as_array().unwrap();
            for p in gone {
                let p = p.as_str().unwrap();
                assert!(err.contains(&format!("skipped {p}: deleted")), "{err}");
            }
            vanished_seen += gone.len();
            if vanished_seen > 0 && trial >= 4 {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(
        vanished_seen > 0,
        "no save saw a file vanish: the test did not test anything"
    );
    // Every snapshot is whole.
    assert_eq!(code(&envsnap(&store, &["verify"])), 0);
    let out = d.path().join("out");
    restore_json(&store, out.to_str().unwrap(), &["--key", "k0"]);
    assert_eq!(fs::read(out.join("a/f0")).unwrap(), fs::read(src.join("a/f0")).unwrap());
}

#[test]
fn an_mtime_after_2262_is_refused_clearly_never_wrapped_to_1901() {
    use std::os::unix::fs::MetadataExt;
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("ok"), b"fine").unwrap();
    let far = src.join("from-the-future");
    fs::write(&far, b"x").unwrap();
    let st = Command::new("touch")
        .args(["-d", "2300-01-01 00:00:00 UTC"])
        .arg(&far)
        .status()
        .unwrap();
    assert!(st.success());
    let secs = fs::metadata(&far).unwrap().mtime();
    if secs < i64::MAX / 1_000_000_000 {
        eprintln!("SKIP: this filesystem stores {secs} for a 2300 mtime (it clamps); nothing to test");
        return;
    }
    let o = envsnap(&store, &["save", "dir", src.to_str().unwrap(), "--key", "k"]);
    let err = stderr(&o);
    assert_eq!(code(&o), 2, "{err}");
    assert!(
        err.contains(far.to_str().unwrap()) && err.contains("2300-01-01") && err.contains("2262"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // Nothing was committed.
    let list = ok_json(&envsnap(&store, &["--json", "list"]));
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 0);
}

#[test]
fn a_full_store_disk_still_lists_verifies_and_restores_and_says_which_disk_is_full() {
    if !require_root("mounting a small tmpfs") {
        return;
    }
    let d = tmp();
    let src = d.path().join("src");
    small_tree(&src, "snap", 20);
    let m = Mount::tmpfs(&d.path().join("store-fs"), "size=4m");
    let store = m.0.join("store");
    save_dir(&store, src.to_str().unwrap(), "k");
    fill_up(&m.0);

    let list = ok_json(&envsnap(&store, &["--json", "list"]));
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1);
    let o = envsnap(&store, &["verify"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // The restore writes only its destination; its bookkeeping in the store is what fails.
    let dest = d.path().join("out");
    let gh = d.path().join("github-output");
    let o = envsnap_env(
        &store,
        &["restore", dest.to_str().unwrap(), "--key", "k"],
        &[("GITHUB_OUTPUT", gh.to_str().unwrap())],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(describe(&dest), describe(&src));
    assert!(fs::read_to_string(&gh).unwrap().contains("cache-hit=true"));
    // A save needs space in the store: the error says the store's disk is full and what helps.
    let o = envsnap(&store, &["save", "dir", src.to_str().unwrap(), "--key", "k2"]);
    let err = stderr(&o);
    assert_eq!(code(&o), 2, "{err}");
    assert!(
        err.contains("disk full") && err.contains(store.to_str().unwrap()) && err.contains("gc"),
        "{err}"
    );

    // A full destination is about the destination: gc of the store would not help.
    let good = d.path().join("store");
    save_dir(&good, src.to_str().unwrap(), "k");
    let dm = Mount::tmpfs(&d.path().join("dest-fs"), "size=1m");
    fill_up(&dm.0);
    let o = envsnap(&good, &["restore", dm.0.join("out").to_str().unwrap(), "--key", "k"]);
    let err = stderr(&o);
    assert_eq!(code(&o), 2, "{err}");
    assert!(
        err.contains("disk full") && err.contains(dm.0.to_str().unwrap()),
        "{err}"
    );
    assert!(
        !err.contains("gc"),
        "a full destination is not the store's problem: {err}"
    );
}

/// xorshift64*: reproducible random kill points (the seed is printed; ENVSNAP_KILL_SEED reruns one).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a tree holds, for byte-exact comparison (modes, owners, mtimes, content, link targets).
type Tree = std::collections::BTreeMap<String, Attr>;

/// The kill test's source: small files, a large one (streamed through `tmp/`), symlinks, a
/// hard link; `gen` changes some content, so saves write new objects.
fn kill_source(src: &Path, gen: u64) {
    if !src.exists() {
        small_tree(src, "base", 300);
        fs::write(src.join("big.bin"), vec![7u8; 9 << 20]).unwrap();
        std::os::unix::fs::symlink("a/f0", src.join("link")).unwrap();
        fs::hard_link(src.join("a/f2"), src.join("hard")).unwrap();
    }
    fs::write(
        src.join(format!("a/gen{}", gen % 3)),
        format!("generation {gen}\n").repeat(100),
    )
    .unwrap();
    let mut big = fs::read(src.join("big.bin")).unwrap();
    let at = (gen as usize * 4099) % big.len();
    big[at] = gen as u8;
    fs::write(src.join("big.bin"), big).unwrap();
}

/// The check after every kill: `verify` passes; every listed snapshot restores byte-exactly
/// as one of the trees its key was saved from; returns the key → tree each one matched.
fn check_store(store: &Path, scratch: &Path, expected: &std::collections::HashMap<String, Vec<Tree>>, what: &str) {
    let o = envsnap(store, &["verify"]);
    assert_eq!(code(&o), 0, "{what}: verify failed: {}", stderr(&o));
    let list = ok_json(&envsnap(store, &["--json", "list"]));
    for snap in list["snapshots"].as_array().unwrap() {
        let key = snap["key"].as_str().unwrap();
        let out = scratch.join("check");
        let _ = fs::remove_dir_all(&out);
        restore_json(store, out.to_str().unwrap(), &["--key", key, "--link", "copy"]);
        let got = describe(&out);
        assert!(
            expected[key].contains(&got),
            "{what}: snapshot {key} restores as a tree it was never saved from"
        );
        fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn kill_9_at_random_points_never_breaks_the_store_or_the_destination() {
    let trials: u64 = std::env::var("ENVSNAP_KILL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let seed = std::env::var("ENVSNAP_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("kill test: {trials} trials, ENVSNAP_KILL_SEED={seed}");
    let mut rng = Rng(seed);
    let d = tmp();
    let (src, store, scratch) = (d.path().join("src"), d.path().join("store"), d.path().join("scratch"));
    let dests = d.path().join("dests");
    fs::create_dir_all(&scratch).unwrap();
    fs::create_dir_all(&dests).unwrap();
    let keys = ["k0", "k1", "k2"];
    let mut expected: std::collections::HashMap<String, Vec<Tree>> = Default::default();
    kill_source(&src, 0);
    for k in keys {
        save_dir(&store, src.to_str().unwrap(), k);
        expected.insert(k.into(), vec![describe(&src)]);
    }
    // How long each operation takes unkilled, so kill points spread over all of it.
    let timed = |args: &[&str], env: &[(&str, &str)]| {
        let t = std::time::Instant::now();
        let o = envsnap_env(&store, args, env);
        assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
        t.elapsed().as_micros() as u64
    };
    let s = src.to_str().unwrap();
    let save_us = timed(&["save", "dir", s, "--key", "k0"], &[]);
    let probe = dests.join("probe");
    let restore_us = timed(
        &["restore", probe.to_str().unwrap(), "--key", "k0", "--link", "copy"],
        &[],
    );
    let gc_us = timed(&["gc", "--max-age", "7d"], &[]);
    let verify_us = timed(&["verify", "--repair"], &[]);
    fs::remove_dir_all(&probe).unwrap();
    let mut killed = 0;
    for trial in 0..trials {
        let gen = trial + 1;
        let key = keys[rng.below(keys.len() as u64) as usize];
        let op = rng.below(8);
        let what;
        let mut force_dest: Option<(PathBuf, Tree)> = None;
        let mut fresh_dest: Option<PathBuf> = None;
        let mut env: Vec<(&str, &str)> = Vec::new();
        let (args, us): (Vec<String>, u64) = match op {
            // save (new content under an existing key)
            0 | 1 => {
                kill_source(&src, gen);
                what = format!("trial {trial}: save {key}");
                (
                    vec!["save".into(), "dir".into(), s.into(), "--key".into(), key.into()],
                    save_us,
                )
            }
            // restore into a fresh destination, every link mode
            2 | 3 => {
                let link = ["auto", "copy", "reflink", "hardlink"][rng.below(4) as usize];
                let dest = dests.join(format!("fresh{trial}"));
                what = format!("trial {trial}: restore {key} --link {link}");
                fresh_dest = Some(dest.clone());
                let a = vec![
                    "restore".into(),
                    dest.to_str().unwrap().into(),
                    "--key".into(),
                    key.into(),
                    "--link".into(),
                    link.into(),
                ];
                (a, restore_us)
            }
            // restore --force over an existing tree, with and without RENAME_EXCHANGE
            4 | 5 => {
                let link = ["auto", "copy", "hardlink"][rng.below(3) as usize];
                let dest = dests.join("forced");
                if !dest.exists() {
                    small_tree(&dest, "the user's", 50);
                }
                let exchange = op == 4;
                if !exchange {
                    env.push(("ENVSNAP_TEST_NO_RENAME_EXCHANGE", "1"));
                }
                what = format!("trial {trial}: restore --force {key} --link {link} (exchange: {exchange})");
                force_dest = Some((dest.clone(), describe(&dest)));
                let a = vec![
                    "restore".into(),
                    dest.to_str().unwrap().into(),
                    "--key".into(),
                    key.into(),
                    "--link".into(),
                    link.into(),
                    "--force".into(),
                ];
                (a, restore_us)
            }
            6 => {
                what = format!("trial {trial}: gc");
                (
                    vec![
                        "gc".into(),
                        "--max-age".into(),
                        "0s".into(),
                        "--keep-last".into(),
                        "2".into(),
                    ],
                    gc_us,
                )
            }
            _ => {
                what = format!("trial {trial}: verify --repair");
                (vec!["verify".into(), "--repair".into()], verify_us)
            }
        };
        let delay = std::time::Duration::from_micros(rng.below(us + us / 5 + 1));
        let start = std::time::Instant::now();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let was_killed = kill_when(&store, &args, &env, || start.elapsed() >= delay);
        killed += u64::from(was_killed);
        if op <= 1 {
            // The key now names the tree saved before, or this one.
            expected.get_mut(key).unwrap().push(describe(&src));
        }
        // The destination is absent or complete.
        if let Some(dest) = &fresh_dest {
            if dest.exists() {
                let got = describe(dest);
                let is_snapshot = expected[key].iter().any(|t| {
                    t.len() == got.len()
                        && t.iter()
                            .zip(&got)
                            .all(|((p, w), (q, g))| p == q && w.kind == g.kind && w.content == g.content)
                });
                assert!(is_snapshot, "{what}: a partial tree at {}", dest.display());
                fs::remove_dir_all(dest).unwrap();
            }
        }
        if let Some((dest, before)) = &force_dest {
            if !dest.exists() {
                // Killed between moving the old tree aside and renaming the new one in: gc (or
                // the next restore there) puts the old tree back.
                let o = envsnap(&store, &["gc", "--max-age", "7d"]);
                assert_eq!(code(&o), 0, "{what}: {}", stderr(&o));
                assert!(
                    dest.exists(),
                    "{what}: the old tree was not put back: {:?}",
                    leftovers(&dests)
                );
            }
            let got = describe(dest);
            let same_content = |a: &Tree, b: &Tree| {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|((p, w), (q, g))| p == q && w.kind == g.kind && w.content == g.content)
            };
            let old = same_content(&got, before);
            let new = expected[key].iter().any(|t| same_content(t, &got));
            assert!(
                old || new,
                "{what}: the destination is neither the old tree nor the snapshot"
            );
            if new {
                // Back to a user tree for the next --force trial.
                fs::remove_dir_all(dest).unwrap();
            }
        }
        check_store(&store, &scratch, &expected, &what);
        // The next save works.
        kill_source(&src, gen);
        let o = envsnap(&store, &["save", "dir", s, "--key", key]);
        assert_eq!(code(&o), 0, "{what}: the next save failed: {}", stderr(&o));
        expected.insert(key.into(), vec![describe(&src)]);
    }
    // After a gc nothing that killed restores left remains beside their destinations.
    let o = envsnap(&store, &["gc", "--max-age", "7d"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let left = leftovers(&dests);
    assert!(left.is_empty(), "seed {seed}: left behind: {left:?}");
    assert_eq!(fs::read_dir(store.join("restores")).map(|r| r.count()).unwrap_or(0), 0);
    check_store(&store, &scratch, &expected, "at the end");
    eprintln!("kill test: {killed} of {trials} operations killed midway (seed {seed})");
}
