//! Shared helpers for the integration tests: run the real binary, describe a tree exactly.
#![allow(dead_code)]

pub mod pythons;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_envsnap"))
}

/// `envsnap --store STORE ARGS…` with a clean environment for GitHub outputs.
pub fn envsnap(store: &Path, args: &[&str]) -> Output {
    envsnap_env(store, args, &[])
}

pub fn envsnap_env(store: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.arg("--store")
        .arg(store)
        .args(args)
        .env_remove("GITHUB_OUTPUT")
        .env_remove("ENVSNAP_STORE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run envsnap")
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert success and return the parsed `--json` object.
pub fn ok_json(o: &Output) -> serde_json::Value {
    assert_eq!(code(o), 0, "envsnap failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("bad JSON {e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// `envsnap --json save dir SRC --key KEY`, asserting success; the parsed JSON.
pub fn save_dir(store: &Path, src: &str, key: &str) -> serde_json::Value {
    ok_json(&envsnap(store, &["--json", "save", "dir", src, "--key", key]))
}

/// Start `envsnap --store STORE save dir SRC --key KEY` in the background (concurrency tests).
pub fn spawn_save(store: &Path, src: &Path, key: &str) -> std::process::Child {
    Command::new(bin())
        .arg("--store")
        .arg(store)
        .args(["save", "dir"])
        .arg(src)
        .args(["--key", key])
        .env_remove("ENVSNAP_STORE")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start envsnap")
}

/// Wait for every child and assert each succeeded; `what` names the batch in a failure.
pub fn wait_all_ok(children: Vec<std::process::Child>, what: &str) {
    for c in children {
        let o = c.wait_with_output().expect("wait for envsnap");
        assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

/// `envsnap --json restore DEST ARGS…`, asserting success; the parsed JSON.
pub fn restore_json(store: &Path, dest: &str, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json", "restore", dest];
    a.extend_from_slice(args);
    ok_json(&envsnap(store, &a))
}

/// Everything a restore must reproduce about one path.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Attr {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub content: Option<Vec<u8>>,
    pub target: Option<PathBuf>,
    /// Index of the first path sharing this inode (hard links within the tree).
    pub link_group: Option<String>,
}

/// Describe a tree. `with_dir_mtimes`: directories' mtimes too.
pub fn describe(root: &Path) -> BTreeMap<String, Attr> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else {
            "file"
        };
        let link_group = if ft.is_file() && m.nlink() > 1 {
            Some(inodes.entry((m.dev(), m.ino())).or_insert_with(|| rel.clone()).clone())
        } else {
            None
        };
        out.insert(
            rel,
            Attr {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                content: ft.is_file().then(|| std::fs::read(e.path()).unwrap()),
                target: ft.is_symlink().then(|| std::fs::read_link(e.path()).unwrap()),
                link_group,
            },
        );
    }
    out
}

pub fn set_mtime(p: &Path, secs: i64, nanos: u32) {
    let t = filetime::FileTime::from_unix_time(secs, nanos);
    if std::fs::symlink_metadata(p).unwrap().file_type().is_symlink() {
        filetime::set_symlink_file_times(p, t, t).unwrap();
    } else {
        filetime::set_file_times(p, t, t).unwrap();
    }
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A tmpfs mounted for the length of a test (root only).
pub struct Mount(pub std::path::PathBuf);

impl Mount {
    pub fn tmpfs(at: &Path, opts: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs at {}", at.display());
        Mount(at.to_path_buf())
    }

    pub fn remount(&self, opts: &str) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

pub use pythons::skip;

/// True as root; else a `SKIP: … needs root` line ([`skip`]: a failure where root tests are
/// required).
pub fn require_root(why: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(&format!("{why} needs root"));
    false
}

/// Fill the filesystem holding `dir` to the last byte (a file `dir/filler`).
pub fn fill_up(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![0u8; 64 << 10];
    let mut n = block.len();
    // Ever smaller writes until not a byte more fits.
    while n > 0 {
        if f.write_all(&block[..n]).is_err() {
            n /= 2;
        }
    }
    let _ = f.sync_all();
}

/// The pid of a process that has exited (for leftovers "of a killed restore").
pub fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// Flip one byte in the store's largest object (same size: only a hash finds it); its
/// "<2 hex>/<rest>" name.
pub fn flip_a_byte(store: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let mut objs: Vec<_> = walkdir::WalkDir::new(store.join("objects-v1"))
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .collect();
    objs.sort_by_key(|e| e.metadata().unwrap().len());
    let p = objs.last().unwrap().path().to_path_buf();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut b = std::fs::read(&p).unwrap();
    b[1000] ^= 0x01;
    std::fs::write(&p, b).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
    p.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned() + &p.file_name().unwrap().to_string_lossy()
}

/// Run `.ci/SCRIPT TARGET_DIR`, a fixture setup script that installs (and caches under
/// target/fixtures) what some tests need and prints its path. `None` after a visible skip when
/// it fails here (offline, no toolchain); with ENVSNAP_REQUIRE_ROOT_TESTS=1 (CI) a failure.
pub fn setup_fixture(script: &str) -> Option<PathBuf> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci").join(script);
    let out = Command::new(&script)
        .arg(&target)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    if out.status.success() {
        return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    pythons::skip(&format!(
        "{} failed (package registry unreachable?):\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    ));
    None
}

/// Commit `row` with manifest `m` straight into an index, behind envsnap's back: how the tests
/// plant crafted (hostile) snapshots.
pub fn plant_snapshot(
    idx: &mut envsnap::index::Index,
    row: &envsnap::index::SnapshotRow,
    m: &envsnap::snapshot::Manifest,
) {
    idx.commit_snapshot(envsnap::index::NewSnapshot {
        row,
        manifest: m,
        statcache: &Default::default(),
        keep_statcache: false,
        objects: &[],
    })
    .unwrap();
}
