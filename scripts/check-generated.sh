#!/usr/bin/env bash
# Fails when proto/gen differs from what buf generates from the .proto files,
# or when the protos do not pass buf lint.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
npx --no-install buf lint
npx --no-install buf generate -o "$tmp"
if ! diff -r "$tmp/proto/gen" proto/gen >/dev/null; then
  echo "proto/gen is stale: run 'npm run generate' and commit the result" >&2
  diff -r "$tmp/proto/gen" proto/gen | head -40 >&2
  exit 1
fi
echo "generated code is current"
