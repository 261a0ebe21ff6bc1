//! The Python interpreters this machine has, found the way a contributor's machine has them:
//! on PATH, pyenv's versions, uv's managed Pythons (`uv python list --only-installed`), and the
//! distribution's `/usr/bin/python3.X`. Nothing is assumed to exist: a test that needs a second
//! minor or patch version the machine lacks skips with a message (see [`skip`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// One CPython installation (deduplicated by its real executable).
#[derive(Clone, Debug)]
pub struct Python {
    /// The real executable (symlinks and shims resolved): what envsnap records.
    pub exe: PathBuf,
    /// `3.11.7`
    pub version: String,
    /// `3.11`
    pub minor: String,
    /// `sys.base_prefix`, resolved: the installation root (`/usr` for the distribution's).
    pub prefix: PathBuf,
    /// Has `venv` and `ensurepip`, so `-m venv` makes a venv with pip.
    pub can_venv: bool,
}

impl Python {
    /// The directory pyvenv.cfg's `home` names for a venv made by this interpreter.
    pub fn home(&self) -> &Path {
        self.exe.parent().unwrap()
    }

    /// `cp311`: the wheel tag of this interpreter.
    pub fn tag(&self) -> String {
        format!("cp{}", self.minor.replace('.', ""))
    }

    /// `python3.11`: the versioned name a venv's bin/ has.
    pub fn versioned_name(&self) -> String {
        format!("python{}", self.minor)
    }

    /// The distribution's own (`/usr` prefix, Debian's home `/usr/bin`).
    pub fn is_system(&self) -> bool {
        self.prefix == Path::new("/usr")
    }

    fn minor_number(&self) -> u32 {
        self.minor.split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0)
    }
}

const PROBE: &str = "import json, os, sys\n\
try:\n    import ensurepip, venv\n    ok = True\nexcept Exception:\n    ok = False\n\
print(json.dumps({'exe': os.path.realpath(sys.executable), \
'version': '%d.%d.%d' % sys.version_info[:3], 'impl': sys.implementation.name, \
'prefix': os.path.realpath(sys.base_prefix), 'in_venv': sys.prefix != sys.base_prefix, 'venv': ok}))";

/// `cand` (a path, or a name looked up on PATH) when it runs a CPython installation (not a
/// venv's interpreter): what it is, its symlinks and shims resolved.
pub fn probe(cand: &Path) -> Option<Python> {
    let out = Command::new(cand)
        .args(["-I", "-c", PROBE])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("PYTHONHOME")
        .env_remove("PYTHONPATH")
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    // A venv's python is not an installation; only CPython (the adapter's rules are tested on it).
    if v["in_venv"] == true || v["impl"] != "cpython" {
        return None;
    }
    let version = v["version"].as_str()?.to_string();
    Some(Python {
        exe: PathBuf::from(v["exe"].as_str()?),
        minor: version.rsplit_once('.')?.0.to_string(),
        version,
        prefix: PathBuf::from(v["prefix"].as_str()?),
        can_venv: v["venv"] == true,
    })
}

fn is_python3_name(name: &str) -> bool {
    name == "python3"
        || name
            .strip_prefix("python3.")
            .is_some_and(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_digit()))
}

fn python3_names_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(is_python3_name))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Every candidate path, most likely first (duplicates are removed after probing).
fn candidates() -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(p) = std::env::var_os("ENVSNAP_TEST_PYTHON").filter(|p| !p.is_empty()) {
        c.push(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path_dirs: Vec<PathBuf> = std::env::split_paths(&path).filter(|d| d.is_absolute()).collect();
    for d in &path_dirs {
        c.extend(python3_names_in(d));
    }
    // pyenv: $PYENV_ROOT, else `pyenv root`, else ~/.pyenv.
    let pyenv_root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| {
            let o = Command::new("pyenv").arg("root").stderr(Stdio::null()).output().ok()?;
            o.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        })
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")));
    if let Some(root) = pyenv_root {
        if let Ok(rd) = std::fs::read_dir(root.join("versions")) {
            let mut vs: Vec<PathBuf> = rd.flatten().map(|e| e.path().join("bin")).collect();
            vs.sort();
            for bin in vs {
                c.extend(python3_names_in(&bin));
            }
        }
    }
    // uv's managed Pythons (uv on PATH, or the tools venv's).
    let tools_uv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixtures/tools/bin/uv");
    for uv in [PathBuf::from("uv"), tools_uv] {
        let Ok(o) = Command::new(&uv)
            .args(["python", "list", "--only-installed"])
            .stderr(Stdio::null())
            .output()
        else {
            continue;
        };
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            if let Some(p) = line.split_whitespace().nth(1).filter(|p| p.starts_with('/')) {
                c.push(PathBuf::from(p));
            }
        }
    }
    // The distribution's.
    c.extend(python3_names_in(Path::new("/usr/bin")));
    c
}

/// Every CPython found, probed once per test process.
pub fn all() -> &'static [Python] {
    static ALL: OnceLock<Vec<Python>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut found: Vec<Python> = Vec::new();
        for cand in candidates() {
            let Some(p) = probe(&cand) else { continue };
            if !found.iter().any(|f| f.exe == p.exe) {
                found.push(p);
            }
        }
        found
    })
}

/// Skip a test that cannot run here: a visible `SKIP:` line (`.ci/test` counts them), or a
/// failure when CI requires every test to run (`ENVSNAP_REQUIRE_ROOT_TESTS=1`).
pub fn skip(why: &str) {
    if std::env::var("ENVSNAP_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("{why} (ENVSNAP_REQUIRE_ROOT_TESTS=1, so this is a failure, not a skip)");
    }
    eprintln!("SKIP: {why}");
}

/// `Some(x)`, or a skip naming what `test` needed.
pub fn need<T>(x: Option<T>, test: &str, what: &str) -> Option<T> {
    if x.is_none() {
        skip(&format!(
            "{test}: needs {what}, which this machine lacks ({})",
            describe()
        ));
    }
    x
}

/// The interpreters found, for skip messages.
pub fn describe() -> String {
    let v: Vec<String> = all()
        .iter()
        .map(|p| format!("{} {}", p.version, p.exe.display()))
        .collect();
    if v.is_empty() {
        "no CPython found".into()
    } else {
        format!("found: {}", v.join(", "))
    }
}

/// The interpreter the venv tests use (and build the fixture wheelhouse for): `$ENVSNAP_TEST_PYTHON`
/// when set; else, among CPython 3.9+ with venv and ensurepip, the one that lets the most tests
/// run: a minor with a second installation (a distribution's /usr one beside it best, this one
/// not being it), then the minor of `python3` on PATH, then the newest.
pub fn primary() -> Option<&'static Python> {
    static P: OnceLock<Option<Python>> = OnceLock::new();
    P.get_or_init(|| {
        let all = all();
        if let Some(forced) = std::env::var_os("ENVSNAP_TEST_PYTHON").filter(|p| !p.is_empty()) {
            let exe = std::fs::canonicalize(&forced).unwrap_or_else(|_| PathBuf::from(&forced));
            return all.iter().find(|p| p.exe == exe).cloned();
        }
        let path_minor = probe(Path::new("python3")).map(|p| p.minor);
        all.iter()
            .filter(|p| p.can_venv && p.minor_number() >= 9)
            .max_by_key(|p| {
                let siblings = all.iter().filter(|o| o.minor == p.minor && o.exe != p.exe);
                let (mut any, mut system) = (false, false);
                for o in siblings {
                    any = true;
                    system |= o.is_system();
                }
                (
                    system && !p.is_system(),
                    any,
                    path_minor.as_deref() == Some(p.minor.as_str()),
                    p.minor_number(),
                    p.version.clone(),
                )
            })
            .cloned()
    })
    .as_ref()
}

/// Another installation of `p`'s minor version (another patch version preferred).
pub fn same_minor_other(p: &Python) -> Option<&'static Python> {
    all()
        .iter()
        .filter(|o| o.minor == p.minor && o.exe != p.exe && o.prefix != p.prefix)
        .max_by_key(|o| (o.version != p.version, o.can_venv))
}

/// An interpreter of another minor version than `p`.
pub fn other_minor(p: &Python) -> Option<&'static Python> {
    all()
        .iter()
        .filter(|o| o.minor != p.minor)
        .max_by_key(|o| (o.minor_number().abs_diff(p.minor_number()) == 1, o.minor_number()))
}

/// The distribution's interpreter (prefix /usr, can make a venv) and another installation of
/// the same minor that is not under /usr (`p` preferred).
pub fn system_and_other(p: &Python) -> Option<(&'static Python, &'static Python)> {
    let all = all();
    let mut pairs: Vec<(&Python, &Python)> = Vec::new();
    for d in all.iter().filter(|d| d.is_system() && d.can_venv) {
        for x in all.iter().filter(|x| x.minor == d.minor && !x.is_system()) {
            pairs.push((d, x));
        }
    }
    pairs.sort_by_key(|(_, x)| x.exe != p.exe);
    pairs.into_iter().next()
}

/// An interpreter older than 3.11 (3.8 preferred: its venvs report their own python as
/// `sys._base_executable`).
pub fn older_than_311() -> Option<&'static Python> {
    all()
        .iter()
        .filter(|o| o.minor_number() < 11 && o.minor_number() >= 6)
        .min_by_key(|o| o.minor_number().abs_diff(8))
}
