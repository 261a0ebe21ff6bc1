//! File-content tokens: `{hash:GLOBS}`, `{hashFiles:GLOBS}`, `{checksum:FILE}`.
//!
//! One pattern language and one walk serve both glob tokens, and both copy
//! GitHub's `hashFiles()` (actions/runner + `@actions/glob`), so a pattern
//! selects the same files in `{hash}` as in a workflow:
//! - patterns are anchored at the root (`*.txt` is top level only, nested
//!   needs `**/`); `*`, `?` and `[…]` never cross `/`; `**` spans directories;
//!   dotfiles are not special;
//! - a pattern also selects everything under a directory it matches
//!   (`@actions/glob`'s implicit descendants): `src` means the whole tree;
//! - `!PAT` excludes; patterns apply in order, so a later include re-includes;
//! - symlinks are not followed while walking; a matched symlink is read
//!   through (its target's contents count), a dangling one is an error.
//!
//! They differ in order and digest: `{hashFiles}` keeps the glob's walk order
//! (depth first, each directory's entries sorted by `strcmp` on the name
//! bytes, as libuv's `scandir` returns them to node) because its digest is
//! order-sensitive; `{hash}` sorts by relative path, so it is independent of
//! enumeration order by construction.
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Hex characters of `{hash}` kept in the key: 128 bits, plenty against
/// accidental collisions, and short enough to leave room in 512.
pub const HASH_HEX_LEN: usize = 32;

/// One matched file and the digest of its contents (as the token used it).
#[derive(Debug, Clone)]
pub struct FileDigest {
    /// Relative to the root, `/`-separated.
    pub rel: String,
    pub size: u64,
    /// Hex digest of the contents (BLAKE3 for `{hash}`, SHA-256 otherwise).
    pub digest: String,
}

/// The value of a file token plus the files it read, for `--explain`.
#[derive(Debug, Clone)]
pub struct FileHash {
    pub value: String,
    pub files: Vec<FileDigest>,
}

/// One segment of a pattern, for deciding whether a directory can hold matches.
#[derive(Debug, Clone)]
enum Seg {
    Globstar,
    Glob(GlobMatcher),
}

#[derive(Debug, Clone)]
struct Pattern {
    text: String,
    negate: bool,
    /// Matches a path if the path or one of its ancestors matches the pattern.
    set: GlobSet,
    segs: Vec<Seg>,
    /// Literal leading directories, where the walk starts ("" = root).
    search: String,
}

/// An ordered list of include / `!exclude` patterns relative to a root.
#[derive(Debug, Clone)]
pub struct Patterns {
    pats: Vec<Pattern>,
}

fn glob(text: &str, pattern: &str) -> Result<GlobMatcher> {
    Ok(glob_raw(text, pattern)?.compile_matcher())
}

fn glob_raw(text: &str, pattern: &str) -> Result<globset::Glob> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| Error::Usage(format!("bad glob pattern {text:?}: {}", e.kind())))
}

fn is_literal(seg: &str) -> bool {
    !seg.contains(['*', '?', '[', '\\'])
}

impl Patterns {
    /// Parses a comma-separated list. Whitespace around each pattern is
    /// trimmed and `#…` entries are comments, as in `@actions/glob`.
    /// `root_abs` lets absolute patterns inside the root be used.
    pub fn parse(list: &str, root_abs: &Path) -> Result<Patterns> {
        let mut pats = Vec::new();
        for raw in list.split(',') {
            let raw = raw.trim();
            if raw.is_empty() || raw.starts_with('#') {
                continue;
            }
            pats.push(Pattern::parse(raw, root_abs)?);
        }
        if !pats.iter().any(|p| !p.negate) {
            return Err(Error::Usage(format!("no include pattern in {list:?}")));
        }
        Ok(Patterns { pats })
    }

    /// Ordered include/exclude: the last pattern that matches decides.
    fn matches(&self, rel: &str) -> bool {
        let mut hit = false;
        for p in &self.pats {
            if p.set.is_match(rel) {
                hit = !p.negate;
            }
        }
        hit
    }

    /// Can anything under directory `rel` be matched by an include pattern?
    /// (`@actions/glob`'s `partialMatch`.)
    fn could_contain(&self, rel: &str) -> bool {
        self.pats.iter().any(|p| !p.negate && p.could_contain(rel))
    }

    /// Is everything under directory `rel` excluded for good: a `!pattern`
    /// matches the directory (so, by the implicit-descendants rule, all of its
    /// contents) and no later include could re-include anything in it?
    /// Pruning such a directory changes nothing but the time spent.
    fn excluded_subtree(&self, rel: &str) -> bool {
        match self.pats.iter().rposition(|p| p.negate && p.set.is_match(rel)) {
            None => false,
            Some(i) => !self.pats[i + 1..].iter().any(|p| !p.negate && p.could_contain(rel)),
        }
    }

    /// Where the walk starts: each include pattern's literal prefix, in pattern
    /// order, dropping duplicates and paths under another pattern's prefix
    /// (`getSearchPaths` in `@actions/glob`; the order matters to `{hashFiles}`).
    fn search_paths(&self) -> Vec<String> {
        let cands: Vec<&str> = self
            .pats
            .iter()
            .filter(|p| !p.negate)
            .map(|p| p.search.as_str())
            .collect();
        let mut out: Vec<String> = Vec::new();
        for &c in &cands {
            if out.iter().any(|o| o == c) {
                continue;
            }
            let has_ancestor = cands
                .iter()
                .any(|&a| a != c && (a.is_empty() || c.starts_with(&format!("{a}/"))));
            if !has_ancestor {
                out.push(c.to_string());
            }
        }
        out
    }

    /// Include patterns, for "matched nothing" errors.
    fn includes(&self) -> impl Iterator<Item = &Pattern> {
        self.pats.iter().filter(|p| !p.negate)
    }

    /// Matched files (regular files or symlinks to them) in `@actions/glob`'s
    /// walk order, as `(relative path, absolute path, size)`.
    pub fn walk(&self, root: &Path) -> Result<Vec<(String, PathBuf, u64)>> {
        let mut out = Vec::new();
        for sp in self.search_paths() {
            let start = if sp.is_empty() {
                root.to_path_buf()
            } else {
                root.join(&sp)
            };
            match fs::symlink_metadata(&start) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("read", &start, e)),
            }
            let mut stack = vec![sp];
            while let Some(rel) = stack.pop() {
                let hit = self.matches(&rel);
                if !hit && !self.could_contain(&rel) {
                    continue;
                }
                let abs = if rel.is_empty() {
                    root.to_path_buf()
                } else {
                    root.join(&rel)
                };
                let md = fs::symlink_metadata(&abs).map_err(|e| Error::io("stat", &abs, e))?;
                if md.is_dir() {
                    if self.excluded_subtree(&rel) {
                        continue;
                    }
                    let mut names = Vec::new();
                    for ent in fs::read_dir(&abs).map_err(|e| Error::io("read directory", &abs, e))? {
                        let ent = ent.map_err(|e| Error::io("read directory", &abs, e))?;
                        let name = ent.file_name();
                        let Some(name) = name.to_str() else {
                            // Globs are text; a non-UTF-8 name cannot be matched or named in a key's explain.
                            return Err(Error::Other(format!(
                                "{}: file name is not UTF-8",
                                ent.path().display()
                            )));
                        };
                        names.push(name.to_string());
                    }
                    // libuv sorts scandir results with strcmp, i.e. by bytes.
                    names.sort_unstable();
                    for name in names.into_iter().rev() {
                        stack.push(if rel.is_empty() { name } else { format!("{rel}/{name}") });
                    }
                } else if hit {
                    // hashFiles stats through symlinks: directories are skipped,
                    // dangling links fail the step. Same here.
                    let md = fs::metadata(&abs).map_err(|e| Error::io("stat", &abs, e))?;
                    if md.is_dir() {
                        continue;
                    }
                    if !md.is_file() {
                        return Err(Error::Other(format!("{}: not a regular file", abs.display())));
                    }
                    out.push((rel, abs, md.len()));
                }
            }
        }
        Ok(out)
    }
}

impl Pattern {
    /// Could this pattern match `rel` or something under it? Segment by
    /// segment until the pattern runs out (implicit descendants) or hits `**`.
    fn could_contain(&self, rel: &str) -> bool {
        if rel.is_empty() {
            return true;
        }
        for (i, part) in rel.split('/').enumerate() {
            match self.segs.get(i) {
                None | Some(Seg::Globstar) => return true,
                Some(Seg::Glob(m)) if !m.is_match(part) => return false,
                Some(Seg::Glob(_)) => {}
            }
        }
        true
    }

    fn parse(raw: &str, root_abs: &Path) -> Result<Pattern> {
        let text = raw.to_string();
        let mut s = raw;
        let mut negate = false;
        while let Some(rest) = s.strip_prefix('!') {
            negate = !negate;
            s = rest.trim();
        }
        if s.is_empty() {
            return Err(Error::Usage(format!("empty pattern {text:?}")));
        }
        let owned;
        if s.starts_with('/') {
            // Absolute patterns are fine when they point inside the root.
            let root = root_abs.to_string_lossy();
            let root = root.trim_end_matches('/');
            match s.strip_prefix(root).filter(|r| r.is_empty() || r.starts_with('/')) {
                Some(r) => {
                    owned = format!(".{r}");
                    s = &owned;
                }
                None => {
                    return Err(Error::Usage(format!(
                        "pattern {text:?} is outside the root {}",
                        root_abs.display()
                    )))
                }
            }
        }
        let mut segs_txt: Vec<String> = Vec::new();
        for (i, seg) in s.split('/').enumerate() {
            match seg {
                "" => continue, // `a//b`, trailing `/`
                "." if i == 0 => continue,
                "." | ".." => {
                    return Err(Error::Usage(format!(
                        "pattern {text:?}: '.' and '..' segments are not allowed"
                    )))
                }
                "**" => segs_txt.push(seg.into()),
                // minimatch reads `a**b` as `a*b`; globset would reject it.
                _ if seg.contains("**") => {
                    let mut t = String::new();
                    for c in seg.chars() {
                        if !(c == '*' && t.ends_with('*')) {
                            t.push(c);
                        }
                    }
                    segs_txt.push(t)
                }
                _ => segs_txt.push(seg.into()),
            }
        }
        // A trailing `**` is implied by the implicit-descendants rule.
        while segs_txt.last().is_some_and(|s| s == "**") {
            segs_txt.pop();
        }
        let mut set = GlobSetBuilder::new();
        if segs_txt.is_empty() {
            set.add(glob_raw(&text, "**")?);
        } else {
            let joined = segs_txt.join("/");
            set.add(glob_raw(&text, &joined)?);
            set.add(glob_raw(&text, &format!("{joined}/**"))?);
        }
        let set = set
            .build()
            .map_err(|e| Error::Usage(format!("bad glob pattern {text:?}: {e}")))?;
        let segs = segs_txt
            .iter()
            .map(|s| {
                if s == "**" {
                    Ok(Seg::Globstar)
                } else {
                    glob(&text, s).map(Seg::Glob)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let search = segs_txt
            .iter()
            .take_while(|s| is_literal(s))
            .cloned()
            .collect::<Vec<_>>()
            .join("/");
        Ok(Pattern {
            text,
            negate,
            set,
            segs,
            search,
        })
    }
}

fn blake3_file(path: &Path) -> Result<blake3::Hash> {
    let f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut h = blake3::Hasher::new();
    h.update_reader(f).map_err(|e| Error::io("read", path, e))?;
    Ok(h.finalize())
}

fn sha256_file(path: &Path) -> Result<[u8; 32]> {
    let mut f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).map_err(|e| Error::io("read", path, e))?;
    Ok(h.finalize().into())
}

/// `{hash:GLOBS}`: BLAKE3 over the matched files sorted by relative path.
/// For each file, in byte order of its `/`-separated relative path, the outer
/// hasher takes `u64le(len(path)) ‖ path ‖ u64le(size) ‖ BLAKE3(contents)`;
/// the key keeps the first 32 hex characters. Per-file digests run in
/// parallel; renames change the path bytes, mtimes are never read.
/// Every include pattern must match at least one file.
pub fn hash(list: &str, root: &Path) -> Result<FileHash> {
    let root_abs = absolute(root)?;
    let pats = Patterns::parse(list, &root_abs)?;
    let mut files = pats.walk(root)?;
    for p in pats.includes() {
        if !files.iter().any(|(rel, _, _)| p.set.is_match(rel.as_str())) {
            return Err(Error::Usage(format!(
                "pattern {:?} matched no files under {}",
                p.text,
                root.display()
            )));
        }
    }
    files.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    files.dedup_by(|a, b| a.0 == b.0);
    let digests: Vec<blake3::Hash> = files
        .par_iter()
        .map(|(_, abs, _)| blake3_file(abs))
        .collect::<Result<_>>()?;
    let mut outer = blake3::Hasher::new();
    let mut listed = Vec::with_capacity(files.len());
    for ((rel, _, size), d) in files.into_iter().zip(digests) {
        outer.update(&(rel.len() as u64).to_le_bytes());
        outer.update(rel.as_bytes());
        outer.update(&size.to_le_bytes());
        outer.update(d.as_bytes());
        listed.push(FileDigest {
            rel,
            size,
            digest: d.to_hex().to_string(),
        });
    }
    let value = outer.finalize().to_hex()[..HASH_HEX_LEN].to_string();
    Ok(FileHash { value, files: listed })
}

/// `{hashFiles:GLOBS}`: GitHub's `hashFiles()`. SHA-256 over the raw SHA-256
/// digests of the matched files in the glob's walk order, lowercase hex;
/// empty when nothing matches (GitHub's behaviour, kept on purpose).
pub fn hash_files(list: &str, root: &Path) -> Result<FileHash> {
    let root_abs = absolute(root)?;
    let pats = Patterns::parse(list, &root_abs)?;
    let files = pats.walk(root)?;
    let digests: Vec<[u8; 32]> = files
        .par_iter()
        .map(|(_, abs, _)| sha256_file(abs))
        .collect::<Result<_>>()?;
    if files.is_empty() {
        return Ok(FileHash {
            value: String::new(),
            files: Vec::new(),
        });
    }
    let mut outer = Sha256::new();
    let mut listed = Vec::with_capacity(files.len());
    for ((rel, _, size), d) in files.into_iter().zip(digests) {
        outer.update(d);
        listed.push(FileDigest {
            rel,
            size,
            digest: hex(&d),
        });
    }
    Ok(FileHash {
        value: hex(&outer.finalize()),
        files: listed,
    })
}

/// `{checksum:FILE}`: CircleCI's `{{ checksum "FILE" }}`: SHA-256 of the
/// contents, standard base64 with `=` padding and `/` written as `_` (CircleCI
/// keys show `+`, `_` and `=` together, e.g. `…R_L+I72Po+eX…uy8=`).
pub fn checksum(file: &str, root: &Path) -> Result<FileHash> {
    if file.is_empty() {
        return Err(Error::Usage("{checksum}: needs a file name".into()));
    }
    let rel = Path::new(file);
    let abs = if rel.is_absolute() {
        rel.to_path_buf()
    } else {
        root.join(rel)
    };
    let md = fs::metadata(&abs).map_err(|e| Error::Usage(format!("{{checksum:{file}}}: {}: {e}", abs.display())))?;
    if !md.is_file() {
        return Err(Error::Usage(format!(
            "{{checksum:{file}}}: {} is not a regular file",
            abs.display()
        )));
    }
    let d = sha256_file(&abs)?;
    let value = base64::engine::general_purpose::STANDARD.encode(d).replace('/', "_");
    Ok(FileHash {
        value,
        files: vec![FileDigest {
            rel: file.to_string(),
            size: md.len(),
            digest: hex(&d),
        }],
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn absolute(root: &Path) -> Result<PathBuf> {
    // Canonical, so absolute patterns compare against what the shell's $PWD
    // or `realpath` print; falls back to lexical for error messages.
    match fs::canonicalize(root) {
        Ok(p) => Ok(p),
        Err(e) => Err(Error::io("resolve", root, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(s: &str) -> Patterns {
        Patterns::parse(s, Path::new("/ws")).unwrap()
    }

    #[test]
    fn anchored_and_implicit_descendants() {
        let p = pats("*.txt");
        assert!(p.matches("a.txt"));
        assert!(!p.matches("d/a.txt"));
        // A directory named like the pattern brings its whole tree, as in @actions/glob.
        assert!(p.matches("x.txt/inner.bin"));
        let p = pats("src");
        assert!(p.matches("src/a/b.rs"));
        assert!(p.matches("src"));
        assert!(!p.matches("srcx/a"));
        let p = pats("**/requirements.txt");
        assert!(p.matches("requirements.txt"));
        assert!(p.matches("a/b/requirements.txt"));
        assert!(pats("**").matches(".git/config"));
        assert!(pats(".").matches("x/y"));
        assert!(pats("./a/").matches("a/y"));
    }

    #[test]
    fn ordered_negation() {
        let p = pats("**/*.txt,!**/node_modules/**,**/node_modules/keep.txt");
        assert!(p.matches("a.txt"));
        assert!(!p.matches("node_modules/x.txt"));
        assert!(!p.matches("a/node_modules/b/x.txt"));
        assert!(p.matches("node_modules/keep.txt"));
        let p = pats("a,!!a/b");
        assert!(p.matches("a/b"));
    }

    #[test]
    fn pruning() {
        let p = pats("src/*/x.rs,!src");
        assert!(p.could_contain(""));
        assert!(p.could_contain("src"));
        assert!(p.could_contain("src/any"));
        assert!(!p.could_contain("docs"));
        assert!(!p.could_contain(".git"));
        assert!(pats("**/x").could_contain(".git"));
        assert!(pats("a").could_contain("a/b/c"));
    }

    #[test]
    fn excluded_subtrees_are_pruned_only_when_final() {
        let p = pats("**/*.txt,!**/node_modules/**");
        assert!(p.excluded_subtree("node_modules"));
        assert!(p.excluded_subtree("a/node_modules"));
        assert!(!p.excluded_subtree("a"));
        // A later include may re-include: keep walking.
        let p = pats("**/*.txt,!**/node_modules,**/node_modules/keep.txt");
        assert!(!p.excluded_subtree("node_modules"));
        let p = pats("**,!.git,src/**");
        assert!(p.excluded_subtree(".git"));
    }

    #[test]
    fn search_paths_follow_pattern_order() {
        assert_eq!(pats("b/*,a/x,a/*/y").search_paths(), vec!["b", "a"]);
        assert_eq!(pats("b.txt,a.txt").search_paths(), vec!["b.txt", "a.txt"]);
        assert_eq!(pats("a.txt,**/*.md").search_paths(), vec![""]);
        assert_eq!(pats("lib/**,!lib/x").search_paths(), vec!["lib"]);
    }

    #[test]
    fn bad_patterns() {
        let root = Path::new("/ws");
        assert!(Patterns::parse("!a", root).is_err());
        assert!(Patterns::parse("a/../b", root).is_err());
        assert!(Patterns::parse("/etc/*", root).is_err());
        assert!(Patterns::parse("a[", root).is_err());
        assert!(Patterns::parse("!", root).is_err());
        assert!(pats("/ws/a").matches("a"));
        assert!(pats("x**y").matches("xay"));
    }
}
