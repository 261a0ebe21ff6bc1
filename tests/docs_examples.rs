//! Every CI example in README.md and docs/*.md runs as written: on a first run (a miss, the
//! store empty) and on the second (a hit), with the real binary against a temp store, and
//! passes its platform's schema. tests/ci/run_examples.py extracts the ```yaml blocks and runs
//! their shell steps the way GitHub Actions, GitLab CI and CircleCI run them.
//!
//! Needs the dist-tools venv (`.ci/test-setup-dist.sh`: check-jsonschema, ruamel.yaml).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tools() -> Option<PathBuf> {
    common::setup_fixture("test-setup-dist.sh")
}

fn docs() -> Vec<PathBuf> {
    let mut v = vec![repo().join("README.md")];
    let mut d: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    d.sort();
    v.extend(d);
    v
}

#[derive(Debug)]
struct Example {
    file: PathBuf,
    index: u64,
    line: u64,
    platform: String,
    text: String,
}

impl Example {
    fn name(&self) -> String {
        format!(
            "{}:{} ({})",
            self.file.strip_prefix(repo()).unwrap().display(),
            self.line,
            self.platform
        )
    }
}

fn examples(py: &Path) -> Vec<Example> {
    let out = Command::new(py)
        .arg(repo().join("tests/ci/run_examples.py"))
        .arg("list")
        .args(docs())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Example {
                file: PathBuf::from(v["file"].as_str().unwrap()),
                index: v["index"].as_u64().unwrap(),
                line: v["line"].as_u64().unwrap(),
                platform: v["platform"].as_str().unwrap().to_string(),
                text: v["text"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

/// The files a project using the examples has: requirements, lock files, the workflow.
fn workspace(dir: &Path) {
    for (f, body) in [
        (
            "requirements.txt",
            "# no packages: the examples' installs run offline\n",
        ),
        ("requirements.lock", "# none\n"),
        ("requirements/base.txt", "# none\n"),
        ("requirements-dev.txt", "# none\n"),
        ("poetry.lock", "# none\n"),
        ("package-lock.json", "{}\n"),
        (".github/workflows/ci.yml", "name: ci\n"),
    ] {
        let p = dir.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
}

#[test]
fn every_ci_example_in_the_docs_passes_its_platform_schema() {
    let Some(tools) = tools() else { return };
    let py = tools.join("python3");
    let all = examples(&py);
    for platform in ["github", "gitlab", "circleci"] {
        assert!(
            all.iter().any(|e| e.platform == platform),
            "no {platform} example found: the extraction is broken"
        );
    }
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for (n, ex) in all.iter().enumerate() {
        let out = Command::new(&py)
            .arg(repo().join("tests/ci/run_examples.py"))
            .args(["workflow"])
            .arg(&ex.file)
            .arg(ex.index.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            ex.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        let f = t.path().join(format!("example-{n}.yml"));
        std::fs::write(&f, &out.stdout).unwrap();
        let schema = match ex.platform.as_str() {
            "github" => "vendor.github-workflows",
            "gitlab" => "vendor.gitlab-ci",
            _ => "vendor.circle-ci",
        };
        let c = Command::new(tools.join("check-jsonschema"))
            .args(["--builtin-schema", schema])
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            c.status.success(),
            "{} fails {schema}:\n{}\n{}",
            ex.name(),
            String::from_utf8_lossy(&c.stdout),
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// The examples run `python` as their runners have it (actions/setup-python, GitLab's and
/// CircleCI's Python images); a Debian machine has only `python3` unless python-is-python3 is
/// installed. A directory with `python` -> the first `python3` on PATH, for the end of PATH.
fn python_alias(dir: &Path, path: &str) -> PathBuf {
    if let Some(py3) = std::env::split_paths(path)
        .map(|d| d.join("python3"))
        .find(|p| p.is_file())
    {
        std::os::unix::fs::symlink(py3, dir.join("python")).unwrap();
    }
    dir.to_path_buf()
}

#[test]
fn every_ci_example_in_the_docs_runs_as_written_on_a_miss_then_hits() {
    let Some(tools) = tools() else { return };
    let py = tools.join("python3");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_envsnap")).parent().unwrap().to_path_buf();
    let path = std::env::var("PATH").unwrap_or_default();
    let alias = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = format!(
        "{}:{path}:{}",
        bin_dir.display(),
        python_alias(alias.path(), &path).display()
    );
    let mut ran = 0;
    for ex in examples(&py) {
        // apt examples install real packages with apt-get as root: tests/apt.rs covers
        // `apt install` in chroots; here they are schema-checked only.
        if ex.text.contains("apt install") {
            eprintln!("not run (installs system packages): {}", ex.name());
            continue;
        }
        if !ex.text.contains("envsnap") {
            eprintln!("not run (no envsnap in it): {}", ex.name());
            continue;
        }
        let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let store = t.path().join("store");
        let mut hits = vec![];
        for run in ["first", "second"] {
            // Each run is a new runner: a fresh checkout; only the store carries over.
            let ws = t.path().join(run);
            workspace(&ws);
            let out = Command::new(&py)
                .arg(repo().join("tests/ci/run_examples.py"))
                .arg("run")
                .arg(&ex.file)
                .arg(ex.index.to_string())
                .arg(&ws)
                .env("PATH", &path)
                .env("ENVSNAP_STORE", &store)
                .env(
                    "EXAMPLES_FILE_REMOTE",
                    format!("file://{}", t.path().join("remote").display()),
                )
                .env_remove("ENVSNAP_REMOTE")
                .env_remove("GITHUB_OUTPUT")
                .env_remove("VIRTUAL_ENV")
                .env_remove("ImageOS")
                .output()
                .unwrap();
            let log = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{} ({run} run): runner failed:\n{log}", ex.name());
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(
                v["ok"].as_bool().unwrap(),
                "{} fails on its {run} run: {}\n{log}",
                ex.name(),
                v["steps"]
            );
            hits.push(v["hits"].clone());
        }
        let first: Vec<&str> = hits[0]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        let second: Vec<&str> = hits[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        if !first.is_empty() {
            assert!(first.iter().all(|h| *h == "miss"), "{}: first run {first:?}", ex.name());
            assert!(
                second.contains(&"exact"),
                "{}: the second run did not hit: {second:?}",
                ex.name()
            );
        }
        ran += 1;
    }
    assert!(ran >= 5, "only {ran} examples ran: the extraction is broken");
}
