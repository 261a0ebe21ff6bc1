//! `envsnap gc` and `envsnap verify`.

use super::output::{bytes, human_list, plural};
use super::{Ctx, Outcome};
use clap::Args;
use envsnap::gc::GcOptions;
use envsnap::Result;
use serde_json::json;

#[derive(Args)]
pub struct GcArgs {
    /// Remove snapshots not created or restored within this long (e.g. 7d, 12h)
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    max_age: std::time::Duration,
    /// Then remove least recently used snapshots until the store fits (e.g. 5GB, 500MiB)
    #[arg(long, value_parser = parse_size)]
    max_size: Option<u64>,
    /// Never remove the N most recently used snapshots
    #[arg(long, default_value_t = 0)]
    keep_last: usize,
    /// Report what would be removed, remove nothing
    #[arg(long)]
    dry_run: bool,
    /// With --remote: how long unreferenced remote data marked by one gc survives before a
    /// later gc deletes it (concurrent saves finish within it)
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    grace: std::time::Duration,
    /// With --remote: copy the live objects of a pack out into new packs when they are less
    /// than this percentage of its bytes, so the rest can be deleted; 0 never repacks
    #[arg(long, value_name = "PERCENT", default_value_t = envsnap::remote::gc::DEFAULT_REPACK_THRESHOLD,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    repack_threshold: u8,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Delete corrupt objects and the snapshots broken by corrupt or missing objects, so their
    /// restores are misses and the next save stores the content again
    #[arg(long)]
    repair: bool,
    /// With a remote: also download every pack the index names, check that it hashes to its
    /// name, and decompress and hash every object in it (a local store is always checked so)
    #[arg(long)]
    deep: bool,
}

pub fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 7d, 36h, 30min)"))
}

fn parse_size(s: &str) -> std::result::Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{e} (examples: 5GB, 500MiB)"))
}

pub fn gc(ctx: &Ctx, a: GcArgs) -> Result<Outcome> {
    if ctx.remote_flag {
        // The remote's cached index lives in the local store.
        let store = ctx.open_store()?;
        return remote_gc(ctx, &store, &a);
    }
    let verb = if a.dry_run { "would remove" } else { "removed" };
    // Nothing to collect in a store that does not exist: never create one to say so.
    let Some(store) = ctx.open_store_read()? else {
        ctx.ui.info(format!(
            "gc: no store at {}; nothing to remove",
            ctx.store_path()?.display()
        ));
        ctx.ui.emit_json(&json!({
            "removed_snapshots": [], "kept_snapshots": 0, "removed_objects": 0, "freed_bytes": 0,
            "store_bytes": 0, "removed_temp_files": 0, "dry_run": a.dry_run,
        }));
        return Ok(Outcome::Done);
    };
    let opts = GcOptions {
        max_age: Some(a.max_age),
        max_size: a.max_size,
        keep_last: a.keep_last,
        dry_run: a.dry_run,
    };
    let r = envsnap::gc::gc(&store, &opts)?;
    for k in &r.removed_snapshots {
        ctx.ui.detail(format!("{verb} snapshot {}", envsnap::key::escaped(k)));
    }
    super::restore::report_leftovers(
        ctx,
        &envsnap::restore::Leftovers {
            removed: r.removed_staging.clone(),
            recovered: r.recovered_trees.clone(),
            kept: r.kept_old_trees.clone(),
        },
    );
    ctx.ui.info(format!(
        "gc{}: {verb} {} and {} ({}); {} {}, store {} {}",
        if a.dry_run { " (dry run)" } else { "" },
        plural(r.removed_snapshots.len() as u64, "snapshot"),
        plural(r.removed_objects, "object"),
        bytes(r.freed_bytes),
        if a.dry_run { "would keep" } else { "kept" },
        plural(r.kept_snapshots, "snapshot"),
        if a.dry_run { "would hold" } else { "holds" },
        bytes(r.store_bytes)
    ));
    let mut v = serde_json::to_value(&r).unwrap_or_default();
    v["dry_run"] = json!(a.dry_run);
    ctx.ui.emit_json(&v);
    Ok(Outcome::Done)
}

/// `gc --remote`: refs by age and size, then two-phase removal of unreferenced data.
fn remote_gc(ctx: &Ctx, store: &envsnap::Store, a: &GcArgs) -> Result<Outcome> {
    let remote = super::remote::need_remote(ctx, store, "gc --remote")?;
    let opts = envsnap::remote::gc::RemoteGcOptions {
        max_age: Some(a.max_age),
        max_size: a.max_size,
        keep_last: a.keep_last,
        grace: a.grace,
        dry_run: a.dry_run,
        repack_threshold: a.repack_threshold,
    };
    let r = remote.gc(&opts)?;
    for p in &r.repack_skipped {
        ctx.ui.warn(p);
    }
    for k in &r.removed_keys {
        ctx.ui.detail(format!(
            "{}removed key {k} from the remote",
            if a.dry_run { "would have " } else { "" }
        ));
    }
    ctx.ui.info(format!(
        "gc {}{}: removed {} ({}), kept {}; marked {} and {}; repacked {} ({}, {} live copied into {} new); deleted {} ({}) and {} marked at least {} ago",
        remote.url(),
        if a.dry_run { " (dry run)" } else { "" },
        plural(r.removed_keys.len() as u64, "key"),
        plural(r.removed_refs, "ref"),
        r.kept_keys,
        plural(r.marked_packs, "pack"),
        plural(r.marked_manifests, "manifest"),
        plural(r.repacked_packs, "pack"),
        bytes(r.repacked_bytes),
        bytes(r.repack_copied_bytes),
        r.repack_new_packs,
        plural(r.deleted_packs, "pack"),
        bytes(r.deleted_pack_bytes),
        plural(r.deleted_manifests, "manifest"),
        humantime::format_duration(a.grace)
    ));
    if r.stale_temp_files > 0 {
        ctx.ui.detail(format!(
            "{} {}left by writers killed mid-object",
            plural(r.stale_temp_files, "temp file"),
            if a.dry_run { "would be removed, " } else { "removed, " }
        ));
    }
    // Events: fold the small per-operation objects into one bundle, drop the expired.
    let ev = envsnap::events::compact_remote(&remote, a.dry_run)?;
    ctx.ui.detail(format!(
        "events: {} folded into {}, {} expired, {} objects {}deleted",
        ev.compacted,
        ev.bundle.as_deref().unwrap_or("no bundle"),
        ev.expired,
        ev.deleted_objects,
        if a.dry_run { "would be " } else { "" }
    ));
    let mut v = serde_json::to_value(&r).unwrap_or_default();
    v["events"] = serde_json::to_value(&ev).unwrap_or_default();
    v["remote"] = super::remote::stats_json(&remote);
    ctx.ui.emit_json(&v);
    Ok(Outcome::Done)
}

pub fn verify(ctx: &Ctx, a: VerifyArgs) -> Result<Outcome> {
    if ctx.has_remote() {
        let store = ctx.open_store()?;
        if let Some(remote) = ctx.open_remote(&store)? {
            return remote_verify(ctx, &remote, a.deep);
        }
    }
    let Some(store) = ctx.open_store_read()? else {
        ctx.ui.info(format!(
            "no store at {}: nothing to verify",
            ctx.store_path()?.display()
        ));
        ctx.ui
            .emit_json(&serde_json::to_value(envsnap::verify::VerifyReport::default()).unwrap_or_default());
        return Ok(Outcome::Done);
    };
    let r = envsnap::verify::verify(&store, a.repair)?;
    for o in &r.corrupt {
        ctx.ui.warn(format!(
            "corrupt object {o}{}",
            if a.repair { " (removed)" } else { "" }
        ));
    }
    for o in &r.missing {
        ctx.ui.warn(format!("missing object {o}"));
    }
    for o in &r.unreadable {
        ctx.ui.warn(format!("unreadable object {o}"));
    }
    if r.index_missing {
        ctx.ui.warn(format!(
            "the store's index was missing: every snapshot is gone ({} no snapshot references; \
             `envsnap gc` removes them)",
            plural(r.unreferenced_objects, "object")
        ));
    } else if r.unreferenced_objects > 0 {
        ctx.ui.detail(format!(
            "{} no snapshot references (`envsnap gc` removes them)",
            plural(r.unreferenced_objects, "object")
        ));
    }
    for q in &r.quarantined {
        ctx.ui.warn(format!(
            "quarantined object {q}: a restore found it damaged{}",
            if a.repair { " (removed)" } else { "" }
        ));
    }
    for d in &r.damaged_snapshots {
        ctx.ui.warn(format!("{d}{}", if a.repair { " (removed)" } else { "" }));
    }
    if !a.repair {
        for k in &r.broken_snapshots {
            ctx.ui
                .warn(format!("snapshot {k} is broken by a corrupt or missing object"));
        }
    }
    ctx.ui.emit_json(&serde_json::to_value(&r).unwrap_or_default());
    let quoted = |keys: &[String]| {
        let q: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
        human_list(&q, "and")
    };
    if r.ok() {
        ctx.ui.info(format!(
            "verified {} ({}): all intact",
            plural(r.objects, "object"),
            bytes(r.bytes)
        ));
        Ok(Outcome::Done)
    } else if r.index_missing {
        eprintln!("envsnap: error: the store's index was missing: save your snapshots again");
        Ok(Outcome::Failed)
    } else if a.repair && r.repaired() {
        let mut line = format!(
            "repaired: removed {} and {}; the store is sound",
            plural(r.removed, "corrupt object"),
            plural(r.removed_snapshots.len() as u64, "broken snapshot")
        );
        if !r.removed_snapshots.is_empty() {
            line.push_str(&format!("; save {} again", quoted(&r.removed_snapshots)));
        }
        ctx.ui.info(line);
        Ok(Outcome::Done)
    } else if a.repair {
        eprintln!(
            "envsnap: error: {} could not be read (reported, not deleted): check the store's disk and permissions",
            plural(r.unreadable.len() as u64, "object")
        );
        Ok(Outcome::Failed)
    } else {
        let broken = if r.broken_snapshots.is_empty() {
            String::new()
        } else {
            format!(
                " breaking {} ({})",
                plural(r.broken_snapshots.len() as u64, "snapshot"),
                quoted(&r.broken_snapshots)
            )
        };
        eprintln!(
            "envsnap: error: verify found {}, {}, {}, {} and {}{broken}: run `envsnap verify --repair`, \
             then save the snapshots it removes again",
            plural(r.corrupt.len() as u64, "corrupt object"),
            plural(r.quarantined.len() as u64, "quarantined object"),
            plural(r.missing.len() as u64, "missing object"),
            plural(r.unreadable.len() as u64, "unreadable object"),
            plural(r.damaged_snapshots.len() as u64, "damaged snapshot"),
        );
        Ok(Outcome::Failed)
    }
}

/// `verify` with a remote: every ref's manifest decodes and passes the safety rules, every object
/// it references is in the index, and every pack the index names exists and is long enough;
/// with `--deep`, every such pack hashes to its name and every object in it to its id.
fn remote_verify(ctx: &Ctx, remote: &envsnap::remote::Remote, deep: bool) -> Result<Outcome> {
    let r = remote.verify(deep)?;
    for p in &r.problems {
        ctx.ui.warn(p);
    }
    let mut v = serde_json::to_value(&r).unwrap_or_default();
    v["remote"] = super::remote::stats_json(remote);
    ctx.ui.emit_json(&v);
    if r.problems.is_empty() {
        ctx.ui.info(format!(
            "verified {}: {}, {} in {}: {}",
            remote.url(),
            plural(r.keys, "key"),
            plural(r.objects, "object"),
            plural(r.packs, "pack"),
            if deep {
                format!("all present and intact ({} read and hashed)", bytes(r.checked_bytes))
            } else {
                "all present (--deep also downloads and hashes them)".to_string()
            }
        ));
        Ok(Outcome::Done)
    } else {
        eprintln!(
            "envsnap: error: remote {} has {} (first: {}): save the affected keys again",
            remote.url(),
            plural(r.problems.len() as u64, "problem"),
            r.problems[0]
        );
        Ok(Outcome::Failed)
    }
}
