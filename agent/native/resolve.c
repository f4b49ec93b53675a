/* RESOLVE: report the modules of a live process with libdwfl and pick the
 * best definition of a name: the main executable's before a library's, a
 * data object before anything else. TLS symbols are offsets, not addresses,
 * and are never chosen. */
#include "resolve.h"

#include <elfutils/libdwfl.h>
#include <errno.h>
#include <gelf.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

struct search {
	const char *name;
	char exe[PATH_MAX];
	int modules;
	int best_score; /* -1: nothing found */
	GElf_Addr best_address;
	GElf_Xword best_size;
	char best_module_copy[4096];
};

static char *debuginfo_path;

static const Dwfl_Callbacks proc_callbacks = {
	.find_elf = dwfl_linux_proc_find_elf,
	.find_debuginfo = dwfl_standard_find_debuginfo,
	.debuginfo_path = &debuginfo_path,
};

static bool is_main_module(const struct search *s, const char *module_name)
{
	size_t n = strlen(s->exe);

	return n > 0 && module_name && strncmp(module_name, s->exe, n) == 0 &&
	       (module_name[n] == '\0' || strcmp(module_name + n, " (deleted)") == 0);
}

static int visit_module(Dwfl_Module *mod, void **userdata, const char *module_name,
			Dwarf_Addr start, void *arg)
{
	struct search *s = arg;
	bool main_module = is_main_module(s, module_name);
	int count = dwfl_module_getsymtab(mod);

	(void)userdata;
	(void)start;
	s->modules++;
	for (int i = 1; i < count; i++) {
		GElf_Sym sym;
		GElf_Addr addr;
		GElf_Word shndx;
		Elf *elf;
		Dwarf_Addr bias;
		const char *n = dwfl_module_getsym_info(mod, i, &sym, &addr, &shndx, &elf, &bias);
		int type, score;

		if (!n || strcmp(n, s->name) != 0)
			continue;
		type = GELF_ST_TYPE(sym.st_info);
		if (sym.st_shndx == SHN_UNDEF || type == STT_TLS || type == STT_SECTION ||
		    type == STT_FILE)
			continue;
		score = (main_module ? 2 : 0) + (type == STT_OBJECT ? 1 : 0);
		if (score > s->best_score) {
			s->best_score = score;
			s->best_address = addr;
			s->best_size = sym.st_size;
			snprintf(s->best_module_copy, sizeof s->best_module_copy, "%s",
				 module_name ? module_name : "?");
		}
	}
	return DWARF_CB_OK;
}

int fw_resolve(pid_t pid, const char *name, uint64_t offset, struct fw_resolved *out,
	       struct fw_error *e)
{
	struct search s = { .name = name, .best_score = -1 };
	char link[64];
	ssize_t n;
	Dwfl *dwfl;
	int r;

	if (pid <= 0) {
		fw_error_set(e, EINVAL, "RESOLVE: invalid pid %d", (int)pid);
		return -1;
	}
	if (name[0] == '\0') {
		fw_error_set(e, EINVAL, "RESOLVE pid %d: empty symbol name", (int)pid);
		return -1;
	}
	snprintf(link, sizeof link, "/proc/%d/exe", (int)pid);
	n = readlink(link, s.exe, sizeof s.exe - 1);
	if (n < 0) {
		int err = errno;

		if (err == ENOENT)
			fw_error_set(e, ESRCH, "RESOLVE '%s': no process with pid %d", name, (int)pid);
		else
			fw_error_set(e, err, "RESOLVE '%s' in pid %d: readlink %s: %s", name,
				     (int)pid, link, strerror(err));
		return -1;
	}
	s.exe[n] = '\0';

	dwfl = dwfl_begin(&proc_callbacks);
	if (!dwfl) {
		fw_error_set(e, ENOMEM, "RESOLVE pid %d: dwfl_begin: %s", (int)pid, dwfl_errmsg(-1));
		return -1;
	}
	dwfl_report_begin(dwfl);
	r = dwfl_linux_proc_report(dwfl, pid);
	if (dwfl_report_end(dwfl, NULL, NULL) != 0 && r == 0)
		r = -1;
	if (r != 0) {
		int err = r > 0 ? r : EIO;

		if (err == ENOENT)
			err = ESRCH;
		fw_error_set(e, err, "RESOLVE '%s': reading the modules of pid %d: %s", name,
			     (int)pid, r > 0 ? strerror(r) : dwfl_errmsg(-1));
		dwfl_end(dwfl);
		return -1;
	}
	dwfl_getmodules(dwfl, visit_module, &s, 0);
	dwfl_end(dwfl);
	if (s.best_score < 0) {
		fw_error_set(e, ENOENT, "symbol '%s' not found in pid %d (searched %d modules)", name,
			     (int)pid, s.modules);
		return -1;
	}
	out->address = s.best_address + offset;
	out->size = s.best_size;
	snprintf(out->module, sizeof out->module, "%s", s.best_module_copy);
	snprintf(out->symbol, sizeof out->symbol, "%s", name);
	return 0;
}
