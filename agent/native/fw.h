/* Shared definitions of fleetwatch-helper: version, limits and the one
 * structured error record every failing operation fills in. */
#ifndef FW_H
#define FW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define FW_HELPER_VERSION "0.4.0"
#define FW_PROTOCOL_VERSION 4u
#define FW_SLOTS_PER_THREAD 4u

/* Fixed-size tables keep the hot path free of malloc. */
#define FW_MAX_PROCS 64
#define FW_MAX_THREADS 4096
/* Watch groups per process: more than registers, since groups watching the
 * same chunk share one register. */
#define FW_MAX_GROUPS 16

/* Per-group watch options (ARM). */
#define FW_MAX_CONDITIONS 4
#define FW_MAX_TID_FILTER 16
#define FW_MAX_STACK_DEPTH 64
/* Bytes of a thread's stack copied from rsp for the unwinder. */
#define FW_STACK_COPY_MAX (32u * 1024u)

/* How long stop-the-world may wait for every thread of one process. */
#define FW_STOP_DEADLINE_MS 5000

/* What went wrong: an errno plus a sentence naming what was attempted. */
struct fw_error {
	int err;
	char msg[512];
};

void fw_error_set(struct fw_error *e, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* "ESRCH", "EPERM", ... for an errno value (never NULL). */
const char *fw_errno_name(int err);

/* Milliseconds on CLOCK_MONOTONIC. */
int64_t fw_now_ms(void);

/* poll()'s timeout for work due at due (fw_now_ms time; INT64_MAX: none,
 * -1): 0 once due, else at most a minute (a later wake-up looks again). */
static inline int fw_timeout_ms(int64_t due, int64_t now)
{
	if (due == INT64_MAX)
		return -1;
	return due <= now ? 0 : (int)(due - now > 60000 ? 60000 : due - now);
}

/* Nanoseconds on CLOCK_MONOTONIC (the clock of perf records). */
uint64_t fw_mono_ns(void);

/* Nanoseconds on CLOCK_REALTIME (the clock of hit records and events). */
uint64_t fw_realtime_ns(void);

#endif
