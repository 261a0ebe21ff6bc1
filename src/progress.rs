//! Progress reporting. The library only calls this trait; the binary draws bars (or nothing).

pub trait Progress: Sync {
    /// A phase begins: `total` units (bytes or entries) are expected.
    fn start(&self, what: &str, total: u64);
    fn inc(&self, n: u64);
    fn finish(&self);
}

/// Call a progress sink if there is one.
pub(crate) fn with(p: Option<&dyn Progress>, f: impl FnOnce(&dyn Progress)) {
    if let Some(p) = p {
        f(p)
    }
}
