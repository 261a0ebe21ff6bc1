//! `envsnap list [PREFIX]` and `envsnap show KEY`.

use super::output::{bytes, time_ns};
use super::{Ctx, Outcome};
use clap::Args;
use envsnap::index::SnapshotRow;
use envsnap::{Error, Result};
use serde_json::json;
use std::collections::{HashMap, HashSet};

#[derive(Args)]
pub struct ListArgs {
    /// Only keys starting with this prefix
    prefix: Option<String>,
}

#[derive(Args)]
pub struct ShowArgs {
    key: String,
}

fn row_json(s: &SnapshotRow) -> serde_json::Value {
    json!({
        "key": s.key, "kind": s.kind, "files": s.files, "dirs": s.dirs, "symlinks": s.symlinks,
        "bytes": s.bytes, "created": time_ns(s.created_ns),
        "last_restored": s.last_restored_ns.map(time_ns), "source": s.source, "tool_version": s.tool_version,
    })
}

pub fn list(ctx: &Ctx, a: ListArgs) -> Result<Outcome> {
    let store = ctx.open_store()?;
    let snaps = store.index().list(a.prefix.as_deref())?;
    if ctx.ui.json {
        ctx.ui
            .emit_json(&json!({ "snapshots": snaps.iter().map(row_json).collect::<Vec<_>>() }));
        return Ok(Outcome::Done);
    }
    // The table is the command's output: stdout, so it can be piped.
    println!(
        "{:<48} {:<5} {:>8} {:>10}  {:<20}  {:<20}",
        "KEY", "KIND", "FILES", "BYTES", "CREATED", "LAST RESTORED"
    );
    for s in &snaps {
        println!(
            "{:<48} {:<5} {:>8} {:>10}  {:<20}  {:<20}",
            s.key,
            s.kind,
            s.files,
            bytes(s.bytes),
            time_ns(s.created_ns),
            s.last_restored_ns.map(time_ns).unwrap_or_else(|| "never".into())
        );
    }
    Ok(Outcome::Done)
}

pub fn show(ctx: &Ctx, a: ShowArgs) -> Result<Outcome> {
    envsnap::key::validate(&a.key)?;
    let store = ctx.open_store()?;
    let snap = store
        .index()
        .get(&a.key)?
        .ok_or_else(|| Error::Usage(format!("no snapshot with key {:?} (see `envsnap list`)", a.key)))?;
    // Sharing: bytes of this snapshot's distinct objects that other snapshots also reference.
    let refs = store.index().object_refs()?;
    let mut mine: HashMap<envsnap::store::ObjectId, u64> = HashMap::new();
    let mut others: HashSet<envsnap::store::ObjectId> = HashSet::new();
    for (s, o, n) in refs {
        if s == snap.id {
            mine.insert(o, n);
        } else {
            others.insert(o);
        }
    }
    let distinct_bytes: u64 = mine.values().sum();
    let shared_bytes: u64 = mine.iter().filter(|(o, _)| others.contains(*o)).map(|(_, n)| n).sum();
    let mut v = row_json(&snap);
    v["meta"] = snap.meta.clone();
    v["distinct_objects"] = json!(mine.len());
    v["distinct_bytes"] = json!(distinct_bytes);
    v["shared_bytes"] = json!(shared_bytes);
    v["unique_bytes"] = json!(distinct_bytes - shared_bytes);
    if ctx.ui.json {
        ctx.ui.emit_json(&v);
        return Ok(Outcome::Done);
    }
    println!("key:            {}", snap.key);
    println!("kind:           {}", snap.kind);
    println!("source:         {}", snap.source.display());
    println!("created:        {} by {}", time_ns(snap.created_ns), snap.tool_version);
    println!(
        "last restored:  {}",
        snap.last_restored_ns.map(time_ns).unwrap_or_else(|| "never".into())
    );
    println!(
        "entries:        {} files, {} dirs, {} symlinks",
        snap.files, snap.dirs, snap.symlinks
    );
    println!(
        "size:           {} ({} distinct objects, {})",
        bytes(snap.bytes),
        mine.len(),
        bytes(distinct_bytes)
    );
    println!(
        "shared:         {} shared with other snapshots, {} only here",
        bytes(shared_bytes),
        bytes(distinct_bytes - shared_bytes)
    );
    if snap.meta.as_object().is_some_and(|m| !m.is_empty()) {
        println!(
            "metadata:       {}",
            serde_json::to_string_pretty(&snap.meta).unwrap_or_default()
        );
    }
    Ok(Outcome::Done)
}
