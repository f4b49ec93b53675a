/* The ptrace side of the helper: which processes and threads are attached,
 * what each process's debug registers should hold, and the operations that
 * change that (arm, disarm, budget retirement, detach). */
#ifndef FW_TRACER_H
#define FW_TRACER_H

#include "fw.h"
#include "wire.h"

struct fw_chunk {
	uint8_t dr;
	uint8_t mode;
	uint8_t length;
	uint64_t address;
};

/* Value predicates of a group, on each chunk's new value (PROTOCOL.md). */
enum fw_cond_op {
	FW_COND_EQ = 0,
	FW_COND_NE = 1,
	FW_COND_LT = 2,
	FW_COND_GT = 3,
	FW_COND_LE = 4,
	FW_COND_GE = 5,
	FW_COND_CHANGED = 6,   /* new != old */
	FW_COND_UNCHANGED = 7, /* new == old: with mode rw, a read-only watch */
	FW_COND_OP_COUNT = 8,
};

struct fw_condition {
	uint8_t op;
	uint64_t value;
};

/* What a group delivers, and how much of it (ARM options). */
struct fw_watch_options {
	uint64_t max_hits;             /* 0: no budget */
	uint32_t max_hits_per_second;  /* 0: no rate limit */
	uint32_t backoff_ms;           /* 0: until the current 1-second window ends */
	uint8_t nconditions;
	struct fw_condition conditions[FW_MAX_CONDITIONS];
	uint8_t ntids; /* 0: every thread */
	pid_t tids[FW_MAX_TID_FILTER];
	uint8_t stack_depth; /* 0: no stack */
};

/* The group's thread filter lets this tid's traps through (no tids: every thread). */
static inline bool fw_options_want_tid(const struct fw_watch_options *opt, pid_t tid)
{
	if (opt->ntids == 0)
		return true;
	for (unsigned i = 0; i < opt->ntids; i++)
		if (opt->tids[i] == tid)
			return true;
	return false;
}

/* A chunk's value out of the aligned 8-byte word that holds it (little-endian,
 * zero-extended). */
static inline uint64_t fw_chunk_value(uint64_t word, uint64_t address, unsigned length)
{
	uint64_t v = word >> ((address & 7u) * 8u);

	return length < 8 ? v & ((UINT64_C(1) << (length * 8u)) - 1) : v;
}

/* "execute", "write" or "read/write" for a chunk's mode. */
const char *tracer_mode_name(unsigned mode);

struct fw_arm_result {
	uint32_t threads_total;
	uint32_t threads_armed;
	uint8_t dr_mask;
	uint8_t reserved_mask; /* DR indexes this helper ever wrote in the process */
};

/* signal_fd: a non-blocking signalfd for SIGCHLD and the terminating signals. */
void tracer_init(int signal_fd);

/* The signalfd is readable: read it, then handle every pending stop. */
void tracer_on_signals(void);

/* SIGTERM, SIGINT or SIGHUP arrived (read from the signalfd). */
bool tracer_terminate_requested(void);

/* Work deferred out of the stop handler or due on a timer: budget
 * retirement, rate-limit back-off and resume, THREADS reports, CPU follow. */
void tracer_process_pending(void);

/* Milliseconds until tracer_process_pending has timed work (-1: none). */
int tracer_next_timeout_ms(void);

/* Refuses pids the policy never allows (EPERM). */
int tracer_policy_check(pid_t pid, struct fw_error *e);

/* 0 if the chunks are valid and name distinct registers; else -1 with EINVAL. */
int tracer_check_chunks(pid_t pid, const struct fw_chunk *chunks, unsigned count,
			struct fw_error *e);

/* Whether the ptrace side is attached to pid / holds that group. */
bool tracer_has_pid(pid_t pid);
bool tracer_has_group(pid_t pid, uint64_t group);

/* 0 if the options are in range; else -1 with EINVAL in e. */
int tracer_check_options(pid_t pid, const struct fw_watch_options *opt, struct fw_error *e);

int tracer_arm(pid_t pid, uint64_t group, const struct fw_watch_options *opt,
	       const struct fw_chunk *chunks, unsigned count, struct fw_arm_result *result,
	       struct fw_error *e);

int tracer_disarm(pid_t pid, uint64_t group, struct fw_counts *counts, uint8_t *reserved_mask,
		  struct fw_error *e);

/* Clears every register and detaches from every process. */
void tracer_detach_all(void);

/* For fatal-signal handlers: only syscalls on the static tables. */
void tracer_emergency_detach(void);

#endif
