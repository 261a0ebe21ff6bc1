//! `{hash}` throughput: `envsnap key '{hash:**}'` over a 10k-file / ~1 GiB workspace on a warm
//! page cache, against `{hashFiles:**}` and the shell pipelines people use instead.
//!
//! Run: `cargo bench --bench keyhash` (prints a table; figures go in docs/benchmarks.md, ## Keys).
//! The workspace is generated once under `target/keyhash-bench/` and reused.
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const FILES: u64 = 10_000;
const DIRS: u64 = 100;
const RUNS: usize = 5;

/// Builds a fresh command for each timed run.
type MakeCmd = Box<dyn FnMut() -> Command>;

/// Sizes vary between 50 KiB and 150 KiB (mean ~100 KiB, ~1 GiB in total), so the workload is
/// neither all-tiny nor one big file.
fn size_of(i: u64) -> u64 {
    52_428 + (i * 7_919) % 104_857
}

fn workspace() -> (PathBuf, u64) {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/keyhash-bench");
    let ws = base.join("ws");
    let marker = base.join(".complete-v1");
    let total: u64 = (0..FILES).map(size_of).sum();
    if marker.exists() {
        return (ws, total);
    }
    eprintln!(
        "generating {FILES} files ({:.2} GB) under {}",
        total as f64 / 1e9,
        ws.display()
    );
    let _ = fs::remove_dir_all(&ws);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = Vec::new();
    for i in 0..FILES {
        let dir = ws.join(format!("pkg{:03}/sub{}", i % DIRS, i % 7));
        fs::create_dir_all(&dir).unwrap();
        buf.clear();
        // xorshift64: incompressible content without a rand dependency.
        while (buf.len() as u64) < size_of(i) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            buf.extend_from_slice(&state.to_le_bytes());
        }
        buf.truncate(size_of(i) as usize);
        fs::File::create(dir.join(format!("f{i:05}.dat")))
            .unwrap()
            .write_all(&buf)
            .unwrap();
    }
    fs::write(&marker, "").unwrap();
    (ws, total)
}

fn warm(dir: &Path) {
    let mut buf = vec![0u8; 1 << 20];
    for e in walkdir::WalkDir::new(dir) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let mut f = fs::File::open(e.path()).unwrap();
            while f.read(&mut buf).unwrap() > 0 {}
        }
    }
}

fn median_secs(mut cmd: impl FnMut() -> Command) -> (f64, String) {
    let mut times = Vec::new();
    let mut out = String::new();
    for _ in 0..RUNS {
        let mut c = cmd();
        let t = Instant::now();
        let o = c.output().expect("run benchmark command");
        times.push(t.elapsed().as_secs_f64());
        assert!(o.status.success(), "{:?}: {}", c, String::from_utf8_lossy(&o.stderr));
        out = String::from_utf8_lossy(&o.stdout).trim().chars().take(40).collect();
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (times[RUNS / 2], out)
}

fn main() {
    // `cargo test --all-targets` also runs harness = false benches, without `--bench`: don't
    // generate a gigabyte there.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("keyhash: skipped outside `cargo bench --bench keyhash`");
        return;
    }
    let (ws, total) = workspace();
    warm(&ws);
    let exe = env!("CARGO_BIN_EXE_envsnap");
    let gb = total as f64 / 1e9;
    println!(
        "workspace: {FILES} files, {gb:.3} GB, {} CPUs; median of {RUNS} runs, warm page cache",
        num_cpus()
    );
    println!("{:<58} {:>8} {:>8}", "command", "seconds", "GB/s");
    let envsnap_key = |tpl: &'static str| {
        let ws = ws.clone();
        move || {
            let mut c = Command::new(exe);
            c.args(["key", "--root"]).arg(&ws).arg(tpl);
            c
        }
    };
    let shell = |script: &'static str| {
        let ws = ws.clone();
        move || {
            let mut c = Command::new("sh");
            c.arg("-c").arg(script).current_dir(&ws);
            c
        }
    };
    let mut rows: Vec<(&str, MakeCmd)> = vec![
        ("envsnap key '{hash:**}'", Box::new(envsnap_key("{hash:**}"))),
        ("envsnap key '{hashFiles:**}'", Box::new(envsnap_key("{hashFiles:**}"))),
        (
            "find . -type f | sort | xargs sha256sum | sha256sum",
            Box::new(shell("find . -type f | sort | xargs sha256sum | sha256sum")),
        ),
        (
            "find . -type f | xargs -P2 -n500 sha256sum | sort | sha256sum",
            Box::new(shell("find . -type f | xargs -P2 -n500 sha256sum | sort | sha256sum")),
        ),
    ];
    if Command::new("b3sum").arg("--version").output().is_ok() {
        rows.push((
            "find . -type f | sort | xargs b3sum | b3sum",
            Box::new(shell("find . -type f | sort | xargs b3sum | b3sum")),
        ));
    }
    for (name, cmd) in rows.iter_mut() {
        let (s, _) = median_secs(cmd);
        println!("{name:<58} {s:>8.3} {:>8.2}", gb / s);
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
