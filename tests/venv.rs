//! Virtualenv snapshots with real venvs built from PyPI wheels.
//!
//! Interpreters are discovered (`tests/common/pythons.rs`: PATH, pyenv, uv, /usr/bin), never
//! assumed: the tests use one CPython 3.9+ with venv support ("the primary"), and a test that
//! needs a second installation the machine lacks (another patch or minor version, the
//! distribution's /usr python beside another of its minor, an older Python) skips with a
//! `SKIP:` line. Fixtures (a wheelhouse for the primary's cpXY tag and a tools venv with
//! virtualenv + uv) come from `.ci/test-setup-venv.sh`, cached under `target/fixtures/`, so warm
//! reruns are offline.

mod common;

use common::pythons::{self, need, Python};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

struct Fixtures {
    wheelhouse: PathBuf,
    tools: PathBuf,
    uv_cache: PathBuf,
}

/// The primary interpreter, or a skip naming the test.
fn primary(test: &str) -> Option<&'static Python> {
    need(pythons::primary(), test, "a CPython 3.9+ with venv and ensurepip")
}

fn fixtures() -> &'static Fixtures {
    static FX: OnceLock<Fixtures> = OnceLock::new();
    FX.get_or_init(|| {
        let py = pythons::primary().expect("fixtures() after primary()");
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().to_path_buf();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/test-setup-venv.sh");
        let out = Command::new(&script)
            .arg(&target)
            .env("ENVSNAP_TEST_PYTHON", &py.exe)
            .output()
            .expect("run .ci/test-setup-venv.sh");
        assert!(
            out.status.success(),
            "fixture setup for {} failed:\n{}",
            py.exe.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let fx = target.join("fixtures");
        Fixtures {
            wheelhouse: fx.join(format!("wheelhouse-{}", py.tag())),
            tools: fx.join("tools/bin"),
            uv_cache: fx.join("uv-cache"),
        }
    })
}

/// `lib/python3.X/site-packages` of a venv made by `p`.
fn site_packages(venv: &Path, p: &Python) -> PathBuf {
    venv.join("lib").join(p.versioned_name()).join("site-packages")
}

/// A directory with a pyenv-style shim `python3.X` that execs `p`: what PATH holds on a
/// machine with pyenv or asdf (a script, not the interpreter itself).
fn shim_dir(t: &Path, p: &Python) -> PathBuf {
    let d = t.join("shims");
    std::fs::create_dir_all(&d).unwrap();
    let shim = d.join(p.versioned_name());
    std::fs::write(&shim, format!("#!/bin/sh\nexec \"{}\" \"$@\"\n", p.exe.display())).unwrap();
    std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    d
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("venv-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn show(cmd: &Command, out: &Output) -> String {
    format!(
        "{:?}\nstatus: {}\nstdout: {}\nstderr: {}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run, assert success, return stdout.
fn ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "command failed: {}", show(&cmd, &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cmd(prog: impl AsRef<std::ffi::OsStr>, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut c = Command::new(prog);
    for a in args {
        c.arg(a);
    }
    c.env_remove("VIRTUAL_ENV")
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME");
    c
}

fn envsnap(store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_envsnap"));
    c.arg("--store")
        .arg(store)
        .env_remove("ENVSNAP_STORE")
        .env_remove("GITHUB_OUTPUT");
    c
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

fn pip_install(venv: &Path, args: &[&str]) {
    let fx = fixtures();
    let mut c = cmd(
        venv.join("bin/pip"),
        &[&"install", &"-q", &"--disable-pip-version-check", &"--no-index"],
    );
    c.arg("--find-links").arg(&fx.wheelhouse).args(args);
    ok(c);
}

fn uv_install(venv: &Path, args: &[&str]) {
    let fx = fixtures();
    let mut c = cmd(
        fx.tools.join("uv"),
        &[&"pip", &"install", &"-q", &"--offline", &"--no-index"],
    );
    c.arg("--find-links")
        .arg(&fx.wheelhouse)
        .arg("--python")
        .arg(venv.join("bin/python"))
        .env("UV_CACHE_DIR", &fx.uv_cache)
        .args(args);
    ok(c);
}

/// A small local package with a console script, installed editable from outside the venv.
fn write_editable_pkg(dir: &Path) {
    std::fs::create_dir_all(dir.join("hello_pkg")).unwrap();
    std::fs::write(
        dir.join("pyproject.toml"),
        "[build-system]\nrequires = [\"setuptools>=64\"]\nbuild-backend = \"setuptools.build_meta\"\n\n\
         [project]\nname = \"hello-pkg\"\nversion = \"0.1\"\ndependencies = [\"six\"]\n\n\
         [project.scripts]\nhello-pkg = \"hello_pkg:main\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("hello_pkg/__init__.py"),
        "def main():\n    import sys\n    print('hello from', sys.prefix)\n",
    )
    .unwrap();
}

/// Save `venv` under `key`; returns the save JSON.
fn save(store: &Path, venv: &Path, key: &str) -> serde_json::Value {
    let mut c = envsnap(store);
    c.args(["--json", "save", "venv"]).arg(venv).args(["--key", key]);
    json(&ok(c))
}

fn restore(store: &Path, key: &str, dest: &Path, extra: &[&str]) -> serde_json::Value {
    let mut c = envsnap(store);
    c.args(["--json", "restore", "--key", key]).arg(dest).args(extra);
    json(&ok(c))
}

fn activate_python(venv: &Path) -> String {
    let mut c = cmd(
        "bash",
        &[&"-c", &"source \"$1/bin/activate\" && command -v python", &"_", &venv],
    );
    c.env("PATH", "/usr/bin:/bin");
    ok(c).trim().to_string()
}

fn sys_prefix(venv: &Path) -> String {
    ok(cmd(venv.join("bin/python"), &[&"-c", &"import sys; print(sys.prefix)"]))
        .trim()
        .to_string()
}

/// Everything a user does with a venv, at its new place.
fn check_full_venv(v: &Path) {
    assert_eq!(sys_prefix(v), v.display().to_string());
    let out = ok(cmd(v.join("bin/black"), &[&"--version"]));
    assert!(out.contains("black"), "{out}");
    ok(cmd(
        v.join("bin/python"),
        &[
            &"-c",
            &"import yaml, markupsafe._speedups, numpy; assert yaml.__with_libyaml__; numpy.arange(3).sum()",
        ],
    ));
    assert_eq!(activate_python(v), v.join("bin/python").display().to_string());
    let hello = ok(cmd(v.join("bin/hello-pkg"), &[]));
    assert_eq!(hello.trim(), format!("hello from {}", v.display()));
    ok(cmd(v.join("bin/pip"), &[&"check"]));
    pip_install(v, &["wheel"]);
    let f = ok(cmd(
        v.join("bin/python"),
        &[&"-c", &"import wheel; print(wheel.__file__)"],
    ));
    assert!(f.starts_with(&v.display().to_string()), "{f}");
}

fn mtime_ns(p: &Path) -> i64 {
    let m = std::fs::symlink_metadata(p).unwrap();
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

fn rewritten_paths(r: &serde_json::Value) -> Vec<String> {
    r["rewritten"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn moved_venv_keeps_scripts_c_extensions_pip_and_editable_working_at_spaced_and_shorter_paths() {
    let Some(p) = primary("moved_venv_keeps_scripts_c_extensions_pip_and_editable_working_at_spaced_and_shorter_paths")
    else {
        return;
    };
    let t = scratch();
    let store = t.path().join("store");
    let src = t.path().join("src/hello-pkg");
    write_editable_pkg(&src);
    let orig = t.path().join("project/with/a/deep/original/.venv");
    ok(cmd(&p.exe, &[&"-m", &"venv", &orig]));
    pip_install(&orig, &["black", "pyyaml", "markupsafe", "numpy"]);
    let mut e = cmd(
        orig.join("bin/pip"),
        &[
            &"install",
            &"-q",
            &"--no-index",
            &"--find-links",
            &fixtures().wheelhouse,
            &"-e",
            &src,
        ],
    );
    e.env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
    ok(e);
    // A binary holding the venv path (as a compiled extension's rpath or baked-in prefix would).
    let blob = [
        b"\x7fELF\0\0".as_slice(),
        orig.join("lib/libfoo.so").as_os_str().as_encoded_bytes(),
        b"\0tail\0",
    ]
    .concat();
    std::fs::write(orig.join("lib/prefix.bin"), &blob).unwrap();
    let black_mtime = mtime_ns(&orig.join("bin/black"));
    let cfg_mtime = mtime_ns(&orig.join("pyvenv.cfg"));

    let s = save(&store, &orig, "venv-full");
    assert_eq!(s["kind"], "venv");
    assert_eq!(s["venv"]["interpreter"]["version"], p.version.as_str());
    assert_eq!(s["venv"]["interpreter"]["source"], "probe");
    assert!(s["files_with_paths"].as_u64().unwrap() >= 8, "{s}");
    std::fs::remove_dir_all(&orig).unwrap();

    // Longer, with spaces: shebangs become the sh trampoline; the binary cannot be padded.
    let long = t
        .path()
        .join("restored venvs with spaces/and a directory name longer than before/.venv");
    let r = restore(&store, "venv-full", &long, &[]);
    assert_eq!(r["interpreter"]["reason"], "original");
    let rw = rewritten_paths(&r);
    for f in ["bin/black", "bin/pip", "bin/activate", "bin/hello-pkg", "pyvenv.cfg"] {
        assert!(rw.iter().any(|p| p == f), "{f} not in {rw:?}");
    }
    let head = std::fs::read_to_string(long.join("bin/black")).unwrap();
    assert!(head.starts_with("#!/bin/sh\n'''exec' \""), "{head}");
    let warnings = r["warnings"].to_string();
    assert!(warnings.contains("lib/prefix.bin"), "{warnings}");
    assert_eq!(
        mtime_ns(&long.join("bin/black")),
        black_mtime,
        "mtime kept on rewritten files"
    );
    assert_eq!(mtime_ns(&long.join("pyvenv.cfg")), cfg_mtime);
    check_full_venv(&long);

    // Shorter: plain shebangs; the binary is NUL-padded in place.
    let short_dir = tempfile::Builder::new().prefix("e").tempdir_in("/tmp").unwrap();
    let short = short_dir.path().join("v");
    let r = restore(&store, "venv-full", &short, &[]);
    assert!(rewritten_paths(&r).iter().any(|p| p == "lib/prefix.bin"), "{r}");
    let b = std::fs::read(short.join("lib/prefix.bin")).unwrap();
    assert_eq!(b.len(), blob.len());
    let want = [
        b"\x7fELF\0\0".as_slice(),
        short.join("lib/libfoo.so").as_os_str().as_encoded_bytes(),
    ]
    .concat();
    assert!(b.starts_with(&want) && b.ends_with(b"\0tail\0"));
    let head = std::fs::read_to_string(short.join("bin/black")).unwrap();
    assert!(head.starts_with(&format!("#!{}/bin/python", short.display())), "{head}");
    check_full_venv(&short);

    // The editable source is gone: the restore still works but names the package.
    std::fs::remove_dir_all(&src).unwrap();
    let third = t.path().join("third");
    let r = restore(&store, "venv-full", &third, &[]);
    assert!(
        r["warnings"].to_string().contains("hello_pkg") || r["warnings"].to_string().contains("hello-pkg"),
        "{r}"
    );
}

#[test]
fn hardlinked_restore_with_fixups_leaves_store_objects_untouched() {
    let Some(p) = primary("hardlinked_restore_with_fixups_leaves_store_objects_untouched") else {
        return;
    };
    let t = scratch();
    let store = t.path().join("store");
    let orig = t.path().join("orig");
    ok(cmd(&p.exe, &[&"-m", &"venv", &orig]));
    pip_install(&orig, &["six"]);
    // A private file (a token a job wrote into its venv): linking the 0444 object would
    // hand it to everyone, so the venv restore copies it and counts it, as dir restores do.
    let secret = orig.join("pip.conf");
    std::fs::write(&secret, "[global]\nindex-url = https://user:token@example.invalid/\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    save(&store, &orig, "venv-hl");
    // A dry run decides the interpreter and the rewrites, and writes nothing.
    let dry = t.path().join("dry/v");
    let r = restore(&store, "venv-hl", &dry, &["--dry-run"]);
    assert_eq!(r["interpreter"]["path"], p.exe.to_str().unwrap(), "{r}");
    assert!(!dry.exists() && !dry.parent().unwrap().exists());
    let dest = t.path().join("elsewhere/v");
    let r = restore(&store, "venv-hl", &dest, &["--link", "hardlink"]);
    assert!(r["link"].as_str().unwrap().contains("hardlink"), "{r}");
    assert_eq!(r["hardlink_copied"], 1, "{r}");
    let m = std::fs::metadata(dest.join("pip.conf")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.nlink()), (0o600, 1));
    // Rewritten files are private copies; untouched ones share the store's inodes.
    assert_eq!(std::fs::metadata(dest.join("bin/pip")).unwrap().nlink(), 1);
    let six = site_packages(&dest, p).join("six.py");
    assert!(std::fs::metadata(&six).unwrap().nlink() > 1);
    ok(cmd(dest.join("bin/pip"), &[&"--version"]));
    let mut v = envsnap(&store);
    v.arg("verify");
    ok(v);
    // And the original, restored in place from the same objects, still has its own paths.
    std::fs::remove_dir_all(&orig).unwrap();
    restore(&store, "venv-hl", &orig, &["--link", "hardlink"]);
    let head = std::fs::read_to_string(orig.join("bin/pip")).unwrap();
    assert!(head.starts_with(&format!("#!{}/bin/python", orig.display())), "{head}");
    ok(cmd(orig.join("bin/pip"), &[&"--version"]));
}

/// A venv made from `…/hostedtoolcache/Python/3.X.Y/x64/bin/python3.X` (`p`'s installation
/// seen through a symlink, as actions/setup-python lays it out), saved, and that interpreter
/// removed (a new runner image).
fn toolcache_venv(t: &Path, store: &Path, key: &str, p: &Python) -> PathBuf {
    toolcache_venv_with(t, store, key, &[], p)
}

fn toolcache_venv_with(t: &Path, store: &Path, key: &str, venv_args: &[&str], p: &Python) -> PathBuf {
    let x64 = t.join(format!("hostedtoolcache/Python/{}/x64", p.version));
    std::fs::create_dir_all(x64.parent().unwrap()).unwrap();
    assert_eq!(
        p.home(),
        p.prefix.join("bin"),
        "{p:?}: the interpreter is not in its prefix's bin/"
    );
    std::os::unix::fs::symlink(&p.prefix, &x64).unwrap();
    let venv = t.join("proj/.venv");
    let mut c = Command::new(x64.join("bin").join(p.exe.file_name().unwrap()));
    c.args(["-m", "venv"]).args(venv_args).arg(&venv);
    ok(c);
    pip_install(&venv, &["six"]);
    let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg")).unwrap();
    assert!(cfg.contains("hostedtoolcache"), "{cfg}");
    save(store, &venv, key);
    std::fs::remove_file(&x64).unwrap();
    std::fs::remove_dir_all(&venv).unwrap();
    venv
}

fn cfg_get(venv: &Path, key: &str) -> String {
    let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg")).unwrap();
    cfg.lines()
        .find_map(|l| {
            l.split_once('=')
                .filter(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {key} in {cfg}"))
}

#[test]
fn interpreter_gone_after_runner_upgrade_retargets_to_same_minor_on_path() {
    let Some(p) = primary("interpreter_gone_after_runner_upgrade_retargets_to_same_minor_on_path") else {
        return;
    };
    let t = scratch();
    let store = t.path().join("store");
    let venv = toolcache_venv(t.path(), &store, "venv-tc", p);
    // PATH has a pyenv-style shim: python3.X is a shell script, resolved to the real binary.
    let mut c = envsnap(&store);
    c.args(["--json", "restore", "--key", "venv-tc"])
        .arg(&venv)
        .env("PATH", format!("{}:/usr/bin:/bin", shim_dir(t.path(), p).display()));
    let r = json(&ok(c));
    assert_eq!(r["interpreter"]["reason"], "path");
    assert_eq!(r["interpreter"]["path"], p.exe.to_str().unwrap());
    assert_eq!(cfg_get(&venv, "home"), p.home().to_str().unwrap());
    assert_eq!(
        std::fs::read_link(venv.join("bin").join(p.versioned_name())).unwrap(),
        p.exe
    );
    ok(cmd(venv.join("bin/python"), &[&"-c", &"import six, ssl, sqlite3"]));
    ok(cmd(venv.join("bin/pip"), &[&"--version"]));
    assert_eq!(sys_prefix(&venv), venv.display().to_string());
}

#[test]
fn explicit_python_with_other_patch_version_sets_home_there() {
    let Some(p) = primary("explicit_python_with_other_patch_version_sets_home_there") else {
        return;
    };
    let Some(q) = need(
        pythons::same_minor_other(p),
        "explicit_python_with_other_patch_version_sets_home_there",
        &format!("a second Python {} installation besides {}", p.minor, p.exe.display()),
    ) else {
        return;
    };
    let t = scratch();
    let store = t.path().join("store");
    toolcache_venv(t.path(), &store, "venv-tc2", p);
    let dest = t.path().join("other patch venv");
    let r = restore(&store, "venv-tc2", &dest, &["--python", q.exe.to_str().unwrap()]);
    assert_eq!(r["interpreter"]["reason"], "explicit");
    assert_eq!(r["interpreter"]["version"], q.version.as_str());
    assert_eq!(cfg_get(&dest, "home"), q.home().to_str().unwrap());
    assert_eq!(cfg_get(&dest, "version"), q.version);
    let v = ok(cmd(
        dest.join("bin/python"),
        &[&"-c", &"import platform, six, ssl; print(platform.python_version())"],
    ));
    assert_eq!(v.trim(), q.version);
    ok(cmd(dest.join("bin/pip"), &[&"--version"]));
    assert_eq!(activate_python(&dest), dest.join("bin/python").display().to_string());
}

#[test]
fn other_minor_version_is_a_miss_and_writes_nothing() {
    let Some(p) = primary("other_minor_version_is_a_miss_and_writes_nothing") else {
        return;
    };
    let Some(r) = need(
        pythons::other_minor(p),
        "other_minor_version_is_a_miss_and_writes_nothing",
        &format!("a Python of another minor version than {}", p.minor),
    ) else {
        return;
    };
    let t = scratch();
    let store = t.path().join("store");
    toolcache_venv(t.path(), &store, "venv-tc3", p);
    let parent = t.path().join("out");
    std::fs::create_dir_all(&parent).unwrap();
    let dest = parent.join("v");
    // --python of another minor (say 3.12 for a 3.11 venv).
    let mut c = envsnap(&store);
    c.args(["restore", "--key", "venv-tc3"])
        .arg(&dest)
        .arg("--python")
        .arg(&r.exe);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&c, &out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&p.minor) && err.contains(&r.minor), "{err}");
    // Only that one on PATH; a --fallback does not rescue it either.
    let only_other = t.path().join("only-other");
    std::fs::create_dir_all(&only_other).unwrap();
    std::os::unix::fs::symlink(&r.exe, only_other.join("python3")).unwrap();
    let mut c = envsnap(&store);
    c.args(["restore", "--key", "venv-tc3", "--fallback", "venv-"])
        .arg(&dest)
        .env("PATH", &only_other);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&c, &out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&p.minor) && err.contains(&r.version), "{err}");
    assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 0, "nothing written");
}

#[test]
fn copies_venv_gets_a_copy_of_the_new_interpreter() {
    let Some(p) = primary("copies_venv_gets_a_copy_of_the_new_interpreter") else {
        return;
    };
    let Some(q) = need(
        pythons::same_minor_other(p),
        "copies_venv_gets_a_copy_of_the_new_interpreter",
        &format!("a second Python {} installation besides {}", p.minor, p.exe.display()),
    ) else {
        return;
    };
    let t = scratch();
    let store = t.path().join("store");
    // The original interpreter is gone, so --python is used.
    toolcache_venv_with(t.path(), &store, "venv-copies", &["--copies"], p);
    let dest = t.path().join("v2");
    let r = restore(&store, "venv-copies", &dest, &["--python", q.exe.to_str().unwrap()]);
    let name = format!("bin/{}", p.versioned_name());
    assert!(rewritten_paths(&r).contains(&name), "{r}");
    let py = std::fs::read(dest.join(&name)).unwrap();
    assert_eq!(py, std::fs::read(&q.exe).unwrap());
    let v = ok(cmd(
        dest.join("bin/python"),
        &[&"-c", &"import platform, six; print(platform.python_version())"],
    ));
    assert_eq!(v.trim(), q.version);
    ok(cmd(dest.join("bin/pip"), &[&"--version"]));
}

fn check_small_venv(v: &Path) {
    assert_eq!(sys_prefix(v), v.display().to_string());
    ok(cmd(v.join("bin/black"), &[&"--version"]));
    ok(cmd(v.join("bin/python"), &[&"-c", &"import yaml, six"]));
    assert_eq!(activate_python(v), v.join("bin/python").display().to_string());
}

#[test]
fn virtualenv_and_uv_venvs_round_trip_to_a_new_path() {
    let Some(p) = primary("virtualenv_and_uv_venvs_round_trip_to_a_new_path") else {
        return;
    };
    let fx = fixtures();
    let t = scratch();
    let store = t.path().join("store");
    let ve = t.path().join("ve");
    ok(cmd(fx.tools.join("virtualenv"), &[&"-q", &"-p", &p.exe, &ve]));
    pip_install(&ve, &["black", "pyyaml", "six"]);
    let mut made = vec![("virtualenv", ve.clone())];
    for (name, extra) in [("uv", None), ("uv-relocatable", Some("--relocatable"))] {
        let v = t.path().join(name);
        let mut c = cmd(fx.tools.join("uv"), &[&"venv", &"-q", &"-p", &p.exe]);
        c.args(extra).arg(&v).env("UV_CACHE_DIR", &fx.uv_cache);
        ok(c);
        uv_install(&v, &["black", "pyyaml", "six"]);
        made.push((name, v));
    }
    for (name, v) in made {
        let s = save(&store, &v, name);
        assert_eq!(
            s["venv"]["flavour"],
            if name == "virtualenv" { "virtualenv" } else { "uv" }
        );
        std::fs::remove_dir_all(&v).unwrap();
        let dest = t.path().join(format!("moved {name}/venv"));
        restore(&store, name, &dest, &[]);
        check_small_venv(&dest);
        if name == "virtualenv" {
            pip_install(&dest, &["wheel"]);
        }
    }
}

#[test]
fn save_venv_refuses_plain_and_missing_directories() {
    let t = scratch();
    let store = t.path().join("store");
    let plain = t.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    for (p, want) in [
        (plain.clone(), "no pyvenv.cfg"),
        (t.path().join("missing"), "no such directory"),
    ] {
        let mut c = envsnap(&store);
        c.args(["save", "venv"]).arg(&p).args(["--key", "k"]);
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", show(&c, &out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want) && err.contains(&*p.display().to_string()), "{err}");
    }
}

#[test]
fn save_venv_whose_interpreter_cannot_run_reads_pyvenv_cfg() {
    let Some(p) = primary("save_venv_whose_interpreter_cannot_run_reads_pyvenv_cfg") else {
        return;
    };
    let t = scratch();
    let store = t.path().join("store");
    let venv = t.path().join("v");
    ok(cmd(&p.exe, &[&"-m", &"venv", &"--without-pip", &venv]));
    // The interpreter is gone (a runner image without it).
    let name = venv.join("bin").join(p.versioned_name());
    std::fs::remove_file(&name).unwrap();
    std::os::unix::fs::symlink(Path::new("/nonexistent").join(p.versioned_name()), &name).unwrap();
    let s = save(&store, &venv, "venv-broken");
    assert_eq!(s["venv"]["interpreter"]["source"], "pyvenv.cfg");
    assert_eq!(s["venv"]["interpreter"]["version"], p.version.as_str());
    assert_eq!(s["venv"]["interpreter"]["home"], p.home().to_str().unwrap());
    // And it restores onto the same minor found on PATH.
    let dest = t.path().join("w");
    let mut c = envsnap(&store);
    c.args(["--json", "restore", "--key", "venv-broken"])
        .arg(&dest)
        .env("PATH", format!("{}:/usr/bin:/bin", shim_dir(t.path(), p).display()));
    ok(c);
    ok(cmd(dest.join("bin/python"), &[&"-c", &"import ssl"]));
}

#[test]
fn failing_smoke_test_rolls_back_the_restore() {
    let Some(p) = primary("failing_smoke_test_rolls_back_the_restore") else {
        return;
    };
    let t = scratch();
    let store = t.path().join("store");
    let venv = t.path().join("v");
    ok(cmd(&p.exe, &[&"-m", &"venv", &"--without-pip", &venv]));
    // A .pth that kills every interpreter start in this venv.
    std::fs::write(
        site_packages(&venv, p).join("zz_broken.pth"),
        "import sys; sys.exit(7)\n",
    )
    .unwrap();
    save(&store, &venv, "venv-smoke");
    let parent = t.path().join("out");
    std::fs::create_dir_all(&parent).unwrap();
    let mut c = envsnap(&store);
    c.args(["restore", "--key", "venv-smoke"]).arg(parent.join("v"));
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&c, &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("smoke test"),
        "{}",
        show(&c, &out)
    );
    assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 0, "rolled back");
}

#[test]
fn second_save_with_one_more_package_stores_only_that_package() {
    let Some(p) = primary("second_save_with_one_more_package_stores_only_that_package") else {
        return;
    };
    let t = scratch();
    let store = t.path().join("store");
    let venv = t.path().join("v");
    ok(cmd(&p.exe, &[&"-m", &"venv", &venv]));
    pip_install(&venv, &["pyyaml"]);
    save(&store, &venv, "venv-1");
    pip_install(&venv, &["six"]);
    let s = save(&store, &venv, "venv-2");
    // six.py, its pyc, its dist-info files (+ the changed RECORD-free pip metadata): a handful.
    let new = s["new_objects"].as_u64().unwrap();
    assert!(new > 0 && new <= 10, "{s}");
    assert!(s["new_bytes"].as_u64().unwrap() < 200_000, "{s}");
}

#[test]
fn py38_venv_records_its_base_interpreter_not_its_own_python() {
    // Python 3.8 reports the venv's own bin/python as sys._base_executable (3.8 preferred;
    // any Python older than 3.11 checks the same rule).
    let Some(old) = need(
        pythons::older_than_311(),
        "py38_venv_records_its_base_interpreter_not_its_own_python",
        "a Python older than 3.11 (3.8 best)",
    ) else {
        return;
    };
    let py38 = old.exe.to_str().unwrap();
    let t = scratch();
    let store = t.path().join("store");
    let venv = t.path().join("v38");
    ok(cmd(py38, &[&"-m", &"venv", &"--without-pip", &venv]));
    let s = save(&store, &venv, "venv-38");
    assert_eq!(s["venv"]["interpreter"]["executable"], py38, "{s}");
    assert_eq!(s["venv"]["interpreter"]["source"], "probe");
    std::fs::remove_dir_all(&venv).unwrap();
    let dest = t.path().join("moved 38");
    let r = restore(&store, "venv-38", &dest, &[]);
    assert_eq!(r["interpreter"]["reason"], "original");
    assert_eq!(sys_prefix(&dest), dest.display().to_string());
}

#[test]
fn explicit_python_wins_over_the_original_interpreter_that_still_exists() {
    let test = "explicit_python_wins_over_the_original_interpreter_that_still_exists";
    let Some(a) = primary(test) else { return };
    let Some(b) = need(
        pythons::same_minor_other(a),
        test,
        &format!("a second Python {} installation besides {}", a.minor, a.exe.display()),
    ) else {
        return;
    };
    let t = scratch();
    let store = t.path().join("store");
    let orig = t.path().join("orig");
    ok(cmd(&a.exe, &[&"-m", &"venv", &"--without-pip", &orig]));
    save(&store, &orig, "venv-explicit");
    // The original still exists, and the user asks for the other one: theirs wins.
    let dest = t.path().join("moved");
    let r = restore(&store, "venv-explicit", &dest, &["--python", b.exe.to_str().unwrap()]);
    assert_eq!(r["interpreter"]["reason"], "explicit", "{r}");
    assert_eq!(r["interpreter"]["path"], b.exe.to_str().unwrap(), "{r}");
    assert_eq!(cfg_get(&dest, "home"), b.home().to_str().unwrap());
    let v = ok(cmd(
        dest.join("bin/python"),
        &[
            &"-c",
            &"import os, platform, sys; print(platform.python_version(), os.path.realpath(sys._base_executable))",
        ],
    ));
    assert_eq!(v.trim(), format!("{} {}", b.version, b.exe.display()));
    assert_eq!(sys_prefix(&dest), dest.display().to_string());
    // --python naming the original keeps what the venv already names.
    let dest2 = t.path().join("moved2");
    let r = restore(&store, "venv-explicit", &dest2, &["--python", a.exe.to_str().unwrap()]);
    assert_eq!(r["interpreter"]["reason"], "original", "{r}");
    let v = ok(cmd(
        dest2.join("bin/python"),
        &[&"-c", &"import platform; print(platform.python_version())"],
    ));
    assert_eq!(v.trim(), a.version);
}

/// The paths pyvenv.cfg and bin/python* name must exist: `home` holds a python, `executable`
/// and the interpreter `command` ran exist, every bin/python* resolves.
fn assert_names_real_interpreter(v: &Path) {
    let home = PathBuf::from(cfg_get(v, "home"));
    let names = ["python3", "python"];
    assert!(
        std::fs::read_dir(&home).is_ok_and(|mut rd| rd.any(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.starts_with("python3.") || names.contains(&n.as_str())
        })),
        "home = {} names no interpreter",
        home.display()
    );
    let exe = cfg_get(v, "executable");
    assert!(Path::new(&exe).exists(), "executable = {exe} does not exist");
    let command = cfg_get(v, "command");
    let first = command.split(" -m ").next().unwrap();
    assert!(Path::new(first).exists(), "command = {command}: {first} does not exist");
    for e in std::fs::read_dir(v.join("bin")).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("python") {
            assert!(p.exists(), "{} dangles", p.display());
        }
    }
}

#[test]
fn a_venv_made_through_a_symlinked_interpreter_names_a_real_one_after_the_symlink_is_gone() {
    let Some(py) = primary("a_venv_made_through_a_symlinked_interpreter_names_a_real_one_after_the_symlink_is_gone")
    else {
        return;
    };
    let fx = fixtures();
    let minor = &py.minor;
    let t = scratch();
    let store = t.path().join("store");
    // Two ways runners spell an interpreter through symlinks: a file symlink in another
    // directory (`/usr/local/bin/python3.X` -> `/opt/…`, a shim farm), and a symlinked
    // installation directory (hostedtoolcache's `…/x64` -> the real prefix).
    let real_prefix = py.exe.parent().unwrap().parent().unwrap();
    for (i, farm_kind) in ["file symlink", "directory symlink"].iter().enumerate() {
        let farm = t.path().join(format!("farm{i}"));
        let via = match i {
            0 => {
                std::fs::create_dir_all(farm.join("bin")).unwrap();
                std::os::unix::fs::symlink(&py.exe, farm.join(format!("bin/python{minor}"))).unwrap();
                farm.join(format!("bin/python{minor}"))
            }
            _ => {
                std::os::unix::fs::symlink(real_prefix, &farm).unwrap();
                farm.join("bin").join(py.exe.file_name().unwrap())
            }
        };
        let venv = t.path().join(format!("proj{i}/.venv"));
        ok(cmd(&via, &[&"-m", &"venv", &"--without-pip", &venv]));
        assert!(cfg_get(&venv, "home").starts_with(farm.to_str().unwrap()));
        let key = format!("venv-farm{i}");
        save(&store, &venv, &key);
        // A new runner: the symlinks are gone, the real interpreter is still there.
        if i == 0 {
            std::fs::remove_dir_all(&farm).unwrap();
        } else {
            std::fs::remove_file(&farm).unwrap();
        }
        std::fs::remove_dir_all(&venv).unwrap();
        let mut c = envsnap(&store);
        c.args(["--json", "restore", "--key", &key])
            .arg(&venv)
            .env("PATH", format!("{}:/usr/bin:/bin", py.home().display()));
        let r = json(&ok(c));
        assert_names_real_interpreter(&venv);
        assert!(
            !std::fs::read_to_string(venv.join("pyvenv.cfg"))
                .unwrap()
                .contains(farm.to_str().unwrap()),
            "{farm_kind}: {r}"
        );
        ok(cmd(venv.join("bin/python"), &[&"-c", &"import ssl, sqlite3"]));
        assert_eq!(sys_prefix(&venv), venv.display().to_string());
        // Tools that read pyvenv.cfg work on it.
        let mut c = cmd(fx.tools.join("uv"), &[&"pip", &"list", &"--offline", &"--python"]);
        c.arg(venv.join("bin/python")).env("UV_CACHE_DIR", &fx.uv_cache);
        ok(c);
        let vv = t.path().join(format!("vv{i}"));
        ok(cmd(
            fx.tools.join("virtualenv"),
            &[&"--no-seed", &"-p", &venv.join("bin/python"), &vv],
        ));
        ok(cmd(vv.join("bin/python"), &[&"-c", &"import ssl"]));
        ok(cmd(
            venv.join("bin/python"),
            &[&"-m", &"venv", &"--upgrade", &"--without-pip", &venv],
        ));
        ok(cmd(venv.join("bin/python"), &[&"-c", &"import ssl, sqlite3"]));
        assert_names_real_interpreter(&venv);
    }
}

/// Runs `envsnap` with the distribution's interpreter `d` unusable (a private mount namespace
/// bind-mounts /dev/null over it): the runner image no longer has the original.
fn envsnap_without(store: &Path, d: &Python) -> Command {
    let mut c = Command::new("unshare");
    c.args([
        "-m",
        "sh",
        "-c",
        &format!("mount --bind /dev/null '{}' && exec \"$0\" \"$@\"", d.exe.display()),
    ])
    .arg(env!("CARGO_BIN_EXE_envsnap"))
    .arg("--store")
    .arg(store)
    .env_remove("ENVSNAP_STORE")
    .env_remove("GITHUB_OUTPUT");
    c
}

#[test]
fn debian_usr_home_and_prefix_do_not_rewrite_unrelated_usr_paths() {
    let Some(p) = primary("debian_usr_home_and_prefix_do_not_rewrite_unrelated_usr_paths") else {
        return;
    };
    let test = "debian_usr_home_and_prefix_do_not_rewrite_unrelated_usr_paths";
    let Some((d, x)) = need(
        pythons::system_and_other(p),
        test,
        "the distribution's /usr/bin/python3.X (with venv) and another installation of that minor",
    ) else {
        return;
    };
    let Some(()) = need(
        common::is_root().then_some(()),
        test,
        "root (a mount namespace hides /usr's python)",
    ) else {
        return;
    };
    let t = scratch();
    let store = t.path().join("store");
    let venv = t.path().join("deb");
    ok(cmd(&d.exe, &[&"-m", &"venv", &venv]));
    pip_install(&venv, &["six"]);
    assert_eq!(cfg_get(&venv, "home"), d.home().to_str().unwrap());
    let unrelated = "#!/usr/bin/env python3\nDATA = \"/usr/share/foo\"\nSRC = \"/usr/src/app\"\nprint(DATA)\n";
    let sp = site_packages(&venv, d);
    std::fs::write(sp.join("zz_unrelated.py"), unrelated).unwrap();
    std::fs::write(venv.join("bin/zz-tool"), unrelated).unwrap();
    std::fs::write(sp.join("zz_src.pth"), "/usr/src/app\n").unwrap();
    save(&store, &venv, "venv-deb");
    let dest = t.path().join("deb2");
    let mut c = envsnap_without(&store, d);
    c.args(["--json", "restore", "--key", "venv-deb"])
        .arg(&dest)
        .arg("--python")
        .arg(&x.exe);
    let r = json(&ok(c));
    assert_eq!(r["interpreter"]["reason"], "explicit", "{r}");
    assert_eq!(cfg_get(&dest, "home"), x.home().to_str().unwrap());
    let sp2 = site_packages(&dest, x);
    assert_eq!(std::fs::read_to_string(sp2.join("zz_unrelated.py")).unwrap(), unrelated);
    assert_eq!(std::fs::read_to_string(dest.join("bin/zz-tool")).unwrap(), unrelated);
    assert_eq!(
        std::fs::read_to_string(sp2.join("zz_src.pth")).unwrap(),
        "/usr/src/app\n"
    );
    let v = ok(cmd(
        dest.join("bin/python"),
        &[&"-c", &"import platform, six, ssl; print(platform.python_version())"],
    ));
    assert_eq!(v.trim(), x.version);
    ok(cmd(dest.join("bin/pip"), &[&"--version"]));
    assert_eq!(sys_prefix(&dest), dest.display().to_string());
}

/// CI on a fresh runner: restore the venv where the job expects it, install one more package,
/// save. The save used to read every file of the venv again (new inodes on a new runner); the
/// restore now seeds the stat cache, so only what pip wrote is read.
#[test]
fn save_after_restore_and_pip_install_reads_only_what_pip_wrote() {
    let Some(p) = primary("save_after_restore_and_pip_install_reads_only_what_pip_wrote") else {
        return;
    };
    let t = scratch();
    let store = t.path().join("store");
    let v = t.path().join("project/.venv");
    ok(cmd(&p.exe, &[&"-m", &"venv", &v]));
    pip_install(&v, &["black", "six"]);
    let first = save(&store, &v, "v1");
    std::fs::remove_dir_all(&v).unwrap(); // the next runner starts without it
    restore(&store, "v1", &v, &[]);
    pip_install(&v, &["pyyaml"]);
    let second = save(&store, &v, "v2");
    let files = second["files"].as_u64().unwrap();
    let hashed = second["hashed_files"].as_u64().unwrap();
    assert!(second["new_objects"].as_u64().unwrap() > 0, "pyyaml was stored");
    assert!(
        hashed * 5 < files,
        "read {hashed} of {files} files (first save: {} files)",
        first["files"]
    );
    std::fs::remove_dir_all(&v).unwrap();
    restore(&store, "v2", &v, &[]);
    ok(cmd(v.join("bin/python"), &[&"-c", &"import yaml, six, black"]));
}

/// Interpreter discovery (tests/common/pythons.rs) finds the `python3` on PATH, and the run
/// shows what it found and which tests can run with it.
#[test]
fn interpreter_discovery_finds_the_python3_on_path() {
    let all = pythons::all();
    eprintln!("pythons: {}", pythons::describe());
    if let Some(p) = pythons::primary() {
        eprintln!(
            "primary: {} {}; same minor: {:?}; other minor: {:?}; /usr pair: {:?}; older than 3.11: {:?}",
            p.version,
            p.exe.display(),
            pythons::same_minor_other(p).map(|q| &q.exe),
            pythons::other_minor(p).map(|q| &q.exe),
            pythons::system_and_other(p).map(|(d, x)| (&d.exe, &x.exe)),
            pythons::older_than_311().map(|q| &q.exe),
        );
    }
    let on_path = Command::new("python3")
        .args(["-c", "import os, sys; print(os.path.realpath(sys.executable))"])
        .output();
    let Ok(o) = on_path
        .as_ref()
        .map_err(|_| ())
        .and_then(|o| o.status.success().then_some(o).ok_or(()))
    else {
        pythons::skip("interpreter_discovery_finds_the_python3_on_path: no python3 on PATH");
        return;
    };
    let exe = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    assert!(
        all.iter().any(|p| p.exe == exe),
        "{} not found: {}",
        exe.display(),
        pythons::describe()
    );
}
