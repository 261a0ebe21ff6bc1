//! Cache management: `delete` (keys stop resolving at once, data goes at the next gc), the
//! event every restore and save records, and `stats` over those events. All through the real
//! binary; events are read back from the store's index with SQLite.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn write(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    for (name, content) in files {
        fs::write(dir.join(name), content).unwrap();
    }
    dir.to_path_buf()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// (object files, bytes) under objects-v1.
fn objects(store: &Path) -> (u64, u64) {
    let mut n = (0, 0);
    for e in walkdir::WalkDir::new(store.join("objects-v1")) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            n.0 += 1;
            n.1 += e.metadata().unwrap().len();
        }
    }
    n
}

fn json_of(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("bad JSON {e}: {}", stderr(o)))
}

#[derive(Debug, Clone, PartialEq)]
struct Row {
    time_ns: i64,
    op: String,
    key: String,
    template: Option<String>,
    matched_key: Option<String>,
    hit: Option<String>,
    kind: Option<String>,
    files: i64,
    bytes: i64,
    seconds: f64,
    link: Option<String>,
    detail: Option<serde_json::Value>,
}

/// Every event row, oldest first, straight from the index.
fn events(store: &Path) -> Vec<Row> {
    let c = rusqlite::Connection::open(store.join("index.sqlite")).unwrap();
    let mut st = c
        .prepare(
            "SELECT time_ns, op, key, template, matched_key, hit, kind, files, bytes, seconds, link, detail \
             FROM events ORDER BY time_ns, id",
        )
        .unwrap();
    st.query_map([], |r| {
        let detail: Option<String> = r.get(11)?;
        Ok(Row {
            time_ns: r.get(0)?,
            op: r.get(1)?,
            key: r.get(2)?,
            template: r.get(3)?,
            matched_key: r.get(4)?,
            hit: r.get(5)?,
            kind: r.get(6)?,
            files: r.get(7)?,
            bytes: r.get(8)?,
            seconds: r.get(9)?,
            link: r.get(10)?,
            detail: detail.map(|d| serde_json::from_str(&d).unwrap()),
        })
    })
    .unwrap()
    .map(|r| r.unwrap())
    .collect()
}

/// `envsnap --store STORE ARGS…` run in `dir`, where key templates hash files.
fn envsnap_in(dir: &Path, store: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .current_dir(dir)
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("GITHUB_OUTPUT")
        .env_remove("ENVSNAP_STORE")
        .output()
        .unwrap()
}

fn restore_code(store: &Path, dest: &Path, args: &[&str]) -> i32 {
    let mut a = vec!["restore", s(dest)];
    a.extend_from_slice(args);
    code(&envsnap(store, &a))
}

/// Deleted keys stop resolving at once: an exact lookup misses and a fallback takes the newest
/// key that is left. Keys, templates and prefixes are accepted; a dry run deletes nothing.
#[test]
fn deleted_keys_miss_and_fallbacks_skip_them() {
    let d = tmp();
    let store = d.path().join("store");
    let a1 = write(&d.path().join("a1"), &[("f", b"one")]);
    let a2 = write(&d.path().join("a2"), &[("f", b"two")]);
    let b1 = write(&d.path().join("b1"), &[("f", b"bee")]);
    let lock = write(&d.path().join("proj"), &[("lock.txt", b"pinned")]);
    save_dir(&store, s(&a1), "app-1");
    save_dir(&store, s(&a2), "app-2"); // the newest app- key
    save_dir(&store, s(&b1), "base-1");
    // A key made from a template, deleted by the same template.
    let tpl = "tpl-{hash:lock.txt}";
    let o = envsnap_in(&lock, &store, &["--json", "save", "dir", s(&b1), "--key", tpl]);
    let tpl_key = ok_json(&o)["key"].as_str().unwrap().to_string();
    assert_ne!(tpl_key, tpl);

    let o = envsnap(&store, &["--json", "delete", "--dry-run", "app-2"]);
    let j = ok_json(&o);
    assert_eq!(
        (j["dry_run"].as_bool(), j["deleted"][0]["key"].as_str()),
        (Some(true), Some("app-2"))
    );
    assert_eq!(
        restore_code(&store, &d.path().join("o0"), &["--key", "app-2"]),
        0,
        "dry run deleted"
    );

    let j = ok_json(&envsnap_in(&lock, &store, &["--json", "delete", "app-2", tpl]));
    let deleted: Vec<&str> = j["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["key"].as_str().unwrap())
        .collect();
    assert_eq!(deleted, ["app-2", tpl_key.as_str()]);
    assert_eq!(restore_code(&store, &d.path().join("o1"), &["--key", "app-2"]), 1);
    let o = envsnap_in(&lock, &store, &["restore", s(&d.path().join("o2")), "--key", tpl]);
    assert_eq!(code(&o), 1);
    // The fallback skips the deleted newer key and takes app-1.
    let j = restore_json(
        &store,
        s(&d.path().join("o3")),
        &["--key", "app-9", "--fallback", "app-"],
    );
    assert_eq!(
        (j["hit"].as_str(), j["matched_key"].as_str()),
        (Some("fallback"), Some("app-1"))
    );
    assert_eq!(fs::read(d.path().join("o3/f")).unwrap(), b"one");

    let j = ok_json(&envsnap(&store, &["--json", "delete", "--prefix", "app-"]));
    assert_eq!(j["deleted"].as_array().unwrap().len(), 1);
    assert_eq!(
        restore_code(&store, &d.path().join("o4"), &["--key", "app-9", "--fallback", "app-"]),
        1
    );
    // Other keys are untouched.
    let j = restore_json(&store, s(&d.path().join("o5")), &["--key", "base-1"]);
    assert_eq!(j["hit"], "exact");
    let listed = ok_json(&envsnap(&store, &["--json", "list"]));
    let keys: Vec<&str> = listed["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["base-1"]);
}

/// Deleting what is not there is a miss (exit 1, a message), not an error; the keys that do
/// exist are still deleted.
#[test]
fn deleting_a_missing_key_or_empty_prefix_exits_1_with_a_message() {
    let d = tmp();
    let store = d.path().join("store");
    let src = write(&d.path().join("src"), &[("f", b"x")]);
    save_dir(&store, s(&src), "here");
    let o = envsnap(&store, &["delete", "nowhere"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("no snapshot with key nowhere"), "{}", stderr(&o));
    let o = envsnap(&store, &["delete", "--prefix", "zz-"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("no key starts with zz-"), "{}", stderr(&o));
    let o = envsnap(&store, &["--json", "delete", "nowhere", "here"]);
    assert_eq!(code(&o), 1);
    let j = json_of(&o);
    assert_eq!(j["missing_keys"], serde_json::json!(["nowhere"]));
    assert_eq!(j["deleted"][0]["key"], "here");
    assert_eq!(j["exit"], 1);
    assert_eq!(restore_code(&store, &d.path().join("o"), &["--key", "here"]), 1);
    // Nothing to select at all is a usage error.
    assert_eq!(code(&envsnap(&store, &["delete"])), 2);
}

/// The data of a deleted key stays until gc, and gc then frees exactly the objects no other
/// key references: what `delete` announced, no more (the shared file survives).
#[test]
fn gc_after_delete_frees_exactly_the_unreferenced_data() {
    let d = tmp();
    let store = d.path().join("store");
    let only1 = vec![1u8; 5000];
    let only2 = vec![2u8; 700];
    let shared = vec![3u8; 30000];
    let k1 = write(
        &d.path().join("k1"),
        &[("shared", &shared), ("only", &only1), ("same-as-2", b"both")],
    );
    let k2 = write(
        &d.path().join("k2"),
        &[("shared", &shared), ("only", &only2), ("same-as-2", b"both")],
    );
    save_dir(&store, s(&k1), "k1");
    save_dir(&store, s(&k2), "k2");
    let before = objects(&store);
    assert_eq!(before, (4, 5000 + 700 + 30000 + 4));

    let j = ok_json(&envsnap(&store, &["--json", "delete", "k1"]));
    assert_eq!(
        (j["reclaimable_objects"].as_u64(), j["reclaimable_bytes"].as_u64()),
        (Some(1), Some(5000))
    );
    // Deleting frees nothing by itself.
    assert_eq!(objects(&store), before);

    let g = ok_json(&envsnap(&store, &["--json", "gc", "--max-age", "3650d"]));
    assert_eq!(
        (g["removed_objects"].as_u64(), g["freed_bytes"].as_u64()),
        (Some(1), Some(5000))
    );
    assert_eq!(g["removed_snapshots"], serde_json::json!([]));
    assert_eq!(objects(&store), (before.0 - 1, before.1 - 5000));
    // The surviving key is whole.
    let out = d.path().join("out");
    restore_json(&store, s(&out), &["--key", "k2", "--link", "copy"]);
    assert_eq!(describe(&out), describe(&k2));
    // A second gc finds nothing more.
    let g = ok_json(&envsnap(&store, &["--json", "gc", "--max-age", "3650d"]));
    assert_eq!(g["removed_objects"], 0);
}

/// One event per restore and save, for every hit kind, with what the restore did.
#[test]
fn events_are_recorded_for_exact_fallback_miss_error_and_save() {
    let d = tmp();
    let store = d.path().join("store");
    let src = write(&d.path().join("src"), &[("a", b"alpha"), ("b", b"bravo!")]);
    let lock = write(&d.path().join("proj"), &[("req.txt", b"pinned")]);
    let tpl = "ev-{hash:req.txt}".to_string();
    let saved = ok_json(&envsnap_in(
        &lock,
        &store,
        &["--json", "save", "dir", s(&src), "--key", &tpl],
    ));
    let key = saved["key"].as_str().unwrap().to_string();
    let exact = d.path().join("exact");
    ok_json(&envsnap_in(
        &lock,
        &store,
        &["--json", "restore", s(&exact), "--key", &tpl, "--link", "copy"],
    ));
    restore_json(
        &store,
        s(&d.path().join("fb")),
        &["--key", "ev-none", "--fallback", "ev-"],
    );
    assert_eq!(
        restore_code(&store, &d.path().join("miss"), &["--key", "nope", "--fallback", "zz"]),
        1
    );
    // A dry run restores nothing and records nothing.
    restore_json(&store, s(&d.path().join("dry")), &["--key", &key, "--dry-run"]);
    // A corrupt object: the copy's verification fails the restore (exit 2).
    for e in walkdir::WalkDir::new(store.join("objects-v1")) {
        let e = e.unwrap();
        if e.file_type().is_file() && e.metadata().unwrap().len() == 5 {
            fs::set_permissions(e.path(), fs::Permissions::from_mode(0o644)).unwrap();
            fs::write(e.path(), b"ALPHA").unwrap();
        }
    }
    assert_eq!(
        restore_code(&store, &d.path().join("err"), &["--key", &key, "--link", "copy"]),
        2
    );

    let ev = events(&store);
    let summary: Vec<(&str, Option<&str>, &str, Option<&str>)> = ev
        .iter()
        .map(|e| {
            (
                e.op.as_str(),
                e.hit.as_deref(),
                e.key.as_str(),
                e.matched_key.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("save", None, key.as_str(), None),
            ("restore", Some("exact"), key.as_str(), Some(key.as_str())),
            ("restore", Some("fallback"), "ev-none", Some(key.as_str())),
            ("restore", Some("miss"), "nope", None),
            ("restore", Some("error"), key.as_str(), Some(key.as_str())),
        ]
    );
    let (save, exact, fb, miss) = (&ev[0], &ev[1], &ev[2], &ev[3]);
    // The template is kept where one was given.
    assert_eq!(save.template.as_deref(), Some(tpl.as_str()));
    assert_eq!(exact.template.as_deref(), Some(tpl.as_str()));
    assert_eq!(fb.template, None);
    for e in [save, exact, fb] {
        assert_eq!((e.files, e.bytes, e.kind.as_deref()), (2, 11, Some("dir")), "{e:?}");
        assert!(e.seconds > 0.0, "{e:?}");
    }
    assert_eq!(save.detail.as_ref().unwrap()["new_objects"], 2);
    assert_eq!(exact.link.as_deref(), Some("copy"));
    assert_eq!((miss.files, miss.bytes, miss.link.as_deref()), (0, 0, None));
    assert!(ev.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
}

/// Concurrent restores each record their event: none lost to a busy index.
#[test]
fn events_survive_concurrent_restores() {
    let d = tmp();
    let store = d.path().join("store");
    let files: Vec<(String, Vec<u8>)> = (0..50).map(|i| (format!("f{i}"), vec![i as u8; 2000])).collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (n.as_str(), c.as_slice())).collect();
    let src = write(&d.path().join("src"), &refs);
    save_dir(&store, s(&src), "conc-1");
    let children: Vec<_> = (0..8)
        .map(|i| {
            let key = if i % 4 == 3 { "absent" } else { "conc-1" };
            Command::new(bin())
                .arg("--store")
                .arg(&store)
                .args(["restore", s(&d.path().join(format!("out{i}"))), "--key", key])
                .env_remove("ENVSNAP_STORE")
                .env_remove("GITHUB_OUTPUT")
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut codes: Vec<i32> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap().status.code().unwrap())
        .collect();
    codes.sort();
    assert_eq!(codes, [0, 0, 0, 0, 0, 0, 1, 1]);
    let ev = events(&store);
    let mut hits: Vec<&str> = ev
        .iter()
        .filter(|e| e.op == "restore")
        .map(|e| e.hit.as_deref().unwrap())
        .collect();
    hits.sort();
    assert_eq!(
        hits,
        ["exact", "exact", "exact", "exact", "exact", "exact", "miss", "miss"]
    );
    assert!(ev
        .iter()
        .filter(|e| e.hit.as_deref() == Some("exact"))
        .all(|e| e.files == 50 && e.bytes == 100_000));
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `stats` on a scripted history of real operations: the numbers equal what the recorded
/// events say, computed here independently. Time is not faked: the rows are read back and the
/// expected medians and install gaps computed from their recorded times and durations. For
/// `--since`, two events are moved 10 days into the past in the index (an old history).
#[test]
fn stats_numbers_are_exact_on_a_scripted_history() {
    let d = tmp();
    let store = d.path().join("store");
    let proj = write(&d.path().join("proj"), &[("req.txt", b"v1")]);
    let tpl = "st-{hash:req.txt}".to_string();
    let run = |args: &[&str]| envsnap_in(&proj, &store, args);
    let src = write(&d.path().join("src"), &[("a", &[7u8; 1000]), ("b", &[8u8; 234])]);
    let out = |n: &str| d.path().join(n);
    // CI run 1: miss, "install", save. Runs 2-4: exact hits. Run 5: the requirements changed:
    // miss with a fallback hit, then a save of the new key. Another cache: a plain key's miss.
    assert_eq!(code(&run(&["restore", s(&out("r1")), "--key", &tpl])), 1);
    ok_json(&run(&["--json", "save", "dir", s(&src), "--key", &tpl]));
    for r in ["r2", "r3", "r4"] {
        ok_json(&run(&["--json", "restore", s(&out(r)), "--key", &tpl]));
    }
    fs::write(proj.join("req.txt"), b"v2").unwrap();
    ok_json(&run(&[
        "--json",
        "restore",
        s(&out("r5")),
        "--key",
        &tpl,
        "--fallback",
        "st-",
    ]));
    ok_json(&run(&["--json", "save", "dir", s(&src), "--key", &tpl]));
    let plain = "pip-0123456789abcdef0123456789abcdef";
    assert_eq!(restore_code(&store, &out("p1"), &["--key", plain]), 1);

    let ev = events(&store);
    assert_eq!(ev.len(), 8);
    let restores: Vec<&Row> = ev
        .iter()
        .filter(|e| e.op == "restore" && e.key.starts_with("st-"))
        .collect();
    let hit_secs: Vec<f64> = restores
        .iter()
        .filter(|e| e.hit.as_deref() != Some("miss"))
        .map(|e| e.seconds)
        .collect();
    assert_eq!(hit_secs.len(), 4);
    // The one miss → save pair: the save's start minus the end of the miss.
    let (miss, save) = (&ev[0], &ev[1]);
    assert_eq!((miss.hit.as_deref(), save.op.as_str()), (Some("miss"), "save"));
    let install = (save.time_ns - (miss.time_ns + (miss.seconds * 1e9) as i64)) as f64 / 1e9;
    let med = median(hit_secs);

    let j = ok_json(&envsnap(&store, &["--json", "stats"]));
    assert_eq!(j["events"], 8);
    let g = &j["groups"][0];
    assert_eq!(g["group"], tpl.as_str());
    for (field, want) in [
        ("restores", 5),
        ("exact", 3),
        ("fallback", 1),
        ("misses", 1),
        ("errors", 0),
        ("saves", 2),
    ] {
        assert_eq!(g[field], want, "{field}: {g}");
    }
    assert_eq!(g["hit_ratio"].as_f64(), Some(4.0 / 5.0));
    assert_eq!(g["exact_ratio"].as_f64(), Some(3.0 / 5.0));
    assert_eq!(g["bytes_restored"], 4 * 1234);
    // Equal to the last bit but for serde_json's float parsing (not correctly rounded).
    let same = |field: &str, want: f64| {
        let got = g[field].as_f64().unwrap_or_else(|| panic!("{field}: {g}"));
        assert!((got - want).abs() <= want.abs() * 1e-12, "{field}: {got} != {want}");
    };
    same("median_restore_seconds", med);
    assert_eq!(g["install_samples"], 1);
    same("install_seconds", install);
    same("saved_per_hit_seconds", install - med);
    same("saved_seconds", (install - med) * 3.0);
    let p = &j["groups"][1];
    assert_eq!(
        (p["group"].as_str(), p["misses"].as_u64(), p["hit_ratio"].as_f64()),
        (Some("pip-*"), Some(1), Some(0.0))
    );

    // A prefix (templates accepted) keeps one group.
    let j = ok_json(&envsnap(&store, &["--json", "stats", "pip-"]));
    assert_eq!(j["groups"].as_array().unwrap().len(), 1);
    // The table and the Markdown show the group with its bar.
    let o = envsnap(&store, &["stats"]);
    let table = String::from_utf8(o.stdout).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&tpl) && l.contains("80%") && l.contains("██████▒▒··")),
        "{table}"
    );
    let o = envsnap(&store, &["stats", "--markdown"]);
    let md = String::from_utf8(o.stdout).unwrap();
    assert!(
        md.contains(&format!("| `{tpl}` | 5 | 3 | 1 | 1 | `██████▒▒··` 80% |")),
        "{md}"
    );

    // An old history: the first miss and save happened 10 days ago.
    let c = rusqlite::Connection::open(store.join("index.sqlite")).unwrap();
    let ten_days = 10 * 24 * 3600 * 1_000_000_000i64;
    c.execute(
        "UPDATE events SET time_ns = time_ns - ?1 WHERE id IN (SELECT id FROM events ORDER BY time_ns, id LIMIT 2)",
        [ten_days],
    )
    .unwrap();
    drop(c);
    let j = ok_json(&envsnap(&store, &["--json", "stats", "--since", "7d"]));
    assert_eq!(j["events"], 6);
    let g = &j["groups"][0];
    assert_eq!(
        (g["restores"].as_u64(), g["misses"].as_u64(), g["saves"].as_u64()),
        (Some(4), Some(0), Some(1))
    );
    assert_eq!(g["install_seconds"], serde_json::Value::Null);
    let j = ok_json(&envsnap(&store, &["--json", "stats", "--since", "30d"]));
    assert_eq!(j["events"], 8);
}

/// The events table is a rolling window: an event older than 90 days is pruned by the next
/// record.
#[test]
fn events_older_than_the_window_are_pruned_on_the_next_record() {
    let d = tmp();
    let store = d.path().join("store");
    assert_eq!(restore_code(&store, &d.path().join("o"), &["--key", "old"]), 1);
    let c = rusqlite::Connection::open(store.join("index.sqlite")).unwrap();
    let day = 24 * 3600 * 1_000_000_000i64;
    c.execute("UPDATE events SET time_ns = time_ns - ?1", [91 * day])
        .unwrap();
    drop(c);
    assert_eq!(events(&store).len(), 1);
    assert_eq!(restore_code(&store, &d.path().join("o"), &["--key", "new"]), 1);
    let keys: Vec<String> = events(&store).into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["new"]);
}

/// With the index locked by another writer, or read-only, a restore still succeeds; what it
/// could not record is said under `-v` only.
#[test]
fn restore_succeeds_when_the_index_is_locked_or_read_only() {
    let d = tmp();
    let store = d.path().join("store");
    let src = write(&d.path().join("src"), &[("f", b"content")]);
    save_dir(&store, s(&src), "k");
    let idx = store.join("index.sqlite");
    let check = |name: &str| {
        // Both at once: each waits out the bounded index writes.
        let run = |args: &[&str]| {
            Command::new(bin())
                .arg("--store")
                .arg(&store)
                .args(args)
                .env_remove("ENVSNAP_STORE")
                .env_remove("GITHUB_OUTPUT")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let q = run(&["restore", s(&d.path().join(format!("{name}-q"))), "--key", "k"]);
        let v = run(&["-v", "restore", s(&d.path().join(format!("{name}-v"))), "--key", "k"]);
        let (quiet, verbose) = (q.wait_with_output().unwrap(), v.wait_with_output().unwrap());
        assert_eq!(code(&quiet), 0, "{name}: {}", stderr(&quiet));
        assert!(!stderr(&quiet).contains("warning"), "{name}: {}", stderr(&quiet));
        assert_eq!(code(&verbose), 0, "{name}: {}", stderr(&verbose));
        assert!(
            stderr(&verbose).contains("could not record this restore"),
            "{name}: {}",
            stderr(&verbose)
        );
        for o in ["q", "v"] {
            assert_eq!(fs::read(d.path().join(format!("{name}-{o}/f"))).unwrap(), b"content");
        }
    };
    {
        // Another process holds the write lock for the whole time.
        let c = rusqlite::Connection::open(&idx).unwrap();
        c.execute_batch("BEGIN IMMEDIATE; INSERT INTO events (time_ns, op, key, files, bytes, seconds) VALUES (0, 'save', 'x', 0, 0, 0);")
            .unwrap();
        check("locked");
        c.execute_batch("ROLLBACK").unwrap();
    }
    let before = events(&store).len();
    // Read-only: as root permissions do not stop writes, an immutable file does.
    if is_root() {
        if !Command::new("chattr")
            .arg("+i")
            .arg(&idx)
            .status()
            .is_ok_and(|s| s.success())
        {
            skip("read-only index part: chattr +i is not available here");
            return;
        }
    } else {
        fs::set_permissions(&idx, fs::Permissions::from_mode(0o444)).unwrap();
    }
    let undo = || {
        if is_root() {
            Command::new("chattr").arg("-i").arg(&idx).status().unwrap();
        }
        fs::set_permissions(&idx, fs::Permissions::from_mode(0o644)).unwrap();
    };
    let r = std::panic::catch_unwind(|| check("ro"));
    undo();
    r.unwrap();
    assert_eq!(events(&store).len(), before, "nothing could be recorded");
    // Writable again: recording resumes.
    restore_json(&store, s(&d.path().join("again")), &["--key", "k"]);
    assert_eq!(events(&store).len(), before + 1);
}

/// A venv restore's event says what the fixups did.
#[test]
fn a_venv_restore_event_records_its_fixups() {
    let Some(py) = ["python3", "python"].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import venv"])
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        skip("a venv restore's event: no python3 with the venv module on PATH");
        return;
    };
    let d = tmp();
    let store = d.path().join("store");
    let venv = d.path().join("v");
    let st = Command::new(py)
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(st.success());
    ok_json(&envsnap(
        &store,
        &["--json", "save", "venv", s(&venv), "--key", "venv-ev"],
    ));
    restore_json(&store, s(&d.path().join("moved")), &["--key", "venv-ev"]);
    let ev = events(&store);
    let r = ev.iter().find(|e| e.op == "restore").unwrap();
    assert_eq!((r.hit.as_deref(), r.kind.as_deref()), (Some("exact"), Some("venv")));
    let detail = r.detail.as_ref().unwrap();
    // The activate scripts hold the venv's path: moved, they are rewritten.
    assert!(detail["rewritten"].as_u64().unwrap() > 0, "{detail}");
    assert!(
        detail["interpreter"].as_str().is_some_and(|v| v.starts_with('3')),
        "{detail}"
    );
}
