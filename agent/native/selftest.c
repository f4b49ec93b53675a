/* The start-up trap self-test (selftest.h). ptrace: a child of ours stops,
 * gets DR0 on a word it then writes; we count the SIGTRAP stops DR6 blames
 * on slot 0. perf: a breakpoint counter on a word of ours, written here.
 * The cost of a trap is the time of the watched writes less the same writes
 * unwatched, over the traps seen. */
#include "selftest.h"
#include "dregs.h"
#include "fw.h"
#include "procfs.h"

#include <errno.h>
#include <linux/hw_breakpoint.h>
#include <linux/perf_event.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/time.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Past this the ptrace probe child is killed: nothing here may hang a start.
 * A probe cut short (before its first stop, or during its writes, whether
 * or not some trapped) ran on a machine too busy, or too slow (an emulated
 * one), to finish in time, which says nothing about the traps: it runs once
 * more with the longer deadline. A host without traps is never cut short:
 * its writes run through untrapped. */
#define PROBE_DEADLINE_US 50000
#define PROBE_RETRY_DEADLINE_US 2000000

#define NO_TRAPS_REASON "this host does not deliver debug-register traps (hypervisor)"

static volatile uint64_t probe_word __attribute__((aligned(8)));

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void probe_writes(void)
{
	for (uint32_t i = 0; i < FW_SELFTEST_WRITES; i++)
		probe_word = probe_word + 1;
}

/* Time of the probe writes with nothing watching: the baseline of the cost. */
static int64_t unwatched_ns(void)
{
	int64_t t0 = now_ns();

	probe_writes();
	return now_ns() - t0;
}

const char *selftest_delivery_name(enum fw_trap_delivery d)
{
	switch (d) {
	case FW_TRAPS_DELIVERED:
		return "delivered";
	case FW_TRAPS_NOT_DELIVERED:
		return "not delivered";
	default:
		return "not run";
	}
}

/* Fills delivery, ns_per_trap and detail from writes and traps. */
static void conclude(struct fw_trap_check *out, const char *armed, int64_t watched_ns, int64_t base_ns)
{
	out->writes = FW_SELFTEST_WRITES;
	if (out->traps == out->writes) {
		int64_t per = (watched_ns - base_ns) / (int64_t)out->traps;

		out->delivery = FW_TRAPS_DELIVERED;
		out->ns_per_trap = per > 0 ? (uint32_t)per : 1;
		snprintf(out->detail, sizeof out->detail, "%u of %u probe writes trapped, %.1f µs per trap",
			 out->traps, out->writes, out->ns_per_trap / 1000.0);
		return;
	}
	out->delivery = FW_TRAPS_NOT_DELIVERED;
	out->ns_per_trap = 0;
	if (out->traps == 0)
		snprintf(out->detail, sizeof out->detail, "%s, 0 of %u probe writes trapped: %s", armed,
			 out->writes, NO_TRAPS_REASON);
	else
		snprintf(out->detail, sizeof out->detail,
			 "%s, %u of %u probe writes trapped: traps are delivered unreliably", armed, out->traps,
			 out->writes);
}

static void not_run(struct fw_trap_check *out, const char *what, int err)
{
	memset(out, 0, sizeof *out);
	out->delivery = FW_TRAPS_NOT_RUN;
	snprintf(out->detail, sizeof out->detail, "%s: %s (%s): the probe could not run", what,
		 fw_errno_name(err), strerror(err));
}

static int poke_user(pid_t pid, size_t offset, uint64_t value)
{
	return ptrace(PTRACE_POKEUSER, pid, (void *)offset, (void *)(uintptr_t)value) == -1 ? -1 : 0;
}

static volatile pid_t probe_child;

static void on_probe_deadline(int sig)
{
	(void)sig;
	if (probe_child > 0)
		kill(probe_child, SIGKILL);
}

/* A timer that SIGKILLs the probe child at the deadline: every wait below
 * blocks (a polled wait would add its period to each trap's cost). */
static void probe_deadline(bool on, long deadline_us, struct sigaction *saved)
{
	struct itimerval t = { { 0, 0 }, { on ? deadline_us / 1000000 : 0, on ? deadline_us % 1000000 : 0 } };

	if (on) {
		struct sigaction sa;

		memset(&sa, 0, sizeof sa);
		sa.sa_handler = on_probe_deadline;
		sigemptyset(&sa.sa_mask);
		sigaction(SIGALRM, &sa, saved);
		setitimer(ITIMER_REAL, &t, NULL);
	} else {
		setitimer(ITIMER_REAL, &t, NULL);
		sigaction(SIGALRM, saved, NULL);
		probe_child = 0;
	}
}

/* The child's next state change; EINTR (the deadline's signal) waits on for the kill. */
static pid_t wait_child(pid_t pid, int *status)
{
	pid_t r;

	do
		r = waitpid(pid, status, __WALL);
	while (r == -1 && errno == EINTR);
	return r;
}

/* One probe; true when the deadline cut it short. */
static bool ptrace_probe(struct fw_trap_check *out, long deadline_us)
{
	struct sigaction saved;
	struct dr_mirror m;
	int64_t base, t0, t1;
	int status = 0, err;
	pid_t pid;

	memset(out, 0, sizeof *out);
	base = unwatched_ns();
	pid = fork();
	if (pid < 0) {
		not_run(out, "fork", errno);
		return false;
	}
	if (pid == 0) {
		/* The probe child: traced by its parent, stops, writes, exits. */
		if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) == -1)
			_exit(2);
		raise(SIGSTOP);
		probe_writes();
		_exit(0);
	}
	probe_child = pid;
	probe_deadline(true, deadline_us, &saved);
	if (wait_child(pid, &status) != pid || !WIFSTOPPED(status)) {
		err = WIFEXITED(status) && WEXITSTATUS(status) == 2 ? EPERM : ETIMEDOUT;
		kill(pid, SIGKILL);
		if (!WIFEXITED(status) && !WIFSIGNALED(status))
			wait_child(pid, &status);
		probe_deadline(false, 0, &saved);
		not_run(out, "ptrace(PTRACE_TRACEME) of the probe child", err);
		return err == ETIMEDOUT;
	}
	/* Dies with us; its registers die with it. */
	ptrace(PTRACE_SETOPTIONS, pid, NULL, (void *)(uintptr_t)PTRACE_O_EXITKILL);
	memset(&m, 0, sizeof m);
	m.slot[0] = (struct dr_slot){ .used = true, .mode = DR_MODE_WRITE, .length = 8,
				      .address = (uint64_t)(uintptr_t)&probe_word };
	if (poke_user(pid, offsetof(struct user, u_debugreg[0]), m.slot[0].address) == -1 ||
	    poke_user(pid, offsetof(struct user, u_debugreg[DR_CONTROL]), dr7_encode(&m)) == -1) {
		err = errno;
		kill(pid, SIGKILL);
		wait_child(pid, &status);
		probe_deadline(false, 0, &saved);
		not_run(out, "arming DR0 of the probe child", err);
		return err == ESRCH; /* the deadline killed it while stopped */
	}
	t0 = now_ns();
	ptrace(PTRACE_CONT, pid, NULL, NULL);
	while (wait_child(pid, &status) == pid && WIFSTOPPED(status)) {
		int sig = WSTOPSIG(status);

		if (sig == SIGTRAP) {
			long dr6 = ptrace(PTRACE_PEEKUSER, pid,
					  (void *)offsetof(struct user, u_debugreg[DR_STATUS]), NULL);

			if (dr6 != -1 && (dr6 & (long)DR6_HIT(0)))
				out->traps++;
			poke_user(pid, offsetof(struct user, u_debugreg[DR_STATUS]), 0);
			sig = 0;
		}
		ptrace(PTRACE_CONT, pid, NULL, (void *)(uintptr_t)sig);
	}
	t1 = now_ns();
	probe_deadline(false, 0, &saved);
	conclude(out, "DR0 armed", t1 - t0, base);
	return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

void selftest_ptrace(struct fw_trap_check *out)
{
	if (ptrace_probe(out, PROBE_DEADLINE_US))
		ptrace_probe(out, PROBE_RETRY_DEADLINE_US);
}

void selftest_perf(struct fw_trap_check *out)
{
	struct perf_event_attr a;
	int64_t base, t0, t1;
	uint64_t count = 0;
	int fd;

	memset(out, 0, sizeof *out);
	memset(&a, 0, sizeof a);
	a.type = PERF_TYPE_BREAKPOINT;
	a.size = sizeof a;
	a.bp_type = HW_BREAKPOINT_W;
	a.bp_addr = (uint64_t)(uintptr_t)&probe_word;
	a.bp_len = HW_BREAKPOINT_LEN_8;
	a.exclude_kernel = 1;
	a.exclude_hv = 1;
	a.disabled = 1;
	fd = (int)syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
	if (fd < 0) {
		int err = errno;
		char what[96];
		int paranoid;

		if (fw_perf_paranoid(&paranoid) == 0 && (err == EACCES || err == EPERM))
			snprintf(what, sizeof what, "perf_event_open (perf_event_paranoid %d)", paranoid);
		else
			snprintf(what, sizeof what, "perf_event_open");
		not_run(out, what, err);
		return;
	}
	base = unwatched_ns();
	if (ioctl(fd, PERF_EVENT_IOC_ENABLE, 0) == -1) {
		int err = errno;

		close(fd);
		not_run(out, "enabling the perf breakpoint", err);
		return;
	}
	t0 = now_ns();
	probe_writes();
	t1 = now_ns();
	ioctl(fd, PERF_EVENT_IOC_DISABLE, 0);
	if (read(fd, &count, sizeof count) != (ssize_t)sizeof count)
		count = 0;
	close(fd);
	out->traps = count > FW_SELFTEST_WRITES ? FW_SELFTEST_WRITES : (uint32_t)count;
	conclude(out, "perf breakpoint opened", t1 - t0, base);
}
