//! Telling which filesystem is full: the store's (where gc helps) or another one (a restore's
//! destination, where it does not), for error messages and for opening a full store's index.

use std::path::{Path, PathBuf};

/// The nearest existing ancestor of `p` (itself included).
fn existing(p: &Path) -> Option<&Path> {
    p.ancestors().find(|a| std::fs::symlink_metadata(a).is_ok())
}

/// No block left for an unprivileged writer on the filesystem holding `p`.
pub fn is_full(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Some(c) = existing(p).and_then(|a| std::ffi::CString::new(a.as_os_str().as_bytes()).ok()) else {
        return false;
    };
    // SAFETY: statvfs fills the struct; `c` is a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statvfs(c.as_ptr(), &mut st) == 0 && st.f_bavail == 0 }
}

/// The mount point of the filesystem holding `p`: the highest ancestor on the same device.
pub fn mount_point(p: &Path) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let Some(start) = existing(p) else {
        return p.to_path_buf();
    };
    let abs = std::path::absolute(start).unwrap_or_else(|_| start.to_path_buf());
    let Ok(dev) = std::fs::metadata(&abs).map(|m| m.dev()) else {
        return abs;
    };
    let mut top = abs.as_path();
    for a in abs.ancestors().skip(1) {
        match std::fs::metadata(a) {
            Ok(m) if m.dev() == dev => top = a,
            _ => break,
        }
    }
    top.to_path_buf()
}

/// The store directory `p` lies in, if any: an ancestor holding `objects-v1/` and the index.
pub fn store_of(p: &Path) -> Option<PathBuf> {
    p.ancestors()
        .find(|a| a.join(crate::store::OBJECTS_DIR).is_dir() && a.join(crate::index::INDEX_FILE).exists())
        .map(Path::to_path_buf)
}
