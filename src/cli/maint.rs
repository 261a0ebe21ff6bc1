//! `envsnap gc` and `envsnap verify`.

use super::output::bytes;
use super::{Ctx, Outcome};
use clap::Args;
use envsnap::gc::GcOptions;
use envsnap::Result;

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
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Delete corrupt objects so the next save stores their content again
    #[arg(long)]
    repair: bool,
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
    let store = ctx.open_store()?;
    let opts = GcOptions {
        max_age: Some(a.max_age),
        max_size: a.max_size,
        keep_last: a.keep_last,
        dry_run: a.dry_run,
    };
    let r = envsnap::gc::gc(&store, &opts)?;
    for k in &r.removed_snapshots {
        ctx.ui.detail(format!(
            "{}removed snapshot {k}",
            if a.dry_run { "would have " } else { "" }
        ));
    }
    ctx.ui.info(format!(
        "gc{}: removed {} snapshots and {} objects ({}); kept {} snapshots, store holds {}",
        if a.dry_run { " (dry run)" } else { "" },
        r.removed_snapshots.len(),
        r.removed_objects,
        bytes(r.freed_bytes),
        r.kept_snapshots,
        bytes(r.store_bytes)
    ));
    ctx.ui.emit_json(&serde_json::to_value(&r).unwrap_or_default());
    Ok(Outcome::Done)
}

pub fn verify(ctx: &Ctx, a: VerifyArgs) -> Result<Outcome> {
    let store = ctx.open_store()?;
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
    if r.index_missing {
        ctx.ui.warn(format!(
            "the store's index was missing: every snapshot is gone ({} objects no snapshot references; \
             `envsnap gc` removes them)",
            r.unreferenced_objects
        ));
    } else if r.unreferenced_objects > 0 {
        ctx.ui.detail(format!(
            "{} objects no snapshot references (`envsnap gc` removes them)",
            r.unreferenced_objects
        ));
    }
    for d in &r.damaged_snapshots {
        ctx.ui.warn(format!("{d}{}", if a.repair { " (removed)" } else { "" }));
    }
    for k in &r.broken_snapshots {
        ctx.ui.warn(format!(
            "snapshot {k} is broken by a corrupt or missing object: save it again"
        ));
    }
    ctx.ui.emit_json(&serde_json::to_value(&r).unwrap_or_default());
    if r.ok() {
        ctx.ui.info(format!(
            "verified {} objects ({}): all intact",
            r.objects,
            bytes(r.bytes)
        ));
        Ok(Outcome::Done)
    } else {
        if r.index_missing {
            eprintln!("envsnap: error: the store's index was missing: save your snapshots again");
        } else {
            eprintln!(
                "envsnap: error: verify found {} corrupt and {} missing objects and {} damaged snapshots \
                 breaking {} snapshots: run `envsnap verify --repair`, then save them again",
                r.corrupt.len(),
                r.missing.len(),
                r.damaged_snapshots.len(),
                r.broken_snapshots.len()
            );
        }
        Ok(Outcome::Failed)
    }
}
