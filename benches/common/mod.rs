//! Shared by benches/venv.rs and benches/remote.rs: the benchmark venv (the pinned
//! benches/venv-requirements.txt), built once under target/bench-fixtures/ with an interpreter
//! discovered the way the tests discover theirs (tests/common/pythons.rs), never a fixed path.
#![allow(dead_code)]

#[path = "../../tests/common/pythons.rs"]
pub mod pythons;

use pythons::Python;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The CPython minors benches/venv-requirements.txt has wheels for (numpy 1.26.4 up to 3.12,
/// scipy 1.14.1 from 3.10).
const MINORS: std::ops::RangeInclusive<u32> = 10..=12;

fn supported(p: &Python) -> bool {
    p.can_venv
        && p.minor
            .strip_prefix("3.")
            .and_then(|m| m.parse().ok())
            .is_some_and(|m| MINORS.contains(&m))
}

/// The benchmark's interpreter: `$ENVSNAP_BENCH_PYTHON` when set; else `python3` on PATH; else
/// the newest CPython 3.10–3.12 with venv that tests/common/pythons.rs finds (PATH, pyenv, uv,
/// /usr/bin). Panics naming what was found when none fits.
pub fn python() -> Python {
    let range = format!("3.{}–3.{}", MINORS.start(), MINORS.end());
    if let Some(forced) = std::env::var_os("ENVSNAP_BENCH_PYTHON").filter(|p| !p.is_empty()) {
        let p = pythons::probe(Path::new(&forced))
            .unwrap_or_else(|| panic!("ENVSNAP_BENCH_PYTHON={forced:?} is not a CPython installation"));
        assert!(
            supported(&p),
            "ENVSNAP_BENCH_PYTHON={forced:?} is CPython {} (venv and ensurepip: {}); \
             benches/venv-requirements.txt needs {range} with venv",
            p.version,
            p.can_venv
        );
        return p;
    }
    if let Some(p) = pythons::probe(Path::new("python3")).filter(supported) {
        return p;
    }
    pythons::all()
        .iter()
        .filter(|p| supported(p))
        .max_by_key(|p| {
            p.version
                .split('.')
                .map(|n| n.parse::<u32>().unwrap_or(0))
                .collect::<Vec<_>>()
        })
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no CPython {range} with venv and ensurepip ({}); set ENVSNAP_BENCH_PYTHON",
                pythons::describe()
            )
        })
}

/// The benchmark venv and the interpreter it was made with.
pub struct BenchVenv {
    pub python: Python,
    /// target/bench-fixtures/venv/.venv
    pub venv: PathBuf,
    /// The wheels it was installed from (and `attrs`, which the benchmarks add later).
    pub wheelhouse: PathBuf,
}

impl BenchVenv {
    /// `…/.venv/lib/python3.X/site-packages`
    pub fn site_packages(&self) -> PathBuf {
        self.venv
            .join("lib")
            .join(self.python.versioned_name())
            .join("site-packages")
    }
}

/// Download the wheels (`.ci/test-setup-venv.sh` with `ENVSNAP_BENCH=1`, for [`python`]'s tag)
/// and build the venv once; it is made again when it was made with another interpreter.
pub fn setup(target: &Path) -> BenchVenv {
    let python = python();
    eprintln!("bench: CPython {} ({})", python.version, python.exe.display());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fx = Command::new(root.join(".ci/test-setup-venv.sh"))
        .arg(target)
        .env("ENVSNAP_BENCH", "1")
        .env("ENVSNAP_TEST_PYTHON", &python.exe)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(fx.status.success(), "fixture setup failed");
    let wheelhouse = target
        .join("fixtures")
        .join(format!("bench-wheelhouse-{}", python.tag()));
    let venv = target.join("bench-fixtures/venv/.venv");
    let stamp = venv.join(".complete");
    let made_with = python.exe.display().to_string();
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(made_with.as_str()) {
        let _ = std::fs::remove_dir_all(&venv);
        let req = root.join("benches/venv-requirements.txt");
        sh(&format!("'{made_with}' -m venv '{}'", venv.display()));
        sh(&format!(
            "'{}/bin/pip' install -q --disable-pip-version-check --no-index --find-links '{}' -r '{}'",
            venv.display(),
            wheelhouse.display(),
            req.display()
        ));
        std::fs::write(&stamp, &made_with).unwrap();
    }
    BenchVenv {
        python,
        venv,
        wheelhouse,
    }
}
