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

struct fw_arm_result {
	uint32_t threads_total;
	uint32_t threads_armed;
	uint8_t dr_mask;
};

/* signal_fd: a non-blocking signalfd for SIGCHLD and the terminating signals. */
void tracer_init(int signal_fd);

/* The signalfd is readable: read it, then handle every pending stop. */
void tracer_on_signals(void);

/* SIGTERM, SIGINT or SIGHUP arrived (read from the signalfd). */
bool tracer_terminate_requested(void);

/* Work deferred out of the stop handler (budget retirement). */
void tracer_process_pending(void);

/* Refuses pids the policy never allows (EPERM). */
int tracer_policy_check(pid_t pid, struct fw_error *e);

int tracer_arm(pid_t pid, uint64_t group, uint64_t max_hits, const struct fw_chunk *chunks,
	       unsigned count, struct fw_arm_result *result, struct fw_error *e);

int tracer_disarm(pid_t pid, uint64_t group, struct fw_counts *counts, struct fw_error *e);

/* Clears every register and detaches from every process. */
void tracer_detach_all(void);

/* For fatal-signal handlers: only syscalls on the static tables. */
void tracer_emergency_detach(void);

#endif
