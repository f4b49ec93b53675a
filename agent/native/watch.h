/* What a watch is, whichever backend holds it: the chunks and options an
 * ARM carries, the checks they pass before any backend sees them, and the
 * one way a group accounts for its traps (PROTOCOL.md, "Watch options"):
 * counts, thread filter, conditions, rate limit and back-off, budget. */
#ifndef FW_WATCH_H
#define FW_WATCH_H

#include "fw.h"
#include "wire.h"

struct fw_chunk {
	uint8_t dr;
	uint8_t mode;
	uint8_t length;
	uint64_t address;
};

/* Value predicates of a group, on each chunk's new value (PROTOCOL.md). */
enum fw_cond_op {
	FW_COND_EQ = 0,
	FW_COND_NE = 1,
	FW_COND_LT = 2,
	FW_COND_GT = 3,
	FW_COND_LE = 4,
	FW_COND_GE = 5,
	FW_COND_CHANGED = 6,   /* new != old */
	FW_COND_UNCHANGED = 7, /* new == old: with mode rw, a read-only watch */
	FW_COND_OP_COUNT = 8,
};

struct fw_condition {
	uint8_t op;
	uint64_t value;
};

/* What a group delivers, and how much of it (ARM options). */
struct fw_watch_options {
	uint64_t max_hits;             /* 0: no budget */
	uint32_t max_hits_per_second;  /* 0: no rate limit */
	uint32_t backoff_ms;           /* 0: until the current 1-second window ends */
	uint8_t nconditions;
	struct fw_condition conditions[FW_MAX_CONDITIONS];
	uint8_t ntids; /* 0: every thread */
	pid_t tids[FW_MAX_TID_FILTER];
	uint8_t stack_depth; /* 0: no stack */
};

/* The group's thread filter lets this tid's traps through (no tids: every thread). */
static inline bool fw_options_want_tid(const struct fw_watch_options *opt, pid_t tid)
{
	if (opt->ntids == 0)
		return true;
	for (unsigned i = 0; i < opt->ntids; i++)
		if (opt->tids[i] == tid)
			return true;
	return false;
}

/* A chunk's value out of the aligned 8-byte word that holds it (little-endian,
 * zero-extended). */
static inline uint64_t fw_chunk_value(uint64_t word, uint64_t address, unsigned length)
{
	uint64_t v = word >> ((address & 7u) * 8u);

	return length < 8 ? v & ((UINT64_C(1) << (length * 8u)) - 1) : v;
}

/* ARMED's answer. */
struct fw_arm_result {
	uint32_t threads_total;
	uint32_t threads_armed;
	uint8_t dr_mask;
	uint8_t reserved_mask; /* DR indexes this helper ever wrote in the process */
};

/* "execute", "write" or "read/write" for a chunk's mode. */
const char *fw_mode_name(unsigned mode);

/* Refuses pids the policy never allows (EPERM), and pids that are none (EINVAL). */
int fw_policy_check(pid_t pid, struct fw_error *e);

/* 0 if an ARM may carry count chunks (1 to FW_SLOTS_PER_THREAD); else -1
 * with EINVAL. */
int fw_check_chunk_count(pid_t pid, unsigned count, struct fw_error *e);

/* 0 if the count is right and the chunks are valid and name distinct
 * registers; else -1 with EINVAL. */
int fw_check_chunks(pid_t pid, const struct fw_chunk *chunks, unsigned count,
		    struct fw_error *e);

/* 0 if the options are in range; else -1 with EINVAL in e. */
int fw_check_options(pid_t pid, const struct fw_watch_options *opt, struct fw_error *e);

/* A group's 1-second rate window (PROTOCOL.md, "Watch options"). */
#define FW_RATE_WINDOW_MS 1000
struct fw_rate_window {
	int64_t start_ms;
	uint64_t delivered; /* in this window; the caller counts each delivery */
};

/* Whether one more hit fits max_per_second: a new window starts at the
 * first call a full window after the current one began. */
static inline bool fw_rate_allows(struct fw_rate_window *w, uint32_t max_per_second)
{
	int64_t now = fw_now_ms();

	if (now - w->start_ms >= FW_RATE_WINDOW_MS) {
		w->start_ms = now;
		w->delivered = 0;
	}
	return w->delivered < max_per_second;
}

/* A group's state that both backends keep alike. */
struct fw_watch {
	uint64_t id;
	struct fw_watch_options opt;
	bool count_only;      /* COUNTS instead of hit records (perf only) */
	bool done;            /* budget reached or disarmed: delivers no more */
	bool backoff_pending; /* rate limit hit: the back-off starts at the backend's next service */
	bool backoff;         /* delivers nothing until backoff_until_ms */
	int64_t backoff_until_ms;
	struct fw_rate_window rate;
	struct fw_counts counts;
};

/* One trap as a backend sees it. The backend fills in who trapped, where
 * and when; the chunk's value and the stack are fetched through its hooks
 * only when a step needs them, each at most once per trap record (a trap
 * record may serve several groups: ptrace registers have several owners). */
struct fw_trap {
	pid_t pid, tid;
	uint64_t ip, time_ns;
	struct fw_chunk chunk;
	/* Suppressed whatever the group's state (ptrace: a late trap of a
	 * register already cleared, or to be cleared at the next service). */
	bool late;
	/* Read the value before the filters, not only for a hit: ptrace reads
	 * it at the stop, and the read moves the old value that every owner
	 * of the register chains on. Conditions always need it first. */
	bool value_first;
	/* Sets value, old_value and value_exact, then have_value. */
	void (*read_value)(struct fw_trap *t);
	bool have_value, value_exact;
	uint64_t value, old_value;
	/* Writes at least one frame into ips and returns how many; called
	 * while nframes < 0. */
	int (*read_stack)(struct fw_trap *t, uint64_t *ips);
	int nframes;
	void *ctx; /* the backend's, for its hooks */
};

/* Where one trap ended up for one group. */
enum fw_trap_outcome {
	FW_TRAP_SUPPRESSED, /* done, backing off, or late */
	FW_TRAP_FILTERED,   /* the thread filter or a condition */
	FW_TRAP_LIMITED,    /* over the rate limit: suppressed, and a back-off is now pending */
	FW_TRAP_COUNTED,    /* count only: delivered without a hit record */
	FW_TRAP_DELIVERED,  /* a hit record went out */
};

/* The one sequence every trap of a group goes through: trapped; then
 * suppressed (done, backing off, late), filtered (thread filter,
 * conditions), counted (count only), suppressed over the rate limit, or
 * delivered as a hit record. A delivery that reaches max_hits sets done:
 * after COUNTED or DELIVERED, done says the budget was spent now. */
enum fw_trap_outcome fw_watch_trap(struct fw_watch *w, struct fw_trap *t);

/* The rate limit's back-off begins: it lasts backoff_ms, or to the end of
 * the current window, and at least until now + min_ms (each backend's
 * shortest: the pass that starts it must not also end it). GROUP_BACKOFF. */
void fw_watch_start_backoff(struct fw_watch *w, pid_t pid, int64_t now, int64_t min_ms);

/* The back-off is over: the group may deliver again. */
static inline bool fw_watch_backoff_over(const struct fw_watch *w, int64_t now)
{
	return w->backoff && now >= w->backoff_until_ms;
}

#endif
