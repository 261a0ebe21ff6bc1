//! The `envsnap` binary: parse arguments, run one command, print, exit 0/1/2.
//! All output lives in `cli`; the library only returns reports.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
