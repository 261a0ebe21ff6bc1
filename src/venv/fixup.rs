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
            let pairs = [
                (Some(&o.executable), Some(&n.executable)),
                (Some(&o.home), Some(&n.home)),
                (o.base_prefix.as_ref(), n.base_prefix.as_ref()),
                (o.base_exec_prefix.as_ref(), n.base_exec_prefix.as_ref()),
            ];
            for (a, b) in pairs {
                if let (Some(a), Some(b)) = (a, b) {
                    if a != b && !a.as_os_str().is_empty() && !b.as_os_str().is_empty() {
                        interps.push((bytes(a).to_vec(), bytes(b).to_vec()));
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
    let mut out = content.to_vec();
    for &(pos, k) in &hits {
        let old_len = rw.needles.needle(k).len();
        if rw.new_root.len() > old_len {
            return Outcome::BinaryTooLong(hits.len() as u32);
        }
        let end = content[pos..]
            .iter()
            .position(|&b| b == 0)
            .map_or(content.len(), |p| pos + p);
        let mut seg = rw.new_root.clone();
        seg.extend_from_slice(&content[pos + old_len..end]);
        seg.resize(end - pos, 0);
        out[pos..end].copy_from_slice(&seg);
    }
    Outcome::Changed(out, Action::BinaryPadded, hits.len() as u32)
}

/// Replace `path` with `content`, keeping mode, owner and mtime (and the parent's mtime).
pub fn replace_file(path: &Path, content: &[u8]) -> Result<()> {
    let md = std::fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))?;
    let parent = path.parent().unwrap_or(Path::new("."));
    let pmd = std::fs::metadata(parent).map_err(|e| Error::io("stat", parent, e))?;
    let tmp = tmp_name(path);
    std::fs::write(&tmp, content).map_err(|e| Error::io("write", &tmp, e))?;
    finish_replace(&tmp, path, &md, &pmd)
}

/// Replace `path` with a copy of `src` (a new interpreter binary for `--copies` venvs).
pub fn replace_with_copy(path: &Path, src: &Path) -> Result<()> {
    let md = std::fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))?;
    let parent = path.parent().unwrap_or(Path::new("."));
    let pmd = std::fs::metadata(parent).map_err(|e| Error::io("stat", parent, e))?;
    let tmp = tmp_name(path);
    std::fs::copy(src, &tmp).map_err(|e| Error::io("copy", src, e))?;
    finish_replace(&tmp, path, &md, &pmd)
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut n = path.file_name().unwrap_or_default().to_os_string();
    n.push(".envsnap-fixup");
    path.with_file_name(n)
}

fn finish_replace(tmp: &Path, path: &Path, md: &std::fs::Metadata, pmd: &std::fs::Metadata) -> Result<()> {
    let res = (|| {
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(|e| Error::io("chmod", tmp, e))?;
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::lchown(tmp, Some(md.uid()), Some(md.gid())).map_err(|e| Error::io("chown", tmp, e))?;
        }
        let mt = filetime::FileTime::from_last_modification_time(md);
        filetime::set_file_mtime(tmp, mt).map_err(|e| Error::io("set mtime of", tmp, e))?;
        std::fs::rename(tmp, path).map_err(|e| Error::io("rename onto", path, e))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    res?;
    restore_dir_mtime(path.parent().unwrap_or(Path::new(".")), pmd);
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
            let tmp = tmp_name(&p);
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&new.executable, &tmp).map_err(|e| Error::io("create symlink", &tmp, e))?;
            std::fs::rename(&tmp, &p).map_err(|e| Error::io("rename onto", &p, e))?;
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

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
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
        let new = Interpreter {
            executable: "/usr/bin/python3.11".into(),
            home: "/usr/bin".into(),
            base_prefix: Some("/usr".into()),
            base_exec_prefix: Some("/usr".into()),
            version: "3.11.2".into(),
            ..Default::default()
        };
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
}
