//! Key templates: literal text plus `{token}` / `{token:ARG}`.
//!
//! Braces are reserved: there is no escape for a literal `{` or `}`, and `{{`
//! is rejected with a hint, because a pasted CircleCI template
//! (`{{ checksum "f" }}`) must fail loudly rather than render as text.
//! The library never prints: `render` returns the key and what each token
//! was made of; the CLI prints that for `--explain`.
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{hash, system, validate};
use crate::error::{Error, Result};

/// Inputs for rendering; everything else (env, os-release, PATH) is read live.
#[derive(Debug, Clone)]
pub struct KeyContext {
    /// Where glob and file tokens are relative to (`--root`, default cwd).
    pub root: PathBuf,
    /// `--python PY` for `{python*}`.
    pub python: Option<PathBuf>,
    /// The command's venv, used for `{python*}` when `--python` is absent.
    pub venv: Option<PathBuf>,
    /// Root of the dpkg database for `{apt-base}` (default `/`).
    pub dpkg_root: PathBuf,
    /// Clock for `{epoch}` and `{date}`.
    pub now: SystemTime,
}

impl KeyContext {
    /// Root `root`, no interpreter override, dpkg at `/`, the current time.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        KeyContext {
            root: root.into(),
            python: None,
            venv: None,
            dpkg_root: PathBuf::from("/"),
            now: SystemTime::now(),
        }
    }
}

/// One labelled input of a token (a file and its digest, a field, a path).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ExplainInput {
    pub name: String,
    pub value: String,
}

/// A token as written, its value, and the inputs it was computed from.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainItem {
    pub token: String,
    pub value: String,
    pub inputs: Vec<ExplainInput>,
}

/// A rendered key and its explanation, one item per token in template order.
#[derive(Debug, Clone, Serialize)]
pub struct Rendered {
    pub key: String,
    #[serde(rename = "tokens")]
    pub explain: Vec<ExplainItem>,
}

#[derive(Debug, PartialEq, Eq)]
enum Part<'a> {
    Lit(&'a str),
    Tok {
        name: &'a str,
        arg: Option<&'a str>,
        text: &'a str,
    },
}

/// Token names, for `is_template` users and the "unknown token" message.
pub const TOKENS: &[&str] = &[
    "os",
    "arch",
    "os-release",
    "image",
    "python",
    "python-minor",
    "python-impl",
    "hash:GLOBS",
    "hashFiles:GLOBS",
    "checksum:FILE",
    "env:NAME",
    "apt-base",
    "epoch",
    "date",
];

/// Does `s` contain template syntax (so it must be rendered, not used as is)?
pub fn is_template(s: &str) -> bool {
    s.contains(['{', '}'])
}

fn parse(t: &str) -> Result<Vec<Part<'_>>> {
    let mut parts = Vec::new();
    let mut rest = t;
    let mut off = 0;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                parts.push(Part::Lit(rest));
                break;
            }
            Some(i) => {
                if i > 0 {
                    parts.push(Part::Lit(&rest[..i]));
                }
                let at = off + i + 1;
                if rest[i..].starts_with('}') {
                    return Err(Error::Usage(format!("template {t:?}: unmatched '}}' at column {at}")));
                }
                if rest[i..].starts_with("{{") {
                    return Err(Error::Usage(format!(
                        "template {t:?}: '{{{{' at column {at}: tokens take one brace, e.g. {{checksum:FILE}} for CircleCI's {{{{ checksum \"FILE\" }}}}"
                    )));
                }
                let body_start = i + 1;
                let Some(len) = rest[body_start..].find(['{', '}']) else {
                    return Err(Error::Usage(format!(
                        "template {t:?}: unterminated '{{' at column {at}"
                    )));
                };
                let end = body_start + len;
                if rest[end..].starts_with('{') {
                    return Err(Error::Usage(format!(
                        "template {t:?}: '{{' inside the token at column {at}"
                    )));
                }
                let body = &rest[body_start..end];
                let (name, arg) = match body.split_once(':') {
                    Some((n, a)) => (n.trim(), Some(a)),
                    None => (body.trim(), None),
                };
                parts.push(Part::Tok {
                    name,
                    arg,
                    text: &rest[i..=end],
                });
                off += end + 1;
                rest = &rest[end + 1..];
                continue;
            }
        }
    }
    Ok(parts)
}

/// Lazily computed interpreter identity, shared by the `{python*}` tokens of one render.
struct Lazy<'c> {
    ctx: &'c KeyContext,
    python: Option<system::PythonInfo>,
}

impl Lazy<'_> {
    fn python(&mut self) -> Result<&system::PythonInfo> {
        if self.python.is_none() {
            let cmd = system::python_command(self.ctx.python.as_deref(), self.ctx.venv.as_deref());
            self.python = Some(system::python_info(&cmd)?);
        }
        Ok(self.python.as_ref().expect("set above"))
    }
}

fn input(name: impl Into<String>, value: impl Into<String>) -> ExplainInput {
    ExplainInput {
        name: name.into(),
        value: value.into(),
    }
}

fn no_arg(name: &str, arg: Option<&str>, text: &str) -> Result<()> {
    match arg {
        None => Ok(()),
        Some(_) => Err(Error::Usage(format!("token {text}: {{{name}}} takes no argument"))),
    }
}

fn need_arg<'a>(arg: Option<&'a str>, text: &str, what: &str) -> Result<&'a str> {
    match arg.map(str::trim) {
        Some(a) if !a.is_empty() => Ok(a),
        _ => Err(Error::Usage(format!("token {text}: needs {what}"))),
    }
}

fn file_inputs(fh: &hash::FileHash, algo: &str) -> Vec<ExplainInput> {
    fh.files
        .iter()
        .map(|f| input(f.rel.clone(), format!("{algo}:{} {} bytes", f.digest, f.size)))
        .collect()
}

fn token(name: &str, arg: Option<&str>, text: &str, lazy: &mut Lazy) -> Result<(String, Vec<ExplainInput>)> {
    let ctx = lazy.ctx;
    Ok(match name {
        "os" => {
            no_arg(name, arg, text)?;
            (
                system::os_name().into(),
                vec![input("std::env::consts::OS", std::env::consts::OS)],
            )
        }
        "arch" => {
            no_arg(name, arg, text)?;
            (
                system::arch().into(),
                vec![input("std::env::consts::ARCH", system::arch())],
            )
        }
        "os-release" => {
            no_arg(name, arg, text)?;
            let (v, fields) = system::os_release()?;
            (v, fields.into_iter().map(|(k, v)| input(k, v)).collect())
        }
        "image" => {
            no_arg(name, arg, text)?;
            let (v, fields) = system::image()?;
            (v, fields.into_iter().map(|(k, v)| input(k, v)).collect())
        }
        "python" | "python-minor" | "python-impl" => {
            no_arg(name, arg, text)?;
            let p = lazy.python()?;
            let v = match name {
                "python" => p.version.clone(),
                "python-minor" => p.minor.clone(),
                _ => p.impl_tag.clone(),
            };
            let inputs = vec![
                input("interpreter", p.command.display().to_string()),
                input("sys.executable", p.executable.clone()),
                input("version", p.version.clone()),
                input("implementation", p.impl_tag.clone()),
            ];
            (v, inputs)
        }
        "hash" => {
            let globs = need_arg(arg, text, "glob patterns, e.g. {hash:requirements*.txt}")?;
            let fh = hash::hash(globs, &ctx.root).map_err(|e| Error::Usage(format!("token {text}: {e}")))?;
            let inputs = file_inputs(&fh, "blake3");
            (fh.value, inputs)
        }
        "hashFiles" => {
            let globs = need_arg(arg, text, "glob patterns, e.g. {hashFiles:**/package-lock.json}")?;
            let fh = hash::hash_files(globs, &ctx.root).map_err(|e| Error::Usage(format!("token {text}: {e}")))?;
            let mut inputs = file_inputs(&fh, "sha256");
            if inputs.is_empty() {
                inputs.push(input(
                    "(no files matched)",
                    "value is empty, as in GitHub's hashFiles()",
                ));
            }
            (fh.value, inputs)
        }
        "checksum" => {
            let file = need_arg(arg, text, "a file, e.g. {checksum:package-lock.json}")?;
            let fh = hash::checksum(file, &ctx.root).map_err(|e| match e {
                Error::Usage(m) => Error::Usage(m),
                e => Error::Usage(format!("token {text}: {e}")),
            })?;
            let inputs = file_inputs(&fh, "sha256");
            (fh.value, inputs)
        }
        "env" => {
            let var = need_arg(arg, text, "a variable name, e.g. {env:CACHE_VERSION}")?;
            match std::env::var(var) {
                Ok(v) => (v.clone(), vec![input(format!("${var}"), v)]),
                Err(std::env::VarError::NotPresent) => {
                    return Err(Error::Usage(format!(
                        "token {text}: environment variable {var} is not set"
                    )))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(Error::Usage(format!(
                        "token {text}: environment variable {var} is not UTF-8"
                    )))
                }
            }
        }
        "apt-base" => {
            no_arg(name, arg, text)?;
            let (v, n) = system::apt_base(&ctx.dpkg_root)?;
            let status = ctx.dpkg_root.join("var/lib/dpkg/status");
            (
                v,
                vec![
                    input("dpkg status", status.display().to_string()),
                    input("installed packages", n.to_string()),
                ],
            )
        }
        "epoch" => {
            let secs = epoch_secs(ctx)?;
            match arg {
                None => (secs.to_string(), vec![input("unix time", secs.to_string())]),
                Some(a) => {
                    let n: u64 = a.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        Error::Usage(format!(
                            "token {text}: the argument is a period in seconds, e.g. {{epoch:604800}}"
                        ))
                    })?;
                    (
                        (secs / n).to_string(),
                        vec![input("unix time", secs.to_string()), input("period (s)", n.to_string())],
                    )
                }
            }
        }
        "date" => {
            no_arg(name, arg, text)?;
            let secs = epoch_secs(ctx)?;
            (
                utc_date(secs),
                vec![input("unix time", secs.to_string()), input("timezone", "UTC")],
            )
        }
        _ => {
            return Err(Error::Usage(format!(
                "unknown token {text}; known tokens: {}",
                TOKENS.join(", ")
            )));
        }
    })
}

fn epoch_secs(ctx: &KeyContext) -> Result<u64> {
    ctx.now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| Error::Usage("the clock is before 1970".into()))
}

/// `YYYY-MM-DD` in UTC (civil-from-days, Howard Hinnant's algorithm).
fn utc_date(secs: u64) -> String {
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Renders `template` and checks the result against the store's key rules.
/// Errors are `Error::Usage` (exit 2) naming the token or pattern.
pub fn render(template: &str, ctx: &KeyContext) -> Result<Rendered> {
    let parts = parse(template)?;
    let mut lazy = Lazy { ctx, python: None };
    let mut key = String::new();
    let mut explain = Vec::new();
    for p in parts {
        match p {
            Part::Lit(s) => key.push_str(s),
            Part::Tok { name, arg, text } => {
                let (value, inputs) = token(name, arg, text, &mut lazy)?;
                key.push_str(&value);
                explain.push(ExplainItem {
                    token: text.to_string(),
                    value,
                    inputs,
                });
            }
        }
    }
    validate(&key).map_err(|e| Error::Usage(format!("template {template:?} rendered {e}")))?;
    Ok(Rendered { key, explain })
}

/// For `--key` / `--fallback` of `save` and `restore`: renders templates,
/// validates plain keys, returns the final key.
pub fn resolve(s: &str, ctx: &KeyContext) -> Result<String> {
    if is_template(s) {
        Ok(render(s, ctx)?.key)
    } else {
        validate(s)?;
        Ok(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ctx_at(secs: u64) -> KeyContext {
        let mut c = KeyContext::new(".");
        c.now = UNIX_EPOCH + Duration::from_secs(secs);
        c
    }

    #[test]
    fn parses_literals_and_tokens() {
        let p = parse("a-{os}-{hash:x,y}-b").unwrap();
        assert_eq!(
            p,
            vec![
                Part::Lit("a-"),
                Part::Tok {
                    name: "os",
                    arg: None,
                    text: "{os}"
                },
                Part::Lit("-"),
                Part::Tok {
                    name: "hash",
                    arg: Some("x,y"),
                    text: "{hash:x,y}"
                },
                Part::Lit("-b"),
            ]
        );
        assert_eq!(parse("plain").unwrap(), vec![Part::Lit("plain")]);
    }

    #[test]
    fn syntax_errors() {
        for (t, msg) in [
            ("a{os", "unterminated"),
            ("a}b", "unmatched"),
            ("{{ checksum \"f\" }}", "{checksum:FILE}"),
            ("{a{b}}", "inside the token"),
        ] {
            let e = parse(t).unwrap_err().to_string();
            assert!(e.contains(msg), "{t}: {e}");
        }
        let e = render("x-{nope}", &ctx_at(0)).unwrap_err().to_string();
        assert!(e.contains("unknown token {nope}"), "{e}");
        let e = render("{os:x}", &ctx_at(0)).unwrap_err().to_string();
        assert!(e.contains("takes no argument"), "{e}");
        let e = render("{hash}", &ctx_at(0)).unwrap_err().to_string();
        assert!(e.contains("needs glob patterns"), "{e}");
        let e = render("{epoch:0}", &ctx_at(0)).unwrap_err().to_string();
        assert!(e.contains("period"), "{e}");
    }

    #[test]
    fn time_tokens() {
        let c = ctx_at(1_700_000_000);
        assert_eq!(render("{epoch}", &c).unwrap().key, "1700000000");
        assert_eq!(render("w{epoch:604800}", &c).unwrap().key, "w2810");
        assert_eq!(render("{date}", &c).unwrap().key, "2023-11-14");
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
    }

    #[test]
    fn validation_of_result() {
        let c = ctx_at(0);
        assert!(render("", &c).is_err());
        assert!(render(&"x".repeat(513), &c).is_err());
        assert!(render(&"x".repeat(512), &c).is_ok());
        std::env::set_var("ENVSNAP_TEST_COMMA", "a,b");
        let e = render("k-{env:ENVSNAP_TEST_COMMA}", &c).unwrap_err().to_string();
        assert!(e.contains("comma"), "{e}");
        let e = render("k-{env:ENVSNAP_TEST_UNSET_VAR}", &c).unwrap_err().to_string();
        assert!(e.contains("ENVSNAP_TEST_UNSET_VAR is not set"), "{e}");
        assert_eq!(resolve("plain-key", &c).unwrap(), "plain-key");
        assert!(resolve("bad,key", &c).is_err());
        assert!(is_template("a{os}") && !is_template("a-b"));
    }

    #[test]
    fn os_and_arch() {
        let r = render("{os}-{arch}", &ctx_at(0)).unwrap();
        assert_eq!(r.key, format!("{}-{}", system::os_name(), std::env::consts::ARCH));
        assert_eq!(r.explain.len(), 2);
    }
}
