/* CPU policy follow (cpufollow.h): a trap handled on the target's own CPU
 * costs about a third of a cross-CPU one (FACTS.md). */
#include "cpufollow.h"

#include "procfs.h"
#include "wire.h"

#include <errno.h>
#include <sched.h>
#include <string.h>

#define CPU_FOLLOW_CHECK_MS 50

static enum fw_cpu_policy cpu_policy = FW_CPU_POLICY_FOLLOW;
static int cpu_pinned = -1; /* CPU this thread is pinned to by the policy, or -1 */
static cpu_set_t cpu_initial;
static pid_t cpu_last_pid, cpu_last_tid; /* the thread of the latest trap */
static uint64_t cpu_traps;                /* traps since the last check */
static int64_t cpu_next_check_ms;

void fw_cpu_init(void)
{
	if (sched_getaffinity(0, sizeof cpu_initial, &cpu_initial) == -1)
		CPU_ZERO(&cpu_initial);
}

void fw_cpu_set_policy(enum fw_cpu_policy policy)
{
	cpu_policy = policy;
}

void fw_cpu_note_trap(pid_t pid, pid_t tid)
{
	cpu_last_pid = pid;
	cpu_last_tid = tid;
	cpu_traps++;
}

static void cpu_pin(int cpu)
{
	cpu_set_t set;

	if (cpu < 0) {
		set = cpu_initial;
	} else {
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
	}
	if (sched_setaffinity(0, sizeof set, &set) == -1) {
		/* Give the policy up rather than retry (and warn) every check. */
		out_log(FW_LOG_WARNING, "sched_setaffinity(cpu %d): %s; --cpu-policy follow disabled",
			cpu, strerror(errno));
		cpu_policy = FW_CPU_POLICY_NONE;
		cpu_pinned = -1;
		return;
	}
	cpu_pinned = cpu;
}

/* Policy follow: run on the CPU the thread of the latest trap last ran on,
 * re-checked every CPU_FOLLOW_CHECK_MS while traps come. With nothing
 * attached, back to the initial affinity. */
void fw_cpu_follow(int64_t now, bool attached)
{
	int cpu;

	if (cpu_policy != FW_CPU_POLICY_FOLLOW && cpu_pinned < 0)
		return;
	if (!attached) {
		if (cpu_pinned >= 0)
			cpu_pin(-1);
		cpu_traps = 0;
		return;
	}
	if (cpu_policy != FW_CPU_POLICY_FOLLOW || cpu_traps == 0 || now < cpu_next_check_ms)
		return;
	cpu_traps = 0;
	cpu_next_check_ms = now + CPU_FOLLOW_CHECK_MS;
	cpu = fw_thread_last_cpu(cpu_last_pid, cpu_last_tid);
	if (cpu < 0 || cpu == cpu_pinned || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &cpu_initial))
		return;
	cpu_pin(cpu);
}

int64_t fw_cpu_due(int64_t due, bool attached)
{
	if (cpu_policy == FW_CPU_POLICY_FOLLOW && cpu_traps > 0 && cpu_next_check_ms < due)
		due = cpu_next_check_ms;
	if (cpu_pinned >= 0 && due == INT64_MAX && !attached)
		return INT64_MIN; /* unpin */
	return due;
}
