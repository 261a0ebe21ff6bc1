//! The remote store against a real S3 server (moto's, from PyPI, installed and cached by
//! `.ci/test-setup-moto.sh`) and against `file://` remotes, via the real binary. Each test
//! starts its own server on a free loopback port and stops it when done.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn require(why: &str) {
    if std::env::var("ENVSNAP_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("required test prerequisite missing: {why}");
    }
    eprintln!("SKIP: {why}");
}

/// The moto_server binary, installed on first use (cached under target/fixtures).
fn moto_bin() -> Option<&'static PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().to_path_buf();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/test-setup-moto.sh");
        let out = Command::new(&script).arg(&target).output().ok()?;
        if !out.status.success() {
            eprintln!("moto setup failed: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
    .as_ref()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A moto S3 server on 127.0.0.1, killed on drop.
struct S3 {
    child: Child,
    port: u16,
}

impl S3 {
    fn start() -> Option<S3> {
        Self::start_with(&[])
    }

    fn start_with(env: &[(&str, &str)]) -> Option<S3> {
        let Some(bin) = moto_bin() else {
            require("moto's S3 server could not be installed (.ci/test-setup-moto.sh)");
            return None;
        };
        for _ in 0..5 {
            let port = free_port();
            let mut c = Command::new(bin);
            c.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            for (k, v) in env {
                c.env(k, v);
            }
            let child = c.spawn().expect("start moto_server");
            let mut s = S3 { child, port };
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(_)) = s.child.try_wait() {
                    break; // port taken meanwhile: try another
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(s);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = s.child.kill();
        }
        panic!("moto_server did not start");
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Create a bucket (moto accepts unsigned requests).
    fn bucket(&self, name: &str) {
        let (status, body) = http(self.port, "PUT", &format!("/{name}"), b"");
        assert!(status == 200, "create bucket {name}: {status} {body}");
    }

    fn env(&self) -> Vec<(String, String)> {
        aws_env(&self.endpoint())
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn aws_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/envsnap-test"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/envsnap-test"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// One plain HTTP/1.1 request; (status, body).
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// A remote for one test: an S3 bucket on a fresh server, or a `file://` directory.
struct Remote {
    url: String,
    env: Vec<(String, String)>,
    _s3: Option<S3>,
    _dir: Option<tempfile::TempDir>,
}

impl Remote {
    fn s3() -> Option<Remote> {
        let s3 = S3::start()?;
        s3.bucket("envsnap-test");
        Some(Remote {
            url: "s3://envsnap-test/ci/cache".into(),
            env: s3.env(),
            _s3: Some(s3),
            _dir: None,
        })
    }

    fn file() -> Remote {
        let d = tempfile::tempdir().unwrap();
        Remote {
            url: format!("file://{}", d.path().join("shared").display()),
            env: Vec::new(),
            _s3: None,
            _dir: Some(d),
        }
    }

    fn both() -> Vec<Remote> {
        let mut v = vec![Remote::file()];
        v.extend(Remote::s3());
        v
    }

    /// `envsnap --store STORE --remote URL ARGS…`.
    fn run(&self, store: &Path, args: &[&str]) -> Output {
        self.cmd(store, args).output().expect("run envsnap")
    }

    fn cmd(&self, store: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--store")
            .arg(store)
            .args(["--remote", &self.url])
            .args(args)
            .env_remove("GITHUB_OUTPUT")
            .env_remove("ENVSNAP_STORE")
            .env_remove("ENVSNAP_REMOTE")
            .env_remove("AWS_PROFILE");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    fn json(&self, store: &Path, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        ok_json(&self.run(store, &a))
    }
}

fn tree(root: &Path) {
    fs::create_dir_all(root.join("pkg/sub")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("pkg/module.py"), b"print('hello')\n").unwrap();
    // Incompressible and larger than one coalescing gap, so ranges really split and join.
    let mut x = 0x2545F4914F6CDD1Du64;
    let noise: Vec<u8> = (0..3_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(root.join("pkg/noise.bin"), &noise).unwrap();
    fs::write(root.join("pkg/sub/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(root.join("pkg/sub/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("pkg/sub/plain-copy"), b"#!/bin/sh\necho tool\n").unwrap();
    fs::write(root.join("zero-length"), b"").unwrap();
    fs::write(root.join("name with spaces ünï"), b"unicode").unwrap();
    for i in 0..200 {
        fs::write(
            root.join(format!("pkg/f{i:03}.txt")),
            format!("file {i}\n").repeat(i + 1),
        )
        .unwrap();
    }
    symlink("module.py", root.join("pkg/relative-link")).unwrap();
    fs::hard_link(root.join("pkg/module.py"), root.join("hardlink.py")).unwrap();
    let mut paths: Vec<_> = walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in paths.iter().enumerate() {
        set_mtime(p, 1_600_000_000 + i as i64, 123_456_789 + i as u32);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Issue 9 (a): a tree saved through the remote restores exactly on a "fresh runner" (a second,
/// empty local store), for S3 and file:// remotes.
#[test]
fn a_tree_round_trips_through_the_remote_to_an_empty_store() {
    for r in Remote::both() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        tree(&src);
        let saved = r.json(&d.path().join("a"), &["save", "dir", s(&src), "--key", "tree-1"]);
        let up = &saved["remote"];
        assert!(up["pushed"]["packs"].as_u64().unwrap() >= 1, "{}: {saved}", r.url);
        assert!(up["bytes_up"].as_u64().unwrap() > 0);
        let fresh = d.path().join("b");
        let out = d.path().join("out");
        let got = r.json(&fresh, &["restore", s(&out), "--key", "tree-1"]);
        assert_eq!(got["hit"], "exact", "{}", r.url);
        assert!(got["remote"]["bytes_down"].as_u64().unwrap() > 0);
        assert_eq!(describe(&out), describe(&src), "{}", r.url);
        // The snapshot is now in the fresh store too: verify passes, and a second restore
        // reads nothing but the ref listing and the use record.
        assert_eq!(code(&envsnap(&fresh, &["verify"])), 0);
        let again = r.json(&fresh, &["restore", s(&d.path().join("out2")), "--key", "tree-1"]);
        assert_eq!(again["remote"]["bytes_down"].as_u64().unwrap(), 0, "{again}");
    }
}

/// Keys live on the remote: a key only in the local store is a miss with a remote configured
/// (exit 1), and fallback prefixes are honoured on the remote.
#[test]
fn lookup_asks_the_remote_exact_then_fallback_prefixes() {
    let r = Remote::file();
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    let store = d.path().join("store");
    // Saved locally only.
    assert_eq!(
        code(&envsnap(&store, &["save", "dir", s(&src), "--key", "local-only"])),
        0
    );
    let o = r.run(&store, &["restore", s(&d.path().join("x")), "--key", "local-only"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    r.json(&store, &["save", "dir", s(&src), "--key", "dep-old"]);
    fs::write(src.join("b"), b"b").unwrap();
    r.json(&store, &["save", "dir", s(&src), "--key", "dep-new"]);
    let got = r.json(
        &d.path().join("fresh"),
        &[
            "restore",
            s(&d.path().join("y")),
            "--key",
            "dep-missing",
            "--fallback",
            "nope-",
            "--fallback",
            "dep-",
        ],
    );
    assert_eq!(got["hit"], "fallback");
    assert_eq!(got["matched_key"], "dep-new");
}

/// Issue 9 (b): a re-save after adding one file uploads one object in one pack; an unchanged
/// re-save uploads no pack and no manifest, in at most 3 requests.
#[test]
fn a_resave_uploads_only_what_the_remote_lacks() {
    for r in Remote::both() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        tree(&src);
        let store = d.path().join("store");
        let first = r.json(&store, &["save", "dir", s(&src), "--key", "k"]);
        let full_up = first["remote"]["bytes_up"].as_u64().unwrap();
        fs::write(src.join("pkg/new-file.txt"), vec![b'n'; 10_000]).unwrap();
        let second = r.json(&store, &["save", "dir", s(&src), "--key", "k"]);
        let p = &second["remote"]["pushed"];
        assert_eq!(p["objects"], 1, "{second}");
        assert_eq!(p["packs"], 1);
        assert!(
            second["remote"]["bytes_up"].as_u64().unwrap() * 20 < full_up,
            "incremental upload too large: {second} vs {full_up}"
        );
        let third = r.json(&store, &["save", "dir", s(&src), "--key", "k"]);
        let p = &third["remote"]["pushed"];
        assert_eq!(p["packs"], 0, "{third}");
        assert!(third["remote"]["requests"].as_u64().unwrap() <= 3, "{third}");
        // Identical content under a new key: nothing but a ref.
        let other = r.json(&store, &["save", "dir", s(&src), "--key", "k2"]);
        assert_eq!(other["remote"]["pushed"]["packs"], 0);
        assert_eq!(other["remote"]["pushed"]["objects"], 0);
        // A fresh runner gets the latest content of k.
        let out = d.path().join("out");
        r.json(&d.path().join("fresh"), &["restore", s(&out), "--key", "k"]);
        assert_eq!(describe(&out), describe(&src));
    }
}

/// Issue 9 (e): a missing bucket and refused credentials are one line naming the remote and
/// the HTTP status, exit 2 (never a miss), for restore and for save (which keeps its local save).
#[test]
fn missing_bucket_and_wrong_credentials_are_one_clear_line_exit_2() {
    let Some(s3) = S3::start() else { return };
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    let r = Remote {
        url: "s3://no-such-bucket/x".into(),
        env: s3.env(),
        _s3: None,
        _dir: None,
    };
    let store = d.path().join("store");
    let o = r.run(&store, &["restore", s(&d.path().join("out")), "--key", "k"]);
    let err = stderr(&o);
    assert_eq!(code(&o), 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("s3://no-such-bucket/x") && err.contains("HTTP 404") && err.contains("NoSuchBucket"),
        "{err}"
    );
    let o = r.run(&store, &["save", "dir", s(&src), "--key", "k"]);
    let err = stderr(&o);
    assert_eq!(code(&o), 2, "{err}");
    assert!(err.contains("saved k locally") && err.contains("NoSuchBucket"), "{err}");
    // The local save was kept.
    assert_eq!(code(&envsnap(&store, &["show", "k"])), 0);
    drop(s3);

    // A server that checks credentials refuses unknown keys with 403.
    let Some(auth) = S3::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]) else {
        return;
    };
    let r = Remote {
        url: "s3://some-bucket/x".into(),
        env: auth.env(),
        _s3: None,
        _dir: None,
    };
    let o = r.run(&store, &["restore", s(&d.path().join("out")), "--key", "k"]);
    let err = stderr(&o);
    assert_eq!(code(&o), 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("s3://some-bucket/x") && err.contains("HTTP 403"), "{err}");

    // Nothing listening: exit 2 with a clear line (so `|| install` proceeds), not a miss.
    let r = Remote {
        url: "s3://b/x".into(),
        env: aws_env(&format!("http://127.0.0.1:{}", free_port())),
        _s3: None,
        _dir: None,
    };
    let o = r.run(&store, &["restore", s(&d.path().join("out")), "--key", "k"]);
    let err = stderr(&o);
    assert_eq!(code(&o), 2, "{err}");
    assert!(err.contains("s3://b/x") && err.contains("cannot reach"), "{err}");
    assert!(!d.path().join("out").exists());
}
