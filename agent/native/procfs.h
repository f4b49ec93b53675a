/* Readers of /proc, shared by the backends and the dispatcher: small files,
 * stat and status fields, a process's threads, comm, start time, exit
 * status, the mapping that holds an address, and the perf sysctl. Nothing
 * here writes. */
#ifndef FW_PROCFS_H
#define FW_PROCFS_H

#include <dirent.h>
#include <stdint.h>
#include <sys/types.h>

/* Reads up to cap - 1 bytes of a file, NUL-terminated: its length, or -1. */
ssize_t fw_read_small_file(const char *path, char *buf, size_t cap);

/* A numeric field of a /proc/.../stat file (1-based, as in proc(5)); -1 if
 * the file or the field is missing. */
long long fw_stat_field(const char *path, int field);

/* A numeric field of /proc/PID/status ("Tgid:", "TracerPid:"); -1 if the
 * file cannot be read (errno from the read: ENOENT when the process is
 * gone) or has no such field (errno ENODATA). */
long fw_status_field(pid_t pid, const char *field);

/* /proc/PID/comm without its newline; "?" if it cannot be read. */
void fw_read_comm(pid_t pid, char *buf, size_t cap);

/* Scheduler state letter of one thread ('R', 'S', 't', 'Z', ...); 0 if gone. */
char fw_thread_state(pid_t pid, pid_t tid);

/* CPU a thread last ran on (stat field 39); -1 if gone. */
int fw_thread_last_cpu(pid_t pid, pid_t tid);

/* Start time of a process (stat field 22, clock ticks since boot): with the
 * pid, it tells a reused pid apart. 0 if gone. */
uint64_t fw_proc_start_time(pid_t pid);

/* The wait status of the process that started at start_time, read from
 * stat field 52 while it is a zombie. 0, or -1 when it is not there any
 * more (reaped, or the pid taken by another process). */
int fw_proc_exit_status(pid_t pid, uint64_t start_time, int *status);

/* The mapping of pid that contains address, from /proc/PID/maps, read in
 * pieces into a static buffer (no allocation). 0 if found, else -1. */
int fw_find_mapping(pid_t pid, uint64_t address, uint64_t *lo, uint64_t *hi);

/* kernel.perf_event_paranoid (/proc/sys/kernel): 0, or -1 if unreadable. */
int fw_perf_paranoid(int *level);

/* The threads of a process, one by one from /proc/PID/task. */
struct fw_tasks {
	DIR *dir;
};

/* 0, or -1 with errno set when the directory cannot be opened (the process
 * is gone). */
int fw_tasks_open(struct fw_tasks *it, pid_t pid);
/* The next thread id; 0 when every one was given. */
pid_t fw_tasks_next(struct fw_tasks *it);
void fw_tasks_close(struct fw_tasks *it);

#endif
