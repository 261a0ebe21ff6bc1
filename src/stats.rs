//! `envsnap stats`: hit ratios, restore times and an estimate of the time the cache saves,
//! computed from recorded [`Event`]s per key group.
//!
//! A group is the template that produced the key when the event recorded one, else the key
//! with its hash part replaced by `*` (see [`key_group`]). The install cost of a group is the
//! median gap between a miss of a key and the next save of that same key (what ran between
//! them is the install the cache would have replaced), within [`PAIR_WINDOW`]. The time saved
//! per exact hit is that cost minus the median restore time; fallback hits are not counted as
//! savings, since what they save depends on what was still installed after them.

use crate::events::{Event, HitKind, Op};
use std::collections::{BTreeMap, HashMap};

/// A save further than this after a miss is not that miss's install (GitHub's longest job).
pub const PAIR_WINDOW_NS: i64 = 6 * 3600 * 1_000_000_000;

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct GroupStats {
    pub group: String,
    pub restores: u64,
    pub exact: u64,
    pub fallback: u64,
    pub misses: u64,
    pub errors: u64,
    /// (exact + fallback) / restores.
    pub hit_ratio: Option<f64>,
    /// exact / restores.
    pub exact_ratio: Option<f64>,
    /// Median duration of the restores that hit (exact or fallback).
    pub median_restore_seconds: Option<f64>,
    /// Bytes restored by hits.
    pub bytes_restored: u64,
    pub saves: u64,
    /// Median gap between a miss and the next save of the same key.
    pub install_seconds: Option<f64>,
    /// How many miss → save pairs that median is over.
    pub install_samples: u64,
    /// install_seconds − median_restore_seconds.
    pub saved_per_hit_seconds: Option<f64>,
    /// saved_per_hit_seconds × exact hits.
    pub saved_seconds: Option<f64>,
}

/// The group of a key without a template: every run of 16 or more hex digits (what `{hash}`,
/// `{hashFiles}` and `{checksum}` render to) becomes `*`.
pub fn key_group(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 16 {
            out.push('*');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in key.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

fn group_of(e: &Event) -> String {
    e.template.clone().unwrap_or_else(|| key_group(&e.key))
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[derive(Default)]
struct Acc {
    stats: GroupStats,
    hit_seconds: Vec<f64>,
    install: Vec<f64>,
}

/// Per-group statistics of `events` (any order) whose key starts with `prefix`, most used
/// groups first.
pub fn compute(events: &[Event], prefix: Option<&str>) -> Vec<GroupStats> {
    let mut events: Vec<&Event> = events
        .iter()
        .filter(|e| prefix.is_none_or(|p| e.key.starts_with(p)))
        .collect();
    events.sort_by_key(|e| e.time_ns);
    let mut groups: BTreeMap<String, Acc> = BTreeMap::new();
    // key -> (end of its latest unpaired miss, the miss's group)
    let mut pending: HashMap<&str, (i64, String)> = HashMap::new();
    for e in events {
        let g = group_of(e);
        match e.op {
            Op::Restore => {
                let acc = groups.entry(g.clone()).or_default();
                let s = &mut acc.stats;
                s.restores += 1;
                match e.hit {
                    Some(HitKind::Exact) | Some(HitKind::Fallback) => {
                        if e.hit == Some(HitKind::Exact) {
                            s.exact += 1;
                        } else {
                            s.fallback += 1;
                        }
                        s.bytes_restored += e.bytes;
                        acc.hit_seconds.push(e.seconds);
                    }
                    Some(HitKind::Miss) => {
                        s.misses += 1;
                        let end = e.time_ns + (e.seconds * 1e9) as i64;
                        pending.insert(&e.key, (end, g));
                    }
                    Some(HitKind::Error) | None => s.errors += 1,
                }
            }
            Op::Save => {
                if let Some((miss_end, miss_group)) = pending.remove(e.key.as_str()) {
                    let gap = e.time_ns - miss_end;
                    if (0..=PAIR_WINDOW_NS).contains(&gap) {
                        groups.entry(miss_group).or_default().install.push(gap as f64 / 1e9);
                    }
                }
                groups.entry(g).or_default().stats.saves += 1;
            }
        }
    }
    let mut out: Vec<GroupStats> = groups
        .into_iter()
        .map(|(group, acc)| {
            let mut s = acc.stats;
            s.group = group;
            if s.restores > 0 {
                s.hit_ratio = Some((s.exact + s.fallback) as f64 / s.restores as f64);
                s.exact_ratio = Some(s.exact as f64 / s.restores as f64);
            }
            s.median_restore_seconds = median(acc.hit_seconds);
            s.install_samples = acc.install.len() as u64;
            s.install_seconds = median(acc.install);
            if let (Some(i), Some(r)) = (s.install_seconds, s.median_restore_seconds) {
                s.saved_per_hit_seconds = Some(i - r);
                s.saved_seconds = Some((i - r) * s.exact as f64);
            }
            s
        })
        .collect();
    out.sort_by(|a, b| b.restores.cmp(&a.restores).then_with(|| a.group.cmp(&b.group)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn ev(t: i64, op: Op, key: &str, hit: Option<HitKind>, seconds: f64, bytes: u64) -> Event {
        Event {
            time_ns: t * S,
            op,
            key: key.into(),
            template: Some("venv-{hash:r.txt}".into()),
            matched_key: None,
            hit,
            kind: Some("dir".into()),
            files: 1,
            bytes,
            seconds,
            link: None,
            detail: None,
        }
    }

    #[test]
    fn key_group_replaces_hash_runs_only() {
        assert_eq!(
            key_group("venv-Linux-3.11-0123456789abcdef0123456789abcdef"),
            "venv-Linux-3.11-*"
        );
        // Short hex-looking parts (versions, "cafe") are kept.
        assert_eq!(key_group("pip-cafe-3.12-deadbeef"), "pip-cafe-3.12-deadbeef");
        assert_eq!(key_group("a-0123456789abcdef-b-0123456789abcdef"), "a-*-b-*");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    /// A scripted history with known numbers: two misses each followed by an install and a
    /// save, three exact hits, one fallback hit, one error, plus a save of a key with no miss.
    #[test]
    fn stats_of_a_scripted_history_are_exact() {
        use HitKind::*;
        let mut h = vec![
            ev(100, Op::Restore, "venv-a", Some(Miss), 0.5, 0),
            ev(160, Op::Save, "venv-a", None, 2.0, 900), // install 160 - 100.5 = 59.5 s
            ev(200, Op::Restore, "venv-a", Some(Exact), 1.0, 900),
            ev(300, Op::Restore, "venv-a", Some(Exact), 3.0, 900),
            ev(400, Op::Restore, "venv-b", Some(Miss), 1.0, 0),
            ev(482, Op::Save, "venv-b", None, 2.0, 800), // install 482 - 401 = 81 s
            ev(500, Op::Restore, "venv-c", Some(Fallback), 2.0, 800),
            ev(600, Op::Restore, "venv-b", Some(Exact), 5.0, 800),
            ev(700, Op::Restore, "venv-b", Some(Error), 0.1, 0),
            ev(800, Op::Save, "venv-d", None, 1.0, 10), // no miss before it: no install sample
        ];
        // A plain key (no template) groups by its hash-less form.
        let mut plain = ev(900, Op::Restore, "pip-0123456789abcdef0123", Some(Miss), 0.0, 0);
        plain.template = None;
        h.push(plain);
        h.reverse(); // input order does not matter
        let g = compute(&h, None);
        assert_eq!(g.len(), 2);
        let v = &g[0];
        assert_eq!(v.group, "venv-{hash:r.txt}");
        assert_eq!(
            (v.restores, v.exact, v.fallback, v.misses, v.errors, v.saves),
            (7, 3, 1, 2, 1, 3)
        );
        assert_eq!(v.hit_ratio, Some(4.0 / 7.0));
        assert_eq!(v.exact_ratio, Some(3.0 / 7.0));
        // Hits took 1, 3, 2, 5 s: median 2.5.
        assert_eq!(v.median_restore_seconds, Some(2.5));
        assert_eq!(v.bytes_restored, 900 + 900 + 800 + 800);
        assert_eq!(v.install_samples, 2);
        assert_eq!(v.install_seconds, Some((59.5 + 81.0) / 2.0));
        assert_eq!(v.saved_per_hit_seconds, Some(70.25 - 2.5));
        assert_eq!(v.saved_seconds, Some(67.75 * 3.0));
        let p = &g[1];
        assert_eq!(p.group, "pip-*");
        assert_eq!((p.restores, p.misses, p.hit_ratio), (1, 1, Some(0.0)));
        assert_eq!((p.median_restore_seconds, p.saved_seconds), (None, None));
        // A prefix keeps only matching keys.
        let only_b = compute(&h, Some("venv-b"));
        assert_eq!(only_b.len(), 1);
        assert_eq!((only_b[0].restores, only_b[0].install_seconds), (3, Some(81.0)));
    }

    /// A save long after a miss (another day's job) is not that miss's install.
    #[test]
    fn a_save_outside_the_window_is_not_an_install() {
        let h = vec![
            ev(0, Op::Restore, "k", Some(HitKind::Miss), 0.0, 0),
            ev(PAIR_WINDOW_NS / S + 1, Op::Save, "k", None, 1.0, 1),
        ];
        let g = compute(&h, None);
        assert_eq!((g[0].install_samples, g[0].install_seconds), (0, None));
    }
}
