/* DR7 encoding, chunk validation and the mirror of shared registers: pure
 * functions, tested by dregs-test.c. */
#include "dregs.h"

#include <errno.h>

int dr7_len_bits(unsigned length)
{
	switch (length) {
	case 1:
		return DR7_LEN_1;
	case 2:
		return DR7_LEN_2;
	case 4:
		return DR7_LEN_4;
	case 8:
		return DR7_LEN_8;
	default:
		return -1;
	}
}

uint64_t dr7_encode(const struct dr_mirror *m)
{
	uint64_t dr7 = 0;

	for (unsigned i = 0; i < DR_SLOTS; i++) {
		const struct dr_slot *s = &m->slot[i];
		int len = dr7_len_bits(s->length);

		if (!s->used || len < 0)
			continue;
		dr7 |= DR7_LOCAL_ENABLE(i);
		dr7 |= ((uint64_t)s->mode & DR7_FIELD_MASK) << DR7_RW_SHIFT(i);
		dr7 |= ((uint64_t)len & DR7_FIELD_MASK) << DR7_LEN_SHIFT(i);
	}
	return dr7;
}

uint8_t dr_mirror_mask(const struct dr_mirror *m)
{
	uint8_t mask = 0;

	for (unsigned i = 0; i < DR_SLOTS; i++)
		if (m->slot[i].used)
			mask |= (uint8_t)(1u << i);
	return mask;
}

int dr_chunk_check(unsigned dr, unsigned mode, unsigned length, uint64_t address,
		   struct fw_error *e)
{
	if (dr >= DR_SLOTS) {
		fw_error_set(e, EINVAL, "invalid chunk: dr %u (must be 0-3)", dr);
		return -1;
	}
	if (dr7_len_bits(length) < 0) {
		fw_error_set(e, EINVAL, "invalid chunk on dr%u: length %u (must be 1, 2, 4 or 8)",
			     dr, length);
		return -1;
	}
	if (mode != DR_MODE_EXECUTE && mode != DR_MODE_WRITE && mode != DR_MODE_READ_WRITE) {
		fw_error_set(e, EINVAL, "invalid chunk on dr%u: mode %u (must be 0, 1 or 3)", dr,
			     mode);
		return -1;
	}
	if (mode == DR_MODE_EXECUTE && length != 1) {
		fw_error_set(e, EINVAL, "invalid chunk on dr%u: execute needs length 1, not %u", dr,
			     length);
		return -1;
	}
	if (address % length != 0) {
		fw_error_set(e, EINVAL,
			     "invalid chunk on dr%u: address 0x%llx is not aligned to its length %u",
			     dr, (unsigned long long)address, length);
		return -1;
	}
	if (address >= DR_USER_ADDRESS_LIMIT) {
		fw_error_set(e, EINVAL,
			     "invalid chunk on dr%u: address 0x%llx is not a user address (limit 0x%llx)",
			     dr, (unsigned long long)address,
			     (unsigned long long)DR_USER_ADDRESS_LIMIT);
		return -1;
	}
	return 0;
}

uint8_t dr6_fired(uint64_t dr6, uint8_t mask)
{
	return (uint8_t)(dr6 & DR6_HIT_MASK & mask);
}

bool dr_slot_same_chunk(const struct dr_slot *a, const struct dr_slot *b)
{
	return a->address == b->address && a->length == b->length && a->mode == b->mode;
}

void dr_mirror_shared(struct dr_mirror *out, const struct dr_slot def[DR_SLOTS],
		      const dr_owners owners[DR_SLOTS], dr_owners live)
{
	for (unsigned i = 0; i < DR_SLOTS; i++) {
		if (owners[i] & live) {
			out->slot[i] = def[i];
			out->slot[i].used = true;
		} else {
			out->slot[i] = (struct dr_slot){ 0 };
		}
	}
}
