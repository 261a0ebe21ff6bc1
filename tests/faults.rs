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
