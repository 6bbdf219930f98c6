/*
 * thread_timers: POSIX timers that notify one thread.
 *
 * - a glibc SIGEV_THREAD timer (every 10 ms): glibc's helper thread gets
 *   the timer's signal (SIGEV_THREAD_ID underneath) and runs a callback
 *   that counts into an eventfd;
 * - a SIGEV_THREAD_ID timer (every 10 ms) sending SIGUSR1 to the thread
 *   "target", whose handler records which thread it ran on.
 * At SIGTERM (draining until both advanced after the restore): both keep
 * firing, and every SIGUSR1 ran on "target".
 * Sabotage: the SIGUSR1 timer is disarmed after READY.
 */
#include "wl_common.h"
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>

static int efd;
static volatile pid_t target_tid;
static volatile sig_atomic_t usr1_count, usr1_wrong;

static void on_timer(union sigval v)
{
	(void)v;
	uint64_t one = 1;
	if (write(efd, &one, sizeof(one)) != sizeof(one))
		wl_fail("callback: write eventfd");
}

static void on_usr1(int sig)
{
	(void)sig;
	if (syscall(SYS_gettid) != target_tid)
		usr1_wrong++;
	usr1_count++;
}

static void *target(void *arg)
{
	(void)arg;
	target_tid = (pid_t)syscall(SYS_gettid);
	for (;;)
		pause();
	return NULL;
}

static uint64_t drain_eventfd(void)
{
	uint64_t v = 0;
	if (read(efd, &v, sizeof(v)) != sizeof(v))
		return 0;
	return v;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	/* only "target" takes SIGUSR1 */
	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_t t;
	if (efd < 0 || pthread_create(&t, NULL, target, NULL) != 0)
		wl_die("setup");
	pthread_sigmask(SIG_BLOCK, &usr1, NULL);
	while (target_tid == 0)
		usleep(1000);

	struct itimerspec every10ms = { { 0, 10000000 }, { 0, 10000000 } };
	struct sigevent ev_thread = { .sigev_notify = SIGEV_THREAD, .sigev_notify_function = on_timer };
	timer_t t1, t2;
	if (timer_create(CLOCK_MONOTONIC, &ev_thread, &t1) != 0 || timer_settime(t1, 0, &every10ms, NULL) != 0)
		wl_die("SIGEV_THREAD timer");
	struct sigevent ev_tid = { .sigev_notify = SIGEV_THREAD_ID, .sigev_signo = SIGUSR1 };
	ev_tid._sigev_un._tid = target_tid;
	if (timer_create(CLOCK_MONOTONIC, &ev_tid, &t2) != 0 || timer_settime(t2, 0, &every10ms, NULL) != 0)
		wl_die("SIGEV_THREAD_ID timer");
	uint64_t callbacks = 0;
	while (callbacks < 3 || usr1_count < 3) {
		callbacks += drain_eventfd();
		usleep(5000);
	}
	wl_ready();
	if (wl_sabotage) {
		struct itimerspec off = { { 0, 0 }, { 0, 0 } };
		timer_settime(t2, 0, &off, NULL);
	}
	while (!wl_term)
		usleep(10000);
	/* fired again after the restore (and after SIGTERM) */
	uint64_t cb_at_term = callbacks + drain_eventfd(), cb = cb_at_term;
	int usr1_at_term = usr1_count;
	int64_t deadline = wl_now_ns() + 5000000000LL;
	while ((cb < cb_at_term + 5 || usr1_count < usr1_at_term + 5) && wl_now_ns() < deadline) {
		cb += drain_eventfd();
		usleep(5000);
	}
	WL_CHECK(cb >= cb_at_term + 5, "SIGEV_THREAD timer: only %llu callbacks after SIGTERM",
		 (unsigned long long)(cb - cb_at_term));
	WL_CHECK(usr1_count >= usr1_at_term + 5, "SIGEV_THREAD_ID timer: only %d signals after SIGTERM",
		 usr1_count - usr1_at_term);
	WL_CHECK(usr1_wrong == 0, "%d SIGUSR1 ran on another thread", (int)usr1_wrong);
	wl_finish();
}
