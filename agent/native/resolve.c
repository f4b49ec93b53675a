/* RESOLVE: open a symbol context on the pid (symctx.c reports its modules)
 * and look the name up there as an ELF symbol or a DWARF expression. */
#include "resolve.h"

#include "symctx.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static bool is_expression(const char *name)
{
	return strpbrk(name, ".[") != NULL || strstr(name, "->") != NULL;
}

int fw_resolve(pid_t pid, const char *name, uint64_t offset, struct fw_resolved *out,
	       struct fw_error *e)
{
	char msg[400];
	struct fw_symctx *ctx;
	int searched = 0;

	if (pid <= 0) {
		fw_error_set(e, EINVAL, "RESOLVE: invalid pid %d", (int)pid);
		return -1;
	}
	if (name[0] == '\0') {
		fw_error_set(e, EINVAL, "RESOLVE pid %d: empty symbol name", (int)pid);
		return -1;
	}
	ctx = fw_symctx_open(pid, msg, sizeof msg);
	if (!ctx) {
		fw_error_set(e, errno, "RESOLVE '%s': %s", name, msg);
		return -1;
	}
	if (is_expression(name)) {
		int err;

		if (fw_symctx_expr(ctx, name, out, msg, sizeof msg) == 0)
			goto found;
		err = errno;
		/* Symbols like "completed.0" have dots too. */
		if (err == ESRCH || strstr(name, "->") || strchr(name, '[') ||
		    fw_symctx_find_symbol(ctx, name, out, &searched) != 0) {
			fw_symctx_close(ctx);
			fw_error_set(e, err, "RESOLVE '%s': %s", name, msg);
			return -1;
		}
		goto found;
	}
	if (fw_symctx_find_symbol(ctx, name, out, &searched) != 0) {
		fw_symctx_close(ctx);
		fw_error_set(e, ENOENT, "symbol '%s' not found in pid %d (searched %d modules)", name,
			     (int)pid, searched);
		return -1;
	}
found:
	fw_symctx_close(ctx);
	out->address += offset;
	return 0;
}
