#!/usr/bin/env bash
# The quick start: sets everything up, starts the embedded default
# (`fleetwatch up`), runs a demo program that bumps a counter every 200 ms,
# watches its next 50 writes to that counter (at most 15 s) printing each hit live, then
# stops everything cleanly. On a host that delivers no debug-register traps
# (the helper's self-test says so) the same demo runs inside an emulated x86
# machine that does (scripts/trap-vm.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# Inside the emulated machine the checkout is already set up and built.
if [ -z "${FLEETWATCH_IN_TRAP_VM:-}" ]; then
  scripts/setup.sh
  selftest=$(agent/native/build/fleetwatch-helper --self-test 2>&1) && delivered=1 || delivered=0
  if [ "$delivered" = 0 ]; then
    echo "demo: this host delivers no debug-register traps ($(echo "$selftest" | paste -sd ';' | sed 's/;/; /g')): running the demo inside an emulated x86 machine (scripts/trap-vm.sh)"
    exec scripts/trap-vm.sh scripts/demo.sh
  fi
fi

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
# Up to 20 s natively; the emulated machine runs Node.js many times slower.
tries=200
[ -z "${FLEETWATCH_IN_TRAP_VM:-}" ] || tries=1200
for _ in $(seq 1 "$tries"); do
  grep -q '^fleetwatch up:' "$work/up.log" && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$work/up.log" >&2; exit 1; }
  sleep 0.1
done
grep '^fleetwatch up:' "$work/up.log" || { echo "fleetwatch up did not become ready:" >&2; cat "$work/up.log" >&2; exit 1; }

gcc -O2 -g -pthread -o "$work/demo-counter" test/fixtures/demo-counter.c
"$work/demo-counter" >"$work/demo.log" &
target_pid=$!
echo "demo-counter running as pid $target_pid; watching its first 50 writes to demo_counter (at most 15 s)"

node dist/cli/main.js watch --pid "$target_pid" --symbol demo_counter --max-hits 50 --duration 15s --follow | tee "$work/watch.log"
# A demo that saw no write of a counter written five times a second is broken, not "nobody wrote it".
if grep -q ' 0 hits printed' "$work/watch.log"; then
  echo "demo: no hit arrived although demo-counter wrote demo_counter all along: see fleetwatch agents ls" >&2
  exit 1
fi
# The agent's own counters, as Prometheus scrapes them, say the same as the job's summary above.
agent_metrics=$(sed -n 's/^fleetwatch up: metrics .*, \(http[^ ]*\) (agent)$/\1/p' "$work/up.log")
if [ -n "$agent_metrics" ]; then
  node -e '
    fetch(process.argv[1]).then((r) => r.text()).then((text) => {
      const hits = (outcome) => (text.match(new RegExp(`^fleetwatch_agent_hits_total\\{outcome="${outcome}"\\} (\\d+)$`, "m")) ?? [])[1] ?? "?";
      console.log(`the agent\x27s metrics (${process.argv[1]}): trapped ${hits("trapped")}, delivered ${hits("delivered")}, suppressed ${hits("suppressed")}, dropped ${hits("dropped")}, filtered ${hits("filtered")}`);
    }, (err) => console.log(`the agent\x27s metrics (${process.argv[1]}) did not answer: ${err.message}`));
  ' "$agent_metrics"
fi
echo "done: the demo program is still running untouched (TracerPid: $(awk '/TracerPid/ {print $2}' /proc/$target_pid/status))"
