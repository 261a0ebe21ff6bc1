#!/usr/bin/env bash
# A second, lighter S3-compatible server for tests/remote.rs: s3s-fs from the crates registry
# (a Rust server over a directory that checks SigV4 signatures), built once with the test's
# own toolchain into $TARGET/fixtures/s3s-fs. Idempotent and cached: warm reruns build
# nothing. Prints the server binary's path.
#   usage: .ci/test-setup-s3s.sh [TARGET_DIR]   (default: ./target)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:-$here/target}"
fx="$target/fixtures"
mkdir -p "$fx"
exec 9>"$fx/.s3s-lock"
flock 9

# 0.14.1: the newest release that builds with the toolchain this repository pins in CI.
version=0.14.1
root="$fx/s3s-fs"
if [ "$(cat "$root/.done" 2>/dev/null)" != "$version" ] || [ ! -x "$root/bin/s3s-fs" ]; then
  rm -rf "$root"
  cargo install --quiet --locked --features binary --root "$root" "s3s-fs@$version" >&2
  echo "$version" >"$root/.done"
fi
echo "$root/bin/s3s-fs"
