#!/usr/bin/env bash
# Installs what fleetwatch needs on a Debian-like machine (only what is
# missing), then builds the native helper and the TypeScript.
# Usage: scripts/setup.sh [--test]   (--test adds the tools the test suite uses)
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nats-server >/dev/null || need+=(nats-server)
command -v gcc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
[ -f /usr/include/elfutils/libdwfl.h ] || need+=(libdw-dev)
[ -f /usr/include/libelf.h ] || need+=(libelf-dev)
# The perf backend's exact-value program is loaded with libbpf.
[ -f /usr/include/bpf/bpf.h ] || need+=(libbpf-dev)
if [ "${1:-}" = "--test" ]; then
  # Tests use strace (a foreign tracer), a real PostgreSQL server (a
  # distribution binary without frame pointers or debug info) and
  # docker-compose (to validate the compose file).
  command -v strace >/dev/null || need+=(strace)
  # Multi-host tests build their hosts from network namespaces (unshare and
  # nsenter come with util-linux, always there).
  command -v ip >/dev/null || need+=(iproute2)
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
  # The deployment test validates docker-compose.yml with docker-compose (no engine needed).
  command -v docker-compose >/dev/null || need+=(docker-compose)
  # The console test drives Debian's Chromium (never a browser downloaded by playwright).
  command -v chromium >/dev/null || need+=(chromium)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing ${need[*]}: install them with: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  echo "setup: Node.js >= 20 is required (found $(node --version))" >&2
  exit 1
fi

# npm ci only when the lock file changed since the last install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent build
