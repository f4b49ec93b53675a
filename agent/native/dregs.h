/* A pure mirror of one process's x86 debug registers and the DR7 encoder.
 * Nothing here touches ptrace: compute on a copy, then apply (tracer.c). */
#ifndef FW_DREGS_H
#define FW_DREGS_H

#include "fw.h"

#define DR_SLOTS 4
#define DR_STATUS 6  /* DR6: which slot fired */
#define DR_CONTROL 7 /* DR7: enables, RW and LEN per slot */

/* DR7 layout (Intel SDM vol. 3, 17.2.4). */
#define DR7_LOCAL_ENABLE(slot) (UINT64_C(1) << ((slot) * 2))
#define DR7_CONTROL_SHIFT 16 /* first slot's RW field */
#define DR7_CONTROL_SIZE 4   /* RW (2 bits) + LEN (2 bits) per slot */
#define DR7_RW_SHIFT(slot) (DR7_CONTROL_SHIFT + (slot) * DR7_CONTROL_SIZE)
#define DR7_LEN_SHIFT(slot) (DR7_RW_SHIFT(slot) + 2)
#define DR7_FIELD_MASK UINT64_C(3)

/* DR7 LEN encodings (not a plain log2: 8 bytes is 0b10, 4 bytes 0b11). */
#define DR7_LEN_1 0x0u
#define DR7_LEN_2 0x1u
#define DR7_LEN_8 0x2u
#define DR7_LEN_4 0x3u

/* DR6 B0..B3: slot n caused the debug exception. */
#define DR6_HIT(slot) (UINT64_C(1) << (slot))
#define DR6_HIT_MASK UINT64_C(0xf)

/* RW encodings as carried on the wire. */
enum dr_mode {
	DR_MODE_EXECUTE = 0,
	DR_MODE_WRITE = 1,
	DR_MODE_READ_WRITE = 3,
};

/* First address the kernel refuses for a user breakpoint (TASK_SIZE_MAX). */
#define DR_USER_ADDRESS_LIMIT UINT64_C(0x7ffffffff000)

struct dr_slot {
	bool used;
	uint8_t mode;
	uint8_t length;
	uint64_t address;
};

struct dr_mirror {
	struct dr_slot slot[DR_SLOTS];
};

/* DR7 value that enables exactly the used slots of m. */
uint64_t dr7_encode(const struct dr_mirror *m);

/* LEN field for a length in bytes, or -1 if the hardware has none. */
int dr7_len_bits(unsigned length);

/* Bit mask of used slots. */
uint8_t dr_mirror_mask(const struct dr_mirror *m);

/* 0 if the chunk may go into a register; else -1 with EINVAL in e. */
int dr_chunk_check(unsigned dr, unsigned mode, unsigned length, uint64_t address,
		   struct fw_error *e);

/* Slots whose B bit is set in dr6, restricted to mask. */
uint8_t dr6_fired(uint64_t dr6, uint8_t mask);

/* Several groups may own one register if they watch the same chunk (gdb's
 * rule): an owner set is a bit mask of group indexes (bit g = group g). */
typedef uint32_t dr_owners;
_Static_assert(FW_MAX_GROUPS <= 32, "an owner set must hold every group index");

/* True if a and b watch the same chunk: address, length and mode all equal
 * (the used flag is not compared). */
bool dr_slot_same_chunk(const struct dr_slot *a, const struct dr_slot *b);

/* The mirror of shared registers: slot s holds def[s] iff one of its owners
 * (owners[s]) is live (in the set live); every other slot is unused. */
void dr_mirror_shared(struct dr_mirror *out, const struct dr_slot def[DR_SLOTS],
		      const dr_owners owners[DR_SLOTS], dr_owners live);

#endif
