/* Where the helper's one thread runs relative to its targets (PROTOCOL.md,
 * "Where the helper runs"): the CPU policy, the thread of the latest trap,
 * and the pinning that follows it. Only the helper moves, never a target. */
#ifndef FW_CPUFOLLOW_H
#define FW_CPUFOLLOW_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

enum fw_cpu_policy {
	FW_CPU_POLICY_NONE = 0,   /* the scheduler's choice */
	FW_CPU_POLICY_FOLLOW = 1, /* pin to the CPU the last trapping thread ran on */
};

/* Records the affinity the helper started with (where it returns to). */
void fw_cpu_init(void);

void fw_cpu_set_policy(enum fw_cpu_policy policy);

/* A trap of tid (of pid) was handled. */
void fw_cpu_note_trap(pid_t pid, pid_t tid);

/* Pins or unpins as the policy wants; attached: some process is traced. */
void fw_cpu_follow(int64_t now, bool attached);

/* The earlier of due and when fw_cpu_follow has work (INT64_MIN: now, to
 * unpin); due itself when it has none. */
int64_t fw_cpu_due(int64_t due, bool attached);

#endif
