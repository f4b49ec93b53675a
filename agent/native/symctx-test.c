/* symctx tests (make check): start the structs fixture (built -O2 without
 * frame pointers, and -O0), stop it inside writer with PTRACE_SEIZE +
 * PTRACE_INTERRUPT, unwind it from its registers and a copy of its stack,
 * resolve DWARF expressions against the addresses it prints about itself,
 * and unwind /bin/sleep (no debug info of its own) through libc. The
 * third build has no -g: CFI and .symtab only.
 *   symctx-test STRUCTS_O2 STRUCTS_O0 STRUCTS_NODEBUG */
#include "resolve.h"
#include "symctx.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEADLINE_MS 10000
#define STACK_COPY_BYTES (16 * 1024)
#define MAX_FRAMES 64
#define TIMING_BATCHES 15

static int passes, failures;

__attribute__((format(printf, 3, 4))) static bool check(bool ok, const char *name,
							const char *fmt, ...)
{
	va_list ap;

	if (ok) {
		passes++;
		return true;
	}
	failures++;
	printf("FAIL %s: ", name);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	return false;
}

struct child {
	pid_t pid;
	int stdin_fd;  /* kept open: writer blocks reading it */
	int stdout_fd; /* -1 when not captured */
	bool traced;
};

static int spawn(struct child *c, char *const argv[], bool capture_stdout)
{
	int in[2], out[2] = { -1, -1 };

	if (pipe(in) == -1 || (capture_stdout && pipe(out) == -1))
		return -1;
	c->pid = fork();
	if (c->pid == -1)
		return -1;
	if (c->pid == 0) {
		/* Even if this test dies, no target outlives it. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(in[0], 0);
		if (capture_stdout)
			dup2(out[1], 1);
		close(in[1]);
		if (capture_stdout)
			close(out[0]);
		execv(argv[0], argv);
		_exit(127);
	}
	close(in[0]);
	c->stdin_fd = in[1];
	if (capture_stdout)
		close(out[1]);
	c->stdout_fd = out[0];
	c->traced = false;
	return 0;
}

/* One line of the child's stdout, waiting at most until the deadline. */
static bool read_line(struct child *c, char *line, size_t len, const char *what)
{
	int64_t deadline = fw_now_ms() + DEADLINE_MS;
	size_t n = 0;

	while (n + 1 < len) {
		struct pollfd p = { c->stdout_fd, POLLIN, 0 };
		int left = (int)(deadline - fw_now_ms());

		if (left <= 0 || poll(&p, 1, left) <= 0 || read(c->stdout_fd, line + n, 1) != 1) {
			printf("FAIL %s: no line from pid %d within %d ms\n", what, (int)c->pid,
			       DEADLINE_MS);
			return false;
		}
		if (line[n] == '\n')
			break;
		n++;
	}
	line[n] = '\0';
	return true;
}

/* Polls /proc/PID/stat until the process sleeps in a syscall. */
static bool wait_sleeping(pid_t pid, const char *what)
{
	int64_t deadline = fw_now_ms() + DEADLINE_MS;
	char path[64], buf[512];

	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	while (fw_now_ms() < deadline) {
		FILE *f = fopen(path, "r");
		size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
		char *paren;

		if (f)
			fclose(f);
		buf[n] = '\0';
		paren = strrchr(buf, ')');
		if (paren && paren[1] == ' ' && paren[2] == 'S')
			return true;
		usleep(1000);
	}
	printf("FAIL %s: pid %d never went to sleep within %d ms\n", what, (int)pid, DEADLINE_MS);
	return false;
}

/* Seize, interrupt, and copy registers and up to 16 KiB of stack. */
static bool stop_and_capture(struct child *c, struct user_regs_struct *regs, uint8_t *stack,
			     size_t *stack_len, const char *what)
{
	int status;
	struct iovec local, remote;
	ssize_t n;

	if (ptrace(PTRACE_SEIZE, c->pid, 0, 0) == -1) {
		printf("FAIL %s: PTRACE_SEIZE %d: %s\n", what, (int)c->pid, strerror(errno));
		return false;
	}
	c->traced = true;
	if (ptrace(PTRACE_INTERRUPT, c->pid, 0, 0) == -1 ||
	    waitpid(c->pid, &status, __WALL) != c->pid || !WIFSTOPPED(status) ||
	    status >> 16 != PTRACE_EVENT_STOP) {
		printf("FAIL %s: PTRACE_INTERRUPT %d did not stop it\n", what, (int)c->pid);
		return false;
	}
	if (ptrace(PTRACE_GETREGS, c->pid, 0, regs) == -1) {
		printf("FAIL %s: PTRACE_GETREGS: %s\n", what, strerror(errno));
		return false;
	}
	local = (struct iovec){ stack, STACK_COPY_BYTES };
	remote = (struct iovec){ (void *)(uintptr_t)regs->rsp, STACK_COPY_BYTES };
	/* Short when the stack's top is nearer than 16 KiB: what we got is it. */
	n = process_vm_readv(c->pid, &local, 1, &remote, 1, 0);
	if (n <= 0) {
		printf("FAIL %s: process_vm_readv at rsp: %s\n", what, strerror(errno));
		return false;
	}
	*stack_len = (size_t)n;
	return true;
}

static void release(struct child *c)
{
	if (c->pid <= 0)
		return;
	if (c->traced)
		ptrace(PTRACE_DETACH, c->pid, 0, 0);
	kill(c->pid, SIGKILL);
	waitpid(c->pid, NULL, 0);
	close(c->stdin_fd);
	if (c->stdout_fd >= 0)
		close(c->stdout_fd);
	c->pid = 0;
}

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* What one timing batch runs: `calls` operations of one kind. */
struct timed {
	enum { T_UNWIND, T_SYMBOLIZE_CACHED, T_SYMBOLIZE_UNCACHED, T_REFRESH, T_EXPR } op;
	struct fw_symctx *ctx;
	pid_t pid;
	const struct user_regs_struct *regs;
	const uint8_t *stack;
	size_t stack_len;
	const uint64_t *ips;
	int n;
	uint64_t miss; /* advances so every uncached lookup is a new ip */
};

static void run_op(struct timed *t)
{
	uint64_t out[MAX_FRAMES], off, a, sz;
	const char *fn, *mod;
	char err[256];

	switch (t->op) {
	case T_UNWIND:
		fw_unwind(t->ctx, t->pid, t->regs, t->stack, t->stack_len, out, MAX_FRAMES);
		break;
	case T_SYMBOLIZE_CACHED:
		for (int k = 0; k < t->n; k++)
			fw_symbolize(t->ctx, t->ips[k] - (k > 0), &fn, &off, &mod);
		break;
	case T_SYMBOLIZE_UNCACHED:
		for (int k = 0; k < t->n; k++)
			fw_symbolize(t->ctx, t->ips[k] - 1 - t->miss, &fn, &off, &mod);
		t->miss++;
		break;
	case T_REFRESH:
		fw_symctx_refresh(t->ctx);
		break;
	case T_EXPR:
		fw_resolve_expr(t->ctx, "fw_conf.ptr->x", &a, &sz, err, sizeof err);
		break;
	}
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Median over batches of the microseconds per operation: on a shared
 * machine one preemption would otherwise decide an average. */
static double median_us(struct timed *t, int per_batch)
{
	double us[TIMING_BATCHES];

	run_op(t);
	for (int b = 0; b < TIMING_BATCHES; b++) {
		double t0 = now_us();

		for (int i = 0; i < per_batch; i++)
			run_op(t);
		us[b] = (now_us() - t0) / per_batch;
	}
	qsort(us, TIMING_BATCHES, sizeof us[0], cmp_double);
	return us[TIMING_BATCHES / 2];
}

static void timings(struct fw_symctx *ctx, const char *label, pid_t pid,
		    const struct user_regs_struct *regs, const uint8_t *stack, size_t stack_len,
		    const uint64_t *ips, int n)
{
	struct timed t = { T_UNWIND, ctx, pid, regs, stack, stack_len, ips, n, 0 };
	double us;

	us = median_us(&t, 200);
	printf("  timing %s: fw_unwind %.2f us/call for %d frames\n", label, us, n);
	t.op = T_SYMBOLIZE_CACHED;
	us = median_us(&t, 200);
	printf("  timing %s: fw_symbolize cached %.3f us/ip\n", label, us / n);
	t.op = T_SYMBOLIZE_UNCACHED;
	us = median_us(&t, 10);
	printf("  timing %s: fw_symbolize uncached %.2f us/ip\n", label, us / n);
	t.op = T_REFRESH;
	us = median_us(&t, 20);
	printf("  timing %s: fw_symctx_refresh %.2f us/call\n", label, us);
	t.op = T_EXPR;
	us = median_us(&t, 50);
	{
		uint64_t a, sz;
		char err[256];
		bool ok = fw_resolve_expr(ctx, "fw_conf.ptr->x", &a, &sz, err, sizeof err) == 0;

		printf("  timing %s: fw_resolve_expr('fw_conf.ptr->x') %.2f us/call (%s)\n", label,
		       us, ok ? "resolves" : "fails: the error path");
	}
}

struct frame_names {
	const char *function[MAX_FRAMES];
	const char *module[MAX_FRAMES];
	uint64_t offset[MAX_FRAMES];
};

/* Frame 0 as given, callers at ip - 1 (see fw_unwind); printed offsets
 * are of ips[i] itself. */
static void name_frames(struct fw_symctx *ctx, const uint64_t *ips, int n, struct frame_names *f,
			const char *label)
{
	for (int i = 0; i < n; i++) {
		fw_symbolize(ctx, ips[i] - (i > 0), &f->function[i], &f->offset[i], &f->module[i]);
		printf("  %s #%-2d 0x%012" PRIx64 " %s+0x%" PRIx64 " (%s)\n", label, i, ips[i],
		       f->function[i] ? f->function[i] : "??",
		       f->offset[i] + (i > 0 && f->function[i] ? 1 : 0),
		       f->module[i] ? f->module[i] : "no module");
	}
}

static int find_frame(const struct frame_names *f, int n, const char *function)
{
	for (int i = 0; i < n; i++)
		if (f->function[i] && strcmp(f->function[i], function) == 0)
			return i;
	return -1;
}

static bool in_libc(const char *module)
{
	return module && strstr(module, "/libc.so") != NULL;
}

struct fixture_addrs {
	uint64_t conf_b, conf_in_name, conf_ptr_x, arr2_b, grid_1_2, table_slot3_v, hidden_count;
};

static bool parse_ready(const char *line, pid_t pid, struct fixture_addrs *a)
{
	int got_pid;
	void *p[7];

	if (sscanf(line, "ready %d %p %p %p %p %p %p %p", &got_pid, &p[0], &p[1], &p[2], &p[3],
		   &p[4], &p[5], &p[6]) != 8 || got_pid != (int)pid)
		return false;
	a->conf_b = (uintptr_t)p[0];
	a->conf_in_name = (uintptr_t)p[1];
	a->conf_ptr_x = (uintptr_t)p[2];
	a->arr2_b = (uintptr_t)p[3];
	a->grid_1_2 = (uintptr_t)p[4];
	a->table_slot3_v = (uintptr_t)p[5];
	a->hidden_count = (uintptr_t)p[6];
	return true;
}

static void expect_expr(struct fw_symctx *ctx, const char *label, const char *expr,
			uint64_t want_addr, uint64_t want_size)
{
	char name[160], err[512];
	uint64_t addr = 0, size = 0;
	int r = fw_resolve_expr(ctx, expr, &addr, &size, err, sizeof err);

	snprintf(name, sizeof name, "resolve_expr - %s: '%s' is at the address the fixture printed",
		 label, expr);
	if (!check(r == 0, name, "%s", err))
		return;
	check(addr == want_addr, name, "0x%" PRIx64 " != 0x%" PRIx64, addr, want_addr);
	snprintf(name, sizeof name, "resolve_expr - %s: '%s' is %" PRIu64 " bytes", label, expr,
		 want_size);
	check(size == want_size, name, "got %" PRIu64, size);
}

static void expect_expr_error(struct fw_symctx *ctx, const char *label, const char *expr,
			      int want_errno, const char *want_msg)
{
	char name[160], err[512] = "";
	uint64_t addr, size;
	int r = fw_resolve_expr(ctx, expr, &addr, &size, err, sizeof err);
	int e = errno;

	snprintf(name, sizeof name, "resolve_expr - %s: '%s' fails with %s", label, expr,
		 fw_errno_name(want_errno));
	if (!check(r == -1, name, "resolved to 0x%" PRIx64, addr))
		return;
	check(e == want_errno, name, "errno %s (%s)", fw_errno_name(e), err);
	check(strcmp(err, want_msg) == 0 || (want_msg[0] == '*' && strstr(err, want_msg + 1)),
	      name, "message '%s', want '%s'", err, want_msg);
}

/* The fixture's `stdout` is copy-relocated into the executable (as
 * "stdout@GLIBC_2.2.5"); libc's debug info describes libc's own, unused
 * copy. Both RESOLVE and expressions must give the executable's. */
static void test_copy_relocation(struct fw_symctx *ctx, const char *label, pid_t pid,
				 const char *path)
{
	struct fw_resolved res;
	struct fw_error e = { 0, "" };
	uint64_t addr = 0, size = 0, file = 0;
	char err[512] = "", name[160];
	struct iovec local = { &file, sizeof file }, remote;

	snprintf(name, sizeof name, "resolve - %s: 'stdout' is the executable's copy", label);
	if (!check(fw_resolve(pid, "stdout", 0, &res, &e) == 0, name, "%s", e.msg))
		return;
	check(strcmp(res.module, path) == 0 && res.size == 8, name, "module %s size %" PRIu64,
	      res.module, res.size);
	snprintf(name, sizeof name,
		 "resolve_expr - %s: 'stdout' (libc's DWARF) is the executable's copy", label);
	if (check(fw_resolve_expr(ctx, "stdout", &addr, &size, err, sizeof err) == 0, name, "%s",
		  err))
		check(addr == res.address && size == 8, name, "0x%" PRIx64 " != 0x%" PRIx64, addr,
		      res.address);
	remote = (struct iovec){ (void *)(uintptr_t)res.address, sizeof file };
	snprintf(name, sizeof name,
		 "resolve_expr - %s: 'stdout->_flags' follows the live FILE pointer", label);
	if (check(process_vm_readv(pid, &local, 1, &remote, 1, 0) == sizeof file && file != 0,
		  name, "reading stdout: %s", strerror(errno)) &&
	    check(fw_resolve_expr(ctx, "stdout->_flags", &addr, &size, err, sizeof err) == 0, name,
		  "%s", err))
		check(addr == file && size == 4, name, "0x%" PRIx64 " size %" PRIu64 ", want 0x%" PRIx64,
		      addr, size, file);
}

static void test_expressions(struct fw_symctx *ctx, const char *label, pid_t pid,
			     const char *path, const struct fixture_addrs *a)
{
	struct fw_resolved res;
	struct fw_error e = { 0, "" };
	char want[512];

	expect_expr(ctx, label, "fw_conf.b", a->conf_b, 8);
	expect_expr(ctx, label, "fw_conf.in.name", a->conf_in_name, 8);
	expect_expr(ctx, label, "fw_conf.in.name[3]", a->conf_in_name + 3, 1);
	expect_expr(ctx, label, "fw_conf.ptr->x", a->conf_ptr_x, 2);
	expect_expr(ctx, label, "fw_arr[2].b", a->arr2_b, 8);
	expect_expr(ctx, label, "fw_arr[2]", a->arr2_b - 8, 16);
	expect_expr(ctx, label, "fw_arr", a->arr2_b - 8 - 2 * 16, 64);
	expect_expr(ctx, label, "fw_grid[1][2]", a->grid_1_2, 4);
	expect_expr(ctx, label, "fw_grid[1]", a->grid_1_2 - 8, 16);
	expect_expr(ctx, label, "fw_table.slot[3].v", a->table_slot3_v, 1);
	expect_expr(ctx, label, "fw_hidden.count", a->hidden_count, 8);
	/* A pointer to a const volatile typedef'd struct, in a file static. */
	expect_expr(ctx, label, "fw_hidden.cur->b", a->arr2_b - 16, 8);
	expect_expr(ctx, label, "fw_hidden.cur[1].b", a->arr2_b, 8);

	expect_expr_error(ctx, label, "fw_conf.zz", ENOENT,
			  "'fw_conf' has no member 'zz' (members: a, b, in, ptr)");
	expect_expr_error(ctx, label, "fw_conf.in.y", ENOENT,
			  "'fw_conf.in' has no member 'y' (members: x, name)");
	expect_expr_error(ctx, label, "fw_empty.ptr->x", EFAULT, "null pointer in 'fw_empty.ptr->x'");
	expect_expr_error(ctx, label, "fw_arr[4].b", ERANGE,
			  "index 4 out of bounds for 'fw_arr' (4 elements)");
	expect_expr_error(ctx, label, "fw_conf.ptr.x", EINVAL,
			  "'fw_conf.ptr' is a pointer: use '->' instead of '.'");
	expect_expr_error(ctx, label, "fw_table.slot[0].flags", ENOTSUP,
			  "'fw_table.slot[0].flags' is a bit-field: watch a whole member that "
			  "contains it");
	expect_expr_error(ctx, label, "fw_conf..a", EINVAL,
			  "syntax error in 'fw_conf..a' at offset 8: expected a member name after '.'");
	snprintf(want, sizeof want,
		 "*no variable 'fw_missing' in pid %d (searched ", (int)pid);
	expect_expr_error(ctx, label, "fw_missing.a", ENOENT, want);

	/* RESOLVE takes the same expressions; plain names stay ELF symbols. */
	if (check(fw_resolve(pid, "fw_conf.in.name", 2, &res, &e) == 0,
		  "resolve - RESOLVE of 'fw_conf.in.name' goes through DWARF", "%s", e.msg)) {
		check(res.address == a->conf_in_name + 2 && res.size == 8 &&
			      strcmp(res.module, path) == 0,
		      "resolve - RESOLVE of 'fw_conf.in.name' goes through DWARF",
		      "0x%" PRIx64 " size %" PRIu64 " module %s", res.address, res.size, res.module);
	}
	if (check(fw_resolve(pid, "fw_conf", 8, &res, &e) == 0,
		  "resolve - RESOLVE of a plain name is its ELF symbol", "%s", e.msg))
		check(res.address == a->conf_b && res.size == 40,
		      "resolve - RESOLVE of a plain name is its ELF symbol",
		      "0x%" PRIx64 " size %" PRIu64, res.address, res.size);
	check(fw_resolve(pid, "completed.0", 0, &res, &e) == 0 && strcmp(res.module, path) == 0,
	      "resolve - RESOLVE of a symbol with a dot falls back to the ELF symbol", "%s",
	      e.msg);
	snprintf(want, sizeof want,
		 "symbol 'fw_no_such_symbol' not found in pid %d (searched ", (int)pid);
	check(fw_resolve(pid, "fw_no_such_symbol", 0, &res, &e) == -1 && e.err == ENOENT &&
		      strncmp(e.msg, want, strlen(want)) == 0,
	      "resolve - RESOLVE of an unknown plain name keeps its message", "%s", e.msg);
	test_copy_relocation(ctx, label, pid, path);
	check(fw_resolve(pid, "fw_conf.zz", 0, &res, &e) == -1 && e.err == ENOENT &&
		      strcmp(e.msg, "RESOLVE 'fw_conf.zz': 'fw_conf' has no member 'zz' "
				    "(members: a, b, in, ptr)") == 0,
	      "resolve - RESOLVE reports an unknown member with ENOENT", "%s (%s)", e.msg,
	      fw_errno_name(e.err));
}

static void test_fixture(const char *path, const char *label, bool no_frame_pointers,
			 bool debug_info)
{
	static uint8_t stack[STACK_COPY_BYTES];
	char *argv[] = { (char *)path, NULL };
	struct child c = { 0 };
	struct user_regs_struct regs;
	struct fixture_addrs addrs = { 0 };
	struct frame_names f;
	uint64_t ips[MAX_FRAMES], ips2[MAX_FRAMES];
	size_t stack_len;
	char line[512], err[512], name[160];
	struct fw_symctx *ctx;
	int n, w;

	printf("%s (%s)\n", label, path);
	if (spawn(&c, argv, true) != 0) {
		check(false, label, "spawn %s: %s", path, strerror(errno));
		return;
	}
	if (!read_line(&c, line, sizeof line, label) ||
	    !check(parse_ready(line, c.pid, &addrs), label, "bad ready line '%s'", line) ||
	    !wait_sleeping(c.pid, label) || !stop_and_capture(&c, &regs, stack, &stack_len, label))
		goto out;
	ctx = fw_symctx_open(c.pid, err, sizeof err);
	if (!check(ctx != NULL, label, "fw_symctx_open: %s", err))
		goto out;

	n = fw_unwind(ctx, c.pid, &regs, stack, stack_len, ips, MAX_FRAMES);
	snprintf(name, sizeof name, "unwind - %s: frames from the stopped read to _start", label);
	if (!check(n >= 1, name, "fw_unwind returned %d", n))
		goto close;
	printf("  %d frames from rip 0x%llx, %zu bytes of stack copied\n", n, regs.rip, stack_len);
	name_frames(ctx, ips, n, &f, label);
	check(ips[0] == regs.rip, name, "ips[0] 0x%" PRIx64 " != rip", ips[0]);
	w = find_frame(&f, n, "writer");
	snprintf(name, sizeof name,
		 "unwind - %s: writer, level1, level2, level3, run, main follow each other", label);
	if (check(w >= 0 && w + 5 < n, name, "writer at frame %d of %d", w, n)) {
		static const char *const chain[] = { "writer", "level1", "level2",
						     "level3", "run",	 "main" };

		for (int i = 0; i < 6; i++)
			check(f.function[w + i] && strcmp(f.function[w + i], chain[i]) == 0, name,
			      "frame %d is %s, want %s", w + i,
			      f.function[w + i] ? f.function[w + i] : "??", chain[i]);
		check(strcmp(f.module[w], path) == 0, name, "writer's module %s, want %s",
		      f.module[w], path);
	}
	snprintf(name, sizeof name, "unwind - %s: frames above writer are libc's read", label);
	for (int i = 0; i < w; i++)
		check(in_libc(f.module[i]), name, "frame %d in %s", i, f.module[i]);
	snprintf(name, sizeof name, "unwind - %s: the last frame is _start", label);
	check(f.function[n - 1] && strcmp(f.function[n - 1], "_start") == 0, name, "last is %s",
	      f.function[n - 1] ? f.function[n - 1] : "??");

	if (no_frame_pointers) {
		struct user_regs_struct bad = regs;

		bad.rbp = 0xdeadbeefdeadbeefull;
		w = fw_unwind(ctx, c.pid, &bad, stack, stack_len, ips2, MAX_FRAMES);
		check(w == n && memcmp(ips, ips2, sizeof ips[0] * n) == 0,
		      "unwind - -O2 without frame pointers: a garbage rbp changes nothing (CFI only)",
		      "%d frames, want %d", w, n);
	}
	w = fw_unwind(ctx, c.pid, &regs, stack, stack_len, ips2, 3);
	check(w == 3 && memcmp(ips, ips2, sizeof ips[0] * 3) == 0,
	      "unwind - max = 3 gives exactly the first 3 frames", "%d frames", w);
	w = fw_unwind(ctx, c.pid, &regs, stack, 8, ips2, MAX_FRAMES);
	check(w >= 1 && w < n && ips2[0] == regs.rip,
	      "unwind - an 8-byte stack copy ends the unwind early, reading nothing outside it",
	      "%d frames of %d", w, n);
	{
		const char *fn, *mod;
		uint64_t off;

		check(fw_symbolize(ctx, 0x1000, &fn, &off, &mod) == -1 && fn == NULL && mod == NULL,
		      "symbolize - an ip in no module gives -1 and no module", "fn %s mod %s",
		      fn ? fn : "NULL", mod ? mod : "NULL");
	}

	timings(ctx, label, c.pid, &regs, stack, stack_len, ips, n);
	if (debug_info) {
		test_expressions(ctx, label, c.pid, path, &addrs);
	} else {
		char want[256];

		snprintf(want, sizeof want,
			 "no debug info for 'fw_conf' in pid %d: install its -dbg package or build "
			 "with -g (symbol in %s)",
			 (int)c.pid, path);
		expect_expr_error(ctx, label, "fw_conf.b", ENOENT, want);
		snprintf(want, sizeof want, "'writer' in pid %d is a function, not a variable",
			 (int)c.pid);
		expect_expr_error(ctx, label, "writer.x", EINVAL, want);
	}
close:
	fw_symctx_close(ctx);
out:
	release(&c);
}

/* A stripped system binary: sleep's own code has only .dynsym, libc has
 * CFI in .eh_frame and (with libc6-dbg) a .symtab in its debug file. */
static void test_sleep(void)
{
	static uint8_t stack[STACK_COPY_BYTES];
	char *argv[] = { "/bin/sleep", "60", NULL };
	struct child c = { 0 };
	struct user_regs_struct regs;
	struct frame_names f;
	uint64_t ips[MAX_FRAMES];
	size_t stack_len;
	char err[512];
	struct fw_symctx *ctx;
	int n, libc_frames = 0, start_frame;
	const char *name = "unwind - /bin/sleep: through libc's nanosleep to a libc frame and "
			   "__libc_start_call_main";

	printf("/bin/sleep\n");
	if (spawn(&c, argv, false) != 0) {
		check(false, name, "spawn: %s", strerror(errno));
		return;
	}
	if (!wait_sleeping(c.pid, name) || !stop_and_capture(&c, &regs, stack, &stack_len, name))
		goto out;
	ctx = fw_symctx_open(c.pid, err, sizeof err);
	if (!check(ctx != NULL, name, "fw_symctx_open: %s", err))
		goto out;
	n = fw_unwind(ctx, c.pid, &regs, stack, stack_len, ips, MAX_FRAMES);
	printf("  %d frames\n", n);
	if (check(n >= 1, name, "fw_unwind returned %d", n)) {
		name_frames(ctx, ips, n, &f, "sleep");
		for (int i = 0; i < n; i++)
			libc_frames += in_libc(f.module[i]);
		start_frame = find_frame(&f, n, "__libc_start_call_main");
		if (start_frame < 0)
			start_frame = find_frame(&f, n, "main");
		check(libc_frames >= 2 && in_libc(f.module[0]) && f.function[0] != NULL, name,
		      "%d libc frames, frame 0 in %s", libc_frames, f.module[0]);
		check(start_frame > 0, name, "no __libc_start_call_main or main in %d frames", n);
		check(n >= 4, name, "only %d frames", n);
	}
	fw_symctx_close(ctx);
out:
	release(&c);
}

static void test_open_errors(void)
{
	char err[256];
	struct fw_symctx *ctx;
	pid_t gone = fork();

	if (gone == 0)
		_exit(0);
	waitpid(gone, NULL, 0);
	ctx = fw_symctx_open(gone, err, sizeof err);
	check(ctx == NULL && errno == ESRCH && strstr(err, "no process with pid") != NULL,
	      "open - a pid that exited gives ESRCH", "errno %s: %s", fw_errno_name(errno), err);
	fw_symctx_close(ctx);
	{
		struct fw_resolved res;
		struct fw_error e = { 0, "" };
		char want[128];

		snprintf(want, sizeof want, "RESOLVE 'fw_conf.b': no process with pid %d", (int)gone);
		check(fw_resolve(gone, "fw_conf.b", 0, &res, &e) == -1 && e.err == ESRCH &&
			      strcmp(e.msg, want) == 0,
		      "resolve - RESOLVE of a pid that exited gives ESRCH", "%s: %s",
		      fw_errno_name(e.err), e.msg);
	}
}

int main(int argc, char **argv)
{
	char o2[PATH_MAX], o0[PATH_MAX], nodebug[PATH_MAX];

	if (argc != 4 || !realpath(argv[1], o2) || !realpath(argv[2], o0) ||
	    !realpath(argv[3], nodebug)) {
		fprintf(stderr, "usage: %s STRUCTS_O2 STRUCTS_O0 STRUCTS_NODEBUG\n", argv[0]);
		return 2;
	}
	/* Never ask a debuginfod server from a test. */
	unsetenv("DEBUGINFOD_URLS");
	/* Absolute: modules are named by the paths in /proc/PID/maps. */
	test_fixture(o2, "-O2 -fomit-frame-pointer", true, true);
	test_fixture(o0, "-O0", false, true);
	test_fixture(nodebug, "-O2 without -g", true, false);
	test_sleep();
	test_open_errors();
	check(waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD,
	      "cleanup - every child is reaped", "children left");
	printf("%s: %d passed, %d failure(s)\n", failures ? "FAIL" : "ok", passes, failures);
	return failures ? 1 : 0;
}
