//! `envsnap apt begin [ROOT]` and `envsnap apt install --key KEY … PKG…`.
//! (`save apt` lives in save.rs, the apt arm of `restore` in restore.rs.)

use super::output::{bytes, github_output, plural};
use super::{Ctx, Outcome};
use clap::{Args, Subcommand};
use envsnap::apt::{self, AptRestoreReport, InstallOutcome, InstallRequest};
use envsnap::events::{Event, HitKind, Op};
use envsnap::Result;
use std::path::PathBuf;

#[derive(Args)]
pub struct AptArgs {
    #[command(subcommand)]
    what: AptWhat,
}

#[derive(Subcommand)]
enum AptWhat {
    /// Record a baseline of ROOT before `apt-get install`, for a later `envsnap save apt`
    Begin {
        /// The system root to watch
        #[arg(default_value = "/")]
        root: PathBuf,
    },
    /// Restore the packages' snapshot on a hit; on a miss run `apt-get install -y PKG…` and save it
    Install {
        /// Cache key or key template, e.g. 'apt-{apt-base}-{hash:apt-packages.txt}' (see docs/keys.md)
        #[arg(long)]
        key: String,
        /// Key prefixes (or templates) tried in order when the key has no snapshot
        #[arg(long = "fallback", value_name = "PREFIX")]
        fallbacks: Vec<String>,
        /// The system root (apt-get runs in `chroot ROOT` unless it is /)
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Passed to apt-get
        #[arg(long)]
        no_install_recommends: bool,
        /// apt-get `-o` options, passed through
        #[arg(short = 'o', value_name = "OPTION")]
        options: Vec<String>,
        /// Run `apt-get update` before installing on a miss
        #[arg(long)]
        update: bool,
        /// Packages to install
        #[arg(required = true)]
        packages: Vec<String>,
    },
}

pub fn run(ctx: &Ctx, a: AptArgs) -> Result<Outcome> {
    let store = ctx.open_store()?;
    match a.what {
        AptWhat::Begin { root } => {
            let r = apt::begin(&store, &root)?;
            ctx.ui.info(format!(
                "apt baseline of {}: {} paths, {} packages in {:.2}s",
                r.root.display(),
                r.entries,
                r.packages,
                r.seconds
            ));
            ctx.ui.emit_json(&serde_json::to_value(&r).unwrap_or_default());
            Ok(Outcome::Done)
        }
        AptWhat::Install {
            key,
            fallbacks,
            root,
            no_install_recommends,
            options,
            update,
            packages,
        } => {
            let started_ns = envsnap::repo::now_ns();
            let tpl = key;
            let (key, fallbacks) = super::key::keys_for(ctx, &tpl, &fallbacks, None, None, Some(&root))?;
            let mut req = InstallRequest {
                key,
                fallbacks,
                root,
                no_install_recommends,
                options,
                update,
                packages,
                decided: None,
            };
            // With a remote, the snapshot the remote's lookup finds is brought into the local
            // store first and is what the install restores (a key only in the local store is
            // a miss, as for `restore`); a new save is pushed afterwards.
            let remote = ctx.open_remote(&store)?;
            if let Some(rm) = &remote {
                let _lock = store.lock_shared()?;
                req.decided = Some(match rm.lookup(&req.key, &req.fallbacks)? {
                    Some((rref, hit)) => {
                        let (row, _) = rm.pull(&store, &rref)?;
                        rm.record_use(&rref)?;
                        Some((row.key, hit))
                    }
                    None => None,
                });
            }
            let r = apt::install(&store, &req)?;
            let mut push_error = None;
            let mut remote_json = serde_json::Value::Null;
            if remote.is_some() && !matches!(r.outcome, InstallOutcome::Restored { .. }) {
                (remote_json, push_error) = super::remote::push_after_save(ctx, &store, &r.key);
            } else if let Some(rm) = &remote {
                remote_json = super::remote::stats_json(rm);
            }
            match &r.outcome {
                InstallOutcome::Restored { restore } => {
                    print_restore(ctx, &r.key, restore);
                    github_output(&[("cache-hit", "true"), ("hit", "exact")])?;
                }
                InstallOutcome::FallbackInstalled { fallback_key, save, .. } => {
                    ctx.ui.info(format!(
                        "fallback {fallback_key} restored, apt-get installed the rest, saved {} ({}, {}) in {:.2}s",
                        save.key,
                        plural(save.files, "file"),
                        bytes(save.bytes),
                        r.seconds
                    ));
                    github_output(&[("cache-hit", "false"), ("hit", "fallback")])?;
                }
                InstallOutcome::Installed { miss_reason, save } => {
                    ctx.ui.info(format!(
                        "miss ({miss_reason}): apt-get installed, saved {} ({}, {}, {}) in {:.2}s",
                        save.key,
                        plural(save.packages.len() as u64, "package"),
                        plural(save.files, "file"),
                        bytes(save.bytes),
                        r.seconds
                    ));
                    github_output(&[("cache-hit", "false"), ("hit", "miss")])?;
                }
            }
            let mut v = serde_json::to_value(&r).unwrap_or_default();
            if remote.is_some() {
                v["remote"] = remote_json;
            }
            ctx.ui.emit_json(&v);
            for ev in install_events(started_ns, &tpl, &r) {
                super::manage::record_event_with_remote(ctx, &store, &ev);
            }
            Ok(push_error.map_or(Outcome::Done, |e| super::remote::push_failed(ctx, &r.key, &e)))
        }
    }
}

/// `apt install` is a restore and, unless it hit exactly, a save: one event each. The save's
/// start is taken as its end minus its duration, so the gap after the restore is apt-get's
/// install (what `stats` reports as the install cost).
fn install_events(started_ns: i64, tpl: &str, r: &apt::InstallReport) -> Vec<Event> {
    let restore = |hit, matched: Option<&str>, rr: Option<&AptRestoreReport>| Event {
        time_ns: started_ns,
        op: Op::Restore,
        key: r.key.clone(),
        template: envsnap::key::is_template(tpl).then(|| tpl.to_string()),
        matched_key: matched.map(String::from),
        hit: Some(hit),
        kind: Some("apt".into()),
        files: rr.map_or(0, |x| x.files),
        bytes: rr.map_or(0, |x| x.bytes),
        seconds: rr.map_or(0.0, |x| x.seconds),
        link: rr.map(|x| x.link.clone()),
        detail: rr.map(restore_detail),
    };
    let save = |s: &apt::AptSaveReport| {
        let end = envsnap::repo::now_ns();
        save_event(end - (s.seconds * 1e9) as i64, tpl, s)
    };
    match &r.outcome {
        InstallOutcome::Restored { restore: rr } => vec![restore(HitKind::Exact, Some(&r.key), Some(rr))],
        InstallOutcome::FallbackInstalled {
            fallback_key,
            restore: rr,
            save: s,
        } => vec![restore(HitKind::Fallback, Some(fallback_key), Some(rr)), save(s)],
        InstallOutcome::Installed { save: s, .. } => vec![restore(HitKind::Miss, None, None), save(s)],
    }
}

pub fn print_restore(ctx: &Ctx, key: &str, r: &AptRestoreReport) {
    ctx.ui.info(format!(
        "{}restored apt snapshot {key} into {}: {}, {}, {}, {}, {}, {} merged in {:.2}s",
        if r.dry_run { "dry run: would have " } else { "" },
        r.root.display(),
        plural(r.packages.len() as u64, "package"),
        plural(r.files, "file"),
        plural(r.dirs, "dir"),
        plural(r.symlinks, "symlink"),
        bytes(r.bytes),
        plural(r.merged.len() as u64, "shared file"),
        r.seconds
    ));
    for p in &r.packages {
        ctx.ui.detail(format!("  {p}"));
    }
    // Per-install identity is never copied: say what happened to it instead.
    for line in &r.identity {
        if line.starts_with("left out") {
            ctx.ui.warn(line);
        } else {
            ctx.ui.info(format!("  {line}"));
        }
    }
}

/// An apt restore's event detail: what was merged into dpkg's state.
pub fn restore_detail(r: &AptRestoreReport) -> serde_json::Value {
    serde_json::json!({ "packages": r.packages.len(), "merged": r.merged.len(), "removed": r.removed })
}

/// The event of an apt save (`save apt`, or the save `apt install` makes after installing).
pub fn save_event(started_ns: i64, tpl: &str, r: &apt::AptSaveReport) -> Event {
    Event {
        time_ns: started_ns,
        op: Op::Save,
        key: r.key.clone(),
        template: envsnap::key::is_template(tpl).then(|| tpl.to_string()),
        matched_key: None,
        hit: None,
        kind: Some("apt".into()),
        files: r.files,
        bytes: r.bytes,
        seconds: r.seconds,
        link: None,
        detail: Some(serde_json::json!({ "packages": r.packages.len(), "merged": r.merged_files })),
    }
}
