/* Keeps the guest kernel's perf_sched_events static key enabled for the
 * emulated machine's whole life (scripts/trap-vm.sh).
 *
 * The kernel patches the scheduler's code whenever the first per-task perf
 * event opens or the last one closes (breakpoints, ptrace's included). Under
 * QEMU's multi-threaded TCG another vCPU can still run the old translation of
 * that code and hit the int3 the patching left there after it is gone:
 * "Oops: int3" in __schedule, a kernel panic. One task-bound software event
 * opened while only the boot CPU is online, and held, means the key never
 * changes again while the tests run.
 *
 * Prints "held" once the event is open, then sleeps until killed. */
#include <linux/perf_event.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void)
{
	struct perf_event_attr a;

	memset(&a, 0, sizeof a);
	a.type = PERF_TYPE_SOFTWARE;
	a.size = sizeof a;
	a.config = PERF_COUNT_SW_DUMMY;
	a.disabled = 1;
	if (syscall(SYS_perf_event_open, &a, 0, -1, -1, 0) < 0) {
		perror("trap-vm-hold: perf_event_open");
		return 1;
	}
	printf("held\n");
	fflush(stdout);
	for (;;)
		pause();
}
