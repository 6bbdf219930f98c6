/*
 * attrs: process and thread attributes, checked from inside after restore.
 *
 * - main thread: nice 5; thread "batch": SCHED_BATCH, nice 3, with
 *   SCHED_FLAG_RESET_ON_FORK; thread "fifo": SCHED_FIFO priority 7 (it
 *   sleeps, so it starves nobody); each thread's robust futex list (glibc
 *   registers one per thread) stays where it was;
 * - oom_score_adj 123; login uid 4321 (when the kernel lets root set it);
 *   membarrier PRIVATE_EXPEDITED registered (the command works);
 * - each thread runs on CPU 0 only;
 * - a child "tstp" stopped by SIGTSTP (not SIGSTOP): the parent sees it
 *   stopped by SIGTSTP (waitid WSTOPPED|WNOWAIT) before and after.
 * Sabotage: after READY the main thread's nice becomes 6.
 */
#include "wl_common.h"
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>

struct sched_attr_v1 {
	uint32_t size, policy;
	uint64_t flags;
	int32_t nice;
	uint32_t priority;
	uint64_t runtime, deadline, period;
	uint32_t util_min, util_max;
};

struct want {
	const char *name;
	uint32_t policy;
	uint64_t flags;
	int32_t nice;
	uint32_t priority;
};

static struct want wants[] = {
	{ "main", SCHED_OTHER, 0, 5, 0 },
	{ "batch", SCHED_BATCH, 1 /* SCHED_FLAG_RESET_ON_FORK */, 3, 0 },
	{ "fifo", SCHED_FIFO, 0, 0, 7 },
};
static pthread_barrier_t ready;
static volatile int checks_done;

/* The signal that stopped `child` (waitid WNOWAIT), 0 if it is not stopped. */
static int stop_signal(pid_t child)
{
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, (id_t)child, &si, WSTOPPED | WNOHANG | WNOWAIT) != 0 || si.si_pid != child ||
	    si.si_code != CLD_STOPPED)
		return 0;
	return si.si_status;
}

static int set_sched(const struct want *w)
{
	struct sched_attr_v1 a = { .size = sizeof(a), .policy = w->policy, .flags = w->flags,
				   .nice = w->nice, .priority = w->priority };
	return (int)syscall(SYS_sched_setattr, 0, &a, 0);
}

static void pin_cpu0(void)
{
	cpu_set_t s;
	CPU_ZERO(&s);
	CPU_SET(0, &s);
	sched_setaffinity(0, sizeof(s), &s);
}

static void check_thread(const struct want *w, void *robust)
{
	struct sched_attr_v1 a = { 0 };
	if (syscall(SYS_sched_getattr, 0, &a, sizeof(a), 0) != 0) {
		wl_fail("%s: sched_getattr errno %d", w->name, errno);
		return;
	}
	WL_CHECK(a.policy == w->policy && a.nice == w->nice && a.priority == w->priority &&
			 (a.flags & 1) == w->flags,
		 "%s: policy %u nice %d priority %u flags %#llx, want %u %d %u %#llx", w->name, a.policy, a.nice,
		 a.priority, (unsigned long long)a.flags, w->policy, w->nice, w->priority,
		 (unsigned long long)w->flags);
	void *head = NULL;
	size_t len = 0;
	syscall(SYS_get_robust_list, 0, &head, &len);
	WL_CHECK(head == robust && len > 0, "%s: robust list %p (len %zu), want %p", w->name, head, len, robust);
	cpu_set_t s;
	CPU_ZERO(&s);
	WL_CHECK(sched_getaffinity(0, sizeof(s), &s) == 0 && CPU_COUNT(&s) == 1 && CPU_ISSET(0, &s),
		 "%s: not pinned to CPU 0 alone", w->name);
}

static void *thread(void *arg)
{
	const struct want *w = arg;
	pin_cpu0();
	if (set_sched(w) != 0)
		wl_die("sched_setattr %s", w->name);
	void *robust = NULL;
	size_t len;
	syscall(SYS_get_robust_list, 0, &robust, &len);
	pthread_barrier_wait(&ready);
	while (!wl_term)
		usleep(20000);
	check_thread(w, robust);
	__atomic_add_fetch(&checks_done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	pin_cpu0();
	if (set_sched(&wants[0]) != 0)
		wl_die("sched_setattr main");
	void *robust = NULL;
	size_t len;
	syscall(SYS_get_robust_list, 0, &robust, &len);
	pthread_barrier_init(&ready, NULL, 3);
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		if (pthread_create(&t[i], NULL, thread, &wants[i + 1]) != 0)
			wl_die("pthread_create");
	pthread_barrier_wait(&ready);

	int fd = open("/proc/self/oom_score_adj", O_WRONLY);
	if (fd < 0 || write(fd, "123", 3) != 3)
		wl_die("oom_score_adj");
	close(fd);
	int have_loginuid = 0;
	fd = open("/proc/self/loginuid", O_WRONLY);
	if (fd >= 0 && write(fd, "4321", 4) == 4)
		have_loginuid = 1;
	else
		wl_printf("INFO login uid cannot be set here (errno %d): not checked\n", errno);
	if (fd >= 0)
		close(fd);
	if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) != 0)
		wl_die("membarrier register");

	pid_t tstp = fork();
	if (tstp == 0) {
		/* A group of its own, whose parent is in another group of the
		 * session: not orphaned, so the kernel does not discard SIGTSTP
		 * (CI runs the tests in an orphaned group). */
		setpgid(0, 0);
		kill(getpid(), SIGTSTP);
		for (;;)
			pause();
	}
	wl_record_pid("tstp", tstp, getpid());
	for (int i = 0; i < 500 && stop_signal(tstp) == 0; i++)
		usleep(10000);
	if (stop_signal(tstp) != SIGTSTP)
		wl_die("the tstp child did not stop with SIGTSTP (%d)", stop_signal(tstp));

	wl_ready();
	if (wl_sabotage)
		setpriority(PRIO_PROCESS, 0, 6);
	while (!wl_term)
		usleep(20000);

	check_thread(&wants[0], robust);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	WL_CHECK(checks_done == 2, "only %d threads checked", checks_done);
	char buf[32] = "";
	wl_read_file("/proc/self/oom_score_adj", buf, sizeof(buf) - 1);
	WL_CHECK(atoi(buf) == 123, "oom_score_adj is %s", buf);
	if (have_loginuid) {
		memset(buf, 0, sizeof(buf));
		wl_read_file("/proc/self/loginuid", buf, sizeof(buf) - 1);
		WL_CHECK(atoi(buf) == 4321, "loginuid is %s", buf);
	}
	WL_CHECK(syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0,
		 "membarrier PRIVATE_EXPEDITED: errno %d (registration lost)", errno);
	WL_CHECK(stop_signal(tstp) == SIGTSTP, "the tstp child is stopped by %d, not SIGTSTP", stop_signal(tstp));
	kill(tstp, SIGKILL);
	waitpid(tstp, NULL, 0);
	wl_finish();
}
