/* The value program of the perf backend, built from a handful of
 * instructions (no compiler at run time) and loaded with libbpf:
 *
 *   word = 0; bpf_probe_read_user(&word, 8, ctx->addr & ~7);
 *   bpf_perf_event_output(ctx, &outputs, BPF_F_CURRENT_CPU, &word, 8);
 *   return 1;   (the breakpoint's own sample is written too)
 *
 * ctx->addr of a breakpoint event is its address. The aligned word never
 * crosses a page; the helper shifts and masks it to the chunk. */
#include "perfbpf.h"

#include <bpf/bpf.h>
#include <errno.h>
#include <linux/bpf.h>
#include <linux/bpf_perf_event.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define INSN(c, d, s, o, i) ((struct bpf_insn){ .code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i) })
#define MOV64_REG(d, s) INSN(BPF_ALU64 | BPF_MOV | BPF_X, d, s, 0, 0)
#define MOV64_IMM(d, i) INSN(BPF_ALU64 | BPF_MOV | BPF_K, d, 0, 0, i)
#define MOV32_IMM(d, i) INSN(BPF_ALU | BPF_MOV | BPF_K, d, 0, 0, i)
#define ADD64_IMM(d, i) INSN(BPF_ALU64 | BPF_ADD | BPF_K, d, 0, 0, i)
#define AND64_IMM(d, i) INSN(BPF_ALU64 | BPF_AND | BPF_K, d, 0, 0, i)
#define LDX_DW(d, s, o) INSN(BPF_LDX | BPF_MEM | BPF_DW, d, s, o, 0)
#define ST_DW(d, o, i) INSN(BPF_ST | BPF_MEM | BPF_DW, d, 0, o, i)
#define CALL(f) INSN(BPF_JMP | BPF_CALL, 0, 0, 0, f)
#define EXIT() INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
/* Two instructions: a map by fd, resolved by the kernel at load. */
#define LD_MAP_FD(d, fd) INSN(BPF_LD | BPF_DW | BPF_IMM, d, BPF_PSEUDO_MAP_FD, 0, fd), INSN(0, 0, 0, 0, 0)

enum { R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 };

static char verifier_log[4096];

static void first_line(char *dst, size_t cap, const char *src)
{
	size_t n = strcspn(src, "\n");

	if (n >= cap)
		n = cap - 1;
	memcpy(dst, src, n);
	dst[n] = 0;
}

int fw_bpf_map_create(unsigned entries, char *err, size_t cap)
{
	int fd = bpf_map_create(BPF_MAP_TYPE_PERF_EVENT_ARRAY, "fw_values", sizeof(uint32_t),
				sizeof(uint32_t), entries, NULL);

	if (fd < 0) {
		int e = errno;

		snprintf(err, cap, "creating the BPF output map: %s", strerror(e));
		errno = e;
	}
	return fd;
}

int fw_bpf_prog_load(int map_fd, char *err, size_t cap)
{
	const struct bpf_insn prog[] = {
		MOV64_REG(R6, R1),
		ST_DW(R10, -8, 0),
		LDX_DW(R3, R6, (int16_t)offsetof(struct bpf_perf_event_data, addr)),
		AND64_IMM(R3, -8),
		MOV64_REG(R1, R10),
		ADD64_IMM(R1, -8),
		MOV64_IMM(R2, FW_BPF_VALUE_BYTES),
		CALL(BPF_FUNC_probe_read_user),
		MOV64_REG(R1, R6),
		LD_MAP_FD(R2, map_fd),
		MOV32_IMM(R3, -1), /* BPF_F_CURRENT_CPU: 0xffffffff */
		MOV64_REG(R4, R10),
		ADD64_IMM(R4, -8),
		MOV64_IMM(R5, FW_BPF_VALUE_BYTES),
		CALL(BPF_FUNC_perf_event_output),
		MOV64_IMM(R0, 1),
		EXIT(),
	};
	LIBBPF_OPTS(bpf_prog_load_opts, opts, .log_buf = verifier_log, .log_size = sizeof verifier_log,
		    .log_level = 0);
	int fd;

	verifier_log[0] = 0;
	/* The helpers it calls are GPL-only; the program is this file's few
	 * instructions. */
	fd = bpf_prog_load(BPF_PROG_TYPE_PERF_EVENT, "fw_value", "GPL", prog,
			   sizeof prog / sizeof prog[0], &opts);
	if (fd < 0) {
		int e = errno;
		char line[256];

		first_line(line, sizeof line, verifier_log);
		snprintf(err, cap, "loading the BPF value program: %s%s%s", strerror(e),
			 line[0] ? ": " : "", line);
		errno = e;
	}
	return fd;
}

int fw_bpf_map_set(int map_fd, unsigned cpu, int event_fd)
{
	uint32_t key = cpu, value = (uint32_t)event_fd;

	return bpf_map_update_elem(map_fd, &key, &value, BPF_ANY);
}

bool fw_bpf_probe(char *note, size_t cap)
{
	char err[256] = "";
	int map = fw_bpf_map_create(1, err, sizeof err), prog = -1;

	if (map >= 0)
		prog = fw_bpf_prog_load(map, err, sizeof err);
	if (prog >= 0)
		close(prog);
	if (map >= 0)
		close(map);
	if (prog < 0)
		snprintf(note, cap, "%s", err);
	return prog >= 0;
}
