/* The start-up trap self-test: does a watched write really trap here?
 * Some hosts (VMs whose hypervisor does not virtualize the debug registers)
 * accept every DR0-DR7 value and open every perf breakpoint, yet never
 * deliver a trap. Each backend is proved with real writes to a word of our
 * own, never a target's. */
#ifndef FW_SELFTEST_H
#define FW_SELFTEST_H

#include <stdint.h>

/* How many probe writes each backend makes. */
#define FW_SELFTEST_WRITES 8u

enum fw_trap_delivery {
	FW_TRAPS_NOT_RUN = 0,       /* the probe could not run: no proof either way */
	FW_TRAPS_DELIVERED = 1,     /* every probe write trapped */
	FW_TRAPS_NOT_DELIVERED = 2, /* the probe ran and some or all writes did not trap */
};

struct fw_trap_check {
	enum fw_trap_delivery delivery;
	uint32_t writes;
	uint32_t traps;
	uint32_t ns_per_trap; /* 0 when none trapped */
	char detail[256];
};

/* Each runs in well under 100 ms, also where nothing traps. */
void selftest_ptrace(struct fw_trap_check *out);
void selftest_perf(struct fw_trap_check *out);

const char *selftest_delivery_name(enum fw_trap_delivery d);

#endif
