/* fleetwatch-helper: owns the debug registers of the processes the agent
 * names. One thread, one poll() loop over stdin (requests) and a signalfd
 * (tracee stops, termination). Every way out disarms and detaches first. */
#include "backend.h"
#include "cpufollow.h"
#include "fw.h"
#include "perf.h"
#include "resolve.h"
#include "selftest.h"
#include "tracer.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <unistd.h>

#define IN_CAPACITY (FW_FRAME_MAX + 65536u)
#define NAME_MAX_BYTES 1024

static uint8_t in_buf[IN_CAPACITY];
static size_t in_len;
static bool stdin_closed;
static bool shutdown_requested;

static const int fatal_signals[] = { SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL };
static char alt_stack[64 * 1024];

static void on_fatal_signal(int sig)
{
	tracer_emergency_detach();
	raise(sig); /* SA_RESETHAND: the default action now */
}

static int install_fatal_handlers(void)
{
	stack_t ss = { .ss_sp = alt_stack, .ss_size = sizeof alt_stack, .ss_flags = 0 };
	struct sigaction sa;

	if (sigaltstack(&ss, NULL) == -1)
		return -1;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_fatal_signal;
	sa.sa_flags = SA_ONSTACK | SA_RESETHAND | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof fatal_signals / sizeof fatal_signals[0]; i++)
		if (sigaction(fatal_signals[i], &sa, NULL) == -1)
			return -1;
	return 0;
}

/* SIGCHLD and the terminating signals arrive through a signalfd. */
static int setup_signals(void)
{
	sigset_t set;
	int fd;

	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	if (sigprocmask(SIG_BLOCK, &set, NULL) == -1)
		return -1;
	fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (fd < 0)
		return -1;
	/* A vanished agent shows as EPIPE from write(), not a signal. */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		return -1;
	return fd;
}

/* The trap self-test of each backend, ptrace first (HELLO's order). */
static struct fw_trap_check trap_checks[2];

static void run_selftest(void)
{
	selftest_ptrace(&trap_checks[0]);
	selftest_perf(&trap_checks[1]);
}

/* --self-test: one line per backend; 0 when every backend that could be
 * probed delivered and at least one did, 1 otherwise. */
static int print_selftest(void)
{
	static const char *const names[2] = { "ptrace", "perf" };
	bool any = false, all = true;

	run_selftest();
	for (int i = 0; i < 2; i++) {
		const struct fw_trap_check *c = &trap_checks[i];

		printf("%s: %s: %s\n", names[i], selftest_delivery_name(c->delivery), c->detail);
		any |= c->delivery == FW_TRAPS_DELIVERED;
		all &= c->delivery != FW_TRAPS_NOT_DELIVERED;
	}
	return any && all ? 0 : 1;
}

static void send_hello(void)
{
	out_frame_begin(FW_MSG_HELLO, 0);
	out_u32(FW_PROTOCOL_VERSION);
	out_u32(FW_SLOTS_PER_THREAD);
	out_u32(1u | (perf_values() != FW_PERF_UNAVAILABLE ? 2u : 0u));
	out_u8((uint8_t)perf_values());
	out_pad(3);
	out_str(FW_HELPER_VERSION);
	out_str(perf_note());
	for (int i = 0; i < 2; i++) {
		out_u8((uint8_t)trap_checks[i].delivery);
		out_pad(3);
		out_u32(trap_checks[i].writes);
		out_u32(trap_checks[i].traps);
		out_u32(trap_checks[i].ns_per_trap);
		out_str(trap_checks[i].detail);
	}
	out_frame_end();
	out_flush();
}

static void malformed(uint32_t request_id, const char *what)
{
	struct fw_error e;

	fw_error_set(&e, EINVAL, "malformed %s request", what);
	out_error(request_id, &e);
}

static void handle_resolve(uint32_t id, struct fw_reader *r)
{
	static struct fw_resolved res;
	char name[NAME_MAX_BYTES];
	struct fw_error e;
	pid_t pid = (pid_t)rd_u32(r);
	uint64_t offset = rd_u64(r);

	rd_str(r, name, sizeof name);
	if (r->bad) {
		malformed(id, "RESOLVE");
		return;
	}
	if (fw_resolve(pid, name, offset, &res, &e) == -1) {
		out_error(id, &e);
		return;
	}
	out_frame_begin(FW_MSG_RESOLVED, id);
	out_u64(res.address);
	out_u64(res.size);
	out_str(res.module);
	out_str(res.symbol);
	out_frame_end();
}

static void handle_arm(uint32_t id, struct fw_reader *r)
{
	struct fw_arm_request req;
	struct fw_watch_options *opt = &req.opt;
	struct fw_chunk *chunks = req.chunks;
	struct fw_arm_result res;
	struct fw_error e;
	pid_t pid;
	unsigned count, backend, flags;

	memset(&req, 0, sizeof req);
	pid = req.pid = (pid_t)rd_u32(r);
	req.group = rd_u64(r);
	opt->max_hits = rd_u64(r);
	opt->max_hits_per_second = rd_u32(r);
	opt->backoff_ms = rd_u32(r);
	count = req.count = rd_u8(r);
	opt->nconditions = rd_u8(r);
	opt->ntids = rd_u8(r);
	opt->stack_depth = rd_u8(r);
	backend = rd_u8(r);
	flags = rd_u8(r);
	rd_skip(r, 2);
	req.interval_ms = rd_u32(r);
	if (!r->bad && (backend > FW_BACKEND_PERF || (flags & ~1u) != 0)) {
		fw_error_set(&e, EINVAL, "ARM pid %d: unknown backend %u or flags 0x%x", (int)pid,
			     backend, flags);
		out_error(id, &e);
		return;
	}
	if (!r->bad && (flags & 1u) && backend != FW_BACKEND_PERF) {
		fw_error_set(&e, EINVAL,
			     "ARM pid %d: counting only needs the perf backend (ptrace stops the target at every trap)",
			     (int)pid);
		out_error(id, &e);
		return;
	}
	/* Bound the arrays before reading them; the arm checks the rest. */
	if (!r->bad && fw_check_chunk_count(pid, count, &e) == -1) {
		out_error(id, &e);
		return;
	}
	if (!r->bad && (opt->nconditions > FW_MAX_CONDITIONS || opt->ntids > FW_MAX_TID_FILTER)) {
		fw_check_options(pid, opt, &e);
		out_error(id, &e);
		return;
	}
	for (unsigned i = 0; i < count && !r->bad; i++) {
		chunks[i].dr = rd_u8(r);
		chunks[i].mode = rd_u8(r);
		chunks[i].length = rd_u8(r);
		rd_skip(r, 1);
		chunks[i].address = rd_u64(r);
	}
	for (unsigned i = 0; i < opt->nconditions && !r->bad; i++) {
		opt->conditions[i].op = rd_u8(r);
		rd_skip(r, 7);
		opt->conditions[i].value = rd_u64(r);
	}
	for (unsigned i = 0; i < opt->ntids && !r->bad; i++)
		opt->tids[i] = (pid_t)rd_u32(r);
	if (r->bad || r->off != r->len) {
		malformed(id, "ARM");
		return;
	}
	req.backend = (enum fw_backend)backend;
	req.count_only = (flags & 1u) != 0;
	if (backend_arm(&req, &res, &e) == -1) {
		out_error(id, &e);
		return;
	}
	out_frame_begin(FW_MSG_ARMED, id);
	out_u32(res.threads_total);
	out_u32(res.threads_armed);
	out_u8(res.dr_mask);
	out_u8(res.reserved_mask);
	out_pad(2);
	out_frame_end();
}

static void handle_disarm(uint32_t id, struct fw_reader *r)
{
	struct fw_counts c;
	struct fw_error e;
	pid_t pid = (pid_t)rd_u32(r);
	uint64_t group = rd_u64(r);
	uint8_t reserved = 0;

	if (r->bad) {
		malformed(id, "DISARM");
		return;
	}
	memset(&c, 0, sizeof c);
	if (backend_disarm(pid, group, &c, &reserved, &e) == -1) {
		out_error(id, &e);
		return;
	}
	out_frame_begin(FW_MSG_DISARMED, id);
	out_u64(c.trapped);
	out_u64(c.delivered);
	out_u64(c.suppressed);
	out_u64(c.filtered);
	out_u64(c.lost);
	out_u8(reserved);
	out_pad(7);
	out_frame_end();
}

static void handle_request(uint16_t type, uint32_t id, struct fw_reader *r)
{
	struct fw_error e;

	switch (type) {
	case FW_MSG_RESOLVE:
		handle_resolve(id, r);
		break;
	case FW_MSG_ARM:
		handle_arm(id, r);
		break;
	case FW_MSG_DISARM:
		handle_disarm(id, r);
		break;
	case FW_MSG_SHUTDOWN:
		backend_close_all();
		out_frame_begin(FW_MSG_SHUTDOWN_OK, id);
		out_frame_end();
		shutdown_requested = true;
		break;
	default:
		fw_error_set(&e, EINVAL, "unknown request type 0x%04x", type);
		out_error(id, &e);
		break;
	}
	out_flush();
}

/* Reads what stdin has and handles every complete frame. -1: protocol broken. */
static int read_requests(void)
{
	ssize_t n = read(STDIN_FILENO, in_buf + in_len, sizeof in_buf - in_len);
	size_t off = 0;

	if (n < 0)
		return errno == EINTR || errno == EAGAIN ? 0 : -1;
	if (n == 0) {
		stdin_closed = true;
		return 0;
	}
	in_len += (size_t)n;
	while (in_len - off >= FW_FRAME_HEADER && !shutdown_requested) {
		const uint8_t *h = in_buf + off;
		uint32_t len = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 |
			       (uint32_t)h[3] << 24;
		uint16_t type = (uint16_t)(h[4] | h[5] << 8);
		uint32_t id = (uint32_t)h[8] | (uint32_t)h[9] << 8 | (uint32_t)h[10] << 16 |
			      (uint32_t)h[11] << 24;
		struct fw_reader r;

		if (len < FW_FRAME_HEADER || len > FW_FRAME_MAX) {
			out_log(FW_LOG_ERROR, "protocol error: frame length %u", len);
			return -1;
		}
		if (in_len - off < len)
			break;
		r = (struct fw_reader){ .p = h + FW_FRAME_HEADER, .len = len - FW_FRAME_HEADER };
		handle_request(type, id, &r);
		off += len;
	}
	memmove(in_buf, in_buf + off, in_len - off);
	in_len -= off;
	return 0;
}

/* The OOM killer's SIGKILL is the one death that cannot disarm first: opt out
 * of it (needs CAP_SYS_RESOURCE). A message if refused, NULL if done. */
static const char *protect_from_oom(char *msg, size_t cap)
{
	int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);

	if (fd < 0 || write(fd, "-1000", 5) != 5) {
		snprintf(msg, cap,
			 "cannot set /proc/self/oom_score_adj to -1000 (%s): the OOM killer may SIGKILL this helper, leaving targets armed",
			 strerror(errno));
		if (fd >= 0)
			close(fd);
		return msg;
	}
	close(fd);
	return NULL;
}

static int usage(const char *argv0)
{
	fprintf(stderr,
		"usage: %s [--version] [--self-test] [--cpu-policy follow|none] [--perf-buffer-kib N]  (speaks the protocol on stdin/stdout)\n",
		argv0);
	return 2;
}

int main(int argc, char **argv)
{
	pid_t parent = getppid();
	struct pollfd fds[3];
	int sfd, exit_code = 0;
	char oom_msg[256];
	const char *oom_refused;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--version") == 0) {
			printf("fleetwatch-helper %s (protocol %u)\n", FW_HELPER_VERSION,
			       FW_PROTOCOL_VERSION);
			return 0;
		}
		if (strcmp(argv[i], "--self-test") == 0 && argc == 2)
			return print_selftest();
		if (strcmp(argv[i], "--cpu-policy") == 0 && i + 1 < argc) {
			i++;
			if (strcmp(argv[i], "follow") == 0)
				fw_cpu_set_policy(FW_CPU_POLICY_FOLLOW);
			else if (strcmp(argv[i], "none") == 0)
				fw_cpu_set_policy(FW_CPU_POLICY_NONE);
			else
				return usage(argv[0]);
			continue;
		}
		if (strcmp(argv[i], "--perf-buffer-kib") == 0 && i + 1 < argc) {
			char *end;
			unsigned long kib = strtoul(argv[++i], &end, 10);

			if (*end || perf_set_buffer_kib(kib) == -1) {
				fprintf(stderr, "%s: --perf-buffer-kib %s: a power of two from 64 to 262144 (KiB per CPU)\n",
					argv[0], argv[i]);
				return 2;
			}
			continue;
		}
		return usage(argv[0]);
	}
	/* If the agent dies, we get SIGTERM and disarm. */
	if (prctl(PR_SET_PDEATHSIG, SIGTERM) == -1) {
		perror("fleetwatch-helper: prctl(PR_SET_PDEATHSIG)");
		return 1;
	}
	if (getppid() != parent) {
		fprintf(stderr, "fleetwatch-helper: parent exited before start\n");
		return 1;
	}
	/* Before SIGCHLD goes to the signalfd: the probe child is waited for here. */
	run_selftest();
	sfd = setup_signals();
	if (sfd < 0 || install_fatal_handlers() == -1) {
		perror("fleetwatch-helper: signal setup");
		return 1;
	}
	oom_refused = protect_from_oom(oom_msg, sizeof oom_msg);
	/* libdwfl would fetch missing debug info over the network while a
	 * target sits stopped in a hit: symbols come from what is installed. */
	unsetenv("DEBUGINFOD_URLS");
	tracer_init(sfd);
	perf_init();
	out_init(STDOUT_FILENO);
	send_hello();
	if (oom_refused) {
		fprintf(stderr, "fleetwatch-helper: warning: %s\n", oom_refused);
		out_log(FW_LOG_WARNING, "%s", oom_refused);
	}

	fds[0] = (struct pollfd){ .fd = STDIN_FILENO, .events = POLLIN };
	fds[1] = (struct pollfd){ .fd = sfd, .events = POLLIN };
	fds[2] = (struct pollfd){ .fd = perf_poll_fd(), .events = POLLIN };
	for (;;) {
		int timeout, due;

		tracer_process_pending();
		perf_process_pending();
		if (out_due_ms() == 0)
			out_flush();
		if (shutdown_requested || stdin_closed || out_broken() ||
		    tracer_terminate_requested())
			break;
		timeout = tracer_next_timeout_ms();
		due = perf_next_timeout_ms();
		if (due >= 0 && (timeout < 0 || due < timeout))
			timeout = due;
		due = out_due_ms();
		if (due >= 0 && (timeout < 0 || due < timeout))
			timeout = due;
		if (poll(fds, 3, timeout) < 0) {
			if (errno == EINTR)
				continue;
			perror("fleetwatch-helper: poll");
			exit_code = 1;
			break;
		}
		if (fds[1].revents & POLLIN)
			tracer_on_signals();
		if (fds[2].revents & POLLIN)
			perf_on_ready();
		if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			if (read_requests() == -1) {
				exit_code = 1;
				break;
			}
		}
	}
	backend_close_all();
	out_flush();
	return exit_code;
}
