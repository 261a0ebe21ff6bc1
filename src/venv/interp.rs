//! Choosing the interpreter a restored venv runs on. Rule: same implementation, same
//! major.minor (and SOABI when both are known); only the patch version may differ. C
//! extensions and `lib/pythonX.Y/` are tied to the minor version, so anything else is a miss.
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::inspect::{minor_of, pretty_impl, probe, Interpreter};
use crate::error::{Error, Result};

/// Why this interpreter was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The interpreter the venv was saved with still exists and matches.
    Original,
    /// `--python PY`.
    Explicit,
    /// Found on PATH.
    Path,
}

#[derive(Clone, Debug)]
pub struct Choice {
    pub interpreter: Interpreter,
    pub reason: Reason,
}

fn compatible(want: &Interpreter, got: &Interpreter) -> bool {
    want.implementation == got.implementation
        && minor_of(&want.version) == minor_of(&got.version)
        && match (&want.soabi, &got.soabi) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
}

/// Probe `py` and return its *base* interpreter (a venv python on PATH resolves to the
/// interpreter it was made from; a pyenv/asdf shim resolves to the real executable, since
/// the shim execs it and `sys.executable` names the real one).
pub fn resolve(py: &Path, exclude_prefix: Option<&Path>) -> Result<Interpreter> {
    let p = probe(py)?;
    if let Some(ex) = exclude_prefix {
        if p.in_venv && p.prefix == ex {
            return Err(Error::Other(format!("{} is the venv's own python", py.display())));
        }
    }
    let mut i = p.base;
    // The stdlib venv resolves `home` from sys._base_executable's directory; an executable
    // that is itself a relative or shim path would make a venv that breaks when PATH changes.
    if !i.executable.is_absolute() {
        i.executable = std::fs::canonicalize(&i.executable).map_err(|e| Error::io("resolve", &i.executable, e))?;
        i.home = i.executable.parent().map(Path::to_path_buf).unwrap_or_default();
    }
    Ok(i)
}

/// Does directory `home` still hold interpreter `i` under one of the names a venv uses
/// (its executable's name, `pythonX.Y`, `pythonX`, `python`)?
pub fn names_interpreter(home: &Path, i: &Interpreter) -> bool {
    let own = i.executable.file_name().map(|n| n.to_string_lossy().into_owned());
    own.into_iter().chain(names(i)).any(|n| is_executable(&home.join(n)))
}

/// Candidate names on PATH, most specific first.
fn names(want: &Interpreter) -> Vec<String> {
    let minor = want.minor();
    let major = minor.split('.').next().unwrap_or("3").to_string();
    if want.implementation == "pypy" {
        vec![format!("pypy{minor}"), format!("pypy{major}"), "pypy".into()]
    } else {
        vec![format!("python{minor}"), format!("python{major}"), "python".into()]
    }
}

/// Choose the interpreter. Runs interpreters but writes nothing.
/// `path_var`: the PATH to search (the caller's environment).
pub fn choose(
    want: &Interpreter,
    explicit: Option<&Path>,
    path_var: Option<OsString>,
    venv_dest: &Path,
) -> Result<Choice> {
    let need = format!("{} {}", pretty_impl(&want.implementation), want.minor());
    // 1. --python PY: what the user asked for wins, the original included (it only keeps the
    //    recorded paths when PY *is* the original). It must match: a wrong minor is a miss,
    //    not a silent mismatch.
    if let Some(py) = explicit {
        let py = if py.components().count() == 1 {
            which(py, path_var.as_ref()).unwrap_or(py.to_path_buf())
        } else {
            py.to_path_buf()
        };
        let i = resolve(&py, Some(venv_dest)).map_err(|e| Error::Usage(format!("--python {}: {e}", py.display())))?;
        if !compatible(want, &i) {
            return Err(Error::Miss(format!(
                "venv snapshot needs {need} (saved with {}), but --python {} is {} {}",
                want.describe(),
                py.display(),
                pretty_impl(&i.implementation),
                i.version
            )));
        }
        if !super::inspect::same_file(&i.executable, &want.executable) {
            return Ok(Choice {
                interpreter: i,
                reason: Reason::Explicit,
            });
        }
    }
    // 2. The original, if it still exists and matches.
    if want.executable.exists() {
        if let Ok(i) = resolve(&want.executable, None) {
            if compatible(want, &i) {
                // Keep the recorded paths: they are what the files already name.
                let mut orig = want.clone();
                orig.version = i.version;
                orig.soabi = i.soabi.or(orig.soabi);
                orig.base_prefix = i.base_prefix.or(orig.base_prefix);
                orig.base_exec_prefix = i.base_exec_prefix.or(orig.base_exec_prefix);
                orig.source = "probe".into();
                return Ok(Choice {
                    interpreter: orig,
                    reason: Reason::Original,
                });
            }
        }
    }
    // 3. PATH search.
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    if let Some(pv) = path_var {
        for dir in std::env::split_paths(&pv) {
            if dir.as_os_str().is_empty() || !dir.is_absolute() {
                continue;
            }
            for n in names(want) {
                let cand = dir.join(&n);
                if !is_executable(&cand) {
                    continue;
                }
                let Ok(i) = resolve(&cand, Some(venv_dest)) else {
                    continue;
                };
                if !seen.insert(i.executable.clone()) {
                    continue;
                }
                if compatible(want, &i) {
                    return Ok(Choice {
                        interpreter: i,
                        reason: Reason::Path,
                    });
                }
                found.push(format!(
                    "{} {} ({})",
                    pretty_impl(&i.implementation),
                    i.version,
                    cand.display()
                ));
            }
        }
    }
    let saw = if found.is_empty() {
        "no other Python".to_string()
    } else {
        found.join(", ")
    };
    Err(Error::Miss(format!(
        "venv snapshot needs {need} (saved with {}, which is gone); found on PATH: {saw}; install Python {} or pass --python",
        want.describe(),
        want.minor()
    )))
}

fn which(name: &Path, path_var: Option<&OsString>) -> Option<PathBuf> {
    std::env::split_paths(path_var?)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(v: &str, soabi: Option<&str>) -> Interpreter {
        Interpreter {
            version: v.into(),
            implementation: "cpython".into(),
            soabi: soabi.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn only_patch_version_may_differ() {
        let want = i("3.11.7", Some("cpython-311-x86_64-linux-gnu"));
        assert!(compatible(&want, &i("3.11.2", Some("cpython-311-x86_64-linux-gnu"))));
        assert!(compatible(&want, &i("3.11.2", None)));
        assert!(!compatible(&want, &i("3.12.1", None)));
        assert!(!compatible(&want, &i("3.1.1", None)));
        // free-threaded / debug builds have another SOABI: their C extensions differ
        assert!(!compatible(&want, &i("3.11.7", Some("cpython-311d-x86_64-linux-gnu"))));
    }
}
