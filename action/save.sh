#!/usr/bin/env bash
# The save step of the envsnap actions (save/action.yml; the step that follows action.yml).
# Inputs arrive as INPUT_* variables; empty ones default to what the restore step of the same
# job recorded in $GITHUB_ENV (ENVSNAP_ACTION_*), so `- uses: …/save` needs no inputs after a
# single restore. Keys are updatable: saving the key that was just restored is how a cache is
# updated, and an unchanged tree writes nothing (envsnap's stat cache makes that a quick scan).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

kind="${INPUT_KIND:-${ENVSNAP_ACTION_KIND:-dir}}"
path="${INPUT_PATH:-${ENVSNAP_ACTION_PATH:-}}"
key="${INPUT_KEY:-${ENVSNAP_ACTION_KEY:-}}"
die() {
  echo "::error::envsnap save: $*" >&2
  exit 2
}
[ -n "$key" ] || die "the 'key' input is required (or run the envsnap restore action first)"
case "$kind" in dir | venv | apt) ;; *) die "kind '$kind' is not one of dir, venv, apt" ;; esac
path="$(printf '%s' "$path" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')"
case "$path" in "~") path="$HOME" ;; "~/"*) path="$HOME/${path#\~/}" ;; esac
[ -n "${INPUT_REMOTE:-}" ] && export ENVSNAP_REMOTE="$INPUT_REMOTE"

if [ "$kind" = apt ]; then
  # `envsnap apt install` in the restore step already saved whatever apt-get installed.
  echo "envsnap: kind apt: the restore step's 'apt install' saved the snapshot already; nothing to do"
  echo "saved=false" >>"${GITHUB_OUTPUT:-/dev/null}"
  exit 0
fi
[ -n "$path" ] || die "the 'path' input is required for kind '$kind'"
if [ ! -d "$path" ]; then
  # Nothing was built (an earlier step skipped it): not worth failing the job over.
  echo "::warning::envsnap save: $path is not a directory; nothing saved"
  echo "saved=false" >>"${GITHUB_OUTPUT:-/dev/null}"
  exit 0
fi

tmp="${RUNNER_TEMP:-${TMPDIR:-/tmp}}"
json="$(mktemp "$tmp/envsnap-save.XXXXXX")"
err="$(mktemp "$tmp/envsnap-save-err.XXXXXX")"
trap 'rm -f "$json" "$err"' EXIT

set +e
envsnap --json save "$kind" "$path" --key "$key" >"$json" 2>"$err"
rc=$?
set -e
cat "$err" >&2
python3 "$here/report.py" save --rc "$rc" --json "$json" --stderr "$err" \
  --key "$key" --kind "$kind" --path "$path"
if [ "$rc" != 0 ]; then
  # As actions/cache treats a failed save: a warning (and the summary says so), not a failed job.
  echo "::warning::envsnap save of $path under '$key' failed: $(grep -h 'error:' "$err" | tail -n1)"
fi
exit 0
