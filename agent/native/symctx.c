/* The helper's one owner of libdwfl: a per-process Dwfl with the modules of
 * /proc/PID/maps, CFI unwinding of a stopped thread from its registers and
 * a copy of its stack (never ptrace, never /proc/PID/mem), names for
 * addresses, DWARF expressions ("var.a->b[2]") to address and size, and
 * the ELF-symbol search behind RESOLVE (shared through resolve.h). */
#include "symctx.h"

#include "resolve.h"

#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>
#include <errno.h>
#include <gelf.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

/* An ip in no module triggers at most one module re-read per interval:
 * JIT code never resolves, and /proc/PID/maps is not free to parse. */
#define REFRESH_MIN_INTERVAL_MS 1000

/* x86-64 DWARF registers 0..16: rax, rdx, rcx, rbx, rsi, rdi, rbp, rsp,
 * r8..r15, then 16 = the return-address column, which holds rip. */
#define X86_64_DWARF_FRAME_REGS 17

/* fw_symbolize's cache: libdwfl scans a module's whole symbol table per
 * lookup (tens of us in libc), and traps keep coming from the same few
 * sites. 4-way sets, so the frames of one stack do not evict each other. */
#define SYMBOL_CACHE_SET_BITS 8
#define SYMBOL_CACHE_WAYS 4

#define MAX_IDENT 256
#define MAX_ARRAY_DIMS 8
#define MAX_ANON_DEPTH 8

/* One fw_unwind call in progress; the Dwfl callbacks read it. */
struct unwind_job {
	pid_t tid;
	const struct user_regs_struct *regs;
	const uint8_t *stack;
	size_t stack_len;
	uint64_t stack_base; /* regs->rsp: where stack[0] was copied from */
	uint64_t *ips;
	int max;
	int count;
};

struct symbol_entry {
	uint64_t ip; /* 0: empty */
	const char *function; /* NULL: in module but covered by no symbol */
	uint64_t offset;
	const char *module;
};

struct fw_symctx {
	pid_t pid;
	Dwfl *dwfl;
	char exe[PATH_MAX];
	int64_t last_refresh_ms;
	/* dwfl_attach_state may run once per Dwfl: done at the first unwind,
	 * then every unwind swaps its job into `job` for the callbacks. */
	bool attached;
	struct unwind_job *job;
	/* An x86-64 ELF header we own names the unwinder's backend; leaving
	 * it to libdwfl would borrow a module's, which a refresh may free. */
	Elf64_Ehdr arch_ehdr;
	Elf *arch_elf;
	/* Its strings are libdwfl's, so a refresh that may free modules
	 * empties it. Newest first in each set. */
	struct symbol_entry symbols[1u << SYMBOL_CACHE_SET_BITS][SYMBOL_CACHE_WAYS];
};

static char *debuginfo_path;

static const Dwfl_Callbacks proc_callbacks = {
	.find_elf = dwfl_linux_proc_find_elf,
	.find_debuginfo = dwfl_standard_find_debuginfo,
	.debuginfo_path = &debuginfo_path,
};

__attribute__((format(printf, 4, 5))) static int fail(char *err, size_t errlen, int errnum,
						      const char *fmt, ...)
{
	va_list ap;

	if (err && errlen > 0) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	errno = errnum;
	return -1;
}

/* ---- modules ---- */

static bool is_main_module(const struct fw_symctx *ctx, const char *module_name)
{
	size_t n = strlen(ctx->exe);

	return n > 0 && module_name && strncmp(module_name, ctx->exe, n) == 0 &&
	       (module_name[n] == '\0' || strcmp(module_name + n, " (deleted)") == 0);
}

static int report_modules(struct fw_symctx *ctx, char *err, size_t errlen)
{
	int r;

	memset(ctx->symbols, 0, sizeof ctx->symbols);
	dwfl_report_begin(ctx->dwfl);
	r = dwfl_linux_proc_report(ctx->dwfl, ctx->pid);
	if (dwfl_report_end(ctx->dwfl, NULL, NULL) != 0 && r == 0)
		r = -1;
	ctx->last_refresh_ms = fw_now_ms();
	if (r != 0) {
		int e = r > 0 ? r : EIO;

		if (e == ENOENT)
			e = ESRCH;
		return fail(err, errlen, e, "reading the modules of pid %d: %s", (int)ctx->pid,
			    r > 0 ? strerror(r) : dwfl_errmsg(-1));
	}
	return 0;
}

struct fw_symctx *fw_symctx_open(pid_t pid, char *err, size_t errlen)
{
	struct fw_symctx *ctx;
	char link[64];
	ssize_t n;

	if (pid <= 0) {
		fail(err, errlen, EINVAL, "invalid pid %d", (int)pid);
		return NULL;
	}
	ctx = calloc(1, sizeof *ctx);
	if (!ctx) {
		fail(err, errlen, ENOMEM, "pid %d: out of memory", (int)pid);
		return NULL;
	}
	ctx->pid = pid;
	snprintf(link, sizeof link, "/proc/%d/exe", (int)pid);
	n = readlink(link, ctx->exe, sizeof ctx->exe - 1);
	if (n < 0) {
		int e = errno;

		if (e == ENOENT)
			fail(err, errlen, ESRCH, "no process with pid %d", (int)pid);
		else
			fail(err, errlen, e, "readlink %s: %s", link, strerror(e));
		free(ctx);
		errno = e == ENOENT ? ESRCH : e;
		return NULL;
	}
	ctx->exe[n] = '\0';
	ctx->dwfl = dwfl_begin(&proc_callbacks);
	if (!ctx->dwfl) {
		fail(err, errlen, ENOMEM, "pid %d: dwfl_begin: %s", (int)pid, dwfl_errmsg(-1));
		free(ctx);
		errno = ENOMEM;
		return NULL;
	}
	if (report_modules(ctx, err, errlen) != 0) {
		int e = errno;

		fw_symctx_close(ctx);
		errno = e;
		return NULL;
	}
	return ctx;
}

void fw_symctx_close(struct fw_symctx *ctx)
{
	if (!ctx)
		return;
	dwfl_end(ctx->dwfl);
	if (ctx->arch_elf)
		elf_end(ctx->arch_elf);
	free(ctx);
}

int fw_symctx_refresh(struct fw_symctx *ctx)
{
	char err[256];

	return report_modules(ctx, err, sizeof err);
}

/* The refresh an unknown ip may trigger: at most one per interval. */
static bool refresh_allowed(struct fw_symctx *ctx)
{
	if (fw_now_ms() - ctx->last_refresh_ms < REFRESH_MIN_INTERVAL_MS)
		return false;
	return fw_symctx_refresh(ctx) == 0;
}

/* Visits the main executable's module, then every other one, until visit
 * returns DWARF_CB_ABORT. */
struct module_walk {
	struct fw_symctx *ctx;
	bool main_pass;
	int (*visit)(Dwfl_Module *mod, const char *name, bool is_main, void *arg);
	void *arg;
};

static int module_walk_cb(Dwfl_Module *mod, void **userdata, const char *name, Dwarf_Addr start,
			  void *arg)
{
	struct module_walk *w = arg;
	bool main_module = is_main_module(w->ctx, name);

	(void)userdata;
	(void)start;
	if (main_module != w->main_pass)
		return DWARF_CB_OK;
	return w->visit(mod, name, main_module, w->arg);
}

static void each_module_main_first(struct fw_symctx *ctx,
				   int (*visit)(Dwfl_Module *, const char *, bool, void *),
				   void *arg)
{
	struct module_walk w = { ctx, true, visit, arg };

	if (dwfl_getmodules(ctx->dwfl, module_walk_cb, &w, 0) != 0)
		return; /* visit aborted in the main module */
	w.main_pass = false;
	dwfl_getmodules(ctx->dwfl, module_walk_cb, &w, 0);
}

/* ---- ELF symbols (RESOLVE of a plain name) ---- */

struct symbol_search {
	const char *name;
	bool objects_only; /* a defined data object, for copy relocations */
	int modules;
	int best_score; /* -1: nothing found */
	GElf_Addr best_address;
	GElf_Xword best_size;
	int best_type; /* STT_OBJECT, STT_FUNC, ... */
	const char *best_module;
};

/* "stdout" names "stdout@GLIBC_2.2.5" too: .symtab keeps the version of
 * a copy-relocated or versioned symbol in its name. */
static bool symbol_name_is(const char *symbol, const char *name)
{
	size_t n = strlen(name);

	return strncmp(symbol, name, n) == 0 && (symbol[n] == '\0' || symbol[n] == '@');
}

static int symbol_visit(Dwfl_Module *mod, const char *module_name, bool main_module, void *arg)
{
	struct symbol_search *s = arg;
	int count = dwfl_module_getsymtab(mod);

	s->modules++;
	for (int i = 1; i < count; i++) {
		GElf_Sym sym;
		GElf_Addr addr;
		GElf_Word shndx;
		Elf *elf;
		Dwarf_Addr bias;
		const char *n = dwfl_module_getsym_info(mod, i, &sym, &addr, &shndx, &elf, &bias);
		int type, score;

		if (!n || !symbol_name_is(n, s->name))
			continue;
		type = GELF_ST_TYPE(sym.st_info);
		if (sym.st_shndx == SHN_UNDEF || type == STT_TLS || type == STT_SECTION ||
		    type == STT_FILE)
			continue;
		if (s->objects_only && type != STT_OBJECT)
			continue;
		score = (main_module ? 2 : 0) + (type == STT_OBJECT ? 1 : 0);
		if (score > s->best_score) {
			s->best_score = score;
			s->best_address = addr;
			s->best_size = sym.st_size;
			s->best_type = type;
			s->best_module = module_name;
		}
	}
	return DWARF_CB_OK;
}

int fw_symctx_find_symbol(struct fw_symctx *ctx, const char *name, struct fw_resolved *out,
			  int *modules_searched)
{
	struct symbol_search s = { .name = name, .best_score = -1 };

	each_module_main_first(ctx, symbol_visit, &s);
	*modules_searched = s.modules;
	if (s.best_score < 0)
		return -1;
	out->address = s.best_address;
	out->size = s.best_size;
	snprintf(out->module, sizeof out->module, "%s", s.best_module ? s.best_module : "?");
	snprintf(out->symbol, sizeof out->symbol, "%s", name);
	return 0;
}

/* ---- unwinding ---- */

static pid_t cb_next_thread(Dwfl *dwfl, void *arg, void **thread_argp)
{
	struct fw_symctx *ctx = arg;

	(void)dwfl;
	if (*thread_argp != NULL || !ctx->job)
		return 0;
	*thread_argp = ctx;
	return ctx->job->tid;
}

static bool cb_get_thread(Dwfl *dwfl, pid_t tid, void *arg, void **thread_argp)
{
	struct fw_symctx *ctx = arg;

	(void)dwfl;
	if (!ctx->job || ctx->job->tid != tid)
		return false;
	*thread_argp = ctx;
	return true;
}

/* Only the stack copy is readable: the target keeps running meanwhile
 * for all we know, and a read outside the copy ends the unwind. */
static bool cb_memory_read(Dwfl *dwfl, Dwarf_Addr addr, Dwarf_Word *result, void *arg)
{
	struct fw_symctx *ctx = arg;
	const struct unwind_job *job = ctx->job;
	uint64_t at;

	(void)dwfl;
	if (!job || addr < job->stack_base || job->stack_len < sizeof *result)
		return false;
	at = addr - job->stack_base;
	if (at > job->stack_len - sizeof *result)
		return false;
	memcpy(result, job->stack + at, sizeof *result);
	return true;
}

static bool cb_set_initial_registers(Dwfl_Thread *thread, void *thread_arg)
{
	const struct fw_symctx *ctx = thread_arg;
	const struct user_regs_struct *r = ctx->job->regs;
	const Dwarf_Word regs[X86_64_DWARF_FRAME_REGS] = {
		r->rax, r->rdx, r->rcx, r->rbx, r->rsi, r->rdi, r->rbp, r->rsp, r->r8,
		r->r9,	r->r10, r->r11, r->r12, r->r13, r->r14, r->r15, r->rip,
	};

	return dwfl_thread_state_registers(thread, 0, X86_64_DWARF_FRAME_REGS, regs);
}

static const Dwfl_Thread_Callbacks thread_callbacks = {
	.next_thread = cb_next_thread,
	.get_thread = cb_get_thread,
	.memory_read = cb_memory_read,
	.set_initial_registers = cb_set_initial_registers,
};

static int attach_state(struct fw_symctx *ctx)
{
	Elf64_Ehdr *h = &ctx->arch_ehdr;

	if (ctx->attached)
		return 0;
	if (elf_version(EV_CURRENT) == EV_NONE)
		return fail(NULL, 0, EIO, "libelf version");
	memset(h, 0, sizeof *h);
	memcpy(h->e_ident, ELFMAG, SELFMAG);
	h->e_ident[EI_CLASS] = ELFCLASS64;
	h->e_ident[EI_DATA] = ELFDATA2LSB;
	h->e_ident[EI_VERSION] = EV_CURRENT;
	h->e_type = ET_EXEC;
	h->e_machine = EM_X86_64;
	h->e_version = EV_CURRENT;
	h->e_ehsize = sizeof *h;
	ctx->arch_elf = elf_memory((char *)h, sizeof *h);
	if (!ctx->arch_elf)
		return fail(NULL, 0, EIO, "elf_memory");
	if (!dwfl_attach_state(ctx->dwfl, ctx->arch_elf, ctx->pid, &thread_callbacks, ctx))
		return fail(NULL, 0, EIO, "dwfl_attach_state");
	ctx->attached = true;
	return 0;
}

static int frame_cb(Dwfl_Frame *frame, void *arg)
{
	struct unwind_job *job = arg;
	Dwarf_Addr pc;

	/* Whether pc is an activation is not passed on (fw_unwind has no room
	 * for it): callers subtract 1 from every ips[i >= 1] instead. */
	if (!dwfl_frame_pc(frame, &pc, NULL) || pc == 0)
		return DWARF_CB_ABORT;
	job->ips[job->count++] = pc;
	return job->count < job->max ? DWARF_CB_OK : DWARF_CB_ABORT;
}

/* ips[i] is each frame's pc exactly as dwfl_frame_pc gives it: for i >= 1
 * normally a return address (not an "activation"), the instruction after
 * the call. We do not subtract 1 here so the numbers match what a
 * debugger prints; see symctx.h for how to name such a frame. The unwind
 * ends at the outermost frame (rip undefined in its CFI), at a pc of 0,
 * at a read outside the stack copy, at a pc without CFI that the
 * frame-pointer fallback cannot step, or at max. */
int fw_unwind(struct fw_symctx *ctx, pid_t tid, const struct user_regs_struct *regs,
	      const uint8_t *stack, size_t stack_len, uint64_t *ips, int max)
{
	struct unwind_job job = {
		.tid = tid,
		.regs = regs,
		.stack = stack,
		.stack_len = stack ? stack_len : 0,
		.stack_base = regs ? regs->rsp : 0,
		.ips = ips,
		.max = max,
	};

	if (!ctx || !regs || !ips || max < 1 || tid <= 0)
		return fail(NULL, 0, EINVAL, "fw_unwind arguments");
	if (attach_state(ctx) != 0)
		return -1;
	if (!dwfl_addrmodule(ctx->dwfl, regs->rip))
		refresh_allowed(ctx);
	ctx->job = &job;
	/* -1 here usually just means the walk stopped early (a read outside
	 * the copy, no CFI): the frames collected so far are still right. */
	dwfl_getthread_frames(ctx->dwfl, tid, frame_cb, &job);
	ctx->job = NULL;
	if (job.count == 0) {
		ips[0] = regs->rip;
		job.count = 1;
	}
	return job.count;
}

/* ---- symbols for addresses ---- */

static struct symbol_entry *symbol_set(struct fw_symctx *ctx, uint64_t ip)
{
	uint64_t h = (ip ^ (ip >> 17)) * 0x9e3779b97f4a7c15ull;

	return ctx->symbols[h >> (64 - SYMBOL_CACHE_SET_BITS)];
}

/* Looks ip up in libdwfl and caches the answer in front of its set,
 * evicting the set's oldest; NULL when ip is in no module. */
static struct symbol_entry *symbol_fill(struct fw_symctx *ctx, uint64_t ip)
{
	Dwfl_Module *mod = dwfl_addrmodule(ctx->dwfl, ip);
	struct symbol_entry *set;
	GElf_Off off = 0;
	GElf_Sym sym;

	if (!mod && refresh_allowed(ctx))
		mod = dwfl_addrmodule(ctx->dwfl, ip);
	if (!mod)
		return NULL; /* not cached: a later refresh may map it */
	set = symbol_set(ctx, ip);
	memmove(&set[1], &set[0], sizeof set[0] * (SYMBOL_CACHE_WAYS - 1));
	set[0].ip = ip;
	set[0].module = dwfl_module_info(mod, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
	set[0].function = dwfl_module_addrinfo(mod, ip, &off, &sym, NULL, NULL, NULL);
	set[0].offset = set[0].function ? off : 0;
	return &set[0];
}

int fw_symbolize(struct fw_symctx *ctx, uint64_t ip, const char **function, uint64_t *offset,
		 const char **module)
{
	struct symbol_entry *set = symbol_set(ctx, ip), *e = NULL;

	for (int w = 0; w < SYMBOL_CACHE_WAYS && ip != 0; w++)
		if (set[w].ip == ip) {
			e = &set[w];
			break;
		}
	if (!e)
		e = symbol_fill(ctx, ip);
	if (!e) {
		*function = NULL;
		*offset = 0;
		*module = NULL;
		return -1;
	}
	*function = e->function;
	*offset = e->offset;
	*module = e->module;
	return e->function ? 0 : -1;
}

/* ---- DWARF expressions ---- */

static const char *die_name(Dwarf_Die *die)
{
	Dwarf_Attribute attr;

	return dwarf_formstring(dwarf_attr_integrate(die, DW_AT_name, &attr));
}

/* The DIE's type with typedefs and cv-qualifiers peeled; false for void
 * (no DW_AT_type) or bad DWARF. */
static bool die_type(Dwarf_Die *die, Dwarf_Die *type)
{
	Dwarf_Attribute attr;
	Dwarf_Die raw;

	if (!dwarf_attr_integrate(die, DW_AT_type, &attr) || !dwarf_formref_die(&attr, &raw))
		return false;
	return dwarf_peel_type(&raw, type) == 0;
}

static bool is_aggregate(int tag)
{
	return tag == DW_TAG_structure_type || tag == DW_TAG_union_type ||
	       tag == DW_TAG_class_type;
}

static const char *type_desc(Dwarf_Die *type, char *buf, size_t len)
{
	const char *name = dwarf_diename(type);
	const char *kind;

	switch (dwarf_tag(type)) {
	case DW_TAG_structure_type:
		kind = "struct";
		break;
	case DW_TAG_union_type:
		kind = "union";
		break;
	case DW_TAG_class_type:
		kind = "class";
		break;
	case DW_TAG_enumeration_type:
		kind = "enum";
		break;
	case DW_TAG_pointer_type:
		return "a pointer";
	case DW_TAG_array_type:
		return "an array";
	case DW_TAG_subroutine_type:
		return "a function";
	case DW_TAG_base_type:
		return name ? name : "a base type";
	default:
		snprintf(buf, len, "a type with DWARF tag 0x%x", (unsigned)dwarf_tag(type));
		return buf;
	}
	snprintf(buf, len, "%s %s", kind, name ? name : "<anonymous>");
	return buf;
}

/* A struct only declared here ("struct foo;") is completed from the first
 * definition with the same tag and name in the same debug file. */
static bool complete_type(Dwarf_Die *type)
{
	Dwarf *dw = dwarf_cu_getdwarf(type->cu);
	const char *name = dwarf_diename(type);
	int tag = dwarf_tag(type);
	Dwarf_Off off = 0, next;
	size_t header;

	if (!dwarf_hasattr(type, DW_AT_declaration))
		return true;
	if (!dw || !name)
		return false;
	while (dwarf_nextcu(dw, off, &next, &header, NULL, NULL, NULL) == 0) {
		Dwarf_Die cu, child;

		if (dwarf_offdie(dw, off + header, &cu) && dwarf_child(&cu, &child) == 0) {
			do {
				const char *n;

				if (dwarf_tag(&child) != tag || dwarf_hasattr(&child, DW_AT_declaration))
					continue;
				n = dwarf_diename(&child);
				if (n && strcmp(n, name) == 0) {
					*type = child;
					return true;
				}
			} while (dwarf_siblingof(&child, &child) == 0);
		}
		off = next;
	}
	return false;
}

/* DW_AT_data_member_location as a constant (DWARF 3+) or as the DWARF 2
 * "DW_OP_plus_uconst N" expression; absent in a union: 0. */
static int member_offset(Dwarf_Die *member, Dwarf_Word *offset)
{
	Dwarf_Attribute attr;
	Dwarf_Op *ops;
	size_t n;

	*offset = 0;
	if (!dwarf_attr(member, DW_AT_data_member_location, &attr))
		return 0;
	if (dwarf_formudata(&attr, offset) == 0)
		return 0;
	if (dwarf_getlocation(&attr, &ops, &n) == 0 && n == 1 && ops[0].atom == DW_OP_plus_uconst) {
		*offset = ops[0].number;
		return 0;
	}
	return -1;
}

/* Finds a member by name, looking into anonymous struct/union members.
 * 1: found (*offset from the start of type), 0: none, -1: an offset that
 * is not a constant. */
static int find_member(Dwarf_Die *type, const char *name, Dwarf_Word *offset, Dwarf_Die *member,
		       int depth)
{
	Dwarf_Die child;

	if (dwarf_child(type, &child) != 0)
		return 0;
	do {
		const char *n;
		Dwarf_Word off;
		Dwarf_Die inner;
		int r;

		if (dwarf_tag(&child) != DW_TAG_member)
			continue;
		n = dwarf_diename(&child);
		if (n && strcmp(n, name) != 0)
			continue;
		if (member_offset(&child, &off) != 0)
			return -1;
		if (n) {
			*offset = off;
			*member = child;
			return 1;
		}
		if (depth >= MAX_ANON_DEPTH || !die_type(&child, &inner) ||
		    !is_aggregate(dwarf_tag(&inner)))
			continue;
		r = find_member(&inner, name, offset, member, depth + 1);
		if (r != 0) {
			*offset += off;
			return r;
		}
	} while (dwarf_siblingof(&child, &child) == 0);
	return 0;
}

static void append_members(Dwarf_Die *type, char *buf, size_t len, size_t *used, int depth)
{
	Dwarf_Die child;

	if (dwarf_child(type, &child) != 0)
		return;
	do {
		const char *n;
		Dwarf_Die inner;

		if (dwarf_tag(&child) != DW_TAG_member)
			continue;
		n = dwarf_diename(&child);
		if (!n) {
			if (depth < MAX_ANON_DEPTH && die_type(&child, &inner) &&
			    is_aggregate(dwarf_tag(&inner)))
				append_members(&inner, buf, len, used, depth + 1);
			continue;
		}
		if (*used < len) {
			int w = snprintf(buf + *used, len - *used, "%s%s", *used ? ", " : "", n);

			*used += w > 0 ? (size_t)w : 0;
		}
	} while (dwarf_siblingof(&child, &child) == 0);
}

static void member_list(Dwarf_Die *type, char *buf, size_t len)
{
	size_t used = 0;

	buf[0] = '\0';
	append_members(type, buf, len, &used, 0);
	if (used >= len && len > 4)
		strcpy(buf + len - 4, "...");
	if (used == 0)
		snprintf(buf, len, "none");
}

enum address_kind { ADDR_FIXED, ADDR_TLS, ADDR_NOT_FIXED };

static enum address_kind fixed_address(Dwarf_Attribute *loc, Dwarf_Addr *addr)
{
	Dwarf_Op *ops;
	size_t n;

	if (dwarf_getlocation(loc, &ops, &n) != 0 || n == 0)
		return ADDR_NOT_FIXED;
	for (size_t i = 0; i < n; i++)
		if (ops[i].atom == DW_OP_form_tls_address || ops[i].atom == DW_OP_GNU_push_tls_address)
			return ADDR_TLS;
	if (n != 1)
		return ADDR_NOT_FIXED;
	if (ops[0].atom == DW_OP_addr) {
		*addr = ops[0].number;
		return ADDR_FIXED;
	}
	if (ops[0].atom == DW_OP_addrx || ops[0].atom == DW_OP_GNU_addr_index) {
		Dwarf_Attribute result;

		if (dwarf_getlocation_attr(loc, &ops[0], &result) == 0 &&
		    dwarf_formaddr(&result, addr) == 0)
			return ADDR_FIXED;
	}
	return ADDR_NOT_FIXED;
}

struct var_search {
	const char *name;
	int modules;
	bool found, found_external;
	bool tls, not_fixed; /* definitions seen but unusable */
	Dwarf_Die die;
	uint64_t address; /* load bias applied */
	const char *module;
	bool in_main;
};

static bool module_has_symbol(Dwfl_Module *mod, const char *name)
{
	int count = dwfl_module_getsymtab(mod);

	if (count <= 0)
		return true; /* no symbol table to rule it out: scan the DWARF */
	for (int i = 1; i < count; i++) {
		GElf_Sym sym;
		const char *n = dwfl_module_getsym(mod, i, &sym, NULL);

		if (n && symbol_name_is(n, name))
			return true;
	}
	return false;
}

/* Globals and file statics are the variables at the top of each unit; a
 * definition may carry its name through DW_AT_specification. An external
 * definition wins over a file static of the same name. */
static int var_visit(Dwfl_Module *mod, const char *module_name, bool main_module, void *arg)
{
	struct var_search *vs = arg;
	Dwarf_Addr bias;
	Dwarf *dw;
	Dwarf_Off off = 0, next;
	size_t header;

	vs->modules++;
	/* A library's .symtab/.dynsym is far cheaper to read than its DWARF. */
	if (!main_module && !module_has_symbol(mod, vs->name))
		return DWARF_CB_OK;
	dw = dwfl_module_getdwarf(mod, &bias);
	if (!dw)
		return DWARF_CB_OK;
	while (dwarf_nextcu(dw, off, &next, &header, NULL, NULL, NULL) == 0) {
		Dwarf_Die cu, child;

		if (dwarf_offdie(dw, off + header, &cu) && dwarf_child(&cu, &child) == 0) {
			do {
				Dwarf_Attribute loc, ext;
				Dwarf_Addr addr;
				bool external = false;
				const char *n;

				if (dwarf_tag(&child) != DW_TAG_variable ||
				    dwarf_hasattr(&child, DW_AT_declaration))
					continue;
				n = die_name(&child);
				if (!n || strcmp(n, vs->name) != 0)
					continue;
				if (!dwarf_attr(&child, DW_AT_location, &loc))
					continue; /* optimized out or a constant */
				switch (fixed_address(&loc, &addr)) {
				case ADDR_TLS:
					vs->tls = true;
					continue;
				case ADDR_NOT_FIXED:
					vs->not_fixed = true;
					continue;
				case ADDR_FIXED:
					break;
				}
				dwarf_formflag(dwarf_attr_integrate(&child, DW_AT_external, &ext),
					       &external);
				if (vs->found && (vs->found_external || !external))
					continue;
				vs->found = true;
				vs->found_external = external;
				vs->die = child;
				vs->address = addr + bias;
				vs->module = module_name;
				vs->in_main = main_module;
			} while (dwarf_siblingof(&child, &child) == 0);
		}
		off = next;
	}
	return vs->found ? DWARF_CB_ABORT : DWARF_CB_OK;
}

static int read_pointer(struct fw_symctx *ctx, uint64_t at, uint64_t *value, const char *expr,
			size_t expr_len, char *err, size_t errlen)
{
	struct iovec local = { value, sizeof *value };
	struct iovec remote = { (void *)(uintptr_t)at, sizeof *value };
	ssize_t n = process_vm_readv(ctx->pid, &local, 1, &remote, 1, 0);

	if (n == (ssize_t)sizeof *value)
		return 0;
	if (n >= 0)
		errno = EFAULT;
	if (errno == ESRCH)
		return fail(err, errlen, ESRCH, "no process with pid %d", (int)ctx->pid);
	return fail(err, errlen, errno == EPERM ? EPERM : EFAULT,
		    "reading the pointer '%.*s' at 0x%" PRIx64 " in pid %d: process_vm_readv: %s",
		    (int)expr_len, expr, at, (int)ctx->pid, strerror(errno));
}

/* Where the walk is: an address and the (peeled) type stored there. An
 * array indexed in some but not all of its dimensions keeps its array
 * type and counts the dimensions used in dim. */
struct place {
	uint64_t addr;
	Dwarf_Die type;
	int dim;
};

struct array_shape {
	int dims;
	uint64_t lower[MAX_ARRAY_DIMS];
	uint64_t count[MAX_ARRAY_DIMS]; /* UINT64_MAX: unknown (int a[]) */
	Dwarf_Die elem;
	Dwarf_Word elem_size;
	bool elem_sized;
};

static bool array_shape(Dwarf_Die *array, struct array_shape *s)
{
	Dwarf_Die child;

	s->dims = 0;
	if (!die_type(array, &s->elem))
		return false;
	s->elem_sized = dwarf_aggregate_size(&s->elem, &s->elem_size) == 0;
	if (dwarf_child(array, &child) != 0)
		return false;
	do {
		Dwarf_Attribute attr;
		Dwarf_Word w;

		if (dwarf_tag(&child) != DW_TAG_subrange_type)
			continue;
		if (s->dims == MAX_ARRAY_DIMS)
			return false;
		s->lower[s->dims] = 0;
		s->count[s->dims] = UINT64_MAX;
		if (dwarf_formudata(dwarf_attr_integrate(&child, DW_AT_lower_bound, &attr), &w) == 0)
			s->lower[s->dims] = w;
		if (dwarf_formudata(dwarf_attr_integrate(&child, DW_AT_count, &attr), &w) == 0)
			s->count[s->dims] = w;
		else if (dwarf_formudata(dwarf_attr_integrate(&child, DW_AT_upper_bound, &attr),
					 &w) == 0)
			s->count[s->dims] = w + 1 - s->lower[s->dims];
		s->dims++;
	} while (dwarf_siblingof(&child, &child) == 0);
	return s->dims > 0;
}

/* Bytes of one step in dimension dim: the element size times every later
 * dimension's count. */
static bool array_stride(const struct array_shape *s, int dim, uint64_t *stride)
{
	uint64_t v;

	if (!s->elem_sized)
		return false;
	v = s->elem_size;
	for (int d = dim + 1; d < s->dims; d++) {
		if (s->count[d] == UINT64_MAX)
			return false;
		v *= s->count[d];
	}
	*stride = v;
	return true;
}

static size_t ident_len(const char *s)
{
	size_t n = 0;

	if (!(s[0] == '_' || (s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z')))
		return 0;
	while (s[n] == '_' || (s[n] >= 'a' && s[n] <= 'z') || (s[n] >= 'A' && s[n] <= 'Z') ||
	       (s[n] >= '0' && s[n] <= '9'))
		n++;
	return n;
}

/* `.name` or `->name` applied to a struct/union at p. */
static int step_member(struct place *p, const char *expr, size_t prefix_len, const char *name,
		       size_t name_len, char *err, size_t errlen)
{
	char member_name[MAX_IDENT];
	char desc[128], members[256];
	Dwarf_Word off;
	Dwarf_Die member;
	int r;

	snprintf(member_name, sizeof member_name, "%.*s", (int)name_len, name);
	if (!is_aggregate(dwarf_tag(&p->type)) || p->dim > 0)
		return fail(err, errlen, EINVAL, "'%.*s' is %s, not a struct or union: no member '%s'",
			    (int)prefix_len, expr,
			    p->dim > 0 ? "an array" : type_desc(&p->type, desc, sizeof desc),
			    member_name);
	if (!complete_type(&p->type))
		return fail(err, errlen, ENOENT,
			    "'%.*s' is %s, declared but not defined in its debug info",
			    (int)prefix_len, expr, type_desc(&p->type, desc, sizeof desc));
	r = find_member(&p->type, member_name, &off, &member, 0);
	if (r < 0)
		return fail(err, errlen, ENOTSUP, "member '%s' of '%.*s' has no constant offset",
			    member_name, (int)prefix_len, expr);
	if (r == 0) {
		member_list(&p->type, members, sizeof members);
		return fail(err, errlen, ENOENT, "'%.*s' has no member '%s' (members: %s)",
			    (int)prefix_len, expr, member_name, members);
	}
	if (dwarf_hasattr(&member, DW_AT_bit_size))
		return fail(err, errlen, ENOTSUP,
			    "'%.*s' is a bit-field: watch a whole member that contains it",
			    (int)(name + name_len - expr), expr);
	if (!die_type(&member, &p->type))
		return fail(err, errlen, EINVAL, "member '%.*s' has no type in its debug info",
			    (int)(name + name_len - expr), expr);
	p->addr += off;
	p->dim = 0;
	return 0;
}

/* Replaces a pointer place by the place it points to. upto_len: the
 * expression through the step that dereferences, for messages. */
static int step_deref(struct fw_symctx *ctx, struct place *p, const char *expr,
		      size_t prefix_len, size_t upto_len, char *err, size_t errlen)
{
	char desc[128];
	uint64_t target;
	Dwarf_Word psize = 8;

	if (dwarf_tag(&p->type) != DW_TAG_pointer_type || p->dim > 0)
		return fail(err, errlen, EINVAL, "'%.*s' is %s, not a pointer", (int)prefix_len,
			    expr, p->dim > 0 ? "an array" : type_desc(&p->type, desc, sizeof desc));
	if (dwarf_aggregate_size(&p->type, &psize) == 0 && psize != sizeof target)
		return fail(err, errlen, ENOTSUP, "'%.*s' is a %u-byte pointer", (int)prefix_len,
			    expr, (unsigned)psize);
	if (read_pointer(ctx, p->addr, &target, expr, prefix_len, err, errlen) != 0)
		return -1;
	if (target == 0)
		return fail(err, errlen, EFAULT, "null pointer in '%.*s'", (int)upto_len, expr);
	if (!die_type(&p->type, &p->type))
		return fail(err, errlen, EINVAL, "'%.*s' is a void pointer: nothing to look into",
			    (int)prefix_len, expr);
	p->addr = target;
	p->dim = 0;
	return 0;
}

static int step_index(struct fw_symctx *ctx, struct place *p, const char *expr,
		      size_t prefix_len, size_t upto_len, uint64_t index, char *err,
		      size_t errlen)
{
	struct array_shape s;
	uint64_t stride;
	Dwarf_Word size;
	char desc[128];
	int tag = dwarf_tag(&p->type);

	if (tag == DW_TAG_pointer_type && p->dim == 0) {
		if (step_deref(ctx, p, expr, prefix_len, upto_len, err, errlen) != 0)
			return -1;
		if (dwarf_aggregate_size(&p->type, &size) != 0)
			return fail(err, errlen, EINVAL, "'%.*s' points to %s of unknown size",
				    (int)prefix_len, expr, type_desc(&p->type, desc, sizeof desc));
		p->addr += index * size;
		return 0;
	}
	if (tag != DW_TAG_array_type)
		return fail(err, errlen, EINVAL, "'%.*s' is %s, not an array or pointer",
			    (int)prefix_len, expr, type_desc(&p->type, desc, sizeof desc));
	if (!array_shape(&p->type, &s))
		return fail(err, errlen, EINVAL, "'%.*s': unreadable array type", (int)prefix_len,
			    expr);
	if (index < s.lower[p->dim] ||
	    (s.count[p->dim] != UINT64_MAX && index - s.lower[p->dim] >= s.count[p->dim]))
		return fail(err, errlen, ERANGE,
			    "index %" PRIu64 " out of bounds for '%.*s' (%" PRIu64 " elements)", index,
			    (int)prefix_len, expr, s.count[p->dim]);
	if (!array_stride(&s, p->dim, &stride))
		return fail(err, errlen, EINVAL, "'%.*s': elements of unknown size", (int)prefix_len,
			    expr);
	p->addr += (index - s.lower[p->dim]) * stride;
	if (++p->dim == s.dims) {
		p->type = s.elem;
		p->dim = 0;
	}
	return 0;
}

static int place_size(struct place *p, const char *expr, uint64_t *size, char *err,
		      size_t errlen)
{
	Dwarf_Word w;

	if (p->dim > 0) {
		struct array_shape s;
		uint64_t stride;

		if (array_shape(&p->type, &s) && array_stride(&s, p->dim - 1, &stride)) {
			*size = stride;
			return 0;
		}
	} else if (complete_type(&p->type) && dwarf_aggregate_size(&p->type, &w) == 0) {
		*size = w;
		return 0;
	}
	return fail(err, errlen, EINVAL, "the size of '%s' is unknown (incomplete type)", expr);
}

int fw_symctx_expr(struct fw_symctx *ctx, const char *expr, struct fw_resolved *out, char *err,
		   size_t errlen)
{
	struct var_search vs = { 0 };
	char name[MAX_IDENT];
	struct place p = { 0 };
	size_t len = ident_len(expr), pos;

	if (len == 0)
		return fail(err, errlen, EINVAL, "'%s' does not start with a variable name", expr);
	if (len >= sizeof name)
		return fail(err, errlen, EINVAL, "variable name too long in '%s'", expr);
	memcpy(name, expr, len);
	name[len] = '\0';
	vs.name = name;
	each_module_main_first(ctx, var_visit, &vs);
	if (!vs.found) {
		struct symbol_search sym = { .name = name, .best_score = -1 };

		if (vs.tls)
			return fail(err, errlen, ENOTSUP,
				    "'%s' in pid %d is thread-local: it has one address per thread",
				    name, (int)ctx->pid);
		if (vs.not_fixed)
			return fail(err, errlen, ENOTSUP,
				    "'%s' in pid %d is not at a fixed address", name, (int)ctx->pid);
		each_module_main_first(ctx, symbol_visit, &sym);
		if (sym.best_score >= 0 && sym.best_type == STT_FUNC)
			return fail(err, errlen, EINVAL, "'%s' in pid %d is a function, not a variable",
				    name, (int)ctx->pid);
		if (sym.best_score >= 0)
			return fail(err, errlen, ENOENT,
				    "no debug info for '%s' in pid %d: install its -dbg package or "
				    "build with -g (symbol in %s)",
				    name, (int)ctx->pid, sym.best_module);
		return fail(err, errlen, ENOENT, "no variable '%s' in pid %d (searched %d modules)",
			    name, (int)ctx->pid, vs.modules);
	}
	p.addr = vs.address;
	if (!vs.in_main) {
		/* A copy relocation moved it into the executable: the library's
		 * own copy is not the live one. */
		struct symbol_search s = { .name = name, .objects_only = true, .best_score = -1 };

		each_module_main_first(ctx, symbol_visit, &s);
		if (s.best_score >= 2)
			p.addr = s.best_address;
	}
	if (!die_type(&vs.die, &p.type))
		return fail(err, errlen, EINVAL, "'%s' has no type in its debug info", name);

	for (pos = len; expr[pos];) {
		size_t prefix = pos, n;

		if (expr[pos] == '.' || (expr[pos] == '-' && expr[pos + 1] == '>')) {
			bool arrow = expr[pos] == '-';
			const char *member = expr + pos + (arrow ? 2 : 1);
			char desc[128];

			n = ident_len(member);
			if (n == 0)
				return fail(err, errlen, EINVAL,
					    "syntax error in '%s' at offset %zu: expected a member name "
					    "after '%s'",
					    expr, (size_t)(member - expr), arrow ? "->" : ".");
			if (n >= MAX_IDENT)
				return fail(err, errlen, EINVAL, "member name too long in '%s'", expr);
			if (!arrow && dwarf_tag(&p.type) == DW_TAG_pointer_type && p.dim == 0)
				return fail(err, errlen, EINVAL,
					    "'%.*s' is %s: use '->' instead of '.'", (int)prefix, expr,
					    type_desc(&p.type, desc, sizeof desc));
			pos = (size_t)(member - expr) + n;
			if (arrow && step_deref(ctx, &p, expr, prefix, pos, err, errlen) != 0)
				return -1;
			if (step_member(&p, expr, prefix, member, n, err, errlen) != 0)
				return -1;
		} else if (expr[pos] == '[') {
			const char *digits = expr + pos + 1;
			char *end;
			uint64_t index;

			errno = 0;
			index = strtoull(digits, &end, 0);
			if (end == digits || *digits == '-' || *digits == '+' || errno != 0 ||
			    *end != ']')
				return fail(err, errlen, EINVAL,
					    "syntax error in '%s' at offset %zu: expected an index "
					    "and ']'",
					    expr, (size_t)(digits - expr));
			pos = (size_t)(end + 1 - expr);
			if (step_index(ctx, &p, expr, prefix, pos, index, err, errlen) != 0)
				return -1;
		} else {
			return fail(err, errlen, EINVAL,
				    "syntax error in '%s' at offset %zu: expected '.', '->' or '['",
				    expr, pos);
		}
	}
	if (place_size(&p, expr, &out->size, err, errlen) != 0)
		return -1;
	out->address = p.addr;
	snprintf(out->module, sizeof out->module, "%s", vs.module ? vs.module : "?");
	snprintf(out->symbol, sizeof out->symbol, "%s", expr);
	return 0;
}

int fw_resolve_expr(struct fw_symctx *ctx, const char *expr, uint64_t *addr, uint64_t *size,
		    char *err, size_t errlen)
{
	static struct fw_resolved res; /* 5 KiB: off the stack */

	if (fw_symctx_expr(ctx, expr, &res, err, errlen) != 0)
		return -1;
	*addr = res.address;
	*size = res.size;
	return 0;
}
