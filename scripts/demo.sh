#!/usr/bin/env bash
# The README's demo: build envsnap, then save and restore a directory on the default store
# ($ENVSNAP_STORE, else $XDG_CACHE_HOME/envsnap, else ~/.cache/envsnap).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
envsnap=$PWD/target/release/envsnap
work=$(mktemp -d "${TMPDIR:-/tmp}/envsnap-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== a build-output directory to cache"
mkdir -p "$work/project/build/lib" "$work/project/build/bin"
for i in $(seq 1 300); do printf 'artifact %s\n' "$i" > "$work/project/build/lib/mod$i.txt"; done
printf '#!/bin/sh\necho "hello from a restored tool"\n' > "$work/project/build/bin/tool"
chmod +x "$work/project/build/bin/tool"
ln -s ../lib/mod1.txt "$work/project/build/bin/first"

echo "== save it (twice: the second save reads nothing)"
"$envsnap" save dir "$work/project/build" --key "demo-build-$$"
"$envsnap" save dir "$work/project/build" --key "demo-build-$$"

echo "== lose it, restore it with a fallback prefix, use it"
rm -rf "$work/project/build"
"$envsnap" restore --key "demo-build-does-not-exist" --fallback "demo-build-$$"
"$work/project/build/bin/tool"

echo "== restore a copy elsewhere as JSON, then check the store"
"$envsnap" --json restore "$work/copy" --key "demo-build-$$"
"$envsnap" list demo-build-
"$envsnap" verify
"$envsnap" gc --max-age 0s --keep-last 0 --dry-run
