//! TEMPORARY stand-in for the lead's CLI (src/cli/mod.rs): only `key`, so the
//! keys branch can be tested end to end. Replaced by the lead's file on merge.
use clap::{Parser, Subcommand};

pub mod key;

#[derive(Parser, Debug)]
#[command(name = "envsnap", version)]
pub struct Cli {
    /// Machine-readable output
    #[arg(long, global = true)]
    pub json: bool,
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Render a cache key template (see docs/keys.md)
    Key(key::KeyArgs),
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let r = match &cli.cmd {
        Cmd::Key(a) => key::run(a, cli.json),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("envsnap: error: {e}");
            e.exit_code()
        }
    }
}
