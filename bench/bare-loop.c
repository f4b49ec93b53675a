/* The bare ptrace baseline: the least a stopping tracer can do per hit and
 * still report it (FACTS.md "+ GETREGS, PEEKDATA value, DR6 read/clear").
 *   bare-loop [--cpu N] -- WRITER [WRITER ARGS...]
 * Forks and execs the writer (bench/writer.c), PTRACE_SEIZEs it, arms DR0/DR7
 * for 8-byte writes on the address it prints, sends "go", and per trap does
 * waitpid -> GETREGS -> PEEKDATA -> read DR6 -> DR6 = 0 -> PTRACE_CONT; new
 * threads are armed at their first stop. --cpu N pins tracer and writer to
 * CPU N. Prints "tracing <writer pid>" once attached; at the writer's exit
 * its "done" line and then
 * "bare hits=H first_to_last_ns=E threads_armed=A cpu=N|unpinned". */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_TIDS 256

/* DR7 for slot 0: local enable, RW = 01 (write), LEN = 11 (8 bytes). */
#define DR7_L0 (1ul << 0)
#define DR7_RW0_SHIFT 16
#define DR7_LEN0_SHIFT 18
#define DR7_RW_WRITE 1ul
#define DR7_LEN_8 3ul
#define DR7_SLOT0_WRITE8 (DR7_L0 | (DR7_RW_WRITE << DR7_RW0_SHIFT) | (DR7_LEN_8 << DR7_LEN0_SHIFT))
#define DR6_SLOTS_MASK 0xful

#define DR_OFFSET(n) (offsetof(struct user, u_debugreg) + (n) * sizeof(unsigned long))

static pid_t armed[MAX_TIDS];
static int narmed;
static volatile sig_atomic_t stop_requested;

/* SIGINT/SIGTERM/SIGHUP: the loop kills the writer and reaps it, then exits. */
static void on_stop_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static void die(const char *what, long id)
{
	fprintf(stderr, "bare-loop: %s %ld: %s\n", what, id, strerror(errno));
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int is_armed(pid_t tid)
{
	for (int i = 0; i < narmed; i++)
		if (armed[i] == tid)
			return 1;
	return 0;
}

/* DR7 = 0, then the address, then DR7 (the order FACTS.md asks of new threads). */
static void arm_thread(pid_t tid, unsigned long addr)
{
	if (narmed == MAX_TIDS) {
		fprintf(stderr, "bare-loop: more than %d threads\n", MAX_TIDS);
		exit(1);
	}
	if (ptrace(PTRACE_POKEUSER, tid, (void *)DR_OFFSET(7), (void *)0) != 0)
		die("PTRACE_POKEUSER DR7=0 tid", tid);
	if (ptrace(PTRACE_POKEUSER, tid, (void *)DR_OFFSET(0), (void *)addr) != 0)
		die("PTRACE_POKEUSER DR0 tid", tid);
	if (ptrace(PTRACE_POKEUSER, tid, (void *)DR_OFFSET(7), (void *)DR7_SLOT0_WRITE8) != 0)
		die("PTRACE_POKEUSER DR7 tid", tid);
	armed[narmed++] = tid;
}

static int is_group_stop_signal(int sig)
{
	return sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU;
}

int main(int argc, char **argv)
{
	int cpu = -1, argi = 1, to_child[2], from_child[2];
	char line[256];
	unsigned long addr;
	pid_t child;
	FILE *child_out;
	uint64_t hits = 0, first_ns = 0, last_ns = 0;

	for (; argi < argc && strcmp(argv[argi], "--") != 0; argi++) {
		if (strcmp(argv[argi], "--cpu") == 0 && argi + 1 < argc) {
			cpu = atoi(argv[++argi]);
		} else {
			fprintf(stderr, "usage: bare-loop [--cpu N] -- WRITER [ARGS...]\n");
			return 2;
		}
	}
	if (argi + 1 >= argc) {
		fprintf(stderr, "usage: bare-loop [--cpu N] -- WRITER [ARGS...]\n");
		return 2;
	}
	/* The bench may die without stopping us; EXITKILL then takes the writer along. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
		die("prctl PR_SET_PDEATHSIG pid", getpid());
	if (cpu >= 0) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof set, &set) != 0)
			die("sched_setaffinity cpu", cpu);
	}
	{
		struct sigaction sa;

		memset(&sa, 0, sizeof sa);
		sa.sa_handler = on_stop_signal; /* no SA_RESTART: waitpid returns EINTR */
		sigemptyset(&sa.sa_mask);
		if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0 ||
		    sigaction(SIGHUP, &sa, NULL) != 0)
			die("sigaction pid", getpid());
	}
	if (pipe(to_child) != 0 || pipe(from_child) != 0)
		die("pipe pid", getpid());
	child = fork();
	if (child < 0)
		die("fork pid", getpid());
	if (child == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(to_child[0], STDIN_FILENO);
		dup2(from_child[1], STDOUT_FILENO);
		close(to_child[0]);
		close(to_child[1]);
		close(from_child[0]);
		close(from_child[1]);
		execv(argv[argi + 1], &argv[argi + 1]);
		fprintf(stderr, "bare-loop: exec %s: %s\n", argv[argi + 1], strerror(errno));
		_exit(127);
	}
	close(to_child[0]);
	close(from_child[1]);
	child_out = fdopen(from_child[0], "r");
	if (!child_out)
		die("fdopen pid", getpid());
	if (!fgets(line, sizeof line, child_out) || sscanf(line, "ready %*d %lx", &addr) != 1) {
		fprintf(stderr, "bare-loop: writer did not print \"ready <pid> <addr>\"\n");
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
		return 1;
	}

	if (ptrace(PTRACE_SEIZE, child, 0, (void *)(PTRACE_O_TRACECLONE | PTRACE_O_EXITKILL)) != 0)
		die("PTRACE_SEIZE pid", child);
	printf("tracing %d\n", (int)child);
	fflush(stdout);
	/* POKEUSER needs a stopped thread: interrupt, arm at that stop, resume. */
	if (ptrace(PTRACE_INTERRUPT, child, 0, 0) != 0)
		die("PTRACE_INTERRUPT pid", child);

	for (int killed = 0;;) {
		int status, sig, event;
		pid_t tid;

		if (stop_requested && !killed) {
			kill(child, SIGKILL);
			killed = 1;
		}
		tid = waitpid(-1, &status, __WALL);
		if (tid < 0) {
			if (errno == EINTR)
				continue;
			die("waitpid after pid", child);
		}
		if (WIFEXITED(status) || WIFSIGNALED(status)) {
			if (tid != child)
				continue;
			if (WIFSIGNALED(status)) {
				fprintf(stderr, "bare-loop: writer killed by signal %d\n", WTERMSIG(status));
				return 1;
			}
			break;
		}
		if (!WIFSTOPPED(status))
			continue;
		sig = WSTOPSIG(status);
		event = status >> 16;
		if (event == 0 && sig == SIGTRAP) {
			struct user_regs_struct regs;
			unsigned long value, dr6;

			if (ptrace(PTRACE_GETREGS, tid, 0, &regs) != 0)
				die("PTRACE_GETREGS tid", tid);
			errno = 0;
			value = (unsigned long)ptrace(PTRACE_PEEKDATA, tid, (void *)addr, 0);
			if (errno != 0)
				die("PTRACE_PEEKDATA tid", tid);
			errno = 0;
			dr6 = (unsigned long)ptrace(PTRACE_PEEKUSER, tid, (void *)DR_OFFSET(6), 0);
			if (errno != 0)
				die("PTRACE_PEEKUSER DR6 tid", tid);
			(void)value;
			if (dr6 & DR6_SLOTS_MASK) {
				if (ptrace(PTRACE_POKEUSER, tid, (void *)DR_OFFSET(6), (void *)0) != 0)
					die("PTRACE_POKEUSER DR6=0 tid", tid);
				last_ns = now_ns();
				if (hits++ == 0)
					first_ns = last_ns;
				sig = 0;
			}
			/* Not ours: a SIGTRAP of the program's own, handed back. */
			if (ptrace(PTRACE_CONT, tid, 0, (void *)(long)sig) != 0)
				die("PTRACE_CONT tid", tid);
		} else if (event == PTRACE_EVENT_STOP) {
			if (is_group_stop_signal(sig)) {
				if (ptrace(PTRACE_LISTEN, tid, 0, 0) != 0)
					die("PTRACE_LISTEN tid", tid);
				continue;
			}
			/* Our interrupt of the leader, or a new thread's first stop. */
			if (!is_armed(tid)) {
				arm_thread(tid, addr);
				/* The leader is armed: only now may the writer start. */
				if (tid == child && write(to_child[1], "go\n", 3) != 3)
					die("write go to pid", child);
			}
			if (ptrace(PTRACE_CONT, tid, 0, 0) != 0)
				die("PTRACE_CONT tid", tid);
		} else if (event != 0) {
			/* PTRACE_EVENT_CLONE: the new thread is armed at its own first stop. */
			if (ptrace(PTRACE_CONT, tid, 0, 0) != 0)
				die("PTRACE_CONT tid", tid);
		} else {
			if (ptrace(PTRACE_CONT, tid, 0, (void *)(long)sig) != 0)
				die("PTRACE_CONT tid", tid);
		}
	}
	close(to_child[1]);
	while (fgets(line, sizeof line, child_out))
		fputs(line, stdout);
	if (cpu >= 0)
		printf("bare hits=%llu first_to_last_ns=%llu threads_armed=%d cpu=%d\n", (unsigned long long)hits,
		       (unsigned long long)(last_ns - first_ns), narmed, cpu);
	else
		printf("bare hits=%llu first_to_last_ns=%llu threads_armed=%d cpu=unpinned\n",
		       (unsigned long long)hits, (unsigned long long)(last_ns - first_ns), narmed);
	return 0;
}
