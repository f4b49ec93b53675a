/* The rules of a watch that do not depend on the backend (watch.h): the
 * ARM checks and the accounting of each trap. */
#include "watch.h"

#include "dregs.h"

#include <errno.h>
#include <unistd.h>

_Static_assert(FW_SLOTS_PER_THREAD == DR_SLOTS, "a thread's slots are its debug registers");

/* The longest back-off an ARM may ask for. */
#define BACKOFF_MAX_MS (3600u * 1000u)

const char *fw_mode_name(unsigned mode)
{
	switch (mode) {
	case DR_MODE_EXECUTE:
		return "execute";
	case DR_MODE_WRITE:
		return "write";
	case DR_MODE_READ_WRITE:
		return "read/write";
	default:
		return "?";
	}
}

int fw_policy_check(pid_t pid, struct fw_error *e)
{
	if (pid <= 0) {
		fw_error_set(e, EINVAL, "invalid pid %d", (int)pid);
		return -1;
	}
	if (pid == 1) {
		fw_error_set(e, EPERM, "policy: pid 1 is never watched");
		return -1;
	}
	if (pid == getpid()) {
		fw_error_set(e, EPERM, "policy: pid %d is the helper itself", (int)pid);
		return -1;
	}
	if (pid == getppid()) {
		fw_error_set(e, EPERM, "policy: pid %d is the helper's parent (the agent)", (int)pid);
		return -1;
	}
	return 0;
}

int fw_check_chunk_count(pid_t pid, unsigned count, struct fw_error *e)
{
	if (count < 1 || count > FW_SLOTS_PER_THREAD) {
		fw_error_set(e, EINVAL, "ARM pid %d: %u chunks (must be 1-4)", (int)pid, count);
		return -1;
	}
	return 0;
}

int fw_check_chunks(pid_t pid, const struct fw_chunk *chunks, unsigned count,
		    struct fw_error *e)
{
	uint8_t seen = 0;

	if (fw_check_chunk_count(pid, count, e) == -1)
		return -1;
	for (unsigned i = 0; i < count; i++) {
		const struct fw_chunk *c = &chunks[i];

		if (dr_chunk_check(c->dr, c->mode, c->length, c->address, e) == -1)
			return -1;
		if (seen & (1u << c->dr)) {
			fw_error_set(e, EINVAL, "invalid chunks: dr%u named twice", c->dr);
			return -1;
		}
		seen |= (uint8_t)(1u << c->dr);
	}
	return 0;
}

int fw_check_options(pid_t pid, const struct fw_watch_options *opt, struct fw_error *e)
{
	if (opt->nconditions > FW_MAX_CONDITIONS) {
		fw_error_set(e, EINVAL, "ARM pid %d: %u conditions (at most %d)", (int)pid,
			     opt->nconditions, FW_MAX_CONDITIONS);
		return -1;
	}
	for (unsigned i = 0; i < opt->nconditions; i++) {
		if (opt->conditions[i].op >= FW_COND_OP_COUNT) {
			fw_error_set(e, EINVAL, "ARM pid %d: condition %u has unknown op %u",
				     (int)pid, i, opt->conditions[i].op);
			return -1;
		}
	}
	if (opt->ntids > FW_MAX_TID_FILTER) {
		fw_error_set(e, EINVAL, "ARM pid %d: %u tids in the thread filter (at most %d)",
			     (int)pid, opt->ntids, FW_MAX_TID_FILTER);
		return -1;
	}
	for (unsigned i = 0; i < opt->ntids; i++) {
		if (opt->tids[i] <= 0) {
			fw_error_set(e, EINVAL, "ARM pid %d: thread filter names tid %d", (int)pid,
				     (int)opt->tids[i]);
			return -1;
		}
	}
	if (opt->stack_depth > FW_MAX_STACK_DEPTH) {
		fw_error_set(e, EINVAL, "ARM pid %d: stack depth %u (at most %d)", (int)pid,
			     opt->stack_depth, FW_MAX_STACK_DEPTH);
		return -1;
	}
	if (opt->backoff_ms > BACKOFF_MAX_MS) {
		fw_error_set(e, EINVAL, "ARM pid %d: backoff of %u ms (at most %u)", (int)pid,
			     opt->backoff_ms, BACKOFF_MAX_MS);
		return -1;
	}
	return 0;
}

static bool condition_holds(const struct fw_condition *c, uint64_t old_value, uint64_t value)
{
	switch (c->op) {
	case FW_COND_EQ:
		return value == c->value;
	case FW_COND_NE:
		return value != c->value;
	case FW_COND_LT:
		return value < c->value;
	case FW_COND_GT:
		return value > c->value;
	case FW_COND_LE:
		return value <= c->value;
	case FW_COND_GE:
		return value >= c->value;
	case FW_COND_CHANGED:
		return value != old_value;
	case FW_COND_UNCHANGED:
		return value == old_value;
	default:
		return false;
	}
}

/* The group's thread filter and conditions (ANDed) pass this trap. */
static bool watch_wants(const struct fw_watch *w, const struct fw_trap *t)
{
	if (!fw_options_want_tid(&w->opt, t->tid))
		return false;
	for (unsigned i = 0; i < w->opt.nconditions; i++)
		if (!condition_holds(&w->opt.conditions[i], t->old_value, t->value))
			return false;
	return true;
}

static void trap_value(struct fw_trap *t)
{
	if (t->have_value)
		return;
	t->read_value(t);
	t->have_value = true;
}

/* One more delivered; the budget is spent when it reaches max_hits. */
static void count_delivery(struct fw_watch *w)
{
	w->counts.delivered++;
	if (w->opt.max_hits != 0 && w->counts.delivered >= w->opt.max_hits)
		w->done = true;
}

/* The hot path allocates nothing: the stack goes into one static buffer,
 * and out_hit appends to the static output buffer. */
enum fw_trap_outcome fw_watch_trap(struct fw_watch *w, struct fw_trap *t)
{
	static uint64_t ips[FW_MAX_STACK_DEPTH];
	struct fw_hit hit;

	w->counts.trapped++;
	if (t->late || w->done || w->backoff) {
		w->counts.suppressed++;
		return FW_TRAP_SUPPRESSED;
	}
	if (t->value_first || w->opt.nconditions > 0)
		trap_value(t);
	if (!watch_wants(w, t)) {
		w->counts.filtered++;
		return FW_TRAP_FILTERED;
	}
	if (w->count_only) {
		count_delivery(w);
		return FW_TRAP_COUNTED;
	}
	if (w->opt.max_hits_per_second != 0 &&
	    !fw_rate_allows(&w->rate, w->opt.max_hits_per_second)) {
		w->backoff_pending = true;
		w->counts.suppressed++;
		return FW_TRAP_LIMITED;
	}
	trap_value(t);
	hit = (struct fw_hit){
		.group = w->id,
		.pid = (uint32_t)t->pid,
		.tid = (uint32_t)t->tid,
		.ip = t->ip,
		.address = t->chunk.address,
		.old_value = t->old_value,
		.new_value = t->value,
		.time_ns = t->time_ns,
		.dr = t->chunk.dr,
		.length = t->chunk.length,
		.mode = t->chunk.mode,
		.value_exact = t->value_exact,
		.nframes = 0,
		.ips = ips,
	};
	if (w->opt.stack_depth > 0) {
		if (t->nframes < 0)
			t->nframes = t->read_stack(t, ips);
		hit.nframes = (uint8_t)(t->nframes < w->opt.stack_depth ? t->nframes
									: w->opt.stack_depth);
	}
	out_hit(&hit);
	w->rate.delivered++;
	count_delivery(w);
	return FW_TRAP_DELIVERED;
}

void fw_watch_start_backoff(struct fw_watch *w, pid_t pid, int64_t now, int64_t min_ms)
{
	int64_t until = w->opt.backoff_ms > 0 ? now + (int64_t)w->opt.backoff_ms
					      : w->rate.start_ms + FW_RATE_WINDOW_MS;

	if (until < now + min_ms)
		until = now + min_ms;
	w->backoff_pending = false;
	w->backoff = true;
	w->backoff_until_ms = until;
	out_group_backoff(pid, w->id, fw_realtime_ns() + (uint64_t)(until - now) * 1000000u,
			  w->counts.suppressed);
}
