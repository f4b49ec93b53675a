/* The process events connector (procexit.h): PROC_EVENT_EXIT of the
 * threads of watched processes, kept per process in a small table. */
#include "procexit.h"

#include "fw.h"

#include <errno.h>
#include <linux/cn_proc.h>
#include <linux/connector.h>
#include <linux/netlink.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* More than the perf backend's groups: an entry outlives its group by the
 * time its exit takes to settle, and disarmed processes stay until
 * reused. */
#define MAX_WATCHED 256
/* How long the kernel has to answer the subscription. */
#define ACK_WAIT_MS 200

struct exit_ent {
	pid_t pid;        /* 0: empty */
	bool leader_seen; /* the exit of the thread whose id is the pid */
	bool lost;        /* messages were lost since the watch began */
	int status;       /* the last non-zero status of a thread, else 0 */
	int64_t last_ms;  /* when the last thread exit was read */
	uint64_t watched; /* order of watch calls: the oldest entry goes first */
};

static int sock = -1;
static struct exit_ent table[MAX_WATCHED];
static uint64_t watch_seq;

/* The process event a netlink message carries, or NULL if it is not one. */
static const struct proc_event *event_of(const struct nlmsghdr *h)
{
	const struct cn_msg *msg = NLMSG_DATA(h);

	if (h->nlmsg_type == NLMSG_ERROR || h->nlmsg_type == NLMSG_NOOP ||
	    h->nlmsg_len < NLMSG_LENGTH(sizeof *msg + sizeof(struct proc_event)) ||
	    msg->id.idx != CN_IDX_PROC || msg->id.val != CN_VAL_PROC)
		return NULL;
	return (const struct proc_event *)msg->data;
}

/* The kernel's answer to LISTEN: 0, or an errno (EPERM without
 * CAP_NET_ADMIN). Outside the host's initial user and pid namespaces the
 * request is ignored without an answer: ETIMEDOUT. */
static int await_ack(int fd)
{
	static uint64_t buf[4096 / sizeof(uint64_t)];
	int64_t until = fw_now_ms() + ACK_WAIT_MS;

	for (;;) {
		int64_t left = until - fw_now_ms();
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (left <= 0)
			return ETIMEDOUT;
		if (poll(&p, 1, (int)left) < 0 && errno != EINTR)
			return errno;
		n = recv(fd, buf, sizeof buf, 0);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR || errno == ENOBUFS)
				continue;
			return errno;
		}
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n);
		     h = NLMSG_NEXT(h, n)) {
			const struct proc_event *ev = event_of(h);

			if (ev && ev->what == PROC_EVENT_NONE)
				return (int)ev->event_data.ack.err;
		}
	}
}

int fw_procexit_open(void)
{
	struct sockaddr_nl addr = { .nl_family = AF_NETLINK, .nl_groups = CN_IDX_PROC };
	struct {
		struct nlmsghdr h;
		struct cn_msg msg;
		enum proc_cn_mcast_op op;
	} __attribute__((packed)) req;
	int fd, rcvbuf = 4 << 20, err = 0;

	fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_CONNECTOR);
	if (fd < 0)
		return -1;
	/* Every process of the host is in the stream: room for bursts. */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) == -1)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
	memset(&req, 0, sizeof req);
	req.h.nlmsg_len = sizeof req;
	req.h.nlmsg_type = NLMSG_DONE;
	req.msg.id.idx = CN_IDX_PROC;
	req.msg.id.val = CN_VAL_PROC;
	req.msg.len = sizeof req.op;
	/* The four-byte form: every kernel with the connector takes it (newer
	 * ones would filter by event, older ones ignore a longer request). */
	req.op = PROC_CN_MCAST_LISTEN;
	if (bind(fd, (struct sockaddr *)&addr, sizeof addr) == -1 ||
	    send(fd, &req, sizeof req, 0) == -1 || (err = await_ack(fd)) != 0) {
		err = err ? err : errno;
		close(fd);
		errno = err;
		return -1;
	}
	sock = fd;
	return fd;
}

static struct exit_ent *find(pid_t pid)
{
	for (unsigned i = 0; i < MAX_WATCHED; i++)
		if (table[i].pid == pid)
			return &table[i];
	return NULL;
}

void fw_procexit_watch(pid_t pid)
{
	struct exit_ent *e = find(pid);

	if (sock < 0)
		return;
	if (!e) {
		e = &table[0];
		for (unsigned i = 0; i < MAX_WATCHED && e->pid != 0; i++)
			if (table[i].pid == 0 || table[i].watched < e->watched)
				e = &table[i];
	}
	*e = (struct exit_ent){ .pid = pid, .watched = ++watch_seq };
}

static void on_event(const struct proc_event *ev, int64_t now)
{
	struct exit_ent *e;

	if (ev->what != PROC_EVENT_EXIT)
		return;
	e = find(ev->event_data.exit.process_tgid);
	if (!e)
		return;
	e->leader_seen = e->leader_seen || ev->event_data.exit.process_pid == e->pid;
	e->last_ms = now;
	if (ev->event_data.exit.exit_code != 0)
		e->status = (int)ev->event_data.exit.exit_code;
}

void fw_procexit_read(void)
{
	/* Aligned for the headers inside. */
	static uint64_t buf[8192 / sizeof(uint64_t)];
	int64_t now = fw_now_ms();

	if (sock < 0)
		return;
	for (;;) {
		ssize_t n = recv(sock, buf, sizeof buf, 0);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ENOBUFS) {
				/* The socket overflowed: any watched exit may be among the lost. */
				for (unsigned i = 0; i < MAX_WATCHED; i++)
					table[i].lost = table[i].pid != 0;
				continue;
			}
			return; /* EAGAIN: all read */
		}
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n);
		     h = NLMSG_NEXT(h, n)) {
			const struct proc_event *ev = event_of(h);

			if (ev)
				on_event(ev, now);
		}
	}
}

bool fw_procexit_settled(pid_t pid, int64_t gone_ms, int64_t now, int64_t quiet_ms)
{
	const struct exit_ent *e = find(pid);
	int64_t last;

	if (sock < 0 || !e || e->lost)
		return true;
	last = e->last_ms > gone_ms ? e->last_ms : gone_ms;
	return e->leader_seen && now - last >= quiet_ms;
}

int fw_procexit_take(pid_t pid, int *status)
{
	struct exit_ent *e = find(pid);
	int ret = -1;

	if (!e)
		return -1;
	if (e->leader_seen && !e->lost) {
		*status = e->status;
		ret = 0;
	}
	*e = (struct exit_ent){ 0 };
	return ret;
}
