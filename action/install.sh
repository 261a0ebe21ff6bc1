#!/usr/bin/env bash
# Step 1 of every envsnap action: put the pinned envsnap on PATH, from its wheel.
#   INPUT_VERSION  the envsnap version from PyPI (pinned by the action's `version` input)
#   INPUT_WHEEL    a local wheel file instead (tests, or a wheel built in the same workflow)
# The binary is the wheel's only content, so `pip install --target` (no venv, no dependencies)
# is enough; without pip, a throwaway venv provides one. Idempotent: a second envsnap step in
# the same job finds the right version on PATH and does nothing.
set -euo pipefail

version="${INPUT_VERSION:-}"
wheel="${INPUT_WHEEL:-}"
if [ -z "$version" ] && [ -z "$wheel" ]; then
  echo "::error::envsnap action: set the 'version' input (or 'wheel', a local wheel file)" >&2
  exit 2
fi
if [ -n "$wheel" ] && [ ! -f "$wheel" ]; then
  echo "::error::envsnap action: wheel '$wheel' is not a file" >&2
  exit 2
fi

# What is on PATH already, if it is what was asked for.
have="$(envsnap --version 2>/dev/null | awk '{print $2}' || true)"
if [ -z "$wheel" ] && [ "$have" = "$version" ]; then
  echo "envsnap $have already on PATH: $(command -v envsnap)"
  exit 0
fi

tmp="${RUNNER_TEMP:-${TMPDIR:-/tmp}}"
dir="$tmp/envsnap-${version:-local}"
spec="envsnap==$version"
[ -n "$wheel" ] && spec="$wheel"

py="$(command -v python3 || command -v python || true)"
if [ -z "$py" ]; then
  echo "::error::envsnap action: no python3 on PATH to install the envsnap wheel with (add actions/setup-python first)" >&2
  exit 2
fi

start=$(date +%s.%N)
rm -rf "$dir"
if "$py" -m pip --version >/dev/null 2>&1; then
  # --target installs no metadata into the interpreter (PEP 668 does not apply) and puts the
  # binary in $dir/bin.
  "$py" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
    --target "$dir" "$spec"
else
  "$py" -m venv "$dir/venv"
  "$dir/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-compile "$spec"
  mkdir -p "$dir/bin"
  ln -sf "$dir/venv/bin/envsnap" "$dir/bin/envsnap"
fi
bin="$dir/bin"
if [ ! -x "$bin/envsnap" ]; then
  echo "::error::envsnap action: installing $spec put no envsnap binary in $bin" >&2
  exit 2
fi
got="$("$bin/envsnap" --version | awk '{print $2}')"
if [ -n "$version" ] && [ -z "$wheel" ] && [ "$got" != "$version" ]; then
  echo "::error::envsnap action: installed envsnap $got, expected $version" >&2
  exit 2
fi
end=$(date +%s.%N)
echo "$bin" >> "${GITHUB_PATH:-/dev/null}"
export PATH="$bin:$PATH"
echo "envsnap $got installed in $(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b-a}') s: $bin/envsnap"
