/* Where should the tracer run? A bare ptrace watchpoint loop (trap ->
 * GETREGS, PEEKDATA, DR6 read and clear -> CONT, like the helper's hot path)
 * against a forked child writing a global N times, under CPU policies:
 *   none          nobody pinned (the scheduler's choice)
 *   follow        tracer re-pins itself to the CPU the child last ran on
 *                 (/proc/PID/stat field 39) every 50 ms; child unpinned
 *   same          both pinned to CPU 0 (the floor of the ptrace path)
 *   cross         child on CPU 0, tracer on CPU 1
 *   gcc -O2 -o bench/helper-affinity bench/helper-affinity.c
 *   bench/helper-affinity [N] [policy...]
 * Prints one line per policy: hits, seconds, hits/s, us/hit. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t watched;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pin(pid_t pid, int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(pid, sizeof set, &set) == -1) {
		perror("sched_setaffinity");
		exit(1);
	}
}

static int last_cpu(pid_t pid)
{
	char path[64], buf[1024];
	int fd, field = 1;
	ssize_t n;
	char *p;

	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	p = strrchr(buf, ')');
	if (!p)
		return -1;
	field = 2; /* p points at the end of field 2 (comm) */
	for (; *p && field < 39; p++)
		if (*p == ' ')
			field++;
	return atoi(p);
}

static void poke(pid_t pid, int index, unsigned long value)
{
	if (ptrace(PTRACE_POKEUSER, pid, offsetof(struct user, u_debugreg[index]), value) == -1) {
		perror("POKEUSER");
		exit(1);
	}
}

static void run(const char *policy, long n)
{
	int status, ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
	long hits = 0;
	double start, end, next_check;
	int cur = -1;
	cpu_set_t all;
	pid_t child;

	CPU_ZERO(&all);
	for (int c = 0; c < ncpu; c++)
		CPU_SET(c, &all);
	sched_setaffinity(0, sizeof all, &all);
	child = fork();
	if (child == 0) {
		ptrace(PTRACE_TRACEME, 0, NULL, NULL);
		raise(SIGSTOP);
		for (long i = 1; i <= n; i++)
			watched = (uint64_t)i;
		_exit(0);
	}
	waitpid(child, &status, 0);
	if (strcmp(policy, "same") == 0) {
		pin(child, 0);
		pin(0, 0);
	} else if (strcmp(policy, "cross") == 0) {
		pin(child, 0);
		pin(0, ncpu > 1 ? 1 : 0);
	}
	poke(child, 0, (unsigned long)&watched);
	poke(child, 7, 1ul | (1ul << 16) | (2ul << 18)); /* L0, RW=01 write, LEN=10 (8 bytes) */
	start = now_s();
	next_check = start;
	ptrace(PTRACE_CONT, child, NULL, NULL);
	for (;;) {
		struct user_regs_struct regs;
		int sig = 0;

		if (waitpid(child, &status, 0) != child || !WIFSTOPPED(status))
			break;
		if (WSTOPSIG(status) == SIGTRAP) {
			ptrace(PTRACE_GETREGS, child, NULL, &regs);
			errno = 0;
			ptrace(PTRACE_PEEKDATA, child, (void *)&watched, NULL);
			ptrace(PTRACE_PEEKUSER, child, offsetof(struct user, u_debugreg[6]), NULL);
			poke(child, 6, 0);
			hits++;
		} else {
			sig = WSTOPSIG(status);
		}
		if (strcmp(policy, "follow") == 0 && now_s() >= next_check) {
			int c = last_cpu(child);

			if (c >= 0 && c != cur) {
				pin(0, c);
				cur = c;
			}
			next_check = now_s() + 0.05;
		}
		ptrace(PTRACE_CONT, child, NULL, (void *)(long)sig);
	}
	end = now_s();
	printf("%-7s %8ld hits %6.2f s %8.0f hits/s %6.1f us/hit\n", policy, hits, end - start,
	       (double)hits / (end - start), (end - start) * 1e6 / (double)hits);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 200000;
	static const char *all[] = { "none", "follow", "same", "cross" };

	if (argc > 2) {
		for (int i = 2; i < argc; i++)
			run(argv[i], n);
	} else {
		for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
			run(all[i], n);
	}
	return 0;
}
