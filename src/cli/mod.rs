//! Command-line front end: one file per command group. Only this module prints.

mod apt;
mod inspect;
mod key;
mod maint;
mod manage;
mod output;
mod restore;
mod save;

use clap::{Parser, Subcommand};
use envsnap::{Error, Result, Store};
use output::Ui;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "envsnap",
    version,
    about = "Snapshot CI environments into a content-addressed store and restore them in seconds"
)]
pub struct Cli {
    /// Store directory [default: $ENVSNAP_STORE, else $XDG_CACHE_HOME/envsnap, else ~/.cache/envsnap]
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Print one JSON object on stdout
    #[arg(long, global = true)]
    json: bool,
    /// Print nothing but errors on stderr
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Print more detail
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
    /// Show one snapshot: metadata, counts, sizes, what it shares with others
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
}

impl Ctx {
    pub fn open_store(&self) -> Result<Store> {
        let dir = envsnap::repo::resolve_dir(self.store_dir.clone())?;
        Store::open(&dir)
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, like every other error: clap's first line names the bad argument.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("envsnap: {first} (see `envsnap --help`)");
            return ExitCode::from(2);
        }
    };
    let ctx = Ctx {
        ui: Ui {
            json: cli.json,
            quiet: cli.quiet,
            verbose: cli.verbose,
        },
        store_dir: cli.store,
    };
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
    };
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Miss) => ExitCode::from(1),
        Ok(Outcome::Failed) => ExitCode::from(2),
        Err(e) => report_error(&ctx.ui, &e),
    }
}

fn report_error(ui: &Ui, e: &Error) -> ExitCode {
    let code = e.exit_code();
    if e.is_miss() {
        if !ui.quiet {
            eprintln!("envsnap: miss: {e}");
        }
    } else {
        eprintln!("envsnap: error: {e}");
    }
    ui.emit_json(&serde_json::json!({
        "error": e.to_string(),
        "hit": if e.is_miss() { serde_json::json!("miss") } else { serde_json::Value::Null },
        "exit": code,
    }));
    ExitCode::from(code)
}
