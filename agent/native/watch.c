/* The rules of a watch that do not depend on the backend (watch.h). */
#include "watch.h"

#include "dregs.h"

#include <errno.h>
#include <unistd.h>

_Static_assert(FW_SLOTS_PER_THREAD == DR_SLOTS, "a thread's slots are its debug registers");

/* The longest back-off an ARM may ask for. */
#define BACKOFF_MAX_MS (3600u * 1000u)

const char *fw_mode_name(unsigned mode)
{
	switch (mode) {
	case DR_MODE_EXECUTE:
		return "execute";
	case DR_MODE_WRITE:
		return "write";
	case DR_MODE_READ_WRITE:
		return "read/write";
	default:
		return "?";
	}
}

int fw_policy_check(pid_t pid, struct fw_error *e)
{
	if (pid <= 0) {
		fw_error_set(e, EINVAL, "invalid pid %d", (int)pid);
		return -1;
	}
	if (pid == 1) {
		fw_error_set(e, EPERM, "policy: pid 1 is never watched");
		return -1;
	}
	if (pid == getpid()) {
		fw_error_set(e, EPERM, "policy: pid %d is the helper itself", (int)pid);
		return -1;
	}
	if (pid == getppid()) {
		fw_error_set(e, EPERM, "policy: pid %d is the helper's parent (the agent)", (int)pid);
		return -1;
	}
	return 0;
}

int fw_check_chunk_count(pid_t pid, unsigned count, struct fw_error *e)
{
	if (count < 1 || count > FW_SLOTS_PER_THREAD) {
		fw_error_set(e, EINVAL, "ARM pid %d: %u chunks (must be 1-4)", (int)pid, count);
		return -1;
	}
	return 0;
}

int fw_check_chunks(pid_t pid, const struct fw_chunk *chunks, unsigned count,
		    struct fw_error *e)
{
	uint8_t seen = 0;

	if (fw_check_chunk_count(pid, count, e) == -1)
		return -1;
	for (unsigned i = 0; i < count; i++) {
		const struct fw_chunk *c = &chunks[i];

		if (dr_chunk_check(c->dr, c->mode, c->length, c->address, e) == -1)
			return -1;
		if (seen & (1u << c->dr)) {
			fw_error_set(e, EINVAL, "invalid chunks: dr%u named twice", c->dr);
			return -1;
		}
		seen |= (uint8_t)(1u << c->dr);
	}
	return 0;
}

int fw_check_options(pid_t pid, const struct fw_watch_options *opt, struct fw_error *e)
{
	if (opt->nconditions > FW_MAX_CONDITIONS) {
		fw_error_set(e, EINVAL, "ARM pid %d: %u conditions (at most %d)", (int)pid,
			     opt->nconditions, FW_MAX_CONDITIONS);
		return -1;
	}
	for (unsigned i = 0; i < opt->nconditions; i++) {
		if (opt->conditions[i].op >= FW_COND_OP_COUNT) {
			fw_error_set(e, EINVAL, "ARM pid %d: condition %u has unknown op %u",
				     (int)pid, i, opt->conditions[i].op);
			return -1;
		}
	}
	if (opt->ntids > FW_MAX_TID_FILTER) {
		fw_error_set(e, EINVAL, "ARM pid %d: %u tids in the thread filter (at most %d)",
			     (int)pid, opt->ntids, FW_MAX_TID_FILTER);
		return -1;
	}
	for (unsigned i = 0; i < opt->ntids; i++) {
		if (opt->tids[i] <= 0) {
			fw_error_set(e, EINVAL, "ARM pid %d: thread filter names tid %d", (int)pid,
				     (int)opt->tids[i]);
			return -1;
		}
	}
	if (opt->stack_depth > FW_MAX_STACK_DEPTH) {
		fw_error_set(e, EINVAL, "ARM pid %d: stack depth %u (at most %d)", (int)pid,
			     opt->stack_depth, FW_MAX_STACK_DEPTH);
		return -1;
	}
	if (opt->backoff_ms > BACKOFF_MAX_MS) {
		fw_error_set(e, EINVAL, "ARM pid %d: backoff of %u ms (at most %u)", (int)pid,
			     opt->backoff_ms, BACKOFF_MAX_MS);
		return -1;
	}
	return 0;
}
