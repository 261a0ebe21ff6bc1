//! Baseline vs now: which paths apt added or changed, which it removed, and what it did to the
//! shared state files (as record-level merge ops).

use super::baseline::{self, Baseline, Rec, KIND_DIR, KIND_OTHER, KIND_SYMLINK};
use super::dpkg::{self, Pkg};
use super::identity::Identity;
use super::merge::{self, Class, Ops};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Files that change on every apt run but carry nothing a restore needs (regenerated caches,
/// dpkg's backups and locks).
pub fn ignored(rel: &str) -> bool {
    const EXACT: &[&str] = &[
        "etc/ld.so.cache",
        "var/cache/ldconfig/aux-cache",
        "var/lib/dpkg/lock",
        "var/lib/dpkg/lock-frontend",
        "var/lib/dpkg/triggers/Lock",
        "var/lib/dpkg/triggers/Unincorp",
        "var/lib/dpkg/available",
        "etc/passwd-",
        "etc/group-",
        "etc/shadow-",
        "etc/gshadow-",
    ];
    if EXACT.contains(&rel) {
        return true;
    }
    if (rel.starts_with("var/lib/dpkg/") || rel.starts_with("var/cache/debconf/")) && rel.ends_with("-old") {
        return true;
    }
    if rel.starts_with("var/lib/dpkg/updates/") || rel.starts_with("var/lib/dpkg/tmp.") {
        return true;
    }
    // ucf keeps numbered backups of its hashfile/registry.
    if let Some(n) = rel.strip_prefix("var/lib/ucf/") {
        if n.rsplit('.')
            .next()
            .is_some_and(|s| s.chars().all(|c| c.is_ascii_digit()))
            && n.contains('.')
        {
            return true;
        }
    }
    false
}

/// What a snapshot did to one shared (merged) file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SharedChange {
    pub path: String,
    pub class: Class,
    /// Record ops (all classes but alternatives).
    #[serde(default, skip_serializing_if = "Ops::is_empty")]
    pub ops: Ops,
    /// Alternatives: the admin file at baseline time and after the install (`None` = absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ours: Option<String>,
    /// Mode and owner of the file after the install, used when the target lacks it.
    #[serde(default)]
    pub mode: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

/// A package the snapshot installed or changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PkgChange {
    pub name: String,
    pub arch: String,
    pub version: String,
    /// Version in the base, `None` when newly installed.
    pub base_version: Option<String>,
}

pub struct Delta {
    /// Current lstat of each payload path (files, symlinks, dirs), sorted, parents included.
    pub payload: Vec<Rec>,
    /// Paths present in the baseline and gone now.
    pub removed: Vec<String>,
    pub shared: Vec<SharedChange>,
    pub packages: Vec<PkgChange>,
    pub removed_packages: Vec<Pkg>,
    /// Per-install identity the install created (left out of the payload).
    pub identity: Vec<Identity>,
}

fn differs(a: &Rec, b: &Rec) -> bool {
    if a.kind != b.kind || a.mode != b.mode || a.uid != b.uid || a.gid != b.gid {
        return true;
    }
    // A directory's times change whenever an entry is added; that alone is not a change to it.
    a.kind != KIND_DIR && (a.size != b.size || a.mtime_ns != b.mtime_ns || a.ctime_ns != b.ctime_ns || a.ino != b.ino)
}

/// Compute the delta of ROOT against its baseline.
pub fn compute(root: &Path, base: &Baseline) -> Result<Delta> {
    let excl: Vec<String> = base.header.excluded_store.iter().cloned().collect();
    let now = baseline::scan(root, &excl)?;
    let old: HashMap<&[u8], &Rec> = base.recs.iter().map(|r| (r.path.as_slice(), r)).collect();
    let cur: HashMap<&[u8], &Rec> = now.iter().map(|r| (r.path.as_slice(), r)).collect();

    let mut picked: BTreeSet<&[u8]> = BTreeSet::new();
    let mut shared_paths: BTreeSet<String> = BTreeSet::new();
    let mut identity: BTreeSet<Identity> = BTreeSet::new();
    for r in &now {
        if r.kind == KIND_OTHER {
            continue;
        }
        let changed = old.get(r.path.as_slice()).is_none_or(|o| differs(o, r));
        if !changed {
            continue;
        }
        let rel = String::from_utf8_lossy(&r.path);
        if ignored(&rel) {
            continue;
        }
        let link = (r.kind == KIND_SYMLINK)
            .then(|| std::fs::read_link(root.join(&*rel)).ok())
            .flatten()
            .map(|t| t.into_os_string().into_encoded_bytes());
        if let Some(id) = Identity::of(&rel, link.as_deref()) {
            identity.insert(id);
            continue;
        }
        if merge::class_of(&rel).is_some() && r.kind != KIND_DIR {
            shared_paths.insert(rel.into_owned());
            continue;
        }
        picked.insert(&r.path);
        // Parents, so a restore can create missing directories with the right mode and owner.
        let mut p: &[u8] = &r.path;
        while let Some(i) = p.iter().rposition(|&c| c == b'/') {
            p = &p[..i];
            if !picked.insert(p) {
                break;
            }
        }
    }
    let mut removed = Vec::new();
    for r in &base.recs {
        if !cur.contains_key(r.path.as_slice()) {
            let rel = String::from_utf8_lossy(&r.path).into_owned();
            if ignored(&rel) {
                continue;
            }
            if merge::class_of(&rel).is_some() {
                shared_paths.insert(rel);
            } else {
                removed.push(rel);
            }
        }
    }
    let payload: Vec<Rec> = picked.iter().filter_map(|p| cur.get(p).map(|r| (*r).clone())).collect();

    let mut shared = Vec::new();
    let mut status_now = None;
    for path in shared_paths {
        let class = merge::class_of(&path).expect("classified above");
        let base_text = base.header.shared.get(&path).cloned();
        let p = root.join(&path);
        let (mode, uid, gid) = std::fs::symlink_metadata(&p)
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.mode() & 0o7777, m.uid(), m.gid())
            })
            .unwrap_or((0o644, 0, 0));
        let ours = match std::fs::read(&p) {
            Ok(b) => Some(
                String::from_utf8(b)
                    .map_err(|_| Error::Other(format!("{}: shared state file is not UTF-8", p.display())))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("read", &p, e)),
        };
        if path == "var/lib/dpkg/status" {
            status_now = ours.clone();
        }
        if class == Class::Alternatives {
            if base_text != ours {
                shared.push(SharedChange {
                    path,
                    class,
                    ops: Ops::default(),
                    base: base_text,
                    ours,
                    mode,
                    uid,
                    gid,
                });
            }
            continue;
        }
        let ops = merge::diff(
            &path,
            class,
            base_text.as_deref().unwrap_or(""),
            ours.as_deref().unwrap_or(""),
        );
        if !ops.is_empty() {
            shared.push(SharedChange {
                path,
                class,
                ops,
                base: None,
                ours: None,
                mode,
                uid,
                gid,
            });
        }
    }

    // Packages: compare the installed sets (the status file's own ops also carry e.g. Status changes).
    let base_pkgs: BTreeMap<(String, String), String> = base
        .header
        .packages
        .iter()
        .map(|p| ((p.name.clone(), p.arch.clone()), p.version.clone()))
        .collect();
    let now_pkgs = match status_now {
        Some(t) => dpkg::installed_from_status(&t),
        None => base.header.packages.clone(),
    };
    let mut packages = Vec::new();
    let mut present = BTreeSet::new();
    for p in &now_pkgs {
        let k = (p.name.clone(), p.arch.clone());
        present.insert(k.clone());
        let bv = base_pkgs.get(&k).cloned();
        if bv.as_deref() != Some(p.version.as_str()) {
            packages.push(PkgChange {
                name: p.name.clone(),
                arch: p.arch.clone(),
                version: p.version.clone(),
                base_version: bv,
            });
        }
    }
    let removed_packages = base
        .header
        .packages
        .iter()
        .filter(|p| !present.contains(&(p.name.clone(), p.arch.clone())))
        .cloned()
        .collect();
    Ok(Delta {
        payload,
        removed,
        shared,
        packages,
        removed_packages,
        identity: identity.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const STATUS: &str = "Package: base\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n\n";

    #[test]
    fn delta_finds_added_changed_removed_and_shared_ops() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        let store = tempfile::tempdir().unwrap();
        for d in ["usr/bin", "etc", "var/lib/dpkg/info", "var/log", "var/lib/apt/lists"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("var/lib/dpkg/status"), STATUS).unwrap();
        fs::write(root.join("usr/bin/old"), "x").unwrap();
        fs::write(root.join("etc/gone"), "x").unwrap();
        fs::write(root.join("etc/ld.so.cache"), "1").unwrap();
        super::baseline::begin(store.path(), &root).unwrap();

        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::create_dir_all(root.join("usr/share/new/empty")).unwrap();
        fs::write(root.join("usr/bin/new"), "y").unwrap();
        fs::write(root.join("usr/bin/old"), "changed").unwrap();
        fs::remove_file(root.join("etc/gone")).unwrap();
        fs::write(root.join("etc/ld.so.cache"), "2").unwrap();
        fs::write(root.join("var/log/noise"), "x").unwrap();
        fs::write(root.join("var/lib/apt/lists/noise"), "x").unwrap();
        let st = format!("{STATUS}Package: new\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2\n\n");
        fs::write(root.join("var/lib/dpkg/status"), st).unwrap();

        let b = super::baseline::read(&super::baseline::baseline_path(store.path(), &root)).unwrap();
        assert_eq!(b.header.packages.len(), 1);
        let d = compute(&root, &b).unwrap();
        let paths: Vec<String> = d
            .payload
            .iter()
            .map(|r| String::from_utf8_lossy(&r.path).into_owned())
            .collect();
        for p in ["usr/bin/new", "usr/bin/old", "usr/share/new/empty", "usr/share", "usr"] {
            assert!(paths.contains(&p.to_string()), "{p} missing from {paths:?}");
        }
        for p in [
            "etc/ld.so.cache",
            "var/log/noise",
            "var/lib/apt/lists/noise",
            "var/lib/dpkg/status",
        ] {
            assert!(!paths.contains(&p.to_string()), "{p} must not be payload");
        }
        assert_eq!(d.removed, vec!["etc/gone".to_string()]);
        assert_eq!(d.packages.len(), 1);
        assert_eq!(d.packages[0].name, "new");
        assert_eq!(d.packages[0].base_version, None);
        let status = d.shared.iter().find(|s| s.path == "var/lib/dpkg/status").unwrap();
        assert_eq!(status.ops.set.len(), 1);
        assert!(status.ops.remove.is_empty());
    }
}
