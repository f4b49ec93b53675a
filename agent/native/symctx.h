/* Per-process symbol and unwinding context (elfutils libdwfl): address ->
 * function+offset (module), DWARF-CFI stack unwinding from a stopped
 * thread's registers and a copy of its stack, and DWARF location
 * expressions (var.field, var->field) -> address. */
#ifndef FW_SYMCTX_H
#define FW_SYMCTX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/user.h>

struct fw_symctx;

/* Reports the modules mapped in pid (from /proc/PID/maps). NULL on failure
 * with a message in err and errno set (ESRCH: no such process). Needs no
 * ptrace. */
struct fw_symctx *fw_symctx_open(pid_t pid, char *err, size_t errlen);
void fw_symctx_close(struct fw_symctx *ctx);

/* Re-reads the module list (after dlopen: call when an ip is in no known module).
 * fw_unwind and fw_symbolize do this themselves for an ip in no module, at
 * most once a second. Modules still mapped keep their strings; those of
 * unmapped ones are freed. 0, or -1 with errno set. */
int fw_symctx_refresh(struct fw_symctx *ctx);

/* Unwinds a stopped thread with DWARF CFI (works without frame pointers).
 * regs: its registers (PTRACE_GETREGS); stack: a copy of its memory from
 * regs->rsp (stack_len bytes; reads outside the copy fail, ending the
 * unwind). Writes up to max return addresses, ips[0] = regs->rip, and
 * returns how many (>= 1), or -1 on failure. Never allocates per call once
 * warm, and never ptrace-attaches.
 * ips[i] is each frame's pc as libdwfl's dwfl_frame_pc gives it, not
 * adjusted: for i >= 1 a return address, the instruction after the call
 * (unless frame i was interrupted by a signal: then its exact pc). To name
 * the function of frame i >= 1, symbolize ips[i] - 1 (inside the call
 * instruction), as eu-stack does: a call that ends its function (to a
 * noreturn callee) would otherwise be named after the next function.
 * symctx.c itself allocates nothing per call; libdw 0.188 underneath
 * does, ~7 small malloc/realloc per frame stepped (freed before return). */
int fw_unwind(struct fw_symctx *ctx, pid_t tid, const struct user_regs_struct *regs,
	      const uint8_t *stack, size_t stack_len, uint64_t *ips, int max);

/* ip -> function name, offset from its start, module path. Strings stay
 * valid until fw_symctx_close/refresh. Returns 0, or -1 when no symbol
 * covers ip (*module is still set when a module does, else NULL). Names
 * come from .symtab (the binary's or its separate debug file's), else
 * .dynsym. ip is looked up as given: see fw_unwind for return addresses. */
int fw_symbolize(struct fw_symctx *ctx, uint64_t ip, const char **function, uint64_t *offset,
		 const char **module);

/* A DWARF location expression: "var", "var.field", "var->field",
 * "var.a.b", "var[3]", "var->arr[2].x" (globals and file statics with debug
 * info in the executable or a loaded library; pointers are read from the
 * process with process_vm_readv). Sets *addr and *size (the final member's
 * byte size). Returns 0, or -1 with a message in err ("no debug info for
 * 'var' in pid 1234: install its -dbg package or build with -g", "'x' has no
 * member 'y' (members: a, b, c)", "null pointer in 'p->x'"). errno is
 * set on failure: ENOENT (no such variable, member, or debug info), EINVAL
 * (syntax, or a step that does not fit the type, e.g. '.' on a pointer),
 * ERANGE (index past an array's bound), EFAULT (null or unreadable
 * pointer), ESRCH (process gone), ENOTSUP (thread-local variable,
 * bit-field, no fixed address). */
int fw_resolve_expr(struct fw_symctx *ctx, const char *expr, uint64_t *addr, uint64_t *size,
		    char *err, size_t errlen);

#endif
