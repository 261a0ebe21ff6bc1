//! Shared state files that several packages write. A snapshot must not overwrite them (the target
//! may have other packages, users, triggers…), so they are merged record by record: the changes
//! the snapshot made relative to its baseline (records added/changed/removed) are applied to the
//! target's current file. Applying the same ops twice gives the same result, which is what makes
//! an interrupted restore re-runnable.

use super::dpkg::{self, parse_stanzas};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// How a shared file is split into keyed records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// deb822 stanzas keyed by `Package` + `Architecture` (dpkg status, apt extended_states).
    PkgStanzas,
    /// deb822 stanzas keyed by `Name` (debconf databases).
    NameStanzas,
    /// One record per line, the line is its own key (triggers, ucf, /etc/shells, statoverride).
    Lines,
    /// One record per line keyed by the text before the first ':' (passwd, group, shadow).
    ColonLines,
    /// Records of three lines keyed by the first (dpkg diversions).
    Diversions,
    /// update-alternatives admin file (merged by choice, see [`merge_alternatives`]).
    Alternatives,
}

/// Which shared-state class a root-relative path belongs to, if any.
pub fn class_of(rel: &str) -> Option<Class> {
    match rel {
        "var/lib/dpkg/status" | "var/lib/apt/extended_states" => return Some(Class::PkgStanzas),
        "var/cache/debconf/config.dat" | "var/cache/debconf/templates.dat" | "var/cache/debconf/passwords.dat" => {
            return Some(Class::NameStanzas)
        }
        "var/lib/ucf/hashfile" | "var/lib/ucf/registry" | "etc/shells" | "var/lib/dpkg/statoverride" => {
            return Some(Class::Lines)
        }
        "etc/passwd" | "etc/group" | "etc/shadow" | "etc/gshadow" => return Some(Class::ColonLines),
        "var/lib/dpkg/diversions" => return Some(Class::Diversions),
        _ => {}
    }
    if let Some(name) = rel.strip_prefix("var/lib/dpkg/triggers/") {
        if !name.contains('/') && name != "Lock" && name != "Unincorp" {
            return Some(Class::Lines);
        }
    }
    if let Some(name) = rel.strip_prefix("var/lib/dpkg/alternatives/") {
        if !name.contains('/') {
            return Some(Class::Alternatives);
        }
    }
    None
}

/// Split a file into (key, record text) in file order.
pub fn records(class: Class, text: &str) -> Vec<(String, String)> {
    match class {
        Class::PkgStanzas | Class::NameStanzas => parse_stanzas(text)
            .into_iter()
            .map(|s| {
                let key = if class == Class::PkgStanzas {
                    dpkg::pkg_key(&s)
                } else {
                    s.field("Name").map(str::to_string)
                };
                // A stanza without a key is kept as its own key so it survives merges.
                (key.unwrap_or_else(|| s.text.clone()), s.text)
            })
            .collect(),
        Class::Lines => text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| (l.to_string(), format!("{l}\n")))
            .collect(),
        Class::ColonLines => text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| (l.split(':').next().unwrap_or(l).to_string(), format!("{l}\n")))
            .collect(),
        Class::Diversions | Class::Alternatives => {
            let lines: Vec<&str> = text.lines().collect();
            lines
                .chunks(3)
                .map(|c| (c[0].to_string(), c.iter().map(|l| format!("{l}\n")).collect::<String>()))
                .collect()
        }
    }
}

fn join(class: Class, recs: &[(String, String)]) -> String {
    match class {
        Class::PkgStanzas | Class::NameStanzas => dpkg::write_stanzas(recs.iter().map(|(_, t)| t.as_str())),
        _ => recs.iter().map(|(_, t)| t.as_str()).collect(),
    }
}

/// What a snapshot did to one shared file, relative to its baseline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ops {
    /// Records added or changed by the snapshot: (key, full record text).
    pub set: Vec<(String, String)>,
    /// Keys of records the snapshot removed.
    pub remove: Vec<String>,
}

impl Ops {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// Record-level diff of `ours` against `base` (either may be absent = empty).
pub fn diff(class: Class, base: &str, ours: &str) -> Ops {
    let b: HashMap<String, String> = records(class, base).into_iter().collect();
    let o = records(class, ours);
    let okeys: HashSet<&str> = o.iter().map(|(k, _)| k.as_str()).collect();
    let set = o.iter().filter(|(k, t)| b.get(k) != Some(t)).cloned().collect();
    let mut remove: Vec<String> = b.keys().filter(|k| !okeys.contains(k.as_str())).cloned().collect();
    remove.sort();
    Ops { set, remove }
}

/// Apply ops to the target's current text: changed records replace in place, new ones are
/// appended, removed ones dropped; every other record of the target is kept as is.
pub fn apply(class: Class, theirs: &str, ops: &Ops) -> String {
    let set: HashMap<&str, &str> = ops.set.iter().map(|(k, t)| (k.as_str(), t.as_str())).collect();
    let remove: HashSet<&str> = ops.remove.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, t) in records(class, theirs) {
        if remove.contains(k.as_str()) || !seen.insert(k.clone()) {
            continue;
        }
        let t = set.get(k.as_str()).map(|s| s.to_string()).unwrap_or(t);
        out.push((k, t));
    }
    for (k, t) in &ops.set {
        if seen.insert(k.clone()) {
            out.push((k.clone(), t.clone()));
        }
    }
    join(class, &out)
}

/// A parsed update-alternatives admin file.
#[derive(Debug, Clone, PartialEq)]
pub struct Alt {
    pub mode: String,
    pub link: String,
    pub slaves: Vec<(String, String)>,
    pub choices: Vec<Choice>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub path: String,
    pub priority: i64,
    /// slave name -> path (slaves the choice does not provide are absent)
    pub slaves: HashMap<String, String>,
}

pub fn parse_alt(text: &str) -> Option<Alt> {
    let mut it = text.lines();
    let mode = it.next()?.to_string();
    let link = it.next()?.to_string();
    let mut slaves = Vec::new();
    loop {
        let name = it.next()?;
        if name.is_empty() {
            break;
        }
        slaves.push((name.to_string(), it.next()?.to_string()));
    }
    let mut choices = Vec::new();
    loop {
        let path = match it.next() {
            None => break,
            Some("") => break,
            Some(p) => p.to_string(),
        };
        let priority = it.next()?.trim().parse().ok()?;
        let mut sl = HashMap::new();
        for (name, _) in &slaves {
            let p = it.next()?;
            if !p.is_empty() {
                sl.insert(name.clone(), p.to_string());
            }
        }
        choices.push(Choice {
            path,
            priority,
            slaves: sl,
        });
    }
    Some(Alt {
        mode,
        link,
        slaves,
        choices,
    })
}

pub fn write_alt(a: &Alt) -> String {
    let mut s = format!("{}\n{}\n", a.mode, a.link);
    for (n, l) in &a.slaves {
        s.push_str(&format!("{n}\n{l}\n"));
    }
    s.push('\n');
    for c in &a.choices {
        s.push_str(&format!("{}\n{}\n", c.path, c.priority));
        for (n, _) in &a.slaves {
            s.push_str(c.slaves.get(n).map(String::as_str).unwrap_or(""));
            s.push('\n');
        }
    }
    s.push('\n');
    s
}

impl Alt {
    /// The choice the `/etc/alternatives` links should point to: the highest priority in auto
    /// mode (first wins ties, like update-alternatives), otherwise `current` if still a choice.
    pub fn selected<'a>(&'a self, current: Option<&str>) -> Option<&'a Choice> {
        if self.mode != "auto" {
            if let Some(c) = self.choices.iter().find(|c| Some(c.path.as_str()) == current) {
                return Some(c);
            }
        }
        let mut best: Option<&Choice> = None;
        for c in &self.choices {
            if best.is_none_or(|b| c.priority > b.priority) {
                best = Some(c);
            }
        }
        best
    }
}

/// Three-way merge of an alternatives admin file. Returns `None` when the file must not exist.
/// Choices the snapshot added/changed are applied, the ones it removed dropped, the target's
/// other choices kept; slave lists are unioned by name.
pub fn merge_alternatives(base: Option<&str>, ours: Option<&str>, theirs: Option<&str>) -> Option<String> {
    if theirs == base {
        return ours.map(str::to_string);
    }
    if ours == base {
        return theirs.map(str::to_string);
    }
    let o = ours.and_then(parse_alt);
    let t = theirs.and_then(parse_alt);
    let b = base.and_then(parse_alt);
    let (o, mut t) = match (o, t) {
        (Some(o), Some(t)) => (o, t),
        (o, None) => return o.map(|o| write_alt(&o)),
        (None, Some(t)) => {
            // The snapshot removed the group: drop the choices it knew, keep the target's others.
            let mut t = t;
            if let Some(b) = &b {
                t.choices.retain(|c| !b.choices.iter().any(|bc| bc.path == c.path));
            }
            return if t.choices.is_empty() {
                None
            } else {
                Some(write_alt(&t))
            };
        }
    };
    for (n, l) in &o.slaves {
        if !t.slaves.iter().any(|(tn, _)| tn == n) {
            t.slaves.push((n.clone(), l.clone()));
        }
    }
    if let Some(b) = &b {
        for bc in &b.choices {
            if !o.choices.iter().any(|c| c.path == bc.path) {
                t.choices.retain(|c| c.path != bc.path);
            }
        }
    }
    for oc in &o.choices {
        let unchanged = b.as_ref().is_some_and(|b| b.choices.contains(oc));
        if unchanged {
            continue;
        }
        match t.choices.iter_mut().find(|c| c.path == oc.path) {
            Some(c) => *c = oc.clone(),
            None => t.choices.push(oc.clone()),
        }
    }
    Some(write_alt(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanza_ops_apply_keep_target() {
        let base = "Package: a\nArchitecture: amd64\nVersion: 1\n\n";
        let ours = "Package: a\nArchitecture: amd64\nVersion: 1\n\nPackage: jq\nArchitecture: amd64\nVersion: 2\n\n";
        let theirs = "Package: a\nArchitecture: amd64\nVersion: 1\n\nPackage: z\nArchitecture: amd64\nVersion: 9\n\n";
        let ops = diff(Class::PkgStanzas, base, ours);
        assert_eq!(ops.set.len(), 1);
        let merged = apply(Class::PkgStanzas, theirs, &ops);
        assert!(merged.contains("Package: z") && merged.contains("Package: jq"));
        // idempotent
        assert_eq!(apply(Class::PkgStanzas, &merged, &ops), merged);
    }

    #[test]
    fn lines_union() {
        let ops = diff(Class::Lines, "a x\n", "a x\nb y\n");
        assert_eq!(apply(Class::Lines, "a x\nc z\n", &ops), "a x\nc z\nb y\n");
    }

    #[test]
    fn alternatives_roundtrip_and_union() {
        let pager = "auto\n/usr/bin/pager\npager.1.gz\n/usr/share/man/man1/pager.1.gz\n\n/bin/more\n50\n/usr/share/man/man1/more.1.gz\n\n";
        assert_eq!(write_alt(&parse_alt(pager).unwrap()), pager);
        let ours = "auto\n/usr/bin/pager\npager.1.gz\n/usr/share/man/man1/pager.1.gz\n\n/bin/more\n50\n/usr/share/man/man1/more.1.gz\n/usr/bin/less\n77\n/usr/share/man/man1/less.1.gz\n\n";
        let theirs = "auto\n/usr/bin/pager\npager.1.gz\n/usr/share/man/man1/pager.1.gz\n\n/bin/more\n50\n/usr/share/man/man1/more.1.gz\n/usr/bin/most\n60\n\n\n";
        let m = merge_alternatives(Some(pager), Some(ours), Some(theirs)).unwrap();
        let a = parse_alt(&m).unwrap();
        assert_eq!(a.choices.len(), 3);
        assert_eq!(a.selected(None).unwrap().path, "/usr/bin/less");
    }
}
