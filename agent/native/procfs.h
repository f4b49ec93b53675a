/* Small readers of /proc files, shared by both backends. */
#ifndef FW_PROCFS_H
#define FW_PROCFS_H

#include <sys/types.h>

/* Reads up to cap - 1 bytes of a file, NUL-terminated: its length, or -1. */
ssize_t fw_read_small_file(const char *path, char *buf, size_t cap);

/* A numeric field of a /proc/.../stat file (1-based, as in proc(5)); -1 if
 * the file or the field is missing. */
long long fw_stat_field(const char *path, int field);

#endif
