//! End-to-end benchmark of the core, side by side in one run with what users run instead:
//! `tar --posix | zstd -T0 --long=30` and `zstd -d | tar -x` (what actions/cache runs) and
//! `cp -al`, a save right after a restore (CI's round), and a save of the same content under a
//! new key right after the cold save.
//! Run: `cargo bench --bench e2e` (ENVSNAP_BENCH_RUNS=N for more runs, default 5).
//!
//! The tree has the shape of a real data-science venv: ~10k files, ~300 MB, median file ~6 KB,
//! a few files over 10 MB, half of the bytes compressible text, half random. It is generated
//! once, deterministically, under target/bench-fixtures/. Page cache is warm for every tool.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_envsnap")
}

/// xorshift: deterministic, fast, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn generate(root: &Path) {
    if root.join(".complete").exists() {
        return;
    }
    let _ = std::fs::remove_dir_all(root);
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let words = b"import numpy def class return self value array index frame series dtype ";
    let mut total = 0u64;
    for i in 0..10_000u64 {
        let dir = root.join(format!("pkg{}/sub{}", i % 40, (i / 40) % 25));
        std::fs::create_dir_all(&dir).unwrap();
        // Log-normal-ish sizes: median ~6 KB, long tail.
        let r = (rng.next() % 1000) as f64 / 1000.0;
        let mut size = (6000.0 * (4.0 * (r - 0.5)).exp()) as usize;
        if i % 1000 == 7 {
            size = 12_000_000 + (rng.next() % 13_000_000) as usize; // a few > 10 MB
        }
        let mut buf = Vec::with_capacity(size);
        if i % 2 == 0 {
            while buf.len() < size {
                let w = (rng.next() % 60) as usize;
                buf.extend_from_slice(&words[w..(w + 12).min(words.len())]);
            }
            buf.truncate(size);
        } else {
            while buf.len() < size {
                buf.extend_from_slice(&rng.next().to_le_bytes());
            }
            buf.truncate(size);
        }
        total += size as u64;
        let name = if i % 3 == 0 {
            format!("m{i}.py")
        } else {
            format!("f{i}.so")
        };
        std::fs::write(dir.join(name), &buf).unwrap();
    }
    eprintln!("generated {} files, {} MB", 10_000, total / 1_000_000);
    std::fs::write(root.join(".complete"), b"").unwrap();
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

fn time(prep: impl Fn(), cmd: &str) -> f64 {
    prep();
    sh("sync");
    let t = Instant::now();
    sh(cmd);
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // `cargo test --all-targets` also runs harness = false benches, without `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("e2e: skipped outside `cargo bench --bench e2e`");
        return;
    }
    let runs: usize = std::env::var("ENVSNAP_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let fix = target.join("bench-fixtures");
    let tree = fix.join("tree");
    generate(&tree);
    let work = target.join("bench-work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let (t, w) = (tree.display().to_string(), work.display().to_string());
    sh(&format!("cat $(find {t} -type f) > /dev/null")); // warm the page cache
    let rm = |p: &str| {
        let p = format!("{w}/{p}");
        move || {
            let _ = Command::new("rm").args(["-rf", &p]).status();
        }
    };
    let nothing = || {};
    let b = bin();

    let mut rows: Vec<(&str, String, Vec<f64>)> = Vec::new();
    let mut add = |name: &'static str, cmd: String, prep: &dyn Fn()| {
        let v: Vec<f64> = (0..runs).map(|_| time(prep, &cmd)).collect();
        rows.push((name, cmd, v));
    };
    add(
        "envsnap save (cold store)",
        format!("{b} -q --store {w}/store save dir {t} --key k"),
        &rm("store"),
    );
    add(
        "envsnap save (unchanged)",
        format!("{b} -q --store {w}/store save dir {t} --key k"),
        &nothing,
    );
    add(
        "tar | zstd -T0 (actions/cache save)",
        format!("tar --posix -cf - -C {t} . | zstd -q -T0 --long=30 -f -o {w}/cache.tzst"),
        &nothing,
    );
    add(
        "envsnap restore --link auto",
        format!("{b} -q --store {w}/store restore {w}/out --key k"),
        &rm("out"),
    );
    add(
        "envsnap restore --link copy",
        format!("{b} -q --store {w}/store restore {w}/out --key k --link copy"),
        &rm("out"),
    );
    add(
        "zstd -d | tar -x (actions/cache restore)",
        format!("mkdir -p {w}/out && zstd -q -d --long=30 -c {w}/cache.tzst | tar -xf - -C {w}/out"),
        &rm("out"),
    );
    add(
        "envsnap restore --link hardlink",
        format!("{b} -q --store {w}/store restore {w}/out --key k --link hardlink"),
        &rm("out"),
    );
    add("cp -al", format!("cp -al {t} {w}/out"), &rm("out"));
    // CI's round: restore on a new runner, then save under a new key. The restore seeded the
    // stat cache, so the save reads nothing; it commits a new snapshot.
    let restored = {
        let (b, w) = (b.to_string(), w.clone());
        move || {
            let _ = Command::new("rm").args(["-rf", &format!("{w}/out")]).status();
            sh(&format!("{b} -q --store {w}/store restore {w}/out --key k"));
        }
    };
    add(
        "envsnap save after restore (new key)",
        format!("{b} -q --store {w}/store save dir {w}/out --key after-$(date +%s%N)"),
        &restored,
    );
    // Identical content under a new key right after the cold save (CI's common case: the
    // requirements hash changed, the tree did not): it shares the cold save's manifest, so it
    // should cost what an unchanged same-key re-save costs.
    let cold = {
        let (b, w, t) = (b.to_string(), w.clone(), t.clone());
        move || {
            let _ = Command::new("rm").args(["-rf", &format!("{w}/store")]).status();
            sh(&format!("{b} -q --store {w}/store save dir {t} --key k"));
        }
    };
    add(
        "envsnap save (new key, same content, right after the cold save)",
        format!("{b} -q --store {w}/store save dir {t} --key k-new"),
        &cold,
    );

    let med: Vec<f64> = rows.iter().map(|r| median(r.2.clone())).collect();
    println!("\n| operation | median (s) | runs |");
    println!("|---|---:|---|");
    for (r, m) in rows.iter().zip(&med) {
        let all: Vec<String> = r.2.iter().map(|x| format!("{x:.3}")).collect();
        println!("| {} | {m:.3} | {} |", r.0, all.join(" "));
    }
    println!("\nratios (medians):");
    println!("- cold save / tar|zstd save: {:.2}", med[0] / med[2]);
    println!("- unchanged re-save / cold save: {:.1}%", 100.0 * med[1] / med[0]);
    println!("- restore auto / zstd|tar restore: {:.2}", med[3] / med[5]);
    println!("- restore copy / zstd|tar restore: {:.2}", med[4] / med[5]);
    println!("- restore hardlink / cp -al: {:.2}", med[6] / med[7]);
    println!("- save after restore / tar|zstd save: {:.2}", med[8] / med[2]);
    println!(
        "- new-key save of the same content / cold save: {:.1}%",
        100.0 * med[9] / med[0]
    );
    let size = std::fs::metadata(format!("{w}/cache.tzst"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("- tar.zst size: {} MB", size / 1_000_000);
    let _ = std::fs::remove_dir_all(&work);
}
