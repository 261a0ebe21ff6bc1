#!/usr/bin/env bash
# A real S3-compatible server for tests/remote.rs and benches/remote.rs: moto's server from PyPI
# (it enforces S3's semantics faithfully), in its own venv under $TARGET/fixtures/moto.
# Idempotent and cached: warm reruns never touch the network. Prints the server binary's path.
#   usage: .ci/test-setup-moto.sh [TARGET_DIR]   (default: ./target)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:-$here/target}"
fx="$target/fixtures"
mkdir -p "$fx"
exec 9>"$fx/.moto-lock"
flock 9

# A fixture venv that was moved keeps shebangs naming its old place (the very failure envsnap
# fixes for users): rebuild it, rather than fail later with "No such file or directory".
runs() { local i; i=$(head -1 "$1" 2>/dev/null | sed 's/^#!//; s/ .*//'); [ -x "$i" ]; }
if [ ! -e "$fx/moto/.done" ] || ! runs "$fx/moto/bin/moto_server"; then
  rm -rf "$fx/moto"
  py="$(command -v python3)"
  "$py" -m venv "$fx/moto" >&2
  "$fx/moto/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.1.18' >&2
  touch "$fx/moto/.done"
fi
echo "$fx/moto/bin/moto_server"
