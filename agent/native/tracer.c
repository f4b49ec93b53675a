/* ptrace state machine of the helper: fixed tables of attached processes and
 * threads, classification of every stop, and the stop-the-world operations
 * (arm, disarm, budget retirement, back-off, detach). One function applies a
 * process's register mirror to a stopped thread; everything else computes.
 * Groups watching the same chunk share one register: it stays armed while
 * one of its owners is live, and each trap on it is handed to every owner's
 * accounting (watch.h). Exit and exec are reported to the dispatcher. */
#include "tracer.h"

#include "backend.h"
#include "cpufollow.h"
#include "dregs.h"
#include "symctx.h"
#include "procfs.h"
#include "symdefs.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/signalfd.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TID_HASH_SIZE 8192 /* power of two, twice FW_MAX_THREADS */
#define ATTACH_MAX_ROUNDS 1000
#define ZOMBIE_SCAN_MS 20
#define DRAIN_MAX_ROUNDS 16
#define DETACH_ALL_GRACE_MS 2000
/* Fork children are auto-attached only to be detached at their first stop
 * (adopt_unknown): they inherit no debug registers (FACTS.md), and seeing
 * the fork is how TARGET_FORK is reported. */
#define SEIZE_OPTIONS                                                             \
	(PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC | PTRACE_O_TRACEFORK | \
	 PTRACE_O_TRACEVFORK)
#define THREADS_REPORT_MS 100
#define RESERVATIONS 256

enum thread_state {
	TS_FREE = 0,
	TS_RUNNING, /* resumed by us (or listening in group-stop) */
	TS_STOPPED, /* in a ptrace stop we have reaped */
	TS_NEW,     /* auto-attached clone whose first stop has not arrived */
	TS_ZOMBIE,  /* dead but not reapable yet (a leader with live threads) */
};

enum resume_kind {
	RESUME_CONT = 0,
	RESUME_LISTEN, /* group-stop: keep job control working */
};

struct thread {
	pid_t tid;
	int16_t proc;
	uint8_t state;
	uint8_t resume;
	int resume_sig;
	uint8_t touched; /* DR0-3 written on this thread */
	bool dirty;      /* the mirror must be applied before it runs again */
	/* The mapping that held its stack pointer at the last stack copy. */
	uint64_t stack_lo, stack_hi;
};

/* A group's watch state (watch.h): done means leaving; its slots are
 * cleared at the next service once backoff_pending is set, and stay
 * cleared while backoff, unless another live owner holds them. */
struct group {
	bool used;
	uint8_t dr_mask;
	struct fw_watch w;
};

/* DR indexes this helper ever wrote in a process, kept after detach while the
 * process lives: the kernel holds those slots until the threads exit or exec.
 * Keyed by pid and start time (/proc/PID/stat field 22). */
struct reservation {
	pid_t pid;
	uint64_t start_time;
	uint8_t mask;
	uint64_t used_seq; /* for eviction: smallest is oldest */
};

struct proc {
	bool used;
	pid_t pid;
	uint64_t serial;
	bool hold;           /* keep every thread stopped when it stops */
	bool detach_pending; /* detach threads that stop later (stop deadline passed) */
	int nthreads;
	/* What the threads hold: the slots with a live owner (group_live). A
	 * slot cleared while owners are still listed (done, backed off, or
	 * being detached) counts its late traps as their suppressed. */
	struct dr_mirror mirror;
	struct dr_slot def[DR_SLOTS];      /* chunk of each owned slot, armed or not */
	dr_owners slot_owners[DR_SLOTS];   /* groups watching it, until they are freed */
	uint8_t known_mask;                /* slots we ever enabled on this process */
	uint64_t last_value[DR_SLOTS];     /* chunk value at the slot's latest read trap */
	struct group groups[FW_MAX_GROUPS];
	bool have_leader_status;
	int leader_status;
	int last_status;
	bool service_pending; /* a group reached its budget or rate limit */
	int resv;             /* index into reservations */
	struct fw_symctx *sym; /* opened at the first ARM asking for a stack */
	bool threads_changed;
	int64_t threads_reported_ms;
	uint32_t reported_total, reported_armed;
	uint64_t causeless_traps; /* debug exceptions without a cause, not delivered */
};

static struct thread threads[FW_MAX_THREADS];
static int32_t tid_hash[TID_HASH_SIZE];
static int thread_cursor;
static struct proc procs[FW_MAX_PROCS];
static uint64_t proc_serial;
static int sig_fd = -1;
static bool terminate_requested;
static struct reservation reservations[RESERVATIONS];
static uint64_t reservation_seq;
/* ips already defined to the agent by a SYMBOLS event, per process (0 = empty). */
static struct fw_known_ips known_ips[FW_MAX_PROCS];

/* ---- tables ---- */

static unsigned tid_home(pid_t tid)
{
	return ((uint32_t)tid * 2654435761u) & (TID_HASH_SIZE - 1);
}

static int thread_find(pid_t tid)
{
	for (unsigned i = tid_home(tid);; i = (i + 1) & (TID_HASH_SIZE - 1)) {
		int32_t ti = tid_hash[i];

		if (ti < 0)
			return -1;
		if (threads[ti].tid == tid)
			return ti;
	}
}

static int thread_add(pid_t tid, int pi, enum thread_state state)
{
	int ti = -1;
	unsigned h;

	for (int n = 0; n < FW_MAX_THREADS; n++) {
		int c = (thread_cursor + n) % FW_MAX_THREADS;

		if (threads[c].state == TS_FREE) {
			ti = c;
			break;
		}
	}
	if (ti < 0)
		return -1;
	thread_cursor = (ti + 1) % FW_MAX_THREADS;
	memset(&threads[ti], 0, sizeof threads[ti]);
	threads[ti].tid = tid;
	threads[ti].proc = (int16_t)pi;
	threads[ti].state = (uint8_t)state;
	threads[ti].dirty = true;
	for (h = tid_home(tid); tid_hash[h] >= 0; h = (h + 1) & (TID_HASH_SIZE - 1))
		;
	tid_hash[h] = ti;
	procs[pi].nthreads++;
	procs[pi].threads_changed = true;
	return ti;
}

/* Removes a thread; backward-shift deletion keeps the probe chains intact. */
static void thread_drop(int ti)
{
	unsigned mask = TID_HASH_SIZE - 1;
	unsigned i = tid_home(threads[ti].tid);

	while (tid_hash[i] != ti)
		i = (i + 1) & mask;
	tid_hash[i] = -1;
	for (unsigned j = (i + 1) & mask; tid_hash[j] >= 0; j = (j + 1) & mask) {
		unsigned k = tid_home(threads[tid_hash[j]].tid);
		bool stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);

		if (!stays) {
			tid_hash[i] = tid_hash[j];
			tid_hash[j] = -1;
			i = j;
		}
	}
	procs[threads[ti].proc].nthreads--;
	procs[threads[ti].proc].threads_changed = true;
	threads[ti].state = TS_FREE;
	threads[ti].tid = 0;
}

static int proc_find(pid_t pid)
{
	for (int pi = 0; pi < FW_MAX_PROCS; pi++)
		if (procs[pi].used && procs[pi].pid == pid)
			return pi;
	return -1;
}

static bool proc_alive(int pi, uint64_t serial)
{
	return procs[pi].used && procs[pi].serial == serial;
}

static int proc_alloc(pid_t pid)
{
	for (int pi = 0; pi < FW_MAX_PROCS; pi++) {
		if (!procs[pi].used) {
			memset(&procs[pi], 0, sizeof procs[pi]);
			procs[pi].used = true;
			procs[pi].pid = pid;
			procs[pi].serial = ++proc_serial;
			procs[pi].resv = -1;
			return pi;
		}
	}
	return -1;
}

/* Forgets a process and every thread still listed for it (detach, exit, exec). */
static void proc_free(int pi)
{
	for (int ti = 0; ti < FW_MAX_THREADS; ti++)
		if (threads[ti].state != TS_FREE && threads[ti].proc == pi)
			thread_drop(ti);
	if (procs[pi].sym)
		fw_symctx_close(procs[pi].sym);
	procs[pi].sym = NULL;
	fw_known_ips_reset(&known_ips[pi]);
	procs[pi].used = false;
}

static int group_count(const struct proc *p)
{
	int n = 0;

	for (int g = 0; g < FW_MAX_GROUPS; g++)
		n += p->groups[g].used;
	return n;
}

static int group_find(const struct proc *p, uint64_t id)
{
	for (int g = 0; g < FW_MAX_GROUPS; g++)
		if (p->groups[g].used && p->groups[g].w.id == id)
			return g;
	return -1;
}

static dr_owners group_bit(int g)
{
	return (dr_owners)1u << g;
}

/* A live group keeps its registers armed and handles its traps; a done or
 * backed-off one has every trap counted as suppressed. */
static bool group_live(const struct group *g)
{
	return g->used && !g->w.done && !g->w.backoff && !g->w.backoff_pending;
}

static dr_owners live_groups(const struct proc *p)
{
	dr_owners live = 0;

	for (int g = 0; g < FW_MAX_GROUPS; g++)
		if (group_live(&p->groups[g]))
			live |= group_bit(g);
	return live;
}

/* Forgets a group that has left (its registers are already cleared, or held
 * for other owners) and its place in the owner sets. */
static void group_free(struct proc *p, int g)
{
	p->groups[g].used = false;
	for (int s = 0; s < DR_SLOTS; s++)
		p->slot_owners[s] &= ~group_bit(g);
}

#define FOR_EACH_THREAD(ti, pi)                        \
	for (int ti = 0; ti < FW_MAX_THREADS; ti++)    \
		if (threads[ti].state != TS_FREE && threads[ti].proc == (pi))

/* ---- kernel slot reservations ---- */

/* The reservation entry of a live process, created if new. Evicts first an
 * entry whose process is gone, else the oldest. */
static int reservation_for(pid_t pid)
{
	uint64_t start = fw_proc_start_time(pid);
	int free_i = -1, dead_i = -1, old_i = 0;

	for (int i = 0; i < RESERVATIONS; i++) {
		struct reservation *r = &reservations[i];

		if (r->pid == pid && r->start_time == start) {
			r->used_seq = ++reservation_seq;
			return i;
		}
		if (r->pid == 0) {
			if (free_i < 0)
				free_i = i;
			continue;
		}
		if (r->used_seq < reservations[old_i].used_seq)
			old_i = i;
	}
	if (free_i < 0) {
		for (int i = 0; i < RESERVATIONS && dead_i < 0; i++)
			if (fw_proc_start_time(reservations[i].pid) != reservations[i].start_time)
				dead_i = i;
	}
	int i = free_i >= 0 ? free_i : dead_i >= 0 ? dead_i : old_i;

	reservations[i] = (struct reservation){
		.pid = pid, .start_time = start, .mask = 0, .used_seq = ++reservation_seq,
	};
	return i;
}

static uint8_t reserved_mask_of(int resv)
{
	return resv >= 0 ? reservations[resv].mask : 0;
}

/* ---- registers: the only code that writes debug registers ---- */

static size_t dr_offset(int index)
{
	return offsetof(struct user, u_debugreg[index]);
}

static const char *poke_hint(int err)
{
	switch (err) {
	case ENOSPC:
		return "no free debug register slot (held by perf or another debugger)";
	case EINVAL:
		return "the kernel rejected the value";
	case EPERM:
		return "not permitted";
	case ESRCH:
		return "thread is not stopped or is gone";
	default:
		return strerror(err);
	}
}

static int poke_dr(pid_t tid, int index, uint64_t value, struct fw_error *e)
{
	if (ptrace(PTRACE_POKEUSER, tid, (void *)dr_offset(index), (void *)value) == -1) {
		int err = errno;

		fw_error_set(e, err, "POKEUSER DR%d=0x%llx on tid %d: %s", index,
			     (unsigned long long)value, (int)tid, poke_hint(err));
		return -1;
	}
	return 0;
}

static int peek_dr(pid_t tid, int index, uint64_t *value, struct fw_error *e)
{
	long v;

	errno = 0;
	v = ptrace(PTRACE_PEEKUSER, tid, (void *)dr_offset(index), NULL);
	if (errno != 0) {
		int err = errno;

		fw_error_set(e, err, "PEEKUSER DR%d on tid %d: %s", index, (int)tid, strerror(err));
		return -1;
	}
	*value = (uint64_t)v;
	return 0;
}

/* The one function that writes debug registers of a traced thread: applies
 * mirror m to a stopped thread. DR7 = 0 first, then the addresses (slots we
 * wrote before and m no longer uses get 0), then DR7. Verified by reading the
 * addresses back; DR7 only when it must be 0 (a new thread's DR7 read-back is
 * its parent's value until written). Detach applies an empty mirror. */
static int thread_apply(struct thread *t, const struct dr_mirror *m, struct fw_error *e)
{
	uint64_t dr7 = dr7_encode(m), back;
	uint8_t written = 0;

	if (poke_dr(t->tid, DR_CONTROL, 0, e) == -1)
		return -1;
	for (int i = 0; i < DR_SLOTS; i++) {
		uint64_t address = m->slot[i].used ? m->slot[i].address : 0;

		if (!m->slot[i].used && !(t->touched & (1u << i)))
			continue; /* never written: leave the kernel slot unreserved */
		if (poke_dr(t->tid, i, address, e) == -1)
			return -1;
		t->touched |= (uint8_t)(1u << i);
		if (procs[t->proc].resv >= 0)
			reservations[procs[t->proc].resv].mask |= (uint8_t)(1u << i);
		written |= (uint8_t)(1u << i);
	}
	if (dr7 != 0 && poke_dr(t->tid, DR_CONTROL, dr7, e) == -1)
		return -1;
	for (int i = 0; i < DR_SLOTS; i++) {
		uint64_t want = m->slot[i].used ? m->slot[i].address : 0;

		if (!(written & (1u << i)))
			continue;
		if (peek_dr(t->tid, i, &back, e) == -1)
			return -1;
		if (back != want) {
			fw_error_set(e, EIO, "DR%d on tid %d reads 0x%llx after writing 0x%llx", i,
				     (int)t->tid, (unsigned long long)back, (unsigned long long)want);
			return -1;
		}
	}
	if (dr7 == 0) {
		if (peek_dr(t->tid, DR_CONTROL, &back, e) == -1)
			return -1;
		if (back != 0) {
			fw_error_set(e, EIO, "DR7 on tid %d reads 0x%llx after clearing", (int)t->tid,
				     (unsigned long long)back);
			return -1;
		}
	}
	t->dirty = false;
	procs[t->proc].threads_changed = true;
	return 0;
}

/* Disarms one stopped thread for detach. */
static int thread_clear(struct thread *t, struct fw_error *e)
{
	static const struct dr_mirror empty;

	return thread_apply(t, &empty, e);
}

/* ---- resuming and detaching one thread ---- */

static void thread_resume(int ti)
{
	struct thread *t = &threads[ti];
	long r;

	if (t->resume == RESUME_LISTEN) {
		r = ptrace(PTRACE_LISTEN, t->tid, NULL, NULL);
		if (r == -1 && errno != ESRCH)
			r = ptrace(PTRACE_CONT, t->tid, NULL, NULL);
	} else {
		r = ptrace(PTRACE_CONT, t->tid, NULL, (void *)(long)t->resume_sig);
	}
	if (r == -1 && errno != ESRCH)
		out_log(FW_LOG_WARNING, "resuming tid %d: %s", (int)t->tid, strerror(errno));
	/* ESRCH: killed while stopped; its exit status follows. */
	t->state = TS_RUNNING;
	t->resume = RESUME_CONT;
	t->resume_sig = 0;
}

static int detach_signal(const struct thread *t)
{
	return t->resume == RESUME_LISTEN ? 0 : t->resume_sig;
}

/* True if a hardware-breakpoint SIGTRAP is queued on the thread: it must be
 * consumed while we are still the tracer, or it kills the process later. */
static bool has_queued_hw_trap(pid_t tid)
{
	siginfo_t si[16];
	struct __ptrace_peeksiginfo_args args = { .off = 0, .flags = 0, .nr = 16 };

	for (int round = 0; round < 64; round++) {
		long n = ptrace(PTRACE_PEEKSIGINFO, tid, &args, si);

		if (n <= 0)
			return false;
		for (long i = 0; i < n; i++)
			if (si[i].si_signo == SIGTRAP && si[i].si_code == TRAP_HWBKPT)
				return true;
		if (n < (long)args.nr)
			return false;
		args.off += (uint64_t)n;
	}
	return false;
}

static void thread_detach(int ti)
{
	struct thread *t = &threads[ti];

	if (ptrace(PTRACE_DETACH, t->tid, NULL, (void *)(long)detach_signal(t)) == -1 &&
	    errno != ESRCH)
		out_log(FW_LOG_WARNING, "PTRACE_DETACH tid %d: %s", (int)t->tid, strerror(errno));
	thread_drop(ti);
}

/* ---- events of one process ---- */

static void proc_finish_exit(int pi)
{
	struct proc *p = &procs[pi];
	int st = p->have_leader_status ? p->leader_status : p->last_status;

	for (int g = 0; g < FW_MAX_GROUPS; g++) {
		struct group *gr = &p->groups[g];

		if (gr->used)
			out_group_done(p->pid, gr->w.done ? FW_DONE_BUDGET : FW_DONE_EXITED, gr->w.id,
				       &gr->w.counts);
	}
	backend_target_exited(FW_BACKEND_PTRACE, p->pid, &st, 0);
	proc_free(pi);
}

static void on_thread_exit(int ti, int status)
{
	int pi = threads[ti].proc;
	struct proc *p = &procs[pi];

	if (threads[ti].tid == p->pid) {
		p->have_leader_status = true;
		p->leader_status = status;
	}
	p->last_status = status;
	thread_drop(ti);
	if (p->nthreads == 0)
		proc_finish_exit(pi);
}

/* execve replaced the address space: the kernel has cleared the registers,
 * our watches mean nothing there. Report and let the new program go. */
static void on_exec(int ti)
{
	int pi = threads[ti].proc;
	struct proc *p = &procs[pi];
	struct fw_error e;

	for (int g = 0; g < FW_MAX_GROUPS; g++)
		if (p->groups[g].used)
			out_group_done(p->pid, FW_DONE_EXEC, p->groups[g].w.id, &p->groups[g].w.counts);
	backend_target_exec(FW_BACKEND_PTRACE, p->pid);
	/* The kernel released every slot of the process at exec. */
	if (p->resv >= 0)
		reservations[p->resv].mask = 0;
	/* DR7 = 0 registers nothing; never write addresses here (that would
	 * reserve a slot in the new program). */
	if (poke_dr(threads[ti].tid, DR_CONTROL, 0, &e) == -1)
		out_log(FW_LOG_DEBUG, "%s", e.msg);
	threads[ti].resume_sig = 0;
	threads[ti].resume = RESUME_CONT;
	thread_detach(ti);
	/* Other threads died in the exec; their exit statuses are ignored. */
	proc_free(pi);
}

static uint64_t read_chunk_value(pid_t tid, uint64_t address, unsigned length)
{
	long word;

	errno = 0;
	word = ptrace(PTRACE_PEEKDATA, tid, (void *)(address & ~UINT64_C(7)), NULL);
	if (errno != 0)
		return 0;
	return fw_chunk_value((uint64_t)word, address, length);
}

/* Copies up to FW_STACK_COPY_MAX bytes of a stopped thread's stack from sp,
 * not past the end of the mapping that holds sp (looked up once per thread
 * and stack, then cached). One process_vm_readv, split at page boundaries so
 * a page unmapped meanwhile only shortens the copy. */
static size_t copy_stack(struct thread *t, pid_t pid, uint64_t sp, uint8_t *buf)
{
	struct iovec local, remote[FW_STACK_COPY_MAX / 4096 + 1];
	uint64_t end, at = sp;
	unsigned n = 0;
	ssize_t got;

	if (sp < t->stack_lo || sp >= t->stack_hi) {
		if (fw_find_mapping(pid, sp, &t->stack_lo, &t->stack_hi) == -1) {
			t->stack_lo = t->stack_hi = 0;
			return 0;
		}
	}
	end = t->stack_hi - sp > FW_STACK_COPY_MAX ? sp + FW_STACK_COPY_MAX : t->stack_hi;
	while (at < end && n < sizeof remote / sizeof remote[0]) {
		uint64_t next = (at | 4095u) + 1;

		if (next > end)
			next = end;
		remote[n].iov_base = (void *)at;
		remote[n].iov_len = (size_t)(next - at);
		n++;
		at = next;
	}
	local.iov_base = buf;
	local.iov_len = (size_t)(at - sp);
	got = process_vm_readv(t->tid, &local, 1, remote, n, 0);
	return got > 0 ? (size_t)got : 0;
}

/* The stack of a stopped thread for a hit: copy from rsp, unwind with DWARF
 * CFI, define new ips. Never fails: at worst one frame, the trap's ip. */
static int capture_stack(int ti, const struct user_regs_struct *regs, int depth, uint64_t *ips)
{
	static uint8_t stack_buf[FW_STACK_COPY_MAX];
	struct thread *t = &threads[ti];
	struct proc *p = &procs[t->proc];
	size_t len = p->sym ? copy_stack(t, p->pid, regs->rsp, stack_buf) : 0;

	return fw_hit_stack(p->sym, &known_ips[t->proc], p->pid, t->tid, regs, stack_buf, len,
			    regs->rip, ips, depth);
}

/* Deepest stack any group of p wants. */
static int proc_stack_depth(const struct proc *p)
{
	int depth = 0;

	for (int g = 0; g < FW_MAX_GROUPS; g++)
		if (p->groups[g].used && p->groups[g].w.opt.stack_depth > depth)
			depth = p->groups[g].w.opt.stack_depth;
	return depth;
}

/* What on_trap's hooks need of the trap (struct fw_trap's ctx). */
struct trap_ctx {
	int ti;
	int slot;
	const struct user_regs_struct *regs;
};

/* The chunk is read once per trap, by the first owner that handles it;
 * the read moves the slot's last value, which every owner chains on. */
static void trap_read_value(struct fw_trap *tr)
{
	const struct trap_ctx *c = tr->ctx;
	struct proc *p = &procs[threads[c->ti].proc];

	tr->value = read_chunk_value(threads[c->ti].tid, tr->chunk.address, tr->chunk.length);
	tr->old_value = p->last_value[c->slot];
	p->last_value[c->slot] = tr->value;
	tr->value_exact = true;
}

/* One capture per trap, deep enough for every group of the process. */
static int trap_read_stack(struct fw_trap *tr, uint64_t *ips)
{
	const struct trap_ctx *c = tr->ctx;

	return capture_stack(c->ti, c->regs, proc_stack_depth(&procs[threads[c->ti].proc]), ips);
}

/* A debug exception whose DR6 names no cause reaches the thread as the
 * SIGTRAP Linux sends for an INT1 instruction: si_code TRAP_BRKPT, si_addr
 * the instruction pointer after it. Some virtual machines raise a watched
 * write's trap that way now and then: its status is lost on the way, so the
 * kernel counts no trap and signals the thread (README, "Safety": about one
 * in a few million traps on the VMs measured, with no helper at all).
 * Delivered, it kills a program without a SIGTRAP handler. Only an INT1
 * (0xf1) just before the ip is the program's own. True for a causeless one
 * on a process we armed. */
static bool causeless_debug_trap(const struct thread *t, const struct proc *p, uint64_t ip)
{
	siginfo_t si;
	uint64_t at, word_at;
	long word;

	if (p->known_mask == 0 || ip == 0)
		return false;
	if (ptrace(PTRACE_GETSIGINFO, t->tid, NULL, &si) == -1 || si.si_signo != SIGTRAP ||
	    si.si_code != TRAP_BRKPT || (uint64_t)(uintptr_t)si.si_addr != ip)
		return false;
	/* The aligned word holding the byte before the ip: never across a page. */
	at = ip - 1;
	word_at = at & ~(uint64_t)7;
	errno = 0;
	word = ptrace(PTRACE_PEEKTEXT, t->tid, (void *)(uintptr_t)word_at, NULL);
	if (word == -1 && errno != 0)
		return false;
	return (uint8_t)((uint64_t)word >> (8 * (at - word_at))) != 0xf1;
}

/* The slot a causeless trap belongs to: the thread's only armed one, when
 * its registers are the process's (0 when there is no single answer). */
static uint8_t causeless_trap_slot(const struct thread *t, const struct proc *p)
{
	uint8_t mask = dr_mirror_mask(&p->mirror);

	return !t->dirty && mask != 0 && (mask & (mask - 1)) == 0 ? mask : 0;
}

static void say_causeless_trap(struct proc *p, const struct thread *t, uint64_t ip, uint8_t slot)
{
	char what[64];

	p->causeless_traps++;
	/* Said the first time and at every power of two after it. */
	if ((p->causeless_traps & (p->causeless_traps - 1)) != 0)
		return;
	if (slot)
		snprintf(what, sizeof what, "counted as a trap of DR%d, its only armed register",
			 __builtin_ctz(slot));
	else
		snprintf(what, sizeof what, "dropped: more than one register armed");
	out_log(FW_LOG_WARNING,
		"pid %d: thread %d took a debug exception with no cause (DR6 empty, ip 0x%llx): "
		"not delivered to the target, %s (%llu so far)",
		(int)p->pid, (int)t->tid, (unsigned long long)ip, what,
		(unsigned long long)p->causeless_traps);
}

/* SIGTRAP signal-delivery-stop: ours if DR6 names a slot we ever enabled.
 * The hot path allocates nothing: static buffers only, out_hit appends to
 * the static output buffer (checked with uprobes on malloc, calloc and
 * realloc: 0 calls over 20,000 hits). With a stack, libdwfl's unwinder
 * mallocs per frame it steps (same check: ~57 malloc and ~42 realloc per
 * 7-frame hit), and the first sight of an ip symbolizes it. No /proc reads
 * here except a thread's first stack copy. */
static void on_trap(int ti)
{
	struct thread *t = &threads[ti];
	struct proc *p = &procs[t->proc];
	struct fw_error e;
	struct user_regs_struct regs;
	struct trap_ctx ctx = { .ti = ti, .regs = &regs };
	struct fw_trap tr;
	uint64_t dr6, ip = 0;
	uint8_t fired;

	if (peek_dr(t->tid, DR_STATUS, &dr6, &e) == -1) {
		/* Only ESRCH is possible on a stopped tracee: it is dying. */
		t->resume_sig = 0;
		return;
	}
	fired = dr6_fired(dr6, p->known_mask);
	memset(&regs, 0, sizeof regs);
	if (ptrace(PTRACE_GETREGS, t->tid, NULL, &regs) == 0)
		ip = regs.rip;
	if (fired == 0) {
		if (!causeless_debug_trap(t, p, ip)) {
			t->resume_sig = SIGTRAP; /* the program's own: re-inject */
			return;
		}
		/* Never the program's: with one register armed, that register's
		 * trap, its status lost on the way. */
		fired = causeless_trap_slot(t, p);
		say_causeless_trap(p, t, ip, fired);
		if (fired == 0) {
			t->resume_sig = 0;
			return;
		}
	}
	tr = (struct fw_trap){
		.pid = p->pid,
		.tid = t->tid,
		.ip = ip,
		.time_ns = fw_realtime_ns(),
		.value_first = true,
		.read_value = trap_read_value,
		.read_stack = trap_read_stack,
		.nframes = -1,
		.ctx = &ctx,
	};
	fw_cpu_note_trap(p->pid, t->tid);
	for (int s = 0; s < DR_SLOTS; s++) {
		const struct dr_slot *slot = &p->def[s];
		bool armed = p->mirror.slot[s].used;

		if (!(fired & (1u << s)))
			continue;
		ctx.slot = s;
		tr.chunk = (struct fw_chunk){
			.dr = (uint8_t)s, .mode = slot->mode, .length = slot->length,
			.address = slot->address,
		};
		tr.have_value = false;
		/* Every owner gets the trap on its own terms. */
		for (int gi = 0; gi < FW_MAX_GROUPS; gi++) {
			struct group *g = &p->groups[gi];
			enum fw_trap_outcome outcome;

			if (!(p->slot_owners[s] & group_bit(gi)))
				continue;
			/* A late trap of a cleared register, or of one cleared
			 * at the next service (rate limit hit). */
			tr.late = !armed || g->w.backoff_pending;
			outcome = fw_watch_trap(&g->w, &tr);
			if (outcome == FW_TRAP_LIMITED || (outcome == FW_TRAP_DELIVERED && g->w.done)) {
				p->service_pending = true;
				p->hold = true; /* keep this thread stopped: the world stops next */
			}
		}
	}
	if (poke_dr(t->tid, DR_STATUS, 0, &e) == -1 && e.err != ESRCH)
		out_log(FW_LOG_WARNING, "%s", e.msg);
	t->resume_sig = 0;
}

static void on_clone(int ti)
{
	struct thread *t = &threads[ti];
	unsigned long msg = 0;
	pid_t child;

	if (ptrace(PTRACE_GETEVENTMSG, t->tid, NULL, &msg) == -1)
		return;
	child = (pid_t)msg;
	if (child <= 0 || thread_find(child) >= 0)
		return; /* its own first stop came first */
	/* A clone without CLONE_THREAD is a new process: not ours. It is
	 * detached when it stops (see adopt_unknown). */
	if (fw_status_field(child, "Tgid:") != procs[t->proc].pid) {
		out_target_fork(procs[t->proc].pid, child);
		return;
	}
	if (thread_add(child, t->proc, TS_NEW) < 0)
		out_log(FW_LOG_ERROR, "thread table full (%d): new thread %d of pid %d not watched",
			FW_MAX_THREADS, (int)child, (int)procs[t->proc].pid);
}

/* A stop from a tid we do not know: a new thread whose first stop overtook
 * its parent's clone event, or something not ours that must be let go. */
static int adopt_unknown(pid_t tid, int status)
{
	long tgid = fw_status_field(tid, "Tgid:");
	int pi = tgid > 0 ? proc_find((pid_t)tgid) : -1;
	int ti = -1;

	if (pi >= 0) {
		ti = thread_add(tid, pi, TS_STOPPED);
		if (ti < 0)
			out_log(FW_LOG_ERROR,
				"thread table full (%d): new thread %d of pid %d not watched",
				FW_MAX_THREADS, (int)tid, (int)tgid);
	}
	if (ti < 0) {
		/* New tasks do not inherit debug registers; DR7 = 0 only to be sure. */
		int sig = (status >> 16) == 0 ? WSTOPSIG(status) : 0;

		ptrace(PTRACE_POKEUSER, tid, (void *)dr_offset(DR_CONTROL), NULL);
		ptrace(PTRACE_DETACH, tid, NULL, (void *)(long)sig);
	}
	return ti;
}

static bool is_stop_signal(int sig)
{
	return sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU;
}

/* A thread of a process whose detach passed its deadline finally stopped. */
static void detach_straggler(int ti)
{
	struct thread *t = &threads[ti];
	int pi = t->proc;
	struct fw_error e;

	if (thread_clear(t, &e) == -1)
		out_log(FW_LOG_WARNING, "late detach: %s", e.msg);
	if (has_queued_hw_trap(t->tid)) {
		/* Let it take the trap while we still trace it; back here next stop. */
		ptrace(PTRACE_CONT, t->tid, NULL, (void *)(long)detach_signal(t));
		t->state = TS_RUNNING;
		t->resume_sig = 0;
		t->resume = RESUME_CONT;
		return;
	}
	thread_detach(ti);
	if (procs[pi].nthreads == 0)
		proc_free(pi);
}

/* What to do with a stopped thread after classification. */
static void settle(int ti)
{
	struct thread *t = &threads[ti];
	struct proc *p = &procs[t->proc];
	struct fw_error e;

	if (p->detach_pending) {
		detach_straggler(ti);
		return;
	}
	if (p->hold)
		return;
	if (t->dirty && thread_apply(t, &p->mirror, &e) == -1 && e.err != ESRCH)
		out_log(FW_LOG_ERROR, "arming new thread %d of pid %d: %s (%s)", (int)t->tid,
			(int)p->pid, e.msg, fw_errno_name(e.err));
	thread_resume(ti);
}

static void on_status(pid_t tid, int status)
{
	int ti = thread_find(tid);
	int sig, event;
	struct thread *t;

	if (WIFEXITED(status) || WIFSIGNALED(status)) {
		if (ti >= 0)
			on_thread_exit(ti, status);
		return;
	}
	if (!WIFSTOPPED(status))
		return;
	if (ti < 0) {
		ti = adopt_unknown(tid, status);
		if (ti < 0)
			return;
	}
	t = &threads[ti];
	sig = WSTOPSIG(status);
	event = status >> 16;
	t->state = TS_STOPPED;
	t->resume = RESUME_CONT;
	t->resume_sig = 0;
	switch (event) {
	case 0: /* signal-delivery-stop */
		if (sig == SIGTRAP)
			on_trap(ti);
		else
			t->resume_sig = sig;
		break;
	case PTRACE_EVENT_STOP:
		/* Group-stop (a stop signal) or interrupt / first stop (SIGTRAP). */
		if (is_stop_signal(sig))
			t->resume = RESUME_LISTEN;
		break;
	case PTRACE_EVENT_CLONE:
		on_clone(ti);
		break;
	case PTRACE_EVENT_FORK:
	case PTRACE_EVENT_VFORK: {
		unsigned long child = 0;

		/* The child stops on its own and is let go there (adopt_unknown). */
		if (ptrace(PTRACE_GETEVENTMSG, t->tid, NULL, &child) == 0 && child > 0)
			out_target_fork(procs[t->proc].pid, (pid_t)child);
		break;
	}
	case PTRACE_EVENT_EXEC:
		on_exec(ti);
		return;
	default:
		break;
	}
	settle(ti);
}

/* ---- waiting ---- */

static void read_signals(void)
{
	struct signalfd_siginfo si[16];

	for (;;) {
		ssize_t n = read(sig_fd, si, sizeof si);

		if (n <= 0)
			return;
		for (size_t i = 0; i < (size_t)n / sizeof si[0]; i++)
			if (si[i].ssi_signo != SIGCHLD)
				terminate_requested = true;
	}
}

/* Handles every stop waitpid has; flushes only past the threshold (the
 * event loop writes the rest when due, see out_due_ms). */
static int wait_drain(void)
{
	int handled = 0;

	for (;;) {
		int status;
		pid_t tid = waitpid(-1, &status, __WALL | WNOHANG);

		if (tid <= 0)
			break;
		on_status(tid, status);
		handled++;
		if (out_pending() >= FW_OUT_FLUSH_THRESHOLD)
			out_flush();
	}
	return handled;
}

static int wait_once(int timeout_ms)
{
	struct pollfd pfd = { .fd = sig_fd, .events = POLLIN };

	if (poll(&pfd, 1, timeout_ms) > 0)
		read_signals();
	return wait_drain();
}

static void zombie_scan(int pi)
{
	FOR_EACH_THREAD(ti, pi)
	{
		char st;

		if (threads[ti].state != TS_RUNNING && threads[ti].state != TS_NEW)
			continue;
		st = fw_thread_state(procs[pi].pid, threads[ti].tid);
		if (st == 0 || st == 'Z' || st == 'X')
			threads[ti].state = TS_ZOMBIE;
	}
}

static int first_unstopped(int pi)
{
	FOR_EACH_THREAD(ti, pi)
	if (threads[ti].state == TS_RUNNING || threads[ti].state == TS_NEW)
		return ti;
	return -1;
}

/* Waits, handling every stop of every process, until each thread of pi is
 * stopped (held) or dead. */
static int world_wait(int pi, struct fw_error *e)
{
	pid_t pid = procs[pi].pid;
	uint64_t serial = procs[pi].serial;
	int64_t deadline = fw_now_ms() + FW_STOP_DEADLINE_MS;
	int64_t next_scan = fw_now_ms() + ZOMBIE_SCAN_MS;

	for (;;) {
		int64_t now;
		int ti;

		if (!proc_alive(pi, serial)) {
			fw_error_set(e, ESRCH, "pid %d exited while its threads were being stopped",
				     (int)pid);
			return -1;
		}
		ti = first_unstopped(pi);
		if (ti < 0)
			return 0;
		now = fw_now_ms();
		if (now >= next_scan) {
			zombie_scan(pi);
			next_scan = now + ZOMBIE_SCAN_MS;
			continue;
		}
		if (now >= deadline) {
			char st = fw_thread_state(pid, threads[ti].tid);

			fw_error_set(e, ETIMEDOUT,
				     "thread %d of pid %d did not stop within %d ms (state %c)",
				     (int)threads[ti].tid, (int)pid, FW_STOP_DEADLINE_MS,
				     st ? st : '?');
			return -1;
		}
		wait_once((int)(next_scan - now));
	}
}

/* Holds every thread of pi stopped: interrupt the running ones, wait. */
static int world_stop(int pi, struct fw_error *e)
{
	procs[pi].hold = true;
	FOR_EACH_THREAD(ti, pi)
	{
		if (threads[ti].state != TS_RUNNING)
			continue;
		if (ptrace(PTRACE_INTERRUPT, threads[ti].tid, NULL, NULL) == -1 && errno != ESRCH)
			out_log(FW_LOG_WARNING, "PTRACE_INTERRUPT tid %d: %s",
				(int)threads[ti].tid, strerror(errno));
	}
	return world_wait(pi, e);
}

static void world_resume(int pi)
{
	struct proc *p = &procs[pi];
	struct fw_error e;

	if (p->service_pending)
		return; /* a budget or rate limit ran out meanwhile: stay stopped for the service */
	p->hold = false;
	FOR_EACH_THREAD(ti, pi)
	{
		if (threads[ti].state != TS_STOPPED)
			continue;
		if (threads[ti].dirty && thread_apply(&threads[ti], &p->mirror, &e) == -1 &&
		    e.err != ESRCH)
			out_log(FW_LOG_ERROR, "arming thread %d of pid %d: %s (%s)",
				(int)threads[ti].tid, (int)p->pid, e.msg, fw_errno_name(e.err));
		thread_resume(ti);
	}
}

/* With the world stopped and registers cleared: let every thread take a
 * hardware trap still queued on it, so none is delivered after we are gone.
 * Group-stopped threads are only released when detaching (the kernel puts
 * them back into group-stop at PTRACE_DETACH). */
static void drain_queued_traps(int pi, bool detaching)
{
	uint64_t serial = procs[pi].serial;
	struct fw_error e;

	for (int round = 0; round < DRAIN_MAX_ROUNDS; round++) {
		bool any = false;

		FOR_EACH_THREAD(ti, pi)
		{
			struct thread *t = &threads[ti];

			if (t->state != TS_STOPPED || !has_queued_hw_trap(t->tid))
				continue;
			if (t->resume == RESUME_LISTEN && !detaching)
				continue;
			if (ptrace(PTRACE_CONT, t->tid, NULL, (void *)(long)detach_signal(t)) == -1)
				continue;
			t->state = TS_RUNNING;
			t->resume = RESUME_CONT;
			t->resume_sig = 0;
			any = true;
		}
		if (!any)
			return;
		if (world_wait(pi, &e) == -1) {
			if (proc_alive(pi, serial))
				out_log(FW_LOG_WARNING, "draining queued traps: %s", e.msg);
			return;
		}
	}
}

/* Clears and detaches every thread of pi; frees pi unless a thread would not
 * stop in time (then it is detached when it does). If report is set, it
 * receives group report_gi's final counts (after queued traps are drained). */
static void detach_proc_counts(int pi, int report_gi, struct fw_counts *report)
{
	struct proc *p = &procs[pi];
	uint64_t serial = p->serial;
	pid_t pid = p->pid;
	struct fw_error e;

	if (world_stop(pi, &e) == -1) {
		if (!proc_alive(pi, serial))
			return;
		out_log(FW_LOG_WARNING, "detaching pid %d: %s", (int)pid, e.msg);
	}
	FOR_EACH_THREAD(ti, pi)
	{
		if (threads[ti].state == TS_STOPPED && thread_clear(&threads[ti], &e) == -1 &&
		    e.err != ESRCH)
			out_log(FW_LOG_ERROR, "clearing debug registers of pid %d: %s (%s)",
				(int)pid, e.msg, fw_errno_name(e.err));
		threads[ti].dirty = false;
	}
	/* Every register is cleared; the owners stay listed, so traps drained
	 * now count as their suppressed. */
	p->mirror = (struct dr_mirror){ 0 };
	drain_queued_traps(pi, true);
	if (!proc_alive(pi, serial))
		return;
	if (report)
		*report = p->groups[report_gi].w.counts;
	FOR_EACH_THREAD(ti, pi)
	{
		if (threads[ti].state == TS_STOPPED)
			thread_detach(ti);
		else if (threads[ti].state == TS_ZOMBIE)
			thread_drop(ti); /* reaped by waitpid later; nothing to clear */
	}
	if (p->nthreads == 0) {
		proc_free(pi);
		return;
	}
	p->detach_pending = true;
	out_log(FW_LOG_WARNING, "pid %d: %d thread(s) will be detached when they stop",
		(int)pid, p->nthreads);
}

static void detach_proc(int pi)
{
	detach_proc_counts(pi, 0, NULL);
}

/* ---- attach ---- */

static int seize_failed(pid_t pid, pid_t tid, int err, struct fw_error *e)
{
	if (err == EPERM) {
		long tracer = fw_status_field(tid, "TracerPid:");

		if (tracer > 0) {
			char comm[64];

			fw_read_comm((pid_t)tracer, comm, sizeof comm);
			fw_error_set(e, EPERM, "PTRACE_SEIZE pid %d: already traced by pid %ld (%s)",
				     (int)pid, tracer, comm);
		} else {
			fw_error_set(e, EPERM,
				     "PTRACE_SEIZE pid %d (tid %d): not permitted (no tracer; a kernel thread, or CAP_SYS_PTRACE missing?)",
				     (int)pid, (int)tid);
		}
		return -1;
	}
	fw_error_set(e, err, "PTRACE_SEIZE pid %d (tid %d): %s", (int)pid, (int)tid,
		     strerror(err));
	return -1;
}

/* seize_pass's way out when the thread table has no room left. */
static int seize_table_full(struct fw_tasks *tasks, pid_t pid, struct fw_error *e)
{
	fw_error_set(e, ENOMEM, "thread table full (%d threads) attaching pid %d", FW_MAX_THREADS,
		     (int)pid);
	fw_tasks_close(tasks);
	return -1;
}

/* One pass over /proc/PID/task: seize what is new. 1 if something was, 0 if
 * the set is unchanged, -1 on error. */
static int seize_pass(int pi, bool *skip_leader, struct fw_error *e)
{
	pid_t pid = procs[pi].pid;
	struct fw_tasks tasks;
	pid_t tid;
	int changed = 0;

	if (fw_tasks_open(&tasks, pid) == -1) {
		fw_error_set(e, ESRCH, "pid %d exited during attach", (int)pid);
		return -1;
	}
	while ((tid = fw_tasks_next(&tasks)) != 0) {
		int ti;

		if (thread_find(tid) >= 0 || (tid == pid && *skip_leader))
			continue;
		if (ptrace(PTRACE_SEIZE, tid, NULL, (void *)(long)SEIZE_OPTIONS) == 0) {
			ti = thread_add(tid, pi, TS_RUNNING);
			if (ti < 0) {
				/* Not in the table: stop it and let it go, untouched. */
				int st;

				ptrace(PTRACE_INTERRUPT, tid, NULL, NULL);
				if (waitpid(tid, &st, __WALL) == tid && WIFSTOPPED(st))
					ptrace(PTRACE_DETACH, tid, NULL, NULL);
				return seize_table_full(&tasks, pid, e);
			}
			changed = 1;
			continue;
		}
		int err = errno;

		if (err == ESRCH) {
			if (tid == pid) {
				fw_error_set(e, ESRCH, "pid %d exited during attach", (int)pid);
				fw_tasks_close(&tasks);
				return -1;
			}
			continue; /* that thread exited */
		}
		if (err == EPERM && fw_status_field(tid, "TracerPid:") == getpid()) {
			/* Auto-attached clone of a thread we already hold. */
			if (thread_find(tid) < 0 && thread_add(tid, pi, TS_NEW) < 0)
				return seize_table_full(&tasks, pid, e);
			changed = 1;
			continue;
		}
		if (err == EPERM && tid == pid && fw_status_field(tid, "TracerPid:") == 0 &&
		    fw_thread_state(pid, tid) == 'Z') {
			*skip_leader = true; /* main thread exited, others live on */
			continue;
		}
		fw_tasks_close(&tasks);
		return seize_failed(pid, tid, err, e);
	}
	fw_tasks_close(&tasks);
	return changed;
}

/* Seizes every thread of pi, looping while threads are created meanwhile
 * until a pass finds nothing new. On failure pi is detached (or freed, if
 * it holds no thread). */
static int seize_all(int pi, struct fw_error *e)
{
	bool skip_leader = false;

	for (int round = 0;; round++) {
		int r = seize_pass(pi, &skip_leader, e);

		if (r == 0 && procs[pi].nthreads > 0)
			return 0;
		if (r == 0) {
			fw_error_set(e, ESRCH, "pid %d has no thread left to attach",
				     (int)procs[pi].pid);
			r = -1;
		}
		if (r == 1 && round >= ATTACH_MAX_ROUNDS) {
			fw_error_set(e, EAGAIN,
				     "the thread set of pid %d did not settle during attach",
				     (int)procs[pi].pid);
			r = -1;
		}
		if (r == -1) {
			if (procs[pi].nthreads > 0)
				detach_proc(pi);
			else
				proc_free(pi);
			return -1;
		}
	}
}

static int attach(pid_t pid, struct fw_error *e)
{
	long tgid = fw_status_field(pid, "Tgid:");
	int pi;

	if (tgid < 0) {
		if (errno == ENOENT)
			fw_error_set(e, ESRCH, "no process with pid %d", (int)pid);
		else
			fw_error_set(e, errno, "reading /proc/%d/status: %s", (int)pid,
				     strerror(errno));
		return -1;
	}
	if (tgid != pid) {
		fw_error_set(e, EINVAL, "pid %d is a thread of process %ld: name the process",
			     (int)pid, tgid);
		return -1;
	}
	pi = proc_alloc(pid);
	if (pi < 0) {
		fw_error_set(e, ENOMEM, "process table full (%d processes) attaching pid %d",
			     FW_MAX_PROCS, (int)pid);
		return -1;
	}
	procs[pi].resv = reservation_for(pid);
	return seize_all(pi, e) == -1 ? -1 : pi;
}

/* A process still being detached (a thread passed the stop deadline, and the
 * others were let go) is armed again: take back the threads already let go,
 * and give every thread the registers of the arm to come. Without this the
 * straggler's late stop would finish the detach under the new arm. */
static int readopt(int pi, struct fw_error *e)
{
	procs[pi].detach_pending = false;
	FOR_EACH_THREAD(ti, pi)
	threads[ti].dirty = true;
	out_log(FW_LOG_INFO, "pid %d: armed again while %d thread(s) were still to be detached; "
			     "taking the others back",
		(int)procs[pi].pid, procs[pi].nthreads);
	return seize_all(pi, e);
}

/* ---- operations ---- */

void tracer_init(int signal_fd)
{
	sig_fd = signal_fd;
	fw_cpu_init();
	for (int i = 0; i < TID_HASH_SIZE; i++)
		tid_hash[i] = -1;
}

void tracer_on_signals(void)
{
	read_signals();
	wait_drain();
}

bool tracer_terminate_requested(void)
{
	return terminate_requested;
}

static pid_t any_stopped_tid(int pi)
{
	FOR_EACH_THREAD(ti, pi)
	if (threads[ti].state == TS_STOPPED)
		return threads[ti].tid;
	return 0;
}

/* With the world stopped: the mirror follows the owners' liveness (a slot is
 * armed iff one of its owners is live) on every thread. A slot armed again
 * after being cleared has its last value re-read: the memory may have
 * changed while nobody watched. */
static void proc_rearm(int pi, const char *what)
{
	struct proc *p = &procs[pi];
	struct dr_mirror next;
	uint8_t restored;
	struct fw_error e;
	pid_t reader;

	dr_mirror_shared(&next, p->def, p->slot_owners, live_groups(p));
	restored = dr_mirror_mask(&next) & (uint8_t)~dr_mirror_mask(&p->mirror);
	p->mirror = next;
	reader = any_stopped_tid(pi);
	for (int s = 0; s < DR_SLOTS && reader > 0; s++)
		if (restored & (1u << s))
			p->last_value[s] =
				read_chunk_value(reader, p->def[s].address, p->def[s].length);
	FOR_EACH_THREAD(ti, pi)
	{
		threads[ti].dirty = true;
		if (threads[ti].state == TS_STOPPED &&
		    thread_apply(&threads[ti], &p->mirror, &e) == -1 && e.err != ESRCH)
			out_log(FW_LOG_ERROR, "%s on tid %d: %s (%s)", what, (int)threads[ti].tid,
				e.msg, fw_errno_name(e.err));
	}
}

/* Stop-the-world transitions that a trap asked for (budget reached, rate
 * limit hit) or that a timer made due (back-off over), in one stop of the
 * process: registers cleared or restored on every thread (a register stays
 * armed while another owner is live), traps still queued drained (they count
 * as suppressed for groups that are leaving or backing off), then the
 * events, then resume, or detach when no group is left. A transition that a
 * drained trap asks for is left for the next service. */
static void proc_service(int pi)
{
	struct proc *p = &procs[pi];
	uint64_t serial = p->serial;
	struct fw_error e;
	dr_owners leaving = 0, backing = 0, resumed = 0;
	int64_t now;

	if (world_stop(pi, &e) == -1) {
		if (!proc_alive(pi, serial))
			return;
		out_log(FW_LOG_WARNING, "changing the watches of pid %d: %s", (int)p->pid, e.msg);
	}
	now = fw_now_ms();
	/* The rate window is not reset here: windows stay at least a second
	 * apart, so a back-off shorter than the window rechecks, and at most
	 * max_hits_per_second hits are delivered in any window. */
	for (int g = 0; g < FW_MAX_GROUPS; g++) {
		struct group *gr = &p->groups[g];

		if (!gr->used)
			continue;
		if (gr->w.done) {
			leaving |= group_bit(g);
		} else if (gr->w.backoff_pending) {
			backing |= group_bit(g);
		} else if (fw_watch_backoff_over(&gr->w, now)) {
			gr->w.backoff = false;
			resumed |= group_bit(g);
		}
	}
	proc_rearm(pi, "changing the watches");
	p->service_pending = false;
	drain_queued_traps(pi, false);
	if (!proc_alive(pi, serial))
		return;
	for (int g = 0; g < FW_MAX_GROUPS; g++) {
		struct group *gr = &p->groups[g];

		if (leaving & group_bit(g)) {
			out_group_done(p->pid, FW_DONE_BUDGET, gr->w.id, &gr->w.counts);
			group_free(p, g);
		} else if (backing & group_bit(g)) {
			/* Due again at the next service at the earliest (now included). */
			fw_watch_start_backoff(&gr->w, p->pid, now, 0);
		} else if (resumed & group_bit(g)) {
			out_group_resumed(p->pid, gr->w.id);
		}
	}
	if (group_count(p) == 0)
		detach_proc(pi);
	else
		world_resume(pi);
}

static bool backoff_due(const struct proc *p, int64_t now)
{
	for (int g = 0; g < FW_MAX_GROUPS; g++)
		if (p->groups[g].used && fw_watch_backoff_over(&p->groups[g].w, now))
			return true;
	return false;
}

/* Threads of a process: listed (not dead) and armed (holding its registers). */
static void count_threads(int pi, uint32_t *total, uint32_t *armed)
{
	*total = 0;
	*armed = 0;
	FOR_EACH_THREAD(ti, pi)
	{
		if (threads[ti].state == TS_ZOMBIE)
			continue;
		(*total)++;
		if (!threads[ti].dirty && threads[ti].state != TS_NEW)
			(*armed)++;
	}
}

/* THREADS when the counts changed, at most once per THREADS_REPORT_MS. */
static void report_threads(int pi, int64_t now)
{
	struct proc *p = &procs[pi];
	uint32_t total, armed;

	if (!p->threads_changed || now - p->threads_reported_ms < THREADS_REPORT_MS)
		return;
	p->threads_changed = false;
	count_threads(pi, &total, &armed);
	if (total == p->reported_total && armed == p->reported_armed)
		return;
	out_threads(p->pid, total, armed);
	p->reported_total = total;
	p->reported_armed = armed;
	p->threads_reported_ms = now;
}

/* Whether any process is attached. */
static bool any_attached(void)
{
	for (int pi = 0; pi < FW_MAX_PROCS; pi++)
		if (procs[pi].used)
			return true;
	return false;
}

void tracer_process_pending(void)
{
	int64_t now = fw_now_ms();

	for (int pi = 0; pi < FW_MAX_PROCS; pi++) {
		if (!procs[pi].used)
			continue;
		if (procs[pi].service_pending || backoff_due(&procs[pi], now)) {
			proc_service(pi);
			now = fw_now_ms();
		}
		if (procs[pi].used)
			report_threads(pi, now);
	}
	fw_cpu_follow(now, any_attached());
}

int tracer_next_timeout_ms(void)
{
	int64_t now = fw_now_ms(), due = INT64_MAX;

	for (int pi = 0; pi < FW_MAX_PROCS; pi++) {
		const struct proc *p = &procs[pi];

		if (!p->used)
			continue;
		if (p->service_pending)
			return 0;
		for (int g = 0; g < FW_MAX_GROUPS; g++)
			if (p->groups[g].used && p->groups[g].w.backoff &&
			    p->groups[g].w.backoff_until_ms < due)
				due = p->groups[g].w.backoff_until_ms;
		if (p->threads_changed && p->threads_reported_ms + THREADS_REPORT_MS < due)
			due = p->threads_reported_ms + THREADS_REPORT_MS;
	}
	due = fw_cpu_due(due, any_attached());
	return fw_timeout_ms(due, now);
}

/* A chunk may go into a register that no group of p holds, or that its
 * groups hold with the identical chunk (one more owner); else EBUSY, naming
 * a holder and what it watches. */
static int check_shareable(const struct proc *p, const struct fw_chunk *c, struct fw_error *e)
{
	const struct dr_slot want = { true, c->mode, c->length, c->address };
	const struct dr_slot *held = &p->def[c->dr];
	dr_owners owners = p->slot_owners[c->dr];
	int holder = -1, others = -1;

	if (owners == 0 || dr_slot_same_chunk(held, &want))
		return 0;
	for (int g = 0; g < FW_MAX_GROUPS; g++) {
		if (!(owners & group_bit(g)))
			continue;
		if (holder < 0)
			holder = g;
		others++;
	}
	fw_error_set(e, EBUSY,
		     "dr%u of pid %d is used by group %llu%s for %s of %u bytes at 0x%llx; only "
		     "that identical chunk can share it, not %s of %u bytes at 0x%llx",
		     c->dr, (int)p->pid, (unsigned long long)p->groups[holder].w.id,
		     others > 0 ? " and others" : "", fw_mode_name(held->mode), held->length,
		     (unsigned long long)held->address, fw_mode_name(c->mode), c->length,
		     (unsigned long long)c->address);
	return -1;
}

/* The process's symbol context, opened at its first ARM asking for a stack. */
static int open_symbols(int pi, struct fw_error *e)
{
	char err[512];

	if (procs[pi].sym)
		return 0;
	err[0] = '\0';
	procs[pi].sym = fw_symctx_open(procs[pi].pid, err, sizeof err);
	if (!procs[pi].sym) {
		fw_error_set(e, EIO, "opening the symbols of pid %d for stacks: %s",
			     (int)procs[pi].pid, err[0] ? err : "failed");
		return -1;
	}
	return 0;
}

int tracer_arm(pid_t pid, uint64_t group, const struct fw_watch_options *opt,
	       const struct fw_chunk *chunks, unsigned count, struct fw_arm_result *result,
	       struct fw_error *e)
{
	struct dr_mirror next;
	struct proc *p;
	uint64_t serial, initial[DR_SLOTS] = { 0 };
	uint8_t mask = 0, fresh;
	int pi, gi = -1, failed_ti = -1;
	uint32_t total = 0, armed = 0;
	pid_t reader;

	pi = proc_find(pid);
	if (pi >= 0 && procs[pi].detach_pending && readopt(pi, e) == -1)
		return -1;
	if (pi >= 0) {
		p = &procs[pi];
		for (unsigned i = 0; i < count; i++)
			if (check_shareable(p, &chunks[i], e) == -1)
				return -1;
		if (group_count(p) >= FW_MAX_GROUPS) {
			fw_error_set(e, EBUSY,
				     "pid %d already has %d groups, the most one process may have",
				     (int)pid, FW_MAX_GROUPS);
			return -1;
		}
	} else {
		pi = attach(pid, e);
		if (pi < 0)
			return -1;
	}
	p = &procs[pi];
	serial = p->serial;
	for (int g = 0; g < FW_MAX_GROUPS; g++) {
		if (!p->groups[g].used) {
			gi = g;
			break;
		}
	}
	if (gi < 0) {
		/* Unreachable: counted above, or a process attached just now. */
		fw_error_set(e, EBUSY, "pid %d already has %d groups, the most one process may have",
			     (int)pid, FW_MAX_GROUPS);
		goto fail;
	}
	if (opt->stack_depth > 0 && open_symbols(pi, e) == -1)
		goto fail;
	if (world_stop(pi, e) == -1)
		goto fail;

	/* Compute on a copy; commit only if every thread took it. A register
	 * shared with other groups may be armed already (then nothing changes
	 * on it) or cleared while its owners back off (then it is armed again). */
	next = p->mirror;
	for (unsigned i = 0; i < count; i++) {
		struct dr_slot *s = &next.slot[chunks[i].dr];

		s->used = true;
		s->mode = chunks[i].mode;
		s->length = chunks[i].length;
		s->address = chunks[i].address;
		mask |= (uint8_t)(1u << chunks[i].dr);
	}
	/* Old values: read for registers armed now; an armed register keeps
	 * the value of its latest trap, which its other owners' hits chain on. */
	fresh = mask & (uint8_t)~dr_mirror_mask(&p->mirror);
	reader = any_stopped_tid(pi);
	for (unsigned i = 0; i < count && reader > 0; i++)
		if (fresh & (1u << chunks[i].dr))
			initial[chunks[i].dr] =
				read_chunk_value(reader, chunks[i].address, chunks[i].length);

	FOR_EACH_THREAD(ti, pi)
	{
		if (threads[ti].state != TS_STOPPED)
			continue;
		if (thread_apply(&threads[ti], &next, e) == 0) {
			total++;
			armed++;
			continue;
		}
		if (e->err == ESRCH) {
			/* Killed while stopped: it will not run again. */
			threads[ti].state = TS_RUNNING;
			continue;
		}
		failed_ti = ti;
		break;
	}
	if (failed_ti >= 0) {
		struct fw_error undo;

		for (int ti = 0; ti <= failed_ti; ti++) {
			if (threads[ti].state != TS_STOPPED || threads[ti].proc != pi)
				continue;
			if (thread_apply(&threads[ti], &p->mirror, &undo) == -1 && undo.err != ESRCH)
				out_log(FW_LOG_ERROR, "rolling back arm on tid %d: %s",
					(int)threads[ti].tid, undo.msg);
		}
		goto fail;
	}

	p->mirror = next;
	p->groups[gi] = (struct group){
		.used = true,
		.dr_mask = mask,
		.w = { .id = group, .opt = *opt, .rate = { .start_ms = fw_now_ms() } },
	};
	for (unsigned i = 0; i < count; i++) {
		uint8_t dr = chunks[i].dr;

		p->def[dr] = next.slot[dr];
		p->slot_owners[dr] |= group_bit(gi);
		if (fresh & (1u << dr))
			p->last_value[dr] = initial[dr];
	}
	p->known_mask |= mask;
	result->threads_total = total;
	result->threads_armed = armed;
	result->dr_mask = mask;
	result->reserved_mask = reserved_mask_of(p->resv);
	count_threads(pi, &p->reported_total, &p->reported_armed);
	p->threads_reported_ms = fw_now_ms();
	p->threads_changed = false;
	world_resume(pi);
	return 0;

fail:
	if (proc_alive(pi, serial)) {
		if (group_count(p) == 0)
			detach_proc(pi);
		else
			world_resume(pi);
	}
	return -1;
}

int tracer_disarm(pid_t pid, uint64_t group, struct fw_counts *counts, uint8_t *reserved_mask,
		  struct fw_error *e)
{
	int pi = proc_find(pid);
	struct proc *p;
	uint64_t serial;
	int gi, resv;

	if (pi < 0) {
		fw_error_set(e, ESRCH, "DISARM: pid %d is not attached", (int)pid);
		return -1;
	}
	p = &procs[pi];
	serial = p->serial;
	gi = group_find(p, group);
	if (gi < 0) {
		fw_error_set(e, ENOENT, "DISARM: no group %llu on pid %d", (unsigned long long)group,
			     (int)pid);
		return -1;
	}
	/* The entry outlives the detach; no attach can evict it meanwhile. */
	resv = p->resv;
	if (group_count(p) == 1) {
		/* Last group: the detach drains queued traps before the counts are final. */
		*counts = p->groups[gi].w.counts;
		detach_proc_counts(pi, gi, counts);
		if (proc_alive(pi, serial))
			group_free(p, gi); /* only left if some thread would not stop */
		*reserved_mask = reserved_mask_of(resv);
		return 0;
	}
	if (world_stop(pi, e) == -1) {
		if (!proc_alive(pi, serial)) {
			*counts = (struct fw_counts){ 0 };
			return -1;
		}
		out_log(FW_LOG_WARNING, "disarming group %llu of pid %d: %s",
			(unsigned long long)group, (int)pid, e->msg);
	}
	/* Leaving: traps still queued count as its suppressed. Its registers
	 * are cleared unless another live owner holds them. */
	p->groups[gi].w.done = true;
	proc_rearm(pi, "disarming");
	drain_queued_traps(pi, false);
	if (!proc_alive(pi, serial)) {
		fw_error_set(e, ESRCH, "pid %d exited while disarming", (int)pid);
		return -1;
	}
	*counts = p->groups[gi].w.counts;
	*reserved_mask = reserved_mask_of(resv);
	group_free(p, gi);
	world_resume(pi);
	return 0;
}

void tracer_detach_all(void)
{
	int64_t deadline;

	for (int pi = 0; pi < FW_MAX_PROCS; pi++)
		if (procs[pi].used && !procs[pi].detach_pending)
			detach_proc(pi);
	deadline = fw_now_ms() + DETACH_ALL_GRACE_MS;
	for (;;) {
		bool left = false;

		for (int pi = 0; pi < FW_MAX_PROCS; pi++)
			left |= procs[pi].used;
		if (!left || fw_now_ms() >= deadline)
			break;
		wait_once(ZOMBIE_SCAN_MS);
		for (int pi = 0; pi < FW_MAX_PROCS; pi++) {
			if (!procs[pi].used)
				continue;
			zombie_scan(pi);
			FOR_EACH_THREAD(ti, pi)
			if (threads[ti].state == TS_ZOMBIE)
				thread_drop(ti);
			if (procs[pi].nthreads == 0)
				proc_free(pi);
		}
	}
	for (int pi = 0; pi < FW_MAX_PROCS; pi++)
		if (procs[pi].used)
			out_log(FW_LOG_ERROR, "pid %d: %d thread(s) never stopped; left traced",
				(int)procs[pi].pid, procs[pi].nthreads);
}

/* Waits (async-signal-safely, bounded) for tid's next stop. */
static bool emergency_wait_stop(pid_t tid, int *status)
{
	for (int spin = 0; spin < 1000; spin++) {
		struct timespec ms = { 0, 1000000 };
		pid_t r = waitpid(tid, status, __WALL | WNOHANG);

		if (r == tid)
			return WIFSTOPPED(*status);
		if (r < 0)
			return false;
		nanosleep(&ms, NULL);
	}
	return false;
}

/* Signal to hand back at detach for a stop we reaped here: never our SIGTRAP. */
static int emergency_signal_of(int status)
{
	return (status >> 16) == 0 && WSTOPSIG(status) != SIGTRAP ? WSTOPSIG(status) : 0;
}

/* Async-signal-safe: no locks, no malloc, no stdio; only syscalls on the
 * static tables. Stops each thread, clears DR7 and our addresses, lets it
 * take any hardware trap still queued, detaches. */
void tracer_emergency_detach(void)
{
	for (int ti = 0; ti < FW_MAX_THREADS; ti++) {
		struct thread *t = &threads[ti];
		pid_t tid = t->tid;
		int sig = 0, st = 0;

		if (t->state == TS_FREE || t->state == TS_ZOMBIE || tid <= 0)
			continue;
		/* The table may be one step behind the thread: the crash can come
		 * between a waitpid and recording the stop, or between a
		 * PTRACE_CONT and recording the resume. Only a POKEUSER that
		 * succeeds proves the thread is stopped for us right now. */
		if (ptrace(PTRACE_POKEUSER, tid, (void *)dr_offset(DR_CONTROL), NULL) == 0) {
			sig = t->state == TS_STOPPED ? detach_signal(t) : 0;
		} else {
			ptrace(PTRACE_INTERRUPT, tid, NULL, NULL);
			if (emergency_wait_stop(tid, &st))
				sig = emergency_signal_of(st);
			else if (ptrace(PTRACE_POKEUSER, tid, (void *)dr_offset(DR_CONTROL), NULL) != 0)
				continue;
		}
		ptrace(PTRACE_POKEUSER, tid, (void *)dr_offset(DR_CONTROL), NULL);
		for (int i = 0; i < DR_SLOTS; i++)
			if (t->touched & (1u << i))
				ptrace(PTRACE_POKEUSER, tid, (void *)dr_offset(i), NULL);
		for (int round = 0; round < DRAIN_MAX_ROUNDS && has_queued_hw_trap(tid); round++) {
			if (ptrace(PTRACE_CONT, tid, NULL, (void *)(long)sig) == -1 ||
			    !emergency_wait_stop(tid, &st))
				break;
			sig = emergency_signal_of(st);
		}
		ptrace(PTRACE_DETACH, tid, NULL, (void *)(long)sig);
	}
}

bool tracer_has_pid(pid_t pid)
{
	return proc_find(pid) >= 0;
}

bool tracer_has_group(pid_t pid, uint64_t group)
{
	int pi = proc_find(pid);

	return pi >= 0 && group_find(&procs[pi], group) >= 0;
}
