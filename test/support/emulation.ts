// What an emulated x86 machine (scripts/trap-vm.sh, QEMU's TCG) does not do
// as hardware does. The few tests that depend on it run on hardware only and
// say why when skipped; scripts/test.sh runs every other trap test there.

/** Set by scripts/trap-vm.sh inside the emulated machine. */
export const emulated = process.env.FLEETWATCH_IN_TRAP_VM === "1";

/**
 * QEMU stops at the first watchpoint an access matches and sets only its
 * bit in DR6; hardware sets the bit of every matching register. Tests of
 * one access caught by several registers (two registers on one word, one
 * 16-byte store over two watched words) cannot pass there.
 */
export const oneRegisterPerAccess = emulated && "the emulated machine reports only the first debug register an access matches (QEMU's TCG); checked on hardware only";

/**
 * A perf-watched writer pinned from one CPU to the other thousands of times
 * a second: the emulated machine was measured missing some of its traps
 * (values skipped thousands of writes); hardware misses none.
 */
export const trapsAcrossCpuMoves = emulated && "the emulated machine misses traps of a writer moved between CPUs (measured with QEMU's TCG); checked on hardware only";
