/* The wire protocol of PROTOCOL.md: frame types, a batched output buffer
 * for replies and events, and a bounds-checked reader for request payloads. */
#ifndef FW_WIRE_H
#define FW_WIRE_H

#include "fw.h"

#define FW_FRAME_HEADER 12u
#define FW_FRAME_MAX (1u << 20)
/* A hit record: a fixed part, then u8 frame count, then that many u64 ips. */
#define FW_HIT_FIXED_SIZE 64u
#define FW_HIT_RECORD_MAX (FW_HIT_FIXED_SIZE + 1u + 8u * FW_MAX_STACK_DEPTH)

enum fw_msg {
	FW_MSG_HELLO = 0x0001,
	FW_MSG_RESOLVE = 0x0101,
	FW_MSG_ARM = 0x0102,
	FW_MSG_DISARM = 0x0103,
	FW_MSG_SHUTDOWN = 0x0105,
	FW_MSG_RESOLVED = 0x0181,
	FW_MSG_ARMED = 0x0182,
	FW_MSG_DISARMED = 0x0183,
	FW_MSG_SHUTDOWN_OK = 0x0185,
	FW_MSG_ERROR = 0x01FF,
	FW_MSG_HITS = 0x0201,
	FW_MSG_GROUP_DONE = 0x0202,
	FW_MSG_TARGET_EXITED = 0x0203,
	FW_MSG_TARGET_EXEC = 0x0204,
	FW_MSG_LOG = 0x0205,
	FW_MSG_SYMBOLS = 0x0206,
	FW_MSG_GROUP_BACKOFF = 0x0207,
	FW_MSG_GROUP_RESUMED = 0x0208,
	FW_MSG_TARGET_FORK = 0x0209,
	FW_MSG_THREADS = 0x020A,
	FW_MSG_COUNTS = 0x020B,
};

enum fw_done_reason {
	FW_DONE_BUDGET = 1,
	FW_DONE_EXITED = 2,
	FW_DONE_EXEC = 3,
};

/* TARGET_EXITED's killed byte. */
enum fw_exit_kind {
	FW_EXIT_EXITED = 0,
	FW_EXIT_KILLED = 1,
	FW_EXIT_GONE = 2, /* not our tracee: its status is not ours to read */
};

enum fw_log_level {
	FW_LOG_DEBUG = 0,
	FW_LOG_INFO = 1,
	FW_LOG_WARNING = 2,
	FW_LOG_ERROR = 3,
};

struct fw_hit {
	uint64_t group;
	uint32_t pid;
	uint32_t tid;
	uint64_t ip;
	uint64_t address;
	uint64_t old_value;
	uint64_t new_value;
	uint64_t time_ns;
	uint8_t dr;
	uint8_t length;
	uint8_t mode;
	bool value_exact; /* new_value read at the trap (ptrace), not after it (perf) */
	uint8_t nframes;  /* 0 when the group asked for no stack */
	const uint64_t *ips;
};

/* Per group: trapped = delivered + suppressed + filtered + lost. */
struct fw_counts {
	uint64_t trapped;
	uint64_t delivered;
	uint64_t suppressed; /* budget used up, or rate limit hit, before the slots were cleared */
	uint64_t filtered;   /* failed the group's thread filter or conditions */
	uint64_t lost;       /* perf: samples the kernel could not write (ring buffer full) */
};

/* One thread's hits in a COUNTS interval. */
struct fw_thread_count {
	pid_t tid;
	uint64_t hits;
};

/* One ip of a SYMBOLS event; function and module may be "" (unknown). */
struct fw_symbol {
	uint64_t ip;
	uint64_t offset;
	const char *function;
	const char *module;
};

/* Output goes to fd (stdout); nothing is written until out_flush(). */
void out_init(int fd);
/* Writes everything buffered (blocking). -1 once the reader is gone. */
int out_flush(void);
bool out_broken(void);
/* Bytes waiting; the event loop flushes early past this much. */
size_t out_pending(void);
#define FW_OUT_FLUSH_THRESHOLD (64u * 1024u)
/* Events wait at most this long for company before they are written: one
 * write (and one wake-up of the agent) per burst of hits, not per hit. */
#define FW_OUT_FLUSH_DELAY_MS 2
/* Milliseconds until buffered output is due (-1: nothing buffered). */
int out_due_ms(void);

void out_frame_begin(uint16_t type, uint32_t request_id);
void out_u8(uint8_t v);
void out_u16(uint16_t v);
void out_u32(uint32_t v);
void out_u64(uint64_t v);
void out_pad(size_t n);
void out_str(const char *s);
void out_frame_end(void);

/* Appends to the open HITS frame (opening one if needed). */
void out_hit(const struct fw_hit *h);
void out_error(uint32_t request_id, const struct fw_error *e);
void out_group_done(pid_t pid, enum fw_done_reason reason, uint64_t group,
		    const struct fw_counts *c);
void out_target_exited(pid_t pid, enum fw_exit_kind kind, int code);
void out_target_exec(pid_t pid);
/* One or more SYMBOLS frames defining n ips of pid (split to fit the buffer). */
void out_symbols(pid_t pid, const struct fw_symbol *syms, unsigned n);
void out_group_backoff(pid_t pid, uint64_t group, uint64_t until_ns, uint64_t suppressed);
void out_group_resumed(pid_t pid, uint64_t group);
void out_target_fork(pid_t pid, pid_t child);
void out_threads(pid_t pid, uint32_t total, uint32_t armed);
void out_counts(pid_t pid, uint64_t group, uint64_t time_ns, const struct fw_counts *c,
		const struct fw_thread_count *threads, unsigned n);
void out_log(enum fw_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Bounds-checked little-endian reader over one request payload. */
struct fw_reader {
	const uint8_t *p;
	size_t len;
	size_t off;
	bool bad;
};

uint8_t rd_u8(struct fw_reader *r);
uint16_t rd_u16(struct fw_reader *r);
uint32_t rd_u32(struct fw_reader *r);
uint64_t rd_u64(struct fw_reader *r);
void rd_skip(struct fw_reader *r, size_t n);
/* Copies a u16-prefixed string into buf (NUL-terminated); bad if it does not fit. */
void rd_str(struct fw_reader *r, char *buf, size_t cap);

#endif
