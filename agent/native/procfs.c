/* Readers of /proc (procfs.h). */
#include "procfs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

ssize_t fw_read_small_file(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, cap - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	return n;
}

long long fw_stat_field(const char *path, int field)
{
	char buf[1024];
	char *p;
	int at = 2; /* p points at the end of field 2 (comm, which may hold spaces) */

	if (fw_read_small_file(path, buf, sizeof buf) < 0)
		return -1;
	p = strrchr(buf, ')');
	if (!p)
		return -1;
	for (p++; *p && at < field; p++)
		if (*p == ' ')
			at++;
	if (at != field || *p == '\0')
		return -1;
	return strtoll(p, NULL, 10);
}

long fw_status_field(pid_t pid, const char *field)
{
	char path[64], buf[4096];
	size_t flen = strlen(field);

	snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
	if (fw_read_small_file(path, buf, sizeof buf) < 0)
		return -1;
	for (char *line = buf; line && *line; line = strchr(line, '\n')) {
		if (*line == '\n')
			line++;
		if (strncmp(line, field, flen) == 0)
			return strtol(line + flen, NULL, 10);
	}
	errno = ENODATA;
	return -1;
}

void fw_read_comm(pid_t pid, char *buf, size_t cap)
{
	char path[64];
	ssize_t n;

	snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
	n = fw_read_small_file(path, buf, cap);
	if (n <= 0) {
		snprintf(buf, cap, "?");
		return;
	}
	if (buf[n - 1] == '\n')
		buf[n - 1] = '\0';
}

char fw_thread_state(pid_t pid, pid_t tid)
{
	char path[96], buf[1024];
	char *close_paren;

	snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)tid);
	if (fw_read_small_file(path, buf, sizeof buf) < 0)
		return 0;
	close_paren = strrchr(buf, ')');
	if (!close_paren || close_paren[1] == '\0')
		return 0;
	return close_paren[2];
}

int fw_thread_last_cpu(pid_t pid, pid_t tid)
{
	char path[96];

	snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)tid);
	return (int)fw_stat_field(path, 39);
}

uint64_t fw_proc_start_time(pid_t pid)
{
	char path[64];
	long long v;

	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	v = fw_stat_field(path, 22);
	return v > 0 ? (uint64_t)v : 0;
}

int fw_proc_exit_status(pid_t pid, uint64_t start_time, int *status)
{
	char path[64];
	long long start, code;

	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	start = fw_stat_field(path, 22);
	code = fw_stat_field(path, 52); /* exit code: a wait status */
	if (start < 0 || code < 0 || (uint64_t)start != start_time)
		return -1;
	*status = (int)code;
	return 0;
}

int fw_find_mapping(pid_t pid, uint64_t address, uint64_t *lo, uint64_t *hi)
{
	static char buf[16384];
	char path[64];
	size_t have = 0;
	int fd, found = -1;

	snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	for (;;) {
		ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);
		char *line = buf, *nl;

		if (n <= 0)
			break;
		have += (size_t)n;
		buf[have] = '\0';
		while ((nl = strchr(line, '\n')) != NULL) {
			char *end;
			unsigned long long a = strtoull(line, &end, 16), b;

			b = *end == '-' ? strtoull(end + 1, NULL, 16) : 0;
			if (address >= a && address < b) {
				*lo = a;
				*hi = b;
				found = 0;
				goto out;
			}
			line = nl + 1;
		}
		have -= (size_t)(line - buf);
		memmove(buf, line, have);
		if (have >= sizeof buf - 1)
			break; /* a line longer than the buffer: give up */
	}
out:
	close(fd);
	return found;
}

int fw_perf_paranoid(int *level)
{
	char buf[32];

	if (fw_read_small_file("/proc/sys/kernel/perf_event_paranoid", buf, sizeof buf) < 0 ||
	    sscanf(buf, "%d", level) != 1)
		return -1;
	return 0;
}

int fw_tasks_open(struct fw_tasks *it, pid_t pid)
{
	char path[64];

	snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
	it->dir = opendir(path);
	return it->dir ? 0 : -1;
}

pid_t fw_tasks_next(struct fw_tasks *it)
{
	struct dirent *de;

	while ((de = readdir(it->dir)) != NULL) {
		long tid = strtol(de->d_name, NULL, 10);

		if (tid > 0)
			return (pid_t)tid;
	}
	return 0;
}

void fw_tasks_close(struct fw_tasks *it)
{
	closedir(it->dir);
	it->dir = NULL;
}
