//! `envsnap list [PREFIX]` and `envsnap show KEY`. Both only read: a store that does not exist
//! lists as empty and is never created.

use super::output::{bytes, human_list, outln, plural, time_ns};
use super::{Ctx, Outcome};
use clap::Args;
use envsnap::apt::AptMeta;
use envsnap::index::SnapshotRow;
use envsnap::{Error, Result};
use serde_json::json;
use std::collections::{HashMap, HashSet};

#[derive(Args)]
pub struct ListArgs {
    /// Only keys starting with this prefix (or key template, e.g. 'pip-{os}-')
    prefix: Option<String>,
}

#[derive(Args)]
pub struct ShowArgs {
    /// The snapshot's key, or a key template rendered as `save` renders it
    /// (e.g. 'venv-{os}-{python}-{hash:requirements*.txt}')
    key: String,
}

fn row_json(s: &SnapshotRow) -> serde_json::Value {
    json!({
        "key": s.key, "kind": s.kind, "files": s.files, "dirs": s.dirs, "symlinks": s.symlinks,
        "bytes": s.bytes, "created": time_ns(s.created_ns),
        "last_restored": s.last_restored_ns.map(time_ns), "source": s.source, "tool_version": s.tool_version,
    })
}

/// A remote snapshot as `list`/`show` print it: the local row shape.
fn remote_row(s: &envsnap::remote::RemoteSnapshot) -> SnapshotRow {
    SnapshotRow {
        id: 0,
        key: s.key.clone(),
        kind: s.kind.clone(),
        created_ns: s.created_ns,
        source: s.source.clone(),
        tool_version: s.tool_version.clone(),
        meta: serde_json::Value::Null,
        files: s.files,
        dirs: s.dirs,
        symlinks: s.symlinks,
        bytes: s.bytes,
        root_mode: 0,
        root_uid: 0,
        root_gid: 0,
        root_mtime_ns: 0,
        last_restored_ns: s.last_restored_ns,
    }
}

pub fn list(ctx: &Ctx, a: ListArgs) -> Result<Outcome> {
    let prefix = a.prefix.as_deref().map(|p| ctx.key_arg(p)).transpose()?;
    // Keys live on the remote when there is one (its index cache is in the local store).
    let remote = match ctx.has_remote() {
        true => ctx.open_remote(&ctx.open_store()?)?,
        false => None,
    };
    let snaps = match (&remote, ctx.open_store_read()?) {
        (Some(r), _) => {
            let mut v: Vec<SnapshotRow> = r
                .list(prefix.as_deref().unwrap_or(""))?
                .iter()
                .map(remote_row)
                .collect();
            v.sort_by_key(|s| std::cmp::Reverse(s.created_ns));
            v
        }
        (None, Some(store)) => store.index().list(prefix.as_deref())?,
        (None, None) => {
            ctx.ui.info(format!(
                "no store at {} (nothing saved yet)",
                ctx.store_path()?.display()
            ));
            Vec::new()
        }
    };
    if ctx.ui.json {
        let mut v = json!({ "snapshots": snaps.iter().map(row_json).collect::<Vec<_>>() });
        if let Some(r) = &remote {
            v["remote"] = super::remote::stats_json(r);
        }
        ctx.ui.emit_json(&v);
        return Ok(Outcome::Done);
    }
    // The table is the command's output: stdout, so it can be piped.
    outln!(
        "{:<48} {:<5} {:>8} {:>10}  {:<20}  {:<20}",
        "KEY",
        "KIND",
        "FILES",
        "BYTES",
        "CREATED",
        "LAST RESTORED"
    );
    for s in &snaps {
        outln!(
            "{:<48} {:<5} {:>8} {:>10}  {:<20}  {:<20}",
            envsnap::key::escaped(&s.key),
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
    let key = ctx.key_arg(&a.key)?;
    if ctx.has_remote() {
        if let Some(r) = ctx.open_remote(&ctx.open_store()?)? {
            return show_remote(ctx, &r, &key);
        }
    }
    let key = ctx.key_arg(&a.key)?;
    let no_snapshot = || Error::Usage(format!("no snapshot with key {key:?} (see `envsnap list`)"));
    let store = match ctx.open_store_read()? {
        Some(s) => s,
        None => {
            return Err(Error::Usage(format!(
                "no snapshot with key {key:?}: no store at {} (nothing saved yet)",
                ctx.store_path()?.display()
            )))
        }
    };
    let snap = store.index().get(&key)?.ok_or_else(no_snapshot)?;
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
    let apt = (snap.kind == "apt")
        .then(|| serde_json::from_value::<AptMeta>(snap.meta.clone()).ok())
        .flatten();
    let mut v = row_json(&snap);
    v["meta"] = snap.meta.clone();
    v["distinct_objects"] = json!(mine.len());
    v["distinct_bytes"] = json!(distinct_bytes);
    v["shared_bytes"] = json!(shared_bytes);
    v["unique_bytes"] = json!(distinct_bytes - shared_bytes);
    if let Some(m) = &apt {
        v["delta"] = apt_delta_json(m);
    }
    if ctx.ui.json {
        ctx.ui.emit_json(&v);
        return Ok(Outcome::Done);
    }
    outln!("key:            {}", envsnap::key::escaped(&snap.key));
    outln!("kind:           {}", snap.kind);
    outln!("source:         {}", snap.source.display());
    outln!("created:        {} by {}", time_ns(snap.created_ns), snap.tool_version);
    outln!(
        "last restored:  {}",
        snap.last_restored_ns.map(time_ns).unwrap_or_else(|| "never".into())
    );
    outln!(
        "entries:        {}, {}, {}",
        plural(snap.files, "file"),
        plural(snap.dirs, "dir"),
        plural(snap.symlinks, "symlink")
    );
    outln!(
        "size:           {} ({}, {})",
        bytes(snap.bytes),
        plural(mine.len() as u64, "distinct object"),
        bytes(distinct_bytes)
    );
    outln!(
        "shared:         {} shared with other snapshots, {} only here",
        bytes(shared_bytes),
        bytes(distinct_bytes - shared_bytes)
    );
    match &apt {
        Some(m) => show_apt(ctx, m),
        None if snap.meta.as_object().is_some_and(|m| !m.is_empty()) => {
            outln!(
                "metadata:       {}",
                serde_json::to_string_pretty(&snap.meta).unwrap_or_default()
            );
        }
        None => {}
    }
    Ok(Outcome::Done)
}

fn apt_delta_json(m: &AptMeta) -> serde_json::Value {
    let (added, upgraded): (Vec<_>, Vec<_>) = m.packages.iter().partition(|p| p.base_version.is_none());
    json!({
        "added": added.iter().map(|p| json!({"name": p.name, "arch": p.arch, "version": p.version})).collect::<Vec<_>>(),
        "changed": upgraded.iter().map(|p| json!({"name": p.name, "arch": p.arch, "version": p.version, "base_version": p.base_version})).collect::<Vec<_>>(),
        "removed": m.removed_packages.iter().map(|p| json!({"name": p.name, "arch": p.arch, "version": p.version})).collect::<Vec<_>>(),
        "removed_paths": m.removed_paths.len(),
        "shared_files": m.shared.iter().map(|s| &s.path).collect::<Vec<_>>(),
        "base_packages": m.base_packages.len(),
    })
}

/// An apt snapshot is what one install changed: show that delta; the base it was taken on
/// (thousands of packages) only with -v.
fn show_apt(ctx: &Ctx, m: &AptMeta) {
    let (added, changed): (Vec<_>, Vec<_>) = m.packages.iter().partition(|p| p.base_version.is_none());
    let names = |v: Vec<String>| {
        if v.is_empty() {
            "none".to_string()
        } else {
            format!("{}: {}", plural(v.len() as u64, "package"), human_list(&v, "and"))
        }
    };
    outln!(
        "added:          {}",
        names(added.iter().map(|p| format!("{} {}", p.name, p.version)).collect())
    );
    outln!(
        "changed:        {}",
        names(
            changed
                .iter()
                .map(|p| format!(
                    "{} {} -> {}",
                    p.name,
                    p.base_version.as_deref().unwrap_or("?"),
                    p.version
                ))
                .collect()
        )
    );
    outln!(
        "removed:        {}",
        names(
            m.removed_packages
                .iter()
                .map(|p| format!("{} {}", p.name, p.version))
                .collect()
        )
    );
    outln!(
        "paths:          {}, {} merged",
        plural(m.removed_paths.len() as u64, "removed path"),
        plural(m.shared.len() as u64, "shared state file")
    );
    let os = m
        .os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown system".into());
    outln!(
        "base:           {} on {os}{}",
        plural(m.base_packages.len() as u64, "package"),
        if ctx.ui.verbose { "" } else { " (list them with -v)" }
    );
    if ctx.ui.verbose {
        for p in &m.base_packages {
            outln!("  {}:{} {}", p.name, p.arch, p.version);
        }
    }
}

/// `show KEY` on the remote: the newest ref of exactly KEY and its manifest.
fn show_remote(ctx: &Ctx, r: &envsnap::remote::Remote, key: &str) -> Result<Outcome> {
    let Some(s) = r.show(key)? else {
        return Err(Error::Usage(format!(
            "no snapshot with key {key:?} on {} (see `envsnap list`)",
            r.url()
        )));
    };
    let mut v = row_json(&remote_row(&s));
    v["manifest"] = json!(s.manifest);
    v["remote"] = super::remote::stats_json(r);
    if ctx.ui.json {
        ctx.ui.emit_json(&v);
        return Ok(Outcome::Done);
    }
    outln!("key:            {}", s.key);
    outln!("remote:         {}", r.url());
    outln!("kind:           {}", s.kind);
    outln!("source:         {}", s.source.display());
    outln!("created:        {} by {}", time_ns(s.created_ns), s.tool_version);
    outln!(
        "last restored:  {}",
        s.last_restored_ns.map(time_ns).unwrap_or_else(|| "never".into())
    );
    outln!(
        "entries:        {} files, {} dirs, {} symlinks",
        s.files,
        s.dirs,
        s.symlinks
    );
    outln!("size:           {}", bytes(s.bytes));
    outln!("manifest:       {}", s.manifest);
    Ok(Outcome::Done)
}
