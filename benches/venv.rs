//! Benchmark with a real ~440 MB virtualenv (numpy, pandas, scipy, sympy and pure-Python
//! packages pinned in benches/venv-requirements.txt), side by side with what
//! `actions/cache` runs: `tar --posix | zstd -T0` and `zstd -d | tar -x`.
//! Restores go to another path, so every restore includes the venv fixups and smoke test.
//!
//! Run: `cargo bench --bench venv` (ENVSNAP_BENCH_RUNS=N, default 3). The interpreter is
//! `$ENVSNAP_BENCH_PYTHON`, else `python3` on PATH, else a discovered CPython 3.10–3.12
//! (benches/common). The wheels are downloaded once by `.ci/test-setup-venv.sh`
//! (ENVSNAP_BENCH=1) and the venv is built once, under target/fixtures/ and target/bench-fixtures/.

mod common;

use common::{median, sh};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn main() {
    // `cargo test --all-targets` also runs harness = false benches, without `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("venv: skipped outside `cargo bench --bench venv`");
        return;
    }
    let runs: usize = std::env::var("ENVSNAP_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let bv = common::setup(&target);
    let venv = bv.venv.clone();
    let work = target.join("bench-work-venv");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let (v, w, b) = (
        venv.display().to_string(),
        work.display().to_string(),
        env!("CARGO_BIN_EXE_envsnap"),
    );
    let size = sh(&format!("du -sb {v} | cut -f1")).trim().parse::<u64>().unwrap_or(0);
    let files = sh(&format!("find {v} -type f | wc -l")).trim().to_string();
    sh(&format!("find {v} -type f -exec cat {{}} + > /dev/null")); // warm page cache for every tool
    eprintln!("venv: {v}: {} MB, {files} files", size / 1_000_000);

    let rm = |p: &str| sh(&format!("rm -rf {w}/{p}"));
    let timed = |cmd: &str| {
        sh("sync");
        let t = Instant::now();
        let out = sh(cmd);
        (t.elapsed().as_secs_f64(), out)
    };
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    let mut fix_share = Vec::new();
    let mut smoke_share = Vec::new();

    let mut save = Vec::new();
    for _ in 0..runs {
        rm("store");
        save.push(timed(&format!("{b} -q --store {w}/store save venv {v} --key k")).0);
    }
    rows.push(("envsnap save venv (cold store)".into(), save));
    let mut resave = Vec::new();
    for _ in 0..runs {
        resave.push(timed(&format!("{b} -q --store {w}/store save venv {v} --key k")).0);
    }
    rows.push(("envsnap save venv (unchanged)".into(), resave));
    let mut tarz = Vec::new();
    for _ in 0..runs {
        tarz.push(
            timed(&format!(
                "tar --posix -cf - -C {v} . | zstd -q -T0 --long=30 -f -o {w}/cache.tzst"
            ))
            .0,
        );
    }
    rows.push(("tar | zstd -T0 (actions/cache save)".into(), tarz));
    for link in ["auto", "copy", "hardlink"] {
        let mut t = Vec::new();
        for _ in 0..runs {
            rm("out");
            let (secs, out) = timed(&format!(
                "{b} -q --json --store {w}/store restore '{w}/out/moved venv' --key k --link {link}"
            ));
            let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            let f = j["fixup_seconds"].as_f64().unwrap_or(0.0);
            let s = j["smoke_seconds"].as_f64().unwrap_or(0.0);
            fix_share.push((link, f / secs));
            smoke_share.push((link, s / secs));
            t.push(secs);
            assert!(Command::new(format!("{w}/out/moved venv/bin/python"))
                .args(["-c", "import numpy, pandas, scipy"])
                .status()
                .unwrap()
                .success());
        }
        rows.push((format!("envsnap restore --link {link} (incl. fixups + smoke test)"), t));
    }
    let mut untar = Vec::new();
    for _ in 0..runs {
        rm("out");
        untar.push(
            timed(&format!(
                "mkdir -p {w}/out && zstd -q -d --long=30 -c {w}/cache.tzst | tar -xf - -C {w}/out"
            ))
            .0,
        );
    }
    rows.push(("zstd -d | tar -x (actions/cache restore)".into(), untar));
    // CI's round on a new runner: the venv is restored where the job keeps it (the path its
    // snapshot was saved from, so no fixups), one package may be added, and it is saved under
    // a new key. The restore seeded the stat cache, so the save reads only what changed.
    let ci = format!("{w}/ci-venv");
    rm("ci-venv");
    sh(&format!("{b} -q --store {w}/store restore {ci} --key k"));
    sh(&format!("{b} -q --store {w}/store save venv {ci} --key k-ci"));
    let mut after = Vec::new();
    for _ in 0..runs {
        rm("ci-venv");
        sh(&format!("{b} -q --store {w}/store restore {ci} --key k-ci"));
        after.push(
            timed(&format!(
                "{b} -q --store {w}/store save venv {ci} --key after-$(date +%s%N)"
            ))
            .0,
        );
    }
    rows.push(("envsnap save venv right after a restore (new key)".into(), after));

    // One package more: only its files are new.
    sh(&format!(
        "{v}/bin/pip install -q --disable-pip-version-check --no-index --find-links {} attrs==24.2.0",
        bv.wheelhouse.display()
    ));
    let out = sh(&format!("{b} -q --json --store {w}/store save venv {v} --key k2"));
    let sp = bv.site_packages().display().to_string();
    let attrs_installed = sh(&format!(
        "find {sp}/attr {sp}/attrs {sp}/attrs-24.2.0.dist-info -type f | wc -l"
    ));
    sh(&format!("{v}/bin/pip uninstall -q -y attrs"));
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let attrs_files = j["new_objects"].as_u64().unwrap_or(0);

    println!(
        "\nvenv: {} MB, {files} files (benches/venv-requirements.txt, CPython {})\n",
        size / 1_000_000,
        bv.python.version
    );
    println!("| operation | median (s) | runs |");
    println!("|---|---:|---|");
    let med: Vec<f64> = rows.iter().map(|r| median(r.1.clone())).collect();
    for (r, m) in rows.iter().zip(&med) {
        let all: Vec<String> = r.1.iter().map(|x| format!("{x:.3}")).collect();
        println!("| {} | {m:.3} | {} |", r.0, all.join(" "));
    }
    println!("\n- cold save / tar|zstd: {:.2}", med[0] / med[2]);
    println!("- restore auto / zstd|tar: {:.2}", med[3] / med[6]);
    println!("- restore copy / zstd|tar: {:.2}", med[4] / med[6]);
    println!("- restore hardlink / zstd|tar: {:.2}", med[5] / med[6]);
    println!("- save right after a restore / tar|zstd save: {:.2}", med[7] / med[2]);
    for link in ["auto", "copy", "hardlink"] {
        let f = median(fix_share.iter().filter(|x| x.0 == link).map(|x| x.1).collect());
        let s = median(smoke_share.iter().filter(|x| x.0 == link).map(|x| x.1).collect());
        println!(
            "- --link {link}: fixups {:.1}% of the restore, smoke test {:.1}%",
            100.0 * f,
            100.0 * s
        );
    }
    println!(
        "- second save with attrs added: {} new objects (attrs installed {} files), {} KB new",
        attrs_files,
        attrs_installed.trim(),
        j["new_bytes"].as_u64().unwrap_or(0) / 1000
    );
    let tz = std::fs::metadata(format!("{w}/cache.tzst"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("- tar.zst size: {} MB", tz / 1_000_000);
    let _ = std::fs::remove_dir_all(&work);
}
