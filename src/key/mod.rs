//! Cache keys: the rules every key and fallback prefix must satisfy, and the
//! templates (`{os}`, `{hash:GLOBS}`, …) that compute keys from the environment.
//! Token sources live in `hash` (file globs) and `system` (os, python, dpkg).

use crate::error::{Error, Result};

pub mod hash;
pub mod system;
pub mod template;

pub use template::{is_template, render, resolve, ExplainInput, ExplainItem, KeyContext, Rendered};

/// Longest key accepted, in characters (GitHub's actions/cache limit).
pub const MAX_KEY_LEN: usize = 512;

/// Check a cache key (or a `--fallback` prefix): non-empty, at most 512 characters, no commas
/// (actions/cache splits restore keys on them), no control characters.
pub fn validate(key: &str) -> Result<()> {
    let bad = |why: String| Err(Error::Usage(format!("invalid key {key:?}: {why}")));
    if key.is_empty() {
        return bad("a key must not be empty".into());
    }
    let n = key.chars().count();
    if n > MAX_KEY_LEN {
        return bad(format!("{n} characters, at most {MAX_KEY_LEN} are allowed"));
    }
    if key.contains(',') {
        return bad("keys must not contain commas".into());
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return bad(format!("keys must not contain control characters (found {c:?})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_keys() {
        validate("venv-Linux-3.11-abc123").unwrap();
        validate(&"k".repeat(512)).unwrap();
        validate("ключ-ünïcode").unwrap();
    }

    #[test]
    fn rejects_bad_keys() {
        for k in ["", "a,b", "tab\there", "nl\n", &"k".repeat(513)] {
            assert!(validate(k).is_err(), "{k:?} should be rejected");
        }
    }
}
