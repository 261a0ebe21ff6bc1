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
    /// One record per line, the line is its own key (triggers, ucf registry, /etc/shells), except
    /// statoverride and ucf's hashfile, keyed by the path they describe (see [`line_key`]).
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

/// The key of one line of a [`Class::Lines`] file at `path`: dpkg's statoverride
/// (`user group mode path`) and ucf's hashfile (`hash  path`) hold one record per path (two
/// overrides for one path make dpkg abort); other files are keyed by the whole line. Applied to a
/// key that is already a path it returns it unchanged, so ops keyed either way re-key alike.
pub fn line_key(path: &str, line: &str) -> String {
    let skip = match path {
        "var/lib/dpkg/statoverride" => 3,
        "var/lib/ucf/hashfile" => 1,
        _ => return line.to_string(),
    };
    let mut rest = line.trim_start();
    for _ in 0..skip {
        match rest.split_once(char::is_whitespace) {
            Some((_, r)) => rest = r.trim_start(),
            None => return line.to_string(),
        }
    }
    if rest.is_empty() {
        line.to_string()
    } else {
        rest.to_string()
    }
}

/// Split a file at root-relative `path` into (key, record text) in file order.
pub fn records(path: &str, class: Class, text: &str) -> Vec<(String, String)> {
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
            .map(|l| (line_key(path, l), format!("{l}\n")))
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
pub fn diff(path: &str, class: Class, base: &str, ours: &str) -> Ops {
    let b: HashMap<String, String> = records(path, class, base).into_iter().collect();
    let o = records(path, class, ours);
    let okeys: HashSet<&str> = o.iter().map(|(k, _)| k.as_str()).collect();
    let set = o.iter().filter(|(k, t)| b.get(k) != Some(t)).cloned().collect();
    let mut remove: Vec<String> = b.keys().filter(|k| !okeys.contains(k.as_str())).cloned().collect();
    remove.sort();
    Ops { set, remove }
}

/// Apply ops to the target's current text: changed records replace in place, new ones are
/// appended, removed ones dropped; every other record of the target is kept as is. A group line
/// (`etc/group`, `etc/gshadow`) the snapshot changed keeps the target's members too (union).
pub fn apply(path: &str, class: Class, theirs: &str, ops: &Ops) -> String {
    // Re-key the ops the way `records` keys this file (snapshots taken before statoverride and
    // hashfile were keyed by path carry whole-line keys).
    let set: Vec<(String, &str)> = ops
        .set
        .iter()
        .map(|(k, t)| match class {
            Class::Lines => (line_key(path, t.trim_end_matches('\n')), t.as_str()),
            _ => (k.clone(), t.as_str()),
        })
        .collect();
    let set_map: HashMap<&str, &str> = set.iter().map(|(k, t)| (k.as_str(), *t)).collect();
    let remove: HashSet<String> = ops
        .remove
        .iter()
        .map(|k| match class {
            Class::Lines => line_key(path, k),
            _ => k.clone(),
        })
        .filter(|k| !set_map.contains_key(k.as_str()))
        .collect();
    let mut seen = HashSet::new();
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, t) in records(path, class, theirs) {
        if remove.contains(&k) || !seen.insert(k.clone()) {
            continue;
        }
        let t = match set_map.get(k.as_str()) {
            Some(ours) if is_group_file(path) => union_members(path, &t, ours),
            Some(ours) => ours.to_string(),
            None => t,
        };
        out.push((k, t));
    }
    // New records go where the file's own writer would put them: in order for files it keeps
    // sorted (when the target's file is in that order); first for dpkg's diversions (dpkg keeps
    // them in a list it prepends to); else at the end (as apt, adduser and dpkg's trigger and
    // statoverride files append).
    let keyed: Option<Vec<(String, String)>> = out.iter().map(|(k, t)| sort_key(path, k, t)).collect();
    let sorted = keyed.as_ref().is_some_and(|ks| ks.windows(2).all(|w| w[0] <= w[1]));
    let mut front = 0;
    for (k, t) in &set {
        if seen.insert(k.clone()) {
            let at = match (sorted, sort_key(path, k, t)) {
                (true, Some(sk)) => out.partition_point(|(ok, ot)| sort_key(path, ok, ot).is_some_and(|o| o <= sk)),
                _ if class == Class::Diversions => {
                    front += 1;
                    front - 1
                }
                _ => out.len(),
            };
            out.insert(at, (k.clone(), t.to_string()));
        }
    }
    join(class, &out)
}

/// The order in which a file's writer keeps its records, for files it keeps sorted: dpkg's
/// status by package name, then architecture; debconf's databases by name (Perl's `sort`).
fn sort_key(path: &str, key: &str, text: &str) -> Option<(String, String)> {
    match path {
        "var/lib/dpkg/status" => {
            let st = parse_stanzas(text).into_iter().next()?;
            Some((
                st.field("Package")?.to_string(),
                st.field("Architecture").unwrap_or("").to_string(),
            ))
        }
        "var/cache/debconf/config.dat" | "var/cache/debconf/templates.dat" | "var/cache/debconf/passwords.dat" => {
            Some((key.to_string(), String::new()))
        }
        _ => None,
    }
}

fn is_group_file(path: &str) -> bool {
    path == "etc/group" || path == "etc/gshadow"
}

/// `ours` group line with the member list (and gshadow's admin list) extended by the target's.
fn union_members(path: &str, theirs: &str, ours: &str) -> String {
    let t: Vec<&str> = theirs.trim_end_matches('\n').split(':').collect();
    let mut o: Vec<String> = ours.trim_end_matches('\n').split(':').map(str::to_string).collect();
    // group: name:passwd:gid:members; gshadow: name:passwd:admins:members.
    let lists: &[usize] = if path == "etc/gshadow" { &[2, 3] } else { &[3] };
    for &i in lists {
        let (Some(tl), true) = (t.get(i), i < o.len()) else {
            continue;
        };
        let mut names: Vec<String> = o[i].split(',').filter(|n| !n.is_empty()).map(str::to_string).collect();
        for n in tl.split(',').filter(|n| !n.is_empty()) {
            if !names.iter().any(|x| x == n) {
                names.push(n.to_string());
            }
        }
        o[i] = names.join(",");
    }
    format!("{}\n", o.join(":"))
}

/// For `etc/passwd` and `etc/group`: records the snapshot adds or changes whose uid/gid the
/// target already gives to another name. Restoring them would make two names share one id, and
/// the snapshot's files (stored with numeric owners) would belong to the target's user.
pub fn id_conflicts(path: &str, theirs: &str, ops: &Ops) -> Vec<String> {
    let what = match path {
        "etc/passwd" => "uid",
        "etc/group" => "gid",
        _ => return Vec::new(),
    };
    let id_of = |t: &str| t.trim_end_matches('\n').split(':').nth(2).map(str::to_string);
    let held: Vec<(String, String)> = records(path, Class::ColonLines, theirs)
        .into_iter()
        .filter_map(|(k, t)| Some((k, id_of(&t)?)))
        .collect();
    let mut out = Vec::new();
    for (name, t) in &ops.set {
        let Some(id) = id_of(t) else { continue };
        for (other, _) in held.iter().filter(|(o, i)| *i == id && o != name) {
            out.push(format!(
                "/{path}: the snapshot's {name} has {what} {id}, which the target's {other} already has"
            ));
        }
    }
    out
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
    fn new_records_keep_a_sorted_status_sorted() {
        let st = |n: &str| format!("Package: {n}\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n\n");
        let base = format!("{}{}", st("libfoo"), st("zlib1g"));
        let ours = format!("{}{}{}", st("libfoo"), st("zlib1g"), st("libfoo-bar"));
        let ops = diff("var/lib/dpkg/status", Class::PkgStanzas, &base, &ours);
        // Sorted by name, as dpkg writes it ("libfoo-bar" after "libfoo", not by "name:arch").
        let want = format!("{}{}{}", st("libfoo"), st("libfoo-bar"), st("zlib1g"));
        assert_eq!(apply("var/lib/dpkg/status", Class::PkgStanzas, &base, &ops), want);
        // A target file out of order (edited by hand) gets new records at the end.
        let theirs = format!("{}{}", st("zlib1g"), st("libfoo"));
        let got = apply("var/lib/dpkg/status", Class::PkgStanzas, &theirs, &ops);
        assert!(got.ends_with(&st("libfoo-bar")), "{got}");
        // dpkg-divert prepends: the snapshot's new diversions come first, in its order.
        let base = "/bin/sh\n/bin/sh.distrib\ndash\n";
        let ours = format!("/a\n/a.x\np\n/b\n/b.x\np\n{base}");
        let ops = diff("var/lib/dpkg/diversions", Class::Diversions, base, &ours);
        assert_eq!(apply("var/lib/dpkg/diversions", Class::Diversions, base, &ops), ours);
        // Files their writers append to stay appended.
        let ops = diff("etc/shells", Class::Lines, "/bin/sh\n", "/bin/sh\n/bin/bash\n");
        assert_eq!(
            apply("etc/shells", Class::Lines, "/bin/zsh\n", &ops),
            "/bin/zsh\n/bin/bash\n"
        );
    }

    #[test]
    fn stanza_ops_apply_keep_target() {
        let base = "Package: a\nArchitecture: amd64\nVersion: 1\n\n";
        let ours = "Package: a\nArchitecture: amd64\nVersion: 1\n\nPackage: jq\nArchitecture: amd64\nVersion: 2\n\n";
        let theirs = "Package: a\nArchitecture: amd64\nVersion: 1\n\nPackage: z\nArchitecture: amd64\nVersion: 9\n\n";
        let ops = diff("var/lib/dpkg/status", Class::PkgStanzas, base, ours);
        assert_eq!(ops.set.len(), 1);
        let merged = apply("var/lib/dpkg/status", Class::PkgStanzas, theirs, &ops);
        assert!(merged.contains("Package: z") && merged.contains("Package: jq"));
        // idempotent
        assert_eq!(apply("var/lib/dpkg/status", Class::PkgStanzas, &merged, &ops), merged);
    }

    #[test]
    fn lines_union() {
        let ops = diff("etc/shells", Class::Lines, "a x\n", "a x\nb y\n");
        assert_eq!(apply("etc/shells", Class::Lines, "a x\nc z\n", &ops), "a x\nc z\nb y\n");
    }

    #[test]
    fn uid_and_gid_held_by_another_name_conflict() {
        let p = "etc/passwd";
        let base = "root:x:0:0:root:/root:/bin/bash\n";
        let ours = "root:x:0:0:root:/root:/bin/bash\n_jq:x:106:65534::/nonexistent:/usr/sbin/nologin\n";
        let ops = diff(p, Class::ColonLines, base, ours);
        let theirs = "root:x:0:0:root:/root:/bin/bash\nsshd:x:106:65534::/run/sshd:/usr/sbin/nologin\n";
        let c = id_conflicts(p, theirs, &ops);
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(
            c[0].contains("_jq") && c[0].contains("sshd") && c[0].contains("uid 106"),
            "{c:?}"
        );
        // Same name, same id on the target, or a free id: fine.
        assert!(id_conflicts(p, ours, &ops).is_empty());
        assert!(id_conflicts(p, base, &ops).is_empty());
        let g = "etc/group";
        let ops = diff(g, Class::ColonLines, "root:x:0:\n", "root:x:0:\n_ssh:x:101:\n");
        let c = id_conflicts(g, "root:x:0:\nnetdev:x:101:\n", &ops);
        assert!(
            c.len() == 1 && c[0].contains("gid 101") && c[0].contains("netdev"),
            "{c:?}"
        );
    }

    #[test]
    fn group_members_are_unioned() {
        let g = "etc/group";
        let ops = diff(g, Class::ColonLines, "users:x:100:\n", "users:x:100:jq\n");
        let merged = apply(g, Class::ColonLines, "users:x:100:alice,bob\n", &ops);
        assert_eq!(merged, "users:x:100:jq,alice,bob\n");
        assert_eq!(apply(g, Class::ColonLines, &merged, &ops), merged);
        let gs = "etc/gshadow";
        let ops = diff(gs, Class::ColonLines, "users:!::\n", "users:!:adm1:jq\n");
        assert_eq!(
            apply(gs, Class::ColonLines, "users:!:adm2:alice\n", &ops),
            "users:!:adm1,adm2:jq,alice\n"
        );
    }

    #[test]
    fn statoverride_and_hashfile_keyed_by_path() {
        let so = "var/lib/dpkg/statoverride";
        let ops = diff(so, Class::Lines, "", "root crontab 2755 /usr/bin/crontab\n");
        let merged = apply(
            so,
            Class::Lines,
            "root root 755 /usr/bin/crontab\nroot root 700 /x\n",
            &ops,
        );
        assert_eq!(merged, "root crontab 2755 /usr/bin/crontab\nroot root 700 /x\n");
        // Whole-line keyed ops of older snapshots (changed = set new + remove old) re-key alike.
        let old = Ops {
            set: vec![(
                "root crontab 2755 /usr/bin/crontab".into(),
                "root crontab 2755 /usr/bin/crontab\n".into(),
            )],
            remove: vec!["root root 755 /usr/bin/crontab".into()],
        };
        assert_eq!(
            apply(so, Class::Lines, "root root 755 /usr/bin/crontab\n", &old),
            "root crontab 2755 /usr/bin/crontab\n"
        );
        let hf = "var/lib/ucf/hashfile";
        let ops = diff(hf, Class::Lines, "", "aaaa  /etc/x.conf\n");
        assert_eq!(
            apply(hf, Class::Lines, "bbbb  /etc/x.conf\ncccc  /etc/y\n", &ops),
            "aaaa  /etc/x.conf\ncccc  /etc/y\n"
        );
        let ops = diff(hf, Class::Lines, "aaaa  /etc/x.conf\n", "");
        assert_eq!(apply(hf, Class::Lines, "bbbb  /etc/x.conf\n", &ops), "");
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
