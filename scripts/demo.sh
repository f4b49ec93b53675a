#!/usr/bin/env bash
# The quick start: sets everything up, starts the embedded default
# (`fleetwatch up`), runs a demo program that bumps a counter every 200 ms,
# watches writes to that counter for 10 seconds printing each hit live, then
# stops everything cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

work=$(mktemp -d)
up_pid=""
target_pid=""
cleanup() {
  [ -n "$target_pid" ] && kill -TERM "$target_pid" 2>/dev/null && wait "$target_pid" 2>/dev/null || true
  [ -n "$up_pid" ] && kill -TERM "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Started directly (not through a shell function) so $! is the daemon itself.
node dist/cli/main.js up --data-dir "$work/data" >"$work/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 1 200); do
  grep -q '^fleetwatch up:' "$work/up.log" && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$work/up.log" >&2; exit 1; }
  sleep 0.1
done
grep '^fleetwatch up:' "$work/up.log" || { echo "fleetwatch up did not become ready:" >&2; cat "$work/up.log" >&2; exit 1; }

gcc -O2 -g -pthread -o "$work/demo-counter" test/fixtures/demo-counter.c
"$work/demo-counter" >"$work/demo.log" &
target_pid=$!
echo "demo-counter running as pid $target_pid; watching writes to demo_counter for 10 s"

node dist/cli/main.js watch --pid "$target_pid" --symbol demo_counter --duration 10s --follow
echo "done: the demo program is still running untouched (TracerPid: $(awk '/TracerPid/ {print $2}' /proc/$target_pid/status))"
