//! `envsnap key` end to end: the real binary in temporary directories.
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use tempfile::TempDir;

fn envsnap(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_envsnap"));
    c.current_dir(dir)
        .args(args)
        .env_remove("GITHUB_OUTPUT")
        .env_remove("ImageOS")
        .env_remove("ImageVersion");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run envsnap")
}

/// The key printed on stdout; panics with stderr on failure.
fn key(dir: &Path, template: &str) -> String {
    let o = envsnap(dir, &["key", template], &[]);
    assert!(o.status.success(), "{template}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim_end_matches('\n').to_string()
}

/// Runs a failing template: exit 2, one `envsnap: error:` line containing `needle`.
fn fails(dir: &Path, args: &[&str], env: &[(&str, &str)], needle: &str) {
    let o = envsnap(dir, args, env);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?} should exit 2; stderr: {err}");
    assert!(o.stdout.is_empty(), "{args:?} printed a key");
    assert_eq!(err.lines().count(), 1, "{args:?}: one error line expected: {err}");
    assert!(err.starts_with("envsnap: error: "), "{err}");
    assert!(err.contains(needle), "{args:?}: {err:?} should contain {needle:?}");
}

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

/// A tree whose walk order differs from a sorted path list (`a/…` is walked
/// before `a-b/…` and `a.txt`), with dotfiles, a directory named `x.txt`,
/// node_modules, non-ASCII and spaces, a file symlink and a directory symlink.
fn vector_tree() -> TempDir {
    let d = tempfile::tempdir().unwrap();
    for f in [
        "a/b/r.txt",
        "a.txt",
        "a-b/r.txt",
        "A/r.txt",
        ".hidden/r.txt",
        "x.txt/inner.bin",
        "node_modules/p/r.txt",
        "node_modules/keep.txt",
        "src/node_modules/q/r.txt",
        "requirements.txt",
        "requirements-dev.txt",
        "b.txt",
        "a/r.txt",
        "src/main.py",
        "é/r.txt",
        "sp ace/r.txt",
    ] {
        write(d.path(), f, &format!("{f}\n"));
    }
    std::os::unix::fs::symlink("a.txt", d.path().join("link.txt")).unwrap();
    std::os::unix::fs::symlink("a", d.path().join("linkdir")).unwrap();
    d
}

/// Independent implementation: Python walks the tree depth first with each
/// directory's names sorted as bytes (libuv's scandir order), without following
/// directory symlinks, selects files with a hand-written predicate per case,
/// and hashes with hashlib exactly as actions/runner's hashFiles.ts does.
const PY_HASHFILES: &str = r#"
import hashlib, os, sys
root, case = sys.argv[1], sys.argv[2]
def walk(rel):
    d = os.path.join(root, rel) if rel else root
    for name in sorted(os.listdir(os.fsencode(d))):
        r = (rel + "/" if rel else "") + os.fsdecode(name)
        full = os.path.join(root, r)
        if os.path.isdir(full):
            if not os.path.islink(full):
                yield from walk(r)
        else:
            yield r
txt = lambda r: any(s.endswith(".txt") for s in r.split("/"))
pick = {
    "all": lambda r: True,
    "txt": txt,
    "excl": lambda r: (txt(r) and "node_modules" not in r.split("/")) or r == "node_modules/keep.txt",
    "src": lambda r: r.startswith("src/"),
    "none": lambda r: False,
}
files = ["b.txt", "a.txt"] if case == "order" else [r for r in walk("") if pick[case](r)]
h = hashlib.sha256()
for f in files:
    h.update(hashlib.sha256(open(os.path.join(root, f), "rb").read()).digest())
print(h.hexdigest() if files else "")
"#;

fn python_hashfiles(root: &Path, case: &str) -> String {
    let o = Command::new("python3")
        .arg("-c")
        .arg(PY_HASHFILES)
        .arg(root)
        .arg(case)
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

#[test]
fn hashfiles_matches_github_vectors() {
    let d = vector_tree();
    // (patterns, python case, value from @actions/glob 0.5.0 + hashFiles.ts on node, same tree)
    let cases = [
        (
            "**",
            "all",
            "3e7fce9a75b2907c2ddabf314b0ea92b3bdd28df1f244ec295b2a8f9480415f9",
        ),
        (
            "*",
            "all",
            "3e7fce9a75b2907c2ddabf314b0ea92b3bdd28df1f244ec295b2a8f9480415f9",
        ),
        (
            "**/*.txt",
            "txt",
            "8188cd25795ef330066ee1496ec748c26e2834f5de6243ceb6086d2e3528eded",
        ),
        (
            "b.txt,a.txt",
            "order",
            "f9bec98ad54de826706eaebb0a3290eb52fd166244dccd43fd7ec5d4ef8fa4bf",
        ),
        (
            "**/*.txt,!**/node_modules/**,**/node_modules/keep.txt",
            "excl",
            "45b83c39508181371077c0d5a5bd4c4c4bdc688238fdae0b7e23d9851578bc14",
        ),
        (
            "src/**",
            "src",
            "bf200d761725de1ca3370e427e1c3f7d21d2fd692f900c22f9cb5623fc475c1c",
        ),
    ];
    for (pats, case, node) in cases {
        let py = python_hashfiles(d.path(), case);
        assert_eq!(py, node, "python and node disagree on {pats}");
        assert_eq!(
            key(d.path(), &format!("gh-{{hashFiles:{pats}}}")),
            format!("gh-{node}"),
            "{pats}"
        );
    }
    // No match: empty, like GitHub (the template's literal text remains).
    assert_eq!(python_hashfiles(d.path(), "none"), "");
    assert_eq!(key(d.path(), "gh-{hashFiles:nothing/**}"), "gh-");
}

#[test]
fn checksum_matches_circleci() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "abc.txt", "abc");
    // sha256("abc") = ba7816bf…; base64 "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=", `/` as `_`.
    assert_eq!(
        key(d.path(), "c-{checksum:abc.txt}"),
        "c-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0="
    );
    write(d.path(), "sub/Gemfile.lock", "GEM\n  specs:\n");
    let py = Command::new("python3")
        .args(["-c", "import base64,hashlib,sys; print(base64.b64encode(hashlib.sha256(open(sys.argv[1],'rb').read()).digest()).decode().replace('/','_'))"])
        .arg(d.path().join("sub/Gemfile.lock"))
        .output()
        .unwrap();
    let want = String::from_utf8(py.stdout).unwrap().trim().to_string();
    assert_eq!(key(d.path(), "{checksum:sub/Gemfile.lock}"), want);
}

#[test]
fn hash_is_stable_across_runs_and_enumeration_orders() {
    let names: Vec<String> = (0..64).map(|i| format!("d{}/f{i:02}.txt", i % 5)).collect();
    let fwd = tempfile::tempdir().unwrap();
    let rev = tempfile::tempdir().unwrap();
    for n in &names {
        write(fwd.path(), n, n);
    }
    for n in names.iter().rev() {
        write(rev.path(), n, n);
    }
    for t in ["{hash:**}", "{hash:**/*.txt,!d3}", "{hashFiles:**}"] {
        let k = key(fwd.path(), t);
        assert_eq!(k, key(fwd.path(), t), "{t} differs between runs");
        assert_eq!(k, key(rev.path(), t), "{t} depends on creation order");
    }
    let k = key(fwd.path(), "{hash:**}");
    assert_eq!(k.len(), 32);
    assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
}

#[test]
fn hash_follows_content_and_names_not_mtime() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "requirements.txt", "flask==3.0\n");
    write(d.path(), "requirements-dev.txt", "pytest\n");
    write(d.path(), "README.md", "x\n");
    let t = "venv-{hash:requirements*.txt}";
    let k0 = key(d.path(), t);

    // Unrelated files do not count.
    write(d.path(), "README.md", "y\n");
    assert_eq!(key(d.path(), t), k0);

    // Content changes change the key; changing it back restores it.
    write(d.path(), "requirements.txt", "flask==3.1\n");
    let k1 = key(d.path(), t);
    assert_ne!(k1, k0);
    write(d.path(), "requirements.txt", "flask==3.0\n");
    assert_eq!(key(d.path(), t), k0);

    // mtimes are never read.
    let p = d.path().join("requirements.txt");
    filetime::set_file_mtime(&p, filetime::FileTime::from_unix_time(1_000_000, 0)).unwrap();
    assert_eq!(key(d.path(), t), k0);

    // Renames change it (same contents, different path).
    fs::rename(
        d.path().join("requirements-dev.txt"),
        d.path().join("requirements-test.txt"),
    )
    .unwrap();
    assert_ne!(key(d.path(), t), k0);
}

#[test]
fn exclusions_and_root() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "app/requirements.txt", "a\n");
    write(d.path(), "app/vendor/requirements.txt", "b\n");
    let all = key(d.path(), "{hash:**/requirements.txt}");
    let excl = key(d.path(), "{hash:**/requirements.txt,!**/vendor/**}");
    assert_ne!(all, excl);
    // Changing an excluded file does not change the key.
    write(d.path(), "app/vendor/requirements.txt", "c\n");
    assert_eq!(key(d.path(), "{hash:**/requirements.txt,!**/vendor/**}"), excl);
    assert_ne!(key(d.path(), "{hash:**/requirements.txt}"), all);
    // --root: patterns relative to it.
    let o = envsnap(d.path(), &["key", "--root", "app", "{hash:requirements.txt}"], &[]);
    assert!(o.status.success());
    let via_root = String::from_utf8(o.stdout).unwrap();
    assert_eq!(via_root.trim(), key(&d.path().join("app"), "{hash:requirements.txt}"));
    // Everything excluded is a no-match error naming the pattern.
    fails(
        d.path(),
        &["key", "{hash:**/requirements.txt,!app}"],
        &[],
        "\"**/requirements.txt\" matched no files",
    );
}

#[test]
fn every_token_error_path() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.txt", "a");
    let p = d.path();
    let k = |t: &str| vec!["key".to_string(), t.to_string()];
    let run = |args: Vec<String>, env: &[(&str, &str)], needle: &str| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(p, &a, env, needle)
    };
    run(k("x-{nope}"), &[], "unknown token {nope}");
    run(k("x-{os"), &[], "unterminated '{'");
    run(k("x-}"), &[], "unmatched '}'");
    run(k("x-{{ checksum \"a.txt\" }}"), &[], "{checksum:FILE}");
    run(k("{os:linux}"), &[], "{os} takes no argument");
    run(k("{hash:missing.txt}"), &[], "\"missing.txt\" matched no files");
    run(k("{hash:}"), &[], "needs glob patterns");
    run(k("{hash:../x}"), &[], "'..'");
    run(k("{hash:a[}"), &[], "bad glob pattern");
    run(k("{hashFiles:}"), &[], "needs glob patterns");
    run(k("{hashFiles:nothing}"), &[], "empty"); // the whole key rendered empty
    run(k("{checksum:missing.lock}"), &[], "{checksum:missing.lock}");
    run(k("{checksum:.}"), &[], "not a regular file");
    run(
        k("{env:ENVSNAP_TEST_SURELY_UNSET}"),
        &[],
        "ENVSNAP_TEST_SURELY_UNSET is not set",
    );
    run(k("{env:}"), &[], "needs a variable name");
    run(k("k-{env:COMMA}"), &[("COMMA", "a,b")], "comma");
    run(k("k-{env:CTRL}"), &[("CTRL", "a\tb")], "control character");
    run(k(&"x".repeat(513)), &[], "513 characters");
    run(k("{epoch:week}"), &[], "period in seconds");
    run(k("{date:x}"), &[], "{date} takes no argument");
    run(k("{apt-base:x}"), &[], "takes no argument");
    run(
        vec![
            "key".into(),
            "--dpkg-root".into(),
            p.display().to_string(),
            "{apt-base}".into(),
        ],
        &[],
        "var/lib/dpkg/status",
    );
    run(
        vec![
            "key".into(),
            "--python".into(),
            "/nonexistent/python".into(),
            "{python}".into(),
        ],
        &[],
        "/nonexistent/python",
    );
}

#[test]
fn system_tokens() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let os = key(p, "{os}");
    assert!(["Linux", "macOS", "Windows"].contains(&os.as_str()), "{os}");
    assert_eq!(key(p, "{arch}"), std::env::consts::ARCH);
    // The interpreter's own answer, through PATH (pyenv shims included).
    let py = Command::new("python3")
        .args(["-c", "import platform,sys; print(platform.python_version()); print('%d.%d' % sys.version_info[:2]); print(sys.implementation.cache_tag)"])
        .output()
        .unwrap();
    let py = String::from_utf8(py.stdout).unwrap();
    let mut l = py.lines();
    let (ver, minor, tag) = (l.next().unwrap(), l.next().unwrap(), l.next().unwrap());
    assert_eq!(
        key(p, "{python}/{python-minor}/{python-impl}"),
        format!("{ver}/{minor}/{tag}")
    );
    let o = envsnap(p, &["key", "--python", "python3", "{python}"], &[]);
    assert_eq!(String::from_utf8(o.stdout).unwrap().trim(), ver);
    // {image}: GitHub-hosted runner variables win over os-release.
    let o = envsnap(
        p,
        &["key", "{image}"],
        &[("ImageOS", "ubuntu24"), ("ImageVersion", "20240609.1.0")],
    );
    assert_eq!(String::from_utf8(o.stdout).unwrap().trim(), "ubuntu24-20240609.1.0");
    if Path::new("/etc/os-release").exists() {
        let rel = key(p, "{os-release}");
        // `ID-VERSION_ID`, e.g. debian-12: lowercase, one dash at least.
        assert!(rel.contains('-') && rel == rel.to_lowercase(), "{rel}");
        assert_eq!(key(p, "{image}"), rel);
    }
    if Path::new("/var/lib/dpkg/status").exists() {
        let a = key(p, "{apt-base}");
        assert_eq!(a.len(), 16);
        assert_eq!(a, key(p, "{apt-base}"));
    }
    assert_eq!(key(p, "{date}").len(), 10);
    assert!(key(p, "{epoch}").parse::<u64>().unwrap() > 1_700_000_000);
    assert_eq!(key(p, "{env:HOME}"), std::env::var("HOME").unwrap());
}

#[test]
fn explain_json_and_github_output() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "requirements.txt", "flask\n");
    let out = d.path().join("gh_output");
    fs::write(&out, "earlier=1\n").unwrap();
    let t = "venv-{os}-{python}-{hash:requirements*.txt}";
    let o = envsnap(
        d.path(),
        &["key", "--explain", t],
        &[("GITHUB_OUTPUT", out.to_str().unwrap())],
    );
    assert!(o.status.success());
    let k = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let err = String::from_utf8(o.stderr).unwrap();
    let b3 = blake3::hash(b"flask\n").to_hex().to_string();
    assert!(err.contains(&format!("requirements.txt: blake3:{b3} 6 bytes")), "{err}");
    assert!(err.contains("sys.executable:"), "{err}");
    assert!(err.contains("{os} = "), "{err}");
    assert_eq!(fs::read_to_string(&out).unwrap(), format!("earlier=1\nkey={k}\n"));

    let o = envsnap(d.path(), &["--json", "key", t], &[]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["key"], k.as_str());
    assert_eq!(v["tokens"].as_array().unwrap().len(), 3);
    assert_eq!(v["tokens"][2]["token"], "{hash:requirements*.txt}");
    assert_eq!(v["tokens"][2]["inputs"][0]["name"], "requirements.txt");
}

#[test]
fn templates_in_save_and_restore() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(p, "requirements.txt", "flask==3.0\n");
    write(p, "data/lib/module.py", "print('hi')\n");
    let store = p.join("store");
    let s = store.to_str().unwrap();
    let tpl = "dir-{os}-{hash:requirements*.txt}";
    let rendered = key(p, tpl);

    let o = envsnap(p, &["--store", s, "save", "dir", "data", "--key", tpl], &[]);
    assert!(o.status.success(), "save: {}", String::from_utf8_lossy(&o.stderr));

    // The plain rendered key finds what the template saved.
    let o = envsnap(p, &["--store", s, "restore", "out1", "--key", &rendered], &[]);
    assert!(o.status.success(), "restore: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        fs::read_to_string(p.join("out1/lib/module.py")).unwrap(),
        "print('hi')\n"
    );

    // The template itself works as --key; --json shows the rendered key.
    let o = envsnap(p, &["--store", s, "--json", "restore", "out2", "--key", tpl], &[]);
    assert!(o.status.success(), "restore: {}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["key"], rendered.as_str());
    assert_eq!(v["hit"], "exact");

    // Requirements change: the exact key misses, a template fallback prefix hits.
    write(p, "requirements.txt", "flask==3.1\n");
    let o = envsnap(p, &["--store", s, "restore", "out3", "--key", tpl], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let o = envsnap(
        p,
        &[
            "--store",
            s,
            "--json",
            "restore",
            "out4",
            "--key",
            tpl,
            "--fallback",
            "dir-{os}-",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["hit"], "fallback");
    assert_eq!(v["matched_key"], rendered.as_str());

    // Template errors are usage errors before anything is written.
    fails(
        p,
        &["--store", s, "save", "dir", "data", "--key", "dir-{hash:nope.txt}"],
        &[],
        "\"nope.txt\" matched no files",
    );
    fails(
        p,
        &["--store", s, "restore", "out5", "--key", "k", "--fallback", "{bogus}"],
        &[],
        "unknown token {bogus}",
    );
    assert!(!p.join("out5").exists());
}
