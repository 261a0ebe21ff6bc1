//! apt benchmark: `envsnap restore` of the jq + graphviz + liblapack3 snapshot against
//! `apt-get install` of the same packages with every .deb already in /var/cache/apt/archives
//! (the seed's approach), each in a fresh copy of the minbase chroot; plus `envsnap apt begin`
//! on the chroot and on the host's `/` (an estimate for a full CI runner image).
//!
//! Run as root: `cargo bench --bench apt` (ENVSNAP_BENCH_RUNS=N, default 3). Needs the fixture
//! chroot and .deb cache that `cargo test --test apt` builds under target/fixtures/.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const PKGS: &[&str] = &["jq", "graphviz", "liblapack3"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixtures")
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fresh(tar: &Path, scratch: &Path) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir_in(scratch).unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    ok(Command::new("tar")
        .args(["--xattrs", "-xpf"])
        .arg(tar)
        .arg("-C")
        .arg(&root));
    for e in std::fs::read_dir(fixtures().join("apt-archives")).unwrap().flatten() {
        std::fs::copy(e.path(), root.join("var/cache/apt/archives").join(e.file_name())).unwrap();
    }
    (tmp, root)
}

fn envsnap(store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_envsnap"));
    c.arg("--store").arg(store).arg("--quiet");
    c
}

fn apt_get(root: &Path) -> Command {
    let mut c = Command::new("chroot");
    c.arg(root).args(["apt-get", "install", "-y", "-q"]).args(PKGS);
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

fn sync() {
    let _ = Command::new("sync").status();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn fmt(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ")
}

fn main() {
    // `cargo test --all-targets` also runs harness = false benches, without `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("apt: skipped outside `cargo bench --bench apt`");
        return;
    }
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: the apt benchmark needs root (chroot, dpkg)");
        return;
    }
    let tar = fixtures().join("chroot-bookworm-minbase.tar");
    if !tar.exists() {
        eprintln!("SKIPPED: {} missing: run `cargo test --test apt` first", tar.display());
        return;
    }
    let runs: usize = std::env::var("ENVSNAP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let scratch = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-fixtures/apt");
    std::fs::create_dir_all(&scratch).unwrap();
    let store_dir = tempfile::tempdir_in(&scratch).unwrap();
    let store = store_dir.path();
    let key = "bench-apt";

    // The snapshot (timing begin and save on the way).
    let (_t, root) = fresh(&tar, &scratch);
    let r = root.to_str().unwrap();
    let t = Instant::now();
    ok(envsnap(store).args(["apt", "begin", r]));
    let begin_chroot_first = t.elapsed().as_secs_f64();
    ok(apt_get(&root).stdout(std::process::Stdio::null()));
    let t = Instant::now();
    ok(envsnap(store).args(["save", "apt", r, "--key", key]));
    let save_s = t.elapsed().as_secs_f64();
    drop(_t);

    let (mut apt, mut rest) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (_a, ra) = fresh(&tar, &scratch);
        sync();
        let t = Instant::now();
        ok(apt_get(&ra).stdout(std::process::Stdio::null()));
        apt.push(t.elapsed().as_secs_f64());
        drop(_a);
        let (_b, rb) = fresh(&tar, &scratch);
        sync();
        let t = Instant::now();
        ok(envsnap(store).args(["restore", rb.to_str().unwrap(), "--key", key]));
        rest.push(t.elapsed().as_secs_f64());
        ok(Command::new("chroot").arg(&rb).args(["jq", "--version"]));
    }

    let (mut bc, mut bh) = (Vec::new(), Vec::new());
    let (_c, rc) = fresh(&tar, &scratch);
    for _ in 0..runs {
        let t = Instant::now();
        ok(envsnap(store).args(["apt", "begin", rc.to_str().unwrap()]));
        bc.push(t.elapsed().as_secs_f64());
    }
    let entries = |root: &str| -> String {
        let j = ok(Command::new(env!("CARGO_BIN_EXE_envsnap"))
            .arg("--store")
            .arg(store)
            .args(["--json", "apt", "begin", root]));
        let v: serde_json::Value = serde_json::from_str(j.trim()).unwrap_or_default();
        format!("{} paths, {} packages", v["entries"], v["packages"])
    };
    for _ in 0..runs {
        let t = Instant::now();
        ok(envsnap(store).args(["apt", "begin", "/"]));
        bh.push(t.elapsed().as_secs_f64());
    }
    let (ma, mr) = (median(&mut apt.clone()), median(&mut rest.clone()));
    println!("## apt benchmark ({runs} runs, medians; seconds)");
    println!("| what | median | runs |");
    println!("|---|---|---|");
    println!(
        "| apt-get install {} (.debs cached) | {ma:.2} | {} |",
        PKGS.join(" "),
        fmt(&apt)
    );
    println!("| envsnap restore (apt snapshot) | {mr:.2} | {} |", fmt(&rest));
    println!("| speed-up | {:.1}x | |", ma / mr);
    println!("| envsnap apt begin, first (chroot) | {begin_chroot_first:.2} | |");
    println!("| envsnap save apt (chroot) | {save_s:.2} | |");
    println!(
        "| envsnap apt begin (chroot: {}) | {:.3} | {} |",
        entries(rc.to_str().unwrap()),
        median(&mut bc),
        fmt(&bc)
    );
    println!(
        "| envsnap apt begin (host /: {}) | {:.3} | {} |",
        entries("/"),
        median(&mut bh),
        fmt(&bh)
    );
}
