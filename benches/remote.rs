//! Remote-store benchmark with the real benchmark venv (benches/venv-requirements.txt), side by
//! side in one run against one moto S3 server on loopback, with what the S3 forks of
//! actions/cache do: `tar | zstd` uploaded as one object, and on a fresh runner downloaded with
//! 8 parallel ranged GETs, then `zstd -d | tar -x`.
//!
//! Run: `cargo bench --bench remote` (ENVSNAP_BENCH_RUNS=N, default 3). Fixtures as for
//! benches/venv.rs (the same discovered interpreter, `$ENVSNAP_BENCH_PYTHON` to choose it), plus
//! moto from `.ci/test-setup-moto.sh`.
//!
//! The cold upload is measured again through a link of a given speed (benches/common/link.rs;
//! `ENVSNAP_BENCH_LINK_MBIT`, default `1000,500`, empty for none): on loopback moto and envsnap
//! share this machine's cores, so the unlimited figure measures CPU alone.

mod common;
#[path = "common/link.rs"]
mod link;

use common::{median, sh};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// moto serves anonymous GETs of private objects with 403; it checks no signatures, so a
/// request naming an access key is enough (the real S3 actions sign theirs).
const FAKE_AUTH: &str =
    "Authorization: AWS4-HMAC-SHA256 Credential=b/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\n";

fn http(port: u16, method: &str, path: &str, extra: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n{extra}{FAKE_AUTH}Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let at = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let status = String::from_utf8_lossy(&resp[..at])
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, resp[at..].to_vec())
}

/// What the S3 cache actions do on a fresh runner: 8 parallel ranged GETs of the archive into
/// a file, then `zstd -d | tar -x`.
fn download_ranged(port: u16, path: &str, size: u64, dest: &Path) {
    let part = size.div_ceil(8);
    let chunks: Vec<Vec<u8>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8u64)
            .map(|i| {
                s.spawn(move || {
                    let (a, b) = (i * part, ((i + 1) * part).min(size));
                    if a >= b {
                        return Vec::new();
                    }
                    let (st, body) = http(port, "GET", path, &format!("Range: bytes={a}-{}\r\n", b - 1), b"");
                    assert_eq!(st, 206);
                    body
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut f = std::fs::File::create(dest).unwrap();
    for c in chunks {
        f.write_all(&c).unwrap();
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("remote: skipped outside `cargo bench --bench remote`");
        return;
    }
    let runs: usize = std::env::var("ENVSNAP_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target");
    let moto = sh(&format!(
        "{}/.ci/test-setup-moto.sh {}",
        root.display(),
        target.display()
    ));
    let bv = common::setup(&target);
    let venv = bv.venv.clone();
    // A new directory per invocation; old ones are deleted only after the measurements (see
    // the note on ext4 and recently deleted inodes below).
    let work = target.join(format!("bench-work-remote-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let (v, w, b) = (
        venv.display().to_string(),
        work.display().to_string(),
        env!("CARGO_BIN_EXE_envsnap"),
    );
    let size = sh(&format!("du -sb {v} | cut -f1")).trim().parse::<u64>().unwrap_or(0);
    let files = sh(&format!("find {v} -type f | wc -l")).trim().to_string();
    sh(&format!("find {v} -type f -exec cat {{}} + > /dev/null"));
    eprintln!("remote: {v}: {} MB, {files} files", size / 1_000_000);

    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(moto.trim())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _moto = Moto(child);
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(60), "moto did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http(port, "PUT", "/bench", "", b"").0, 200);
    let env_for = |port: u16| {
        format!(
            "AWS_ACCESS_KEY_ID=b AWS_SECRET_ACCESS_KEY=b AWS_REGION=us-east-1 AWS_ENDPOINT_URL=http://127.0.0.1:{port} \
             AWS_EC2_METADATA_DISABLED=true"
        )
    };
    let env = env_for(port);
    let es = |store: &str, args: &str| -> serde_json::Value {
        let out = sh(&format!(
            "{env} {b} --store {w}/{store} --remote s3://bench/r{store} --json {args}"
        ));
        serde_json::from_str(out.trim()).unwrap()
    };

    // The archive the S3 cache actions would store.
    sh(&format!(
        "tar -C {v}/.. --posix -cf - .venv | zstd -T0 -q -o {w}/venv.tar.zst"
    ));
    let tar_bytes = std::fs::metadata(format!("{w}/venv.tar.zst")).unwrap().len();
    let archive = std::fs::read(format!("{w}/venv.tar.zst")).unwrap();

    let (mut up_tar, mut up_es, mut down_tar, mut down_es, mut down_req) = (vec![], vec![], vec![], vec![], vec![]);
    // The whole cold save as a job runs it: envsnap's save with a remote and an empty local
    // store (hash, store, compress, upload) vs `tar | zstd -T0` then one PUT.
    let (mut save_es, mut save_tar) = (vec![], vec![]);
    let mut incr = serde_json::Value::Null;
    let mut unchanged = serde_json::Value::Null;
    let mut cold = serde_json::Value::Null;
    for run in 0..runs {
        // Cold save: a fresh remote prefix per run; the local store already holds the objects
        // (saved once without a remote), so this measures the upload.
        let store = format!("s{run}");
        sh(&format!("{b} --store {w}/{store} save venv {v} --key venv -q"));
        let t = Instant::now();
        cold = es(&store, "push venv");
        up_es.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        assert_eq!(
            http(port, "PUT", &format!("/bench/tar{run}/venv.tar.zst"), "", &archive).0,
            200
        );
        up_tar.push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        es(&format!("c{run}"), &format!("save venv {v} --key venv"));
        save_es.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        sh(&format!(
            "tar -C {v}/.. --posix -cf - .venv | zstd -T0 -q -f -o {w}/cold.tar.zst"
        ));
        let cold_archive = std::fs::read(format!("{w}/cold.tar.zst")).unwrap();
        assert_eq!(
            http(
                port,
                "PUT",
                &format!("/bench/cold{run}/venv.tar.zst"),
                "",
                &cold_archive
            )
            .0,
            200
        );
        save_tar.push(t.elapsed().as_secs_f64());

        // Fresh runner: empty local store, restore to another path.
        sh(&format!(
            // Nothing is deleted between runs: ext4 walks recently deleted inodes on every
            // file it creates for seconds after a large `rm -rf`, which slowed whichever side
            // ran next several-fold. Each run gets its own directories, as a fresh runner has.
            "mkdir -p {w}/out-tar{run} && sync"
        ));
        let t = Instant::now();
        let r = serde_json::from_str::<serde_json::Value>(
            sh(&format!(
                "{env} {b} --store {w}/fresh{run} --remote s3://bench/r{store} --json restore {w}/out{run}/.venv --key venv"
            ))
            .trim(),
        )
        .unwrap();
        down_es.push(t.elapsed().as_secs_f64());
        down_req.push(r["remote"]["requests"].as_f64().unwrap());
        let t = Instant::now();
        download_ranged(
            port,
            &format!("/bench/tar{run}/venv.tar.zst"),
            tar_bytes,
            &work.join("dl.tar.zst"),
        );
        sh(&format!("zstd -d -q -c {w}/dl.tar.zst | tar -C {w}/out-tar{run} -xf -"));
        down_tar.push(t.elapsed().as_secs_f64());

        // Restore → install one package → save, from the fresh runner's store.
        sh(&format!(
            "{w}/out{run}/.venv/bin/pip install -q --disable-pip-version-check --no-index --find-links {} attrs==24.2.0",
            bv.wheelhouse.display()
        ));
        incr = serde_json::from_str(
            sh(&format!(
                "{env} {b} --store {w}/fresh{run} --remote s3://bench/r{store} --json save venv {w}/out{run}/.venv --key venv"
            ))
            .trim(),
        )
        .unwrap();
        unchanged = serde_json::from_str(
            sh(&format!(
                "{env} {b} --store {w}/fresh{run} --remote s3://bench/r{store} --json save venv {w}/out{run}/.venv --key venv"
            ))
            .trim(),
        )
        .unwrap();
    }
    // The cold upload through a link of a given speed, both sides through the same proxy.
    let mut links = Vec::new();
    let rates = std::env::var("ENVSNAP_BENCH_LINK_MBIT").unwrap_or_else(|_| "1000,500".into());
    for mbit in rates.split(',').filter_map(|r| r.trim().parse::<f64>().ok()) {
        let lport = link::start(port, mbit);
        let (mut es_t, mut tar_t) = (vec![], vec![]);
        for run in 0..runs {
            let t = Instant::now();
            sh(&format!(
                "{} {b} --store {w}/s{run} --remote s3://bench/l{mbit}-{run} -q push venv",
                env_for(lport)
            ));
            es_t.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            assert_eq!(
                http(
                    lport,
                    "PUT",
                    &format!("/bench/ltar{mbit}-{run}/venv.tar.zst"),
                    "",
                    &archive
                )
                .0,
                200
            );
            tar_t.push(t.elapsed().as_secs_f64());
        }
        links.push((mbit, median(es_t), median(tar_t)));
    }
    let (ut, ue, dt, de) = (median(up_tar), median(up_es), median(down_tar), median(down_es));
    println!(
        "venv: {} MB, {files} files; tar.zst {:.1} MB; {runs} runs, medians",
        size / 1_000_000,
        tar_bytes as f64 / 1e6
    );
    println!("fresh-runner restore: envsnap {de:.2}s vs ranged tar.zst download + extract {dt:.2}s = {:.2}x; envsnap requests {}", de / dt, median(down_req));
    println!(
        "cold upload: envsnap push {ue:.2}s vs tar.zst PUT {ut:.2}s = {:.2}x; {} packs, {:.1} MB up",
        ue / ut,
        cold["pushed"][0]["packs"],
        cold["remote"]["bytes_up"].as_f64().unwrap() / 1e6
    );
    for (mbit, e, t) in links {
        println!(
            "cold upload through a {mbit} Mbit/s link: envsnap push {e:.2}s vs tar.zst PUT {t:.2}s = {:.2}x",
            e / t
        );
    }
    let (se, stz) = (median(save_es), median(save_tar));
    println!(
        "cold save end to end: envsnap save with a remote {se:.2}s vs tar | zstd -T0 + PUT {stz:.2}s = {:.2}x",
        se / stz
    );
    let iu = incr["remote"]["bytes_up"].as_u64().unwrap();
    println!(
        "save after one more package: {:.1} KB up = {:.2}% of the tar.zst, {} requests",
        iu as f64 / 1e3,
        iu as f64 * 100.0 / tar_bytes as f64,
        incr["remote"]["requests"]
    );
    println!(
        "unchanged re-save: {} packs, {} requests, {:.1} KB up",
        unchanged["remote"]["pushed"]["packs"],
        unchanged["remote"]["requests"],
        unchanged["remote"]["bytes_up"].as_f64().unwrap() / 1e3
    );
    for e in std::fs::read_dir(&target).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("bench-work-remote") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
