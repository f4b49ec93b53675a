/* The ptrace side of the helper: which processes and threads are attached,
 * what each process's debug registers should hold, and the operations that
 * change that (arm, disarm, budget retirement, detach). */
#ifndef FW_TRACER_H
#define FW_TRACER_H

#include "fw.h"
#include "watch.h"
#include "wire.h"

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

/* Whether the ptrace side is attached to pid / holds that group. */
bool tracer_has_pid(pid_t pid);
bool tracer_has_group(pid_t pid, uint64_t group);

/* ARM with backend ptrace, of a request the dispatcher checked (no group of
 * that id on pid). */
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
