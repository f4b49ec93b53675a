/* Exit statuses of processes the helper watches without being their
 * tracer (the perf backend), from the kernel's process events connector
 * (netlink, root). /proc/PID/stat has a process's wait status only while
 * it is a zombie, and its parent usually reaps it before the helper
 * looks; the connector tells every thread's exit as it happens. */
#ifndef FW_PROCEXIT_H
#define FW_PROCEXIT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* Opens and subscribes the connector socket: its fd, or -1 with errno
 * (EPROTONOSUPPORT: a kernel without CONFIG_PROC_EVENTS; EPERM: no
 * CAP_NET_ADMIN; ETIMEDOUT: not in the host's initial user and pid
 * namespaces, where the kernel ignores the request). Exit statuses then
 * come from /proc only. */
int fw_procexit_open(void);

/* Starts recording the exits of pid's threads (again, for a reused pid). */
void fw_procexit_watch(pid_t pid);

/* Reads every message waiting on the socket (non-blocking). */
void fw_procexit_read(void);

/* Whether what is known of pid's exit will not change any more, once
 * its pidfd said it is gone (at gone_ms): the exit of its leader (the
 * thread whose id is the pid) was seen, and nothing came for pid for
 * quiet_ms since then and since gone_ms (the last thread's event follows
 * the pidfd's wake-up by microseconds; threads that ended earlier told
 * theirs long before). True too when the socket is not open, pid is not
 * watched, or messages were lost. */
bool fw_procexit_settled(pid_t pid, int64_t gone_ms, int64_t now_ms, int64_t quiet_ms);

/* pid's wait status, and forgets pid: a signal or exit code any of its
 * threads died with (a group exit gives every thread the process's
 * status; a thread that returns alone exits with 0), else 0. -1 when the
 * exit of its leader was not seen, or messages were lost since it was
 * watched. */
int fw_procexit_take(pid_t pid, int *status);

#endif
