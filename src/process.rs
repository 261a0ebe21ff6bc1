//! Running helper programs (interpreters, `ldconfig`, `apt-get`) with a time limit, so a hung
//! pyenv shim or tool never hangs envsnap.

use std::io::Read;
use std::process::Command;
use std::time::Duration;
use wait_timeout::ChildExt;

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
