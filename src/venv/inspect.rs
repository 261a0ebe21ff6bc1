//! What a venv is made of: `pyvenv.cfg`, and the interpreter behind it (probed by running
//! Python with a timeout, or read from `pyvenv.cfg` when it cannot run).
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Probing an interpreter must never hang a save or restore (a broken shim can block).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Printed as one JSON line by the interpreter under probe. Works on 3.6+ and PyPy.
/// Python <= 3.10 may report a venv's own python as `sys._base_executable` (3.8 always does):
/// then the base is `home` (pyvenv.cfg) + the executable's name.
const PROBE: &str = r#"import json, os, sys, sysconfig, platform
be = getattr(sys, "_base_executable", sys.executable)
bp = getattr(sys, "base_prefix", sys.prefix)
if sys.prefix != bp and os.path.abspath(be).startswith(os.path.abspath(sys.prefix) + os.sep):
    home = None
    try:
        for l in open(os.path.join(sys.prefix, "pyvenv.cfg")):
            k, _, v = l.partition("=")
            if k.strip().lower() == "home":
                home = v.strip()
    except OSError:
        pass
    if home:
        names = (os.path.basename(os.path.realpath(sys.executable)), os.path.basename(sys.executable),
                 "python%d.%d" % sys.version_info[:2], "python%d" % sys.version_info[0], "python")
        for n in names:
            if os.path.exists(os.path.join(home, n)):
                be = os.path.join(home, n)
                break
print(json.dumps({
 "executable": sys.executable,
 "base_executable": be,
 "prefix": sys.prefix,
 "base_prefix": getattr(sys, "base_prefix", sys.prefix),
 "base_exec_prefix": getattr(sys, "base_exec_prefix", sys.exec_prefix),
 "version": platform.python_version(),
 "version_info": list(sys.version_info[:3]),
 "implementation": sys.implementation.name,
 "soabi": sysconfig.get_config_var("SOABI"),
}))"#;

/// An interpreter as the venv (or a candidate) sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interpreter {
    /// The base interpreter executable (what `bin/python` links to / is a copy of).
    pub executable: PathBuf,
    /// The directory `pyvenv.cfg`'s `home` names (the directory of `executable`).
    pub home: PathBuf,
    pub base_prefix: Option<PathBuf>,
    pub base_exec_prefix: Option<PathBuf>,
    /// "3.11.7"
    pub version: String,
    /// `sys.implementation.name`: "cpython", "pypy".
    pub implementation: String,
    pub soabi: Option<String>,
    /// "probe" when the interpreter ran, "pyvenv.cfg" when read from the config.
    pub source: String,
}

impl Interpreter {
    /// "3.11" from "3.11.7".
    pub fn minor(&self) -> String {
        minor_of(&self.version)
    }
    pub fn describe(&self) -> String {
        format!(
            "{} {} ({})",
            pretty_impl(&self.implementation),
            self.version,
            self.executable.display()
        )
    }
}

pub fn minor_of(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

pub fn pretty_impl(imp: &str) -> &str {
    match imp {
        "cpython" => "CPython",
        "pypy" => "PyPy",
        other => other,
    }
}

#[derive(Deserialize)]
struct ProbeOut {
    executable: String,
    base_executable: String,
    prefix: String,
    base_prefix: String,
    base_exec_prefix: String,
    version: String,
    implementation: String,
    soabi: Option<String>,
}

/// Raw result of running an interpreter: who it is and whether it is itself inside a venv.
#[derive(Clone, Debug)]
pub struct Probe {
    pub executable: PathBuf,
    pub prefix: PathBuf,
    pub in_venv: bool,
    /// The base interpreter (for a venv python: the one it was made from).
    pub base: Interpreter,
}

/// Run `python -I -c PROBE` with a timeout. `-I`: no PYTHONPATH/PYTHONHOME/user site, so the
/// answer describes the installation, not the caller's environment.
pub fn probe(python: &Path) -> Result<Probe> {
    let mut cmd = Command::new(python);
    cmd.arg("-I")
        .arg("-c")
        .arg(PROBE)
        .env_remove("PYTHONHOME")
        .env_remove("PYTHONPATH")
        .env_remove("VIRTUAL_ENV")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = run_with_timeout(cmd, PROBE_TIMEOUT)
        .map_err(|e| Error::Other(format!("{}: cannot run: {e}", python.display())))?;
    if !out.0 {
        return Err(Error::Other(crate::process::failure_message(
            python,
            &out.2,
            "check that it runs, or pass a working interpreter with --python",
        )));
    }
    let line = String::from_utf8_lossy(&out.1);
    let p: ProbeOut = serde_json::from_str(line.trim()).map_err(|e| {
        Error::Other(format!(
            "{}: unexpected probe output ({e}): {}",
            python.display(),
            line.trim()
        ))
    })?;
    let base_exe = PathBuf::from(&p.base_executable);
    let home = base_exe.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(Probe {
        executable: PathBuf::from(&p.executable),
        prefix: PathBuf::from(&p.prefix),
        in_venv: p.prefix != p.base_prefix,
        base: Interpreter {
            executable: base_exe,
            home,
            base_prefix: Some(PathBuf::from(p.base_prefix)),
            base_exec_prefix: Some(PathBuf::from(p.base_exec_prefix)),
            version: p.version,
            implementation: p.implementation,
            soabi: p.soabi,
            source: "probe".into(),
        },
    })
}

pub use crate::process::run_with_timeout;

/// `pyvenv.cfg` as ordered key/value lines (keys lower-cased and trimmed, like `site.py`).
#[derive(Clone, Debug, Default)]
pub struct PyvenvCfg {
    pub entries: Vec<(String, String)>,
}

impl PyvenvCfg {
    pub fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect();
        PyvenvCfg { entries }
    }
    pub fn read(venv: &Path) -> Result<Self> {
        let p = venv.join("pyvenv.cfg");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io("read", &p, e))?;
        Ok(Self::parse(&text))
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    /// Which tool made the venv: "uv", "virtualenv" or "venv".
    pub fn flavour(&self) -> &'static str {
        if self.get("uv").is_some() {
            "uv"
        } else if self.get("virtualenv").is_some() {
            "virtualenv"
        } else {
            "venv"
        }
    }
    pub fn relocatable(&self) -> bool {
        self.get("relocatable").is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// The base interpreter when the venv's python cannot run: `home`, `version`/`version_info`,
    /// `implementation`, `executable`/`base-executable`.
    pub fn interpreter(&self) -> Result<Interpreter> {
        let home = self
            .get("home")
            .ok_or_else(|| Error::Other("pyvenv.cfg has no `home` key".into()))?;
        let version_raw = self.get("version_info").or_else(|| self.get("version")).unwrap_or("");
        // virtualenv writes "3.11.7.final.0": keep the numeric triple.
        let version = version_raw
            .split('.')
            .take_while(|p| p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty())
            .take(3)
            .collect::<Vec<_>>()
            .join(".");
        let implementation = self.get("implementation").unwrap_or("CPython").to_ascii_lowercase();
        let minor = minor_of(&version);
        let executable = self
            .get("base-executable")
            .or_else(|| self.get("executable"))
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let name = if implementation == "pypy" {
                    "pypy3".to_string()
                } else {
                    format!("python{minor}")
                };
                Path::new(home).join(name)
            });
        Ok(Interpreter {
            executable,
            home: PathBuf::from(home),
            base_prefix: self.get("base-prefix").map(PathBuf::from),
            base_exec_prefix: self.get("base-exec-prefix").map(PathBuf::from),
            version,
            implementation,
            soabi: None,
            source: "pyvenv.cfg".into(),
        })
    }
}

/// How the venv was inspected at save time.
#[derive(Clone, Debug)]
pub struct VenvInfo {
    pub root: PathBuf,
    pub cfg: PyvenvCfg,
    pub interpreter: Interpreter,
    /// Why the venv's python could not be run (then `interpreter` comes from `pyvenv.cfg`).
    pub probe_error: Option<String>,
}

/// The python executable inside a venv (`bin/python`, else `bin/python3`).
pub fn venv_python(root: &Path) -> PathBuf {
    for n in ["python", "python3", "pypy3", "pypy"] {
        let p = root.join("bin").join(n);
        if p.symlink_metadata().is_ok() {
            return p;
        }
    }
    root.join("bin/python")
}

/// Inspect a venv directory. Refuses anything without `pyvenv.cfg` (Usage error).
pub fn inspect(root: &Path) -> Result<VenvInfo> {
    let md = std::fs::metadata(root).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Usage(format!("{}: no such directory", root.display()))
        } else {
            Error::io("stat", root, e)
        }
    })?;
    if !md.is_dir() {
        return Err(Error::Usage(format!("{}: not a directory", root.display())));
    }
    if !root.join("pyvenv.cfg").is_file() {
        return Err(Error::Usage(format!(
            "{}: not a virtualenv (no pyvenv.cfg); use `envsnap save dir` for plain directories",
            root.display()
        )));
    }
    let cfg = PyvenvCfg::read(root)?;
    let from_cfg = cfg.interpreter();
    match probe(&venv_python(root)) {
        Ok(p) => {
            let mut interp = p.base;
            // The base executable as the venv records it (pyvenv.cfg) is what ends up in the
            // files; prefer it when it names the same installation.
            if let Ok(c) = &from_cfg {
                if interp.home != c.home && same_file(&interp.home, &c.home) {
                    interp.home = c.home.clone();
                }
            }
            Ok(VenvInfo {
                root: root.to_path_buf(),
                cfg,
                interpreter: interp,
                probe_error: None,
            })
        }
        Err(e) => {
            let interp = from_cfg.map_err(|ce| {
                Error::Other(format!(
                    "{}: cannot run the venv's python ({e}) and {ce}",
                    root.display()
                ))
            })?;
            Ok(VenvInfo {
                root: root.to_path_buf(),
                cfg,
                interpreter: interp,
                probe_error: Some(e.to_string()),
            })
        }
    }
}

pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtualenv_version_info_keeps_numeric_triple() {
        let c = PyvenvCfg::parse(
            "home = /opt/py/bin\nimplementation = CPython\nversion_info = 3.11.7.final.0\nvirtualenv = 20.27.1\nbase-executable = /opt/py/bin/python3.11\n",
        );
        let i = c.interpreter().unwrap();
        assert_eq!(i.version, "3.11.7");
        assert_eq!(i.minor(), "3.11");
        assert_eq!(i.implementation, "cpython");
        assert_eq!(i.executable, PathBuf::from("/opt/py/bin/python3.11"));
        assert_eq!(c.flavour(), "virtualenv");
    }

    #[test]
    fn stdlib_venv_without_executable_key_guesses_from_home() {
        let c = PyvenvCfg::parse("home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.9.18\n");
        let i = c.interpreter().unwrap();
        assert_eq!(i.executable, PathBuf::from("/usr/bin/python3.9"));
        assert_eq!(c.flavour(), "venv");
    }
}
