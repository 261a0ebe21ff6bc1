//! Save-time scan: which files hold the venv root or the base interpreter's paths, so a
//! restore knows, without reading the whole tree, which files need a private, rewritten copy.
use serde::{Deserialize, Serialize};

/// What a match is a path of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    Root,
    Interp,
}

/// Needles, longest first so a match of `/opt/py/bin` wins over `/opt/py`.
#[derive(Clone, Debug)]
pub struct Needles {
    list: Vec<(Vec<u8>, Tag)>,
}

impl Needles {
    pub fn new(roots: &[Vec<u8>], interps: &[Vec<u8>]) -> Self {
        let mut list: Vec<(Vec<u8>, Tag)> = Vec::new();
        for r in roots {
            push_unique(&mut list, r, Tag::Root);
        }
        for i in interps {
            push_unique(&mut list, i, Tag::Interp);
        }
        list.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        Needles { list }
    }
    pub fn iter(&self) -> impl Iterator<Item = &(Vec<u8>, Tag)> {
        self.list.iter()
    }
    /// Stable fingerprint: notes cached for one set of needles are invalid for another.
    pub fn fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"envsnap-venv-scan-v1\0");
        for (n, t) in &self.list {
            h.update(&[matches!(t, Tag::Root) as u8]);
            h.update(n);
            h.update(b"\0");
        }
        format!("venv-v1-{}", &h.finalize().to_hex()[..16])
    }

    /// All boundary-checked matches as (offset, needle index), leftmost-longest, non-overlapping.
    pub fn find_all(&self, hay: &[u8]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        if self.list.is_empty() {
            return out;
        }
        // Every needle is an absolute path: only positions of '/' can start a match.
        let mut i = 0;
        while i < hay.len() {
            let Some(off) = memchr_slash(&hay[i..]) else { break };
            let pos = i + off;
            let mut hit = None;
            for (k, (n, _)) in self.list.iter().enumerate() {
                if hay[pos..].starts_with(n) && is_boundary(hay, pos, n.len()) {
                    hit = Some(k);
                    break;
                }
            }
            match hit {
                Some(k) => {
                    out.push((pos, k));
                    i = pos + self.list[k].0.len();
                }
                None => i = pos + 1,
            }
        }
        out
    }
    pub fn tag(&self, k: usize) -> Tag {
        self.list[k].1
    }
    pub fn needle(&self, k: usize) -> &[u8] {
        &self.list[k].0
    }
}

fn push_unique(list: &mut Vec<(Vec<u8>, Tag)>, n: &[u8], t: Tag) {
    let n = trim_slash(n);
    // "/" would match everything; such a root/home is not rewritable meaningfully.
    if n.len() > 1 && !list.iter().any(|(x, _)| x == n) {
        list.push((n.to_vec(), t));
    }
}

fn trim_slash(n: &[u8]) -> &[u8] {
    let mut n = n;
    while n.len() > 1 && n.ends_with(b"/") {
        n = &n[..n.len() - 1];
    }
    n
}

fn memchr_slash(h: &[u8]) -> Option<usize> {
    h.iter().position(|&b| b == b'/')
}

/// A match must be a whole path component sequence: `/work/venv` must not match inside
/// `/x/work/venv` nor as the start of `/work/venv2`.
pub fn is_boundary(hay: &[u8], pos: usize, len: usize) -> bool {
    // '/' before is fine: `file:///w/venv` (direct_url.json) names /w/venv.
    let before_ok = pos == 0 || !is_path_char(hay[pos - 1]) || hay[pos - 1] == b'/';
    let after_ok = pos + len >= hay.len() || !is_path_char(hay[pos + len]) || hay[pos + len] == b'/';
    before_ok && after_ok
}

fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'~' | b'/' | b'@')
}

/// Per-file note stored with the manifest entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// "text", "bin" (binary), "pyc" (compiled bytecode: never rewritten, Python fixes
    /// `co_filename` itself at import).
    pub k: String,
    /// Occurrences of the venv root.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub r: u32,
    /// Occurrences of the base interpreter's paths.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub i: u32,
    /// First line is a shebang (or sh trampoline) naming one of the paths.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sb: bool,
    /// Byte offsets of the first matches (where).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub at: Vec<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Note {
    pub fn parse(s: &str) -> Option<Note> {
        serde_json::from_str(s).ok()
    }
    /// Does restoring with `root_moved` / `interp_changed` require rewriting this file?
    pub fn needs_fixup(&self, root_moved: bool, interp_changed: bool) -> bool {
        if self.k == "pyc" {
            return false;
        }
        // Binaries only get the venv root NUL-padded; their interpreter paths (a `--copies`
        // python's baked-in prefix) are not rewritten, so they need no private copy for those.
        (root_moved && self.r > 0) || (interp_changed && self.i > 0 && self.k == "text")
    }
}

/// The venv's content scanner (implements the core's `ContentScanner`).
pub struct VenvScanner {
    pub needles: Needles,
}

pub fn is_binary(content: &[u8]) -> bool {
    content[..content.len().min(8192)].contains(&0)
}

impl VenvScanner {
    pub fn new(needles: Needles) -> Self {
        VenvScanner { needles }
    }
    pub fn scan_content(&self, rel: &[u8], content: &[u8]) -> Option<Note> {
        let hits = self.needles.find_all(content);
        if hits.is_empty() {
            return None;
        }
        let k = if rel.ends_with(b".pyc") {
            "pyc"
        } else if is_binary(content) {
            "bin"
        } else {
            "text"
        };
        let mut note = Note {
            k: k.into(),
            ..Default::default()
        };
        let first_line_end = content.iter().position(|&b| b == b'\n').unwrap_or(content.len());
        let header_end = if content.starts_with(b"#!/bin/sh\n'''exec'") {
            // the trampoline's exec line is the second line
            content[first_line_end + 1..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(content.len(), |p| first_line_end + 1 + p)
        } else {
            first_line_end
        };
        for (pos, n) in hits {
            match self.needles.tag(n) {
                Tag::Root => note.r += 1,
                Tag::Interp => note.i += 1,
            }
            if content.starts_with(b"#!") && pos < header_end && k == "text" {
                note.sb = true;
            }
            if note.at.len() < 8 {
                note.at.push(pos as u64);
            }
        }
        Some(note)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n() -> Needles {
        Needles::new(&[b"/w/venv".to_vec()], &[b"/opt/py/bin".to_vec(), b"/opt/py".to_vec()])
    }

    #[test]
    fn root_prefix_of_sibling_is_not_a_match() {
        let h = n().find_all(b"x /w/venv2/bin /w/venv/bin /x/w/venv /w/venv\n");
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].0, 15);
    }

    #[test]
    fn longest_interpreter_path_wins() {
        let nd = n();
        let h = nd.find_all(b"home = /opt/py/bin\nbase-prefix = /opt/py\n");
        assert_eq!(h.len(), 2);
        assert_eq!(nd.needle(h[0].1), b"/opt/py/bin");
        assert_eq!(nd.needle(h[1].1), b"/opt/py");
    }

    #[test]
    fn shebang_and_pyc_classification() {
        let s = VenvScanner::new(n());
        let note = s
            .scan_content(b"bin/black", b"#!/w/venv/bin/python\nimport x\n")
            .unwrap();
        assert!(note.sb && note.r == 1 && note.k == "text");
        let t = s
            .scan_content(
                b"bin/x",
                b"#!/bin/sh\n'''exec' \"/w/venv/bin/python\" \"$0\" \"$@\"\n' '''\n",
            )
            .unwrap();
        assert!(t.sb);
        let pyc = s
            .scan_content(b"a/__pycache__/m.cpython-311.pyc", b"\x00\x01/w/venv/lib/m.py\x00")
            .unwrap();
        assert_eq!(pyc.k, "pyc");
        assert!(!pyc.needs_fixup(true, true));
        assert!(s.scan_content(b"a.py", b"nothing here").is_none());
    }
}
