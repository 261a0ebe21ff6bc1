//! How envsnap reaches a CI runner: the wheel (pip, pipx and `uv tool` installs, its
//! manylinux2014 tags and glibc 2.17 floor), the GitHub Action's composite steps run the way
//! the runner runs them, and the GitLab CI and CircleCI templates, all schema-checked.
//!
//! Tools (maturin, ziglang, auditwheel, pipx, check-jsonschema) come from
//! `.ci/test-setup-dist.sh` into `target/fixtures/dist-tools`; the wheel is built once per
//! source state and cached under `target/dist-wheel/<hash of the sources>/`, so a warm rerun
//! builds nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().to_path_buf()
}

fn scratch(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn show(cmd: &Command, out: &Output) -> String {
    format!(
        "{cmd:?}\nstatus: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run, assert success, return stdout.
fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "command failed: {}", show(cmd, &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The dist-tools venv's bin directory, or None (after saying why) when it cannot be set up
/// here; with ENVSNAP_REQUIRE_ROOT_TESTS=1 (CI) that is a failure instead.
fn tools() -> Option<&'static Path> {
    static TOOLS: OnceLock<Option<PathBuf>> = OnceLock::new();
    TOOLS
        .get_or_init(|| common::setup_fixture("test-setup-dist.sh"))
        .as_deref()
}

macro_rules! tools_or_skip {
    () => {
        match tools() {
            Some(t) => t,
            None => return,
        }
    };
}

fn version() -> String {
    let toml = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let line = toml.lines().find(|l| l.starts_with("version = ")).unwrap();
    line.trim_start_matches("version = ").trim_matches('"').to_string()
}

/// BLAKE3 over everything that goes into the wheel, to key the cached build.
fn sources_hash() -> String {
    let mut h = blake3::Hasher::new();
    let mut files: Vec<PathBuf> = ["Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md"]
        .iter()
        .map(|f| repo().join(f))
        .collect();
    for e in walkdir::WalkDir::new(repo().join("src")) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            files.push(e.into_path());
        }
    }
    files.sort();
    for f in files {
        let rel = f.strip_prefix(repo()).unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&f).unwrap();
        h.update(&(rel.len() as u64).to_le_bytes());
        h.update(rel.as_bytes());
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(&data);
    }
    h.finalize().to_hex()[..16].to_string()
}

/// The wheel, built with `maturin build --zig` (manylinux2014) once per source state.
fn wheel() -> Option<&'static Path> {
    static WHEEL: OnceLock<Option<PathBuf>> = OnceLock::new();
    WHEEL
        .get_or_init(|| {
            let tools = tools()?;
            let dir = target().join("dist-wheel").join(sources_hash());
            let find = |d: &Path| -> Option<PathBuf> {
                std::fs::read_dir(d)
                    .ok()?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .find(|p| p.extension().is_some_and(|x| x == "whl"))
            };
            if let Some(w) = find(&dir) {
                return Some(w);
            }
            let tmp = dir.with_extension("tmp");
            let _ = std::fs::remove_dir_all(&tmp);
            // Its own target dir: the zig-linked build never mixes with the test build's files.
            ok(Command::new(tools.join("maturin"))
                .current_dir(repo())
                .args(["build", "--zig", "--compatibility", "manylinux2014", "--target-dir"])
                .arg(target().join("wheel-build"))
                .arg("--out")
                .arg(&tmp)
                .env("PATH", path_with(&[tools])));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir).unwrap();
            Some(find(&dir).expect("maturin wrote no wheel"))
        })
        .as_deref()
}

macro_rules! wheel_or_skip {
    () => {
        match wheel() {
            Some(w) => w,
            None => return,
        }
    };
}

/// `dirs` in front of the current PATH.
fn path_with(dirs: &[&Path]) -> String {
    let mut v: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    v.push(std::env::var("PATH").unwrap_or_default());
    v.join(":")
}

/// PATH without any directory that holds cargo or rustc (a runner with no Rust), `dirs` first.
fn path_without_rust(dirs: &[&Path]) -> String {
    let mut v: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    for d in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(d);
        if !d.is_empty() && !p.join("cargo").exists() && !p.join("rustc").exists() {
            v.push(d.to_string());
        }
    }
    v.join(":")
}

/// A Python on PATH that can make venvs (the one the tools venv was built from).
fn base_python(tools: &Path) -> PathBuf {
    let out = ok(Command::new(tools.join("python3"))
        .args(["-c", "import sys, os; print(os.path.realpath(sys._base_executable))"]));
    PathBuf::from(out.trim())
}

#[test]
fn wheel_is_manylinux2014_tagged_and_holds_only_the_stripped_binary() {
    let tools = tools_or_skip!();
    let whl = wheel_or_skip!();
    let name = whl.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        name,
        format!(
            "envsnap-{}-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
            version()
        ),
        "wheel file name (tags)"
    );
    // Contents, the WHEEL tags, and the binary's ELF: stripped, and no GLIBC_ symbol version
    // above 2.17 (what decides whether it loads on an old runner image).
    let script = r#"
import json, sys, zipfile, io
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection
z = zipfile.ZipFile(sys.argv[1])
names = sorted(z.namelist())
wheel = z.read([n for n in names if n.endswith('.dist-info/WHEEL')][0]).decode()
bins = [n for n in names if '.data/scripts/' in n]
elf = ELFFile(io.BytesIO(z.read(bins[0])))
sections = [s.name for s in elf.iter_sections()]
glibc = set()
for s in elf.iter_sections():
    if isinstance(s, GNUVerNeedSection):
        for _, auxs in s.iter_versions():
            for a in auxs:
                if a.name.startswith('GLIBC_'):
                    glibc.add(a.name)
mode = z.getinfo(bins[0]).external_attr >> 16
print(json.dumps({'names': names, 'wheel': wheel, 'sections': sections,
                  'glibc': sorted(glibc), 'mode': mode, 'size': len(z.read(bins[0]))}))
"#;
    let out = ok(Command::new(tools.join("python3")).args(["-c", script]).arg(whl));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ver = version();
    let names: Vec<&str> = v["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let payload: Vec<&&str> = names.iter().filter(|n| !n.contains(".dist-info/")).collect();
    assert_eq!(
        payload,
        [&format!("envsnap-{ver}.data/scripts/envsnap").as_str()],
        "the wheel carries the binary and nothing else: {names:?}"
    );
    let wheel_meta = v["wheel"].as_str().unwrap();
    assert!(wheel_meta.contains("Root-Is-Purelib: false"), "{wheel_meta}");
    for tag in ["py3-none-manylinux_2_17_x86_64", "py3-none-manylinux2014_x86_64"] {
        assert!(
            wheel_meta.contains(&format!("Tag: {tag}")),
            "missing tag {tag}: {wheel_meta}"
        );
    }
    assert_ne!(
        v["mode"].as_u64().unwrap() & 0o111,
        0,
        "binary not executable in the wheel"
    );
    let sections: Vec<&str> = v["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for s in &sections {
        assert!(
            !s.starts_with(".debug") && *s != ".symtab",
            "binary not stripped: section {s} in {sections:?}"
        );
    }
    let glibc: Vec<&str> = v["glibc"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        !glibc.is_empty(),
        "no GLIBC_ versions read: the check would prove nothing"
    );
    for g in &glibc {
        let parts: Vec<u32> = g["GLIBC_".len()..].split('.').map(|p| p.parse().unwrap()).collect();
        assert!(
            parts.as_slice() <= [2, 17].as_slice(),
            "binary needs {g}, above manylinux2014's glibc 2.17: {glibc:?}"
        );
    }
    // auditwheel's own verdict, as PyPI uploads are judged.
    let audit = ok(Command::new(tools.join("auditwheel")).arg("show").arg(whl));
    let flat = audit.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("consistent with the following platform tag: \"manylinux_2_17_x86_64\""),
        "auditwheel: {audit}"
    );
}

#[test]
fn wheel_installs_into_a_fresh_venv_and_runs_the_readme_demo_without_rust() {
    let tools = tools_or_skip!();
    let whl = wheel_or_skip!();
    let t = scratch("wheel-pip-");
    let venv = t.path().join("venv");
    ok(Command::new(base_python(tools)).args(["-m", "venv"]).arg(&venv));
    ok(Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check", "--no-index"])
        .arg(whl));
    let bin = venv.join("bin");
    let path = path_without_rust(&[&bin]);
    // The step really has no Rust: cargo and rustc are not found.
    let probe = Command::new("bash")
        .args(["-c", "command -v cargo || command -v rustc"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        !probe.status.success(),
        "Rust still on PATH: {}",
        String::from_utf8_lossy(&probe.stdout)
    );
    let v = ok(Command::new(bin.join("envsnap")).arg("--version").env("PATH", &path));
    assert_eq!(v.trim(), format!("envsnap {}", version()));
    let out = ok(Command::new("bash")
        .arg(repo().join("scripts/demo.sh"))
        .env("PATH", &path)
        .env("ENVSNAP_BIN", bin.join("envsnap"))
        .env("ENVSNAP_STORE", t.path().join("store"))
        .env_remove("GITHUB_OUTPUT")
        .env_remove("VIRTUAL_ENV"));
    // The demo's own checks: the restored tool ran, the restored venv's pip ran and activated.
    assert!(out.contains("hello from a restored tool"), "{out}");
    assert!(out.contains("activated: "), "{out}");
    assert!(out.contains("\"hit\":\"exact\""), "{out}");
}

#[test]
fn wheel_installs_with_pipx_and_uv_tool() {
    let tools = tools_or_skip!();
    let whl = wheel_or_skip!();
    let t = scratch("wheel-tools-");
    let py = base_python(tools);
    // pipx: its own home and bin dir, offline (the wheel has no dependencies).
    ok(Command::new(tools.join("pipx"))
        .arg("install")
        .arg(format!(
            "--pip-args=--no-index --find-links {}",
            target().join("fixtures/dist-wheelhouse").display()
        ))
        .arg(whl)
        .arg("--python")
        .arg(&py)
        .env("PIPX_HOME", t.path().join("pipx-home"))
        .env("PIPX_BIN_DIR", t.path().join("pipx-bin"))
        .env("PIPX_MAN_DIR", t.path().join("pipx-man")));
    let v = ok(Command::new(t.path().join("pipx-bin/envsnap")).arg("--version"));
    assert_eq!(v.trim(), format!("envsnap {}", version()));
    // uv tool install, from the tools venv's uv (.ci/test-setup-venv.sh).
    let uv = target().join("fixtures/tools/bin/uv");
    if !uv.exists() {
        ok(Command::new(repo().join(".ci/test-setup-venv.sh")).arg(target()));
    }
    ok(Command::new(&uv)
        .args(["tool", "install", "--offline", "--no-index", "--python"])
        .arg(&py)
        .arg(whl)
        .env("UV_TOOL_DIR", t.path().join("uv-tools"))
        .env("UV_TOOL_BIN_DIR", t.path().join("uv-bin"))
        .env("UV_CACHE_DIR", t.path().join("uv-cache"))
        .env("UV_PYTHON_DOWNLOADS", "never"));
    let v = ok(Command::new(t.path().join("uv-bin/envsnap")).arg("--version"));
    assert_eq!(v.trim(), format!("envsnap {}", version()));
}

// ---------------------------------------------------------------------------------------------
// The GitHub Action, run by tests/ci/gha_composite.py the way actions/runner runs a composite
// action: inputs and defaults, `${{ }}` substitution into `env:`/`run:`, `shell: bash` as
// `bash --noprofile --norc -eo pipefail`, per-step GITHUB_OUTPUT/ENV/PATH/STEP_SUMMARY files.

struct Job {
    state: PathBuf,
    workspace: PathBuf,
    store: PathBuf,
}

#[derive(Debug)]
struct ActionRun {
    outcome: String,
    outputs: BTreeMap<String, String>,
    summary: String,
}

impl Job {
    /// A new job on a new runner (fresh RUNNER_TEMP, env and PATH), sharing `store`.
    fn new(root: &Path, name: &str, store: &Path) -> Job {
        let state = root.join(format!("job-{name}"));
        let workspace = root.join(format!("ws-{name}"));
        std::fs::create_dir_all(&workspace).unwrap();
        Job {
            state,
            workspace,
            store: store.to_path_buf(),
        }
    }

    /// One `uses:` step: ACTION is ".", "restore" or "save" (relative to the repository).
    fn uses(&self, action: &str, with: &[(&str, &str)]) -> ActionRun {
        let tools = tools().unwrap();
        let whl = wheel().unwrap();
        let mut c = Command::new(tools.join("python3"));
        c.arg(repo().join("tests/ci/gha_composite.py"))
            .arg(&self.state)
            .arg(repo().join(action))
            .args(["--with", &format!("wheel={}", whl.display())]);
        for (k, v) in with {
            c.args(["--with", &format!("{k}={v}")]);
        }
        // A runner's environment: no envsnap and no Rust on PATH; the store this test owns.
        c.env("PATH", path_without_rust(&[]))
            .env("GITHUB_WORKSPACE", &self.workspace)
            .env("ENVSNAP_STORE", &self.store)
            .env("ENVSNAP_ACTION_NO_STATS", "")
            .env_remove("ENVSNAP_REMOTE")
            .env_remove("GITHUB_OUTPUT")
            .env_remove("GITHUB_ENV")
            .env_remove("VIRTUAL_ENV")
            .current_dir(&self.workspace);
        let out = ok(&mut c);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        ActionRun {
            outcome: v["outcome"].as_str().unwrap().to_string(),
            outputs: v["outputs"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect(),
            summary: v["summary"].as_str().unwrap().to_string(),
        }
    }
}

/// A build output of 20 files, then a pause: a file changed within a second of a save is racy
/// (src/save.rs: not stat-cached, so the next save reads it again and is not "unchanged"). A
/// real job builds long before its save step; without the pause the test raced the action's
/// install step, which can take under a second (it did as a plain user, no pyenv shims on PATH).
fn write_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    for i in 0..20 {
        std::fs::write(dir.join(format!("lib/m{i}.txt")), format!("module {i}\n")).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
}

fn out<'a>(r: &'a ActionRun, name: &str) -> &'a str {
    r.outputs
        .get(name)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no output {name}: {r:?}"))
}

#[test]
fn action_miss_then_save_then_exact_and_fallback_hits_set_outputs_and_summary_like_actions_cache() {
    tools_or_skip!();
    wheel_or_skip!();
    let t = scratch("action-");
    let store = t.path().join("store");
    let key = "build-{os}-{hash:deps.txt}";
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut w = vec![("path", "build"), ("key", key), ("restore-keys", "build-{os}-\nbuild-")];
        w.extend_from_slice(extra);
        w
    };

    // Job 1: a miss. Not a failure; cache-hit is "false", not empty.
    let j1 = Job::new(t.path(), "1", &store);
    std::fs::write(j1.workspace.join("deps.txt"), "a==1\n").unwrap();
    let r = j1.uses(".", &with(&[]));
    assert_eq!(r.outcome, "success", "{r:?}");
    assert_eq!(out(&r, "cache-hit"), "false");
    assert_eq!(out(&r, "hit"), "miss");
    assert_eq!(out(&r, "cache-matched-key"), "");
    let primary = out(&r, "cache-primary-key").to_string();
    assert!(
        primary.starts_with("build-Linux-") && primary.len() == "build-Linux-".len() + 32,
        "{primary}"
    );
    assert!(r.summary.contains("| result | miss |"), "{}", r.summary);
    assert!(r.summary.contains(&format!("| key | `{primary}` |")), "{}", r.summary);

    // The job builds, then `uses: …/save` with no inputs saves what the restore looked up.
    write_tree(&j1.workspace.join("build"));
    let s = j1.uses("save", &[]);
    assert_eq!(s.outcome, "success", "{s:?}");
    assert_eq!(out(&s, "saved"), "true");
    assert_eq!(out(&s, "cache-primary-key"), primary);
    assert!(s.summary.contains("| result | saved: 20 new objects"), "{}", s.summary);
    // Saving again with nothing changed writes nothing and says so.
    let s2 = j1.uses("save", &[]);
    assert_eq!(out(&s2, "saved"), "false", "{s2:?}");
    assert!(
        s2.summary.contains("| result | unchanged: nothing written |"),
        "{}",
        s2.summary
    );

    // Job 2, same inputs: an exact hit, the tree restored.
    let j2 = Job::new(t.path(), "2", &store);
    std::fs::write(j2.workspace.join("deps.txt"), "a==1\n").unwrap();
    let r = j2.uses(".", &with(&[]));
    assert_eq!(out(&r, "cache-hit"), "true", "{r:?}");
    assert_eq!(out(&r, "hit"), "exact");
    assert_eq!(out(&r, "cache-matched-key"), primary);
    assert_eq!(
        std::fs::read_to_string(j2.workspace.join("build/lib/m7.txt")).unwrap(),
        "module 7\n"
    );
    assert!(r.summary.contains("| result | exact hit |"), "{}", r.summary);
    assert!(r.summary.contains("| files | 20 |"), "{}", r.summary);
    assert!(r.summary.contains("| link | "), "{}", r.summary);
    // `envsnap stats` groups by the key template: job 1's miss and this hit.
    assert!(
        r.summary.contains("| hit ratio (30 days) | 50 % (1 of 2 restores) |"),
        "{}",
        r.summary
    );

    // Job 3, the dependencies changed: a restore-keys match. cache-hit stays "false".
    let j3 = Job::new(t.path(), "3", &store);
    std::fs::write(j3.workspace.join("deps.txt"), "a==2\n").unwrap();
    let r = j3.uses("restore", &with(&[]));
    assert_eq!(out(&r, "cache-hit"), "false", "{r:?}");
    assert_eq!(out(&r, "hit"), "fallback");
    assert_eq!(out(&r, "cache-matched-key"), primary);
    assert_ne!(out(&r, "cache-primary-key"), primary);
    assert!(j3.workspace.join("build/lib/m0.txt").exists());
    assert!(r.summary.contains("| result | fallback hit |"), "{}", r.summary);
    // Its save updates the new key, and the next job gets an exact hit on it.
    std::fs::write(j3.workspace.join("build/lib/new.txt"), "new\n").unwrap();
    let s = j3.uses("save", &[]);
    assert_eq!(out(&s, "saved"), "true", "{s:?}");
    assert!(s.summary.contains("| result | saved: 1 new objects"), "{}", s.summary);

    // lookup-only: outputs as for a restore, nothing written.
    let j4 = Job::new(t.path(), "4", &store);
    std::fs::write(j4.workspace.join("deps.txt"), "a==2\n").unwrap();
    let r = j4.uses(".", &with(&[("lookup-only", "true")]));
    assert_eq!(out(&r, "cache-hit"), "true", "{r:?}");
    assert!(!j4.workspace.join("build").exists(), "lookup-only restored files");
    assert!(r.summary.contains("lookup only: nothing restored"), "{}", r.summary);
}

#[test]
fn action_miss_fails_only_with_fail_on_cache_miss() {
    tools_or_skip!();
    wheel_or_skip!();
    let t = scratch("action-miss-");
    let store = t.path().join("store");
    let j = Job::new(t.path(), "1", &store);
    let r = j.uses(".", &[("path", "out"), ("key", "nothing-here")]);
    assert_eq!(
        (r.outcome.as_str(), out(&r, "cache-hit")),
        ("success", "false"),
        "{r:?}"
    );
    let r = j.uses(
        "restore",
        &[("path", "out"), ("key", "nothing-here"), ("fail-on-cache-miss", "true")],
    );
    assert_eq!(r.outcome, "failure", "{r:?}");
    // A store error is a warning and a miss, as actions/cache treats a failed restore.
    let bad = Job::new(t.path(), "2", &t.path().join("not-a-dir-file"));
    std::fs::write(t.path().join("not-a-dir-file"), "x").unwrap();
    let r = bad.uses(".", &[("path", "out"), ("key", "k")]);
    assert_eq!(
        (r.outcome.as_str(), out(&r, "cache-hit")),
        ("success", "false"),
        "{r:?}"
    );
    assert!(
        r.summary.contains("| result | error, treated as a miss: "),
        "{}",
        r.summary
    );
}

#[test]
fn action_venv_kind_round_trips_a_venv_to_another_workspace() {
    let tools = tools_or_skip!();
    wheel_or_skip!();
    let t = scratch("action-venv-");
    let store = t.path().join("store");
    let py = base_python(tools);
    let j1 = Job::new(t.path(), "1", &store);
    let key = "venv-{os}-{python-minor}-{hash:req.txt}";
    std::fs::write(j1.workspace.join("req.txt"), "\n").unwrap();
    let with = [("kind", "venv"), ("path", ".venv"), ("key", key)];
    let r = j1.uses(".", &with);
    assert_eq!(out(&r, "hit"), "miss", "{r:?}");
    ok(Command::new(&py)
        .args(["-m", "venv", "--without-pip", ".venv"])
        .current_dir(&j1.workspace));
    let s = j1.uses("save", &[]);
    assert_eq!(out(&s, "saved"), "true", "{s:?}");
    // Another checkout path (a new runner): the venv is retargeted and runs there.
    let j2 = Job::new(t.path(), "2", &store);
    std::fs::write(j2.workspace.join("req.txt"), "\n").unwrap();
    let r = j2.uses(".", &with);
    assert_eq!(out(&r, "cache-hit"), "true", "{r:?}");
    let prefix = ok(Command::new(j2.workspace.join(".venv/bin/python")).args(["-c", "import sys; print(sys.prefix)"]));
    assert_eq!(
        Path::new(prefix.trim()),
        j2.workspace.join(".venv").canonicalize().unwrap()
    );
}

#[test]
fn action_install_step_defaults_to_the_crate_version() {
    // The `version` input pins what the action installs from PyPI; it must be this release.
    for f in ["action.yml", "restore/action.yml", "save/action.yml"] {
        let text = std::fs::read_to_string(repo().join(f)).unwrap();
        let want = format!("  version:\n    description: \"The envsnap version to install from PyPI.\"\n    required: false\n    default: \"{}\"\n", version());
        assert!(
            text.contains(&want),
            "{f}: the version input's default is not {}",
            version()
        );
    }
}

/// `check-jsonschema --builtin-schema SCHEMA FILES…`, asserting success.
fn schema_check(schema: &str, files: &[PathBuf]) {
    let tools = tools().unwrap();
    ok(Command::new(tools.join("check-jsonschema"))
        .args(["--builtin-schema", schema])
        .args(files));
}

#[test]
fn action_ymls_pass_the_github_actions_schema() {
    tools_or_skip!();
    let files: Vec<PathBuf> = ["action.yml", "restore/action.yml", "save/action.yml"]
        .iter()
        .map(|f| repo().join(f))
        .collect();
    schema_check("vendor.github-actions", &files);
    // The checker does reject a broken action (the check can fail).
    let t = scratch("schema-");
    let bad = t.path().join("action.yml");
    std::fs::write(
        &bad,
        "name: x\ndescription: y\nruns:\n  using: composite\n  steps:\n    - run: echo\n      shell: [bash]\n",
    )
    .unwrap();
    let o = Command::new(tools().unwrap().join("check-jsonschema"))
        .args(["--builtin-schema", "vendor.github-actions"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!o.status.success(), "a broken action.yml passed the schema check");
}

// ---------------------------------------------------------------------------------------------
// GitLab CI template and CircleCI orb, run by tests/ci/ci_templates.py as their runners run
// them, with the store carried between "runners" only by the platform's cache emulation.

/// The installed-from-wheel envsnap's directory: the templates install it themselves on CI;
/// here the wheel's binary is put on PATH once, which their install step then finds.
fn wheel_bin_dir(t: &Path) -> PathBuf {
    let tools = tools().unwrap();
    let dir = t.join("wheel-install");
    ok(Command::new(tools.join("python3"))
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-index",
            "--target",
        ])
        .arg(&dir)
        .arg(wheel().unwrap()));
    dir.join("bin")
}

/// The job's script: build `out` only on a miss, and record what the template exported.
const JOB_SCRIPT: &str = r#"[ "$ENVSNAP_CACHE_HIT" = true ] || { mkdir -p out/lib; echo built > out/lib/f; }; echo "$ENVSNAP_HIT $ENVSNAP_CACHE_HIT" > result"#;

#[test]
fn gitlab_template_misses_without_failing_then_hits_from_gitlabs_cache() {
    let tools = tools_or_skip!();
    wheel_or_skip!();
    let t = scratch("gitlab-");
    let bin = wheel_bin_dir(t.path());
    let cache = t.path().join("gitlab-cache");
    let template = repo().join("ci/gitlab/envsnap.gitlab-ci.yml");
    let job = |name: &str, deps: &str| -> (serde_json::Value, String, PathBuf) {
        let ws = t.path().join(name);
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(ws.join("deps.txt"), deps).unwrap();
        let out = ok(Command::new(tools.join("python3"))
            .arg(repo().join("tests/ci/ci_templates.py"))
            .args(["gitlab"])
            .arg(&template)
            .arg(&ws)
            .arg(&cache)
            .arg(JOB_SCRIPT)
            .args([
                "--var",
                "ENVSNAP_PATH=out",
                "--var",
                "ENVSNAP_KEY=out-{os}-{hash:deps.txt}",
            ])
            .args(["--var", "ENVSNAP_RESTORE_KEYS=nothing-\nout-{os}-"])
            .env("PATH", path_without_rust(&[&bin]))
            .env_remove("ENVSNAP_STORE")
            .env_remove("ENVSNAP_REMOTE"));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let result = std::fs::read_to_string(ws.join("result")).unwrap_or_default();
        (v, result.trim().to_string(), ws)
    };
    let (v, result, _) = job("run1", "a==1\n");
    assert_eq!((v["rc"].as_i64(), v["after_rc"].as_i64()), (Some(0), Some(0)), "{v}");
    assert_eq!(result, "miss false");
    // A new runner: only GitLab's cache (the store in the project directory) carries over.
    let (v, result, ws) = job("run2", "a==1\n");
    assert_eq!(v["rc"].as_i64(), Some(0), "{v}");
    assert_eq!(result, "exact true");
    assert_eq!(std::fs::read_to_string(ws.join("out/lib/f")).unwrap(), "built\n");
    // Changed dependencies: the restore-keys prefix finds the old tree.
    let (_, result, _) = job("run3", "a==2\n");
    assert_eq!(result, "fallback false");
    // A failed job saves nothing.
    let ws = t.path().join("run4");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("deps.txt"), "a==4\n").unwrap();
    let out = ok(Command::new(tools.join("python3"))
        .arg(repo().join("tests/ci/ci_templates.py"))
        .args(["gitlab"])
        .arg(&template)
        .arg(&ws)
        .arg(&cache)
        .arg("mkdir -p out && echo x > out/f && false")
        .args([
            "--var",
            "ENVSNAP_PATH=out",
            "--var",
            "ENVSNAP_KEY=out-{os}-{hash:deps.txt}",
        ])
        .env("PATH", path_without_rust(&[&bin]))
        .env_remove("ENVSNAP_STORE"));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_ne!(v["rc"].as_i64(), Some(0));
    let key = ok(Command::new(bin.join("envsnap"))
        .args(["key", "out-{os}-{hash:deps.txt}", "--root"])
        .arg(&ws));
    let list = ok(Command::new(bin.join("envsnap"))
        .args(["--store"])
        .arg(ws.join(".envsnap-store"))
        .args(["list"]));
    assert!(
        list.contains("out-Linux-"),
        "GitLab's cache did not bring the store: {list}"
    );
    assert!(!list.contains(key.trim()), "a failed job saved {key}: {list}");
}

#[test]
fn circleci_orb_misses_without_failing_then_hits_from_circlecis_cache() {
    let tools = tools_or_skip!();
    wheel_or_skip!();
    let t = scratch("circleci-");
    let bin = wheel_bin_dir(t.path());
    let cache = t.path().join("circleci-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let store = t.path().join("store");
    let steps = serde_json::json!([
        {"envsnap/restore": {"path": "out", "key": "out-{arch}-{checksum:deps.txt}",
                             "restore-keys": "nothing-\nout-{arch}-", "store": store}},
        {"run": JOB_SCRIPT},
        {"envsnap/save": {"path": "out", "key": "out-{arch}-{checksum:deps.txt}", "store": store}},
    ])
    .to_string();
    let job = |name: &str, deps: &str| -> (serde_json::Value, String) {
        let ws = t.path().join(name);
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(ws.join("deps.txt"), deps).unwrap();
        // A new runner: the store is gone; only CircleCI's cache can bring it back.
        let _ = std::fs::remove_dir_all(&store);
        let out = ok(Command::new(tools.join("python3"))
            .arg(repo().join("tests/ci/ci_templates.py"))
            .arg("circleci")
            .arg(repo().join("ci/circleci/orb.yml"))
            .arg(&ws)
            .arg(&cache)
            .arg(&steps)
            .env("PATH", path_without_rust(&[&bin]))
            .env_remove("ENVSNAP_STORE")
            .env_remove("ENVSNAP_REMOTE"));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let result = std::fs::read_to_string(ws.join("result")).unwrap_or_default();
        (v, result.trim().to_string())
    };
    let all_ok = |v: &serde_json::Value| v["steps"].as_array().unwrap().iter().all(|s| s["rc"] == 0);
    let (v, result) = job("run1", "a==1\n");
    assert!(all_ok(&v), "{v}");
    assert_eq!(result, "miss false");
    // CircleCI cache keys carry {{ epoch }} (seconds): the next save needs a new second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (v, result) = job("run2", "a==1\n");
    assert!(all_ok(&v), "{v}");
    assert_eq!(result, "exact true");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (_, result) = job("run3", "a==2\n");
    assert_eq!(result, "fallback false");
}

#[test]
fn gitlab_template_and_circleci_orb_pass_their_schemas() {
    let tools = tools_or_skip!();
    let t = scratch("ci-schemas-");
    // GitLab's schema checks hidden jobs loosely: check the template's job made visible too.
    let template = std::fs::read_to_string(repo().join("ci/gitlab/envsnap.gitlab-ci.yml")).unwrap();
    let visible = template.replace("\n.envsnap:\n", "\nenvsnap-job:\n") + "  script: [\"true\"]\n";
    std::fs::write(t.path().join("visible.yml"), &visible).unwrap();
    schema_check(
        "vendor.gitlab-ci",
        &[
            repo().join("ci/gitlab/envsnap.gitlab-ci.yml"),
            t.path().join("visible.yml"),
        ],
    );
    // The orb, and a config that uses it inline as `orbs: envsnap: …`.
    let config = ok(Command::new(tools.join("python3"))
        .args([
            "-c",
            r#"
import sys
from ruamel.yaml import YAML
orb = YAML(typ="safe").load(open(sys.argv[1]))
steps = ["checkout",
         {"envsnap/restore": {"kind": "venv", "path": ".venv", "key": "venv-{arch}-{checksum:requirements.txt}",
                              "restore-keys": "venv-{arch}-"}},
         {"run": "true"},
         {"envsnap/save": {"kind": "venv", "path": ".venv", "key": "venv-{arch}-{checksum:requirements.txt}"}}]
cfg = {"version": 2.1, "orbs": {"envsnap": orb},
       "jobs": {"test": {"docker": [{"image": "cimg/python:3.12"}], "steps": steps}},
       "workflows": {"main": {"jobs": ["test"]}}}
YAML().dump(cfg, sys.stdout)
"#,
        ])
        .arg(repo().join("ci/circleci/orb.yml")));
    std::fs::write(t.path().join("config.yml"), config).unwrap();
    schema_check(
        "vendor.circle-ci",
        &[repo().join("ci/circleci/orb.yml"), t.path().join("config.yml")],
    );
    // Both schemas do reject a broken file (the checks can fail).
    for (schema, file, from, to) in [
        (
            "vendor.gitlab-ci",
            "visible.yml",
            "\n  cache:\n",
            "\n  cache: 5\n  xcache:\n",
        ),
        ("vendor.circle-ci", "config.yml", "type: enum", "type: enumm"),
    ] {
        let text = std::fs::read_to_string(t.path().join(file)).unwrap();
        assert!(text.contains(from), "{file} lacks {from:?}");
        let bad = t.path().join(format!("bad-{file}"));
        std::fs::write(&bad, text.replacen(from, to, 1)).unwrap();
        let o = Command::new(tools.join("check-jsonschema"))
            .args(["--builtin-schema", schema])
            .arg(&bad)
            .output()
            .unwrap();
        assert!(!o.status.success(), "a broken {file} passed {schema}");
    }
}
