//! `envsnap save dir PATH --key KEY` (and the adapters' `save venv`, `save apt`).

use super::output::{bytes, plural, plural_of};
use super::{Ctx, Outcome};
use clap::{Args, Subcommand};
use envsnap::events::{Event, Op};
use envsnap::save::{save, SaveReport, SaveRequest};
use envsnap::Result;
use std::path::PathBuf;

#[derive(Args)]
pub struct SaveArgs {
    #[command(subcommand)]
    what: SaveWhat,
}

#[derive(Subcommand)]
enum SaveWhat {
    /// Any directory: a pip download cache, build outputs, a toolchain
    Dir {
        /// The directory to snapshot
        path: PathBuf,
        /// Cache key or key template, e.g. 'dir-{os}-{hash:Cargo.lock}' (updatable: saving an existing key points it at the new snapshot)
        #[arg(long)]
        key: String,
    },
    /// A Python virtualenv (venv, virtualenv, uv, poetry's .venv): restorable to any path and
    /// onto any same-minor interpreter
    Venv {
        /// The venv directory (must hold pyvenv.cfg)
        #[arg(default_value = ".venv")]
        path: PathBuf,
        /// Cache key or key template, e.g. 'venv-{os}-{python}-{hash:requirements*.txt}' ({python} is
        /// the venv's own interpreter; updatable: saving an existing key points it at the new snapshot)
        #[arg(long)]
        key: String,
    },
    /// What apt-get installed since `envsnap apt begin ROOT`
    Apt {
        /// The system root given to `apt begin`
        #[arg(default_value = "/")]
        root: PathBuf,
        /// Cache key or key template (render `{apt-base}` before installing, see docs/apt.md)
        #[arg(long)]
        key: String,
    },
}

pub fn run(ctx: &Ctx, args: SaveArgs) -> Result<Outcome> {
    let started_ns = envsnap::repo::now_ns();
    match args.what {
        SaveWhat::Dir { path, key: tpl } => {
            let (key, _) = super::key::keys_for(ctx, &tpl, &[], None, None, None)?;
            let store = ctx.open_store()?;
            let bar = ctx.ui.progress();
            let mut req = SaveRequest::tree(key, "dir", path);
            req.progress = bar.as_ref().map(|b| b as _);
            let report = save(&store, req)?;
            let (remote, failed) = super::remote::push_after_save(ctx, &store, &report.key);
            print_report(ctx, &report, remote_extra(ctx, serde_json::json!({}), remote));
            record_save(ctx, &store, started_ns, &tpl, &report);
            Ok(failed.map_or(Outcome::Done, |e| super::remote::push_failed(ctx, &report.key, &e)))
        }
        SaveWhat::Venv { path, key: tpl } => {
            // `{python}` is the venv's own interpreter.
            let (key, _) = super::key::keys_for(ctx, &tpl, &[], None, Some(&path), None)?;
            let store = ctx.open_store()?;
            let bar = ctx.ui.progress();
            let r = envsnap::venv::save_venv(&store, &path, &key, bar.as_ref().map(|b| b as _))?;
            let i = &r.venv.interpreter;
            if let Some(e) = &r.venv.probe_error {
                let first = e.lines().next().unwrap_or_default();
                ctx.ui.warn(format!(
                    "the venv's python could not run ({first}); interpreter taken from pyvenv.cfg"
                ));
                e.lines().skip(1).for_each(|l| ctx.ui.detail(format!("  {l}")));
            }
            // One short line; where it lives and what holds its paths only with -v.
            ctx.ui.info(format!(
                "venv ({}, {} {})",
                r.venv.flavour,
                envsnap::venv::inspect::pretty_impl(&i.implementation),
                i.version,
            ));
            ctx.ui.detail(format!(
                "venv {}: interpreter from {}; {} its absolute path",
                r.venv.root.display(),
                i.home.display(),
                plural_of(r.files_with_paths, "file holds", "files hold"),
            ));
            let extra = serde_json::json!({ "venv": r.venv, "files_with_paths": r.files_with_paths });
            let (remote, failed) = super::remote::push_after_save(ctx, &store, &r.save.key);
            print_report(ctx, &r.save, remote_extra(ctx, extra, remote));
            record_save(ctx, &store, started_ns, &tpl, &r.save);
            Ok(failed.map_or(Outcome::Done, |e| super::remote::push_failed(ctx, &r.save.key, &e)))
        }
        SaveWhat::Apt { root, key: tpl } => {
            let (key, _) = super::key::keys_for(ctx, &tpl, &[], None, None, Some(&root))?;
            let store = ctx.open_store()?;
            let r = envsnap::apt::save(&store, &root, &key)?;
            ctx.ui.info(format!(
                "saved {} (apt): {} added or changed, {}, {} ({}), {}, {} in {:.2}s",
                r.key,
                plural(r.packages.len() as u64, "package"),
                plural(r.payload_entries, "path"),
                plural(r.files, "file"),
                bytes(r.bytes),
                plural(r.removed_paths, "removed path"),
                plural(r.merged_files, "shared file"),
                r.seconds
            ));
            let (remote, failed) = super::remote::push_after_save(ctx, &store, &r.key);
            let mut v = serde_json::to_value(&r).unwrap_or_default();
            if ctx.has_remote() {
                v["remote"] = remote;
            }
            ctx.ui.emit_json(&v);
            super::manage::record_event_with_remote(ctx, &store, &super::apt::save_event(started_ns, &tpl, &r));
            Ok(failed.map_or(Outcome::Done, |e| super::remote::push_failed(ctx, &r.key, &e)))
        }
    }
}

/// A save's event (a failed save records none: it changed nothing).
fn record_save(ctx: &Ctx, store: &envsnap::Store, started_ns: i64, tpl: &str, r: &SaveReport) {
    let ev = Event {
        time_ns: started_ns,
        op: Op::Save,
        key: r.key.clone(),
        template: envsnap::key::is_template(tpl).then(|| tpl.to_string()),
        matched_key: None,
        hit: None,
        kind: Some(r.kind.clone()),
        files: r.files,
        bytes: r.bytes,
        seconds: r.seconds,
        link: None,
        detail: Some(serde_json::json!({
            "hashed_files": r.hashed_files, "new_objects": r.new_objects, "new_bytes": r.new_bytes,
        })),
    };
    super::manage::record_event_with_remote(ctx, store, &ev);
}

/// With a remote, the save's JSON gets a `remote` object (requests, bytes, what was pushed).
fn remote_extra(ctx: &Ctx, mut extra: serde_json::Value, remote: serde_json::Value) -> serde_json::Value {
    if ctx.has_remote() {
        extra["remote"] = remote;
    }
    extra
}

/// The summary every kind of save prints; `extra` adds adapter fields to the JSON.
pub fn print_report(ctx: &Ctx, r: &SaveReport, extra: serde_json::Value) {
    for p in &r.skipped_special {
        ctx.ui.warn(format!(
            "skipped special file {} (devices, FIFOs and sockets are not saved)",
            p.display()
        ));
    }
    for p in &r.vanished {
        ctx.ui
            .warn(format!("skipped {}: deleted while the save read the tree", p.display()));
    }
    for p in &r.changed_while_read {
        ctx.ui.warn(format!(
            "{} changed while it was read, {} times: saved the last read, which may mix old and new \
             content (it will be read again by the next save); stop what writes it before saving",
            p.display(),
            envsnap::save::MAX_REREADS + 1
        ));
    }
    ctx.ui.info(format!(
        "saved {} ({}): {}, {}, {}, {}; {} hashed, {} ({}) in {:.2}s",
        r.key,
        r.kind,
        plural(r.files, "file"),
        plural(r.dirs, "dir"),
        plural(r.symlinks, "symlink"),
        bytes(r.bytes),
        r.hashed_files,
        plural(r.new_objects, "new object"),
        bytes(r.new_bytes),
        r.seconds
    ));
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let (Some(obj), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
        obj.extend(extra);
    }
    ctx.ui.emit_json(&v);
}
