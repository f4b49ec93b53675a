/* Symbol name or DWARF expression -> runtime address in a live process.
 * Read-only: needs /proc access, not ptrace. */
#ifndef FW_RESOLVE_H
#define FW_RESOLVE_H

#include "fw.h"

struct fw_resolved {
	uint64_t address; /* symbol + offset, load bias applied */
	uint64_t size;
	char module[4096];
	char symbol[1024];
};

/* RESOLVE: a plain name is an ELF symbol (the main executable's before a
 * library's, a data object before anything else; never TLS). A name with
 * '.', '->' or '[' is a DWARF expression (fw_resolve_expr in symctx.h);
 * when that fails and the name has no '->' or '[', the whole name is
 * tried as a symbol too ("completed.0"). size is the symbol's, or the
 * final member's for an expression. */
int fw_resolve(pid_t pid, const char *name, uint64_t offset, struct fw_resolved *out,
	       struct fw_error *e);

/* Shared with symctx.c, which owns every libdwfl call. */
struct fw_symctx;

/* The best ELF symbol named name as above (out->address without offset).
 * 0, or -1 when no module defines it; *modules_searched either way. */
int fw_symctx_find_symbol(struct fw_symctx *ctx, const char *name, struct fw_resolved *out,
			  int *modules_searched);

/* fw_resolve_expr, also naming the module whose debug info defines the
 * expression's variable. */
int fw_symctx_expr(struct fw_symctx *ctx, const char *expr, struct fw_resolved *out, char *err,
		   size_t errlen);

#endif
