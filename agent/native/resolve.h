/* Symbol name -> runtime address in a live process (elfutils libdwfl).
 * Read-only: needs /proc access, not ptrace. */
#ifndef FW_RESOLVE_H
#define FW_RESOLVE_H

#include "fw.h"

struct fw_resolved {
	uint64_t address; /* symbol + offset, load bias applied */
	uint64_t size;
	char module[4096];
	char symbol[1024];
};

int fw_resolve(pid_t pid, const char *name, uint64_t offset, struct fw_resolved *out,
	       struct fw_error *e);

#endif
