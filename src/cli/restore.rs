//! `envsnap restore [PATH] --key KEY [--fallback PREFIX]…`: look up, plan, apply, commit.

use super::output::{bytes, github_output, plural, plural_of};
use super::{Ctx, Outcome};
use clap::Args;
use envsnap::events::{Event, HitKind, Op};
use envsnap::index::SnapshotRow;
use envsnap::restore::{self, LinkMode, RestoreOptions};
use envsnap::{Error, Hit, Result, Store};
use serde_json::json;
use std::cell::RefCell;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct RestoreArgs {
    /// Where to restore [default: the path the snapshot was saved from]
    path: Option<PathBuf>,
    /// Cache key or key template (see `envsnap key`) to restore
    #[arg(long)]
    key: String,
    /// Key prefixes (or templates) tried in order when the key has no snapshot; the newest match wins
    #[arg(long = "fallback", value_name = "PREFIX")]
    fallbacks: Vec<String>,
    /// How restored files share storage with the store: auto (reflink, else copy), reflink,
    /// copy, or hardlink. auto/reflink/copy verify every byte against its hash. hardlink shares
    /// the store's read-only inodes (their mode and mtime), checks each object's size, mtime
    /// and inode against the store's record and hashes only changed ones; files whose mode it
    /// would widen are copied. Writing to a hardlinked file writes into the store
    #[arg(long, default_value = "auto", value_parser = parse_link)]
    link: LinkMode,
    /// Replace a non-empty destination
    #[arg(long)]
    force: bool,
    /// Print the plan and change nothing
    #[arg(long)]
    dry_run: bool,
    /// venv snapshots: the interpreter to run on (same implementation and minor version as
    /// the one saved) when the original is gone [default: search PATH]
    #[arg(long, value_name = "PY")]
    python: Option<PathBuf>,
}

fn parse_link(s: &str) -> std::result::Result<LinkMode, String> {
    s.parse().map_err(|e: envsnap::Error| e.to_string())
}

pub fn run(ctx: &Ctx, mut a: RestoreArgs) -> Result<Outcome> {
    let start = Instant::now();
    let started_ns = envsnap::repo::now_ns();
    let template = envsnap::key::is_template(&a.key).then(|| a.key.clone());
    // `{apt-base}` describes the system being restored into: PATH when it is a dpkg root.
    let dpkg_root = a.path.clone().filter(|p| p.join("var/lib/dpkg/status").is_file());
    (a.key, a.fallbacks) = super::key::keys_for(
        ctx,
        &a.key,
        &a.fallbacks,
        a.python.as_deref(),
        None,
        dpkg_root.as_deref(),
    )?;
    let store = ctx.open_store()?;
    // A restore writes the index only for bookkeeping (LRU stamp, stat cache, event): none of
    // it may hold up a restore, so a busy index is waited for briefly, then skipped.
    store.index().set_busy_timeout(envsnap::events::RECORD_WAIT)?;
    // Held from lookup to commit, so gc cannot remove the snapshot or its objects in between.
    let _lock = store.lock_shared()?;
    let mut event = Event {
        time_ns: started_ns,
        op: Op::Restore,
        key: a.key.clone(),
        template,
        matched_key: None,
        hit: Some(HitKind::Miss),
        kind: None,
        files: 0,
        bytes: 0,
        seconds: 0.0,
        link: None,
        detail: None,
    };
    let remote = ctx.open_remote(&store)?.map(std::sync::Arc::new);
    // The remote snapshot pulled, so a damaged local copy can be fetched again (below).
    let mut pulled = None;
    // A fresh runner's restore fetches what its store lacks straight into the tree.
    let mut direct = None;
    // The row that restore added to the local index, taken out again if the restore fails.
    let mut added_row = None;
    let found = match &remote {
        // Keys live on the remote: look up there and bring the snapshot into the local index.
        Some(r) => match r.lookup(&a.key, &a.fallbacks)? {
            None => None,
            Some((rref, hit)) => {
                // The pull commits the snapshot to the local index: that is the restore's
                // data, not bookkeeping, so it waits as long as a save would. A dry run plans
                // from it and fetches nothing; it records no use.
                store.index().set_busy_timeout(envsnap::index::BUSY_TIMEOUT)?;
                let (mut snap, added) = r.pull_manifest(&store, &rref)?;
                // A store that caches objects (a persistent one, or one a CI cache step brings
                // back) caches these too: pulled into it, then linked or copied out, so a later
                // restore here downloads nothing. A store that never wrote one is a fresh
                // runner's: each file goes straight into the tree, written once. apt merges
                // into a live root from the local store: always pulled.
                let caches = store.index().has_objects()?;
                if a.dry_run {
                    // Plans come from the row alone.
                } else if caches || snap.kind == "apt" {
                    let (s, rep) = r.pull(&store, &rref)?;
                    snap = s;
                    ctx.ui.detail(format!(
                        "fetched {} objects ({}) from {} packs in {} ranges from {}",
                        rep.objects,
                        bytes(rep.object_bytes),
                        rep.packs,
                        rep.ranges,
                        r.url()
                    ));
                } else {
                    direct = Some(std::sync::Arc::new(envsnap::remote::DirectSource::new(
                        r.clone(),
                        &rref.key,
                    )));
                    added_row = added.then(|| snap.clone());
                }
                store.index().set_busy_timeout(envsnap::events::RECORD_WAIT)?;
                if !a.dry_run {
                    r.record_use(&rref)?;
                }
                pulled = Some(rref);
                Some((snap, hit))
            }
        },
        None => store.lookup(&a.key, &a.fallbacks)?,
    };
    let Some((snap, hit)) = found else {
        github_output(&MISS_OUTPUTS)?;
        let out = super::miss(ctx, &a.key, &a.fallbacks, None, remote.as_deref());
        if !a.dry_run {
            event.seconds = start.elapsed().as_secs_f64();
            super::manage::record_event(ctx, super::manage::event_log(&store, remote.as_deref()), &event);
        }
        return Ok(out);
    };
    let dest = a.path.clone().unwrap_or_else(|| snap.source.clone());
    let opts = RestoreOptions {
        link: a.link,
        force: a.force,
        source: direct
            .clone()
            .map(|d| restore::Source(d as std::sync::Arc<dyn restore::ObjectSource>)),
        ..Default::default()
    };
    ctx.ui.detail(format!(
        "{} hit: {} ({}) -> {}",
        hit.as_str(),
        envsnap::key::escaped(&snap.key),
        snap.kind,
        dest.display()
    ));
    // A restore killed earlier may have left staging trees here, or (`--force` without
    // RENAME_EXCHANGE) the old tree moved aside with the destination missing: put that back
    // before looking at the destination. apt merges into a live root and stages nothing.
    let leftovers = if a.dry_run || snap.kind == "apt" {
        restore::Leftovers::default()
    } else {
        restore::clean_leftovers(&dest)
    };
    report_leftovers(ctx, &leftovers);
    let found = Found {
        ctx,
        store: &store,
        a: &a,
        snap: snap.clone(),
        hit,
        dest,
        opts,
        start,
        facts: Default::default(),
        remote: remote.as_deref(),
    };
    // Adapters restore their own kinds; everything else is a plain tree.
    let dispatch = |found: &Found| match snap.kind.as_str() {
        "apt" => restore_apt(found),
        envsnap::venv::KIND => restore_venv(found),
        _ => restore_dir(found),
    };
    let mut result = dispatch(&found);
    if let (Some(d), Some(r)) = (&direct, &remote) {
        let rep = d.report.lock().unwrap_or_else(|p| p.into_inner()).clone();
        ctx.ui.detail(format!(
            "fetched {} objects ({}) from {} packs in {} ranges from {} straight into the tree",
            rep.objects,
            bytes(rep.object_bytes),
            rep.packs,
            rep.ranges,
            r.url()
        ));
    }
    // The local store is the remote's cache: an object in it found damaged (and moved aside) or
    // gone since the pull is fetched from the remote again, and the restore runs once more: a
    // failed tree restore left nothing behind, and an apt restore fails on objects before it
    // merges anything into dpkg's state, so either is a plain rerun (as after a kill).
    // Bounded: each round must name an object not seen before (a snapshot may have several
    // damaged ones), and a failing refetch is the restore's error, reported like any other.
    let mut refetched = std::collections::HashSet::new();
    while let (Some(r), Some(rref), Err(e)) = (&remote, &pulled, &result) {
        let Some(id) = damaged_object(e).filter(|id| !a.dry_run && refetched.insert(*id)) else {
            break;
        };
        match refetch(ctx, &store, r, rref, &id, e) {
            Ok(true) => result = dispatch(&found),
            Ok(false) => break,
            Err(e) => result = Err(e),
        }
    }
    // A failed direct restore leaves no local row naming objects nobody fetched.
    if let (Err(_), Some(r), Some(row)) = (&result, &remote, &added_row) {
        if let Err(e) = r.unpull(&store, row) {
            ctx.ui.detail(format!(
                "could not take the unrestored snapshot out of the local index: {e}"
            ));
        }
    }
    // $GITHUB_OUTPUT says "hit" only once the tree is in place; a failed or refused restore
    // (an adapter's miss, an error) reports a miss so the job reinstalls. A dry run restores
    // nothing and says nothing there.
    match &result {
        _ if a.dry_run => {}
        // The tree is in place: failing to say so is a warning, never a failed restore (the job
        // then reinstalls, which is safe).
        Ok(Outcome::Done) => {
            if let Err(e) = hit_outputs(hit, &snap) {
                bookkeeping_failed(
                    ctx,
                    &e,
                    "the restore is complete, but could not write the hit to $GITHUB_OUTPUT",
                    "the job will see a miss",
                );
            }
        }
        _ => github_output(&MISS_OUTPUTS)?,
    }
    if !a.dry_run {
        let facts = found.facts.take();
        event.matched_key = Some(snap.key.clone());
        event.kind = Some(snap.kind.clone());
        event.hit = Some(match &result {
            Ok(_) => hit.into(),
            Err(e) if e.is_miss() => HitKind::Miss,
            Err(_) => HitKind::Error,
        });
        event.files = facts.files;
        event.bytes = facts.bytes;
        event.link = facts.link;
        event.detail = facts.detail;
        event.seconds = start.elapsed().as_secs_f64();
        super::manage::record_event(ctx, super::manage::event_log(&store, remote.as_deref()), &event);
    }
    match result {
        // An adapter refused the snapshot it was given (its interpreter is gone, the base
        // system drifted): a miss like any other, with its reason.
        Err(e) if e.is_miss() => Ok(super::miss(
            ctx,
            &a.key,
            &a.fallbacks,
            Some(&e.to_string()),
            remote.as_deref(),
        )),
        r => r,
    }
}

/// What a restore did, for its event: set by each kind once its tree is in place.
#[derive(Default)]
struct Facts {
    files: u64,
    bytes: u64,
    link: Option<String>,
    detail: Option<serde_json::Value>,
}

/// What the cleanup after killed restores did (restore and gc).
pub fn report_leftovers(ctx: &Ctx, l: &restore::Leftovers) {
    for p in &l.removed {
        ctx.ui
            .detail(format!("removed {} (left by a killed restore)", p.display()));
    }
    for p in &l.recovered {
        ctx.ui.warn(format!(
            "put the previous tree back at {}: a `restore --force` there was killed before it completed",
            p.display()
        ));
    }
    for p in &l.kept {
        ctx.ui.warn(format!(
            "kept {}: the tree a killed `restore --force` replaced (its destination exists again); delete it when you no longer need it",
            p.display()
        ));
    }
}

/// A snapshot found for a restore, and everything the kind-specific restore needs.
struct Found<'a> {
    ctx: &'a Ctx,
    store: &'a Store,
    a: &'a RestoreArgs,
    snap: SnapshotRow,
    hit: Hit,
    dest: PathBuf,
    opts: RestoreOptions,
    start: Instant,
    facts: RefCell<Facts>,
    remote: Option<&'a envsnap::remote::Remote>,
}

impl Found<'_> {
    /// The JSON fields every kind of restore reports.
    fn json(&self) -> serde_json::Value {
        let mut v = json!({
            "hit": self.hit.as_str(), "key": self.a.key, "matched_key": self.snap.key,
            "kind": self.snap.kind, "dry_run": self.a.dry_run,
        });
        if let Some(r) = self.remote {
            v["remote"] = super::remote::stats_json(r);
        }
        v
    }
}

const MISS_OUTPUTS: [(&str, &str); 3] = [("cache-hit", "false"), ("matched-key", ""), ("hit", "miss")];

/// Outputs shared by every kind of restore.
pub fn hit_outputs(hit: Hit, snap: &SnapshotRow) -> Result<()> {
    github_output(&[
        ("cache-hit", if hit == Hit::Exact { "true" } else { "false" }),
        ("matched-key", &snap.key),
        ("hit", hit.as_str()),
    ])
}

fn restore_dir(f: &Found) -> Result<Outcome> {
    let Found {
        ctx,
        store,
        a,
        snap,
        hit,
        dest,
        opts,
        start,
        ..
    } = f;
    let manifest = store.manifest(snap.id)?;
    let plan = restore::plan(snap, manifest, dest, opts)?;
    let mut out = f.json();
    for (k, v) in [
        ("path", json!(plan.dest)),
        ("files", json!(plan.files)),
        ("dirs", json!(plan.dirs)),
        ("symlinks", json!(plan.symlinks)),
        ("bytes", json!(plan.bytes)),
        ("replaces", json!(plan.replaces)),
    ] {
        out[k] = v;
    }
    if a.dry_run {
        ctx.ui.info(format!(
            "dry run: would restore {} ({} hit) to {}: {}, {}, {}, {}, link {}{}",
            envsnap::key::escaped(&snap.key),
            hit.as_str(),
            plan.dest.display(),
            plural(plan.files, "file"),
            plural(plan.dirs, "dir"),
            plural(plan.symlinks, "symlink"),
            bytes(plan.bytes),
            plan.link.as_str(),
            if plan.replaces {
                " (replacing the existing tree)"
            } else {
                ""
            }
        ));
        out["link"] = json!(plan.link.as_str());
        out["seconds"] = json!(start.elapsed().as_secs_f64());
        ctx.ui.emit_json(&out);
        return Ok(Outcome::Done);
    }
    let (files, bytes_n, dest) = (plan.files, plan.bytes, plan.dest.clone());
    if let Some(w) = plan.owners_not_set() {
        ctx.ui.warn(w);
    }
    let bar = ctx.ui.progress();
    let staged = plan.apply(store, bar.as_ref().map(|b| b as _))?;
    let link = staged.link_used().to_string();
    let hardlink_copied = staged.hardlink_copied();
    let done = staged.commit()?;
    *f.facts.borrow_mut() = Facts {
        files,
        bytes: bytes_n,
        link: Some(link.clone()),
        detail: None,
    };
    mark_restored(ctx, store, snap.id);
    match done.seed_statcache(store) {
        Ok(n) => ctx.ui.detail(format!(
            "stat cache: {n} restored files will not be read by the next save"
        )),
        Err(e) => bookkeeping_failed(
            ctx,
            &e,
            "could not record the restored files' stat cache",
            "the next save reads them all",
        ),
    }
    let secs = start.elapsed().as_secs_f64();
    ctx.ui.info(format!(
        "restored {} ({} hit) to {}: {}, {} in {:.2}s (link: {}{})",
        envsnap::key::escaped(&snap.key),
        hit.as_str(),
        dest.display(),
        plural(files, "file"),
        bytes(bytes_n),
        secs,
        link,
        copied_note(hardlink_copied)
    ));
    out["link"] = json!(link);
    out["hardlink_copied"] = json!(hardlink_copied);
    out["seconds"] = json!(secs);
    ctx.ui.emit_json(&out);
    Ok(Outcome::Done)
}

fn restore_venv(f: &Found) -> Result<Outcome> {
    let Found {
        ctx,
        store,
        a,
        snap,
        hit,
        dest,
        opts,
        start,
        ..
    } = f;
    let bar = ctx.ui.progress();
    let r = envsnap::venv::restore(
        store,
        snap,
        dest,
        opts,
        a.python.as_deref(),
        a.dry_run,
        bar.as_ref().map(|b| b as _),
    )?;
    let secs = start.elapsed().as_secs_f64();
    let i = &r.interpreter;
    let interp = format!(
        "{} {} at {} ({})",
        envsnap::venv::inspect::pretty_impl(&i.implementation),
        i.version,
        i.path.display(),
        serde_json::to_value(i.reason)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    );
    let dest = restore::resolve_dest(dest).unwrap_or_else(|_| dest.to_path_buf());
    if a.dry_run {
        ctx.ui.info(format!(
            "dry run: would restore venv {} ({} hit) to {}: {}, {}, {}, interpreter {interp}",
            envsnap::key::escaped(&snap.key),
            hit.as_str(),
            dest.display(),
            plural(r.files, "file"),
            bytes(r.bytes),
            plural_of(r.private_copies, "rewritten copy", "rewritten copies"),
        ));
    } else {
        mark_restored(ctx, store, snap.id);
        *f.facts.borrow_mut() = Facts {
            files: r.files,
            bytes: r.bytes,
            link: Some(r.link.clone()),
            detail: Some(venv_detail(&r)),
        };
        if let Some(f) = &r.fixups {
            for w in &f.warnings {
                ctx.ui.warn(w);
            }
            for rw in &f.rewritten {
                ctx.ui
                    .detail(format!("  rewrote {} ({:?}, {})", rw.path, rw.action, rw.replacements));
            }
            let mut by_action: std::collections::BTreeMap<String, usize> = Default::default();
            for rw in &f.rewritten {
                let k = serde_json::to_value(&rw.action)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default();
                *by_action.entry(k).or_default() += 1;
            }
            let detail: Vec<String> = by_action.iter().map(|(k, n)| format!("{n} {k}")).collect();
            // One short line; which interpreter and how each file was fixed only with -v.
            ctx.ui.info(format!(
                "restored venv {} ({} hit) to {}: {}, {} in {:.2}s (link: {}{}); {} rewritten",
                envsnap::key::escaped(&snap.key),
                hit.as_str(),
                dest.display(),
                plural(r.files, "file"),
                bytes(r.bytes),
                secs,
                r.link,
                copied_note(r.hardlink_copied),
                plural(f.rewritten.len() as u64, "file"),
            ));
            ctx.ui.detail(format!(
                "  interpreter {interp}; rewrites: {}",
                if detail.is_empty() {
                    "none".to_string()
                } else {
                    detail.join(", ")
                }
            ));
        }
    }
    let fix = r.fixups.as_ref();
    let mut out = f.json();
    for (k, v) in [
        ("path", json!(dest)),
        ("files", json!(r.files)),
        ("dirs", json!(r.dirs)),
        ("symlinks", json!(r.symlinks)),
        ("bytes", json!(r.bytes)),
        ("replaces", json!(r.replaces)),
        ("link", json!(r.link)),
        ("hardlink_copied", json!(r.hardlink_copied)),
        ("seconds", json!(secs)),
        ("interpreter", json!(r.interpreter)),
        ("rewritten", fix.map(|f| json!(f.rewritten)).unwrap_or(json!([]))),
        ("warnings", fix.map(|f| json!(f.warnings)).unwrap_or(json!([]))),
        ("fixup_seconds", json!(fix.map(|f| f.fixup_seconds))),
        ("smoke_seconds", json!(fix.map(|f| f.smoke_seconds))),
    ] {
        out[k] = v;
    }
    ctx.ui.emit_json(&out);
    Ok(Outcome::Done)
}

/// apt snapshots are merged into a live system root, not staged as a tree.
fn restore_apt(f: &Found) -> Result<Outcome> {
    let Found {
        ctx,
        store,
        a,
        snap,
        opts,
        ..
    } = f;
    let r = envsnap::apt::restore(store, snap, a.path.as_deref(), opts, a.dry_run)?;
    if !a.dry_run {
        mark_restored(ctx, store, snap.id);
        *f.facts.borrow_mut() = Facts {
            files: r.files,
            bytes: r.bytes,
            link: Some(r.link.clone()),
            detail: Some(super::apt::restore_detail(&r)),
        };
    }
    super::apt::print_restore(ctx, &envsnap::key::escaped(&snap.key), &r);
    let mut out = serde_json::to_value(&r).unwrap_or_default();
    if let (Some(o), serde_json::Value::Object(common)) = (out.as_object_mut(), f.json()) {
        o.extend(common);
    }
    ctx.ui.emit_json(&out);
    Ok(Outcome::Done)
}

/// The LRU stamp gc orders by. The tree is in place already: failing to stamp it is a warning.
fn mark_restored(ctx: &Ctx, store: &Store, id: i64) {
    if let Err(e) = store.mark_restored(id) {
        bookkeeping_failed(
            ctx,
            &e,
            "could not record the restore's time",
            "gc may see this snapshot as unused",
        );
    }
}

/// Bookkeeping after a restore that is done never fails it. An index that is busy or
/// read-only is an expected state (another job's long write, a read-only store): said under
/// `-v` only. Anything else is a warning.
pub fn bookkeeping_failed(ctx: &Ctx, e: &envsnap::Error, what: &str, consequence: &str) {
    let msg = format!("{what} ({e}): {consequence}");
    if e.is_index_unavailable() {
        ctx.ui.detail(format!("envsnap: warning: {msg}"));
    } else {
        ctx.ui.warn(msg);
    }
}

/// A venv restore's event detail: the interpreter it landed on and what the fixups did.
fn venv_detail(r: &envsnap::venv::VenvRestoreOutcome) -> serde_json::Value {
    let mut by_action: std::collections::BTreeMap<String, usize> = Default::default();
    let fix = r.fixups.as_ref();
    for rw in fix.map(|f| f.rewritten.as_slice()).unwrap_or_default() {
        let k = serde_json::to_value(&rw.action)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        *by_action.entry(k).or_default() += 1;
    }
    json!({
        "interpreter": r.interpreter.version,
        "interpreter_reason": r.interpreter.reason,
        "rewritten": fix.map(|f| f.rewritten.len()).unwrap_or(0),
        "rewritten_by_action": by_action,
        "warnings": fix.map(|f| f.warnings.len()).unwrap_or(0),
        "fixup_seconds": fix.map(|f| f.fixup_seconds),
        "smoke_seconds": fix.map(|f| f.smoke_seconds),
    })
}

/// What a hardlink restore copied rather than linked, for the summary line.
fn copied_note(hardlink_copied: u64) -> String {
    if hardlink_copied > 0 {
        format!(
            "; {} copied: a link would have widened their mode",
            plural(hardlink_copied, "file")
        )
    } else {
        String::new()
    }
}

/// The object a restore failed on because the local store's copy is bad or gone.
fn damaged_object(e: &Error) -> Option<envsnap::store::ObjectId> {
    match e {
        Error::Corrupt { id, .. } | Error::MissingObject { id } => id.parse().ok(),
        _ => None,
    }
}

/// Move a damaged local object aside (a hardlink restore already has) and pull the snapshot
/// again, which fetches what the local store now lacks. `Ok(false)`: nothing to retry.
fn refetch(
    ctx: &Ctx,
    store: &envsnap::Store,
    remote: &envsnap::remote::Remote,
    rref: &envsnap::remote::RefName,
    id: &envsnap::store::ObjectId,
    why: &Error,
) -> Result<bool> {
    // Index writes are the restore's data here, not bookkeeping: wait as the pull does.
    store.index().set_busy_timeout(envsnap::index::BUSY_TIMEOUT)?;
    let state = match why {
        Error::MissingObject { .. } => "gone from the local store",
        _ => "damaged in the local store (kept in quarantine/ until `verify --repair`)",
    };
    if store.objects.exists(id) {
        envsnap::restore::link::quarantine(store, id)?;
    }
    ctx.ui.warn(format!(
        "object {id} is {state}: fetching it from {} again",
        remote.url()
    ));
    let (_, rep) = remote.pull(store, rref)?;
    store.index().set_busy_timeout(envsnap::events::RECORD_WAIT)?;
    Ok(rep.objects > 0)
}
