#!/usr/bin/env bash
# The README's demo: build envsnap, then save and restore a directory and a Python virtualenv
# on the default store ($ENVSNAP_STORE, else $XDG_CACHE_HOME/envsnap, else ~/.cache/envsnap).
# Its snapshots are all named demo-<pid>-…; on exit it deletes them and frees their files.
# ENVSNAP_BIN=PATH runs an installed envsnap instead (tests/dist.rs: the one from the wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${ENVSNAP_BIN:-}" ]; then
  envsnap=$ENVSNAP_BIN
else
  cargo build --release --quiet
  envsnap=$PWD/target/release/envsnap
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/envsnap-demo.XXXXXX")
demo="demo-$$"
cleanup() {
  # Only this run's keys; then gc frees the objects no snapshot uses any more. The huge
  # --max-age keeps gc from removing any snapshot of yours by age.
  "$envsnap" -q delete --prefix "$demo-" >/dev/null 2>&1 || true
  "$envsnap" -q gc --max-age 36500d >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== a build-output directory to cache"
mkdir -p "$work/project/build/lib" "$work/project/build/bin"
for i in $(seq 1 300); do printf 'artifact %s\n' "$i" > "$work/project/build/lib/mod$i.txt"; done
printf '#!/bin/sh\necho "hello from a restored tool"\n' > "$work/project/build/bin/tool"
chmod +x "$work/project/build/bin/tool"
ln -s ../lib/mod1.txt "$work/project/build/bin/first"
# A file changed within a second of a save could change again without its size or timestamps
# moving (filesystems with coarse timestamps), so a save never trusts its stat for next time
# and the next save reads it again. These files were just written: let them age a second.
sleep 1.1

echo "== save it (twice: the second save reads nothing, \"0 hashed\")"
"$envsnap" save dir "$work/project/build" --key "$demo-build"
"$envsnap" save dir "$work/project/build" --key "$demo-build"

echo "== lose it, restore it with a fallback prefix, use it"
rm -rf "$work/project/build"
"$envsnap" restore --key "$demo-build-does-not-exist" --fallback "$demo-build"
"$work/project/build/bin/tool"

echo "== a Python virtualenv: save it, delete it, restore it at another path, run it"
python3 -m venv "$work/app/.venv"
# A console script with a shebang that holds the venv's absolute path (pip's own works offline).
"$work/app/.venv/bin/pip" install -q --disable-pip-version-check cowsay 2>/dev/null || true
"$envsnap" save venv "$work/app/.venv" --key "$demo-venv-{os}-{python-minor}"
rm -rf "$work/app"
"$envsnap" restore "$work/elsewhere/my venv" --key "$demo-venv-{os}-{python-minor}"
"$work/elsewhere/my venv/bin/pip" --version
if [ -x "$work/elsewhere/my venv/bin/cowsay" ]; then "$work/elsewhere/my venv/bin/cowsay" -t "restored"; fi
(. "$work/elsewhere/my venv/bin/activate" && echo "activated: $VIRTUAL_ENV -> $(command -v python)")

echo "== restore a copy elsewhere as JSON, then check the store"
"$envsnap" --json restore "$work/copy" --key "$demo-build"
"$envsnap" list "$demo-"
"$envsnap" verify
"$envsnap" gc --max-age 0s --keep-last 0 --dry-run
echo "== done: deleting this demo's snapshots ($demo-*)"
