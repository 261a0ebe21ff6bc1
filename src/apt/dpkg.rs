//! dpkg's deb822-style state files: parse into stanzas that keep their exact text, look up
//! fields, list installed packages, and map files to their owning packages (`dpkg -S`).
//!
//! `key::system::installed_packages` (for `{apt-base}`) counts only fully `installed` stanzas and
//! drops the stanza text; apt needs both the exact text (to merge `status`) and every package
//! whose files are on disk (unpacked, half-configured… still own files), hence this parser.

use crate::error::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// One paragraph of a deb822 file, text kept byte-exact (ends with '\n', no blank line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    pub text: String,
}

impl Stanza {
    /// Value of a simple field (first line only, trimmed), `None` when absent.
    pub fn field(&self, name: &str) -> Option<&str> {
        for line in self.text.lines() {
            if line.starts_with(' ') || line.starts_with('\t') {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case(name) {
                    return Some(v.trim());
                }
            }
        }
        None
    }
}

/// Split a deb822 file into stanzas; any run of blank lines separates stanzas.
pub fn parse_stanzas(text: &str) -> Vec<Stanza> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.split_inclusive('\n') {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(Stanza {
                    text: std::mem::take(&mut cur),
                });
            }
        } else {
            cur.push_str(line);
            if !line.ends_with('\n') {
                cur.push('\n');
            }
        }
    }
    if !cur.is_empty() {
        out.push(Stanza { text: cur });
    }
    out
}

/// Serialize stanzas the way dpkg writes them: each paragraph followed by one blank line.
pub fn write_stanzas<'a>(stanzas: impl IntoIterator<Item = &'a str>) -> String {
    let mut s = String::new();
    for t in stanzas {
        s.push_str(t);
        s.push('\n');
    }
    s
}

/// A package as the fingerprint and the compatibility rule see it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pkg {
    pub name: String,
    pub arch: String,
    pub version: String,
}

/// `Package:Architecture` key of a status/extended_states stanza.
pub fn pkg_key(s: &Stanza) -> Option<String> {
    let name = s.field("Package")?;
    let arch = s.field("Architecture").unwrap_or("");
    Some(format!("{name}:{arch}"))
}

/// Whether a status stanza describes a package whose files are on disk
/// (anything but `not-installed` and `config-files`).
pub fn is_present(s: &Stanza) -> bool {
    match s.field("Status").and_then(|st| st.split_whitespace().nth(2)) {
        Some("not-installed") | Some("config-files") | None => false,
        Some(_) => true,
    }
}

/// Installed packages (name, arch, version) of a status file's text, sorted.
pub fn installed_from_status(text: &str) -> Vec<Pkg> {
    let mut v: Vec<Pkg> = parse_stanzas(text)
        .iter()
        .filter(|s| is_present(s))
        .filter_map(|s| {
            Some(Pkg {
                name: s.field("Package")?.to_string(),
                arch: s.field("Architecture").unwrap_or("").to_string(),
                version: s.field("Version").unwrap_or("").to_string(),
            })
        })
        .collect();
    v.sort();
    v
}

/// Installed packages of ROOT (from `ROOT/var/lib/dpkg/status`); empty when there is no dpkg.
pub fn installed_packages(root: &Path) -> Result<Vec<Pkg>> {
    let p = root.join("var/lib/dpkg/status");
    match std::fs::read_to_string(&p) {
        Ok(t) => Ok(installed_from_status(&t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io("read", &p, e)),
    }
}

/// Owners (package names, arch qualifier stripped) of the given absolute paths ("/usr/bin/jq")
/// according to ROOT's `var/lib/dpkg/info/*.list`. Paths owned by nobody are absent.
pub fn owners(root: &Path, paths: &HashSet<String>) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if paths.is_empty() {
        return Ok(out);
    }
    let info = root.join("var/lib/dpkg/info");
    let rd = match std::fs::read_dir(&info) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io("read directory", &info, e)),
    };
    for ent in rd {
        let ent = ent.at("read directory", &info)?;
        let name = ent.file_name().to_string_lossy().into_owned();
        let Some(pkg) = name.strip_suffix(".list") else {
            continue;
        };
        let pkg = pkg.split(':').next().unwrap_or(pkg).to_string();
        let text = std::fs::read(ent.path()).at("read", ent.path())?;
        for line in String::from_utf8_lossy(&text).lines() {
            if paths.contains(line) {
                out.entry(line.to_string()).or_default().push(pkg.clone());
            }
        }
    }
    Ok(out)
}

/// Compare two Debian versions the way `dpkg --compare-versions` does.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((u, r)) => (epoch, u, r),
            None => (epoch, rest, ""),
        }
    }
    fn order(c: Option<u8>) -> i32 {
        match c {
            Some(b'~') => -1,
            None => 0,
            Some(c) if c.is_ascii_digit() => 0,
            Some(c) if c.is_ascii_alphabetic() => c as i32,
            Some(c) => c as i32 + 256,
        }
    }
    fn part(a: &str, b: &str) -> std::cmp::Ordering {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
                let (x, y) = (order(a.get(i).copied()), order(b.get(j).copied()));
                if x != y {
                    return x.cmp(&y);
                }
                i += 1;
                j += 1;
            }
            let si = i;
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let x = std::str::from_utf8(&a[si..i]).unwrap_or("0").trim_start_matches('0');
            let y = std::str::from_utf8(&b[sj..j]).unwrap_or("0").trim_start_matches('0');
            let o = x.len().cmp(&y.len()).then_with(|| x.cmp(y));
            if o.is_ne() {
                return o;
            }
        }
        std::cmp::Ordering::Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb).then_with(|| part(ua, ub)).then_with(|| part(ra, rb))
}

/// Whether version `have` satisfies the dependency relation `op want` (`>=`, `<<`, `=`…).
pub fn version_satisfies(have: &str, op: &str, want: &str) -> bool {
    use std::cmp::Ordering::*;
    let o = compare_versions(have, want);
    match op {
        ">=" | ">" => o != Less,
        "<=" | "<" => o != Greater,
        ">>" => o == Greater,
        "<<" => o == Less,
        _ => o == Equal,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debian_version_order() {
        use std::cmp::Ordering::*;
        for (a, b, o) in [
            ("1.0", "1.0", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1:0.9", "2.0", Greater),
            ("2.36-9+deb12u4", "2.36-9", Greater),
            ("1.10", "1.9", Greater),
            ("1.0a", "1.0+", Less),
            ("6.9.8-1", "6.9.8-1", Equal),
        ] {
            assert_eq!(compare_versions(a, b), o, "{a} vs {b}");
        }
        assert!(version_satisfies("2.36-9+deb12u4", ">=", "2.34"));
        assert!(!version_satisfies("2.33", ">=", "2.34"));
        assert!(version_satisfies("1.6-2.1", "=", "1.6-2.1"));
        assert!(version_satisfies("1", "<<", "2"));
    }

    use super::*;

    const STATUS: &str = "Package: a\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\nDescription: x\n y\n\nPackage: b\nStatus: deinstall ok config-files\nArchitecture: all\nVersion: 2\n\n";

    #[test]
    fn roundtrip_exact() {
        let st = parse_stanzas(STATUS);
        assert_eq!(st.len(), 2);
        assert_eq!(write_stanzas(st.iter().map(|s| s.text.as_str())), STATUS);
        assert_eq!(pkg_key(&st[0]).unwrap(), "a:amd64");
    }

    #[test]
    fn installed_skips_config_files() {
        let v = installed_from_status(STATUS);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].version, "1");
    }
}
