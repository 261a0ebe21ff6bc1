//! `envsnap push KEY…`, `envsnap pull KEY…`, and the remote steps other commands share.

use super::output::bytes;
use super::{Ctx, Outcome};
use clap::Args;
use envsnap::remote::Remote;
use envsnap::{Error, Result, Store};
use serde_json::json;

#[derive(Args)]
pub struct PushArgs {
    /// Keys of local snapshots to upload
    #[arg(required = true)]
    keys: Vec<String>,
}

#[derive(Args)]
pub struct PullArgs {
    /// Keys to download from the remote (exact keys)
    #[arg(required = true)]
    keys: Vec<String>,
}

pub fn need_remote(ctx: &Ctx, store: &Store, what: &str) -> Result<Remote> {
    ctx.open_remote(store)?.ok_or_else(|| {
        Error::Usage(format!(
            "{what} needs a remote: pass --remote s3://BUCKET/PREFIX (or file:///PATH) or set ENVSNAP_REMOTE"
        ))
    })
}

/// The `remote` JSON object every command run against a remote reports.
pub fn stats_json(r: &Remote) -> serde_json::Value {
    serde_json::to_value(r.stats()).unwrap_or_default()
}

pub fn push(ctx: &Ctx, a: PushArgs) -> Result<Outcome> {
    let store = ctx.open_store()?;
    let remote = need_remote(ctx, &store, "push")?;
    let _lock = store.lock_shared()?;
    let mut pushed = Vec::new();
    for key in &a.keys {
        let r = remote.push(&store, key)?;
        ctx.ui.info(format!(
            "pushed {key} to {}: {} new objects ({}) in {} packs ({})",
            remote.url(),
            r.objects,
            bytes(r.object_bytes),
            r.packs,
            bytes(r.pack_bytes)
        ));
        pushed.push(r);
    }
    ctx.ui
        .emit_json(&json!({ "pushed": pushed, "remote": stats_json(&remote) }));
    Ok(Outcome::Done)
}

pub fn pull(ctx: &Ctx, a: PullArgs) -> Result<Outcome> {
    let store = ctx.open_store()?;
    let remote = need_remote(ctx, &store, "pull")?;
    let _lock = store.lock_shared()?;
    let mut pulled = Vec::new();
    let mut missing = Vec::new();
    for key in &a.keys {
        let Some((r, _)) = remote.lookup(key, &[])? else {
            ctx.ui
                .info(format!("miss: no snapshot for key {key} on {}", remote.url()));
            missing.push(key.clone());
            continue;
        };
        let (_, rep) = remote.pull(&store, &r)?;
        ctx.ui.info(format!(
            "pulled {key} from {}: {} objects ({}) from {} packs in {} ranges",
            remote.url(),
            rep.objects,
            bytes(rep.object_bytes),
            rep.packs,
            rep.ranges
        ));
        pulled.push(rep);
    }
    ctx.ui.emit_json(&json!({
        "pulled": pulled, "missing": missing, "remote": stats_json(&remote),
    }));
    Ok(if missing.is_empty() {
        Outcome::Done
    } else {
        Outcome::Miss
    })
}

/// After a local save: upload it. On failure the local save stays, the error is printed as the
/// command's one error line, and the command exits 2 (`Err` is returned for the caller to
/// report after its own summary).
pub fn push_after_save(ctx: &Ctx, store: &Store, key: &str) -> (serde_json::Value, Option<Error>) {
    let remote = match ctx.open_remote(store) {
        Ok(Some(r)) => r,
        Ok(None) => return (serde_json::Value::Null, None),
        Err(e) => return (json!({ "error": e.to_string() }), Some(e)),
    };
    // Shared lock: a local gc cannot delete objects while they are packed.
    let lock = store.lock_shared();
    let pushed = lock.and_then(|_l| remote.push(store, key));
    match pushed {
        Ok(r) => {
            ctx.ui.detail(format!(
                "pushed {key} to {}: {} new objects ({}) in {} packs ({})",
                remote.url(),
                r.objects,
                bytes(r.object_bytes),
                r.packs,
                bytes(r.pack_bytes)
            ));
            let mut v = stats_json(&remote);
            v["pushed"] = serde_json::to_value(&r).unwrap_or_default();
            (v, None)
        }
        Err(e) => {
            let mut v = stats_json(&remote);
            v["error"] = json!(e.to_string());
            (v, Some(e))
        }
    }
}

/// Report a failed push after a kept local save: one error line, exit 2.
pub fn push_failed(ctx: &Ctx, key: &str, e: &Error) -> Outcome {
    let _ = ctx;
    eprintln!("envsnap: error: saved {key} locally, but the push to the remote failed: {e}");
    Outcome::Failed
}
