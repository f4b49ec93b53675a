/* Table tests of the pure DR7 encoder, chunk validation and the mirror of
 * shared registers (make check). */
#include "dregs.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>

struct encode_case {
	const char *name;
	struct dr_mirror mirror;
	uint64_t dr7;
};

struct check_case {
	unsigned dr, mode, length;
	uint64_t address;
	int err; /* 0 = accepted */
};

static const struct encode_case encode_cases[] = {
	{ "empty mirror", { { { 0 } } }, 0 },
	{ "slot 0, write 8", { { [0] = { true, DR_MODE_WRITE, 8, 0x1000 } } }, 0x00090001 },
	{ "slot 0, rw 4", { { [0] = { true, DR_MODE_READ_WRITE, 4, 0x1000 } } }, 0x000f0001 },
	{ "slot 1, write 1", { { [1] = { true, DR_MODE_WRITE, 1, 0x1001 } } }, 0x00100004 },
	{ "slot 2, write 2", { { [2] = { true, DR_MODE_WRITE, 2, 0x1002 } } }, 0x05000010 },
	{ "slot 3, execute 1", { { [3] = { true, DR_MODE_EXECUTE, 1, 0x1003 } } }, 0x00000040 },
	{ "slots 0 and 3, write 8",
	  { { [0] = { true, DR_MODE_WRITE, 8, 0x1000 }, [3] = { true, DR_MODE_WRITE, 8, 0x2000 } } },
	  0x90090041 },
	{ "unused slot ignored", { { [2] = { false, DR_MODE_WRITE, 8, 0x1000 } } }, 0 },
};

static const struct check_case check_cases[] = {
	{ 0, DR_MODE_WRITE, 8, 0x601000, 0 },
	{ 3, DR_MODE_READ_WRITE, 1, 0x601003, 0 },
	{ 1, DR_MODE_EXECUTE, 1, 0x401001, 0 },
	{ 4, DR_MODE_WRITE, 8, 0x601000, EINVAL },
	{ 0, DR_MODE_WRITE, 3, 0x601000, EINVAL },
	{ 0, DR_MODE_WRITE, 16, 0x601000, EINVAL },
	{ 0, 2, 4, 0x601000, EINVAL },
	{ 0, DR_MODE_EXECUTE, 4, 0x601000, EINVAL },
	{ 0, DR_MODE_WRITE, 8, 0x601004, EINVAL },
	{ 0, DR_MODE_WRITE, 2, 0x601001, EINVAL },
	{ 0, DR_MODE_WRITE, 8, 0x7ffffffff000, EINVAL },
	{ 0, DR_MODE_WRITE, 8, 0x7fffffffeff8, 0 },
	{ 0, DR_MODE_WRITE, 8, 0xffff800000000000, EINVAL },
};

struct same_case {
	const char *name;
	struct dr_slot a, b;
	bool same;
};

static const struct same_case same_cases[] = {
	{ "identical", { true, DR_MODE_WRITE, 8, 0x1000 }, { true, DR_MODE_WRITE, 8, 0x1000 }, true },
	{ "used flag ignored", { false, DR_MODE_WRITE, 8, 0x1000 }, { true, DR_MODE_WRITE, 8, 0x1000 },
	  true },
	{ "other address", { true, DR_MODE_WRITE, 8, 0x1000 }, { true, DR_MODE_WRITE, 8, 0x1008 },
	  false },
	{ "other length", { true, DR_MODE_WRITE, 8, 0x1000 }, { true, DR_MODE_WRITE, 4, 0x1000 },
	  false },
	{ "other mode", { true, DR_MODE_WRITE, 8, 0x1000 }, { true, DR_MODE_READ_WRITE, 8, 0x1000 },
	  false },
};

struct shared_case {
	const char *name;
	dr_owners owners[DR_SLOTS];
	dr_owners live;
	uint8_t armed; /* slots the mirror must hold */
};

/* Slot s of def below watches 0x1000 + 8 * s, write, 8 bytes. */
static const struct shared_case shared_cases[] = {
	{ "no owners", { 0 }, 0xffffffff, 0 },
	{ "one live owner", { [0] = 1u << 0 }, 1u << 0, 0x1 },
	{ "owner backed off", { [0] = 1u << 0 }, 0, 0 },
	{ "two owners, one live", { [2] = (1u << 0) | (1u << 5) }, 1u << 5, 0x4 },
	{ "two owners, none live", { [2] = (1u << 0) | (1u << 5) }, 1u << 1, 0 },
	{ "group 15 and group 31", { [1] = 1u << 15, [3] = 1u << 31 }, (1u << 15) | (1u << 31), 0xa },
	{ "live elsewhere only", { [0] = 1u << 1, [1] = 1u << 2 }, 1u << 2, 0x2 },
};

static int check_shared(void)
{
	struct dr_slot def[DR_SLOTS];
	int failures = 0;

	for (unsigned s = 0; s < DR_SLOTS; s++)
		def[s] = (struct dr_slot){ false, DR_MODE_WRITE, 8, 0x1000 + 8 * s };
	for (size_t i = 0; i < sizeof shared_cases / sizeof shared_cases[0]; i++) {
		const struct shared_case *c = &shared_cases[i];
		struct dr_mirror m;
		bool ok;

		/* Start from garbage: every slot must be written. */
		for (unsigned s = 0; s < DR_SLOTS; s++)
			m.slot[s] = (struct dr_slot){ true, DR_MODE_READ_WRITE, 4, 0xdead0 };
		dr_mirror_shared(&m, def, c->owners, c->live);
		ok = dr_mirror_mask(&m) == c->armed;
		for (unsigned s = 0; s < DR_SLOTS && ok; s++) {
			if (m.slot[s].used)
				ok = dr_slot_same_chunk(&m.slot[s], &def[s]);
			else
				ok = m.slot[s].address == 0;
		}
		if (!ok) {
			printf("FAIL shared %s: mask 0x%x, want 0x%x\n", c->name, dr_mirror_mask(&m),
			       c->armed);
			failures++;
		}
	}
	for (size_t i = 0; i < sizeof same_cases / sizeof same_cases[0]; i++) {
		const struct same_case *c = &same_cases[i];

		if (dr_slot_same_chunk(&c->a, &c->b) != c->same ||
		    dr_slot_same_chunk(&c->b, &c->a) != c->same) {
			printf("FAIL same chunk %s\n", c->name);
			failures++;
		}
	}
	return failures;
}

int main(void)
{
	int failures = 0;

	for (size_t i = 0; i < sizeof encode_cases / sizeof encode_cases[0]; i++) {
		uint64_t got = dr7_encode(&encode_cases[i].mirror);

		if (got != encode_cases[i].dr7) {
			printf("FAIL encode %s: 0x%" PRIx64 " != 0x%" PRIx64 "\n",
			       encode_cases[i].name, got, encode_cases[i].dr7);
			failures++;
		}
	}
	for (size_t i = 0; i < sizeof check_cases / sizeof check_cases[0]; i++) {
		const struct check_case *c = &check_cases[i];
		struct fw_error e = { 0, "" };
		int r = dr_chunk_check(c->dr, c->mode, c->length, c->address, &e);
		int err = r == 0 ? 0 : e.err;

		if (err != c->err) {
			printf("FAIL check dr%u mode %u len %u addr 0x%" PRIx64 ": %d != %d (%s)\n",
			       c->dr, c->mode, c->length, c->address, err, c->err, e.msg);
			failures++;
		}
	}
	if (dr6_fired(0xffff0ff1, 0x1) != 0x1 || dr6_fired(0xffff0ff3, 0x2) != 0x2 ||
	    dr6_fired(0xffff0ff0, 0xf) != 0) {
		printf("FAIL dr6_fired\n");
		failures++;
	}
	failures += check_shared();
	printf("%s: %d failure(s)\n", failures ? "FAIL" : "ok", failures);
	return failures ? 1 : 0;
}
