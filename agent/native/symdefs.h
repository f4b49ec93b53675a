/* A hit's stack and which ips of one process the agent has been told about
 * (SYMBOLS events): each distinct ip is defined once while the table lasts.
 * Shared by both backends. */
#ifndef FW_SYMDEFS_H
#define FW_SYMDEFS_H

#include "symctx.h"

#include <stdint.h>
#include <sys/types.h>

#define FW_KNOWN_IPS 4096 /* power of two */
#define FW_KNOWN_IPS_LIMIT (FW_KNOWN_IPS * 3 / 4)

struct fw_known_ips {
	uint64_t ips[FW_KNOWN_IPS];
	unsigned n;
};

/* Forgets every ip (after a re-attach, or when the table fills). */
void fw_known_ips_reset(struct fw_known_ips *k);

/* Sends a SYMBOLS event for the ips of this stack not defined yet. An ip is
 * named after ip - 1: for a return address that is inside its call
 * instruction (see fw_unwind), and for the trap's own ip (just past the
 * access) inside the accessing instruction; the offset is then ip's own. */
void fw_define_symbols(struct fw_known_ips *k, struct fw_symctx *sym, pid_t pid,
		       const uint64_t *ips, int n);

/* A hit's stack into ips, at most depth frames: unwound from regs and a
 * copy of the thread's stack (stack_len bytes from regs->rsp) when the
 * process's symbols are open (sym) and regs is given; when not, or when the
 * unwind fails, one frame, the trap's ip. Sends the ips not defined yet.
 * The number of frames (at least 1). */
int fw_hit_stack(struct fw_symctx *sym, struct fw_known_ips *k, pid_t pid, pid_t tid,
		 const struct user_regs_struct *regs, const uint8_t *stack, size_t stack_len,
		 uint64_t ip, uint64_t *ips, int depth);

#endif
