//! `envsnap apt install`: the conditional install in one command. Restore on a hit; on a miss
//! (no snapshot, or one that does not fit the target) take a baseline, run `apt-get install`
//! and save the result under the key.

use super::core::{Hit, RestoreOptions, Store};
use super::{AptRestoreReport, AptSaveReport};
use crate::error::{Error, IoContext, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Default)]
pub struct InstallRequest {
    pub key: String,
    pub fallbacks: Vec<String>,
    pub root: PathBuf,
    pub no_install_recommends: bool,
    /// `-o` options passed through to apt-get.
    pub options: Vec<String>,
    /// Run `apt-get update` before installing on a miss.
    pub update: bool,
    pub packages: Vec<String>,
    /// With a remote, keys live there: its lookup has decided (the key it matched, already
    /// pulled into the local store, and how), and the local store's own keys are not consulted.
    /// `None`: look up in the local store.
    pub decided: Option<Option<(String, Hit)>>,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum InstallOutcome {
    /// Exact hit restored; apt-get did not run.
    Restored { restore: AptRestoreReport },
    /// Fallback restored, then apt-get installed the rest and the result was saved.
    FallbackInstalled {
        fallback_key: String,
        restore: AptRestoreReport,
        save: AptSaveReport,
    },
    /// Miss: apt-get installed and the result was saved. `miss_reason` says why a snapshot was not used.
    Installed { miss_reason: String, save: AptSaveReport },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InstallReport {
    pub key: String,
    #[serde(flatten)]
    pub outcome: InstallOutcome,
    pub seconds: f64,
}

/// The apt-get command line for ROOT (inside `chroot ROOT` unless ROOT is `/`).
pub fn apt_get_command(root: &Path, args: &[String]) -> Command {
    let mut cmd = if root == Path::new("/") {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("chroot");
        c.arg(root).arg("apt-get");
        c
    };
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    // apt's output goes to our stderr so stdout stays machine-readable.
    cmd.stdout(std::io::stderr());
    cmd
}

fn run(root: &Path, args: Vec<String>) -> Result<()> {
    let st = apt_get_command(root, &args).status().at("run", "apt-get")?;
    if !st.success() {
        return Err(Error::Other(format!(
            "`apt-get {}` in {} failed ({st})",
            args.join(" "),
            root.display()
        )));
    }
    Ok(())
}

pub fn install(store: &Store, req: &InstallRequest) -> Result<InstallReport> {
    let t0 = std::time::Instant::now();
    if req.packages.is_empty() {
        return Err(Error::Usage("apt install: no packages given".into()));
    }
    let root = super::canonical_root(&req.root)?;
    let done = |outcome| {
        Ok(InstallReport {
            key: req.key.clone(),
            outcome,
            seconds: t0.elapsed().as_secs_f64(),
        })
    };
    let mut miss_reason = format!("no snapshot for key '{}'", req.key);
    let mut fallback: Option<(String, AptRestoreReport)> = None;
    // For a fallback the baseline is taken before restoring it, so the saved snapshot holds the
    // fallback's files plus what apt-get adds: a complete snapshot for the exact key.
    let mut began = false;
    // Held from lookup to the end of the restore, so gc cannot remove the snapshot meanwhile.
    let lock = store.lock_shared()?;
    let found = match &req.decided {
        None => store.lookup(&req.key, &req.fallbacks)?,
        Some(None) => None,
        Some(Some((key, hit))) => store.index().get(key)?.map(|row| (row, *hit)),
    };
    if let Some((row, hit)) = found {
        if matches!(hit, Hit::Fallback) {
            super::begin(store, &root)?;
            began = true;
        }
        match super::restore(store, &row, Some(&root), &RestoreOptions::default(), false) {
            Ok(r) if matches!(hit, Hit::Exact) => {
                store.mark_restored(row.id)?;
                return done(InstallOutcome::Restored { restore: r });
            }
            Ok(r) => fallback = Some((row.key.clone(), r)),
            Err(Error::Miss(m)) => miss_reason = m,
            Err(e) => return Err(e),
        }
    }
    drop(lock);
    if !began {
        super::begin(store, &root)?;
    }
    if req.update {
        run(&root, vec!["update".into()])?;
    }
    let mut args: Vec<String> = vec!["install".into(), "-y".into()];
    if req.no_install_recommends {
        args.push("--no-install-recommends".into());
    }
    for o in &req.options {
        args.push("-o".into());
        args.push(o.clone());
    }
    args.extend(req.packages.iter().cloned());
    run(&root, args)?;
    let save = super::save(store, &root, &req.key)?;
    match fallback {
        Some((fallback_key, restore)) => done(InstallOutcome::FallbackInstalled {
            fallback_key,
            restore,
            save,
        }),
        None => done(InstallOutcome::Installed { miss_reason, save }),
    }
}
