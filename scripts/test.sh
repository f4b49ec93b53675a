#!/usr/bin/env bash
# Sets everything up, checks the generated code, and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
scripts/check-generated.sh
# The helper's C tests: DR7 encoding tables, unwinding and DWARF expressions.
make -s -C agent/native check
# Files are named on the command line (a typo fails loudly); integration
# files run one at a time: they start real daemons and ptrace real targets.
node --test dist/test/unit/*.test.js
node --test --test-concurrency=1 dist/test/integration/*.test.js
