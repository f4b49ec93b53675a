#!/usr/bin/env bash
# Sets everything up, checks the generated code, and runs the whole test suite.
#
# Tests that need a debug-register trap run where traps are delivered: on this
# host when an independent probe (test/fixtures/trap-probe.c) sees them, else
# inside an emulated x86 machine that delivers them (scripts/trap-vm.sh).
# FLEETWATCH_TRAP_VM=1 forces the emulated machine on a host with traps.
# Tests learn which kind of host they run on from FLEETWATCH_EXPECT_TRAPS.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
scripts/setup.sh --test
scripts/check-generated.sh

# Integration files that never arm a real watch: they run on this host in
# either mode. Every other file needs traps (the console test's browser,
# Debian's Chromium, runs inside the emulated machine too).
no_trap=(deploy finished-jobs job-store leader-election metrics monitoring process-discovery report-stored slow-follower tls)

mkdir -p test/fixtures/build
gcc -O2 -Wall -Werror -o test/fixtures/build/trap-probe test/fixtures/trap-probe.c
probe=$(test/fixtures/build/trap-probe 2>&1) && host_traps=1 || host_traps=0

all=()
trap_files=()
native_files=()
for f in dist/test/integration/*.test.js; do
  all+=("$f")
  name=$(basename "$f" .test.js)
  if [[ " ${no_trap[*]} no-traps " == *" $name "* ]]; then native_files+=("$f"); else trap_files+=("$f"); fi
done

if [ "$host_traps" = 1 ] && [ "${FLEETWATCH_TRAP_VM:-}" != 1 ]; then
  echo "scripts/test.sh: this host delivers debug traps ($probe): every test runs here"
  # The helper's C tests: DR7 encoding tables, unwinding and DWARF expressions.
  make -s -C agent/native check
  # Files are named on the command line (a typo fails loudly); integration
  # files run one at a time: they start real daemons and ptrace real targets.
  node --test dist/test/unit/*.test.js
  FLEETWATCH_EXPECT_TRAPS=1 node --test --test-concurrency=1 "${all[@]}"
  echo "scripts/test.sh: passed, every test on this host ($(( ($(date +%s) - started) / 60 )) min)"
  exit 0
fi

if [ "$host_traps" = 1 ]; then
  why="FLEETWATCH_TRAP_VM=1"
else
  why="this host delivers no debug traps ($probe)"
fi
echo "scripts/test.sh: $why: the ${#trap_files[@]} integration files that need traps run inside an emulated x86 machine (scripts/trap-vm.sh), the rest here"
make -s -C agent/native check
node --test dist/test/unit/*.test.js
# no-traps checks what this host's helper and agent say about it, here and
# again inside the emulated machine.
FLEETWATCH_EXPECT_TRAPS=$host_traps node --test --test-concurrency=1 "${native_files[@]}"
again=()
[ ! -f dist/test/integration/no-traps.test.js ] || again=(dist/test/integration/no-traps.test.js)
vm_started=$(date +%s)
# Node.js runs 10-20x slower there: test deadlines stretch (never what is
# asserted), and the chaos, fuzz and kill-switch tests run fewer rounds
# (README). The timeout keeps a wedged guest from holding CI; stopped, the
# guest lists what each of its processes was waiting on.
FLEETWATCH_EXPECT_TRAPS=1 FLEETWATCH_TIME_SCALE=${FLEETWATCH_TIME_SCALE:-10} \
  FLEETWATCH_CHAOS_ROUNDS=${FLEETWATCH_CHAOS_ROUNDS:-10} FLEETWATCH_FUZZ_CASES=${FLEETWATCH_FUZZ_CASES:-500} timeout 60m \
  scripts/trap-vm.sh node --test --test-concurrency=1 "${trap_files[@]}" "${again[@]}"
echo "scripts/test.sh: passed; ${#trap_files[@]} integration files ran inside the emulated machine ($(( ($(date +%s) - vm_started) / 60 )) min there, $(( ($(date +%s) - started) / 60 )) min in all)"
