//! `envsnap key TEMPLATE`: print a rendered cache key (and explain it), plus
//! the helpers `save` / `restore` use to render `--key` / `--fallback`.
use std::path::{Path, PathBuf};

use envsnap::key::{self, KeyContext, Rendered};
use envsnap::{Error, Result};

use super::output::{github_output, outln};
use super::{Ctx, Outcome};

#[derive(clap::Args, Debug, Clone)]
pub struct KeyArgs {
    /// Key template, e.g. 'venv-{os}-{python}-{hash:requirements*.txt}' (see docs/keys.md)
    pub template: String,
    /// Directory that {hash}, {hashFiles} and {checksum} paths are relative to [default: cwd]
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Interpreter for {python}, {python-minor}, {python-impl} [default: python3 on PATH]
    #[arg(long, value_name = "PY")]
    pub python: Option<PathBuf>,
    /// System root whose dpkg database {apt-base} reads
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub dpkg_root: PathBuf,
    /// Print every token with its inputs on stderr
    #[arg(long)]
    pub explain: bool,
}

/// Builds the context for rendering: `root` defaults to the current directory.
pub fn context(
    root: Option<&Path>,
    python: Option<&Path>,
    venv: Option<&Path>,
    dpkg_root: Option<&Path>,
) -> KeyContext {
    let mut ctx = KeyContext::new(root.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")));
    ctx.python = python.map(Path::to_path_buf);
    ctx.venv = venv.map(Path::to_path_buf);
    if let Some(d) = dpkg_root {
        ctx.dpkg_root = d.to_path_buf();
    }
    ctx
}

/// For `save` / `restore`: renders `--key` and each `--fallback` (templates or
/// plain keys) and validates them. A fallback is one template: commas inside
/// `{…}` belong to the token; a comma in the rendered prefix is an error.
pub fn resolve_keys(key_tpl: &str, fallbacks: &[String], ctx: &KeyContext) -> Result<(String, Vec<String>)> {
    let key = key::resolve(key_tpl, ctx)?;
    let fallbacks = fallbacks.iter().map(|f| key::resolve(f, ctx)).collect::<Result<_>>()?;
    Ok((key, fallbacks))
}

/// The `--explain` text: one line per token, then its inputs indented.
pub fn explain_lines(r: &Rendered) -> Vec<String> {
    let mut lines = vec![format!("key: {}", r.key)];
    for item in &r.explain {
        lines.push(format!("{} = {}", item.token, item.value));
        for i in &item.inputs {
            lines.push(format!("    {}: {}", i.name, i.value));
        }
    }
    lines
}

/// Runs `envsnap key`: the key on stdout (or `{"key":…,"tokens":[…]}` with
/// `--json`), `key=…` appended to `$GITHUB_OUTPUT`, `--explain` on stderr.
pub fn run(ctx: &Ctx, args: KeyArgs) -> Result<Outcome> {
    let kctx = context(
        args.root.as_deref(),
        args.python.as_deref(),
        None,
        Some(&args.dpkg_root),
    );
    let r = key::render(&args.template, &kctx)?;
    if args.explain {
        for l in explain_lines(&r) {
            eprintln!("{l}");
        }
    }
    github_output(&[("key", &r.key)])?;
    if ctx.ui.json {
        ctx.ui
            .emit_json(&serde_json::to_value(&r).map_err(|e| Error::Other(format!("json: {e}")))?);
    } else {
        // The key is the command's product: printed even with -q.
        outln!("{}", r.key);
    }
    Ok(Outcome::Done)
}

/// The key (and fallbacks) `save` / `restore` use: templates rendered relative
/// to the current directory, plain keys validated. `python` is `--python`, `venv` the
/// command's venv (both for `{python}`), `dpkg_root` the apt root (for `{apt-base}`).
/// With `-v` each rendered template is explained on stderr.
pub fn keys_for(
    ctx: &Ctx,
    key_tpl: &str,
    fallbacks: &[String],
    python: Option<&Path>,
    venv: Option<&Path>,
    dpkg_root: Option<&Path>,
) -> Result<(String, Vec<String>)> {
    let kctx = context(None, python, venv, dpkg_root);
    let (k, f) = resolve_keys(key_tpl, fallbacks, &kctx)?;
    if key::is_template(key_tpl) {
        ctx.ui.detail(format!("key {key_tpl} -> {k}"));
    }
    Ok((k, f))
}
