#!/usr/bin/env bash
# Fixtures for tests/venv.rs and benches/venv.rs. Idempotent; everything is cached
# under $TARGET/fixtures so warm reruns never touch the network.
#   usage: ENVSNAP_TEST_PYTHON=/path/to/python3.X .ci/test-setup-venv.sh [TARGET_DIR]
#   (default: ./target; the interpreter defaults to python3 on PATH). tests/venv.rs runs this
#   with the interpreter it discovered (tests/common/pythons.rs).
# Prints the fixtures directory; the wheelhouse is $fx/wheelhouse-cpXY for that interpreter.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:-$here/target}"
fx="$target/fixtures"
mkdir -p "$fx"
exec 9>"$fx/.lock"
flock 9

py="${ENVSNAP_TEST_PYTHON:-$(command -v python3 || true)}"
[ -n "$py" ] && "$py" -c 'import ensurepip, venv' 2>/dev/null || {
  echo "no Python 3 with venv and ensurepip (${py:-python3 not on PATH}): install python3-venv" >&2
  exit 1
}
tag=$("$py" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
minor=$("$py" -c 'import sys; print(sys.version_info[1])')

# Tools venv: virtualenv + uv, from PyPI (never whatever is installed by hand). Any Python can
# host it; made again when the interpreter it was made with is gone.
if [ ! -e "$fx/tools/.done" ] || ! "$fx/tools/bin/python" -c '' 2>/dev/null; then
  rm -rf "$fx/tools"
  "$py" -m venv "$fx/tools"
  "$fx/tools/bin/pip" install -q --disable-pip-version-check virtualenv==20.27.1 uv==0.5.4 >&2
  touch "$fx/tools/.done"
fi

# Wheelhouse for the test venvs, for this interpreter's tag (binary wheels only: the tests
# install offline and build nothing). numpy 1.26 has wheels up to cp312, 2.x from cp310.
wh="$fx/wheelhouse-$tag"
# A wheelhouse from before it was per-tag is reused when it was built for this tag.
if [ ! -e "$wh/.done" ] && [ -e "$fx/wheelhouse/.done" ] && compgen -G "$fx/wheelhouse/numpy-*-$tag-*.whl" >/dev/null; then
  cp -a "$fx/wheelhouse" "$wh"
fi
if [ ! -e "$wh/.done" ]; then
  numpy="numpy==1.26.4"
  [ "$minor" -ge 13 ] && numpy="numpy>=2.1,<3"
  rm -rf "$wh" && mkdir -p "$wh"
  # pip downloads for the interpreter it runs on: the tools venv's may be another version.
  "$fx/tools/bin/pip" download -q --disable-pip-version-check --only-binary=:all: \
    --python-version "$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
    --implementation cp --abi "$tag" --abi abi3 --abi none \
    -d "$wh" \
    black==24.10.0 pyyaml==6.0.2 markupsafe==3.0.2 "$numpy" \
    pip==24.3.1 setuptools==75.6.0 wheel==0.45.1 six==1.16.0 \
    click==8.5.1 mypy_extensions==1.2.0 packaging==26.3 pathspec==1.1.1 platformdirs==4.14.7 >&2
  touch "$wh/.done"
fi

# benches/venv.rs and benches/remote.rs: the benchmark venv's wheels, for this interpreter's tag
# (the benches pass the interpreter they discovered as ENVSNAP_TEST_PYTHON).
bwh="$fx/bench-wheelhouse-$tag"
if [ "${ENVSNAP_BENCH:-0}" = 1 ] && [ ! -e "$bwh/.done" ] && [ -e "$fx/bench-wheelhouse/.done" ] &&
  compgen -G "$fx/bench-wheelhouse/numpy-*-$tag-*.whl" >/dev/null; then
  cp -a "$fx/bench-wheelhouse" "$bwh"
fi
if [ "${ENVSNAP_BENCH:-0}" = 1 ] && [ ! -e "$bwh/.done" ]; then
  rm -rf "$bwh" && mkdir -p "$bwh"
  "$fx/tools/bin/pip" download -q --disable-pip-version-check --only-binary=:all: \
    --python-version "$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
    --implementation cp --abi "$tag" --abi abi3 --abi none \
    -d "$bwh" -r "$here/benches/venv-requirements.txt" pip==24.3.1 attrs==24.2.0 >&2
  touch "$bwh/.done"
fi
echo "$fx"
