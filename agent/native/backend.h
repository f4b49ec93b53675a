/* The dispatcher between the protocol and the two backends (PROTOCOL.md,
 * "Backends"): which backend holds each (pid, group), the refusal of a
 * group armed twice, the release of what perf keeps parked before ptrace
 * writes a process's registers, and the one report of a target's exit or
 * exec, sent once no backend watches it any more. */
#ifndef FW_BACKEND_H
#define FW_BACKEND_H

#include "fw.h"
#include "watch.h"
#include "wire.h"

/* ARM's backend byte. */
enum fw_backend {
	FW_BACKEND_PTRACE = 0,
	FW_BACKEND_PERF = 1,
};

/* One ARM, as read from the wire. */
struct fw_arm_request {
	pid_t pid;
	uint64_t group;
	enum fw_backend backend;
	bool count_only;      /* perf: COUNTS, no hit records */
	uint32_t interval_ms; /* perf, count only: 0 = the default */
	struct fw_watch_options opt;
	unsigned count;
	struct fw_chunk chunks[FW_SLOTS_PER_THREAD];
};

/* Checks the request and arms it on its backend: EEXIST if either backend
 * holds the group on that pid. */
int backend_arm(const struct fw_arm_request *r, struct fw_arm_result *result, struct fw_error *e);

/* Disarms the group on the backend that holds it; reserved_mask is the
 * ptrace side's (0 for perf). */
int backend_disarm(pid_t pid, uint64_t group, struct fw_counts *counts, uint8_t *reserved_mask,
		   struct fw_error *e);

/* Every group of both backends ends (SHUTDOWN, or the helper's way out). */
void backend_close_all(void);

/* A backend saw pid exit, after its own groups of pid sent GROUP_DONE.
 * wait_status: what the caller reaped (ptrace); NULL when it reaps nothing
 * (perf): the status is read from /proc while the process is a zombie
 * that started at start_time. */
void backend_target_exited(enum fw_backend from, pid_t pid, const int *wait_status,
			   uint64_t start_time);

/* A backend saw pid exec, after its own groups of pid sent GROUP_DONE. */
void backend_target_exec(enum fw_backend from, pid_t pid);

#endif
