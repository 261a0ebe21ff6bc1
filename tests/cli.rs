//! The CLI as a newcomer meets it (issue 12): pipes, usage errors, one-line errors, one miss
//! style, templates everywhere, read-only commands, honest dry runs and repairs, restore
//! destinations, wording. Every test runs the real binary.

mod common;

use common::pythons::skip;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A small tree and a store holding it under `key`.
fn saved(d: &Path, key: &str) -> (PathBuf, PathBuf) {
    let (src, store) = (d.join("src"), d.join("store"));
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.txt"), b"alpha").unwrap();
    fs::write(src.join("sub/b.txt"), b"beta").unwrap();
    save_dir(&store, src.to_str().unwrap(), key);
    (src, store)
}

/// Run envsnap with stdout a pipe whose reading end is already closed: every write to
/// stdout fails with EPIPE, deterministically.
fn into_closed_pipe(store: &Path, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(bin())
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("GITHUB_OUTPUT")
        .env_remove("ENVSNAP_STORE")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// `envsnap list | head -1` panicked ("failed printing to stdout: Broken pipe", exit 101) and
/// failed `set -o pipefail` CI steps. Every command's stdout goes through one writer now.
#[test]
fn closed_stdout_pipe_is_a_quiet_exit_0() {
    let d = tmp();
    let (_, store) = saved(d.path(), "pipe-1");
    for args in [
        &["list"][..],
        &["show", "pipe-1"],
        &["key", "plain-key"],
        &["--json", "list"],
        &["--json", "show", "pipe-1"],
        &["--json", "verify"],
        &[
            "--json",
            "restore",
            d.path().join("out").to_str().unwrap(),
            "--key",
            "pipe-1",
        ],
    ] {
        let o = into_closed_pipe(&store, args);
        assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(!e.contains("panicked") && !e.contains("Broken pipe"), "{args:?}: {e}");
    }
}

/// Usage errors kept only clap's first line: "the following required arguments were not
/// provided:" without naming `--key`, and no "did you mean" for a typo.
#[test]
fn usage_errors_are_claps_whole_message_and_exit_2() {
    let d = tmp();
    let store = d.path().join("store");
    let o = envsnap(&store, &["save", "dir", d.path().to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    let e = stderr(&o);
    assert!(
        e.contains("--key <KEY>") && e.contains("Usage: envsnap save dir"),
        "{e}"
    );
    let o = envsnap(&store, &["lsit"]);
    assert_eq!(code(&o), 2);
    let e = stderr(&o);
    assert!(e.contains("'list'") && e.contains("Usage:"), "no suggestion: {e}");
    // --help and --version still succeed, on stdout.
    let o = envsnap(&store, &["--version"]);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("envsnap "));
}

/// Paths need not be UTF-8: with a bare `--remote` (the URL from `$ENVSNAP_REMOTE`) the
/// command line is read again for a URL, which once panicked on such an argument.
#[test]
fn a_path_that_is_not_utf8_beside_a_bare_remote_is_saved_not_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let d = tmp();
    let store = d.path().join("store");
    let src = d.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let remote = format!("file://{}", d.path().join("remote").display());
    let o = Command::new(bin())
        .arg("--store")
        .arg(&store)
        .args(["save", "dir"])
        .arg(&src)
        .args(["--key", "k", "--remote"])
        .env("ENVSNAP_REMOTE", &remote)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(d.path().join("remote/envsnap-v1").is_dir());
}

/// An interpreter that fails the way a pyenv shim for a missing version does: seven lines.
fn failing_shim(dir: &Path) -> PathBuf {
    let shim = dir.join("python3");
    fs::write(
        &shim,
        "#!/bin/sh\necho \"pyenv: version \\`3.9.99' is not installed (set by PYENV_VERSION)\" >&2\n\
         echo >&2\necho \"The \\`python3' command exists in these Python versions:\" >&2\n\
         echo '  3.11.7' >&2\necho '  3.12.1' >&2\necho >&2\n\
         echo 'Note: See pyenv help global for tips on allowing both' >&2\nexit 127\n",
    )
    .unwrap();
    fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    shim
}

/// A broken `--python` printed a 7-line error. One line naming it and what to do; the
/// interpreter's own words under -v.
#[test]
fn broken_python_is_one_error_line_with_details_under_verbose() {
    let d = tmp();
    let store = d.path().join("store");
    let shim = failing_shim(d.path());
    let args = ["key", "py-{python}", "--python", shim.to_str().unwrap()];
    let o = envsnap(&store, &args);
    assert_eq!(code(&o), 2);
    let e = stderr(&o);
    assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
    assert!(
        e.starts_with("envsnap: error: ") && e.contains(shim.to_str().unwrap()),
        "{e}"
    );
    assert!(e.contains("is not installed") && e.contains("--python"), "{e}");
    let mut v = vec!["-v"];
    v.extend_from_slice(&args);
    let e = stderr(&envsnap(&store, &v));
    assert!(
        e.contains("3.12.1") && e.contains("pyenv help global"),
        "-v shows the details: {e}"
    );
}

/// Plain misses printed `miss: … or prefixes ["zzz-"]` (debug formatting) on a different
/// pattern than other messages: one `envsnap: miss:` line, lists formatted for people.
#[test]
fn misses_are_one_style_with_human_lists() {
    let d = tmp();
    let (_, store) = saved(d.path(), "k-1");
    let out = d.path().join("out");
    let o = envsnap(
        &store,
        &[
            "restore",
            out.to_str().unwrap(),
            "--key",
            "zzz",
            "--fallback",
            "yy-",
            "--fallback",
            "xx-",
        ],
    );
    assert_eq!(code(&o), 1);
    let e = stderr(&o);
    assert_eq!(
        e.trim_end(),
        "envsnap: miss: no snapshot for key \"zzz\" or prefixes \"yy-\" or \"xx-\"; nothing restored"
    );
    let o = envsnap(&store, &["-q", "restore", out.to_str().unwrap(), "--key", "zzz"]);
    assert_eq!((code(&o), stderr(&o)), (1, String::new()), "-q: a miss is silent");
}

/// The JSON of every miss has the fields of a plain miss. A miss decided by an adapter (the
/// venv's interpreter is gone) returned `{"error","exit","hit"}` without `key`/`matched_key`.
#[test]
fn every_json_miss_has_the_plain_miss_fields() {
    let d = tmp();
    let (_, store) = saved(d.path(), "k-1");
    let o = envsnap(
        &store,
        &[
            "--json",
            "restore",
            d.path().join("o").to_str().unwrap(),
            "--key",
            "none",
        ],
    );
    assert_eq!(code(&o), 1);
    let plain: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (plain["hit"].as_str(), plain["key"].as_str()),
        (Some("miss"), Some("none"))
    );
    let Some(py) = any_python3() else {
        skip("every_json_miss_has_the_plain_miss_fields (venv part): no python3 with venv found");
        return;
    };
    // A venv made by a private copy of the interpreter (its stdlib linked beside it, which is
    // how CPython finds its prefix), removed after the save: the venv's interpreter is gone
    // and PATH offers none, so the restore is the adapter's miss.
    let Some(venv) = venv_of_a_removable_python(d.path(), &py) else {
        skip(&format!(
            "every_json_miss_has_the_plain_miss_fields (venv part): a copy of {} cannot make a venv",
            py.display()
        ));
        return;
    };
    let o = envsnap(
        &store,
        &["--json", "save", "venv", venv.to_str().unwrap(), "--key", "v-1"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    fs::remove_dir_all(d.path().join("py-copy")).unwrap();
    let empty = d.path().join("empty-path");
    fs::create_dir_all(&empty).unwrap();
    let o = envsnap_env(
        &store,
        &[
            "--json",
            "restore",
            d.path().join("v2").to_str().unwrap(),
            "--key",
            "v-1",
        ],
        &[("PATH", empty.to_str().unwrap())],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let adapter: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fields = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(fields(&adapter), fields(&plain), "{adapter} vs {plain}");
    assert_eq!(
        (adapter["hit"].as_str(), adapter["key"].as_str()),
        (Some("miss"), Some("v-1"))
    );
    assert!(adapter["matched_key"].is_null());
    let e = stderr(&o);
    assert!(
        e.starts_with("envsnap: miss: ") && e.trim_end().lines().count() == 1,
        "{e}"
    );
}

/// `show 'pip-{os}-…'` said "no snapshot" while save/restore rendered templates; `list` too.
#[test]
fn show_and_list_take_key_templates() {
    let d = tmp();
    let (src, store) = (d.path().join("src"), d.path().join("store"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("req.txt"), b"six==1.16.0\n").unwrap();
    let save = Command::new(bin())
        .current_dir(&src)
        .arg("--store")
        .arg(&store)
        .args(["--json", "save", "dir", ".", "--key", "tpl-{os}-{hash:req.txt}"])
        .env_remove("ENVSNAP_STORE")
        .output()
        .unwrap();
    let key = ok_json(&save)["key"].as_str().unwrap().to_string();
    let run_in_src = |args: &[&str]| {
        Command::new(bin())
            .current_dir(&src)
            .arg("--store")
            .arg(&store)
            .args(args)
            .env_remove("ENVSNAP_STORE")
            .output()
            .unwrap()
    };
    let j = ok_json(&run_in_src(&["--json", "show", "tpl-{os}-{hash:req.txt}"]));
    assert_eq!(j["key"], key);
    let j = ok_json(&run_in_src(&["--json", "list", "tpl-{os}-"]));
    assert_eq!(j["snapshots"][0]["key"], key);
}

/// `DIR/venv`, made by `DIR/py-copy/bin/python3`: a copy of `py` whose stdlib is a symlink.
fn venv_of_a_removable_python(dir: &Path, py: &Path) -> Option<PathBuf> {
    let o = Command::new(py)
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"])
        .output()
        .ok()?;
    let stdlib = PathBuf::from(String::from_utf8(o.stdout).ok()?.trim());
    let copy = dir.join("py-copy");
    fs::create_dir_all(copy.join("bin")).ok()?;
    fs::create_dir_all(copy.join("lib")).ok()?;
    fs::copy(py, copy.join("bin/python3")).ok()?;
    std::os::unix::fs::symlink(&stdlib, copy.join("lib").join(stdlib.file_name()?)).ok()?;
    let venv = dir.join("venv");
    let ok = Command::new(copy.join("bin/python3"))
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .status()
        .ok()?
        .success();
    ok.then_some(venv)
}

/// Some CPython that can make a venv (tests/common/pythons.rs found it), as its real executable.
fn any_python3() -> Option<PathBuf> {
    common::pythons::all()
        .iter()
        .find(|p| p.can_venv)
        .map(|p| p.exe.clone())
}

/// `list` on a store that did not exist created it. Read-only commands never create or
/// modify a store: a missing one reads as empty.
#[test]
fn read_only_commands_never_create_a_store() {
    let d = tmp();
    let store = d.path().join("nothing-here");
    let o = envsnap(&store, &["--json", "list"]);
    assert_eq!(ok_json(&o)["snapshots"], serde_json::json!([]));
    let o = envsnap(&store, &["list"]);
    assert_eq!(code(&o), 0);
    assert!(stderr(&o).contains("no store at"), "{}", stderr(&o));
    let o = envsnap(&store, &["show", "k"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("no store at"), "{}", stderr(&o));
    assert_eq!(code(&envsnap(&store, &["verify"])), 0);
    assert_eq!(code(&envsnap(&store, &["gc", "--dry-run"])), 0);
    assert!(!store.exists(), "a read-only command created the store");
    // An existing, empty directory is not turned into a store either.
    fs::create_dir_all(&store).unwrap();
    for args in [&["list"][..], &["verify"], &["gc", "--dry-run"]] {
        assert_eq!(code(&envsnap(&store, args)), 0, "{args:?}");
    }
    assert_eq!(
        fs::read_dir(&store).unwrap().count(),
        0,
        "files appeared in the store dir"
    );
}

/// `gc --dry-run` printed "removed 3 snapshots and 34 objects".
#[test]
fn gc_dry_run_says_would_remove_and_json_says_dry_run() {
    let d = tmp();
    let (_, store) = saved(d.path(), "old-1");
    std::thread::sleep(std::time::Duration::from_millis(5));
    let o = envsnap(&store, &["gc", "--max-age", "1ms", "--dry-run"]);
    assert_eq!(code(&o), 0);
    let e = stderr(&o);
    assert!(e.contains("would remove 1 snapshot and 2 objects"), "{e}");
    assert!(!e.contains("removed"), "{e}");
    let j = ok_json(&envsnap(&store, &["--json", "gc", "--max-age", "1ms", "--dry-run"]));
    assert_eq!(j["dry_run"], true, "{j}");
    assert_eq!(j["removed_snapshots"][0], "old-1");
    let j = ok_json(&envsnap(&store, &["--json", "list"]));
    assert_eq!(j["snapshots"][0]["key"], "old-1", "a dry run removed the snapshot");
    let j = ok_json(&envsnap(&store, &["--json", "gc", "--max-age", "1ms"]));
    assert_eq!(j["dry_run"], false);
}

fn corrupt_an_object(store: &Path) {
    let obj = walkdir::WalkDir::new(store.join("objects-v1"))
        .into_iter()
        .map(|e| e.unwrap())
        .find(|e| e.file_type().is_file())
        .unwrap()
        .into_path();
    fs::set_permissions(&obj, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut b = fs::read(&obj).unwrap();
    b[0] ^= 1;
    fs::write(&obj, b).unwrap();
}

/// `verify --repair` exited 2 after a successful repair and told the user to run
/// `verify --repair`. A repair that leaves the store sound exits 0, says what it removed and
/// which snapshots to save again; the store then verifies clean and the key is a plain miss.
#[test]
fn verify_repair_exits_0_and_names_what_to_save_again() {
    let d = tmp();
    let (src, store) = saved(d.path(), "broken-1");
    corrupt_an_object(&store);
    let o = envsnap(&store, &["verify"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("verify --repair"), "{}", stderr(&o));
    let o = envsnap(&store, &["--json", "verify", "--repair"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("removed 1 corrupt object and 1 broken snapshot") && e.contains("save \"broken-1\" again"),
        "{e}"
    );
    assert!(!e.contains("run `envsnap verify --repair`"), "{e}");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["removed_snapshots"][0], "broken-1");
    assert_eq!(
        code(&envsnap(&store, &["verify"])),
        0,
        "the store is sound after the repair"
    );
    let o = envsnap(
        &store,
        &["restore", d.path().join("o").to_str().unwrap(), "--key", "broken-1"],
    );
    assert_eq!(code(&o), 1, "a removed snapshot is a miss: {}", stderr(&o));
    save_dir(&store, src.to_str().unwrap(), "broken-1");
    assert_eq!(code(&envsnap(&store, &["verify"])), 0);
}

/// Help: `show --help` had an undescribed `<KEY>`; `--key` of `save venv` and `apt install`
/// did not say it takes templates; global and command options were interleaved.
#[test]
fn help_describes_keys_templates_and_groups_global_options() {
    let d = tmp();
    let help = |args: &[&str]| {
        let o = envsnap(&d.path().join("s"), args);
        assert_eq!(code(&o), 0);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let h = help(&["show", "--help"]);
    let key_line = h
        .lines()
        .find(|l| l.trim_start().starts_with("<KEY>"))
        .unwrap_or_default();
    assert!(key_line.contains("template"), "{h}");
    for cmd in [
        &["save", "venv", "--help"][..],
        &["apt", "install", "--help"],
        &["save", "dir", "--help"],
    ] {
        let h = help(cmd);
        let key = h
            .lines()
            .find(|l| l.trim_start().starts_with("--key <KEY>"))
            .unwrap_or_default();
        assert!(key.contains("template"), "{cmd:?}: {key}");
        // Command options first, then the global ones under their own heading.
        let (own, global) = h
            .split_once("Global options:")
            .unwrap_or_else(|| panic!("{cmd:?}: {h}"));
        assert!(own.contains("--key") && !own.contains("--store"), "{cmd:?}: {h}");
        assert!(global.contains("--store") && global.contains("--json"), "{cmd:?}: {h}");
    }
}

/// "1 files hold its paths", "kept 1 snapshots": singular for one.
#[test]
fn counts_of_one_are_singular() {
    let d = tmp();
    let src = d.path().join("one");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("only"), b"x").unwrap();
    let store = d.path().join("store");
    let o = envsnap(&store, &["save", "dir", src.to_str().unwrap(), "--key", "one"]);
    let e = stderr(&o);
    assert!(
        e.contains("1 file, 0 dirs, 0 symlinks") && e.contains("1 new object "),
        "{e}"
    );
    let o = envsnap(&store, &["gc"]);
    assert!(stderr(&o).contains("kept 1 snapshot,"), "{}", stderr(&o));
    // And with a remote (it once said "1 keys, 2 objects in 1 packs").
    let remote = format!("file://{}", d.path().join("remote").display());
    let with_remote = |args: &[&str]| {
        let mut a = vec!["--remote", remote.as_str()];
        a.extend_from_slice(args);
        stderr(&envsnap(&store, &a))
    };
    with_remote(&["save", "dir", src.to_str().unwrap(), "--key", "one"]);
    let e = with_remote(&["verify"]);
    assert!(e.contains(": 1 key, 1 object in 1 pack:"), "{e}");
    let e = with_remote(&["gc", "--dry-run"]);
    assert!(
        e.contains("removed 0 keys (0 refs)") && e.contains("marked 0 packs"),
        "{e}"
    );
}

/// `restore` onto a regular file said a 0-byte file "is not empty", and `--force` left the old
/// file behind as `.file.envsnap-PID-…` for ever. Name what is there; replace it cleanly.
#[test]
fn restore_onto_a_file_says_so_and_force_leaves_nothing_behind() {
    let d = tmp();
    let (src, store) = saved(d.path(), "k-1");
    let target = d.path().join("there");
    for content in [&b""[..], b"old bytes"] {
        fs::write(&target, content).unwrap();
        let o = envsnap(&store, &["restore", target.to_str().unwrap(), "--key", "k-1"]);
        assert_eq!(code(&o), 2);
        let e = stderr(&o);
        assert!(
            e.contains("is a file") && e.contains("--force") && !e.contains("not empty"),
            "{e}"
        );
        assert_eq!(fs::read(&target).unwrap(), content, "refused restore changed the file");
    }
    restore_json(&store, target.to_str().unwrap(), &["--key", "k-1", "--force"]);
    assert_eq!(describe(&target), describe(&src));
    let left: Vec<String> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("envsnap"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // A symlink is named as one too.
    let link = d.path().join("link");
    std::os::unix::fs::symlink("there", &link).unwrap();
    let o = envsnap(&store, &["restore", link.to_str().unwrap(), "--key", "k-1"]);
    assert!(stderr(&o).contains("is a symlink"), "{}", stderr(&o));
}

/// `restore ../out` was refused ("contains `..`") while `save dir ../src` worked: a relative
/// destination resolves the way a save's source does, from the current directory.
#[test]
fn restore_to_a_dotdot_destination_resolves_like_save() {
    let d = tmp();
    let (src, store) = saved(d.path(), "k-1");
    let work = d.path().join("work");
    fs::create_dir_all(&work).unwrap();
    let in_work = |args: &[&str]| {
        Command::new(bin())
            .current_dir(&work)
            .arg("--store")
            .arg(&store)
            .args(args)
            .env_remove("ENVSNAP_STORE")
            .env_remove("GITHUB_OUTPUT")
            .output()
            .unwrap()
    };
    // The source too, given with `..`.
    assert_eq!(code(&in_work(&["save", "dir", "../src", "--key", "k-2"])), 0);
    let j = ok_json(&in_work(&["--json", "restore", "../out", "--key", "k-2"]));
    let out = d.path().canonicalize().unwrap().join("out");
    assert_eq!(j["path"], out.to_str().unwrap(), "{j}");
    assert_eq!(describe(&out), describe(&src));
    // Through a symlink, `..` is the kernel's: the parent of where the link points.
    let deep = d.path().join("a/b");
    fs::create_dir_all(&deep).unwrap();
    std::os::unix::fs::symlink(&deep, work.join("to-b")).unwrap();
    let j = ok_json(&in_work(&["--json", "restore", "to-b/../via-link", "--key", "k-2"]));
    let via = d.path().canonicalize().unwrap().join("a/via-link");
    assert_eq!(j["path"], via.to_str().unwrap(), "{j}");
    assert_eq!(describe(&via), describe(&src));
}

/// Progress bars counted in MiB while summaries said MB: one unit system (decimal) for both.
/// The bar only shows on a terminal: `script` (util-linux) gives the save one.
#[test]
fn progress_bars_and_summaries_use_the_same_units() {
    if Command::new("script").arg("--version").output().is_err() {
        skip("progress_bars_and_summaries_use_the_same_units: no `script` (util-linux) for a terminal");
        return;
    }
    let d = tmp();
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("two-megabytes"), vec![7u8; 2_000_000]).unwrap();
    let cmd = format!(
        "{} --store {} save dir {} --key units",
        bin().display(),
        d.path().join("store").display(),
        src.display()
    );
    let o = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env_remove("ENVSNAP_STORE")
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{tty}");
    assert!(
        tty.contains("hashing") && tty.contains("/2.00 MB"),
        "no decimal bar: {tty}"
    );
    assert!(tty.contains("(2.0 MB)"), "summary: {tty}");
    assert!(!tty.contains("MiB"), "binary units: {tty}");
}

/// The venv summary wrapped at 120 columns (paths of the venv and its interpreter, then the
/// interpreter again on restore): one short line each, the details under -v.
#[test]
fn venv_summaries_are_short_lines_with_details_under_verbose() {
    let Some(py) = any_python3() else {
        skip("venv_summaries_are_short_lines_with_details_under_verbose: no python3 with venv found");
        return;
    };
    let d = tmp();
    let (venv, store) = (d.path().join("venv"), d.path().join("store"));
    let st = Command::new(&py)
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(st.success());
    let home = py.parent().unwrap().to_str().unwrap().to_string();
    let check = |o: &Output, verbose: bool| {
        let e = stderr(o);
        assert_eq!(code(o), 0, "{e}");
        for l in e.lines() {
            assert!(l.len() <= 120, "a {}-column line: {l}", l.len());
        }
        assert_eq!(e.contains(&home), verbose, "the interpreter's home only with -v: {e}");
    };
    let v = venv.to_str().unwrap();
    check(&envsnap(&store, &["save", "venv", v, "--key", "venv-1"]), false);
    check(&envsnap(&store, &["-v", "save", "venv", v, "--key", "venv-1"]), true);
    let out = d.path().join("restored");
    let o = out.to_str().unwrap();
    check(&envsnap(&store, &["restore", o, "--key", "venv-1"]), false);
    check(
        &envsnap(&store, &["-v", "restore", o, "--key", "venv-1", "--force"]),
        true,
    );
}
