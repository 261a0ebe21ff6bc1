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

/// A key for a terminal or a one-line message: control characters (newlines, terminal
/// escapes) escaped as `\n`, `\u{1b}`. Keys read back from an index (or a remote) are input: a
/// crafted row can hold anything `validate` would refuse.
pub fn escaped(key: &str) -> std::borrow::Cow<'_, str> {
    if !key.chars().any(|c| c.is_control()) {
        return std::borrow::Cow::Borrowed(key);
    }
    let mut out = String::with_capacity(key.len() + 8);
    for c in key.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
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
    fn escaped_keys_hold_no_control_characters() {
        assert_eq!(escaped("plain-ключ"), "plain-ключ");
        let e = escaped("a\nhit=true\u{1b}[2J");
        assert!(!e.chars().any(|c| c.is_control()), "{e}");
        assert_eq!(e, "a\\nhit=true\\u{1b}[2J");
    }

    #[test]
    fn rejects_bad_keys() {
        for k in ["", "a,b", "tab\there", "nl\n", &"k".repeat(513)] {
            assert!(validate(k).is_err(), "{k:?} should be rejected");
        }
    }
}
