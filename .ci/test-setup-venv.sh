#!/usr/bin/env bash
# Fixtures for tests/venv.rs and benches/venv.rs. Idempotent; everything is cached
# under $TARGET/fixtures so warm reruns never touch the network.
#   usage: .ci/test-setup-venv.sh [TARGET_DIR]   (default: ./target)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:-$here/target}"
fx="$target/fixtures"
mkdir -p "$fx"
exec 9>"$fx/.lock"
flock 9

# The tests need Debian's python3.11 with venv support beside pyenv's 3.11.x.
if ! /usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null; then
  apt-get update -qq >&2 && apt-get install -y python3.11-venv >&2
fi

py311="${ENVSNAP_TEST_PY311:-$HOME/.pyenv/versions/3.11.7/bin/python3.11}"
[ -x "$py311" ] || { echo "missing $py311 (pyenv 3.11.x)" >&2; exit 1; }

# Tools venv: virtualenv + uv, from PyPI (never whatever is installed by hand).
if [ ! -e "$fx/tools/.done" ]; then
  rm -rf "$fx/tools"
  "$py311" -m venv "$fx/tools"
  "$fx/tools/bin/pip" install -q --disable-pip-version-check virtualenv==20.27.1 uv==0.5.4 >&2
  touch "$fx/tools/.done"
fi

# Wheelhouse for the test venvs (cp311).
wh="$fx/wheelhouse"
if [ ! -e "$wh/.done" ]; then
  mkdir -p "$wh"
  "$fx/tools/bin/pip" download -q --disable-pip-version-check -d "$wh" \
    black==24.10.0 pyyaml==6.0.2 markupsafe==3.0.2 numpy==1.26.4 \
    pip==24.3.1 setuptools==75.6.0 wheel==0.45.1 six==1.16.0 \
    click==8.5.1 mypy_extensions==1.2.0 packaging==26.3 pathspec==1.1.1 platformdirs==4.14.7 >&2
  touch "$wh/.done"
fi

if [ "${ENVSNAP_BENCH:-0}" = 1 ] && [ ! -e "$fx/bench-wheelhouse/.done" ]; then
  mkdir -p "$fx/bench-wheelhouse"
  "$fx/tools/bin/pip" download -q --disable-pip-version-check -d "$fx/bench-wheelhouse" \
    -r "$here/benches/venv-requirements.txt" pip==24.3.1 attrs==24.2.0 >&2
  touch "$fx/bench-wheelhouse/.done"
fi
echo "$fx"
