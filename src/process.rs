//! Running helper programs (interpreters, `ldconfig`, `apt-get`) with a time limit, so a hung
//! pyenv shim or tool never hangs envsnap.

use std::io::Read;
use std::process::Command;
use std::time::Duration;
use wait_timeout::ChildExt;

/// The message for a helper program that failed: one line naming the program, the first line
/// of what it said and `what_to_do`; the rest of its output on the following lines, which the
/// binary shows only with `-v` (a pyenv shim explains itself in seven lines).
pub fn failure_message(program: &std::path::Path, stderr: &[u8], what_to_do: &str) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut lines = text.lines().map(str::trim_end).filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or("no error output");
    let mut msg = format!("{} failed ({first}): {what_to_do}", program.display());
    for l in lines {
        msg.push('\n');
        msg.push_str(l);
    }
    msg
}

/// (success, stdout, stderr); kills the child on timeout.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> std::io::Result<(bool, Vec<u8>, Vec<u8>)> {
    let mut child = cmd.spawn()?;
    let mut so = child.stdout.take();
    let mut se = child.stderr.take();
    // Drain pipes on threads so a chatty child cannot block on a full pipe.
    let t1 = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = so.as_mut() {
            let _ = s.read_to_end(&mut b);
        }
        b
    });
    let t2 = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = se.as_mut() {
            let _ = s.read_to_end(&mut b);
        }
        b
    });
    let status = match child.wait_timeout(timeout)? {
        Some(st) => st,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("timed out after {timeout:?}"),
            ));
        }
    };
    let out = t1.join().unwrap_or_default();
    let err = t2.join().unwrap_or_default();
    Ok((status.success(), out, err))
}
