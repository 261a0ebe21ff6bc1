//! Cache keys: validation (store rules) and templates (`envsnap key`).
//!
//! `validate` is the store's key rule; `template` renders `{token}` templates
//! into keys that satisfy it. Token sources live in `hash` (file globs) and
//! `system` (os, python, dpkg).
use crate::error::{Error, Result};

pub mod hash;
pub mod system;
pub mod template;

pub use template::{is_template, render, resolve, ExplainInput, ExplainItem, KeyContext, Rendered};

/// Maximum key length in characters.
pub const MAX_KEY_LEN: usize = 512;

/// A key is stored verbatim: non-empty, at most 512 characters, no commas
/// (the CLI's fallback lists are comma-separated) and no control characters.
pub fn validate(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::Usage("invalid key: empty".into()));
    }
    let n = key.chars().count();
    if n > MAX_KEY_LEN {
        return Err(Error::Usage(format!("invalid key: {n} characters (max {MAX_KEY_LEN})")));
    }
    if key.contains(',') {
        return Err(Error::Usage(format!("invalid key {key:?}: contains a comma")));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(Error::Usage(format!("invalid key {key:?}: contains control character {c:?}")));
    }
    Ok(())
}
