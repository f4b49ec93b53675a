/* Small readers of /proc files. */
#include "procfs.h"

#include <fcntl.h>
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
