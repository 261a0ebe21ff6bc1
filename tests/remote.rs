//! The remote store against a real S3 server (moto's, from PyPI, installed and cached by
//! `.ci/test-setup-moto.sh`), for the core round trips also against a second, independent one
//! (s3s-fs, a Rust server from the crates registry that checks SigV4 signatures, built and
//! cached by `.ci/test-setup-s3s.sh`), and against `file://` remotes, via the real binary.
//! Each test starts its own servers on free loopback ports and stops them when done.

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

fn moto_bin() -> Option<&'static PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| setup_fixture("test-setup-moto.sh")).as_ref()
}

fn s3s_bin() -> Option<&'static PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| setup_fixture("test-setup-s3s.sh")).as_ref()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An S3 server on 127.0.0.1 (moto's, or s3s-fs over `_root`), killed on drop.
struct S3 {
    child: Child,
    port: u16,
    _root: Option<tempfile::TempDir>,
}

impl S3 {
    /// s3s-fs serving a fresh directory, with bucket `bucket` (a directory in it). It accepts
    /// only requests signed with the tests' key (`aws_env`).
    fn start_s3s(bucket: &str) -> Option<S3> {
        let Some(bin) = s3s_bin() else {
            pythons::skip("the s3s-fs S3 server could not be built (.ci/test-setup-s3s.sh)");
            return None;
        };
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join(bucket)).unwrap();
        for _ in 0..5 {
            let port = free_port();
            let mut c = Command::new(bin);
            c.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", "testing", "--secret-key", "testing"])
                .arg(root.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = c.spawn().expect("start s3s-fs");
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken meanwhile: try another
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(S3 {
                        child,
                        port,
                        _root: Some(root),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("s3s-fs did not start");
    }

    fn start() -> Option<S3> {
        Self::start_with(&[])
    }

    fn start_with(env: &[(&str, &str)]) -> Option<S3> {
        let Some(bin) = moto_bin() else {
            pythons::skip("moto's S3 server could not be installed (.ci/test-setup-moto.sh)");
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
            let mut s = S3 {
                child,
                port,
                _root: None,
            };
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

/// moto checks no signatures unless asked to, but serves anonymous GETs of private objects
/// with 403: a request that names an access key is served.
const FAKE_AUTH: &str = "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\n";

/// One plain HTTP/1.1 request; (status, body).
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{FAKE_AUTH}Content-Length: {}\r\nConnection: close\r\n\r\n",
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

    /// A bucket on s3s-fs: a second S3 implementation, stricter about signatures than moto.
    fn s3s() -> Option<Remote> {
        let s3 = S3::start_s3s("envsnap-test")?;
        Some(Remote {
            url: "s3://envsnap-test/ci/cache".into(),
            env: s3.env(),
            _s3: Some(s3),
            _dir: None,
        })
    }

    /// `both()` and s3s-fs: for the core round trips, lookups and concurrency.
    fn all() -> Vec<Remote> {
        let mut v = Remote::both();
        v.extend(Remote::s3s());
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
    for r in Remote::all() {
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
        // A fresh runner's store (it never wrote an object) gets each file written once,
        // straight into the tree: the objects are not kept in it.
        let kept = walkdir::WalkDir::new(fresh.join("objects-v1"))
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .count();
        assert_eq!(kept, 0, "{}: objects written to the store too", r.url);
        // Without the remote that snapshot cannot be restored here, and says so.
        let o = envsnap(&fresh, &["restore", s(&d.path().join("x")), "--key", "tree-1"]);
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        assert!(
            stderr(&o).contains("not in the local store: restore with the remote"),
            "{}",
            stderr(&o)
        );
        assert!(!d.path().join("x").exists());
        // A store that caches (here: one that saved) pulls what it lacks into itself, and a
        // repeat restore from it downloads nothing.
        r.json(&fresh, &["save", "dir", s(&out.join("pkg/sub")), "--key", "other"]);
        for (n, down) in [(2, true), (3, false)] {
            let again = r.json(
                &fresh,
                &["restore", s(&d.path().join(format!("out{n}"))), "--key", "tree-1"],
            );
            assert_eq!(again["remote"]["bytes_down"].as_u64().unwrap() > 0, down, "{again}");
            assert_eq!(describe(&d.path().join(format!("out{n}"))), describe(&src), "{}", r.url);
        }
        assert_eq!(code(&envsnap(&fresh, &["verify"])), 0);
    }
}

/// A fresh runner's restore leaves the objects only on the remote; if the remote drops them
/// (the key deleted and gc'd) before the save after the restore, that save cannot upload
/// files it did not read: it says so, and the next save reads them anew and uploads them.
#[test]
fn objects_a_direct_restore_never_kept_and_the_remote_dropped_are_read_again_by_the_next_save() {
    let r = Remote::file();
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    tree(&src);
    r.json(&d.path().join("a"), &["save", "dir", s(&src), "--key", "gone-soon"]);
    let fresh = d.path().join("fresh");
    let out = d.path().join("out");
    r.json(&fresh, &["restore", s(&out), "--key", "gone-soon"]);
    r.json(&d.path().join("a"), &["delete", "gone-soon"]);
    for _ in 0..2 {
        r.json(&d.path().join("a"), &["gc", "--grace", "0s", "--repack-threshold", "0"]);
    }
    assert!(r.raw_list("packs/").is_empty(), "{:?}", r.raw_list("packs/"));
    // Past the racy window, so the restore's stat cache vouches for every file.
    std::thread::sleep(Duration::from_millis(1100));
    let o = r.run(&fresh, &["save", "dir", s(&out), "--key", "again"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("neither in the local store nor on the remote"),
        "{}",
        stderr(&o)
    );
    let again = r.json(&fresh, &["save", "dir", s(&out), "--key", "again"]);
    assert!(again["remote"]["pushed"]["objects"].as_u64().unwrap() > 0, "{again}");
    let back = d.path().join("back");
    r.json(&d.path().join("fresh2"), &["restore", s(&back), "--key", "again"]);
    assert_eq!(describe(&back), describe(&src));
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
    let o = r.run(
        &store,
        &["--json", "restore", s(&d.path().join("x")), "--key", "local-only"],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let miss: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(miss["hit"], "miss");
    assert!(miss["remote"]["requests"].as_u64().unwrap() >= 1, "{miss}");
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
    for r in Remote::all() {
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

/// The documented AWS sources against a server that checks signatures and IAM policies: the
/// only valid key is in a named profile of the shared files (none in the environment, and the
/// `[default]` profile's secret is wrong, so `AWS_PROFILE` must select the section), and the
/// endpoint comes from that profile's config (as does the region, but moto accepts any signing
/// region: src/remote/aws_config.rs's unit tests check that one). A profile with a wrong secret
/// is one line, exit 2; keys in the environment win over the profile, as in the AWS CLI.
#[test]
fn credentials_and_endpoint_come_from_the_aws_profile_and_env_keys_win() {
    let d = tempfile::tempdir().unwrap();
    let py = d.path().join("py");
    fs::create_dir(&py).unwrap();
    fs::write(py.join("sitecustomize.py"), MOTO_SIGV4_QUERY_FIX).unwrap();
    // moto serves the first 5 actions unauthenticated (the 4 IAM calls and the bucket below),
    // then checks every request's signature against its IAM users and their policies.
    let Some(s3) = S3::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "5"), ("PYTHONPATH", s(&py))]) else {
        return;
    };
    let port = s3.port;
    iam(port, &[("Action", "CreateUser"), ("UserName", "ci")]);
    let policy = iam(
        port,
        &[
            ("Action", "CreatePolicy"),
            ("PolicyName", "s3-all"),
            (
                "PolicyDocument",
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#,
            ),
        ],
    );
    let arn = xml_text(&policy, "Arn");
    iam(
        port,
        &[("Action", "AttachUserPolicy"), ("UserName", "ci"), ("PolicyArn", &arn)],
    );
    let key = iam(port, &[("Action", "CreateAccessKey"), ("UserName", "ci")]);
    let (id, secret) = (xml_text(&key, "AccessKeyId"), xml_text(&key, "SecretAccessKey"));
    s3.bucket("envsnap-auth");
    // Authentication is on now: whatever succeeds below was signed with the IAM user's key.
    let (status, body) = http(port, "PUT", "/envsnap-other", b"");
    assert_eq!(status, 403, "moto does not enforce authentication: {body}");

    let creds = d.path().join("credentials");
    let config = d.path().join("config");
    fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = {id}\naws_secret_access_key = wrong-{secret}\n\n\
             [ci]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n\n\
             [bad]\naws_access_key_id = {id}\naws_secret_access_key = bad-{secret}\n"
        ),
    )
    .unwrap();
    // No AWS_ENDPOINT_URL below: the server is reachable only through the profile's endpoint_url.
    let endpoint = s3.endpoint();
    fs::write(
        &config,
        format!(
            "[default]\nregion = us-east-1\n\n\
             [profile ci]\nregion = us-east-1\nendpoint_url = {endpoint}\n\n\
             [profile bad]\nregion = us-east-1\nendpoint_url = {endpoint}\n"
        ),
    )
    .unwrap();
    let remote = |profile: &str, keys: &[(&str, &str)]| {
        let mut env = vec![
            ("AWS_PROFILE", profile),
            ("AWS_CONFIG_FILE", s(&config)),
            ("AWS_SHARED_CREDENTIALS_FILE", s(&creds)),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ];
        env.extend_from_slice(keys);
        Remote {
            url: "s3://envsnap-auth/ci".into(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            _s3: None,
            _dir: None,
        }
    };
    // Exactly the environment above: no key, region or endpoint from the caller's AWS setup.
    let run = |r: &Remote, store: &Path, args: &[&str]| {
        let mut c = r.cmd(store, args);
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") && !r.env.iter().any(|(e, _)| *e == k) {
                c.env_remove(k);
            }
        }
        c.output().expect("run envsnap")
    };

    let src = d.path().join("src");
    tree(&src);
    let good = remote("ci", &[]);
    let saved = ok_json(&run(
        &good,
        &d.path().join("a"),
        &["--json", "save", "dir", s(&src), "--key", "k"],
    ));
    assert!(saved["remote"]["pushed"]["packs"].as_u64().unwrap() >= 1, "{saved}");
    let out = d.path().join("out");
    let got = ok_json(&run(
        &good,
        &d.path().join("b"),
        &["--json", "restore", s(&out), "--key", "k"],
    ));
    assert_eq!(got["hit"], "exact", "{got}");
    assert_eq!(describe(&out), describe(&src));

    // The wrong secret in the selected profile: refused by the server, one line, exit 2.
    let bad = remote("bad", &[]);
    let refused = d.path().join("refused");
    let o = run(&bad, &d.path().join("c"), &["restore", s(&refused), "--key", "k"]);
    let err = stderr(&o);
    assert_eq!(code(&o), 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("s3://envsnap-auth/ci") && err.contains("HTTP 403"),
        "{err}"
    );
    assert!(!refused.exists());

    // Keys in the environment take precedence over the (bad) profile's.
    let env_keys = remote("bad", &[("AWS_ACCESS_KEY_ID", &id), ("AWS_SECRET_ACCESS_KEY", &secret)]);
    let out2 = d.path().join("out2");
    let got = ok_json(&run(
        &env_keys,
        &d.path().join("e"),
        &["--json", "restore", s(&out2), "--key", "k"],
    ));
    assert_eq!(got["hit"], "exact", "{got}");
    assert_eq!(describe(&out2), describe(&src));

    // A profile that neither file defines is named, before any request (the AWS CLI refuses too).
    let o = run(
        &remote("nosuch", &[]),
        &d.path().join("f"),
        &["restore", s(&refused), "--key", "k"],
    );
    let err = stderr(&o);
    assert_eq!(code(&o), 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("AWS_PROFILE=nosuch: no such profile"), "{err}");
}

/// Loaded into moto's Python at startup: moto (5.1) checks a signature against the query string
/// as werkzeug hands it over, `%2F` already decoded to `/`, and botocore's canonicalization of
/// a URL does not encode it again, so every correctly signed request with a `/` in a query value
/// (each listing's `prefix=`) is refused with SignatureDoesNotMatch (the symptom reported in
/// getmoto/moto#5948). This canonicalizes as AWS does: each name and value URI-encoded, only
/// unreserved characters left bare. A wrong secret is still refused (asserted above).
const MOTO_SIGV4_QUERY_FIX: &str = r#"
from urllib.parse import quote, unquote

import botocore.auth


def _canonical_query_string_url(self, parts):
    def enc(s):
        return quote(unquote(s), safe="-_.~")

    pairs = sorted((enc(k), enc(v)) for k, _, v in (p.partition("=") for p in parts.query.split("&") if p))
    return "&".join(f"{k}={v}" for k, v in pairs)


botocore.auth.SigV4Auth._canonical_query_string_url = _canonical_query_string_url
"#;

/// One IAM action (form-encoded POST, as the AWS CLI sends it); the response body. moto routes a
/// request by the service in its credential scope, so the scope names `iam`; the signature is
/// never checked while moto still serves unauthenticated actions.
fn iam(port: u16, params: &[(&str, &str)]) -> String {
    let enc = |v: &str| percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string();
    let body = params
        .iter()
        .chain(&[("Version", "2010-05-08")])
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=00\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert_eq!(resp.split(' ').nth(1), Some("200"), "IAM {params:?}: {resp}");
    resp
}

/// The text of the first `<tag>` element.
fn xml_text(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let i = xml.find(&open).unwrap_or_else(|| panic!("no <{tag}> in {xml}")) + open.len();
    let end = xml[i..].find(&format!("</{tag}>")).unwrap();
    xml[i..i + end].to_string()
}

impl Remote {
    /// moto's port: raw requests go to moto unsigned. s3s-fs checks signatures, so its objects
    /// are reached through the directory it serves, as a file:// remote's are.
    fn s3_port(&self) -> Option<u16> {
        self._s3.as_ref().filter(|s| s._root.is_none()).map(|s| s.port)
    }

    /// The raw object path of `rel` (relative to the layout root) on the server.
    fn raw_path(&self, rel: &str) -> String {
        let s3s_root = self._s3.as_ref().and_then(|s| s._root.as_ref());
        match (self.s3_port(), s3s_root) {
            (Some(_), _) => format!("/envsnap-test/ci/cache/envsnap-v1/{rel}"),
            (None, Some(root)) => format!("{}/envsnap-test/ci/cache/envsnap-v1/{rel}", root.path().display()),
            (None, None) => format!("{}/envsnap-v1/{rel}", self.url.strip_prefix("file://").unwrap()),
        }
    }

    /// Write an object behind envsnap's back (moto takes unsigned requests).
    fn raw_put(&self, rel: &str, data: &[u8]) {
        match self.s3_port() {
            Some(port) => {
                let (st, body) = http(port, "PUT", &self.raw_path(rel), data);
                assert_eq!(st, 200, "{body}");
            }
            None => {
                let p = PathBuf::from(self.raw_path(rel));
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, data).unwrap();
            }
        }
    }

    fn raw_get(&self, rel: &str) -> Vec<u8> {
        match self.s3_port() {
            Some(port) => {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                write!(
                    s,
                    "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{FAKE_AUTH}Connection: close\r\n\r\n",
                    self.raw_path(rel)
                )
                .unwrap();
                let mut resp = Vec::new();
                s.read_to_end(&mut resp).unwrap();
                let at = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                assert!(
                    resp.starts_with(b"HTTP/1.1 200") || resp.starts_with(b"HTTP/1.0 200"),
                    "GET {rel}: {}",
                    String::from_utf8_lossy(&resp[..at])
                );
                resp[at..].to_vec()
            }
            None => fs::read(self.raw_path(rel)).unwrap(),
        }
    }

    fn raw_delete(&self, rel: &str) {
        match self.s3_port() {
            Some(port) => {
                let (st, body) = http(port, "DELETE", &self.raw_path(rel), b"");
                assert!(st == 204 || st == 200, "{body}");
            }
            None => fs::remove_file(self.raw_path(rel)).unwrap(),
        }
    }

    /// Object paths under `prefix` (relative to the layout root).
    fn raw_list(&self, prefix: &str) -> Vec<String> {
        match self.s3_port() {
            Some(port) => {
                let p = format!("ci/cache/envsnap-v1/{prefix}");
                let (st, body) = http(port, "GET", &format!("/envsnap-test?list-type=2&prefix={p}"), b"");
                assert_eq!(st, 200, "{body}");
                body.split("<Key>")
                    .skip(1)
                    .map(|k| {
                        k.split("</Key>")
                            .next()
                            .unwrap()
                            .strip_prefix("ci/cache/envsnap-v1/")
                            .unwrap()
                            .to_string()
                    })
                    .collect()
            }
            None => {
                let root = PathBuf::from(self.raw_path(""));
                walkdir::WalkDir::new(root.join(prefix))
                    .into_iter()
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_file())
                    .map(|e| e.path().strip_prefix(&root).unwrap().to_string_lossy().into_owned())
                    .collect()
            }
        }
    }
}

fn ref_name(key: &str, created_ns: u64, manifest: &str) -> String {
    format!("refs/{key}/{:020}-{manifest}", u64::MAX - created_ns)
}

/// Issue 9 (c): lookup reads every page of a listing: with 1,100 refs under one prefix the
/// newest is the last key in listing order (beyond S3's first page of 1,000), and wins.
#[test]
fn fallback_lookup_finds_the_newest_of_more_than_1000_refs() {
    for r in Remote::all() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("store");
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        fs::write(a.join("which"), b"old").unwrap();
        fs::write(b.join("which"), b"newest").unwrap();
        let ma = r.json(&store, &["save", "dir", s(&a), "--key", "seed-a"])["remote"]["pushed"]["manifest"]
            .as_str()
            .unwrap()
            .to_string();
        let mb = r.json(&store, &["save", "dir", s(&b), "--key", "seed-b"])["remote"]["pushed"]["manifest"]
            .as_str()
            .unwrap()
            .to_string();
        let base = 1_700_000_000_000_000_000u64;
        let names: Vec<String> = (0..1100u64)
            .map(|i| {
                // many-1099 is the newest and lists last.
                let m = if i == 1099 { &mb } else { &ma };
                ref_name(
                    &format!("many-{i:04}"),
                    base + i * 1_000 + if i == 1099 { 10_000_000 } else { 0 },
                    m,
                )
            })
            .collect();
        std::thread::scope(|sc| {
            for chunk in names.chunks(140) {
                let r = &r;
                sc.spawn(move || chunk.iter().for_each(|n| r.raw_put(n, b"")));
            }
        });
        let out = d.path().join("out");
        let got = r.json(
            &d.path().join("fresh"),
            &["restore", s(&out), "--key", "many-none", "--fallback", "many-"],
        );
        assert_eq!(got["matched_key"], "many-1099", "{}: {got}", r.url);
        assert_eq!(fs::read(out.join("which")).unwrap(), b"newest");
        // The exact key still beats a newer prefix match.
        let got = r.json(
            &d.path().join("fresh"),
            &[
                "restore",
                s(&d.path().join("out2")),
                "--key",
                "many-0003",
                "--fallback",
                "many-",
            ],
        );
        assert_eq!(
            (got["hit"].as_str(), got["matched_key"].as_str()),
            (Some("exact"), Some("many-0003"))
        );
        let listed = r.json(&d.path().join("fresh"), &["list", "many-"]);
        assert_eq!(listed["snapshots"].as_array().unwrap().len(), 1100);
    }
}

/// A restore that must fail leaves no destination and no snapshot in the local store.
fn assert_refused(r: &Remote, d: &Path, key: &str, expect: &[&str]) {
    let fresh = d.join(format!("fresh-{}", rand_suffix()));
    let out = d.join(format!("out-{}", rand_suffix()));
    let o = r.run(&fresh, &["restore", s(&out), "--key", key]);
    let err = stderr(&o);
    assert_eq!(code(&o), 2, "{}: {err}", r.url);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    for e in expect {
        assert!(err.contains(e), "{}: expected {e:?} in: {err}", r.url);
    }
    assert!(!out.exists(), "a refused restore wrote its destination");
    let listed = ok_json(&envsnap(&fresh, &["--json", "list"]));
    assert_eq!(listed["snapshots"].as_array().unwrap().len(), 0, "{listed}");
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// Issue 9 (d): a flipped byte in a pack, a truncated pack, a missing pack, a corrupt index
/// and a manifest with `../` are each refused, naming what is wrong; nothing is written.
#[test]
fn a_corrupt_remote_is_refused_and_nothing_is_written() {
    for r in Remote::both() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        tree(&src);
        r.json(&d.path().join("a"), &["save", "dir", s(&src), "--key", "k"]);
        let packs = r.raw_list("packs/");
        assert_eq!(packs.len(), 1, "{packs:?}");
        let pack = packs[0].clone();
        let pack_name = pack.rsplit('/').next().unwrap().to_string();
        let good = r.raw_get(&pack);

        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        r.raw_put(&pack, &flipped);
        assert_refused(&r, d.path(), "k", &["corrupt pack", &pack_name]);

        r.raw_put(&pack, &good[..good.len() - 1000]);
        assert_refused(&r, d.path(), "k", &["truncated", &pack_name]);

        r.raw_delete(&pack);
        assert_refused(&r, d.path(), "k", &[&pack_name]);
        r.raw_put(&pack, &good);

        // A manifest rewritten to hold "../escape", under its own (valid) name and a ref.
        let refs = r.raw_list("refs/k/");
        let mid_name = refs[0].rsplit('-').next().unwrap().to_string();
        let z = r.raw_get(&format!("manifests/{mid_name}"));
        let json = zstd::decode_all(&z[..]).unwrap();
        let evil = String::from_utf8(json)
            .unwrap()
            .replace("\"p\":\"zero-length\"", "\"p\":\"../escape\"");
        assert!(evil.contains("../escape"));
        let evil_id = blake3::hash(evil.as_bytes()).to_hex().to_string();
        r.raw_put(
            &format!("manifests/{evil_id}"),
            &zstd::encode_all(evil.as_bytes(), 3).unwrap(),
        );
        r.raw_put(&ref_name("evil", 1_900_000_000_000_000_000, &evil_id), b"");
        assert_refused(&r, d.path(), "evil", &["unsafe entry", "../escape"]);
        assert!(!d.path().join("escape").exists());

        // A corrupt index file is named.
        let idx = r.raw_list("index/");
        let mut bad = r.raw_get(&idx[0]);
        bad[3] ^= 1;
        r.raw_put(&idx[0], &bad);
        let name = idx[0].strip_prefix("index/").unwrap();
        assert_refused(&r, d.path(), "k", &["corrupt pack index", name]);
    }
}

/// Read one HTTP/1.1 message (headers, then a Content-Length body) from `s`; None at EOF.
fn read_message(s: &mut impl Read, head_only_body: bool) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    if !head_only_body {
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).ok()?;
        buf.extend_from_slice(&body);
    }
    Some(buf)
}

/// An HTTP proxy in front of moto on a free port, one request at a time per connection:
/// `intercept` sees each request first and may answer it itself (returns true); the others
/// are forwarded and their responses passed back.
fn http_proxy<F>(upstream: u16, intercept: F) -> u16
where
    F: Fn(&[u8], &mut TcpStream) -> bool + Clone + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut client) = conn else { continue };
            let intercept = intercept.clone();
            std::thread::spawn(move || {
                while let Some(req) = read_message(&mut client, false) {
                    if intercept(&req, &mut client) {
                        continue;
                    }
                    let is_head = req.starts_with(b"HEAD ");
                    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        return;
                    };
                    if up.write_all(&req).is_err() {
                        return;
                    }
                    let Some(resp) = read_message(&mut up, is_head) else {
                        return;
                    };
                    if client.write_all(&resp).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A proxy in front of moto that answers every third request with 503 SlowDown (and some
/// with 500 InternalError) instead of forwarding it.
struct FlakyProxy {
    port: u16,
    failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FlakyProxy {
    fn start(upstream: u16) -> FlakyProxy {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let count = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let f2 = failed.clone();
        let port = http_proxy(upstream, move |_req, client| {
            let n = count.fetch_add(1, Ordering::SeqCst);
            if n % 3 != 1 {
                return false;
            }
            f2.fetch_add(1, Ordering::SeqCst);
            let (status, code) = if n.is_multiple_of(2) {
                ("500 Internal Server Error", "InternalError")
            } else {
                ("503 Slow Down", "SlowDown")
            };
            let body = format!("<Error><Code>{code}</Code><Message>try again</Message></Error>");
            let _ = write!(
                client,
                "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            true
        });
        FlakyProxy { port, failed }
    }
}

/// Issue 9 (h): with a server that fails a third of all requests transiently (503 SlowDown,
/// 500 InternalError), save and a fresh-runner restore still succeed through retries.
#[test]
fn transient_server_errors_are_retried_and_the_restore_succeeds() {
    let Some(s3) = S3::start() else { return };
    s3.bucket("flaky");
    let proxy = FlakyProxy::start(s3.port);
    let r = Remote {
        url: "s3://flaky/x".into(),
        env: aws_env(&format!("http://127.0.0.1:{}", proxy.port)),
        _s3: None,
        _dir: None,
    };
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    tree(&src);
    r.json(&d.path().join("a"), &["save", "dir", s(&src), "--key", "k"]);
    let out = d.path().join("out");
    let got = r.json(&d.path().join("b"), &["restore", s(&out), "--key", "k"]);
    assert!(got["remote"]["retries"].as_u64().unwrap() > 0, "{got}");
    assert!(proxy.failed.load(std::sync::atomic::Ordering::SeqCst) > 0);
    assert_eq!(describe(&out), describe(&src));
}

/// The venv tests' interpreter (tests/common/pythons.rs: discovered, not assumed) and the
/// fixture wheelhouse built for its cpXY tag.
fn python_and_wheelhouse() -> Option<(PathBuf, PathBuf)> {
    let py = common::pythons::primary()?;
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/test-setup-venv.sh");
    let out = Command::new(&script)
        .arg(&target)
        .env("ENVSNAP_TEST_PYTHON", &py.exe)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| (py.exe.clone(), target.join(format!("fixtures/wheelhouse-{}", py.tag()))))
}

fn pip(venv: &Path, wh: &Path, pkgs: &[&str]) {
    let o = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-index",
            "--find-links",
        ])
        .arg(wh)
        .args(pkgs)
        .env_remove("VIRTUAL_ENV")
        .env_remove("PYTHONPATH")
        .output()
        .unwrap();
    assert!(o.status.success(), "pip: {}", String::from_utf8_lossy(&o.stderr));
}

/// Issue 9 (a, b) with a real venv: saved through the remote, restored on a "fresh runner" to
/// another path, it imports its packages; adding one package uploads a small fraction.
#[test]
fn a_real_venv_round_trips_through_the_remote_and_one_more_package_uploads_little() {
    let Some((py, wh)) = python_and_wheelhouse() else {
        pythons::skip(&format!(
            "a CPython 3.9+ with venv and the wheelhouse (.ci/test-setup-venv.sh): {}",
            common::pythons::describe()
        ));
        return;
    };
    for r in Remote::both() {
        let d = tempfile::tempdir().unwrap();
        let venv = d.path().join("proj/.venv");
        let o = Command::new(&py).args(["-m", "venv"]).arg(&venv).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        pip(&venv, &wh, &["pyyaml", "six", "click"]);
        let store = d.path().join("a");
        let first = r.json(&store, &["save", "venv", s(&venv), "--key", "venv-1"]);
        let full_up = first["remote"]["bytes_up"].as_u64().unwrap();
        let dest = d.path().join("elsewhere/.venv");
        let got = r.json(&d.path().join("b"), &["restore", s(&dest), "--key", "venv-1"]);
        assert_eq!(got["hit"], "exact");
        let o = Command::new(dest.join("bin/python"))
            .args(["-c", "import yaml, six, click, sys; print(sys.prefix)"])
            .env_remove("VIRTUAL_ENV")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), dest.to_str().unwrap());
        // Restore → install one package → save from the fresh runner's store: small upload.
        pip(&dest, &wh, &["markupsafe"]);
        let next = r.json(&d.path().join("b"), &["save", "venv", s(&dest), "--key", "venv-2"]);
        let up = next["remote"]["bytes_up"].as_u64().unwrap();
        assert!(
            up * 5 < full_up,
            "{}: one more package uploaded {up} of {full_up}: {next}",
            r.url
        );
        assert!(next["remote"]["requests"].as_u64().unwrap() <= 20, "{next}");
    }
}

/// A tree of `n` incompressible files of `size` bytes (distinct per `seed`).
fn noise_tree(root: &Path, n: usize, size: usize, seed: u64) {
    fs::create_dir_all(root).unwrap();
    let mut x = 0x9E3779B97F4A7C15u64 ^ seed.wrapping_mul(0x2545F4914F6CDD1D);
    for i in 0..n {
        let data: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fs::write(root.join(format!("f{i:03}")), data).unwrap();
    }
}

/// Issue 9 (f): two, then four runners saving the same and different keys into one remote
/// while others restore: every command succeeds, and every key then restores to the content
/// one of its writers saved (last writer wins for a shared key).
#[test]
fn concurrent_runners_save_and_restore_through_one_remote() {
    for r in Remote::all() {
        let d = tempfile::tempdir().unwrap();
        let seed_src = d.path().join("seed");
        noise_tree(&seed_src, 20, 20_000, 99);
        r.json(
            &d.path().join("seed-store"),
            &["save", "dir", s(&seed_src), "--key", "seed"],
        );
        for writers in [2usize, 4] {
            let srcs: Vec<PathBuf> = (0..writers)
                .map(|i| {
                    let p = d.path().join(format!("src-{writers}-{i}"));
                    noise_tree(&p, 20, 20_000, (writers * 10 + i) as u64);
                    p
                })
                .collect();
            let mut kids = Vec::new();
            for (i, src) in srcs.iter().enumerate() {
                // Half the writers share one key.
                let key = if i % 2 == 0 {
                    format!("shared-{writers}")
                } else {
                    format!("own-{writers}-{i}")
                };
                let store = d.path().join(format!("store-{writers}-{i}"));
                kids.push(
                    r.cmd(&store, &["save", "dir", s(src), "--key", &key])
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap(),
                );
            }
            for i in 0..2 {
                let store = d.path().join(format!("reader-{writers}-{i}"));
                let out = d.path().join(format!("read-{writers}-{i}"));
                kids.push(
                    r.cmd(&store, &["restore", s(&out), "--key", "seed"])
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap(),
                );
            }
            wait_all_ok(kids, &r.url);
            for i in 0..2 {
                assert_eq!(
                    describe(&d.path().join(format!("read-{writers}-{i}"))),
                    describe(&seed_src)
                );
            }
            let out = d.path().join(format!("shared-out-{writers}"));
            r.json(
                &d.path().join(format!("check-{writers}")),
                &["restore", s(&out), "--key", &format!("shared-{writers}")],
            );
            let got = describe(&out);
            assert!(
                srcs.iter().step_by(2).any(|src| describe(src) == got),
                "shared key restored a tree no writer saved"
            );
            for (i, src) in srcs.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
                let out = d.path().join(format!("own-out-{writers}-{i}"));
                r.json(
                    &d.path().join(format!("check-{writers}")),
                    &["restore", s(&out), "--key", &format!("own-{writers}-{i}")],
                );
                assert_eq!(describe(&out), describe(src));
            }
        }
        assert_eq!(code(&r.run(&d.path().join("v"), &["verify"])), 0);
    }
}

/// Issue 9 (g): gc --remote deletes unreferenced data only in a later run, after the grace
/// period; a save running beside gc runs keeps its snapshot restorable; live keys survive.
#[test]
fn remote_gc_runs_beside_saves_and_deletes_garbage_only_after_the_grace_period() {
    for r in Remote::both() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("store");
        let (old, new) = (d.path().join("old"), d.path().join("new"));
        noise_tree(&old, 10, 50_000, 1);
        noise_tree(&new, 10, 50_000, 2);
        r.json(&store, &["save", "dir", s(&old), "--key", "k"]);
        // Re-saving k with other content makes the first pack garbage.
        r.json(&store, &["save", "dir", s(&new), "--key", "k"]);
        assert_eq!(r.raw_list("packs/").len(), 2);
        // `--remote URL` (given by r.cmd) makes gc act on the remote.
        let gc = |grace: &str| r.json(&store, &["gc", "--max-age", "30d", "--grace", grace]);
        // Young packs are never marked.
        let g = gc("1h");
        assert_eq!(
            (g["marked_packs"].as_u64(), g["deleted_packs"].as_u64()),
            (Some(0), Some(0)),
            "{g}"
        );
        // With a short grace: the first run marks, a run after the grace deletes.
        std::thread::sleep(Duration::from_millis(2100));
        let g = gc("2s");
        assert_eq!(g["marked_packs"], 1, "{g}");
        assert_eq!(g["deleted_packs"], 0, "{g}");
        assert_eq!(
            r.raw_list("packs/").len(),
            2,
            "marked data is kept until the grace is over"
        );
        // A save during the grace period, of new content, and gc runs beside it.
        let during = d.path().join("during");
        noise_tree(&during, 30, 50_000, 3);
        let saver = r
            .cmd(
                &d.path().join("store2"),
                &["save", "dir", s(&during), "--key", "during"],
            )
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut gcs = Vec::new();
        for _ in 0..3 {
            gcs.push(
                r.cmd(&store, &["gc", "--max-age", "30d", "--grace", "2s"])
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
            std::thread::sleep(Duration::from_millis(150));
        }
        wait_all_ok(vec![saver], "save beside gc");
        wait_all_ok(gcs, "gc beside a save");
        std::thread::sleep(Duration::from_millis(2100));
        let g = gc("2s");
        assert!(g["deleted_packs"].as_u64().unwrap() >= 1, "{g}");
        assert_eq!(code(&r.run(&d.path().join("v"), &["verify"])), 0);
        for (key, src) in [("k", &new), ("during", &during)] {
            let out = d.path().join(format!("out-{key}"));
            r.json(
                &d.path().join(format!("fresh-{key}")),
                &["restore", s(&out), "--key", key],
            );
            assert_eq!(describe(&out), describe(src), "{key} after gc");
        }
    }
}

/// Issue 9 (g): a save killed at any point (while packing, uploading, between index,
/// manifest and ref) never leaves a key naming missing data nor a torn object under its final
/// name, and the next save completes. The kill points spread over a measured whole push, so
/// they land in every phase however fast this machine is; each trial pushes to its own
/// remote prefix so every kill interrupts a whole push. (A file:// remote once wrote objects
/// in place: a kill mid-write left a torn pack index, and verify and restores failed on it.)
#[test]
fn a_save_killed_midway_leaves_the_remote_consistent_and_the_next_save_completes() {
    for mut r in Remote::both() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        noise_tree(&src, 60, 100_000, 7);
        let store = d.path().join("store");
        // Saved locally first, so each push starts at once and the kills land in the upload.
        assert_eq!(code(&envsnap(&store, &["save", "dir", s(&src), "--key", "k"])), 0);
        let base = r.url.clone();
        let push = |r: &Remote| {
            let mut c = r.cmd(&store, &["--json", "push", "k"]);
            c.env("ENVSNAP_REMOTE_PACK_BYTES", "300000");
            c
        };
        r.url = format!("{base}/probe");
        let t0 = Instant::now();
        ok_json(&push(&r).output().unwrap());
        let whole = t0.elapsed();
        const TRIALS: u32 = 12;
        for i in 0..TRIALS {
            r.url = format!("{base}/trial-{i}");
            let at = whole * (2 * i + 1) / (2 * TRIALS);
            let mut child = push(&r).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
            std::thread::sleep(at);
            let _ = child.kill();
            let _ = child.wait();
            // Whatever the remote holds is whole: verify passes.
            let v = r.run(&d.path().join(format!("v{i}")), &["verify"]);
            assert_eq!(code(&v), 0, "after a kill at {at:?} of {whole:?}: {}", stderr(&v));
            // The next push completes, and a fresh runner restores exactly.
            ok_json(&push(&r).output().unwrap());
            let out = d.path().join(format!("out{i}"));
            r.json(&d.path().join(format!("fresh{i}")), &["restore", s(&out), "--key", "k"]);
            assert_eq!(describe(&out), describe(&src), "trial {i}");
        }
    }
}

/// Issue 10 with a remote: the local store is the remote's cache, so a damaged object in it
/// (same size, found by its hash on copy, or by the hardlink guard) is moved to quarantine and
/// fetched again, and the restore still succeeds with exact bytes instead of failing.
#[test]
fn a_damaged_local_object_is_fetched_again_from_the_remote() {
    let r = Remote::file();
    for link in ["copy", "hardlink"] {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        tree(&src);
        let store = d.path().join("store");
        r.json(&store, &["save", "dir", s(&src), "--key", "dmg"]);
        let bad = flip_a_byte(&store);
        let out = d.path().join("out");
        let o = r.run(&store, &["--json", "restore", s(&out), "--key", "dmg", "--link", link]);
        let j = ok_json(&o);
        assert_eq!(j["hit"], "exact", "{link}: {j}");
        assert!(stderr(&o).contains("fetching it from"), "{link}: {}", stderr(&o));
        // Hardlinked files share the store's read-only inodes: compare what a program reads
        // and runs.
        let seen = |p: &Path| -> Vec<_> {
            describe(p)
                .into_iter()
                .map(|(k, a)| (k, a.kind, a.mode & 0o111, a.content, a.target))
                .collect()
        };
        let (a, b) = (seen(&out), seen(&src));
        for (x, y) in a.iter().zip(&b) {
            assert!(x == y, "{link}: {} {:o} vs {} {:o}", x.0, x.2, y.0, y.2);
        }
        assert_eq!(a.len(), b.len());
        let quarantined: Vec<String> = fs::read_dir(store.join("quarantine"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            quarantined.iter().any(|q| q.starts_with(&bad)),
            "{link}: {quarantined:?} {bad}"
        );
        // The damage stays on record until repaired; then the local store is whole again.
        let v = envsnap(&store, &["--json", "--no-remote", "verify"]);
        assert_eq!(code(&v), 2, "{link}: {}", stderr(&v));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&v.stdout).unwrap()["quarantined"]
                .as_array()
                .unwrap()
                .len(),
            1,
            "{link}"
        );
        assert_eq!(code(&envsnap(&store, &["--no-remote", "verify", "--repair"])), 0);
        let v = envsnap(&store, &["--no-remote", "verify"]);
        assert_eq!(code(&v), 0, "{link}: {}", stderr(&v));
        r.json(
            &d.path().join("fresh"),
            &["restore", s(&d.path().join("again")), "--key", "dmg"],
        );
    }
}

/// A snapshot pulled from the remote describes another runner's tree: pulling it used to
/// replace this store's stat cache for the same path with an empty one, so the next save of
/// that path here read every file again.
#[test]
fn pulling_a_snapshot_keeps_the_stat_cache_of_its_source_path() {
    let r = Remote::file();
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    tree(&src);
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    // Past the racy window, so the save's stat cache holds every file.
    std::thread::sleep(Duration::from_millis(1100));
    r.json(&a, &["save", "dir", s(&src), "--key", "mine"]);
    // Another runner saves the same path with one more file.
    fs::write(src.join("pkg/new.txt"), b"new").unwrap();
    r.json(&b, &["save", "dir", s(&src), "--key", "theirs"]);
    fs::remove_file(src.join("pkg/new.txt")).unwrap();
    // This runner restores theirs elsewhere: the pull commits a snapshot whose source is src.
    r.json(&a, &["restore", s(&d.path().join("out")), "--key", "theirs"]);
    let again = r.json(&a, &["save", "dir", s(&src), "--key", "mine"]);
    assert_eq!(again["hashed_files"], 0, "{again}");
}

/// A file:// remote stages writes in `.envsnap-tmp/`; a writer killed mid-object leaves its
/// temp file there, and `gc --remote` removes those older than the grace period (only those:
/// a younger one may be a live writer's).
#[test]
fn remote_gc_removes_temp_files_that_killed_writers_left_on_a_file_remote() {
    let r = Remote::file();
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    noise_tree(&src, 2, 1000, 3);
    let store = d.path().join("store");
    r.json(&store, &["save", "dir", s(&src), "--key", "k"]);
    let tmp = PathBuf::from(r.url.strip_prefix("file://").unwrap()).join(".envsnap-tmp");
    let (old, young) = (tmp.join("index-abc.killed"), tmp.join("pack-def.writing"));
    fs::write(&old, b"half").unwrap();
    fs::write(&young, b"half").unwrap();
    set_mtime(&old, 1_600_000_000, 0);
    let dry = r.json(&store, &["gc", "--grace", "1h", "--dry-run"]);
    assert_eq!(
        (dry["stale_temp_files"].as_u64(), old.exists()),
        (Some(1), true),
        "{dry}"
    );
    let g = r.json(&store, &["gc", "--grace", "1h"]);
    assert_eq!(g["stale_temp_files"], 1, "{g}");
    assert!(!old.exists() && young.exists());
    r.json(
        &d.path().join("fresh"),
        &["restore", s(&d.path().join("out")), "--key", "k"],
    );
}

/// `delete` with a remote drops the key there (every ref, so no older one resurfaces): a
/// fresh runner then misses it; other keys are untouched; a key the remote lacks exits 1.
#[test]
fn delete_with_a_remote_drops_the_key_on_the_remote() {
    let r = Remote::file();
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    noise_tree(&src, 3, 1000, 5);
    let store = d.path().join("store");
    r.json(&store, &["save", "dir", s(&src), "--key", "gone"]);
    fs::write(src.join("more"), b"x").unwrap();
    r.json(&store, &["save", "dir", s(&src), "--key", "gone"]);
    r.json(&store, &["save", "dir", s(&src), "--key", "kept"]);
    assert_eq!(r.raw_list("refs/gone/").len(), 2);
    let out = r.json(&store, &["delete", "gone"]);
    assert_eq!(out["deleted"][0]["key"], "gone", "{out}");
    assert!(r.raw_list("refs/gone/").is_empty());
    let o = r.run(
        &d.path().join("fresh"),
        &["restore", s(&d.path().join("x")), "--key", "gone"],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    r.json(
        &d.path().join("fresh"),
        &["restore", s(&d.path().join("y")), "--key", "kept"],
    );
    assert_eq!(code(&r.run(&store, &["delete", "never-saved"])), 1);
}

/// Issue 13: with a remote, events are small objects under `events/`: two runners (two local
/// stores) sharing the remote see one another's restores and saves in `stats`, nothing goes to
/// the local index, and `gc --remote` folds them into one bundle without changing the numbers.
#[test]
fn two_stores_sharing_a_remote_see_one_anothers_events_and_gc_compacts_them() {
    for r in Remote::both() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let src = d.path().join("src");
        tree(&src);
        let out = |n: &str| d.path().join(n);
        // Runner A misses, installs, saves; runner B hits twice.
        assert_eq!(code(&r.run(&a, &["restore", s(&out("a1")), "--key", "ev-1"])), 1);
        r.json(&a, &["save", "dir", s(&src), "--key", "ev-1"]);
        for n in ["b1", "b2"] {
            assert_eq!(r.json(&b, &["restore", s(&out(n)), "--key", "ev-1"])["hit"], "exact");
        }
        let check = |store: &Path, events: u64| {
            let j = r.json(store, &["stats"]);
            assert_eq!(j["events"], events, "{}: {j}", r.url);
            let g = &j["groups"][0];
            assert_eq!(g["group"], "ev-1", "{}: {j}", r.url);
            let got: Vec<u64> = ["restores", "exact", "misses", "saves", "install_samples"]
                .iter()
                .map(|f| g[f].as_u64().unwrap())
                .collect();
            assert_eq!(got, [events - 1, events - 2, 1, 1, 1], "{}: {j}", r.url);
        };
        check(&a, 4);
        check(&b, 4);
        // Nothing went to the local indexes.
        let local = ok_json(&envsnap(&a, &["--json", "--no-remote", "stats"]));
        assert_eq!(local["events"], 0, "{local}");

        let g = r.json(&a, &["gc"]);
        assert_eq!(g["events"]["compacted"], 4, "{}: {g}", r.url);
        assert_eq!(g["events"]["deleted_objects"], 4, "{g}");
        check(&a, 4);
        assert_eq!(
            r.json(&b, &["restore", s(&out("b3")), "--key", "ev-1", "--force"])["hit"],
            "exact"
        );
        check(&b, 5);
        // `--remote URL` before the command and gc's bare `--remote` after it: the URL stays.
        let g = r.json(&b, &["gc", "--remote"]);
        assert_eq!(g["events"]["compacted"], 1, "{g}");
        check(&a, 5);
        // Nothing left to fold: no new bundle.
        let g = r.json(&b, &["gc"]);
        assert_eq!(
            (g["events"]["compacted"].as_u64(), g["events"]["bundle"].is_null()),
            (Some(0), true),
            "{g}"
        );
    }
}

/// Issue 13: `delete` on a remote: the key stops resolving for every runner at once, fallbacks
/// skip it, a key that is not there exits 1; its data goes only through `gc --remote`'s two
/// phases, and data another key shares survives them.
#[test]
fn delete_on_the_remote_stops_the_key_for_every_runner_and_gc_keeps_shared_data() {
    for r in Remote::both() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, c) = (d.path().join("a"), d.path().join("b"), d.path().join("c"));
        let src = d.path().join("src");
        tree(&src);
        let other = d.path().join("other");
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join("only-here"), vec![9u8; 3000]).unwrap();
        r.json(&a, &["save", "dir", s(&other), "--key", "k-1"]);
        r.json(&a, &["save", "dir", s(&src), "--key", "k-2"]);
        r.json(&a, &["save", "dir", s(&src), "--key", "keep"]); // same content as k-2
        let out = |n: &str| d.path().join(n);
        assert_eq!(r.json(&b, &["restore", s(&out("b1")), "--key", "k-1"])["hit"], "exact");

        let j = r.json(&a, &["delete", "k-2", "--dry-run"]);
        assert_eq!(j["deleted"][0]["key"], "k-2", "{j}");
        assert_eq!(r.json(&b, &["restore", s(&out("b2")), "--key", "k-2"])["hit"], "exact");
        let j = r.json(&a, &["delete", "k-2"]);
        assert_eq!(
            (j["deleted"][0]["key"].as_str(), j["reclaimable_bytes"].is_null()),
            (Some("k-2"), true),
            "{j}"
        );
        assert_eq!(
            code(&r.run(&b, &["restore", s(&out("b3")), "--key", "k-2"])),
            1,
            "{}",
            r.url
        );
        // The fallback skips the deleted (newer) k-2 and finds k-1.
        let j = r.json(&b, &["restore", s(&out("b4")), "--key", "k-9", "--fallback", "k-"]);
        assert_eq!(j["matched_key"], "k-1", "{}: {j}", r.url);
        let o = r.run(&a, &["delete", "k-2"]);
        assert_eq!(code(&o), 1, "{}", stderr(&o));
        assert!(stderr(&o).contains("no snapshot with key k-2"), "{}", stderr(&o));
        let j = r.json(&a, &["delete", "--prefix", "k-"]);
        assert_eq!(j["deleted"].as_array().unwrap().len(), 1, "{j}");
        assert_eq!(
            code(&r.run(&b, &["restore", s(&out("b5")), "--key", "k-9", "--fallback", "k-"])),
            1
        );

        // Two gc runs with no grace: the first marks, the second deletes what no key uses.
        r.json(&a, &["gc", "--grace", "0s"]);
        let g = r.json(&a, &["gc", "--grace", "0s"]);
        assert!(
            g["deleted_packs"].as_u64().unwrap() + g["deleted_manifests"].as_u64().unwrap() >= 1,
            "{}: {g}",
            r.url
        );
        // `keep` shares everything with the deleted k-2: a fresh runner restores it whole.
        let got = out("c1");
        assert_eq!(r.json(&c, &["restore", s(&got), "--key", "keep"])["hit"], "exact");
        assert_eq!(describe(&got), describe(&src), "{}", r.url);
    }
}

/// Issue 13: a restore whose event the remote cannot take (its `events/` prefix is unwritable
/// here: a plain file stands where the directory would be) still succeeds, and says so only
/// under `-v`.
#[test]
fn a_restore_succeeds_when_the_remote_cannot_take_its_event() {
    let r = Remote::file();
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    tree(&src);
    r.json(&d.path().join("a"), &["save", "dir", s(&src), "--key", "k"]);
    let events = PathBuf::from(r.raw_path("events"));
    let _ = fs::remove_dir_all(&events);
    fs::write(&events, b"not a directory").unwrap();
    let quiet = r.run(&d.path().join("b"), &["restore", s(&d.path().join("o1")), "--key", "k"]);
    assert_eq!(code(&quiet), 0, "{}", stderr(&quiet));
    assert!(!stderr(&quiet).contains("warning"), "{}", stderr(&quiet));
    let verbose = r.run(
        &d.path().join("b"),
        &["-v", "restore", s(&d.path().join("o2")), "--key", "k"],
    );
    assert_eq!(code(&verbose), 0, "{}", stderr(&verbose));
    assert!(
        stderr(&verbose).contains("could not record this restore"),
        "{}",
        stderr(&verbose)
    );
    assert_eq!(describe(&d.path().join("o2")), describe(&src));
}

/// The size of every pack on the remote, by path.
fn pack_sizes(r: &Remote) -> std::collections::BTreeMap<String, u64> {
    r.raw_list("packs/")
        .into_iter()
        .map(|p| {
            let n = r.raw_get(&p).len() as u64;
            (p, n)
        })
        .collect()
}

/// Every entry of every index file on the remote: (pack hex, object hex, offset, length),
/// decoded by the format docs/architecture.md gives.
fn index_entries(r: &Remote) -> Vec<(String, String, u64, u64)> {
    let mut out = Vec::new();
    for f in r.raw_list("index/") {
        let raw = zstd::decode_all(&r.raw_get(&f)[..]).unwrap();
        assert_eq!(&raw[..8], b"ESIDX001");
        let u32_at = |i: usize| u32::from_le_bytes(raw[i..i + 4].try_into().unwrap()) as u64;
        let u64_at = |i: usize| u64::from_le_bytes(raw[i..i + 8].try_into().unwrap());
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut at = 12;
        for _ in 0..u32_at(8) {
            let pack = hex(&raw[at..at + 32]);
            let n = u32_at(at + 32);
            at += 36;
            for _ in 0..n {
                out.push((pack.clone(), hex(&raw[at..at + 32]), u64_at(at + 33), u32_at(at + 41)));
                at += 53;
            }
        }
    }
    out
}

/// Key `big` (20 objects) and key `small` (3 of big's objects and 2 of its own), saved in that
/// order, then `big` deleted: big's pack is 85 % garbage. Returns (small's tree, big's pack).
fn mostly_garbage_pack(r: &Remote, d: &Path, store: &Path) -> (PathBuf, String) {
    let (big, small) = (d.join("big"), d.join("small"));
    noise_tree(&big, 20, 50_000, 11);
    noise_tree(&small, 2, 50_000, 12);
    for i in 0..3 {
        fs::copy(big.join(format!("f{i:03}")), small.join(format!("shared{i}"))).unwrap();
    }
    r.json(store, &["save", "dir", s(&big), "--key", "big"]);
    let big_pack = r.raw_list("packs/");
    assert_eq!(big_pack.len(), 1, "{big_pack:?}");
    r.json(store, &["save", "dir", s(&small), "--key", "small"]);
    assert_eq!(r.raw_list("packs/").len(), 2, "small uploads only its own objects");
    r.json(store, &["delete", "big"]);
    (small, big_pack[0].clone())
}

/// Issue 9: `gc --remote` repacks a pack whose live bytes are below `--repack-threshold`: its
/// live objects move into a new pack (dry run: only reported), the old pack is marked and
/// deleted only by a later run after the grace period; the kept key restores exactly on a
/// fresh runner before and after the sweep, verify (also --deep) passes, the remote shrank,
/// and a repacked remote is not repacked again.
#[test]
fn gc_repacks_a_mostly_garbage_pack_and_deletes_it_after_the_grace() {
    for r in Remote::both() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("store");
        let (small, old_pack) = mostly_garbage_pack(&r, d.path(), &store);
        let before = pack_sizes(&r);
        let gc = |extra: &[&str]| {
            let mut a = vec!["gc", "--grace", "0s"];
            a.extend_from_slice(extra);
            r.json(&store, &a)
        };
        let restores = |n: &str| {
            let out = d.path().join(format!("out-{n}"));
            let j = r.json(
                &d.path().join(format!("fresh-{n}")),
                &["restore", s(&out), "--key", "small"],
            );
            assert_eq!(j["hit"], "exact", "{}: {j}", r.url);
            assert_eq!(describe(&out), describe(&small), "{}: {n}", r.url);
        };

        let g = gc(&["--dry-run"]);
        assert_eq!(
            (g["repacked_packs"].as_u64(), g["repack_new_packs"].as_u64()),
            (Some(1), Some(1)),
            "{}: {g}",
            r.url
        );
        assert_eq!(pack_sizes(&r), before, "a dry run writes nothing");
        let g = gc(&["--repack-threshold", "0"]);
        assert_eq!(g["repacked_packs"], 0, "0 disables repacking: {g}");

        let g = gc(&[]);
        assert_eq!(g["repacked_packs"], 1, "{}: {g}", r.url);
        assert_eq!(g["repacked_bytes"], before[&old_pack], "{g}");
        let copied = g["repack_copied_bytes"].as_u64().unwrap();
        assert!(copied >= 3 * 50_000 && copied < before[&old_pack] / 2, "{g}");
        assert_eq!(
            (g["repack_new_packs"].as_u64(), g["deleted_packs"].as_u64()),
            (Some(1), Some(0)),
            "{g}"
        );
        assert!(g["repack_skipped"].as_array().unwrap().is_empty(), "{g}");
        // The old pack is kept through the grace period, but no index names it any more.
        assert!(r.raw_list("packs/").contains(&old_pack), "{}", r.url);
        let old_hex = old_pack.rsplit('/').next().unwrap();
        assert!(index_entries(&r).iter().all(|e| e.0 != old_hex));
        restores("between");

        let g = gc(&[]);
        assert!(g["deleted_packs"].as_u64().unwrap() >= 1, "{}: {g}", r.url);
        assert_eq!(g["repacked_packs"], 0, "a repacked remote is not repacked again: {g}");
        assert_eq!(g["marked_packs"], 0, "a pack deleted now is not marked again: {g}");
        assert!(
            !r.raw_list("packs/").contains(&old_pack),
            "{}: the old pack survived",
            r.url
        );
        restores("after");
        for args in [&["verify"][..], &["verify", "--deep"]] {
            let v = r.run(&d.path().join("v"), args);
            assert_eq!(code(&v), 0, "{}: {args:?}: {}", r.url, stderr(&v));
        }
        let after: u64 = pack_sizes(&r).values().sum();
        let total: u64 = before.values().sum();
        assert!(
            after + 15 * 50_000 <= total,
            "{}: {total} -> {after} bytes of packs",
            r.url
        );
        let g = gc(&[]);
        assert_eq!(
            (g["repacked_packs"].as_u64(), g["marked_packs"].as_u64()),
            (Some(0), Some(0)),
            "{g}"
        );
    }
}

/// A proxy in front of moto that holds every request for a pack until `open` is set.
struct PackGate {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    held: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl PackGate {
    fn start(upstream: u16) -> PackGate {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let open = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (o2, h2) = (open.clone(), held.clone());
        let port = http_proxy(upstream, move |req, _client| {
            let line = String::from_utf8_lossy(req).lines().next().unwrap_or("").to_string();
            if line.contains("/packs/") && !o2.load(Ordering::SeqCst) {
                h2.lock().unwrap().push(line);
                while !o2.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            false
        });
        PackGate { port, open, held }
    }
}

/// Issue 9: a restore that has read the index naming a pack, and reads the pack only after gc
/// repacked it and a second gc (no grace) deleted it, refreshes its index and restores from
/// the new pack. (S3 only: the restore's pack reads are held by a proxy until both gcs ran.)
#[test]
fn a_restore_holding_the_old_index_recovers_after_a_repack_and_sweep() {
    let Some(r) = Remote::s3() else { return };
    let gate = PackGate::start(r.s3_port().unwrap());
    let gated = Remote {
        url: r.url.clone(),
        env: aws_env(&format!("http://127.0.0.1:{}", gate.port)),
        _s3: None,
        _dir: None,
    };
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let (small, old_pack) = mostly_garbage_pack(&r, d.path(), &store);
    let out = d.path().join("out");
    let restore = gated
        .cmd(
            &d.path().join("fresh"),
            &["--json", "restore", s(&out), "--key", "small"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !gate.held.lock().unwrap().iter().any(|l| l.contains(&old_pack)) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the restore never read the old pack"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let g = r.json(&store, &["gc", "--grace", "0s"]);
    assert_eq!(g["repacked_packs"], 1, "{g}");
    let g = r.json(&store, &["gc", "--grace", "0s"]);
    assert!(g["deleted_packs"].as_u64().unwrap() >= 1, "{g}");
    assert!(!r.raw_list("packs/").contains(&old_pack));
    gate.open.store(true, std::sync::atomic::Ordering::SeqCst);
    let o = restore.wait_with_output().unwrap();
    let j = ok_json(&o);
    assert_eq!(j["hit"], "exact", "{j}");
    assert_eq!(describe(&out), describe(&small));
}

/// Issue 9: `verify --deep` downloads every pack, hashes it against its name and every object
/// in it against its id. A byte flipped inside one object's frame (same size, so the structural
/// verify still passes) is reported naming the pack and that object, exit 2; a healthy remote
/// passes with every object checked.
#[test]
fn verify_deep_hashes_every_pack_and_names_a_corrupt_object() {
    for r in Remote::both() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        noise_tree(&src, 5, 20_000, 21);
        r.json(&d.path().join("a"), &["save", "dir", s(&src), "--key", "k"]);
        let v = r.json(&d.path().join("v"), &["verify", "--deep"]);
        assert_eq!(
            (
                v["deep"].as_bool(),
                v["checked_packs"].as_u64(),
                v["checked_objects"].as_u64()
            ),
            (Some(true), Some(1), Some(5)),
            "{}: {v}",
            r.url
        );
        assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");

        let entries = index_entries(&r);
        let (pack, object, offset, len) = entries[2].clone();
        let path = format!("packs/{}/{pack}", &pack[..2]);
        let mut bytes = r.raw_get(&path);
        bytes[(offset + len / 2) as usize] ^= 0x10;
        r.raw_put(&path, &bytes);

        let v = r.run(&d.path().join("v"), &["verify"]);
        assert_eq!(code(&v), 0, "{}: structure is intact: {}", r.url, stderr(&v));
        let v = r.run(&d.path().join("v"), &["--json", "verify", "--deep"]);
        assert_eq!(code(&v), 2, "{}: {}", r.url, stderr(&v));
        let j: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
        let problems: Vec<&str> = j["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert!(
            problems.iter().any(|p| p.contains(&path) && p.contains(&object)),
            "{}: {problems:?}",
            r.url
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains(&path) && p.contains("does not match its name")),
            "{problems:?}"
        );
        assert_eq!(problems.len(), 2, "only the flipped object and its pack: {problems:?}");
        let err = stderr(&v);
        assert!(err.contains("error:") && err.contains(&pack), "{err}");
    }
}
