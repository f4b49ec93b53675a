#!/usr/bin/env bash
# Runs COMMAND inside an emulated x86 machine that delivers debug-register
# traps, for hosts whose hypervisor does not (README "Hosts without debug
# traps"). QEMU's TCG emulates DR0-DR7 exactly; the guest boots Debian's
# kernel with a busybox init, sees this host's whole filesystem read-only
# over 9p under a writable tmpfs overlay (the checkout at the same path),
# has no network device (everything listens on the guest's loopback), and
# runs COMMAND with this checkout (or the current directory, when it is
# inside the checkout) as its working directory.
#
# Usage: scripts/trap-vm.sh COMMAND [ARG...]
# Output is streamed; the exit code is COMMAND's. 125: the emulated machine
# could not be had or did not boot (the reason is on stderr).
# Environment: FLEETWATCH_TRAP_VM_MEM (MiB, default 8192: what the tests
# write lives in the guest's memory),
# FLEETWATCH_TRAP_VM_CPUS (default: this host's CPUs, at most 4),
# FLEETWATCH_TRAP_VM_CACHE (kernel and initramfs, default
# ${XDG_CACHE_HOME:-~/.cache}/fleetwatch/trap-vm).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

die() {
  echo "trap-vm: $*" >&2
  exit 125
}

[ $# -ge 1 ] || { echo "usage: scripts/trap-vm.sh COMMAND [ARG...]" >&2; exit 2; }

# --- What the machine needs, from the distribution only -------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
# The init needs a busybox that runs without libraries: busybox-static's.
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v depmod >/dev/null || need+=(kmod)
command -v cpio >/dev/null || need+=(cpio)
command -v xz >/dev/null || need+=(xz-utils)
command -v cc >/dev/null || need+=(gcc libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "missing ${need[*]}: install them with: sudo apt-get install ${need[*]}"
  echo "trap-vm: installing ${need[*]}" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } ||
    die "could not install ${need[*]} with apt-get"
fi
busybox=$(dpkg -L busybox-static | grep -m1 -E '/bin/busybox$') || die "busybox-static installs no busybox binary"

cache=${FLEETWATCH_TRAP_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fleetwatch/trap-vm}
mkdir -p "$cache" || die "cannot create the cache directory $cache"

# The kernel: the distribution's, downloaded as a package (never installed
# on this host) and unpacked into the cache once. The newest long-term
# kernel the distribution offers comes first: its debug-register slot
# accounting is the one current hosts have.
kernel_of() { apt-cache depends "$1" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'; }
pick_kernel() {
  for meta in ${FLEETWATCH_TRAP_VM_KERNEL:-linux-image-6.12-amd64 linux-image-amd64}; do
    k=$(kernel_of "$meta")
    [ -n "$k" ] && { echo "$k"; return; }
  done
}
kernel_pkg=$(pick_kernel)
[ -n "$kernel_pkg" ] || { apt-get update -qq >/dev/null 2>&1 || true; kernel_pkg=$(pick_kernel); }
[ -n "$kernel_pkg" ] || die "the distribution offers no kernel package (apt-cache depends found none of ${FLEETWATCH_TRAP_VM_KERNEL:-linux-image-6.12-amd64 linux-image-amd64})"
kdir="$cache/$kernel_pkg"
# Modules the init loads, in dependency order: 9p for the host's filesystem,
# overlay for the writable layer, veth and bridge for multi-host tests.
modules="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p overlay llc stp bridge veth"
if [ ! -f "$kdir/ready" ]; then
  echo "trap-vm: fetching $kernel_pkg (once; cached in $cache)" >&2
  rm -rf "$kdir" && mkdir -p "$kdir/deb" "$kdir/tree"
  (cd "$kdir/deb" && apt-get download "$kernel_pkg" >/dev/null 2>&1) || die "apt-get download $kernel_pkg failed"
  dpkg-deb -x "$kdir"/deb/*.deb "$kdir/tree" || die "cannot unpack $kernel_pkg"
  kver=$(basename "$(ls "$kdir"/tree/lib/modules | head -1)")
  depmod -b "$kdir/tree" "$kver" || die "depmod failed on $kernel_pkg"
  cp "$kdir"/tree/boot/vmlinuz-* "$kdir/vmlinuz"
  mkdir -p "$kdir/modules"
  for m in $modules; do
    ko=$(awk -F: -v m="$m" '{ n = $1; sub(/.*\//, "", n); sub(/\.ko(\.[a-z]+)?$/, "", n); gsub(/-/, "_", n); if (n == m) { print $1; exit } }' "$kdir/tree/lib/modules/$kver/modules.dep")
    if [ -z "$ko" ]; then
      # Built into this kernel: nothing to load.
      # (fscache is part of netfs since 6.4.)
      grep -qE "/${m//_/[-_]}\.ko" "$kdir/tree/lib/modules/$kver/modules.builtin" || [ "$m" = fscache ] || die "module $m is not in $kernel_pkg"
      continue
    fi
    case "$ko" in
      *.xz) xz -dc "$kdir/tree/lib/modules/$kver/$ko" ;;
      *.zst) zstd -qdc "$kdir/tree/lib/modules/$kver/$ko" ;;
      *) cat "$kdir/tree/lib/modules/$kver/$ko" ;;
    esac >"$kdir/modules/$m.ko" || die "cannot unpack module $m"
    echo "$m" >>"$kdir/modules/order"
  done
  rm -rf "$kdir/tree" "$kdir/deb"
  touch "$kdir/ready"
fi

# --- The initramfs: static busybox, the modules, and this init ------------
init_script=$(cat <<'INIT'
#!/bin/busybox sh
# Runs as pid 1 of the emulated machine: mounts the host's filesystem under
# a writable overlay, chroots into it and runs the command the host wrote.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# The kernel's console is the first serial port (kept in the run directory
# for a boot failure's reason); COMMAND's output goes out on the second.
exec </dev/null >/dev/ttyS1 2>&1
stty -F /dev/ttyS1 raw -echo 2>/dev/null
fail() { echo "trap-vm guest: $*" >/dev/console; [ -d /fwrun ] && echo "boot-failed: $*" >/fwrun/status; poweroff -f; }
for m in $(cat /modules/order); do insmod "/modules/$m.ko" || fail "insmod $m failed"; done
run=$(sed -n 's/.*fwrun=\([^ ]*\).*/\1/p' /proc/cmdline)
mkdir -p /fwrun /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 fwrun /fwrun || fail "cannot mount the run directory"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot /lower || fail "cannot mount the host's filesystem"
mount -t tmpfs -o mode=755 rw /rw && mkdir -p /rw/upper /rw/work || fail "cannot make the writable layer"
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || fail "cannot mount the overlay"
n=/newroot
mount --bind /proc $n/proc && mount --bind /sys $n/sys && mount --bind /dev $n/dev || fail "cannot bind /proc /sys /dev"
mkdir -p $n/dev/pts $n/dev/shm
mount -t devpts -o newinstance,ptmxmode=666 devpts $n/dev/pts
mount -t tmpfs -o mode=1777 shm $n/dev/shm
mount -t cgroup2 cgroup2 $n/sys/fs/cgroup 2>/dev/null
mount -t bpf bpf $n/sys/fs/bpf 2>/dev/null
mount -t debugfs debugfs $n/sys/kernel/debug 2>/dev/null
mount -t tmpfs -o mode=755 run $n/run
mkdir -p "$n$run" && mount --move /fwrun "$n$run" || fail "cannot move the run directory"
ip link set lo up
hostname fleetwatch-trap-vm
echo booted >"$n$run/booted"
# switch_root, not chroot: a process that enters a mount namespace (nsenter,
# as multi-host tests do) lands at that namespace's root, which must be the
# host's tree. This busybox, copied out of the initramfs, stays pid 1 and
# reaps orphans while COMMAND runs, then powers the machine off.
# The machine boots with one CPU online (maxcpus=1): trap-vm-hold.c says
# why its event must be opened before the others come up.
mkdir -p $n/run/trap-vm && cp /bin/busybox $n/run/trap-vm/busybox
exec switch_root $n /run/trap-vm/busybox sh -c '
  fail() { echo "boot-failed: $2" >"$1/status"; echo o >/proc/sysrq-trigger; }
  cp "$1/hold" /run/trap-vm/trap-vm-hold
  /run/trap-vm/trap-vm-hold >/run/trap-vm/held 2>/run/trap-vm/hold.err &
  i=0
  until [ -s /run/trap-vm/held ]; do
    i=$((i + 1)); [ $i -le 200 ] && kill -0 $! 2>/dev/null || { fail "$1" "trap-vm-hold: $(cat /run/trap-vm/hold.err)"; sleep 60; }
    sleep 0.05
  done
  echo -1000 >/proc/$!/oom_score_adj
  for c in /sys/devices/system/cpu/cpu[0-9]*/online; do [ -e "$c" ] && echo 1 >"$c"; done
  # What every process is doing, when the host asks (trap-vm.sh stopped
  # before COMMAND finished: a hung test is then named, not guessed at).
  while sleep 2; do
    [ -e "$1/dump-request" ] || continue
    for p in /proc/[0-9]*; do
      c=$(tr -s "\0\n " "   " <"$p/cmdline" 2>/dev/null | cut -c1-200)
      [ -n "$c" ] && echo "${p#/proc/} $(cut -d" " -f4 "$p/stat" 2>/dev/null) $(sed -n "s/^State:\t//p" "$p/status" 2>/dev/null) $(cat "$p/wchan" 2>/dev/null) $c"
    done >"$1/dump.tmp" 2>&1
    mv "$1/dump.tmp" "$1/dump"; rm -f "$1/dump-request"
  done &
  /bin/bash "$1/cmd.sh"; sync; echo o >/proc/sysrq-trigger' sh "$run"
INIT
)
initrd_key=$( { echo "$init_script"; sha256sum "$busybox" "$kdir"/modules/*; } | sha256sum | cut -c1-16)
initrd="$kdir/initrd-$initrd_key.cpio.gz"
if [ ! -f "$initrd" ]; then
  stage=$(mktemp -d)
  mkdir -p "$stage"/{bin,dev,proc,sys,modules}
  cp "$busybox" "$stage/bin/busybox"
  cp "$kdir"/modules/* "$stage/modules/"
  printf '%s\n' "$init_script" >"$stage/init"
  chmod 755 "$stage/init"
  (cd "$stage" && find . | cpio -o -H newc --quiet | gzip -1) >"$initrd.tmp" || { rm -rf "$stage"; die "cannot build the initramfs"; }
  mv "$initrd.tmp" "$initrd"
  rm -rf "$stage"
fi

# --- The run: a directory the guest may write, shared as fwrun -------------
run=$(mktemp -d "${TMPDIR:-/tmp}/fleetwatch-trap-vm.XXXXXX")
qemu_pid=""
cleanup() {
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null
  rm -rf "$run"
}
# Stopped while COMMAND runs (a timeout, ^C): first print the guest's
# processes (pid, ppid, state, wait channel, command line), so whatever
# hung is named.
stopped() {
  if [ -n "$qemu_pid" ] && [ -f "$run/booted" ]; then
    touch "$run/dump-request"
    for _ in $(seq 100); do [ -f "$run/dump" ] && break; sleep 0.2; done
    if [ -f "$run/dump" ]; then
      echo "trap-vm: stopped; the guest's processes (pid ppid state wchan command):" >&2
      cat "$run/dump" >&2
    else
      echo "trap-vm: stopped; the guest did not list its processes within 20 s" >&2
    fi
  fi
  exit "$1"
}
trap cleanup EXIT
trap 'stopped 130' INT
trap 'stopped 143' TERM

# The guest's holder of the perf_sched_events key (trap-vm-hold.c), built
# once per source.
hold="$cache/hold-$(sha256sum "$root/scripts/trap-vm-hold.c" | cut -c1-16)"
if [ ! -x "$hold" ]; then
  cc -O2 -Wall -o "$hold.tmp" "$root/scripts/trap-vm-hold.c" && mv "$hold.tmp" "$hold" || die "cannot build scripts/trap-vm-hold.c"
fi
cp "$hold" "$run/hold"

cwd=$(pwd)
case "$cwd/" in "$root"/*) ;; *) cwd=$root ;; esac
{
  echo "# written by scripts/trap-vm.sh"
  export -p | grep -vE '^declare -x (PWD|OLDPWD|SHLVL|_|HOSTNAME)='
  echo "export FLEETWATCH_IN_TRAP_VM=1"
  printf 'cd %q || exit 125\n' "$cwd"
  printf '%q ' "$@"
  echo '</dev/null'
  echo "echo \"exit \$?\" >$(printf %q "$run/status")"
} >"$run/cmd.sh"

cpus=${FLEETWATCH_TRAP_VM_CPUS:-$(nproc)}
[ "$cpus" -le 4 ] || cpus=4
mem=${FLEETWATCH_TRAP_VM_MEM:-8192}
qemu-system-x86_64 \
  -accel tcg,thread=multi -cpu max -smp "$cpus" -m "$mem" \
  -display none -monitor none -no-reboot -nic none \
  -chardev file,id=console,path="$run/console.log" -serial chardev:console \
  -chardev stdio,id=out,signal=off -serial chardev:out \
  -kernel "$kdir/vmlinuz" -initrd "$initrd" \
  -append "console=ttyS0 loglevel=4 panic=-1 maxcpus=1 fwrun=$run" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs "local,path=$run,mount_tag=fwrun,security_model=none,multidevs=remap" \
  </dev/null 2>"$run/qemu.err" &
qemu_pid=$!
wait "$qemu_pid" && qemu_rc=0 || qemu_rc=$?
qemu_pid=""

status=$(cat "$run/status" 2>/dev/null || true)
case "$status" in
  "exit "*) exit "${status#exit }" ;;
  boot-failed:*) die "the emulated machine did not boot: ${status#boot-failed: }" ;;
esac
[ -f "$run/booted" ] || die "the emulated machine did not boot (qemu exit $qemu_rc): $(tail -3 "$run/qemu.err" "$run/console.log" 2>/dev/null | tr -s '\n' ' ')"
echo "trap-vm: the guest's console, last lines:" >&2
tail -25 "$run/console.log" >&2 2>/dev/null || true
die "the emulated machine stopped before COMMAND finished (qemu exit $qemu_rc): a guest kernel panic or out of memory (console above); FLEETWATCH_TRAP_VM_MEM sets its memory"
