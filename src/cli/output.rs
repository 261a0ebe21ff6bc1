//! Everything the binary prints: a human summary on stderr, one JSON object on stdout with
//! `--json`, progress bars on a terminal, and GitHub Actions outputs.
//!
//! stdout is written only through [`stdout`] (clippy's `print_stdout` is denied in `cli`): a
//! reader that went away (`envsnap list | head -1`) ends the program quietly with exit 0, as
//! ripgrep does, instead of a "Broken pipe" panic that fails a `set -o pipefail` step.

use envsnap::progress::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

pub struct Ui {
    pub json: bool,
    pub quiet: bool,
    pub verbose: bool,
}

impl Ui {
    /// A line for people, on stderr (silent with `-q`).
    pub fn info(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }

    /// Detail shown with `-v` only.
    pub fn detail(&self, msg: impl AsRef<str>) {
        if self.verbose && !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }

    pub fn warn(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("envsnap: warning: {}", msg.as_ref());
        }
    }

    /// The one JSON object of a command, on stdout.
    pub fn emit_json(&self, v: &serde_json::Value) {
        if self.json {
            stdout(format_args!("{v}\n"));
        }
    }

    /// A progress bar when stderr is a terminal and output is not quiet; else nothing, so CI
    /// logs stay clean.
    pub fn progress(&self) -> Option<Bar> {
        (!self.quiet && std::io::stderr().is_terminal()).then(|| Bar { bar: Mutex::new(None) })
    }
}

pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        let pb = ProgressBar::new(total);
        pb.set_style(
            ProgressStyle::with_template(
                "{msg:>10} [{bar:30}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.set_message(what.to_string());
        *self.bar.lock().unwrap_or_else(|p| p.into_inner()) = Some(pb);
    }

    fn inc(&self, n: u64) {
        if let Some(pb) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            pb.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(pb) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            pb.finish_and_clear();
        }
    }
}

/// Append `name=value` lines to `$GITHUB_OUTPUT` when it is set (GitHub Actions step outputs).
pub fn github_output(pairs: &[(&str, &str)]) -> envsnap::Result<()> {
    let Some(path) = std::env::var_os("GITHUB_OUTPUT").filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| envsnap::Error::io("open $GITHUB_OUTPUT", &path, e))?;
    let mut buf = String::new();
    for (k, v) in pairs {
        buf.push_str(&output_line(k, v));
    }
    f.write_all(buf.as_bytes())
        .map_err(|e| envsnap::Error::io("write $GITHUB_OUTPUT", &path, e))
}

/// Write a command's product to stdout. A closed pipe (EPIPE) means the reader has all it
/// wanted: exit 0 at once, nothing more to say. Any other write error is reported and exits 2.
pub fn stdout(args: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        // stderr may be gone too; nothing better to do than try.
        let _ = writeln!(std::io::stderr(), "envsnap: error: cannot write to stdout: {e}");
        std::process::exit(2);
    }
}

/// `println!` for the command's product, through [`stdout`].
macro_rules! outln {
    ($($t:tt)*) => { $crate::cli::output::stdout(format_args!("{}\n", format_args!($($t)*))) };
}
pub(crate) use outln;

/// One `$GITHUB_OUTPUT` record. `name=value` where the value is one line; otherwise GitHub's
/// multi-line form `name<<DELIM`, value, `DELIM`, with a delimiter the value does not contain.
/// Keys read back from an index are input: a crafted key holding a newline must not be able to
/// add outputs (`cache-hit=true`) of its own.
pub fn output_line(name: &str, value: &str) -> String {
    if !value.contains(['\n', '\r']) {
        return format!("{name}={value}\n");
    }
    let mut n = 0u64;
    let delim = loop {
        let d = format!(
            "ghadelimiter_{}",
            &blake3::hash(format!("{}-{n}-{value}", std::process::id()).as_bytes()).to_hex()[..32]
        );
        if !value.contains(&d) {
            break d;
        }
        n += 1;
    };
    format!("{name}<<{delim}\n{value}\n{delim}\n")
}

/// Sizes in one unit system everywhere (summaries and progress bars): decimal, like `du --si`
/// and disk vendors: 1 MB = 1,000,000 bytes.
pub fn bytes(n: u64) -> String {
    bytesize::ByteSize(n).to_string_as(false)
}

/// `3 files`, `1 file`: `one` is the singular, the plural adds "s" (or pass it via [`plural_of`]).
pub fn plural(n: impl Into<u64>, one: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// `1 entry`, `2 entries`: for words whose plural is not `+s`.
pub fn plural_of(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A human list: `"a"`, `"a" or "b"`, `"a", "b" or "c"` (`conj` is "or"/"and").
pub fn human_list(items: &[String], conj: &str) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} {conj} {last}", init.join(", ")),
    }
}

pub fn time_ns(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::output_line;

    #[test]
    fn a_value_with_newlines_cannot_add_outputs() {
        assert_eq!(output_line("hit", "exact"), "hit=exact\n");
        let rec = output_line("matched-key", "evil\ncache-hit=true");
        let lines: Vec<&str> = rec.lines().collect();
        assert_eq!(lines.len(), 4, "{rec}");
        let delim = lines[0].strip_prefix("matched-key<<").unwrap();
        assert_eq!((lines[1], lines[2], lines[3]), ("evil", "cache-hit=true", delim));
    }
}
