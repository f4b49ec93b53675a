/* Exact values for the perf backend: a small BPF program attached to each
 * breakpoint event reads the watched word in the kernel at the trap and
 * writes it, through a BPF output event, into the same ring buffer just
 * before the breakpoint's own sample (libbpf from the distribution). */
#ifndef FW_PERFBPF_H
#define FW_PERFBPF_H

#include <stdbool.h>
#include <stddef.h>

/* Whether this host loads the program (the verifier, the helpers it calls,
 * privileges). On failure a sentence in note. */
bool fw_bpf_probe(char *note, size_t cap);

/* A map from CPU number to output event (max_cpu + 1 entries) and the
 * program writing into it. -1 (errno set, a sentence in err) on failure. */
int fw_bpf_map_create(unsigned entries, char *err, size_t cap);
int fw_bpf_prog_load(int map_fd, char *err, size_t cap);
int fw_bpf_map_set(int map_fd, unsigned cpu, int event_fd);

/* What the program writes: the aligned 8-byte word holding the address. */
#define FW_BPF_VALUE_BYTES 8u

#endif
