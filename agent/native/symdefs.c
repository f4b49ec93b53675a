/* A hit's stack, and the per-process table of ips already defined to the agent. */
#include "symdefs.h"

#include "fw.h"
#include "wire.h"

#include <string.h>

void fw_known_ips_reset(struct fw_known_ips *k)
{
	if (k->n > 0)
		memset(k->ips, 0, sizeof k->ips);
	k->n = 0;
}

void fw_define_symbols(struct fw_known_ips *k, struct fw_symctx *sym, pid_t pid,
		       const uint64_t *ips, int n)
{
	static struct fw_symbol syms[FW_MAX_STACK_DEPTH];
	unsigned nsyms = 0;

	if (k->n + (unsigned)n > FW_KNOWN_IPS_LIMIT)
		fw_known_ips_reset(k); /* full: define again what comes next */
	for (int i = 0; i < n && nsyms < FW_MAX_STACK_DEPTH; i++) {
		uint64_t ip = ips[i];
		unsigned h = (unsigned)((ip * UINT64_C(0x9e3779b97f4a7c15)) >> 52) & (FW_KNOWN_IPS - 1);
		const char *function = NULL, *module = NULL;
		uint64_t offset = 0;

		if (ip == 0)
			continue;
		while (k->ips[h] != 0 && k->ips[h] != ip)
			h = (h + 1) & (FW_KNOWN_IPS - 1);
		if (k->ips[h] == ip)
			continue;
		k->ips[h] = ip;
		k->n++;
		if (fw_symbolize(sym, ip - 1, &function, &offset, &module) == 0) {
			offset++;
		} else {
			function = NULL;
			offset = 0;
		}
		syms[nsyms++] = (struct fw_symbol){
			.ip = ip,
			.offset = offset,
			.function = function ? function : "",
			.module = module ? module : "",
		};
	}
	if (nsyms > 0)
		out_symbols(pid, syms, nsyms);
}

int fw_hit_stack(struct fw_symctx *sym, struct fw_known_ips *k, pid_t pid, pid_t tid,
		 const struct user_regs_struct *regs, const uint8_t *stack, size_t stack_len,
		 uint64_t ip, uint64_t *ips, int depth)
{
	int n = -1;

	if (sym && regs)
		n = fw_unwind(sym, tid, regs, stack, stack_len, ips, depth);
	if (n < 1) {
		ips[0] = ip;
		n = 1;
	}
	if (sym)
		fw_define_symbols(k, sym, pid, ips, n);
	return n;
}
