/* The dispatcher (backend.h). A process is the ptrace side's tracee or not:
 * when the ptrace side sees it exit or exec, that is the process's end for
 * every group, perf's too; when only perf sees it, the report waits for the
 * process's last group of either backend. */
#include "backend.h"

#include "perf.h"
#include "procexit.h"
#include "procfs.h"
#include "tracer.h"

#include <errno.h>
#include <sys/wait.h>

/* What every ARM passes before a backend looks at it. */
static int check_request(const struct fw_arm_request *r, struct fw_error *e)
{
	if (fw_policy_check(r->pid, e) == -1 || fw_check_chunks(r->pid, r->chunks, r->count, e) == -1 ||
	    fw_check_options(r->pid, &r->opt, e) == -1)
		return -1;
	return 0;
}

static int refuse_duplicate(const struct fw_arm_request *r, struct fw_error *e)
{
	fw_error_set(e, EEXIST, "group %llu is already armed on pid %d", (unsigned long long)r->group,
		     (int)r->pid);
	return -1;
}

/* The order of refusals is each backend's own: a ptrace ARM of a group
 * perf holds is refused before anything else, and any other first lets go
 * of what perf keeps parked on the process (it holds the registers this
 * arm is about to write). */
static int arm_ptrace(const struct fw_arm_request *r, struct fw_arm_result *result,
		      struct fw_error *e)
{
	if (perf_has_group(r->pid, r->group))
		return refuse_duplicate(r, e);
	perf_release_parked(r->pid);
	if (check_request(r, e) == -1)
		return -1;
	if (tracer_has_group(r->pid, r->group))
		return refuse_duplicate(r, e);
	return tracer_arm(r->pid, r->group, &r->opt, r->chunks, r->count, result, e);
}

static int arm_perf(const struct fw_arm_request *r, struct fw_arm_result *result,
		    struct fw_error *e)
{
	if (check_request(r, e) == -1 ||
	    perf_check_arm(r->pid, &r->opt, r->count_only, r->interval_ms, e) == -1)
		return -1;
	if (perf_has_group(r->pid, r->group) || tracer_has_group(r->pid, r->group))
		return refuse_duplicate(r, e);
	return perf_arm(r->pid, r->group, &r->opt, r->chunks, r->count, r->count_only,
			r->interval_ms, result, e);
}

int backend_arm(const struct fw_arm_request *r, struct fw_arm_result *result, struct fw_error *e)
{
	return r->backend == FW_BACKEND_PERF ? arm_perf(r, result, e) : arm_ptrace(r, result, e);
}

int backend_disarm(pid_t pid, uint64_t group, struct fw_counts *counts, uint8_t *reserved_mask,
		   struct fw_error *e)
{
	*reserved_mask = 0;
	if (perf_has_group(pid, group))
		return perf_disarm(pid, group, counts, e);
	return tracer_disarm(pid, group, counts, reserved_mask, e);
}

void backend_close_all(void)
{
	perf_close_all();
	tracer_detach_all();
}

/* The process ended for the backend from, whose groups of it are done: the
 * ptrace side's view ends perf's groups too. Whether the report is still
 * another's to send: some group of pid is left (the ptrace side's own
 * process record, about to go, does not count). */
static bool target_gone(enum fw_backend from, pid_t pid, enum fw_done_reason reason)
{
	if (from == FW_BACKEND_PTRACE)
		perf_target_gone(pid, reason);
	return perf_has_pid(pid) || (from != FW_BACKEND_PTRACE && tracer_has_pid(pid));
}

void backend_target_exited(enum fw_backend from, pid_t pid, const int *wait_status,
			   uint64_t start_time)
{
	int status;

	if (target_gone(from, pid, FW_DONE_EXITED))
		return;
	if (wait_status)
		status = *wait_status;
	else if (fw_procexit_take(pid, &status) == -1 &&
		 fw_proc_exit_status(pid, start_time, &status) == -1) {
		out_target_exited(pid, FW_EXIT_GONE, 0); /* reaped by its parent first */
		return;
	}
	if (WIFSIGNALED(status))
		out_target_exited(pid, FW_EXIT_KILLED, WTERMSIG(status));
	else if (WIFEXITED(status))
		out_target_exited(pid, FW_EXIT_EXITED, WEXITSTATUS(status));
	else
		out_target_exited(pid, FW_EXIT_GONE, 0);
}

void backend_target_exec(enum fw_backend from, pid_t pid)
{
	if (!target_gone(from, pid, FW_DONE_EXEC))
		out_target_exec(pid);
}
