//! The store lock: saves, restores and verify hold it shared, gc holds it exclusive. So two
//! saves run side by side, and gc never deletes an object a running save is about to reference.

use crate::error::{IoContext, Result};
use std::fs::{File, OpenOptions};
use std::path::Path;

pub const LOCK_FILE: &str = "lock";

/// Held until dropped (the OS releases a `flock` when the file closes, even on a crash).
pub struct StoreLock {
    _file: File,
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .at("open lock file", path)
}

impl StoreLock {
    pub fn shared(path: &Path) -> Result<Self> {
        let f = open(path)?;
        f.lock_shared().at("lock", path)?;
        Ok(StoreLock { _file: f })
    }

    pub fn exclusive(path: &Path) -> Result<Self> {
        let f = open(path)?;
        f.lock().at("lock", path)?;
        Ok(StoreLock { _file: f })
    }
}
