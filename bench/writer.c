/* Benchmark target: T threads store to one 8-byte global, fw_counter, in a
 * tight loop, W times each or for S seconds, and report their own rate.
 *   writer [--threads T] [--writes W] [--seconds S]
 * Prints "ready <pid> <&fw_counter>", waits for a "go" line on stdin, writes,
 * then prints "done threads=T writes=N ns=E writes_per_s=R" (E: from "go" to
 * the last thread joined). With T = 1 the main thread writes (no clone). */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 64
/* Writes between clock reads in --seconds mode: ~25 µs unwatched, so the
 * clock costs well under 1 % of the loop. */
#define CLOCK_EVERY 16384

/* Own cache line: nothing else the program touches shares it. */
_Alignas(64) volatile uint64_t fw_counter;

static uint64_t writes_per_thread; /* 0: no count limit */
static uint64_t deadline_ns;       /* 0: no time limit */
static uint64_t written[MAX_THREADS];

static uint64_t now_ns(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
		perror("writer: clock_gettime");
		exit(1);
	}
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Thread k stores (k+1) << 32 | i, so consecutive stores always change the value. */
static void *worker(void *arg)
{
	uint64_t k = (uint64_t)(uintptr_t)arg;
	uint64_t base = (k + 1) << 32;
	uint64_t i = 0;

	for (;;) {
		uint64_t stop = writes_per_thread != 0 ? writes_per_thread : UINT64_MAX;
		uint64_t burst = deadline_ns != 0 && stop - i > CLOCK_EVERY ? i + CLOCK_EVERY : stop;

		while (i < burst) {
			i++;
			fw_counter = base | (i & 0xffffffffu);
		}
		if (i >= stop)
			break;
		if (deadline_ns != 0 && now_ns() >= deadline_ns)
			break;
	}
	written[k] = i;
	return NULL;
}

static int parse_u64(const char *text, uint64_t *out)
{
	char *end;

	errno = 0;
	*out = strtoull(text, &end, 10);
	return errno == 0 && end != text && *end == '\0' ? 0 : -1;
}

int main(int argc, char **argv)
{
	pthread_t tids[MAX_THREADS];
	uint64_t nthreads = 1, total = 0, start, elapsed;
	double seconds = 0;
	char line[64];

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
			if (parse_u64(argv[++i], &nthreads) != 0 || nthreads < 1 || nthreads > MAX_THREADS)
				goto usage;
		} else if (strcmp(argv[i], "--writes") == 0 && i + 1 < argc) {
			if (parse_u64(argv[++i], &writes_per_thread) != 0)
				goto usage;
		} else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
			seconds = strtod(argv[++i], NULL);
			if (!(seconds > 0))
				goto usage;
		} else {
			goto usage;
		}
	}
	if (writes_per_thread == 0 && seconds == 0)
		goto usage;
	printf("ready %d %p\n", (int)getpid(), (void *)&fw_counter);
	fflush(stdout);
	while (fgets(line, sizeof line, stdin)) {
		if (strncmp(line, "go", 2) == 0)
			break;
	}
	if (feof(stdin) || ferror(stdin)) {
		fprintf(stderr, "writer: stdin closed before \"go\"\n");
		return 1;
	}
	start = now_ns();
	if (seconds > 0)
		deadline_ns = start + (uint64_t)(seconds * 1e9);
	if (nthreads == 1) {
		worker(NULL);
	} else {
		for (uint64_t k = 0; k < nthreads; k++) {
			int err = pthread_create(&tids[k], NULL, worker, (void *)(uintptr_t)k);

			if (err != 0) {
				fprintf(stderr, "writer: pthread_create: %s\n", strerror(err));
				return 1;
			}
		}
		for (uint64_t k = 0; k < nthreads; k++)
			pthread_join(tids[k], NULL);
	}
	elapsed = now_ns() - start;
	for (uint64_t k = 0; k < nthreads; k++)
		total += written[k];
	printf("done threads=%llu writes=%llu ns=%llu writes_per_s=%.0f\n", (unsigned long long)nthreads,
	       (unsigned long long)total, (unsigned long long)elapsed, (double)total * 1e9 / (double)elapsed);
	fflush(stdout);
	return 0;
usage:
	fprintf(stderr, "usage: writer [--threads 1-%d] [--writes W] [--seconds S] (W or S required)\n", MAX_THREADS);
	return 2;
}
