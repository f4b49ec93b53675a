/* The perf-event backend (PROTOCOL.md, "Backends").
 *
 * A group is one set of chunks on one process. For each thread found in
 * /proc/PID/task (a "root") the group opens one PERF_TYPE_BREAKPOINT event
 * per chunk and CPU, as `perf record -p` does: inherited per-thread events
 * cannot own a ring buffer (their copies in other threads would write it
 * from several CPUs at once), per-CPU ones can. Every event bound to a CPU
 * writes into that CPU's one ring buffer (PERF_EVENT_IOC_SET_OUTPUT), so
 * each buffer has one writer at a time and is in time order. Events are
 * inherited by threads created later (inherit + inherit_thread: inside
 * clone, before the new thread runs); a sample's identifier names the root
 * whose event, or a copy of it, fired. A software dummy event per thread
 * and CPU (the tracker, which takes no debug register) reports thread
 * creation and exit (attr.task) and exec (attr.comm_exec): the breakpoints
 * themselves are removed in the kernel at exec (remove_on_exec), before
 * the exec's COMM record is written.
 *
 * The kernel may cover one thread twice: a thread that showed up in a scan
 * of /proc/PID/task before the FORK record that announces it, or whose
 * clone raced the opening of its creator's events, gets events of its own
 * while it may also have inherited some. Then one trap fires both copies in
 * one debug exception, on one CPU: their samples sit next to each other in
 * that CPU's buffer (only the value record of the second may come between),
 * from two roots, with the same thread, chunk and ip. The first counts and
 * the others are skipped as its twins (twin_of), and the thread's own
 * events are closed (drop_second_cover). A sample with no twin counts
 * whichever root it comes from: the thread's own events are opened CPU by
 * CPU, so for a moment a trap may fire only the inherited copy. Every
 * counted sample goes through the group's accounting (watch.h); exit and
 * exec go to the dispatcher.
 *
 * Not covered: a thread cloned by a thread whose events are being opened
 * (tens of microseconds, at an arm or a rescan) inherits those opened so
 * far. If its FORK record came, it counts as covered, and its traps on a
 * CPU whose events its creator did not have yet are not seen. */
#include "perf.h"

#include "backend.h"
#include "perfbpf.h"
#include "procexit.h"
#include "procfs.h"
#include "symctx.h"
#include "symdefs.h"
#include "wire.h"

#include <asm/perf_regs.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/hw_breakpoint.h>
#include <linux/perf_event.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PERF_MAX_GROUPS 64
#define DRAIN_MS 5          /* samples wait at most this long in a ring buffer */
/* Records this recent wait for the next drain: another CPU may still be
 * committing older ones (see drain). */
#define DRAIN_HORIZON_NS 1000000u
#define SCAN_MS 100         /* /proc/PID/task rescans and THREADS reports */
#define RECONCILE_MS 100    /* while samples are lost: the kernel's counts read this often */
#define ARM_SCAN_ROUNDS 100 /* scans at ARM until one finds no uncovered thread */
#define STACK_SAMPLE_BYTES 8192u
/* Data pages per CPU's ring buffer (a power of two), by what samples carry:
 * enough for ~0.1 s of traps on a CPU while the helper is not scheduled.
 * Hosts with more than 16 CPUs get smaller buffers per CPU. */
#define DATA_PAGES_COUNT 128u
#define DATA_PAGES_PLAIN 512u
#define DATA_PAGES_STACK 1024u
#define DATA_PAGES_MIN 16u
#define DATA_PAGES_MAX 65536u /* 256 MiB with 4 KiB pages */
/* A thread that shows up in /proc before its FORK record is written: how
 * often ARM and rescans look for the record again before opening events of
 * its own for it (which would cover it twice). */
#define ANNOUNCE_RETRIES 3
#define MAX_CPUS 1024
#define COUNTS_PER_FRAME 1000u
#define DEFAULT_INTERVAL_MS 1000u
#define MIN_INTERVAL_MS 10u
#define MAX_INTERVAL_MS (3600u * 1000u)
#define ENTS_INITIAL 256u /* power of two */
/* A disarmed group's events wait this long, disabled, for an ARM of the
 * same shape on the same process to re-target them in place. */
#define PARK_MS 250
/* Entries of exited threads stay this many drain passes: their last
 * samples may still sit in another buffer. */
#define DEAD_PASSES 2u

/* User registers sampled for the unwinder, in the order the kernel writes them. */
#define SAMPLE_REGS                                                                     \
	((1ull << PERF_REG_X86_AX) | (1ull << PERF_REG_X86_BX) | (1ull << PERF_REG_X86_CX) | \
	 (1ull << PERF_REG_X86_DX) | (1ull << PERF_REG_X86_SI) | (1ull << PERF_REG_X86_DI) | \
	 (1ull << PERF_REG_X86_BP) | (1ull << PERF_REG_X86_SP) | (1ull << PERF_REG_X86_IP) | \
	 (0xffull << PERF_REG_X86_R8))
#define SAMPLE_NREGS 17

/* epoll data: buffers are drained all together; a pidfd names its group. */
#define EP_BUFFER 0u
#define EP_PROCEXIT UINT64_MAX
/* After the pidfd says a process is gone, its last threads' exits may
 * still be on their way from the connector (sent just after): the status
 * waits for them to be quiet this long, and at most EXIT_WAIT_MS. */
#define EXIT_QUIET_MS 5
#define EXIT_WAIT_MS 100

/* Events per thread and CPU: one per chunk, then the tracker (TRACKER). */
#define EVENTS_PER_CPU (FW_SLOTS_PER_THREAD + 1u)
#define TRACKER FW_SLOTS_PER_THREAD
/* The chunk of a value event (one per CPU: the BPF program's output). */
#define VALUE_EVENT 0xfeu
/* A value record and the breakpoint sample it belongs to are written
 * back to back on one CPU, in one exception: what pairs them is that
 * adjacency (a lost record in between clears the pending value) and the
 * thread. Their times differ by microseconds, or by however long the
 * hypervisor kept that virtual CPU from running in between (milliseconds
 * on a busy host); this bound only refuses nonsense. */
#define VALUE_PAIR_NS 1000000000u
/* Twin samples (one trap, two copies of an event) are written in one
 * exception too: the same bound. */
#define TWIN_NS VALUE_PAIR_NS

/* A thread's events: fd[cpu_index * EVENTS_PER_CPU + chunk or TRACKER], -1 if none. */
struct root {
	pid_t tid;
	int *fd;
};

/* The breakpoint samples of one trap read so far from a buffer: the first
 * (counted) and the roots of every copy (see twin_of). */
struct trap_group {
	bool open;
	uint8_t chunk;
	uint32_t tid;
	uint64_t ip, time;
	unsigned nroots;
	int32_t roots[FW_SLOTS_PER_THREAD];
};

/* One CPU's ring buffer; owner is the first event opened on that CPU (the
 * value event when there is one). pending: the last value record read from
 * it, waiting for its breakpoint sample. */
struct cpu_buf {
	int owner;
	struct perf_event_mmap_page *meta;
	size_t map_len;
	int value_fd;
	bool pending;
	uint32_t pending_tid;
	uint64_t pending_time, pending_word;
	struct trap_group last;
};

/* Event id -> root and chunk (samples of inherited copies carry their
 * original's id). */
struct id_ent {
	uint64_t id; /* 0: empty */
	int32_t root;
	uint8_t chunk; /* TRACKER: the thread tracker */
};

struct tid_ent {
	pid_t tid;          /* 0: empty, -1: deleted */
	int32_t root;       /* the root whose events are this thread's own, or it inherited */
	uint64_t hits;      /* in the current COUNTS interval */
	uint32_t dead_pass; /* drain pass of its EXIT record; 0: alive */
};

struct pgroup {
	bool used;
	pid_t pid;
	uint64_t start_time; /* /proc/PID/stat field 22: tells a reused pid apart */
	struct fw_watch w; /* id, options, counts, rate window, done and back-off */
	uint32_t interval_ms;
	unsigned nchunks;
	struct fw_chunk chunks[FW_SLOTS_PER_THREAD];
	uint64_t last_value[FW_SLOTS_PER_THREAD];
	size_t data_bytes;
	struct cpu_buf *bufs; /* one per CPU of cpus[] */
	struct root *roots;
	unsigned nroots, roots_cap;
	struct id_ent *ids;
	unsigned ids_cap, nids;
	struct tid_ent *ents;
	unsigned ents_cap, ents_used; /* used: live and deleted slots */
	/* Samples the buffers gave, own and duplicate, plus the traps counted
	 * as lost: what the kernel's own counts of the events should add up to. */
	uint64_t seen;
	/* A LOST or THROTTLE record since the kernel's counts were last read;
	 * kernel_prev: the counts read then (when prev_valid), compared with
	 * seen at the next reconcile. */
	bool lost_seen, prev_valid;
	uint64_t kernel_prev;
	int64_t next_reconcile_ms;
	uint64_t kernel_closed; /* the kernel's counts of events closed early */
	uint32_t pass;
	int pidfd;
	bool exited, exec_seen;
	int64_t exited_ms; /* when the pidfd said so */
	/* Disarmed, its events disabled and kept for a re-target until park_until_ms. */
	bool parked;
	int64_t park_until_ms;
	/* The kernel's counts of its events when they were re-targeted to it. */
	uint64_t kernel_base;
	int64_t next_counts_ms, next_scan_ms;
	uint32_t reported_total, reported_armed;
	bool unarmed_warned, throttle_warned;
	struct fw_symctx *sym;
	struct fw_known_ips *known;
	int bpf_map, bpf_prog; /* exact values: -1 when read after the trap */
};

static struct pgroup groups[PERF_MAX_GROUPS];
static int ep_fd = -1;
static enum fw_perf_values values_mode = FW_PERF_UNAVAILABLE;
static char note[256];
static int64_t next_drain_ms = INT64_MAX;
static long page_size;
static int cpus[MAX_CPUS]; /* the online CPUs */
static unsigned buffer_pages; /* --perf-buffer-kib; 0: by what samples carry */
static unsigned ncpus;

static int perf_open(struct perf_event_attr *attr, pid_t tid, int cpu)
{
	return (int)syscall(SYS_perf_event_open, attr, tid, cpu, -1, PERF_FLAG_FD_CLOEXEC);
}

/* ---- start-up probe ---- */

static volatile uint64_t probe_word;

/* /sys/devices/system/cpu/online: "0-3,6". */
static void read_online_cpus(void)
{
	char line[4096];
	FILE *f = fopen("/sys/devices/system/cpu/online", "re");
	char *p = line;

	ncpus = 0;
	if (f && fgets(line, sizeof line, f)) {
		while (*p && *p != '\n' && ncpus < MAX_CPUS) {
			long lo = strtol(p, &p, 10), hi = lo;

			if (*p == '-')
				hi = strtol(p + 1, &p, 10);
			for (long c = lo; c <= hi && ncpus < MAX_CPUS; c++)
				cpus[ncpus++] = (int)c;
			if (*p == ',')
				p++;
			else
				break;
		}
	}
	if (f)
		fclose(f);
	if (ncpus == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);

		for (long c = 0; c < n && c < MAX_CPUS; c++)
			cpus[ncpus++] = (int)c;
	}
}

/* Every thread of a watched process takes an event per chunk and CPU, and
 * one more (the tracker): allow as many descriptors as the hard limit does. */
static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

void perf_init(void)
{
	struct perf_event_attr a;
	int fd;

	page_size = sysconf(_SC_PAGESIZE);
	raise_fd_limit();
	read_online_cpus();
	ep_fd = epoll_create1(EPOLL_CLOEXEC);
	if (ep_fd >= 0) {
		/* Without it, a status comes from /proc while the process is a zombie. */
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = EP_PROCEXIT };
		int cn = fw_procexit_open();

		if (cn >= 0)
			epoll_ctl(ep_fd, EPOLL_CTL_ADD, cn, &ev);
	}
	memset(&a, 0, sizeof a);
	a.type = PERF_TYPE_BREAKPOINT;
	a.size = sizeof a;
	a.bp_type = HW_BREAKPOINT_W;
	a.bp_addr = (uint64_t)(uintptr_t)&probe_word;
	a.bp_len = HW_BREAKPOINT_LEN_8;
	a.sample_period = 1;
	a.exclude_kernel = 1;
	a.exclude_hv = 1;
	a.disabled = 1;
	fd = perf_open(&a, 0, -1);
	if (ep_fd < 0 || fd < 0) {
		int err = errno;
		char paranoid[16] = "?";
		int level;

		if (fw_perf_paranoid(&level) == 0)
			snprintf(paranoid, sizeof paranoid, "%d", level);
		snprintf(note, sizeof note,
			 "perf_event_open of a breakpoint failed: %s (%s; kernel.perf_event_paranoid = %s)",
			 fw_errno_name(err), strerror(err), paranoid);
		return;
	}
	close(fd);
	char why[200] = "";

	if (fw_bpf_probe(why, sizeof why)) {
		values_mode = FW_PERF_VALUES_EXACT;
		note[0] = 0;
		return;
	}
	values_mode = FW_PERF_VALUES_AFTER;
	snprintf(note, sizeof note,
		 "values are read from the target when a sample is drained, not at the trap (BPF: %s)",
		 why);
}

enum fw_perf_values perf_values(void)
{
	return values_mode;
}

const char *perf_note(void)
{
	return note;
}

int perf_poll_fd(void)
{
	return ep_fd;
}

/* ---- groups and lookups ---- */

/* Armed: in use and not parked. */
static bool live(const struct pgroup *g)
{
	return g->used && !g->parked;
}

static int group_index(pid_t pid, uint64_t id)
{
	for (int i = 0; i < PERF_MAX_GROUPS; i++)
		if (live(&groups[i]) && groups[i].pid == pid && groups[i].w.id == id)
			return i;
	return -1;
}

bool perf_has_group(pid_t pid, uint64_t group)
{
	return group_index(pid, group) >= 0;
}

bool perf_has_pid(pid_t pid)
{
	for (int i = 0; i < PERF_MAX_GROUPS; i++)
		if (live(&groups[i]) && groups[i].pid == pid)
			return true;
	return false;
}

/* The first group of pid speaks for the process (TARGET_FORK). */
static bool first_of_pid(const struct pgroup *g)
{
	for (int i = 0; i < PERF_MAX_GROUPS; i++)
		if (live(&groups[i]) && groups[i].pid == g->pid)
			return &groups[i] == g;
	return false;
}

static unsigned ent_home(const struct pgroup *g, pid_t tid)
{
	return ((unsigned)tid * 2654435761u) & (g->ents_cap - 1);
}

static struct tid_ent *ent_find(struct pgroup *g, pid_t tid)
{
	for (unsigned h = ent_home(g, tid);; h = (h + 1) & (g->ents_cap - 1)) {
		if (g->ents[h].tid == tid)
			return &g->ents[h];
		if (g->ents[h].tid == 0)
			return NULL;
	}
}

static int ents_resize(struct pgroup *g, unsigned cap)
{
	struct tid_ent *old = g->ents;
	unsigned old_cap = g->ents_cap;

	g->ents = calloc(cap, sizeof *g->ents);
	if (!g->ents) {
		g->ents = old;
		return -1;
	}
	g->ents_cap = cap;
	g->ents_used = 0;
	for (unsigned i = 0; i < old_cap; i++) {
		if (old[i].tid <= 0)
			continue;
		unsigned h = ent_home(g, old[i].tid);

		while (g->ents[h].tid != 0)
			h = (h + 1) & (cap - 1);
		g->ents[h] = old[i];
		g->ents_used++;
	}
	free(old);
	return 0;
}

/* The entry of tid, made (buffer ri counts its samples) if it has none. */
static struct tid_ent *ent_get(struct pgroup *g, pid_t tid, int ri)
{
	struct tid_ent *e = ent_find(g, tid);
	unsigned h;

	if (e)
		return e;
	if ((g->ents_used + 1) * 4 > g->ents_cap * 3) {
		unsigned live = 0;

		for (unsigned i = 0; i < g->ents_cap; i++)
			live += g->ents[i].tid > 0;
		if (ents_resize(g, live * 2 + 2 > g->ents_cap ? g->ents_cap * 2 : g->ents_cap) ==
		    -1)
			return NULL;
	}
	h = ent_home(g, tid);
	while (g->ents[h].tid > 0)
		h = (h + 1) & (g->ents_cap - 1);
	if (g->ents[h].tid == 0)
		g->ents_used++;
	g->ents[h] = (struct tid_ent){ .tid = tid, .root = ri };
	return &g->ents[h];
}

/* Forgets threads that exited DEAD_PASSES passes ago and have no hits
 * waiting for a COUNTS report. */
static void ents_purge(struct pgroup *g)
{
	for (unsigned i = 0; i < g->ents_cap; i++) {
		struct tid_ent *e = &g->ents[i];

		if (e->tid > 0 && e->dead_pass != 0 && g->pass - e->dead_pass >= DEAD_PASSES &&
		    e->hits == 0)
			e->tid = -1;
	}
}

static int ids_add(struct pgroup *g, uint64_t id, int root, unsigned chunk)
{
	if ((g->nids + 1) * 2 > g->ids_cap) {
		unsigned cap = g->ids_cap ? g->ids_cap * 2 : 256;
		struct id_ent *more = calloc(cap, sizeof *more);

		if (!more)
			return -1;
		for (unsigned i = 0; i < g->ids_cap; i++) {
			if (g->ids[i].id == 0)
				continue;
			unsigned h = (unsigned)(g->ids[i].id * 0x9e3779b97f4a7c15ull >> 40) & (cap - 1);

			while (more[h].id != 0)
				h = (h + 1) & (cap - 1);
			more[h] = g->ids[i];
		}
		free(g->ids);
		g->ids = more;
		g->ids_cap = cap;
	}
	unsigned h = (unsigned)(id * 0x9e3779b97f4a7c15ull >> 40) & (g->ids_cap - 1);

	while (g->ids[h].id != 0)
		h = (h + 1) & (g->ids_cap - 1);
	g->ids[h] = (struct id_ent){ .id = id, .root = root, .chunk = (uint8_t)chunk };
	g->nids++;
	return 0;
}

static const struct id_ent *ids_find(const struct pgroup *g, uint64_t id)
{
	if (g->ids_cap == 0)
		return NULL;
	for (unsigned h = (unsigned)(id * 0x9e3779b97f4a7c15ull >> 40) & (g->ids_cap - 1);;
	     h = (h + 1) & (g->ids_cap - 1)) {
		if (g->ids[h].id == id)
			return &g->ids[h];
		if (g->ids[h].id == 0)
			return NULL;
	}
}

/* ---- opening and closing events ---- */

static uint32_t bp_type_of(uint8_t mode)
{
	switch (mode) {
	case 0:
		return HW_BREAKPOINT_X;
	case 1:
		return HW_BREAKPOINT_W;
	default:
		return HW_BREAKPOINT_RW;
	}
}

/* The attributes of chunk k's breakpoint, or of the tracker (k == TRACKER). */
static void build_attr(const struct pgroup *g, unsigned k, struct perf_event_attr *a)
{
	memset(a, 0, sizeof *a);
	a->size = sizeof *a;
	a->sample_type = PERF_SAMPLE_IDENTIFIER | PERF_SAMPLE_TID | PERF_SAMPLE_TIME;
	a->inherit = 1;
	a->inherit_thread = 1;
	a->use_clockid = 1;
	a->clockid = CLOCK_MONOTONIC;
	a->sample_id_all = 1;
	a->exclude_kernel = 1;
	a->exclude_hv = 1;
	a->watermark = 1;
	a->wakeup_watermark = (uint32_t)(g->data_bytes / 2);
	if (k == VALUE_EVENT) {
		a->type = PERF_TYPE_SOFTWARE;
		a->config = PERF_COUNT_SW_BPF_OUTPUT;
		a->sample_period = 1;
		a->sample_type |= PERF_SAMPLE_RAW;
		a->inherit = 0;
		a->inherit_thread = 0;
		return;
	}
	if (k == TRACKER) {
		a->type = PERF_TYPE_SOFTWARE;
		a->config = PERF_COUNT_SW_DUMMY;
		a->task = 1;
		a->comm = 1;
		a->comm_exec = 1;
		return;
	}
	const struct fw_chunk *c = &g->chunks[k];

	a->type = PERF_TYPE_BREAKPOINT;
	a->bp_type = bp_type_of(c->mode);
	a->bp_addr = c->address;
	/* An execute breakpoint is one instruction: the kernel wants sizeof(long). */
	a->bp_len = c->mode == 0 ? sizeof(long) : c->length;
	a->sample_period = 1;
	if (!g->w.count_only)
		a->sample_type |= PERF_SAMPLE_IP;
	if (!g->w.count_only && g->w.opt.stack_depth > 0) {
		a->sample_type |= PERF_SAMPLE_REGS_USER | PERF_SAMPLE_STACK_USER;
		a->sample_regs_user = SAMPLE_REGS;
		a->sample_stack_user = STACK_SAMPLE_BYTES;
	}
	a->remove_on_exec = 1;
}

/* fd owns one of the group's CPU buffers (the others write into it). */
static bool owns_buffer(const struct pgroup *g, int fd)
{
	for (unsigned c = 0; g->bufs && c < ncpus; c++)
		if (g->bufs[c].owner == fd)
			return true;
	return false;
}

/* Closes a root's events; buffer owners stay (group_free closes them last). */
static void root_close(struct pgroup *g, struct root *r)
{
	if (!r->fd)
		return;
	for (unsigned i = 0; i < ncpus * EVENTS_PER_CPU; i++) {
		if (r->fd[i] >= 0 && !owns_buffer(g, r->fd[i]))
			close(r->fd[i]);
		r->fd[i] = -1;
	}
	free(r->fd);
	r->fd = NULL;
}

static const char *open_hint(int err)
{
	switch (err) {
	case ENOSPC:
		return ": no free debug register on that thread (4 per thread, shared by ptrace watches, other perf users and this helper's other groups; a register once written through ptrace stays reserved until the thread exits or execs)";
	case EACCES:
	case EPERM:
		return ": not permitted (root, or CAP_PERFMON and ptrace access to the process, is needed)";
	case EINVAL:
		return ": the kernel refused the breakpoint (address, length or alignment)";
	case EMFILE:
	case ENFILE:
		return ": out of file descriptors (each thread takes one per chunk and CPU, plus one; raise the agent's RLIMIT_NOFILE)";
	default:
		return "";
	}
}

/* The first event on a CPU gets that CPU's ring buffer; the others write into it. */
static int attach_buffer(struct pgroup *g, unsigned ci, int fd, pid_t tid, struct fw_error *e)
{
	struct cpu_buf *b = &g->bufs[ci];
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = EP_BUFFER };
	int err;

	if (b->owner >= 0) {
		if (ioctl(fd, PERF_EVENT_IOC_SET_OUTPUT, b->owner) == 0)
			return 0;
		err = errno;
		fw_error_set(e, err, "PERF_EVENT_IOC_SET_OUTPUT on thread %d of pid %d, cpu %d: %s",
			     (int)tid, (int)g->pid, cpus[ci], strerror(err));
		return -1;
	}
	b->map_len = (size_t)page_size + g->data_bytes;
	b->meta = mmap(NULL, b->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (b->meta == MAP_FAILED) {
		err = errno;
		b->meta = NULL;
		fw_error_set(e, err, "mapping the ring buffer of cpu %d for pid %d (%zu KiB): %s",
			     cpus[ci], (int)g->pid, b->map_len / 1024, strerror(err));
		return -1;
	}
	if (ep_fd >= 0 && epoll_ctl(ep_fd, EPOLL_CTL_ADD, fd, &ev) == -1) {
		err = errno;
		munmap(b->meta, b->map_len);
		b->meta = NULL;
		fw_error_set(e, err, "epoll_ctl: %s", strerror(err));
		return -1;
	}
	b->owner = fd;
	return 0;
}

/* Opens the group's events on one thread, every chunk on every CPU. Its
 * root index, or -1 with errno (ESRCH: the thread is gone). */
static int root_open(struct pgroup *g, pid_t tid, struct fw_error *e)
{
	struct root r = { .tid = tid };
	struct perf_event_attr a;
	int err = 0, ri = (int)g->nroots;

	if (g->nroots == g->roots_cap) {
		unsigned cap = g->roots_cap ? g->roots_cap * 2 : 16;
		struct root *more = realloc(g->roots, cap * sizeof *more);

		if (!more) {
			fw_error_set(e, ENOMEM, "pid %d: no memory for thread %d's events",
				     (int)g->pid, (int)tid);
			errno = ENOMEM;
			return -1;
		}
		g->roots = more;
		g->roots_cap = cap;
	}
	r.fd = malloc(ncpus * EVENTS_PER_CPU * sizeof *r.fd);
	if (!r.fd) {
		fw_error_set(e, ENOMEM, "pid %d: no memory for thread %d's events", (int)g->pid,
			     (int)tid);
		errno = ENOMEM;
		return -1;
	}
	for (unsigned i = 0; i < ncpus * EVENTS_PER_CPU; i++)
		r.fd[i] = -1;
	for (unsigned ci = 0; ci < ncpus; ci++) {
		/* The tracker first: it owns the CPU's buffer when it is the first. */
		for (unsigned n = 0; n <= g->nchunks; n++) {
			unsigned k = n == 0 ? TRACKER : n - 1;
			int fd;
			uint64_t id;

			build_attr(g, k, &a);
			fd = perf_open(&a, tid, cpus[ci]);
			if (fd < 0 && k == TRACKER) {
				err = errno;
				fw_error_set(e, err, "perf_event_open (thread tracker) on thread %d of pid %d, cpu %d: %s%s",
					     (int)tid, (int)g->pid, cpus[ci], fw_errno_name(err), open_hint(err));
				goto fail;
			}
			if (fd < 0) {
				err = errno;
				fw_error_set(e, err,
					     "perf_event_open breakpoint (%s of %u bytes at 0x%llx) on thread %d of pid %d, cpu %d: %s%s",
					     fw_mode_name(g->chunks[k].mode), g->chunks[k].length,
					     (unsigned long long)g->chunks[k].address, (int)tid,
					     (int)g->pid, cpus[ci], fw_errno_name(err), open_hint(err));
				goto fail;
			}
			r.fd[ci * EVENTS_PER_CPU + k] = fd;
			if (ioctl(fd, PERF_EVENT_IOC_ID, &id) == -1 || ids_add(g, id, ri, k) == -1) {
				err = errno ? errno : ENOMEM;
				fw_error_set(e, err, "PERF_EVENT_IOC_ID on thread %d of pid %d: %s",
					     (int)tid, (int)g->pid, strerror(err));
				goto fail;
			}
			if (attach_buffer(g, ci, fd, tid, e) == -1) {
				err = e->err;
				goto fail;
			}
			if (k != TRACKER && g->bpf_prog >= 0 &&
			    ioctl(fd, PERF_EVENT_IOC_SET_BPF, g->bpf_prog) == -1) {
				err = errno;
				fw_error_set(e, err,
					     "attaching the value program to thread %d of pid %d, cpu %d: %s",
					     (int)tid, (int)g->pid, cpus[ci], strerror(err));
				goto fail;
			}
		}
	}
	g->roots[g->nroots++] = r;
	return ri;
fail:
	root_close(g, &r);
	errno = err;
	return -1;
}

/* What the kernel counted on a root's events, their inherited copies included. */
static uint64_t root_kernel_count(const struct root *r)
{
	uint64_t total = 0;

	for (unsigned i = 0; r->fd && i < ncpus * EVENTS_PER_CPU; i++) {
		uint64_t v;

		if (r->fd[i] >= 0 && read(r->fd[i], &v, sizeof v) == sizeof v)
			total += v;
	}
	return total;
}

static bool root_owns_buffer(const struct pgroup *g, const struct root *r)
{
	for (unsigned i = 0; r->fd && i < ncpus * EVENTS_PER_CPU; i++)
		if (r->fd[i] >= 0 && owns_buffer(g, r->fd[i]))
			return true;
	return false;
}

/* One trap of e's thread fired the events of two roots, its own and other:
 * it inherited other's events in clone, so its own are a second copy,
 * taking a debug register each. Close them (unless one holds a ring buffer)
 * and follow the thread, and every thread that inherited them, by other. */
static void drop_second_cover(struct pgroup *g, struct tid_ent *e, int other)
{
	int own = e->root;
	struct root *r = &g->roots[own];

	if (r->tid != e->tid || !r->fd || root_owns_buffer(g, r))
		return;
	out_log(FW_LOG_DEBUG, "pid %d: thread %d also inherited the events it was given: its own closed",
		(int)g->pid, (int)e->tid);
	g->kernel_closed += root_kernel_count(r);
	root_close(g, r);
	for (unsigned i = 0; i < g->ents_cap; i++)
		if (g->ents[i].tid > 0 && g->ents[i].root == own)
			g->ents[i].root = other;
}

/* An ioctl on every breakpoint event of the group (and so on their
 * inherited copies). The trackers stay on: threads, exits and exec are
 * followed through a back-off or a park. */
static void for_each_event(struct pgroup *g, unsigned long request)
{
	for (unsigned ri = 0; ri < g->nroots; ri++)
		for (unsigned ci = 0; g->roots[ri].fd && ci < ncpus; ci++)
			for (unsigned k = 0; k < g->nchunks; k++) {
				int fd = g->roots[ri].fd[ci * EVENTS_PER_CPU + k];

				if (fd >= 0)
					ioctl(fd, request, 0);
			}
}

static void group_free(struct pgroup *g)
{
	for (unsigned ri = 0; ri < g->nroots; ri++)
		root_close(g, &g->roots[ri]);
	for (unsigned ci = 0; g->bufs && ci < ncpus; ci++) {
		if (g->bufs[ci].owner >= 0)
			close(g->bufs[ci].owner);
		if (g->bufs[ci].meta)
			munmap(g->bufs[ci].meta, g->bufs[ci].map_len);
	}
	free(g->bufs);
	if (g->bpf_prog >= 0)
		close(g->bpf_prog);
	if (g->bpf_map >= 0)
		close(g->bpf_map);
	free(g->roots);
	free(g->ents);
	free(g->ids);
	if (g->pidfd >= 0)
		close(g->pidfd);
	if (g->sym)
		fw_symctx_close(g->sym);
	free(g->known);
	memset(g, 0, sizeof *g);
	g->pidfd = -1;
	g->bpf_map = g->bpf_prog = -1;
}

/* ---- values ---- */

/* The chunk's content now, or fallback when it cannot be read (the
 * process is gone). Little-endian: the low bytes, zero-extended. */
static uint64_t read_value(pid_t pid, uint64_t address, unsigned length, uint64_t fallback)
{
	uint64_t v = 0;
	struct iovec local = { .iov_base = &v, .iov_len = length };
	struct iovec remote = { .iov_base = (void *)(uintptr_t)address, .iov_len = length };

	if (process_vm_readv(pid, &local, 1, &remote, 1, 0) != (ssize_t)length)
		return fallback;
	return v;
}

/* ---- draining ---- */

struct sample {
	uint64_t id, ip, time;
	uint32_t pid, tid;
	bool have_regs;
	uint64_t regs[SAMPLE_NREGS];
	const uint8_t *stack;
	uint64_t stack_len;
};

static bool parse_sample(const struct pgroup *g, const uint8_t *p, size_t len, struct sample *s)
{
	size_t off = 0;

#define TAKE(dst, n)                          \
	do {                                  \
		if (off + (n) > len)          \
			return false;         \
		memcpy((dst), p + off, (n)); \
		off += (n);                   \
	} while (0)
	memset(s, 0, sizeof *s);
	TAKE(&s->id, 8);
	if (!g->w.count_only)
		TAKE(&s->ip, 8);
	TAKE(&s->pid, 4);
	TAKE(&s->tid, 4);
	TAKE(&s->time, 8);
	if (!g->w.count_only && g->w.opt.stack_depth > 0) {
		uint64_t abi, size, dyn;

		TAKE(&abi, 8);
		if (abi != PERF_SAMPLE_REGS_ABI_NONE) {
			TAKE(s->regs, sizeof s->regs);
			s->have_regs = true;
		}
		TAKE(&size, 8);
		if (size > 0) {
			if (off + size + 8 > len)
				return false;
			s->stack = p + off;
			off += size;
			TAKE(&dyn, 8);
			s->stack_len = dyn < size ? dyn : size;
		}
	}
#undef TAKE
	return true;
}

static int sample_stack(struct pgroup *g, const struct sample *s, uint64_t *ips)
{
	struct user_regs_struct regs;

	if (s->have_regs) {
		memset(&regs, 0, sizeof regs);
		regs.rax = s->regs[0];
		regs.rbx = s->regs[1];
		regs.rcx = s->regs[2];
		regs.rdx = s->regs[3];
		regs.rsi = s->regs[4];
		regs.rdi = s->regs[5];
		regs.rbp = s->regs[6];
		regs.rsp = s->regs[7];
		regs.rip = s->regs[8];
		regs.r8 = s->regs[9];
		regs.r9 = s->regs[10];
		regs.r10 = s->regs[11];
		regs.r11 = s->regs[12];
		regs.r12 = s->regs[13];
		regs.r13 = s->regs[14];
		regs.r14 = s->regs[15];
		regs.r15 = s->regs[16];
	}
	return fw_hit_stack(g->sym, g->known, g->pid, (pid_t)s->tid, s->have_regs ? &regs : NULL,
			    s->stack, (size_t)s->stack_len, s->ip, ips, g->w.opt.stack_depth);
}

/* A value event's sample: identifier, pid/tid, time, raw (u32 size, the word). */
static void on_value(struct pgroup *g, unsigned ci, const uint8_t *p, size_t len)
{
	struct cpu_buf *b = &g->bufs[ci];
	uint32_t raw_size;

	if (len < 8 + 8 + 8 + 4 + FW_BPF_VALUE_BYTES)
		return;
	memcpy(&b->pending_tid, p + 12, 4);
	memcpy(&b->pending_time, p + 16, 8);
	memcpy(&raw_size, p + 24, 4);
	if (raw_size < FW_BPF_VALUE_BYTES)
		return;
	memcpy(&b->pending_word, p + 28, 8);
	b->pending = true;
}

/* The exact value of chunk c for a breakpoint sample, if the value record
 * written just before it on this CPU is its own. */
static bool take_value(struct pgroup *g, unsigned ci, const struct sample *s,
		       const struct fw_chunk *c, uint64_t *value)
{
	struct cpu_buf *b = &g->bufs[ci];

	if (!b->pending)
		return false;
	b->pending = false;
	/* The sample's time may be taken before the program runs: either order. */
	if (b->pending_tid != s->tid ||
	    (s->time > b->pending_time ? s->time - b->pending_time : b->pending_time - s->time) >
		    VALUE_PAIR_NS)
		return false;
	*value = fw_chunk_value(b->pending_word, c->address, c->length);
	return true;
}

/* What on_sample's hooks need of the sample (struct fw_trap's ctx). */
struct sample_ctx {
	struct pgroup *g;
	unsigned ci;
	const struct sample *s;
	unsigned k;
};

/* The value the kernel read at the trap when its record is there, else
 * what the chunk holds now (or, unreadable, what it held last). */
static void sample_read_value(struct fw_trap *t)
{
	const struct sample_ctx *c = t->ctx;
	struct pgroup *g = c->g;
	const struct fw_chunk *chunk = &g->chunks[c->k];

	t->value_exact = take_value(g, c->ci, c->s, chunk, &t->value);
	if (!t->value_exact)
		t->value = read_value(g->pid, chunk->address, chunk->length, g->last_value[c->k]);
	t->old_value = g->last_value[c->k];
	g->last_value[c->k] = t->value;
}

static int sample_read_stack(struct fw_trap *t, uint64_t *ips)
{
	const struct sample_ctx *c = t->ctx;

	return sample_stack(c->g, c->s, ips);
}

/* Whether a breakpoint sample from root ri is a copy of the trap whose
 * samples came just before it in the buffer: same thread, chunk and ip,
 * from a root that trap has not fired yet. Otherwise it opens a new group.
 * *first: the root of that trap's first sample. */
static bool twin_of(struct cpu_buf *b, const struct sample *s, unsigned k, int ri, int *first)
{
	struct trap_group *t = &b->last;
	uint64_t gap = s->time > t->time ? s->time - t->time : t->time - s->time;
	bool twin = t->open && t->tid == s->tid && t->chunk == k && t->ip == s->ip &&
		    gap <= TWIN_NS && t->nroots < FW_SLOTS_PER_THREAD;

	for (unsigned i = 0; twin && i < t->nroots; i++)
		twin = t->roots[i] != ri;
	if (twin) {
		*first = t->roots[0];
		t->roots[t->nroots++] = ri;
		return true;
	}
	*t = (struct trap_group){ .open = true, .chunk = (uint8_t)k, .tid = s->tid, .ip = s->ip,
				  .time = s->time, .nroots = 1, .roots = { ri } };
	return false;
}

static void on_sample(struct pgroup *g, unsigned ci, const uint8_t *p, size_t len,
		      uint64_t real_off)
{
	const struct id_ent *which;
	struct sample s;
	struct tid_ent *e;
	struct sample_ctx ctx;
	struct fw_trap trap;
	unsigned k;
	int ri, first;

	if (len < 8)
		return;
	memcpy(&s.id, p, 8); /* the identifier comes first */
	which = ids_find(g, s.id);
	if (!which)
		return; /* not this group's (cannot happen: the buffer is the group's) */
	if (which->chunk == VALUE_EVENT) {
		on_value(g, ci, p, len);
		return;
	}
	if (!parse_sample(g, p, len, &s))
		return;
	ri = which->root;
	k = which->chunk;
	if (k >= g->nchunks)
		return; /* the tracker samples nothing */
	g->seen++;
	e = ent_get(g, (pid_t)s.tid, ri);
	if (twin_of(&g->bufs[ci], &s, k, ri, &first)) {
		/* The trap counted from its first sample; this value record is its twin's. */
		g->bufs[ci].pending = false;
		if (e && (e->root == first || e->root == ri))
			drop_second_cover(g, e, e->root == first ? ri : first);
		return;
	}
	ctx = (struct sample_ctx){ .g = g, .ci = ci, .s = &s, .k = k };
	/* Never late: until settle disables the events (budget spent, back-off)
	 * every sample goes through every step, after a rate limit hit in
	 * this drain too. Not exec_seen either: a sample in another CPU's
	 * buffer may predate the exec record just read, and after exec the
	 * breakpoints are gone anyway. The value is read only for a hit. */
	trap = (struct fw_trap){
		.pid = g->pid,
		.tid = (pid_t)s.tid,
		.ip = s.ip,
		.time_ns = s.time + real_off,
		.chunk = g->chunks[k],
		.read_value = sample_read_value,
		.read_stack = sample_read_stack,
		.nframes = -1,
		.ctx = &ctx,
	};
	switch (fw_watch_trap(&g->w, &trap)) {
	case FW_TRAP_COUNTED:
		if (e)
			e->hits++;
		break;
	case FW_TRAP_DELIVERED:
		break;
	default:
		return;
	}
	if (g->w.done)
		for_each_event(g, PERF_EVENT_IOC_DISABLE); /* the budget is spent */
}

struct task_record {
	uint32_t pid, ppid, tid, ptid;
	uint64_t time;
};

/* announce: report a fork child (not while ARM only peeks at records). */
static void on_fork(struct pgroup *g, int ri, const struct task_record *t, bool announce)
{
	struct tid_ent *e;

	if (t->pid != (uint32_t)g->pid) {
		/* A new process (fork): not watched (inherit_thread). */
		if (announce && t->ppid == (uint32_t)g->pid && t->tid == t->pid && first_of_pid(g))
			out_target_fork(g->pid, (pid_t)t->pid);
		return;
	}
	e = ent_find(g, (pid_t)t->tid);
	if (e && e->dead_pass != 0)
		*e = (struct tid_ent){ .tid = e->tid, .root = ri }; /* tid reused */
	else if (!e)
		ent_get(g, (pid_t)t->tid, ri);
}

/* The root of a non-sample record: sample_id_all puts the identifier last. */
static int record_root(const struct pgroup *g, const uint8_t *body, size_t len)
{
	const struct id_ent *which;
	uint64_t id;

	if (len < 8)
		return -1;
	memcpy(&id, body + len - 8, 8);
	which = ids_find(g, id);
	return which ? which->root : -1;
}

static void on_record(struct pgroup *g, unsigned ci, const struct perf_event_header *h,
		      const uint8_t *body, size_t len, uint64_t real_off)
{
	struct task_record t;
	int ri;

	/* Nothing comes between the samples of one trap. */
	if (h->type != PERF_RECORD_SAMPLE)
		g->bufs[ci].last.open = false;
	switch (h->type) {
	case PERF_RECORD_SAMPLE:
		on_sample(g, ci, body, len, real_off);
		break;
	case PERF_RECORD_FORK:
		ri = record_root(g, body, len);
		if (len >= sizeof t && ri >= 0) {
			memcpy(&t, body, sizeof t);
			on_fork(g, ri, &t, true);
		}
		break;
	case PERF_RECORD_EXIT:
		if (len >= sizeof t) {
			struct tid_ent *e;

			memcpy(&t, body, sizeof t);
			ri = record_root(g, body, len);
			e = t.pid == (uint32_t)g->pid ? ent_find(g, (pid_t)t.tid) : NULL;
			if (e && e->root == ri && e->dead_pass == 0)
				e->dead_pass = g->pass ? g->pass : 1;
		}
		break;
	case PERF_RECORD_COMM:
		if ((h->misc & PERF_RECORD_MISC_COMM_EXEC) && len >= 4) {
			uint32_t pid;

			memcpy(&pid, body, 4);
			if (pid == (uint32_t)g->pid)
				g->exec_seen = true;
		}
		break;
	case PERF_RECORD_LOST:
		if (len >= 16) {
			uint64_t lost;

			/* The number counts value records and samples alike: the
			 * traps among them come from the kernel's counts
			 * (reconcile_lost). */
			memcpy(&lost, body + 8, 8);
			g->bufs[ci].pending = false; /* its sample may be among them */
			g->lost_seen = lost > 0 || g->lost_seen;
		}
		break;
	case PERF_RECORD_THROTTLE:
		g->lost_seen = true;
		if (!g->throttle_warned) {
			g->throttle_warned = true;
			out_log(FW_LOG_WARNING,
				"pid %d: the kernel throttled breakpoint sampling (kernel.perf_event_max_sample_rate): traps while throttled are neither counted nor reported",
				(int)g->pid);
		}
		break;
	default:
		break;
	}
}

/* Where one CPU's buffer is read from, and its next record. */
struct cursor {
	struct perf_event_mmap_page *m;
	const uint8_t *data;
	uint64_t size, head, tail;
	bool ready; /* h and time describe a whole record at tail */
	struct perf_event_header h;
	uint64_t time;
};

static void ring_copy(const struct cursor *c, uint64_t pos, void *dst, size_t n)
{
	uint64_t at = pos % c->size;

	if (at + n <= c->size) {
		memcpy(dst, c->data + at, n);
	} else {
		size_t first = (size_t)(c->size - at);

		memcpy(dst, c->data + at, first);
		memcpy((uint8_t *)dst + first, c->data, n - first);
	}
}

/* Loads the header and time of the cursor's next record: false when what
 * is left is not a whole record. A sample's time follows its identifier
 * (and its ip, on breakpoints that sample one); every other record ends
 * with sample_id (pid/tid, time, identifier). */
static bool cursor_peek(const struct pgroup *g, struct cursor *c)
{
	size_t body, off;

	c->ready = false;
	if (c->head - c->tail < sizeof c->h)
		return false;
	ring_copy(c, c->tail, &c->h, sizeof c->h);
	if (c->h.size < sizeof c->h || c->h.size > c->head - c->tail)
		return false;
	body = c->h.size - sizeof c->h;
	c->time = 0;
	if (c->h.type == PERF_RECORD_SAMPLE && body >= 8) {
		const struct id_ent *which;
		uint64_t id;

		ring_copy(c, c->tail + sizeof c->h, &id, 8);
		which = ids_find(g, id);
		off = which && which->chunk != VALUE_EVENT && !g->w.count_only ? 24 : 16;
	} else {
		off = body >= 16 ? body - 16 : body;
	}
	if (off + 8 <= body)
		ring_copy(c, c->tail + sizeof c->h + off, &c->time, 8);
	c->ready = true;
	return true;
}

/* Starts reading one CPU's buffer where the helper last stopped; false if
 * the CPU has none. */
static bool cursor_open(const struct pgroup *g, unsigned ci, struct cursor *c)
{
	*c = (struct cursor){ .m = g->bufs[ci].meta };
	if (!c->m)
		return false;
	c->data = (const uint8_t *)c->m + c->m->data_offset;
	c->size = c->m->data_size;
	c->head = __atomic_load_n(&c->m->data_head, __ATOMIC_ACQUIRE);
	c->tail = c->m->data_tail;
	cursor_peek(g, c);
	return true;
}

/* Looks for FORK records in one CPU's buffer (ARM, rescans), leaving every
 * record in place. */
static void scan_forks(struct pgroup *g, unsigned ci)
{
	struct cursor c;

	if (!cursor_open(g, ci, &c))
		return;
	for (; c.ready; c.tail += c.h.size, cursor_peek(g, &c)) {
		uint8_t body[sizeof(struct task_record) + 64];
		size_t len = c.h.size - sizeof c.h;
		struct task_record t;
		int ri;

		/* A FORK body: the task record, then sample_id (ending with the identifier). */
		if (c.h.type != PERF_RECORD_FORK || len < sizeof t || len > sizeof body)
			continue;
		ring_copy(&c, c.tail + sizeof c.h, body, len);
		ri = record_root(g, body, len);
		memcpy(&t, body, sizeof t);
		if (ri >= 0)
			on_fork(g, ri, &t, false);
	}
}

/* Handles what the group's buffers hold, merged across CPUs in time order
 * (a thread that moves to another CPU writes its later traps into another
 * buffer): records newer than a millisecond ago wait for the next drain,
 * since another CPU may still be writing older ones, unless all is set
 * (the events are disabled). */
static void drain(struct pgroup *g, bool all)
{
	static struct cursor cur[MAX_CPUS];
	static uint8_t rec[65536];
	uint64_t now = fw_mono_ns(), real_off = fw_realtime_ns() - now;
	uint64_t horizon = all ? UINT64_MAX : now - DRAIN_HORIZON_NS;

	g->pass++;
	for (unsigned ci = 0; ci < ncpus; ci++)
		cursor_open(g, ci, &cur[ci]);
	for (;;) {
		int best = -1;

		for (unsigned ci = 0; ci < ncpus; ci++)
			if (cur[ci].ready && cur[ci].time <= horizon &&
			    (best < 0 || cur[ci].time < cur[best].time))
				best = (int)ci;
		if (best < 0)
			break;
		struct cursor *c = &cur[best];

		ring_copy(c, c->tail, rec, c->h.size);
		on_record(g, (unsigned)best, &c->h, rec + sizeof c->h, c->h.size - sizeof c->h, real_off);
		c->tail += c->h.size;
		cursor_peek(g, c);
	}
	for (unsigned ci = 0; ci < ncpus; ci++)
		if (cur[ci].m)
			__atomic_store_n(&cur[ci].m->data_tail, cur[ci].tail, __ATOMIC_RELEASE);
	if (!g->w.count_only)
		ents_purge(g);
}

/* ---- counts, threads, finishing ---- */

static void send_counts(struct pgroup *g)
{
	static struct fw_thread_count batch[COUNTS_PER_FRAME];
	uint64_t now = fw_realtime_ns();
	unsigned n = 0;
	bool sent = false;

	for (unsigned i = 0; i < g->ents_cap; i++) {
		struct tid_ent *e = &g->ents[i];

		if (e->tid <= 0 || e->hits == 0)
			continue;
		batch[n++] = (struct fw_thread_count){ .tid = e->tid, .hits = e->hits };
		e->hits = 0;
		if (n == COUNTS_PER_FRAME) {
			out_counts(g->pid, g->w.id, now, &g->w.counts, batch, n);
			n = 0;
			sent = true;
		}
	}
	if (n > 0 || !sent)
		out_counts(g->pid, g->w.id, now, &g->w.counts, batch, n);
	ents_purge(g);
}

struct uncovered {
	pid_t tids[FW_MAX_THREADS];
	unsigned n;
};

/* The thread has events of the group: its own, or inherited (an entry made
 * by its FORK record or a sample) and not seen exiting. */
static bool covered(struct pgroup *g, pid_t tid)
{
	struct tid_ent *e = ent_find(g, tid);

	return e && e->dead_pass == 0;
}

/* Lists /proc/PID/task into u, the threads not covered: the number of
 * threads, or -1 if the process is gone. */
static int list_uncovered(struct pgroup *g, struct uncovered *u)
{
	struct fw_tasks tasks;
	pid_t tid;
	int n = 0;

	u->n = 0;
	if (fw_tasks_open(&tasks, g->pid) == -1)
		return -1;
	while ((tid = fw_tasks_next(&tasks)) != 0) {
		n++;
		if (!covered(g, tid) && u->n < FW_MAX_THREADS)
			u->tids[u->n++] = tid;
	}
	fw_tasks_close(&tasks);
	return n;
}

/* Drops from u the threads a FORK record (still in a buffer) announces;
 * a record written a moment after the thread became visible gets a few
 * chances. */
static void drop_announced(struct pgroup *g, struct uncovered *u)
{
	for (int attempt = 0; attempt <= ANNOUNCE_RETRIES && u->n > 0; attempt++) {
		unsigned keep = 0;

		if (attempt > 0)
			sched_yield();
		for (unsigned ci = 0; ci < ncpus; ci++)
			scan_forks(g, ci);
		for (unsigned i = 0; i < u->n; i++)
			if (!covered(g, u->tids[i]))
				u->tids[keep++] = u->tids[i];
		u->n = keep;
	}
}

/* Gives each uncovered thread events of its own. -1 (error in e) on the
 * first failure other than the thread being gone, if strict; else the
 * number of threads left uncovered. *gone: threads that were exiting. */
static int cover(struct pgroup *g, const struct uncovered *u, bool strict, unsigned *gone,
		 struct fw_error *e)
{
	int left = 0;

	*gone = 0;
	for (unsigned i = 0; i < u->n; i++) {
		struct tid_ent *ent;
		int ri = root_open(g, u->tids[i], e);

		if (ri < 0) {
			if (errno == ESRCH) {
				(*gone)++; /* exiting: nothing left to watch there */
				continue;
			}
			if (strict)
				return -1;
			left++;
			continue;
		}
		ent = ent_get(g, u->tids[i], ri);
		if (ent) {
			if (ent->dead_pass != 0)
				*ent = (struct tid_ent){ .tid = ent->tid };
			ent->root = ri;
		}
	}
	return left;
}

/* A periodic rescan: new threads not announced by a FORK record get events
 * of their own; THREADS reports changes. */
static void rescan(struct pgroup *g)
{
	static struct uncovered u;
	struct fw_error e;
	int total, left = 0;

	total = list_uncovered(g, &u);
	if (total < 0)
		return; /* gone: the pidfd says so */
	if (u.n > 0) {
		/* Their FORK records may be waiting in a buffer. */
		drain(g, false);
		drop_announced(g, &u);
		unsigned gone;

		left = cover(g, &u, false, &gone, &e);
		if (left > 0 && !g->unarmed_warned) {
			g->unarmed_warned = true;
			out_log(FW_LOG_WARNING, "pid %d: %d thread(s) not watched: %s", (int)g->pid,
				left, e.msg);
		}
	}
	if ((uint32_t)total != g->reported_total || (uint32_t)(total - left) != g->reported_armed) {
		g->reported_total = (uint32_t)total;
		g->reported_armed = (uint32_t)(total - left);
		out_threads(g->pid, g->reported_total, g->reported_armed);
	}
}

/* What the kernel counted on the group's breakpoint events since they
 * became this group's: every trap, sampled or not. */
static uint64_t kernel_traps(const struct pgroup *g)
{
	uint64_t kernel = g->kernel_closed;

	for (unsigned ri = 0; ri < g->nroots; ri++)
		kernel += root_kernel_count(&g->roots[ri]);
	return kernel > g->kernel_base ? kernel - g->kernel_base : 0;
}

/* Traps of a kernel count that no sample read so far stands for: their
 * samples were dropped with a full buffer or skipped while the kernel
 * throttled the event. Counted as trapped and lost. */
static void count_missing(struct pgroup *g, uint64_t kernel)
{
	uint64_t missing;

	if (kernel <= g->seen)
		return;
	missing = kernel - g->seen;
	g->seen += missing;
	g->w.counts.lost += missing;
	g->w.counts.trapped += missing;
}

/* While samples are being lost, the live counts follow the kernel's: a
 * count read at one reconcile is compared at the next, RECONCILE_MS and a
 * drain later, when every sample of a trap it counted has been read or
 * lost. So the live lost count never runs ahead of the truth; the final
 * drain makes it exact. Nothing is read while nothing is lost. */
static void reconcile_lost(struct pgroup *g, int64_t now)
{
	if (now < g->next_reconcile_ms)
		return;
	if (g->prev_valid)
		count_missing(g, g->kernel_prev);
	g->prev_valid = g->lost_seen;
	if (g->lost_seen) {
		g->kernel_prev = kernel_traps(g);
		g->lost_seen = false;
		g->next_reconcile_ms = now + RECONCILE_MS;
	}
}

/* Disables every event and drains what is left; the counts are then final
 * (a counting group sends its last COUNTS): trapped is the kernel's count
 * of the group's breakpoint events, whatever the buffers lost. */
static void final_drain(struct pgroup *g)
{
	for_each_event(g, PERF_EVENT_IOC_DISABLE);
	drain(g, true);
	count_missing(g, kernel_traps(g));
	if (g->w.counts.lost > 0)
		out_log(FW_LOG_WARNING,
			"pid %d: %llu trap(s) counted by the kernel had no sample (ring buffer full or sampling throttled): counted as lost",
			(int)g->pid, (unsigned long long)g->w.counts.lost);
	if (g->w.count_only)
		send_counts(g);
}

/* The group's last counts and GROUP_DONE; then, when this side saw the
 * process exit or exec (report_target), the dispatcher hears of it. */
static void finish(struct pgroup *g, enum fw_done_reason reason, bool report_target)
{
	pid_t pid = g->pid;
	uint64_t start_time = g->start_time;

	final_drain(g);
	out_group_done(pid, reason, g->w.id, &g->w.counts);
	group_free(g);
	if (!report_target || reason == FW_DONE_BUDGET)
		return;
	if (reason == FW_DONE_EXEC)
		backend_target_exec(FW_BACKEND_PERF, pid);
	else
		backend_target_exited(FW_BACKEND_PERF, pid, NULL, start_time);
}

void perf_target_gone(pid_t pid, enum fw_done_reason reason)
{
	for (int i = 0; i < PERF_MAX_GROUPS; i++) {
		if (!groups[i].used || groups[i].pid != pid)
			continue;
		if (groups[i].parked)
			group_free(&groups[i]);
		else
			finish(&groups[i], reason, false);
	}
}

void perf_release_parked(pid_t pid)
{
	for (int i = 0; i < PERF_MAX_GROUPS; i++)
		if (groups[i].used && groups[i].parked && groups[i].pid == pid)
			group_free(&groups[i]);
}

/* At least 1 ms: perf_process_pending ends a back-off that is over in
 * the same pass that started it. */
static void start_backoff(struct pgroup *g, int64_t now)
{
	for_each_event(g, PERF_EVENT_IOC_DISABLE);
	fw_watch_start_backoff(&g->w, g->pid, now, 1);
}

/* Each chunk's value now: the old value of its next hit (kept where the
 * process cannot be read). */
static void reread_values(struct pgroup *g)
{
	for (unsigned k = 0; k < g->nchunks; k++)
		g->last_value[k] = read_value(g->pid, g->chunks[k].address, g->chunks[k].length,
					      g->last_value[k]);
}

static void end_backoff(struct pgroup *g)
{
	reread_values(g);
	g->w.backoff = false;
	for_each_event(g, PERF_EVENT_IOC_ENABLE);
	out_group_resumed(g->pid, g->w.id);
}

/* After a drain: what the records asked for. */
static void settle(struct pgroup *g, int64_t now)
{
	/* An exec seen in the records came before any exit the pidfd shows. */
	if (g->exec_seen) {
		finish(g, FW_DONE_EXEC, true);
		return;
	}
	if (g->exited) {
		fw_procexit_read();
		if (!fw_procexit_settled(g->pid, g->exited_ms, now, EXIT_QUIET_MS) &&
		    now - g->exited_ms < EXIT_WAIT_MS)
			return; /* its status is on its way */
		finish(g, FW_DONE_EXITED, true);
		return;
	}
	if (g->w.done) {
		finish(g, FW_DONE_BUDGET, true);
		return;
	}
	if (g->w.backoff_pending && !g->w.backoff)
		start_backoff(g, now);
}

void perf_on_ready(void)
{
	struct epoll_event evs[64];
	int n;

	if (ep_fd < 0)
		return;
	n = epoll_wait(ep_fd, evs, 64, 0);
	for (int i = 0; i < n; i++)
		if (evs[i].data.u64 == EP_PROCEXIT) {
			fw_procexit_read();
		} else if (evs[i].data.u64 != EP_BUFFER) {
			unsigned gi = (unsigned)(evs[i].data.u64 - 1);

			if (gi < PERF_MAX_GROUPS && groups[gi].used && !groups[gi].exited) {
				groups[gi].exited = true;
				groups[gi].exited_ms = fw_now_ms();
			}
		}
	next_drain_ms = 0; /* now */
}

void perf_process_pending(void)
{
	int64_t now = fw_now_ms();
	bool any = false;

	for (int i = 0; i < PERF_MAX_GROUPS; i++) {
		struct pgroup *g = &groups[i];

		if (!g->used)
			continue;
		if (g->parked) {
			if (g->exited || now >= g->park_until_ms)
				group_free(g);
			continue;
		}
		if (now >= next_drain_ms || g->exited) {
			drain(g, g->exited);
			reconcile_lost(g, now);
		}
		settle(g, now);
		if (!g->used)
			continue;
		if (fw_watch_backoff_over(&g->w, now))
			end_backoff(g);
		if (g->w.count_only && now >= g->next_counts_ms) {
			send_counts(g);
			g->next_counts_ms = now + g->interval_ms;
		}
		if (now >= g->next_scan_ms) {
			rescan(g);
			settle(g, now);
			if (!g->used)
				continue;
			g->next_scan_ms = now + SCAN_MS;
		}
		any = true;
	}
	if (now >= next_drain_ms)
		next_drain_ms = any ? now + DRAIN_MS : INT64_MAX;
	else if (!any)
		next_drain_ms = INT64_MAX;
}

int perf_next_timeout_ms(void)
{
	int64_t now = fw_now_ms(), due = next_drain_ms;

	for (int i = 0; i < PERF_MAX_GROUPS; i++) {
		const struct pgroup *g = &groups[i];

		if (!g->used)
			continue;
		if (g->parked) {
			if (g->park_until_ms < due)
				due = g->park_until_ms;
			continue;
		}
		if (g->next_scan_ms < due)
			due = g->next_scan_ms;
		if (g->w.count_only && g->next_counts_ms < due)
			due = g->next_counts_ms;
		if (g->w.backoff && g->w.backoff_until_ms < due)
			due = g->w.backoff_until_ms;
		if (g->exited && now + 1 < due)
			due = now + 1; /* waiting for its status (settle) */
	}
	return fw_timeout_ms(due, now);
}

/* ---- ARM and DISARM ---- */

/* The pidfd is readable once the process has exited (a zombie included). */
static bool process_exited(const struct pgroup *g)
{
	struct pollfd p = { .fd = g->pidfd, .events = POLLIN };

	return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

int perf_check_arm(pid_t pid, const struct fw_watch_options *opt, bool count_only,
		   uint32_t interval_ms, struct fw_error *e)
{
	if (values_mode == FW_PERF_UNAVAILABLE) {
		fw_error_set(e, EOPNOTSUPP, "ARM pid %d on the perf backend: %s", (int)pid, note);
		return -1;
	}
	if (opt->nconditions > 0) {
		fw_error_set(e, EINVAL,
			     "ARM pid %d: conditions need the value at the trap, which only the ptrace backend has (the perf backend never stops the target)",
			     (int)pid);
		return -1;
	}
	if (count_only && interval_ms != 0 &&
	    (interval_ms < MIN_INTERVAL_MS || interval_ms > MAX_INTERVAL_MS)) {
		fw_error_set(e, EINVAL, "ARM pid %d: count interval of %u ms (must be %u-%u)",
			     (int)pid, interval_ms, MIN_INTERVAL_MS, MAX_INTERVAL_MS);
		return -1;
	}
	return 0;
}

static void drop_values(struct pgroup *g)
{
	for (unsigned ci = 0; ci < ncpus; ci++) {
		struct cpu_buf *b = &g->bufs[ci];

		if (b->value_fd < 0)
			continue;
		if (b->meta)
			munmap(b->meta, b->map_len);
		close(b->value_fd);
		*b = (struct cpu_buf){ .owner = -1, .value_fd = -1 };
	}
	if (g->bpf_prog >= 0)
		close(g->bpf_prog);
	if (g->bpf_map >= 0)
		close(g->bpf_map);
	g->bpf_prog = g->bpf_map = -1;
}

/* Exact values: the program, its map, and a value event per CPU owning that
 * CPU's buffer, so each value record lands right before its breakpoint's
 * sample. On failure the group reads values after the trap (and says so). */
static void setup_values(struct pgroup *g)
{
	struct perf_event_attr a;
	struct fw_error e = { 0 };
	char err[768] = "";

	g->bpf_map = fw_bpf_map_create((unsigned)cpus[ncpus - 1] + 1, err, sizeof err);
	if (g->bpf_map >= 0)
		g->bpf_prog = fw_bpf_prog_load(g->bpf_map, err, sizeof err);
	for (unsigned ci = 0; ci < ncpus && g->bpf_prog >= 0 && !err[0]; ci++) {
		uint64_t id;
		int fd;

		build_attr(g, VALUE_EVENT, &a);
		fd = perf_open(&a, -1, cpus[ci]);
		if (fd < 0) {
			snprintf(err, sizeof err, "opening the value event on cpu %d: %s", cpus[ci],
				 strerror(errno));
			break;
		}
		g->bufs[ci].value_fd = fd;
		if (ioctl(fd, PERF_EVENT_IOC_ID, &id) == -1 || ids_add(g, id, -1, VALUE_EVENT) == -1 ||
		    attach_buffer(g, ci, fd, -1, &e) == -1 ||
		    fw_bpf_map_set(g->bpf_map, (unsigned)cpus[ci], fd) == -1)
			snprintf(err, sizeof err, "setting up the value event on cpu %d: %s", cpus[ci],
				 e.msg[0] ? e.msg : strerror(errno));
	}
	if (!err[0])
		return;
	drop_values(g);
	out_log(FW_LOG_WARNING, "pid %d: values of this watch are read after the trap: %s",
		(int)g->pid, err);
}

static int group_setup(struct pgroup *g, pid_t pid, uint64_t group,
		       const struct fw_watch_options *opt, const struct fw_chunk *chunks,
		       unsigned count, bool count_only, uint32_t interval_ms, struct fw_error *e)
{
	char err[256] = "";
	unsigned pages;

	memset(g, 0, sizeof *g);
	g->pidfd = -1;
	g->bpf_map = g->bpf_prog = -1;
	g->used = true;
	g->pid = pid;
	g->w.id = group;
	g->w.opt = *opt;
	g->w.count_only = count_only;
	g->interval_ms = interval_ms ? interval_ms : DEFAULT_INTERVAL_MS;
	g->nchunks = count;
	memcpy(g->chunks, chunks, count * sizeof *chunks);
	pages = count_only ? DATA_PAGES_COUNT
			   : opt->stack_depth > 0 ? DATA_PAGES_STACK : DATA_PAGES_PLAIN;
	if (buffer_pages && !count_only)
		pages = buffer_pages; /* the operator's size, whatever the CPUs */
	else
		for (unsigned n = ncpus; n > 16 && pages > DATA_PAGES_MIN; n /= 2)
			pages /= 2;
	g->data_bytes = (size_t)pages * (size_t)page_size;
	g->ents = calloc(ENTS_INITIAL, sizeof *g->ents);
	g->ents_cap = ENTS_INITIAL;
	g->bufs = calloc(ncpus, sizeof *g->bufs);
	for (unsigned ci = 0; g->bufs && ci < ncpus; ci++)
		g->bufs[ci].owner = g->bufs[ci].value_fd = -1;
	if (!g->ents || !g->bufs) {
		fw_error_set(e, ENOMEM, "ARM pid %d: no memory", (int)pid);
		return -1;
	}
	g->start_time = fw_proc_start_time(pid);
	fw_procexit_watch(pid);
	g->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (g->pidfd < 0) {
		int errn = errno;

		fw_error_set(e, errn, "pidfd_open(%d): %s%s", (int)pid, strerror(errn),
			     errn == ESRCH ? " (no such process)" : "");
		return -1;
	}
	if (!count_only && opt->stack_depth > 0) {
		g->known = calloc(1, sizeof *g->known);
		g->sym = fw_symctx_open(pid, err, sizeof err);
		if (!g->known || !g->sym) {
			fw_error_set(e, EIO, "opening the symbols of pid %d for stacks: %s", (int)pid,
				     err[0] ? err : "failed");
			return -1;
		}
	}
	if (!count_only && values_mode == FW_PERF_VALUES_EXACT)
		setup_values(g);
	return 0;
}

/* The group is armed now: its timers start, and ARMED's answer. */
static void armed(struct pgroup *g, int64_t next_scan_ms, struct fw_arm_result *result)
{
	int64_t now = fw_now_ms();

	g->w.rate.start_ms = now;
	g->next_counts_ms = now + g->interval_ms;
	g->next_scan_ms = next_scan_ms;
	if (next_drain_ms == INT64_MAX)
		next_drain_ms = now + DRAIN_MS;
	result->threads_total = g->reported_total;
	result->threads_armed = g->reported_armed;
	result->dr_mask = 0;
	for (unsigned k = 0; k < g->nchunks; k++)
		result->dr_mask |= (uint8_t)(1u << g->chunks[k].dr);
	result->reserved_mask = 0;
}

/* A parked group of pid whose events can take these chunks: the same
 * number, and samples of the same shape (counting, stacks). */
static struct pgroup *parked_match(pid_t pid, const struct fw_watch_options *opt,
				   unsigned count, bool count_only)
{
	for (int i = 0; i < PERF_MAX_GROUPS; i++) {
		struct pgroup *g = &groups[i];

		if (g->used && g->parked && !g->exited && g->pid == pid && g->nchunks == count &&
		    g->w.count_only == count_only &&
		    (g->w.opt.stack_depth > 0) == (!count_only && opt->stack_depth > 0))
			return g;
	}
	return NULL;
}

/* Points a parked group's events at new chunks without closing them
 * (PERF_EVENT_IOC_MODIFY_ATTRIBUTES, which reaches the inherited copies
 * too) and arms it as a new group: no event is opened or closed, no ring
 * buffer mapped, and no register leaves the process meanwhile. -1 if the
 * kernel refuses a change: the caller frees the group and opens anew. */
static int retarget(struct pgroup *g, uint64_t group, const struct fw_watch_options *opt,
		    const struct fw_chunk *chunks, uint32_t interval_ms, struct fw_arm_result *result)
{
	struct pgroup next = *g;
	struct perf_event_attr a;
	int64_t now = fw_now_ms(), parked_ms = now - (g->park_until_ms - PARK_MS);
	uint64_t base = g->kernel_closed;

	/* What happened while parked: an exec took the breakpoints away. */
	drain(g, true);
	if (g->exec_seen)
		return -1;
	memcpy(next.chunks, chunks, g->nchunks * sizeof *chunks);
	next.w.opt = *opt;
	for (unsigned ri = 0; ri < g->nroots; ri++) {
		const struct root *r = &g->roots[ri];

		for (unsigned ci = 0; r->fd && ci < ncpus; ci++)
			for (unsigned k = 0; k < g->nchunks; k++) {
				int fd = r->fd[ci * EVENTS_PER_CPU + k];

				build_attr(&next, k, &a);
				if (fd >= 0 && ioctl(fd, PERF_EVENT_IOC_MODIFY_ATTRIBUTES, &a) == -1) {
					out_log(FW_LOG_DEBUG,
						"pid %d: re-targeting a breakpoint: %s; opening new events",
						(int)g->pid, strerror(errno));
					return -1;
				}
			}
		base += root_kernel_count(r);
	}
	memcpy(g->chunks, chunks, g->nchunks * sizeof *chunks);
	g->w.opt = *opt;
	g->w.id = group;
	g->interval_ms = interval_ms ? interval_ms : DEFAULT_INTERVAL_MS;
	g->w.counts = (struct fw_counts){ 0 };
	g->seen = 0;
	g->lost_seen = g->prev_valid = false;
	g->next_reconcile_ms = 0;
	g->kernel_base = base;
	g->kernel_closed = 0;
	g->w.done = g->w.backoff = g->w.backoff_pending = false;
	g->parked = false;
	for (unsigned i = 0; i < g->ents_cap; i++)
		g->ents[i].hits = 0;
	for (unsigned ci = 0; ci < ncpus; ci++)
		g->bufs[ci].pending = g->bufs[ci].last.open = false;
	memset(g->last_value, 0, sizeof g->last_value);
	reread_values(g);
	for_each_event(g, PERF_EVENT_IOC_ENABLE);
	armed(g, now, result); /* threads created while parked: rescanned at once */
	out_log(FW_LOG_DEBUG,
		"pid %d: group %llu re-targets the breakpoints of a group disarmed %lld ms ago",
		(int)g->pid, (unsigned long long)group, (long long)parked_ms);
	return 0;
}

int perf_arm(pid_t pid, uint64_t group, const struct fw_watch_options *opt,
	     const struct fw_chunk *chunks, unsigned count, bool count_only, uint32_t interval_ms,
	     struct fw_arm_result *result, struct fw_error *e)
{
	static struct uncovered u;
	struct pgroup *g = NULL;
	struct epoll_event ev = { .events = EPOLLIN };
	int total = 0, gi;
	unsigned gone;

	g = parked_match(pid, opt, count, count_only);
	if (g && retarget(g, group, opt, chunks, interval_ms, result) == 0)
		return 0;
	/* Whatever is parked on the process holds registers the new events need. */
	perf_release_parked(pid);
	g = NULL;
	for (gi = 0; gi < PERF_MAX_GROUPS && !g; gi++)
		if (!groups[gi].used)
			g = &groups[gi];
	if (!g) {
		fw_error_set(e, EBUSY, "ARM pid %d: %d perf groups are armed, the most this helper holds",
			     (int)pid, PERF_MAX_GROUPS);
		return -1;
	}
	gi--;
	if (group_setup(g, pid, group, opt, chunks, count, count_only, interval_ms, e) == -1)
		goto fail;
	reread_values(g);
	/* Scan until every thread is covered: by events of its own, or by
	 * inheritance from a covered thread that created it (FORK record). */
	for (int round = 0;; round++) {
		total = list_uncovered(g, &u);
		if (total < 0) {
			fw_error_set(e, ESRCH, "ARM pid %d: no such process", (int)pid);
			goto fail;
		}
		if (round > 0)
			drop_announced(g, &u); /* created since the last round by covered threads */
		if (u.n == 0)
			break;
		if (round == ARM_SCAN_ROUNDS) {
			fw_error_set(e, EAGAIN,
				     "ARM pid %d: threads kept appearing uncovered over %d scans of /proc/%d/task",
				     (int)pid, ARM_SCAN_ROUNDS, (int)pid);
			goto fail;
		}
		if (cover(g, &u, true, &gone, e) == -1)
			goto fail;
		if (gone == u.n && process_exited(g)) {
			fw_error_set(e, ESRCH, "ARM pid %d: the process exited", (int)pid);
			goto fail;
		}
	}
	if (g->nroots == 0) {
		fw_error_set(e, ESRCH, "ARM pid %d: no thread left to watch", (int)pid);
		goto fail;
	}
	ev.data.u64 = (uint64_t)gi + 1;
	if (epoll_ctl(ep_fd, EPOLL_CTL_ADD, g->pidfd, &ev) == -1) {
		fw_error_set(e, errno, "epoll_ctl(pidfd of %d): %s", (int)pid, strerror(errno));
		goto fail;
	}
	g->reported_total = g->reported_armed = (uint32_t)total;
	armed(g, fw_now_ms() + SCAN_MS, result);
	return 0;
fail:
	group_free(g);
	return -1;
}

int perf_disarm(pid_t pid, uint64_t group, struct fw_counts *counts, struct fw_error *e)
{
	int gi = group_index(pid, group);
	struct pgroup *g;

	if (gi < 0) {
		fw_error_set(e, ENOENT, "no perf group %llu on pid %d", (unsigned long long)group,
			     (int)pid);
		return -1;
	}
	g = &groups[gi];
	/* Samples still in the buffers are traps from before: delivered as usual. */
	final_drain(g);
	*counts = g->w.counts;
	/* Its events are already disabled: kept a moment for an ARM that can
	 * re-target them (a job taking over from this one), else closed. */
	g->parked = true;
	g->park_until_ms = fw_now_ms() + PARK_MS;
	return 0;
}

void perf_close_all(void)
{
	for (int i = 0; i < PERF_MAX_GROUPS; i++)
		if (groups[i].used)
			group_free(&groups[i]);
}

int perf_set_buffer_kib(unsigned long kib)
{
	unsigned long bytes = kib * 1024ul, pagesz = (unsigned long)sysconf(_SC_PAGESIZE);
	unsigned pages = DATA_PAGES_MIN;

	if (kib == 0 || kib > DATA_PAGES_MAX * pagesz / 1024ul || bytes % pagesz != 0)
		return -1;
	while ((unsigned long)pages * pagesz < bytes)
		pages *= 2;
	if ((unsigned long)pages * pagesz != bytes || pages > DATA_PAGES_MAX)
		return -1;
	buffer_pages = pages;
	return 0;
}
