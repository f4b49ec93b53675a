// What an emulated x86 machine (scripts/trap-vm.sh, QEMU's TCG) does not do
// as hardware does. The few tests that depend on it run on hardware only and
// say why when skipped, or check there what still holds and say what not;
// scripts/test.sh runs every other trap test there.

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
 * Writers trapping flat out can outrun the helper's drain of the perf ring
 * buffers in the emulated machine: the kernel drops samples and the helper
 * counts them as lost from the kernel's own count (measured: 5-30% of
 * 60,000 traps of three writers; 28% of a writer moved between CPUs every
 * 1,000 hits). Those tests check the accounting there, not the total.
 */
export const drainFallsBehind = emulated && "the emulated machine's helper drains the ring buffers too slowly for writers trapping flat out (QEMU's TCG)";

/**
 * INT1 (0xf1, ICEBP) is a debug exception on hardware, which Linux turns
 * into SIGTRAP; the emulated machine raises an invalid-opcode fault for it
 * instead (the program gets SIGILL).
 */
export const noInt1 = emulated && "the emulated machine raises SIGILL for INT1 (0xf1), not a debug exception (QEMU's TCG); checked on hardware only";

/**
 * How many rounds a long scenario runs: fewer inside the emulated machine,
 * where each costs many times more (the README's Tests section lists
 * them), never none.
 */
export function roundsHere(native: number, inEmulation: number): number {
  return emulated ? Math.max(1, inEmulation) : native;
}
