/* Frame encoding into one static output buffer. Hits accumulate in an open
 * HITS frame so a burst of traps costs one write(), not one per hit. */
#include "wire.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define OUT_CAPACITY (512u * 1024u)
/* Room a single non-HITS frame may need (strings are capped at 4 KiB). */
#define OUT_FRAME_RESERVE (16u * 1024u)
#define OUT_STRING_MAX 4096u
#define NO_FRAME SIZE_MAX

static uint8_t out_buf[OUT_CAPACITY];
static size_t out_len;
static size_t out_frame_start = NO_FRAME;
static size_t out_hits_start = NO_FRAME;
static uint32_t out_hits_count;
static int out_fd = -1;
static bool out_is_broken;
static int64_t out_since_ms; /* when the buffer last went from empty to not */

void out_init(int fd)
{
	out_fd = fd;
}

bool out_broken(void)
{
	return out_is_broken;
}

size_t out_pending(void)
{
	return out_len;
}

int out_due_ms(void)
{
	int64_t left;

	if (out_len == 0)
		return -1;
	left = out_since_ms + FW_OUT_FLUSH_DELAY_MS - fw_now_ms();
	return left > 0 ? (int)left : 0;
}

/* Called before anything is appended. */
static void note_pending(void)
{
	if (out_len == 0)
		out_since_ms = fw_now_ms();
}

static void put_le(uint64_t v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		out_buf[out_len++] = (uint8_t)(v >> (8 * i));
}

static void patch_le(size_t at, uint64_t v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		out_buf[at + i] = (uint8_t)(v >> (8 * i));
}

static void hits_close(void)
{
	if (out_hits_start == NO_FRAME)
		return;
	patch_le(out_hits_start, out_len - out_hits_start, 4);
	patch_le(out_hits_start + FW_FRAME_HEADER, out_hits_count, 4);
	out_hits_start = NO_FRAME;
	out_hits_count = 0;
}

int out_flush(void)
{
	size_t done = 0;

	hits_close();
	if (out_is_broken) {
		out_len = 0;
		return -1;
	}
	while (done < out_len) {
		ssize_t n = write(out_fd, out_buf + done, out_len - done);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			/* EPIPE and friends: the agent is gone; the loop shuts down. */
			out_is_broken = true;
			out_len = 0;
			return -1;
		}
		done += (size_t)n;
	}
	out_len = 0;
	return 0;
}

static void ensure_room(size_t need)
{
	if (out_len + need > OUT_CAPACITY)
		out_flush();
}

void out_frame_begin(uint16_t type, uint32_t request_id)
{
	hits_close();
	ensure_room(OUT_FRAME_RESERVE);
	note_pending();
	out_frame_start = out_len;
	put_le(0, 4);
	put_le(type, 2);
	put_le(0, 2);
	put_le(request_id, 4);
}

void out_u8(uint8_t v)
{
	put_le(v, 1);
}

void out_u16(uint16_t v)
{
	put_le(v, 2);
}

void out_u32(uint32_t v)
{
	put_le(v, 4);
}

void out_u64(uint64_t v)
{
	put_le(v, 8);
}

void out_pad(size_t n)
{
	memset(out_buf + out_len, 0, n);
	out_len += n;
}

void out_str(const char *s)
{
	size_t n = strlen(s);

	if (n > OUT_STRING_MAX)
		n = OUT_STRING_MAX;
	put_le(n, 2);
	memcpy(out_buf + out_len, s, n);
	out_len += n;
}

void out_frame_end(void)
{
	patch_le(out_frame_start, out_len - out_frame_start, 4);
	out_frame_start = NO_FRAME;
}

void out_hit(const struct fw_hit *h)
{
	size_t size = FW_HIT_FIXED_SIZE + 1u + 8u * (size_t)h->nframes;

	if (out_len + size > OUT_CAPACITY ||
	    (out_hits_start != NO_FRAME && out_len - out_hits_start + size > FW_FRAME_MAX))
		out_flush();
	note_pending();
	if (out_hits_start == NO_FRAME) {
		out_hits_start = out_len;
		put_le(0, 4);
		put_le(FW_MSG_HITS, 2);
		put_le(0, 2);
		put_le(0, 4);
		put_le(0, 4); /* count, patched on close */
		put_le(0, 4);
	}
	put_le(h->group, 8);
	put_le(h->pid, 4);
	put_le(h->tid, 4);
	put_le(h->ip, 8);
	put_le(h->address, 8);
	put_le(h->old_value, 8);
	put_le(h->new_value, 8);
	put_le(h->time_ns, 8);
	put_le(h->dr, 1);
	put_le(h->length, 1);
	put_le(h->mode, 1);
	put_le(h->value_exact ? 1 : 0, 1);
	out_pad(4);
	put_le(h->nframes, 1);
	for (unsigned i = 0; i < h->nframes; i++)
		put_le(h->ips[i], 8);
	out_hits_count++;
}

void out_error(uint32_t request_id, const struct fw_error *e)
{
	out_frame_begin(FW_MSG_ERROR, request_id);
	out_u32((uint32_t)e->err);
	out_str(fw_errno_name(e->err));
	out_str(e->msg);
	out_frame_end();
}

void out_group_done(pid_t pid, enum fw_done_reason reason, uint64_t group,
		    const struct fw_counts *c)
{
	out_frame_begin(FW_MSG_GROUP_DONE, 0);
	out_u32((uint32_t)pid);
	out_u8((uint8_t)reason);
	out_pad(3);
	out_u64(group);
	out_u64(c->trapped);
	out_u64(c->delivered);
	out_u64(c->suppressed);
	out_u64(c->filtered);
	out_u64(c->lost);
	out_frame_end();
}

void out_target_exited(pid_t pid, enum fw_exit_kind kind, int code)
{
	out_frame_begin(FW_MSG_TARGET_EXITED, 0);
	out_u32((uint32_t)pid);
	out_u8((uint8_t)kind);
	out_pad(3);
	out_u32((uint32_t)code);
	out_frame_end();
}

void out_target_exec(pid_t pid)
{
	out_frame_begin(FW_MSG_TARGET_EXEC, 0);
	out_u32((uint32_t)pid);
	out_frame_end();
}

/* Strings of a symbol entry are capped so one entry always fits a frame's reserve. */
#define SYMBOL_FUNCTION_MAX 1024u
#define SYMBOL_ENTRY_MAX (8u + 8u + 2u + SYMBOL_FUNCTION_MAX + 2u + OUT_STRING_MAX)
#define SYMBOLS_FRAME_BUDGET (OUT_FRAME_RESERVE - SYMBOL_ENTRY_MAX)

static void put_str_capped(const char *s, size_t cap)
{
	size_t n = s ? strlen(s) : 0;

	if (n > cap)
		n = cap;
	put_le(n, 2);
	if (n > 0)
		memcpy(out_buf + out_len, s, n);
	out_len += n;
}

void out_symbols(pid_t pid, const struct fw_symbol *syms, unsigned n)
{
	unsigned i = 0;

	while (i < n) {
		size_t count_at;
		uint32_t count = 0;

		out_frame_begin(FW_MSG_SYMBOLS, 0);
		out_u32((uint32_t)pid);
		count_at = out_len;
		out_u32(0);
		while (i < n && out_len - out_frame_start <= SYMBOLS_FRAME_BUDGET) {
			put_le(syms[i].ip, 8);
			put_le(syms[i].offset, 8);
			put_str_capped(syms[i].function, SYMBOL_FUNCTION_MAX);
			put_str_capped(syms[i].module, OUT_STRING_MAX);
			count++;
			i++;
		}
		patch_le(count_at, count, 4);
		out_frame_end();
	}
}

void out_group_backoff(pid_t pid, uint64_t group, uint64_t until_ns, uint64_t suppressed)
{
	out_frame_begin(FW_MSG_GROUP_BACKOFF, 0);
	out_u32((uint32_t)pid);
	out_pad(4);
	out_u64(group);
	out_u64(until_ns);
	out_u64(suppressed);
	out_frame_end();
}

void out_group_resumed(pid_t pid, uint64_t group)
{
	out_frame_begin(FW_MSG_GROUP_RESUMED, 0);
	out_u32((uint32_t)pid);
	out_pad(4);
	out_u64(group);
	out_frame_end();
}

void out_target_fork(pid_t pid, pid_t child)
{
	out_frame_begin(FW_MSG_TARGET_FORK, 0);
	out_u32((uint32_t)pid);
	out_u32((uint32_t)child);
	out_frame_end();
}

void out_threads(pid_t pid, uint32_t total, uint32_t armed)
{
	out_frame_begin(FW_MSG_THREADS, 0);
	out_u32((uint32_t)pid);
	out_u32(total);
	out_u32(armed);
	out_frame_end();
}

void out_log(enum fw_log_level level, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	out_frame_begin(FW_MSG_LOG, 0);
	out_u8((uint8_t)level);
	out_str(msg);
	out_frame_end();
}

static bool rd_has(struct fw_reader *r, size_t n)
{
	if (r->bad || r->len - r->off < n) {
		r->bad = true;
		return false;
	}
	return true;
}

static uint64_t rd_le(struct fw_reader *r, size_t n)
{
	uint64_t v = 0;

	if (!rd_has(r, n))
		return 0;
	for (size_t i = 0; i < n; i++)
		v |= (uint64_t)r->p[r->off + i] << (8 * i);
	r->off += n;
	return v;
}

uint8_t rd_u8(struct fw_reader *r)
{
	return (uint8_t)rd_le(r, 1);
}

uint16_t rd_u16(struct fw_reader *r)
{
	return (uint16_t)rd_le(r, 2);
}

uint32_t rd_u32(struct fw_reader *r)
{
	return (uint32_t)rd_le(r, 4);
}

uint64_t rd_u64(struct fw_reader *r)
{
	return rd_le(r, 8);
}

void rd_skip(struct fw_reader *r, size_t n)
{
	if (rd_has(r, n))
		r->off += n;
}

void rd_str(struct fw_reader *r, char *buf, size_t cap)
{
	size_t n = rd_u16(r);

	buf[0] = '\0';
	if (!rd_has(r, n) || n + 1 > cap) {
		r->bad = true;
		return;
	}
	memcpy(buf, r->p + r->off, n);
	buf[n] = '\0';
	r->off += n;
}

void out_counts(pid_t pid, uint64_t group, uint64_t time_ns, const struct fw_counts *c,
		const struct fw_thread_count *threads, unsigned n)
{
	out_frame_begin(FW_MSG_COUNTS, 0);
	out_u32((uint32_t)pid);
	out_u32(n);
	out_u64(group);
	out_u64(time_ns);
	out_u64(c->trapped);
	out_u64(c->delivered);
	out_u64(c->suppressed);
	out_u64(c->filtered);
	out_u64(c->lost);
	for (unsigned i = 0; i < n; i++) {
		out_u32((uint32_t)threads[i].tid);
		out_pad(4);
		out_u64(threads[i].hits);
	}
	out_frame_end();
}
