//! Virtualenv snapshots that restore on any runner: path and interpreter fixups.
//!
//! Save: inspect the venv (pyvenv.cfg + running its python), scan every file for the venv
//! root and the base interpreter's paths (per-file notes), store as kind "venv".
//! Restore: choose the interpreter first (a miss writes nothing), plan with private copies
//! for every file that needs a rewrite, apply into a staging dir, rewrite for the *final*
//! path, smoke-test, commit.
pub mod fixup;
pub mod inspect;
pub mod interp;
pub mod scan;

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use fixup::{Action, Outcome, Rewriter, Rewritten};
use inspect::Interpreter;
use scan::{Needles, Note, VenvScanner};

pub const KIND: &str = "venv";
const SMOKE: &str = "import sys, encodings, ssl";
const SMOKE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a venv snapshot records in the snapshot `meta` (under "venv").
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VenvMeta {
    /// The venv root as given (absolute, not canonicalized: it is what the files contain).
    pub root: PathBuf,
    /// Every spelling of the root found in the files (lexical and canonical).
    pub roots: Vec<PathBuf>,
    /// "venv", "virtualenv" or "uv".
    pub flavour: String,
    pub relocatable: bool,
    pub interpreter: Interpreter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_error: Option<String>,
    /// Scanner fingerprint (the needles the per-file notes were computed with).
    pub scanner: String,
    /// `home` as pyvenv.cfg spells it, when that is not the interpreter's own directory: a venv
    /// made through a symlink (`…/x64/bin/python3.11`, `/usr/local/bin/python3.11` -> `/opt/…`,
    /// a shim directory). The restore checks that this spelling still names an interpreter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cfg_home: Option<PathBuf>,
}

impl VenvMeta {
    pub fn from_snapshot_meta(meta: &serde_json::Value) -> Result<VenvMeta> {
        serde_json::from_value(meta["venv"].clone())
            .map_err(|e| Error::Other(format!("venv snapshot has no usable venv metadata: {e}")))
    }
    fn old_roots(&self) -> Vec<Vec<u8>> {
        self.roots.iter().map(|p| p.as_os_str().as_bytes().to_vec()).collect()
    }
}

/// Interpreter paths a venv's files may name (longest match wins in the scanner): the
/// executable and interpreter-owned paths under `home` and the prefixes, never those
/// directories on their own (see [`fixup::interp_slots`]).
fn interp_paths(i: &Interpreter) -> Vec<Vec<u8>> {
    fixup::interp_slots(i).into_iter().flatten().collect()
}

/// Absolute without resolving symlinks.
pub fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| Error::io("resolve", p, e))
}

/// Inspect `path` and build the meta + scanner for a save.
pub fn prepare_save(path: &Path) -> Result<(VenvMeta, VenvScanner)> {
    let root = absolute(path)?;
    let info = inspect::inspect(&root)?;
    let mut roots = vec![root.clone()];
    if let Ok(c) = std::fs::canonicalize(&root) {
        if c != root {
            roots.push(c);
        }
    }
    let rb: Vec<Vec<u8>> = roots.iter().map(|p| p.as_os_str().as_bytes().to_vec()).collect();
    let needles = Needles::new(&rb, &interp_paths(&info.interpreter));
    let scanner = VenvScanner::new(needles);
    let cfg_home = info
        .cfg
        .get("home")
        .map(PathBuf::from)
        .filter(|h| *h != info.interpreter.home);
    let meta = VenvMeta {
        root,
        roots,
        flavour: info.cfg.flavour().into(),
        relocatable: info.cfg.relocatable(),
        interpreter: info.interpreter,
        probe_error: info.probe_error,
        scanner: scanner.needles.fingerprint(),
        cfg_home,
    };
    Ok((meta, scanner))
}

/// Everything a restore decided and did.
#[derive(Clone, Debug, Serialize)]
pub struct VenvRestoreReport {
    pub dest: PathBuf,
    pub saved_root: PathBuf,
    pub interpreter: ChosenInterpreter,
    pub rewritten: Vec<Rewritten>,
    pub warnings: Vec<String>,
    pub fixup_seconds: f64,
    pub smoke_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChosenInterpreter {
    pub path: PathBuf,
    pub home: PathBuf,
    pub version: String,
    pub implementation: String,
    pub reason: interp::Reason,
    pub saved_with: String,
}

/// The decisions made before anything is written.
pub struct RestorePlan {
    pub meta: VenvMeta,
    pub dest: PathBuf,
    pub choice: interp::Choice,
    pub root_moved: bool,
    pub interp_changed: bool,
}

impl RestorePlan {
    /// Does this manifest entry (by its note) need a private, rewritten copy?
    pub fn needs_private(&self, note: Option<&str>) -> bool {
        note.and_then(Note::parse)
            .is_some_and(|n| n.needs_fixup(self.root_moved, self.interp_changed))
    }
}

/// Characters that cannot be written safely into every activate script's quoting.
fn check_dest(dest: &Path) -> Result<()> {
    let b = dest.as_os_str().as_bytes();
    if let Some(c) = b
        .iter()
        .find(|c| matches!(c, b'"' | b'\'' | b'`' | b'$' | b'\\' | b'\n' | b'\r'))
    {
        return Err(Error::Usage(format!(
            "{}: a venv cannot be restored to a path containing {:?} (activate scripts and shebangs could not quote it)",
            dest.display(),
            *c as char
        )));
    }
    Ok(())
}

/// Step 1 of a restore (writes nothing): validate the destination and choose the interpreter.
pub fn decide(
    meta: &serde_json::Value,
    dest: &Path,
    python: Option<&Path>,
    path_var: Option<OsString>,
) -> Result<RestorePlan> {
    let meta = VenvMeta::from_snapshot_meta(meta)?;
    let dest = crate::restore::resolve_dest(dest)?;
    check_dest(&dest)?;
    let choice = interp::choose(&meta.interpreter, python, path_var, &dest)?;
    let root_moved = !meta.roots.contains(&dest);
    // The original interpreter may still exist while the path the venv names it by does not
    // (the symlinked directory it was made through is gone): then pyvenv.cfg and bin/python*
    // are rewritten to the interpreter's real paths, as for any other interpreter.
    let spelling_gone = meta
        .cfg_home
        .as_deref()
        .is_some_and(|h| !interp::names_interpreter(h, &meta.interpreter));
    let interp_changed = choice.reason != interp::Reason::Original || spelling_gone;
    Ok(RestorePlan {
        meta,
        dest,
        choice,
        root_moved,
        interp_changed,
    })
}

/// Step 2: fix up the staged tree at `staged` (final location `plan.dest`), then smoke-test.
/// `fixup_rels`: relative paths of the files materialized as private copies for fixup.
pub fn fixup_staged(plan: &RestorePlan, staged: &Path, fixup_rels: &[Vec<u8>]) -> Result<VenvRestoreReport> {
    let t0 = Instant::now();
    let new = &plan.choice.interpreter;
    let old = &plan.meta.interpreter;
    let interp = plan.interp_changed.then_some((old, new));
    let rw = Rewriter::new(&plan.meta.old_roots(), &plan.dest, interp);
    let mut rewritten = Vec::new();
    let mut warnings = Vec::new();
    let mut too_long = Vec::new();
    for rel in fixup_rels {
        let rel_s = String::from_utf8_lossy(rel).into_owned();
        if rel_s == "pyvenv.cfg" {
            continue; // below, with the interpreter keys
        }
        if rel_s.starts_with("bin/") && fixup::is_python_name(&rel_s[4..]) {
            continue; // retargeted below
        }
        let p = staged.join(std::ffi::OsStr::from_bytes(rel));
        if !std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let content = std::fs::read(&p).map_err(|e| Error::io("read", &p, e))?;
        match fixup::rewrite_content(&rel_s, &content, &rw) {
            Outcome::Unchanged => {}
            Outcome::Changed(b, action, n) => {
                fixup::replace_file(&p, &b)?;
                rewritten.push(Rewritten {
                    path: rel_s,
                    action,
                    replacements: n,
                });
            }
            Outcome::BinaryTooLong(_) => too_long.push(rel_s),
        }
    }
    if !too_long.is_empty() {
        warnings.push(format!(
            "{} binary file(s) contain the old venv path {} and the new path is longer, so they were not rewritten: {}",
            too_long.len(),
            plan.meta.root.display(),
            too_long.join(", ")
        ));
    }
    // pyvenv.cfg: always consistent with bin/python.
    let cfg = staged.join("pyvenv.cfg");
    let text = std::fs::read_to_string(&cfg).map_err(|e| Error::io("read", &cfg, e))?;
    let new_text = fixup::rewrite_pyvenv_cfg(&text, &rw, plan.interp_changed.then_some(new));
    if new_text != text {
        fixup::replace_file(&cfg, new_text.as_bytes())?;
        rewritten.push(Rewritten {
            path: "pyvenv.cfg".into(),
            action: Action::Config,
            replacements: 1,
        });
    }
    rewritten.extend(fixup::retarget_pythons(staged, new, plan.interp_changed)?);
    for (pkg, src) in fixup::missing_editables(staged) {
        warnings.push(format!(
            "editable install {pkg}: its source {} no longer exists; `import {pkg}` will fail until it is checked out there again",
            src.display()
        ));
    }
    let fixup_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    smoke_test(staged)?;
    let smoke_seconds = t1.elapsed().as_secs_f64();
    Ok(VenvRestoreReport {
        dest: plan.dest.clone(),
        saved_root: plan.meta.root.clone(),
        interpreter: chosen(plan),
        rewritten,
        warnings,
        fixup_seconds,
        smoke_seconds,
    })
}

/// `bin/python -c "import sys, encodings, ssl"` in the staged venv (python finds the
/// `pyvenv.cfg` beside its own `bin/`, so the staging location works).
pub fn smoke_test(venv: &Path) -> Result<()> {
    let py = inspect::venv_python(venv);
    let mut cmd = std::process::Command::new(&py);
    cmd.arg("-c")
        .arg(SMOKE)
        .env_remove("PYTHONHOME")
        .env_remove("PYTHONPATH")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    match inspect::run_with_timeout(cmd, SMOKE_TIMEOUT) {
        Ok((true, _, _)) => Ok(()),
        Ok((false, _, err)) => Err(Error::Other(format!(
            "smoke test `bin/python -c \"{SMOKE}\"` failed, restore rolled back: {}",
            String::from_utf8_lossy(&err).trim()
        ))),
        Err(e) => Err(Error::Other(format!(
            "smoke test: cannot run {}: {e}; restore rolled back",
            py.display()
        ))),
    }
}

impl crate::save::ContentScanner for VenvScanner {
    fn id(&self) -> String {
        self.needles.fingerprint()
    }
    fn scan(&self, rel: &[u8], content: &[u8]) -> Option<String> {
        self.scan_content(rel, content)
            .and_then(|n| serde_json::to_string(&n).ok())
    }
}

/// What `save venv` did: the core's save report plus what the venv inspection found.
#[derive(Clone, Debug, Serialize)]
pub struct VenvSaveReport {
    pub save: crate::save::SaveReport,
    pub venv: VenvMeta,
    /// Files holding the venv root or interpreter paths (rewritten on restore when needed).
    pub files_with_paths: u64,
}

/// `envsnap save venv PATH --key KEY`.
pub fn save_venv(
    store: &crate::Store,
    path: &Path,
    key: &str,
    progress: Option<&dyn crate::progress::Progress>,
) -> Result<VenvSaveReport> {
    crate::key::validate(key)?;
    let (meta, scanner) = prepare_save(path)?;
    let req = crate::save::SaveRequest {
        key: key.to_string(),
        kind: KIND.into(),
        root: meta.root.clone(),
        meta: serde_json::json!({ "venv": meta }),
        selection: crate::save::Selection::Tree,
        xattrs: false,
        scanner: Some(&scanner),
        progress,
    };
    let (save, manifest) = crate::save::save_with_manifest(store, req)?;
    let files_with_paths = manifest
        .files()
        .filter(|e| e.note.as_deref().and_then(Note::parse).is_some_and(|n| n.k != "pyc"))
        .count() as u64;
    Ok(VenvSaveReport {
        save,
        venv: meta,
        files_with_paths,
    })
}

/// A venv restore's outcome (dry runs stop after the decisions).
#[derive(Clone, Debug, Serialize)]
pub struct VenvRestoreOutcome {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub link: String,
    /// Files a hardlink restore copied because sharing the store's inode would widen their mode.
    pub hardlink_copied: u64,
    pub replaces: bool,
    /// Files materialized as private copies because they need a rewrite.
    pub private_copies: u64,
    pub dry_run: bool,
    pub fixups: Option<VenvRestoreReport>,
    pub interpreter: ChosenInterpreter,
}

/// `envsnap restore [PATH]` for a snapshot of kind "venv". Every interpreter decision is made
/// before anything is written: a miss (no same-minor interpreter) writes nothing.
pub fn restore(
    store: &crate::Store,
    snap: &crate::index::SnapshotRow,
    dest: &Path,
    opts: &crate::restore::RestoreOptions,
    python: Option<&Path>,
    dry_run: bool,
    progress: Option<&dyn crate::progress::Progress>,
) -> Result<VenvRestoreOutcome> {
    if snap.kind != KIND {
        return Err(Error::Other(format!(
            "snapshot {} is a {} snapshot, not a venv",
            snap.key, snap.kind
        )));
    }
    let decided = decide(&snap.meta, dest, python, std::env::var_os("PATH"))?;
    let manifest = store.manifest(snap.id)?;
    let private: std::collections::HashSet<Vec<u8>> = manifest
        .files()
        .filter(|e| decided.needs_private(e.note.as_deref()) || (decided.interp_changed && e.path == b"pyvenv.cfg"))
        .map(|e| e.path.clone())
        .collect();
    let mut plan = crate::restore::plan(snap, manifest, &decided.dest, opts)?;
    plan.private_copies = private.clone();
    let chosen = chosen(&decided);
    let mut out = VenvRestoreOutcome {
        files: plan.files,
        dirs: plan.dirs,
        symlinks: plan.symlinks,
        bytes: plan.bytes,
        link: plan.link.as_str().to_string(),
        hardlink_copied: 0,
        replaces: plan.replaces,
        private_copies: private.len() as u64,
        dry_run,
        fixups: None,
        interpreter: chosen,
    };
    if dry_run {
        return Ok(out);
    }
    // A restore by another user than the saver (not root) cannot give files their owners.
    let owners = plan.owners_not_set();
    let staged = plan.apply(store, progress)?;
    out.link = staged.link_used().to_string();
    out.hardlink_copied = staged.hardlink_copied();
    let mut rels: Vec<Vec<u8>> = private.into_iter().collect();
    rels.sort();
    // On error `staged` is dropped here, which removes the staging dir: nothing at dest.
    let mut report = fixup_staged(&decided, staged.path(), &rels)?;
    report.warnings.extend(owners);
    let done = staged.commit()?;
    match done.seed_statcache(store) {
        Ok(_) => {}
        // A busy or read-only index: the next save only reads more. Not worth a warning; the
        // CLI reports the restore's other bookkeeping failing the same way under -v.
        Err(e) if e.is_index_unavailable() => {}
        Err(e) => report.warnings.push(format!(
            "could not record the restored files' stat cache ({e}): the next save reads them all"
        )),
    }
    out.fixups = Some(report);
    Ok(out)
}

fn chosen(plan: &RestorePlan) -> ChosenInterpreter {
    let new = &plan.choice.interpreter;
    ChosenInterpreter {
        path: new.executable.clone(),
        home: new.home.clone(),
        version: new.version.clone(),
        implementation: new.implementation.clone(),
        reason: plan.choice.reason,
        saved_with: plan.meta.interpreter.describe(),
    }
}
