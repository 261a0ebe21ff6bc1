//! `envsnap delete` and `envsnap stats`, and the event recording every restore and save does.

use super::output::{bytes, plural};
use super::{Ctx, Outcome};
use clap::Args;
use envsnap::delete::{DeleteRequest, KeyDeleter};
use envsnap::events::{Event, EventLog};
use envsnap::remote::Remote;
use envsnap::stats::GroupStats;
use envsnap::{Result, Store};
use serde_json::json;
use std::time::Duration;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["keys", "prefixes"])))]
pub struct DeleteArgs {
    /// Keys (or key templates) to delete
    keys: Vec<String>,
    /// Delete every key starting with PREFIX (or the prefix a template renders to); repeatable
    #[arg(long = "prefix", value_name = "PREFIX")]
    prefixes: Vec<String>,
    /// Report what would be deleted, delete nothing
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
pub struct StatsArgs {
    /// Only keys starting with this prefix (or the prefix a template renders to)
    prefix: Option<String>,
    /// Only events within this long (e.g. 7d, 12h) [default: everything kept, up to 90 days]
    #[arg(long, value_parser = super::maint::parse_duration)]
    since: Option<Duration>,
    /// A Markdown table (for $GITHUB_STEP_SUMMARY and other job summaries)
    #[arg(long, conflicts_with = "json")]
    markdown: bool,
}

/// Record one event; a failure is a warning under `-v` only: the operation it describes is
/// over, and its outcome does not depend on the record.
pub fn record_event(ctx: &Ctx, log: &dyn EventLog, ev: &Event) {
    if let Err(e) = log.record(ev) {
        ctx.ui.detail(format!(
            "envsnap: warning: could not record this {} in the store's events ({e}); `envsnap stats` will not count it",
            ev.op.as_str()
        ));
    }
}

/// Where a command's events go: the remote when one is configured (so `stats` spans every
/// runner sharing it), else the local index.
pub fn event_log<'a>(store: &'a Store, remote: Option<&'a Remote>) -> &'a dyn EventLog {
    match remote {
        Some(r) => r,
        None => store,
    }
}

/// [`record_event`] for commands that hold no remote handle: opens the configured one (no
/// request until the write).
pub fn record_event_with_remote(ctx: &Ctx, store: &Store, ev: &Event) {
    match ctx.open_remote(store) {
        Ok(remote) => record_event(ctx, event_log(store, remote.as_ref()), ev),
        Err(e) => ctx.ui.detail(format!(
            "envsnap: warning: could not record this {} on the remote ({e})",
            ev.op.as_str()
        )),
    }
}

/// Templates accepted wherever keys are: rendered like `save`/`restore` render them.
fn render_all(ctx: &Ctx, keys: &[String]) -> Result<Vec<String>> {
    keys.iter().map(|k| ctx.key_arg(k)).collect()
}

pub fn delete(ctx: &Ctx, a: DeleteArgs) -> Result<Outcome> {
    let req = DeleteRequest {
        keys: render_all(ctx, &a.keys)?,
        prefixes: render_all(ctx, &a.prefixes)?,
        dry_run: a.dry_run,
    };
    let store = ctx.open_store()?;
    // Keys live on the remote when there is one.
    let remote = ctx.open_remote(&store)?;
    let deleter: &dyn KeyDeleter = match &remote {
        Some(r) => r,
        None => &store,
    };
    let r = deleter.delete_keys(&req)?;
    let verb = if a.dry_run { "would delete" } else { "deleted" };
    for d in &r.deleted {
        ctx.ui.info(format!(
            "{verb} {} ({}, {}, {})",
            d.key,
            d.kind,
            plural(d.files, "file"),
            bytes(d.bytes)
        ));
    }
    for k in &r.missing_keys {
        ctx.ui.info(format!(
            "no snapshot with key {k}: nothing to delete (see `envsnap list`)"
        ));
    }
    for p in &r.empty_prefixes {
        ctx.ui.info(format!(
            "no key starts with {p}: nothing to delete (see `envsnap list`)"
        ));
    }
    let n = r.deleted.len();
    let freed = match (r.reclaimable_objects, r.reclaimable_bytes) {
        (Some(o), Some(b)) => format!(
            "{o} object{} ({}) no other snapshot uses {} freed by the next `envsnap gc`",
            if o == 1 { "" } else { "s" },
            bytes(b),
            if a.dry_run { "would be" } else { "are" },
        ),
        _ if remote.is_some() => {
            "what no other snapshot uses goes with `envsnap gc --remote` (marked, then deleted after its grace period)"
                .into()
        }
        _ => "what no other snapshot uses goes at the next `envsnap gc`".into(),
    };
    ctx.ui.info(format!(
        "{}{verb} {n} snapshot{}; {freed}",
        if a.dry_run { "dry run: " } else { "" },
        if n == 1 { "" } else { "s" },
    ));
    let mut v = serde_json::to_value(&r).unwrap_or_default();
    v["exit"] = json!(if r.missed() { 1 } else { 0 });
    if let Some(rm) = &remote {
        v["remote"] = super::remote::stats_json(rm);
    }
    ctx.ui.emit_json(&v);
    Ok(if r.missed() { Outcome::Miss } else { Outcome::Done })
}

pub fn stats(ctx: &Ctx, a: StatsArgs) -> Result<Outcome> {
    let prefix = match &a.prefix {
        Some(p) => Some(render_all(ctx, std::slice::from_ref(p))?.remove(0)),
        None => None,
    };
    // Read-only: no store yet means no events, not a new store.
    let since_ns = a
        .since
        .map(|d| envsnap::repo::now_ns() - d.as_nanos() as i64)
        .unwrap_or(i64::MIN);
    let events = if ctx.has_remote() {
        // The remote's events: every runner sharing it.
        let store = ctx.open_store()?;
        let remote = super::remote::need_remote(ctx, &store, "stats")?;
        remote.events_since(since_ns)?
    } else {
        match ctx.open_store_read()? {
            Some(store) => events_of(&store, since_ns)?,
            None => Vec::new(),
        }
    };
    let groups = envsnap::stats::compute(&events, prefix.as_deref());
    let since = a.since.map(|d| humantime::format_duration(d).to_string());
    if ctx.ui.json {
        ctx.ui.emit_json(&json!({
            "prefix": prefix, "since": since, "events": events.len(), "groups": groups,
        }));
    } else if a.markdown {
        super::output::stdout(format_args!("{}", markdown(&groups, since.as_deref())));
    } else {
        super::output::stdout(format_args!("{}", table(&groups)));
        if groups.is_empty() {
            ctx.ui.info("no restores or saves recorded yet for these keys");
        }
    }
    Ok(Outcome::Done)
}

fn events_of(store: &Store, since_ns: i64) -> Result<Vec<Event>> {
    let log: &dyn EventLog = store;
    log.events_since(since_ns)
}

/// A 10-cell bar: exact hits, fallback hits, the rest (misses and errors).
fn bar(s: &GroupStats) -> String {
    const W: u64 = 10;
    if s.restores == 0 {
        return " ".repeat(W as usize);
    }
    let exact = (s.exact * W + s.restores / 2) / s.restores;
    let hits = ((s.exact + s.fallback) * W + s.restores / 2) / s.restores;
    let mut out = "█".repeat(exact as usize);
    out.push_str(&"▒".repeat((hits - exact) as usize));
    out.push_str(&"·".repeat((W - hits) as usize));
    out
}

fn secs(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(x) if x.abs() < 60.0 => format!("{x:.2}s"),
        Some(x) if x.abs() < 3600.0 => format!("{:.1}m", x / 60.0),
        Some(x) => format!("{:.1}h", x / 3600.0),
    }
}

fn pct(x: Option<f64>) -> String {
    x.map(|r| format!("{:.0}%", r * 100.0)).unwrap_or_else(|| "-".into())
}

fn table(groups: &[GroupStats]) -> String {
    let w = groups
        .iter()
        .map(|g| g.group.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(5, 60);
    let mut out = format!(
        "{:<w$} {:>5} {:>5} {:>5} {:>5} {:>4} {:<10} {:>8} {:>9} {:>8} {:>9} {:>9}\n",
        "GROUP", "RUNS", "EXACT", "FALLB", "MISS", "HIT", "", "MEDIAN", "RESTORED", "INSTALL", "SAVED/HIT", "SAVED"
    );
    for g in groups {
        out.push_str(&format!(
            "{:<w$} {:>5} {:>5} {:>5} {:>5} {:>4} {} {:>8} {:>9} {:>8} {:>9} {:>9}\n",
            g.group,
            g.restores,
            g.exact,
            g.fallback,
            g.misses + g.errors,
            pct(g.hit_ratio),
            bar(g),
            secs(g.median_restore_seconds),
            bytes(g.bytes_restored),
            secs(g.install_seconds),
            secs(g.saved_per_hit_seconds),
            secs(g.saved_seconds),
        ));
    }
    out
}

fn markdown(groups: &[GroupStats], since: Option<&str>) -> String {
    let mut out = format!(
        "### envsnap cache{}\n\n",
        since.map(|s| format!(" (last {s})")).unwrap_or_default()
    );
    if groups.is_empty() {
        out.push_str("No restores or saves recorded yet.\n");
        return out;
    }
    out.push_str(
        "| key group | restores | exact | fallback | misses | hit ratio | median restore | restored | install | saved per hit | saved |\n\
         |---|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|\n",
    );
    for g in groups {
        // A key may hold `|` or backticks: escape the one, and fall back to plain text for the other.
        let name = g.group.replace('|', "\\|");
        let name = if name.contains('`') { name } else { format!("`{name}`") };
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {} | `{}` {} | {} | {} | {} | {} | {} |\n",
            g.restores,
            g.exact,
            g.fallback,
            g.misses + g.errors,
            bar(g),
            pct(g.hit_ratio),
            secs(g.median_restore_seconds),
            bytes(g.bytes_restored),
            secs(g.install_seconds),
            secs(g.saved_per_hit_seconds),
            secs(g.saved_seconds),
        ));
    }
    out
}
