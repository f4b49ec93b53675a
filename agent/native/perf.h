/* The perf-event side of the helper (PROTOCOL.md, "Backends"): breakpoints
 * opened with perf_event_open on every thread of a process, no attach and
 * no stop; samples drained from ring buffers into hit records or counts.
 * The breakpoints belong to this process's file descriptors: whatever way
 * the helper dies, the kernel removes them and the targets run on. */
#ifndef FW_PERF_H
#define FW_PERF_H

#include "fw.h"
#include "watch.h"
#include "wire.h"

/* HELLO's perf_values. */
enum fw_perf_values {
	FW_PERF_UNAVAILABLE = 0,
	FW_PERF_VALUES_AFTER = 1, /* read from the target when the sample is drained */
	FW_PERF_VALUES_EXACT = 2, /* read in the kernel at the trap */
};

/* Probes whether this host lets the helper open breakpoint events. */
void perf_init(void);

/* --perf-buffer-kib: each CPU's ring buffer of a job that samples, in KiB:
 * a power of two pages, 64 KiB to 256 MiB. -1 when it is not. */
int perf_set_buffer_kib(unsigned long kib);
enum fw_perf_values perf_values(void);
/* Why perf is unavailable or its values are not exact; "" otherwise. */
const char *perf_note(void);

/* An fd that becomes readable when a ring buffer needs draining or a
 * watched process exited (-1 before perf_init). */
int perf_poll_fd(void);
void perf_on_ready(void);

/* Draining, counts intervals, thread rescans, rate-limit back-off. */
void perf_process_pending(void);
/* Milliseconds until perf_process_pending has timed work (-1: none). */
int perf_next_timeout_ms(void);

bool perf_has_pid(pid_t pid);
bool perf_has_group(pid_t pid, uint64_t group);

/* What only the perf backend refuses in an ARM (no perf on this host,
 * conditions, the count interval); 0, or -1 with the reason in e. */
int perf_check_arm(pid_t pid, const struct fw_watch_options *opt, bool count_only,
		   uint32_t interval_ms, struct fw_error *e);

/* ARM with backend perf, of a request the dispatcher checked (no group of
 * that id on pid). count_only: no hit records, COUNTS every interval_ms
 * (0 = 1,000). */
int perf_arm(pid_t pid, uint64_t group, const struct fw_watch_options *opt,
	     const struct fw_chunk *chunks, unsigned count, bool count_only, uint32_t interval_ms,
	     struct fw_arm_result *result, struct fw_error *e);

/* Disables, drains (a last COUNTS for counting groups) and closes the group. */
int perf_disarm(pid_t pid, uint64_t group, struct fw_counts *counts, struct fw_error *e);

/* The ptrace side saw pid exit or exec (the dispatcher says so): each of
 * its perf groups is drained and ends (GROUP_DONE) before the target is
 * reported; parked ones are closed. */
void perf_target_gone(pid_t pid, enum fw_done_reason reason);

/* Closes the events a disarmed group of pid keeps for a re-target (before
 * the ptrace side needs the process's registers). */
void perf_release_parked(pid_t pid);

/* Every group: drained, final counts reported as GROUP_DONE is not (the
 * agent asked or is gone), closed. */
void perf_close_all(void);

#endif
