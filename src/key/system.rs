//! System tokens: `{os}`, `{arch}`, `{os-release}`, `{image}`, `{python*}`,
//! `{apt-base}`. Nothing is cached: every render asks the system again, so a
//! key can never describe a previous interpreter or image.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// `{os}`: GitHub's `runner.os` spelling.
pub fn os_name() -> &'static str {
    match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "macOS",
        "windows" => "Windows",
        other => other,
    }
}

/// `{arch}`: the Rust/uname spelling (`x86_64`, `aarch64`, …).
pub fn arch() -> &'static str {
    std::env::consts::ARCH
}

/// Parsed os-release fields (quotes removed), in file order.
pub fn parse_os_release(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.replace("\\\"", "\"").replace("\\\\", "\\")))
        })
        .collect()
}

/// `ID-VERSION_ID` (`debian-12`, `ubuntu-24.04`); rolling or testing releases
/// without VERSION_ID use VERSION_CODENAME (`debian-trixie`), then ID alone (`arch`).
pub fn os_release_id(fields: &[(String, String)]) -> Option<String> {
    let get = |k: &str| {
        fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let id = get("ID")?;
    Some(match get("VERSION_ID").or_else(|| get("VERSION_CODENAME")) {
        Some(v) => format!("{id}-{v}"),
        None => id.to_string(),
    })
}

/// `{os-release}` with the fields it used (for `--explain`).
pub fn os_release() -> Result<(String, Vec<(String, String)>)> {
    if cfg!(target_os = "macos") {
        let out = run(Path::new("sw_vers"), &["-productVersion"])?;
        let v = out.trim().to_string();
        return Ok((format!("macos-{v}"), vec![("sw_vers -productVersion".into(), v)]));
    }
    for p in ["/etc/os-release", "/usr/lib/os-release"] {
        match fs::read_to_string(p) {
            Ok(text) => {
                let fields = parse_os_release(&text);
                let id = os_release_id(&fields)
                    .ok_or_else(|| Error::Usage(format!("{{os-release}}: {p} has no ID field")))?;
                let shown = fields
                    .into_iter()
                    .filter(|(k, _)| matches!(k.as_str(), "ID" | "VERSION_ID" | "VERSION_CODENAME" | "PRETTY_NAME"))
                    .map(|(k, v)| (format!("{p} {k}"), v))
                    .collect();
                return Ok((id, shown));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read", p, e)),
        }
    }
    Err(Error::Usage(
        "{os-release}: neither /etc/os-release nor /usr/lib/os-release exists".into(),
    ))
}

/// `{image}`: `$ImageOS-$ImageVersion` on GitHub-hosted runners (both are set
/// there, e.g. `ubuntu24-20240609.1.0`), else `{os-release}`.
pub fn image() -> Result<(String, Vec<(String, String)>)> {
    let os = std::env::var("ImageOS").ok().filter(|v| !v.is_empty());
    let ver = std::env::var("ImageVersion").ok().filter(|v| !v.is_empty());
    match (os, ver) {
        (Some(o), Some(v)) => Ok((
            format!("{o}-{v}"),
            vec![("$ImageOS".into(), o), ("$ImageVersion".into(), v)],
        )),
        _ => {
            let (id, mut fields) = os_release()?;
            fields.insert(0, ("$ImageOS/$ImageVersion".into(), "unset, using os-release".into()));
            Ok((id, fields))
        }
    }
}

/// What `{python}`, `{python-minor}` and `{python-impl}` are made of.
#[derive(Debug, Clone)]
pub struct PythonInfo {
    /// The command that was run (as given, or found on PATH).
    pub command: PathBuf,
    /// `sys.executable`: the real interpreter behind shims (pyenv) and venvs.
    pub executable: String,
    /// `platform.python_version()`, e.g. `3.11.7`.
    pub version: String,
    /// `3.11`.
    pub minor: String,
    /// `sys.implementation.name-MAJORMINOR`, e.g. `cpython-311`.
    pub impl_tag: String,
}

const PY_PROBE: &str = "import sys, platform\n\
print(sys.executable)\n\
print(platform.python_version())\n\
print('%d.%d' % sys.version_info[:2])\n\
print('%s-%d%d' % ((sys.implementation.name,) + tuple(sys.version_info[:2])))";

/// The interpreter: `--python PY`, else the venv's, else `python3` on PATH.
pub fn python_command(python: Option<&Path>, venv: Option<&Path>) -> PathBuf {
    if let Some(p) = python {
        return p.to_path_buf();
    }
    if let Some(v) = venv {
        let bin = if cfg!(windows) {
            v.join("Scripts").join("python.exe")
        } else {
            v.join("bin").join("python")
        };
        return bin;
    }
    PathBuf::from(if cfg!(windows) { "python" } else { "python3" })
}

/// Runs the interpreter once (through any pyenv shim) and reads its identity.
pub fn python_info(cmd: &Path) -> Result<PythonInfo> {
    let out = run(cmd, &["-c", PY_PROBE]).map_err(|e| Error::Usage(format!("{{python}}: {e}")))?;
    let mut l = out.lines().map(str::trim);
    let (Some(exe), Some(ver), Some(minor), Some(tag)) = (l.next(), l.next(), l.next(), l.next()) else {
        return Err(Error::Usage(format!(
            "{{python}}: unexpected output from {}: {out:?}",
            cmd.display()
        )));
    };
    Ok(PythonInfo {
        command: cmd.to_path_buf(),
        executable: exe.to_string(),
        version: ver.to_string(),
        minor: minor.to_string(),
        impl_tag: tag.to_string(),
    })
}

/// A probe must answer within this long (a pyenv shim resolving a missing version can hang).
const RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

fn run(cmd: &Path, args: &[&str]) -> Result<String> {
    let mut c = Command::new(cmd);
    c.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let (ok, stdout, stderr) = crate::process::run_with_timeout(c, RUN_TIMEOUT)
        .map_err(|e| Error::Usage(format!("cannot run {}: {e}", cmd.display())))?;
    if !ok {
        return Err(Error::Usage(crate::process::failure_message(
            cmd,
            &stderr,
            "check that it runs, or pass a working interpreter with --python",
        )));
    }
    String::from_utf8(stdout).map_err(|_| Error::Usage(format!("{}: output is not UTF-8", cmd.display())))
}

/// Installed packages of the dpkg database under `root` (`/` for the running
/// system) as `(name, architecture, version)`, sorted. A stanza counts when
/// its `Status:` ends in `installed` (so `config-files`, `half-installed`…
/// are left out). Shared with the apt adapter.
pub fn installed_packages(root: &Path) -> Result<Vec<(String, String, String)>> {
    let path = root.join("var/lib/dpkg/status");
    let text = fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
    let text = String::from_utf8_lossy(&text);
    let mut out = parse_dpkg_status(&text);
    out.sort();
    Ok(out)
}

/// Parses dpkg's status file format (RFC 822-like stanzas separated by blank
/// lines; continuation lines start with whitespace and are ignored here).
pub fn parse_dpkg_status(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let (mut name, mut arch, mut ver, mut installed) = (None, None, None, false);
    let mut flush =
        |name: &mut Option<String>, arch: &mut Option<String>, ver: &mut Option<String>, inst: &mut bool| {
            if let (Some(n), true) = (name.take(), *inst) {
                out.push((n, arch.take().unwrap_or_default(), ver.take().unwrap_or_default()));
            }
            *arch = None;
            *ver = None;
            *inst = false;
        };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut name, &mut arch, &mut ver, &mut installed);
            continue;
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else { continue };
        let v = v.trim().to_string();
        match k {
            "Package" => name = Some(v),
            "Architecture" => arch = Some(v),
            "Version" => ver = Some(v),
            "Status" => installed = v.split_whitespace().last() == Some("installed"),
            _ => {}
        }
    }
    flush(&mut name, &mut arch, &mut ver, &mut installed);
    out
}

/// `{apt-base}`: BLAKE3 over the sorted `name\tarch\tversion\n` lines of the
/// installed package set, first 16 hex characters. Returns the count too.
pub fn apt_base(root: &Path) -> Result<(String, usize)> {
    let pkgs = installed_packages(root).map_err(|e| Error::Usage(format!("{{apt-base}}: {e}")))?;
    let mut h = blake3::Hasher::new();
    for (n, a, v) in &pkgs {
        h.update(n.as_bytes());
        h.update(b"\t");
        h.update(a.as_bytes());
        h.update(b"\t");
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    Ok((h.finalize().to_hex()[..16].to_string(), pkgs.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_ids() {
        let deb =
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n";
        assert_eq!(os_release_id(&parse_os_release(deb)).unwrap(), "debian-12");
        let ubu = "NAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nID=ubuntu\nID_LIKE=debian\n";
        assert_eq!(os_release_id(&parse_os_release(ubu)).unwrap(), "ubuntu-24.04");
        let sid = "ID=debian\nVERSION_CODENAME=trixie\n";
        assert_eq!(os_release_id(&parse_os_release(sid)).unwrap(), "debian-trixie");
        assert_eq!(os_release_id(&parse_os_release("ID=arch\n# c\n")).unwrap(), "arch");
        assert_eq!(os_release_id(&parse_os_release("NAME=x\n")), None);
    }

    #[test]
    fn dpkg_status() {
        let s = "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.2.13\nDescription: x\n more\n\n\
                 Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\n\
                 Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2\n";
        let mut p = parse_dpkg_status(s);
        p.sort();
        assert_eq!(
            p,
            vec![
                ("bash".into(), "amd64".into(), "5.2".into()),
                ("zlib1g".into(), "amd64".into(), "1:1.2.13".into())
            ]
        );
    }

    #[test]
    fn apt_base_is_order_independent() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let a = "Package: a\nStatus: install ok installed\nArchitecture: all\nVersion: 1\n";
        let b = "Package: b\nStatus: install ok installed\nArchitecture: all\nVersion: 2\n";
        for (d, text) in [(&d1, format!("{a}\n{b}")), (&d2, format!("{b}\n{a}"))] {
            fs::create_dir_all(d.path().join("var/lib/dpkg")).unwrap();
            fs::write(d.path().join("var/lib/dpkg/status"), text).unwrap();
        }
        let (k1, n) = apt_base(d1.path()).unwrap();
        assert_eq!(n, 2);
        assert_eq!(k1.len(), 16);
        assert_eq!(k1, apt_base(d2.path()).unwrap().0);
        assert!(apt_base(Path::new("/nonexistent")).is_err());
    }
}
