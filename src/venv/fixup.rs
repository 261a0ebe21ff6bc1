//! Restore-time rewrites inside a staged venv directory. Paths are rewritten to the venv's
//! *final* location (the staging directory is renamed there afterwards).
//!
//! Every rewrite writes a new file and renames it over the old one, so even a file that was
//! (wrongly) hard-linked to a store object never has its inode modified; mode, owner and
//! mtime are carried over so `.pyc` caches stay valid.
use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::inspect::Interpreter;
use super::scan::{is_binary, Needles, Tag};
use crate::error::{Error, Result};

/// Linux `BINPRM_BUF_SIZE` (and distlib's limit): longer shebangs are truncated by the kernel.
pub const MAX_SHEBANG: usize = 127;

/// Old path -> new path replacements, longest old path first.
pub struct Rewriter {
    needles: Needles,
    repl: Vec<Vec<u8>>,
    new_root: Vec<u8>,
    old_root_len: usize,
}

impl Rewriter {
    /// `old_roots`: every spelling of the venv root at save time (lexical and canonical).
    /// Interpreter paths are only mapped when `interp` is `Some((old, new))`.
    pub fn new(old_roots: &[Vec<u8>], new_root: &Path, interp: Option<(&Interpreter, &Interpreter)>) -> Self {
        let mut interps: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if let Some((o, n)) = interp {
            for (a, b) in interp_slots(o).into_iter().zip(interp_slots(n)) {
                if let (Some(a), Some(b)) = (a, b) {
                    if a != b && !interps.iter().any(|p| p.0 == a) {
                        interps.push((a, b));
                    }
                }
            }
        }
        let new_root_b = bytes(new_root).to_vec();
        let roots: Vec<Vec<u8>> = old_roots.iter().filter(|r| **r != new_root_b).cloned().collect();
        let needles = Needles::new(&roots, &interps.iter().map(|p| p.0.clone()).collect::<Vec<_>>());
        let repl = needles
            .iter()
            .map(|(n, t)| match t {
                Tag::Root => new_root_b.clone(),
                Tag::Interp => interps
                    .iter()
                    .find(|p| &p.0 == n)
                    .map(|p| p.1.clone())
                    .unwrap_or_default(),
            })
            .collect();
        let old_root_len = roots.iter().map(Vec::len).min().unwrap_or(0);
        Rewriter {
            needles,
            repl,
            new_root: new_root_b,
            old_root_len,
        }
    }

    pub fn is_noop(&self) -> bool {
        self.repl.is_empty()
    }

    /// Map one path (a shebang interpreter) if it starts with an old path.
    fn map_path(&self, p: &[u8]) -> Option<Vec<u8>> {
        let hits = self.needles.find_all(p);
        let (pos, k) = *hits.first()?;
        if pos != 0 {
            return None;
        }
        let mut out = self.repl[k].clone();
        out.extend_from_slice(&p[self.needles.needle(k).len()..]);
        Some(out)
    }

    /// Replace every occurrence in a text. In shell activate scripts an unquoted occurrence
    /// (virtualenv writes `VIRTUAL_ENV=/path`) is single-quoted when the new path needs it.
    fn replace_text(&self, s: &[u8], quote_unquoted: bool) -> (Vec<u8>, u32) {
        let hits = self.needles.find_all(s);
        let mut out = Vec::with_capacity(s.len() + 64);
        let mut last = 0;
        let mut n = 0;
        let needs_quotes = self.new_root.iter().any(|b| !is_shell_safe(*b));
        let mut pending_close: Option<usize> = None;
        for (pos, k) in hits {
            if pos < last {
                continue;
            }
            let len = self.needles.needle(k).len();
            if let Some(end) = pending_close.take() {
                if end <= pos {
                    out.extend_from_slice(&s[last..end]);
                    out.push(b'\'');
                    last = end;
                } else {
                    pending_close = Some(end);
                }
            }
            out.extend_from_slice(&s[last..pos]);
            let prev = if pos == 0 { b'\n' } else { s[pos - 1] };
            let quote = quote_unquoted
                && needs_quotes
                && self.needles.tag(k) == Tag::Root
                && pending_close.is_none()
                && !matches!(prev, b'"' | b'\'');
            if quote {
                out.push(b'\'');
                let end = s[pos..]
                    .iter()
                    .position(|b| b.is_ascii_whitespace() || matches!(b, b';' | b')' | b'"' | b'\'' | b'`'))
                    .map_or(s.len(), |p| pos + p);
                pending_close = Some(end);
            }
            out.extend_from_slice(&self.repl[k]);
            last = pos + len;
            n += 1;
        }
        if let Some(end) = pending_close {
            out.extend_from_slice(&s[last..end]);
            out.push(b'\'');
            last = end;
        }
        out.extend_from_slice(&s[last..]);
        (out, n)
    }
}

/// The interpreter paths a venv's files may name, in a fixed order so the slots of the old
/// and the new interpreter pair up. Never `home` or a prefix on its own: for a distro python
/// those are `/usr/bin` and `/usr`, and `#!/usr/bin/env python3` or `/usr/share/...` are not
/// the interpreter's. Only the executable itself and the interpreter-owned paths below them.
pub fn interp_slots(i: &Interpreter) -> Vec<Option<Vec<u8>>> {
    fn join(dir: &Path, rel: &str) -> Option<Vec<u8>> {
        let d = bytes(dir);
        if d.is_empty() || !d.starts_with(b"/") {
            return None;
        }
        let mut v = d.to_vec();
        while v.len() > 1 && v.ends_with(b"/") {
            v.pop();
        }
        if v.len() > 1 {
            v.push(b'/');
        }
        v.extend_from_slice(rel.as_bytes());
        Some(v)
    }
    let minor = i.minor();
    let major = minor.split('.').next().unwrap_or("3").to_string();
    let exe = bytes(&i.executable);
    let mut out = vec![(!exe.is_empty() && exe.starts_with(b"/")).then(|| exe.to_vec())];
    let names = [
        "python".to_string(),
        format!("python{major}"),
        format!("python{minor}"),
        "pypy".to_string(),
        format!("pypy{major}"),
        format!("pypy{minor}"),
    ];
    for n in &names {
        out.push(join(&i.home, n));
    }
    for p in [&i.base_prefix, &i.base_exec_prefix] {
        let p = p.as_deref();
        for rel in [format!("lib/python{minor}"), format!("include/python{minor}")]
            .into_iter()
            .chain(names.iter().map(|n| format!("bin/{n}")))
        {
            out.push(p.and_then(|p| join(p, &rel)));
        }
    }
    out
}

fn is_shell_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"/._-+@%:,=~".contains(&b)
}

pub fn bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// Parsed first line(s) of a script.
#[derive(Debug, PartialEq, Eq)]
struct Shebang {
    /// bytes of content the header spans (including its final newline, if any)
    end: usize,
    exe: Vec<u8>,
    /// interpreter arguments after the path, with their leading space (e.g. b" -E")
    post: Vec<u8>,
}

fn line_end(s: &[u8], from: usize) -> usize {
    s[from..].iter().position(|&b| b == b'\n').map_or(s.len(), |p| from + p)
}

fn parse_shebang(s: &[u8]) -> Option<Shebang> {
    if !s.starts_with(b"#!") {
        return None;
    }
    let l1 = line_end(s, 0);
    // The pip/distlib/uv trampoline:
    //   #!/bin/sh
    //   '''exec' "/path/bin/python" "$0" "$@"
    //   ' '''
    if &s[..l1] == b"#!/bin/sh" && s[l1..].starts_with(b"\n'''exec' ") {
        let l2s = l1 + 1;
        let l2 = line_end(s, l2s);
        let line = &s[l2s + b"'''exec' ".len()..l2];
        let (exe, rest) = match line.first()? {
            q @ (b'"' | b'\'') => {
                let close = line[1..].iter().position(|b| b == q)? + 1;
                (line[1..close].to_vec(), &line[close + 1..])
            }
            _ => {
                let sp = line.iter().position(|&b| b == b' ')?;
                (line[..sp].to_vec(), &line[sp..])
            }
        };
        let tail = b" \"$0\" \"$@\"";
        let post = rest.strip_suffix(tail)?.to_vec();
        if !s[l2..].starts_with(b"\n' '''") {
            return None;
        }
        let mut end = l2 + b"\n' '''".len();
        if s.get(end) == Some(&b'\n') {
            end += 1;
        }
        return Some(Shebang { end, exe, post });
    }
    let line = &s[2..l1];
    let line = line.strip_prefix(b" ").unwrap_or(line);
    let sp = line.iter().position(|&b| b == b' ' || b == b'\t').unwrap_or(line.len());
    let end = if l1 < s.len() { l1 + 1 } else { l1 };
    Some(Shebang {
        end,
        exe: line[..sp].to_vec(),
        post: line[sp..].to_vec(),
    })
}

/// The shebang distlib (pip) and uv write: plain when it fits and has no space, else the
/// `/bin/sh` trampoline, which both `sh` and Python parse.
pub fn build_shebang(exe: &[u8], post: &[u8]) -> Vec<u8> {
    let len = exe.len() + post.len() + 3; // "#!" + "\n"
    if len <= MAX_SHEBANG && !exe.contains(&b' ') {
        let mut v = b"#!".to_vec();
        v.extend_from_slice(exe);
        v.extend_from_slice(post);
        v.push(b'\n');
        v
    } else {
        let mut v = b"#!/bin/sh\n'''exec' \"".to_vec();
        v.extend_from_slice(exe);
        v.push(b'"');
        v.extend_from_slice(post);
        v.extend_from_slice(b" \"$0\" \"$@\"\n' '''\n");
        v
    }
}

/// What happened to one file.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Shebang,
    Text,
    BinaryPadded,
    PythonRelinked,
    PythonCopied,
    Config,
}

#[derive(Clone, Debug, Serialize)]
pub struct Rewritten {
    pub path: String,
    pub action: Action,
    pub replacements: u32,
}

/// Outcome of a text/binary rewrite of one file's content.
pub enum Outcome {
    Unchanged,
    Changed(Vec<u8>, Action, u32),
    /// Binary holding the old root, new root longer: cannot be padded.
    BinaryTooLong(u32),
}

pub fn rewrite_content(rel: &str, content: &[u8], rw: &Rewriter) -> Outcome {
    if rw.is_noop() {
        return Outcome::Unchanged;
    }
    if is_binary(content) {
        return rewrite_binary(content, rw);
    }
    let base = rel.rsplit('/').next().unwrap_or(rel);
    let shell_activate = base == "activate" || base == "activate.csh" || base == "activate.fish";
    let mut action = Action::Text;
    let mut out = Vec::with_capacity(content.len() + 64);
    let mut body_start = 0;
    let mut n = 0;
    if let Some(sb) = parse_shebang(content) {
        if let Some(new_exe) = rw.map_path(&sb.exe) {
            out.extend_from_slice(&build_shebang(&new_exe, &sb.post));
            body_start = sb.end;
            action = Action::Shebang;
            n += 1;
        }
    }
    let (body, m) = rw.replace_text(&content[body_start..], shell_activate);
    n += m;
    if n == 0 {
        return Outcome::Unchanged;
    }
    out.extend_from_slice(&body);
    Outcome::Changed(out, action, n)
}

/// conda-style prefix replacement: each C string starting with the old root becomes the new
/// root + the same suffix, NUL-padded to the old length, so offsets in the binary stay valid.
fn rewrite_binary(content: &[u8], rw: &Rewriter) -> Outcome {
    let hits: Vec<_> = rw
        .needles
        .find_all(content)
        .into_iter()
        .filter(|(_, k)| rw.needles.tag(*k) == Tag::Root)
        .collect();
    if hits.is_empty() {
        return Outcome::Unchanged;
    }
    if rw.new_root.len() > rw.old_root_len {
        return Outcome::BinaryTooLong(hits.len() as u32);
    }
    if hits
        .iter()
        .any(|&(_, k)| rw.new_root.len() > rw.needles.needle(k).len())
    {
        return Outcome::BinaryTooLong(hits.len() as u32);
    }
    // Group the hits by the C string (up to its NUL) holding them: an rpath such as
    // `/w/venv/a:/w/venv/b` holds the root twice. Each string is rebuilt once, with every
    // occurrence replaced, and NUL-padded once at its end.
    let mut out = content.to_vec();
    let mut i = 0;
    while i < hits.len() {
        let start = hits[i].0;
        let end = content[start..]
            .iter()
            .position(|&b| b == 0)
            .map_or(content.len(), |p| start + p);
        let mut seg = Vec::with_capacity(end - start);
        let mut last = start;
        while i < hits.len() && hits[i].0 < end {
            let (pos, k) = hits[i];
            seg.extend_from_slice(&content[last..pos]);
            seg.extend_from_slice(&rw.new_root);
            last = pos + rw.needles.needle(k).len();
            i += 1;
        }
        seg.extend_from_slice(&content[last..end]);
        seg.resize(end - start, 0);
        out[start..end].copy_from_slice(&seg);
    }
    Outcome::Changed(out, Action::BinaryPadded, hits.len() as u32)
}

/// Replace `path` with `content`, keeping mode, owner and mtime (and the parent's mtime).
pub fn replace_file(path: &Path, content: &[u8]) -> Result<()> {
    replace_atomically(path, NewContent::Bytes(content))
}

/// Replace `path` with a copy of `src` (a new interpreter binary for `--copies` venvs).
pub fn replace_with_copy(path: &Path, src: &Path) -> Result<()> {
    replace_atomically(path, NewContent::CopyOf(src))
}

/// What replaces a file.
enum NewContent<'a> {
    Bytes(&'a [u8]),
    CopyOf(&'a Path),
    Symlink(&'a Path),
}

/// The one way the venv module replaces anything in a staged tree: the new entry is created
/// under a fresh random name in the same directory (`O_EXCL`, so a planted entry of any name
/// is never followed or written through), gets the old entry's mode, owner and mtime, and is
/// renamed over it. The old inode (possibly a store object) is never modified, and the
/// parent directory's mtime is restored.
fn replace_atomically(path: &Path, new: NewContent<'_>) -> Result<()> {
    use std::io::Write;
    let md = std::fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let pmd = std::fs::metadata(parent).map_err(|e| Error::io("stat", parent, e))?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".envsnap-");
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix);
    let tmp = match new {
        NewContent::Bytes(content) => {
            let mut f = b
                .tempfile_in(parent)
                .map_err(|e| Error::io("create temp file in", parent, e))?;
            f.write_all(content)
                .and_then(|_| f.flush())
                .map_err(|e| Error::io("write", f.path(), e))?;
            f.into_temp_path()
        }
        NewContent::CopyOf(src) => {
            let mut f = b
                .tempfile_in(parent)
                .map_err(|e| Error::io("create temp file in", parent, e))?;
            let mut r = std::fs::File::open(src).map_err(|e| Error::io("open", src, e))?;
            std::io::copy(&mut r, f.as_file_mut()).map_err(|e| Error::io("copy", src, e))?;
            f.into_temp_path()
        }
        NewContent::Symlink(target) => b
            .make_in(parent, |p| std::os::unix::fs::symlink(target, p))
            .map_err(|e| Error::io("create symlink in", parent, e))?
            .into_temp_path(),
    };
    let is_link = matches!(new, NewContent::Symlink(_));
    let t: &Path = &tmp;
    if !is_link {
        std::fs::set_permissions(t, std::fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(|e| Error::io("chmod", t, e))?;
    }
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::lchown(t, Some(md.uid()), Some(md.gid())).map_err(|e| Error::io("chown", t, e))?;
    }
    let mt = filetime::FileTime::from_last_modification_time(&md);
    if is_link {
        let at = filetime::FileTime::from_last_access_time(&md);
        filetime::set_symlink_file_times(t, at, mt).map_err(|e| Error::io("set mtime of", t, e))?;
    } else {
        filetime::set_file_mtime(t, mt).map_err(|e| Error::io("set mtime of", t, e))?;
    }
    // On error the temp entry is removed when `tmp` drops.
    tmp.persist(path).map_err(|e| Error::io("rename onto", path, e.error))?;
    restore_dir_mtime(parent, &pmd);
    Ok(())
}

fn restore_dir_mtime(dir: &Path, md: &std::fs::Metadata) {
    let mt = filetime::FileTime::from_last_modification_time(md);
    let _ = filetime::set_file_mtime(dir, mt);
}

/// Is `name` one of the venv's interpreter entries (`python`, `python3`, `python3.11`, `pypy3`)?
pub fn is_python_name(name: &str) -> bool {
    let rest = name.strip_prefix("python").or_else(|| name.strip_prefix("pypy"));
    rest.is_some_and(|r| r.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

/// Point `bin/python*` at the new interpreter: absolute (or escaping) symlinks are
/// re-pointed; copied ELF binaries (`--copies`) are replaced by a copy of the new one.
/// In-venv relative links (`python3 -> python`) are kept. Without `changed` (same
/// interpreter) only dangling links are repaired.
pub fn retarget_pythons(venv: &Path, new: &Interpreter, changed: bool) -> Result<Vec<Rewritten>> {
    let bin = venv.join("bin");
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&bin) else {
        return Ok(out);
    };
    let pmd = std::fs::metadata(&bin).map_err(|e| Error::io("stat", &bin, e))?;
    let mut names: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    names.sort();
    let real_new = std::fs::canonicalize(&new.executable).map_err(|e| Error::io("resolve", &new.executable, e))?;
    for name in names {
        let Some(s) = name.to_str() else { continue };
        if !is_python_name(s) {
            continue;
        }
        let p = bin.join(&name);
        let md = std::fs::symlink_metadata(&p).map_err(|e| Error::io("stat", &p, e))?;
        if md.file_type().is_symlink() {
            let target = std::fs::read_link(&p).map_err(|e| Error::io("read link", &p, e))?;
            let internal = target.is_relative() && !target.components().any(|c| c == std::path::Component::ParentDir);
            if internal || target == new.executable || (!changed && p.exists()) {
                continue;
            }
            // Keeps the snapshot's mtime on the new link.
            replace_atomically(&p, NewContent::Symlink(&new.executable))?;
            out.push(Rewritten {
                path: format!("bin/{s}"),
                action: Action::PythonRelinked,
                replacements: 1,
            });
        } else if changed && md.is_file() && is_elf(&p) {
            replace_with_copy(&p, &real_new)?;
            out.push(Rewritten {
                path: format!("bin/{s}"),
                action: Action::PythonCopied,
                replacements: 1,
            });
        }
    }
    restore_dir_mtime(&bin, &pmd);
    Ok(out)
}

fn is_elf(p: &Path) -> bool {
    use std::io::Read;
    let mut b = [0u8; 4];
    std::fs::File::open(p).and_then(|mut f| f.read_exact(&mut b)).is_ok() && &b == b"\x7fELF"
}

/// `pyvenv.cfg` for the new interpreter: `home`, `executable`, `base-*`, version keys;
/// `command` and anything else by path replacement. `home` and `bin/python` must name the
/// same installation, or the stdlib and the binary disagree at import time.
pub fn rewrite_pyvenv_cfg(text: &str, rw: &Rewriter, new: Option<&Interpreter>) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        let nl = if line.ends_with('\n') { "\n" } else { "" };
        let body = line.trim_end_matches('\n');
        let Some((k, v)) = body.split_once('=') else {
            out.push_str(line);
            continue;
        };
        let key = k.trim().to_ascii_lowercase();
        let val = v.trim();
        let newval: Option<String> = new.and_then(|n| match key.as_str() {
            "home" => Some(n.home.display().to_string()),
            "executable" | "base-executable" => Some(n.executable.display().to_string()),
            "base-prefix" => n.base_prefix.as_ref().map(|p| p.display().to_string()),
            "base-exec-prefix" => n.base_exec_prefix.as_ref().map(|p| p.display().to_string()),
            // `<python> -m venv …` (the stdlib venv): the interpreter that made it, named by
            // whatever path was used then (maybe a symlink that is gone); the rest by replacement.
            "command" if val.starts_with('/') => {
                let exe_end = val.find(" -m ").unwrap_or_else(|| val.find(' ').unwrap_or(val.len()));
                let (rest, _) = rw.replace_text(&val.as_bytes()[exe_end..], false);
                Some(format!("{}{}", n.executable.display(), String::from_utf8_lossy(&rest)))
            }
            "version" => Some(n.version.clone()),
            // virtualenv: "3.11.7.final.0"; uv: "3.11.7"
            "version_info" => {
                let extra: Vec<&str> = val.split('.').skip(3).collect();
                if extra.is_empty() {
                    Some(n.version.clone())
                } else {
                    Some(format!("{}.{}", n.version, extra.join(".")))
                }
            }
            _ => None,
        });
        match newval {
            Some(nv) => {
                out.push_str(k.trim_end());
                out.push_str(" = ");
                out.push_str(&nv);
                out.push_str(nl);
            }
            None => {
                let (b, _) = rw.replace_text(line.as_bytes(), false);
                out.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }
    out
}

/// Editable installs point at a source checkout outside the venv: kept as is; a warning
/// names each whose source is gone.
pub fn missing_editables(venv: &Path) -> Vec<(String, PathBuf)> {
    let mut out = BTreeSet::new();
    for lib in ["lib", "lib64"] {
        let Ok(rd) = std::fs::read_dir(venv.join(lib)) else {
            continue;
        };
        for py in rd.filter_map(|e| e.ok()) {
            let sp = py.path().join("site-packages");
            let Ok(rd2) = std::fs::read_dir(&sp) else { continue };
            for d in rd2.filter_map(|e| e.ok()) {
                let name = d.file_name().to_string_lossy().to_string();
                let Some(stem) = name.strip_suffix(".dist-info") else {
                    continue;
                };
                let Ok(txt) = std::fs::read_to_string(d.path().join("direct_url.json")) else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&txt) else {
                    continue;
                };
                if v["dir_info"]["editable"].as_bool() != Some(true) {
                    continue;
                }
                let Some(url) = v["url"].as_str() else { continue };
                let Some(p) = url.strip_prefix("file://") else { continue };
                let p = PathBuf::from(percent_decode(p));
                if !p.exists() {
                    let pkg = stem.rsplit_once('-').map_or(stem, |x| x.0).to_string();
                    out.insert((pkg, p));
                }
            }
        }
    }
    out.into_iter().collect()
}

/// `%XX` decoding on bytes (a `%` before non-ASCII or non-hex text is kept literally).
fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(new: &str) -> Rewriter {
        Rewriter::new(&[b"/w/venv".to_vec()], Path::new(new), None)
    }

    fn changed(o: Outcome) -> (String, Action) {
        match o {
            Outcome::Changed(b, a, _) => (String::from_utf8(b).unwrap(), a),
            _ => panic!("unchanged"),
        }
    }

    #[test]
    fn console_script_shebang_points_at_new_venv() {
        let (s, a) = changed(rewrite_content(
            "bin/black",
            b"#!/w/venv/bin/python\nimport sys\n",
            &rw("/x/v"),
        ));
        assert_eq!(s, "#!/x/v/bin/python\nimport sys\n");
        assert_eq!(a, Action::Shebang);
    }

    #[test]
    fn shebang_with_space_becomes_distlib_trampoline_and_back() {
        let (s, _) = changed(rewrite_content(
            "bin/black",
            b"#!/w/venv/bin/python -E\nimport sys\n",
            &rw("/x y/v"),
        ));
        assert_eq!(
            s,
            "#!/bin/sh\n'''exec' \"/x y/v/bin/python\" -E \"$0\" \"$@\"\n' '''\nimport sys\n"
        );
        let back = Rewriter::new(&[b"/x y/v".to_vec()], Path::new("/w/venv"), None);
        let (s2, _) = changed(rewrite_content("bin/black", s.as_bytes(), &back));
        assert_eq!(s2, "#!/w/venv/bin/python -E\nimport sys\n");
    }

    #[test]
    fn shebang_over_127_bytes_becomes_trampoline() {
        let long = format!("/{}", "a".repeat(130));
        let (s, _) = changed(rewrite_content("bin/x", b"#!/w/venv/bin/python\n", &rw(&long)));
        assert!(s.starts_with("#!/bin/sh\n'''exec' \""));
    }

    #[test]
    fn uv_relocatable_trampoline_is_left_alone() {
        let s = b"#!/bin/sh\n'''exec' \"$(dirname -- \"$(realpath -- \"$0\")\")\"/'python' \"$0\" \"$@\"\n' '''\nimport x\n";
        assert!(matches!(rewrite_content("bin/x", s, &rw("/x y/v")), Outcome::Unchanged));
    }

    #[test]
    fn unquoted_virtualenv_activate_gets_quoted_for_spaces() {
        let src = b"VIRTUAL_ENV=/w/venv\nexport PATH=\"$VIRTUAL_ENV/bin:$PATH\"\nX=\"/w/venv\"\n";
        let (s, _) = changed(rewrite_content("bin/activate", src, &rw("/a b/v")));
        assert_eq!(
            s,
            "VIRTUAL_ENV='/a b/v'\nexport PATH=\"$VIRTUAL_ENV/bin:$PATH\"\nX=\"/a b/v\"\n"
        );
        let (s, _) = changed(rewrite_content(
            "bin/activate.fish",
            b"set -gx VIRTUAL_ENV /w/venv\n",
            &rw("/a b/v"),
        ));
        assert_eq!(s, "set -gx VIRTUAL_ENV '/a b/v'\n");
        let (s, _) = changed(rewrite_content("bin/activate", b"VIRTUAL_ENV=/w/venv\n", &rw("/short")));
        assert_eq!(s, "VIRTUAL_ENV=/short\n");
    }

    #[test]
    fn binary_padded_when_not_longer_else_refused() {
        let bin = b"\x7fELF\x00/w/venv/lib/x.so\x00more\x00";
        match rewrite_content("lib/a.so", bin, &rw("/v")) {
            Outcome::Changed(b, Action::BinaryPadded, 1) => {
                assert_eq!(b.len(), bin.len());
                assert_eq!(&b[..], &b"\x7fELF\x00/v/lib/x.so\x00\x00\x00\x00\x00\x00more\x00"[..]);
                assert!(b.ends_with(b"\x00more\x00"));
            }
            _ => panic!(),
        }
        assert!(matches!(
            rewrite_content("lib/a.so", bin, &rw("/longer/venv")),
            Outcome::BinaryTooLong(1)
        ));
    }

    #[test]
    fn pyvenv_cfg_keys_follow_new_interpreter() {
        let old = Interpreter {
            executable: "/opt/a/bin/python3.11".into(),
            home: "/opt/a/bin".into(),
            base_prefix: Some("/opt/a".into()),
            version: "3.11.7".into(),
            ..Default::default()
        };
        let new = installed("/usr", "3.11.2");
        let r = Rewriter::new(&[b"/w/venv".to_vec()], Path::new("/n/v"), Some((&old, &new)));
        let cfg = "home = /opt/a/bin\nversion_info = 3.11.7.final.0\nbase-prefix = /opt/a\nbase-exec-prefix = /opt/a\nbase-executable = /opt/a/bin/python3.11\ncommand = /opt/a/bin/python3.11 -m venv /w/venv\nprompt = x\n";
        let out = rewrite_pyvenv_cfg(cfg, &r, Some(&new));
        assert_eq!(out, "home = /usr/bin\nversion_info = 3.11.2.final.0\nbase-prefix = /usr\nbase-exec-prefix = /usr\nbase-executable = /usr/bin/python3.11\ncommand = /usr/bin/python3.11 -m venv /n/v\nprompt = x\n");
    }

    #[test]
    fn python_names() {
        assert!(is_python_name("python") && is_python_name("python3.11") && is_python_name("pypy3"));
        assert!(!is_python_name("python-config") && !is_python_name("pythonw"));
    }

    /// A CPython 3.11 installed under PREFIX (`PREFIX/bin/python3.11`).
    fn installed(prefix: &str, version: &str) -> Interpreter {
        Interpreter {
            executable: format!("{prefix}/bin/python3.11").into(),
            home: format!("{prefix}/bin").into(),
            base_prefix: Some(prefix.into()),
            base_exec_prefix: Some(prefix.into()),
            version: version.into(),
            ..Default::default()
        }
    }

    fn debian_and_pyenv() -> (Interpreter, Interpreter) {
        (installed("/usr", "3.11.2"), installed("/p/3.11.7", "3.11.7"))
    }

    #[test]
    fn debian_usr_home_and_prefix_do_not_rewrite_unrelated_usr_paths() {
        let (old, new) = debian_and_pyenv();
        let r = Rewriter::new(&[b"/w/venv".to_vec()], Path::new("/w/venv"), Some((&old, &new)));
        let unrelated = "#!/usr/bin/env python3\nDATA = '/usr/share/foo'\nSRC = '/usr/src/app'\nX = '/usr/bin/python3-config /usr/lib/x86_64-linux-gnu'\n";
        assert!(matches!(
            rewrite_content("lib/python3.11/site-packages/m.py", unrelated.as_bytes(), &r),
            Outcome::Unchanged
        ));
        let owned = "#!/usr/bin/python3.11 -E\nA = '/usr/bin/python3'\nB = '/usr/lib/python3.11/site-packages'\nC = '/usr/include/python3.11'\n";
        let (s, a) = changed(rewrite_content("bin/tool", owned.as_bytes(), &r));
        assert_eq!(a, Action::Shebang);
        assert_eq!(
            s,
            "#!/p/3.11.7/bin/python3.11 -E\nA = '/p/3.11.7/bin/python3'\nB = '/p/3.11.7/lib/python3.11/site-packages'\nC = '/p/3.11.7/include/python3.11'\n"
        );
    }

    #[test]
    fn binary_c_string_holding_the_root_twice_is_rewritten_whole() {
        let bin = b"\x7fELF\x00/w/venv/a:/w/venv/b\x00tail\x00";
        match rewrite_content("lib/a.so", bin, &rw("/v")) {
            Outcome::Changed(b, Action::BinaryPadded, 2) => {
                assert_eq!(b.len(), bin.len());
                let mut want = b"\x7fELF\x00/v/a:/v/b".to_vec();
                want.resize(5 + "/w/venv/a:/w/venv/b".len(), 0);
                want.extend_from_slice(b"\x00tail\x00");
                assert_eq!(b, want);
            }
            _ => panic!(),
        }
    }

    #[test]
    fn replace_file_does_not_follow_a_planted_envsnap_fixup_symlink() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::write(&outside, "secret").unwrap();
        let dir = t.path().join("venv/bin");
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pip");
        std::fs::write(&f, "old").unwrap();
        let planted = dir.join("pip.envsnap-fixup");
        std::os::unix::fs::symlink(&outside, &planted).unwrap();
        replace_file(&f, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "secret");
        assert_eq!(std::fs::read_link(&planted).unwrap(), outside);
        // A planted name next to a copy target is not written through either.
        replace_with_copy(&f, &outside).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "secret");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["pip", "pip.envsnap-fixup"], "no temp files left");
    }

    #[test]
    fn percent_decode_does_not_panic_on_percent_before_non_ascii() {
        assert_eq!(percent_decode("/src/a%é/b"), "/src/a%é/b");
        // the old &str slicing cut these inside a multi-byte character
        assert_eq!(percent_decode("/src/%aé"), "/src/%aé");
        assert_eq!(percent_decode("/src/%€x"), "/src/%€x");
        assert_eq!(percent_decode("/a%20b%2"), "/a b%2");
        assert_eq!(percent_decode("/%C3%A9%zz"), "/é%zz");
    }

    #[test]
    fn relinked_python_symlink_keeps_its_snapshot_mtime() {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let exe = t.path().join("newpy");
        std::fs::write(&exe, "").unwrap();
        let link = bin.join("python3.11");
        std::os::unix::fs::symlink("/nonexistent/python3.11", &link).unwrap();
        let mt = filetime::FileTime::from_unix_time(1_600_000_000, 0);
        filetime::set_symlink_file_times(&link, mt, mt).unwrap();
        let new = Interpreter {
            executable: exe.clone(),
            ..Default::default()
        };
        let out = retarget_pythons(t.path(), &new, true).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(std::fs::read_link(&link).unwrap(), exe);
        let md = std::fs::symlink_metadata(&link).unwrap();
        assert_eq!(filetime::FileTime::from_last_modification_time(&md), mt);
    }
}
