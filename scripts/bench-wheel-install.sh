#!/usr/bin/env bash
# How long a new user waits for envsnap: `pip install` of the wheel into a brand-new venv (the
# venv's creation not counted), `pip install --target` (what the GitHub Action does) and
# `uv pip install`, each RUNS times from a local wheel file; prints the median of each.
#   usage: scripts/bench-wheel-install.sh WHEEL [RUNS]   (python3 and, optionally, uv on PATH)
set -euo pipefail
wheel="$(realpath "$1")"
runs="${2:-7}"
work="$(mktemp -d "${TMPDIR:-/tmp}/envsnap-wheel-bench.XXXXXX")"
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
bench() {
  local name="$1"
  shift
  for i in $(seq "$runs"); do
    rm -rf "$work/v" "$work/t"
    python3 -m venv "$work/v"
    local a b
    a=$(now)
    "$@" >/dev/null 2>&1
    b=$(now)
    "$work/v/bin/envsnap" --version >/dev/null 2>&1 || "$work/t/bin/envsnap" --version >/dev/null
    echo "$a $b" | awk '{printf "%.3f\n", $2-$1}'
  done | median | awk -v n="$name" '{printf "%-40s median %.2f s\n", n, $1}'
}
bench "pip install (fresh venv)" "$work/v/bin/pip" install --no-index --disable-pip-version-check "$wheel"
bench "pip install --target (the action)" python3 -m pip install --no-index --no-deps --disable-pip-version-check --target "$work/t" "$wheel"
if command -v uv >/dev/null; then
  bench "uv pip install (fresh venv)" uv pip install --offline --python "$work/v/bin/python" "$wheel"
fi
