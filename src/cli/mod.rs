//! Command-line front end: one file per command group. Only this module prints.
//!
//! Output goes through `output`: stdout only via `output::stdout`/`outln!` (a closed pipe is a
//! quiet exit 0), errors through [`report_error`] (one line; details under `-v`), misses
//! through [`miss`] (one phrasing, one JSON shape for every kind of miss).
#![deny(clippy::print_stdout)]

mod apt;
mod inspect;
mod key;
mod maint;
mod manage;
mod output;
mod remote;
mod restore;
mod save;

use clap::{Parser, Subcommand};
use envsnap::{Error, Result, Store};
use output::{human_list, Ui};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "envsnap",
    version,
    about = "Snapshot CI environments into a content-addressed store and restore them in seconds"
)]
// Global options get their own `--help` section, after each command's own options.
#[command(next_help_heading = "Global options")]
pub struct Cli {
    /// Store directory [default: $ENVSNAP_STORE, else $XDG_CACHE_HOME/envsnap, else ~/.cache/envsnap]
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Remote store: s3://BUCKET[/PREFIX] or file:///PATH. Keys then live on the remote; the
    /// local store is its object cache [env: ENVSNAP_REMOTE]. `gc` acts on the remote only
    /// when given --remote (its URL may then be omitted)
    #[arg(long, global = true, value_name = "URL", num_args = 0..=1, default_missing_value = "")]
    remote: Option<String>,
    /// Ignore ENVSNAP_REMOTE: purely local, as without a remote
    #[arg(long, global = true, conflicts_with = "remote")]
    no_remote: bool,
    /// Print one JSON object on stdout
    #[arg(long, global = true)]
    json: bool,
    /// Print nothing but errors on stderr
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Print more detail (and the details of an error)
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Save a snapshot under a key
    Save(save::SaveArgs),
    /// Restore the snapshot for a key (or the newest matching a fallback prefix)
    Restore(restore::RestoreArgs),
    /// List snapshots, newest first
    List(inspect::ListArgs),
    /// Show one snapshot: metadata, counts, sizes, what it shares with others (apt: the delta)
    Show(inspect::ShowArgs),
    /// Remove old snapshots and unreferenced objects
    Gc(maint::GcArgs),
    /// Delete keys now (they stop resolving at once); their data goes at the next gc
    Delete(manage::DeleteArgs),
    /// Hit ratios, restore times and time saved per key group, from recorded restores and saves
    Stats(manage::StatsArgs),
    /// Re-hash every object; report corrupt or missing ones and the snapshots they break
    Verify(maint::VerifyArgs),
    /// Print the cache key a template renders to, e.g. 'venv-{os}-{python}-{hash:requirements*.txt}'
    Key(key::KeyArgs),
    /// apt snapshots: `apt begin` before installing, `apt install` for the conditional install
    Apt(apt::AptArgs),
    /// Upload local snapshots to the remote (only the objects it lacks)
    Push(remote::PushArgs),
    /// Download snapshots from the remote into the local store
    Pull(remote::PullArgs),
}

/// What a command ended with, beyond success: a miss exits 1.
pub enum Outcome {
    Done,
    Miss,
    /// The command reported its own failure (and its JSON) already: exit 2.
    Failed,
}

pub struct Ctx {
    pub ui: Ui,
    store_dir: Option<PathBuf>,
    /// `--remote`, else `$ENVSNAP_REMOTE`, unless `--no-remote`.
    remote: Option<String>,
    /// `--remote` was on the command line (gc acts on the remote only then).
    pub remote_flag: bool,
}

impl Ctx {
    /// The store for a command that writes: created on first use.
    pub fn open_store(&self) -> Result<Store> {
        Store::open(&self.store_path()?)
    }

    /// The store for a read-only command (list, show, verify, gc --dry-run): never created.
    /// `None` when there is none yet; callers report an empty store (and say where they looked).
    pub fn open_store_read(&self) -> Result<Option<Store>> {
        let dir = self.store_path()?;
        // A path that is not a directory falls through to `open`, which says so; so does a
        // store with objects but no index (`verify` reports the lost index).
        let missing = !dir.exists()
            || (dir.is_dir()
                && !dir.join(envsnap::index::INDEX_FILE).exists()
                && !dir.join(envsnap::store::OBJECTS_DIR).exists());
        if missing {
            self.ui.detail(format!("no store at {}", dir.display()));
            return Ok(None);
        }
        Store::open(&dir).map(Some)
    }

    pub fn store_path(&self) -> Result<PathBuf> {
        envsnap::repo::resolve_dir(self.store_dir.clone())
    }

    /// A KEY argument of a command that reads the store (show, …): a plain key or a template,
    /// rendered as `save` and `restore` render theirs.
    pub fn key_arg(&self, key_or_template: &str) -> Result<String> {
        Ok(key::keys_for(self, key_or_template, &[], None, None, None)?.0)
    }

    /// The configured remote, if any (no request is made until one is needed).
    pub fn open_remote(&self, store: &Store) -> Result<Option<envsnap::remote::Remote>> {
        self.remote
            .as_deref()
            .map(|u| envsnap::remote::Remote::open(u, store))
            .transpose()
    }

    pub fn has_remote(&self) -> bool {
        self.remote.is_some()
    }
}

/// `envsnap --remote URL gc --remote`: clap keeps only the last occurrence of a global option,
/// so the bare `--remote` (gc's "act on the remote") would drop the URL given before it. The
/// last URL on the command line wins, read as clap read it (`--remote=URL`, or `--remote URL`
/// where URL is not an option).
fn url_before_bare_remote(args: impl Iterator<Item = String>) -> Option<String> {
    let args: Vec<String> = args.take_while(|a| a != "--").collect();
    let mut url = None;
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix("--remote=") {
            url = Some(v.to_string());
        } else if a == "--remote" {
            if let Some(v) = args.get(i + 1).filter(|v| !v.starts_with('-')) {
                url = Some(v.clone());
            }
        }
    }
    url.filter(|u| !u.is_empty())
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version on stdout (exit 0); usage errors whole, as clap words them
            // (the missing argument, "did you mean", the usage line), on stderr, exit 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let bare_remote = cli.remote.as_deref() == Some("");
    let ctx = Ctx {
        ui: Ui {
            json: cli.json,
            quiet: cli.quiet,
            verbose: cli.verbose,
        },
        store_dir: cli.store,
        remote_flag: cli.remote.is_some(),
        remote: if cli.no_remote {
            None
        } else {
            cli.remote
                .filter(|r| !r.is_empty())
                .or_else(|| {
                    // Only for a bare `--remote`. An argument that is not UTF-8 (a path) is
                    // never a URL: it stands in as "-", which is never taken for one either.
                    let args = std::env::args_os()
                        .skip(1)
                        .map(|a| a.into_string().unwrap_or_else(|_| "-".into()));
                    bare_remote.then(|| url_before_bare_remote(args)).flatten()
                })
                .or_else(|| std::env::var("ENVSNAP_REMOTE").ok())
                .filter(|r| !r.is_empty())
        },
    };
    if ctx.remote_flag && ctx.remote.is_none() {
        eprintln!("envsnap: error: --remote needs a URL (s3://BUCKET/PREFIX or file:///PATH) or ENVSNAP_REMOTE");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Save(a) => save::run(&ctx, a),
        Command::Restore(a) => restore::run(&ctx, a),
        Command::List(a) => inspect::list(&ctx, a),
        Command::Show(a) => inspect::show(&ctx, a),
        Command::Gc(a) => maint::gc(&ctx, a),
        Command::Verify(a) => maint::verify(&ctx, a),
        Command::Delete(a) => manage::delete(&ctx, a),
        Command::Stats(a) => manage::stats(&ctx, a),
        Command::Key(a) => key::run(&ctx, a),
        Command::Apt(a) => apt::run(&ctx, a),
        Command::Push(a) => remote::push(&ctx, a),
        Command::Pull(a) => remote::pull(&ctx, a),
    };
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Miss) => ExitCode::from(1),
        Ok(Outcome::Failed) => ExitCode::from(2),
        Err(e) => report_error(&ctx.ui, &e),
    }
}

/// The error line every command ends with: `envsnap: error: <first line>`. Errors that carry
/// more (a failing interpreter's output) show it only with `-v`, so CI logs stay one line.
fn report_error(ui: &Ui, e: &Error) -> ExitCode {
    let code = e.exit_code();
    let text = e.to_string();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or("failed");
    let rest: Vec<&str> = lines.collect();
    let label = if e.is_miss() { "miss" } else { "error" };
    if !(e.is_miss() && ui.quiet) {
        if rest.is_empty() || ui.verbose {
            eprintln!("envsnap: {label}: {first}");
        } else {
            eprintln!("envsnap: {label}: {first} (details: run with -v)");
        }
        if ui.verbose {
            for l in &rest {
                eprintln!("  {l}");
            }
        }
    }
    ui.emit_json(&serde_json::json!({
        "error": text,
        "hit": if e.is_miss() { serde_json::json!("miss") } else { serde_json::Value::Null },
        "exit": code,
    }));
    ExitCode::from(code)
}

/// A lookup that restored nothing: no snapshot for the key or its fallbacks, or (`reason`) an
/// adapter refused the one found. Every miss is phrased and shaped the same way: one line
/// `envsnap: miss: …` on stderr (silent with -q), and the same JSON fields.
/// `remote`: the `remote` JSON object when a remote was asked.
pub fn miss(
    ctx: &Ctx,
    key: &str,
    fallbacks: &[String],
    reason: Option<&str>,
    remote: Option<&envsnap::remote::Remote>,
) -> Outcome {
    let quoted: Vec<String> = fallbacks.iter().map(|f| format!("{f:?}")).collect();
    let tried = match quoted.len() {
        0 => String::new(),
        1 => format!(" or prefix {}", quoted[0]),
        _ => format!(" or prefixes {}", human_list(&quoted, "or")),
    };
    let line = match reason {
        None => format!("no snapshot for key {key:?}{tried}; nothing restored"),
        Some(r) => format!("{}; nothing restored", r.lines().next().unwrap_or(r)),
    };
    if !ctx.ui.quiet {
        eprintln!("envsnap: miss: {line}");
    }
    let mut v = serde_json::json!({
        "hit": "miss", "key": key, "matched_key": null, "files": 0, "bytes": 0, "seconds": 0.0,
        "link": null, "reason": line, "exit": 1,
        // Kept from before misses had one shape: adapters' misses reported their reason here.
        "error": reason,
    });
    if let Some(r) = remote {
        v["remote"] = remote::stats_json(r);
    }
    ctx.ui.emit_json(&v);
    Outcome::Miss
}

#[cfg(test)]
mod tests {
    use super::url_before_bare_remote as url;

    fn args(s: &str) -> impl Iterator<Item = String> + '_ {
        s.split(' ').map(String::from)
    }

    #[test]
    fn a_bare_remote_after_a_url_keeps_the_url() {
        assert_eq!(url(args("--remote s3://b/p gc --remote")).as_deref(), Some("s3://b/p"));
        assert_eq!(
            url(args("--remote=file:///x gc --remote --dry-run")).as_deref(),
            Some("file:///x")
        );
        assert_eq!(url(args("gc --remote --dry-run")), None);
        assert_eq!(url(args("gc --remote -- --remote x")), None);
    }
}
