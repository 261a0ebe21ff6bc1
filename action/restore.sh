#!/usr/bin/env bash
# The restore step of the envsnap actions (action.yml, restore/action.yml).
# Inputs arrive as INPUT_* variables (the action.yml maps `${{ inputs.x }}` into `env:`, so no
# input is ever spliced into shell code). Outputs go to $GITHUB_OUTPUT, a summary to
# $GITHUB_STEP_SUMMARY, and what the save step needs to $GITHUB_ENV.
#
# Exit status: 0 on a hit and on a miss (a miss is not a failure unless fail-on-cache-miss);
# a store or remote error is a warning and counts as a miss, as actions/cache treats them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

kind="${INPUT_KIND:-dir}"
path="${INPUT_PATH:-}"
key="${INPUT_KEY:-}"
link="${INPUT_LINK:-auto}"
truthy() { case "${1,,}" in true | yes | 1) return 0 ;; *) return 1 ;; esac; }
die() {
  echo "::error::envsnap restore: $*" >&2
  exit 2
}

[ -n "$key" ] || die "the 'key' input is required"
case "$kind" in dir | venv | apt) ;; *) die "kind '$kind' is not one of dir, venv, apt" ;; esac
# One path per envsnap cache (actions/cache takes several; use one step per path).
if [ "$(printf '%s' "$path" | grep -c .)" -gt 1 ]; then
  die "'path' holds several lines; envsnap caches one directory per step (use one step per path)"
fi
path="$(printf '%s' "$path" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')"
[ "$kind" = apt ] || [ -n "$path" ] || die "the 'path' input is required for kind '$kind'"
# `~` as actions/cache expands it.
case "$path" in "~") path="$HOME" ;; "~/"*) path="$HOME/${path#\~/}" ;; esac

# restore-keys: newline-separated prefixes, tried in order (blank lines ignored).
fallbacks=()
while IFS= read -r line; do
  line="$(printf '%s' "$line" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')"
  [ -n "$line" ] && fallbacks+=(--fallback "$line")
done <<<"${INPUT_RESTORE_KEYS:-}"

[ -n "${INPUT_REMOTE:-}" ] && export ENVSNAP_REMOTE="$INPUT_REMOTE"

tmp="${RUNNER_TEMP:-${TMPDIR:-/tmp}}"
json="$(mktemp "$tmp/envsnap-restore.XXXXXX")"
err="$(mktemp "$tmp/envsnap-restore-err.XXXXXX")"
trap 'rm -f "$json" "$err"' EXIT

# The report below writes the step outputs; envsnap's own $GITHUB_OUTPUT lines would repeat them.
cmd=(envsnap --json)
if [ "$kind" = apt ]; then
  # `apt install` restores on a hit and installs with apt-get (then saves) on a miss.
  [ -n "${INPUT_PACKAGES:-}" ] || die "kind 'apt' needs the 'packages' input"
  truthy "${INPUT_LOOKUP_ONLY:-false}" && die "lookup-only is not supported for kind 'apt'"
  read -r -a pkgs <<<"$(printf '%s' "$INPUT_PACKAGES" | tr '\n,' '  ')"
  cmd+=(apt install --key "$key" "${fallbacks[@]}" --update --no-install-recommends)
  [ -n "$path" ] && cmd+=(--root "$path")
  cmd+=("${pkgs[@]}")
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then
    cmd=(sudo --preserve-env=HOME,ENVSNAP_STORE,ENVSNAP_REMOTE,XDG_CACHE_HOME,AWS_ENDPOINT_URL,AWS_REGION,AWS_DEFAULT_REGION,AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY,AWS_SESSION_TOKEN,AWS_PROFILE
      "$(command -v envsnap)" "${cmd[@]:1}")
  fi
else
  cmd+=(restore "$path" --key "$key" "${fallbacks[@]}" --link "$link")
  truthy "${INPUT_LOOKUP_ONLY:-false}" && cmd+=(--dry-run)
fi

set +e
env -u GITHUB_OUTPUT "${cmd[@]}" >"$json" 2>"$err"
rc=$?
set -e
cat "$err" >&2
if [ "$kind" = apt ] && [ "$(id -u)" != 0 ] && [ -n "${ENVSNAP_STORE:-}" ]; then
  # Files a root apt install wrote into the runner user's store stay usable by later steps.
  sudo chown -R "$(id -u):$(id -g)" "$ENVSNAP_STORE" 2>/dev/null || true
fi

python3 "$here/report.py" restore --rc "$rc" --json "$json" --stderr "$err" \
  --key "$key" --kind "$kind" --path "$path" --lookup-only "${INPUT_LOOKUP_ONLY:-false}"

# What the save step repeats when it is given no inputs of its own (report.py added the
# rendered key as ENVSNAP_ACTION_KEY: the save uses the key the restore looked up).
if [ -n "${GITHUB_ENV:-}" ]; then
  {
    echo "ENVSNAP_ACTION_KIND=$kind"
    echo "ENVSNAP_ACTION_PATH=$path"
    echo "ENVSNAP_ACTION_LINK=$link"
    [ -n "${INPUT_REMOTE:-}" ] && echo "ENVSNAP_REMOTE=$INPUT_REMOTE"
  } >>"$GITHUB_ENV"
fi

if [ "$rc" != 0 ] && truthy "${INPUT_FAIL_ON_CACHE_MISS:-false}"; then
  echo "::error::envsnap: no snapshot for key '$key' or its restore-keys, and fail-on-cache-miss is set" >&2
  exit 1
fi
exit 0
