#!/usr/bin/env python3
"""Turns envsnap's --json report into the step's outputs and a job summary.

Used by restore.sh and save.sh (the GitHub Actions steps). It writes:
  $GITHUB_OUTPUT        cache-hit, cache-primary-key, cache-matched-key, hit (restore);
                        saved, unchanged, cache-primary-key (save)
  $GITHUB_STEP_SUMMARY  a small table: result, key, matched key, files, bytes, time, link,
                        the remote's traffic when the report has a `remote` object, and the
                        key's recent hit ratio when `envsnap stats --json` answers (its group:
                        the --key template, as stats groups events).
Only the standard library: it runs on the runner's python3.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import uuid


def human_bytes(n):
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def write_outputs(pairs):
    path = os.environ.get("GITHUB_OUTPUT")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        for name, value in pairs:
            value = "" if value is None else str(value)
            if "\n" in value:
                # The runner's multi-line syntax, with a delimiter the value cannot contain.
                d = f"ghadelimiter_{uuid.uuid4()}"
                f.write(f"{name}<<{d}\n{value}\n{d}\n")
            else:
                f.write(f"{name}={value}\n")


def write_summary(title, rows):
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    lines = [f"### {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    text = "\n".join(lines) + "\n\n"
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    # The log gets the same lines, for people reading it instead of the summary page.
    for k, v in rows:
        print(f"envsnap: {k}: {v}".replace("`", ""))


def code(s):
    return f"`{s}`" if s else "-"


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


def error_line(stderr_path):
    try:
        with open(stderr_path, encoding="utf-8", errors="replace") as f:
            lines = [l.strip() for l in f if l.strip()]
    except OSError:
        return "envsnap failed"
    errs = [l for l in lines if "error:" in l]
    return (errs or lines or ["envsnap failed"])[-1]


def remote_row(report):
    r = report.get("remote")
    if not isinstance(r, dict):
        return None
    parts = [f"{human_bytes(r.get('bytes_down'))} down", f"{human_bytes(r.get('bytes_up'))} up"]
    if r.get("requests") is not None:
        parts.append(f"{r['requests']} requests")
    if r.get("seconds") is not None:
        parts.append(f"{float(r['seconds']):.2f} s")
    return ("remote", ", ".join(parts))


HEX_RUN = re.compile(r"[0-9a-f]{16,}")


def stats_group(stats, template, key):
    """The `envsnap stats --json` group this restore belongs to: stats groups events by the
    --key template, else by the key with each run of 16+ hex digits shown as `*`."""
    name = template if "{" in template else HEX_RUN.sub("*", key)
    for g in stats.get("groups") or []:
        if isinstance(g, dict) and g.get("group") == name:
            return g
    return None


def stats_row(template, key):
    """The key's recent hit ratio, when this envsnap has `stats` and it answers quickly."""
    if not key or os.environ.get("ENVSNAP_ACTION_NO_STATS"):
        return None
    try:
        p = subprocess.run(
            ["envsnap", "--json", "-q", "stats", "--since", "30d"],
            capture_output=True, text=True, timeout=20,
        )
        g = stats_group(json.loads(p.stdout), template, key) if p.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, AttributeError):
        return None
    if not g or not isinstance(g.get("hit_ratio"), (int, float)):
        return None
    hits = (g.get("exact") or 0) + (g.get("fallback") or 0)
    return ("hit ratio (30 days)", f"{g['hit_ratio'] * 100:.0f} % ({hits} of {g.get('restores')} restores)")


def restore(a):
    rep = load(a.json)
    primary = rep.get("key") or a.key
    rc = a.rc
    lookup_only = a.lookup_only.lower() in ("true", "yes", "1")
    if a.kind == "apt" and rc == 0:
        # `apt install` restores on a hit and installs on a miss: both exit 0.
        outcome = rep.get("outcome")
        hit = {"restored": "exact", "fallback-installed": "fallback"}.get(outcome, "miss")
        matched = rep.get("key") if hit == "exact" else rep.get("fallback_key")
        inner = rep.get("restore") or rep.get("save") or {}
        files, nbytes, link = inner.get("files"), inner.get("bytes"), None
    elif rc in (0, 1):
        hit = rep.get("hit") or ("miss" if rc == 1 else "exact")
        matched = rep.get("matched_key")
        files, nbytes, link = rep.get("files"), rep.get("bytes"), rep.get("link")
    else:
        hit, matched, files, nbytes, link = "miss", None, None, None, None
    exact = hit == "exact"
    write_outputs([
        ("cache-hit", "true" if exact else "false"),
        ("cache-primary-key", primary),
        ("cache-matched-key", matched or ""),
        ("hit", hit),
    ])
    if os.environ.get("GITHUB_ENV"):
        with open(os.environ["GITHUB_ENV"], "a", encoding="utf-8") as f:
            f.write(f"ENVSNAP_ACTION_KEY={primary}\n")
    seconds = rep.get("seconds")
    result = {"exact": "exact hit", "fallback": "fallback hit", "miss": "miss"}[hit]
    if rc not in (0, 1):
        err = error_line(a.stderr)
        # An error is a warning, as actions/cache treats a failed restore: the job installs.
        print(f"::warning::envsnap restore failed, continuing as a miss: {err}")
        result = f"error, treated as a miss: {err}"
    elif lookup_only:
        result += " (lookup only: nothing restored)"
    elif a.kind == "apt" and hit != "exact":
        result += ": apt-get installed, snapshot saved"
    rows = [("result", result), ("key", code(primary)), ("matched key", code(matched))]
    if hit == "miss" and a.kind != "apt":
        files = nbytes = None
    if files is not None:
        rows.append(("files", f"{files:,}"))
    if nbytes is not None:
        rows.append(("bytes", human_bytes(nbytes)))
    if seconds is not None:
        rows.append(("time", f"{float(seconds):.2f} s"))
    if link:
        rows.append(("link", link))
    r = remote_row(rep)
    if r:
        rows.append(r)
    s = stats_row(a.key, primary)
    if s:
        rows.append(s)
    write_summary(f"envsnap restore {code(a.path or a.kind)}", rows)


def save(a):
    rep = load(a.json)
    primary = rep.get("key") or a.key
    if a.rc != 0:
        err = error_line(a.stderr)
        write_outputs([("saved", "false"), ("unchanged", "false"), ("cache-primary-key", primary)])
        write_summary(f"envsnap save {code(a.path or a.kind)}", [("result", f"failed: {err}"), ("key", code(primary))])
        return
    # `unchanged`: the key already pointed at exactly this tree, and the save wrote nothing.
    unchanged = rep.get("unchanged") is True
    write_outputs([("saved", "false" if unchanged else "true"), ("unchanged", str(unchanged).lower()),
                   ("cache-primary-key", primary)])
    if unchanged:
        result = "unchanged: nothing written"
    else:
        result = f"saved: {rep.get('new_objects', 0):,} new objects ({human_bytes(rep.get('new_bytes', 0))})"
    rows = [("result", result), ("key", code(primary))]
    if rep.get("files") is not None:
        rows.append(("files", f"{rep['files']:,} ({rep.get('hashed_files', 0):,} read)"))
    if rep.get("bytes") is not None:
        rows.append(("bytes", human_bytes(rep["bytes"])))
    if rep.get("seconds") is not None:
        rows.append(("time", f"{float(rep['seconds']):.2f} s"))
    r = remote_row(rep)
    if r:
        rows.append(r)
    write_summary(f"envsnap save {code(a.path or a.kind)}", rows)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["restore", "save"])
    p.add_argument("--rc", type=int, required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--stderr", required=True)
    p.add_argument("--key", default="")
    p.add_argument("--kind", default="dir")
    p.add_argument("--path", default="")
    p.add_argument("--lookup-only", default="false")
    a = p.parse_args()
    restore(a) if a.mode == "restore" else save(a)


if __name__ == "__main__":
    sys.exit(main())
