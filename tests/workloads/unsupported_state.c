/*
 * unsupported_state: counters plus one piece of state chosen by
 * $CRT_UNSUPPORTED, for the refusal tests:
 *   lock    — holds an fcntl write lock on a file in its workdir
 *   flock   — holds a flock
 *   timer   — has a POSIX timer (timer_create, SIGEV_NONE), armed
 *   timer_sig — a periodic 10 ms POSIX timer delivering SIGUSR1 to a
 *             counting handler (restorable: ticks must continue)
 *   seccomp — runs under an allow-everything seccomp filter
 *   nnp     — sets no_new_privs (restorable: checked at SIGTERM)
 *   removed_cwd — its working directory was removed (rmdir)
 *   lease_breaking — holds a read lease that a child's open for writing
 *             is breaking (the child waits in open until SIGTERM)

 * At SIGTERM it checks the state is still in place (lock held, timer
 * armed, filter on, no_new_privs set).
 */
#include "wl_common.h"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static volatile sig_atomic_t ticks;
static void on_tick(int sig)
{
	(void)sig;
	ticks++;
}

static pid_t breaker = -1;
static int lease_fd = -1;

int main(int argc, char **argv)
{

	wl_init(argc, argv);
	const char *mode = getenv("CRT_UNSUPPORTED");
	if (!mode)
		mode = "none";
	int fd = open(wl_path("locked"), O_RDWR | O_CREAT, 0644);
	if (fd < 0)
		wl_die("open");
	timer_t tid;
	if (!strcmp(mode, "lock")) {
		struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
		if (fcntl(fd, F_SETLK, &fl))
			wl_die("fcntl lock");
	} else if (!strcmp(mode, "flock")) {
		if (flock(fd, LOCK_EX))
			wl_die("flock");
	} else if (!strcmp(mode, "timer")) {
		struct sigevent sev = {.sigev_notify = SIGEV_NONE};
		struct itimerspec its = {{10, 0}, {10, 0}};
		if (timer_create(CLOCK_MONOTONIC, &sev, &tid) || timer_settime(tid, 0, &its, NULL))
			wl_die("timer");
	} else if (!strcmp(mode, "timer_sig")) {
		signal(SIGUSR1, on_tick);
		timer_t first;
		struct sigevent none = {.sigev_notify = SIGEV_NONE};
		/* a first timer, deleted: the ids in use are not 0..n-1 */
		if (timer_create(CLOCK_MONOTONIC, &none, &first) || timer_delete(first))
			wl_die("timer");
		struct sigevent sev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR1};
		sev.sigev_value.sival_int = 4242;
		struct itimerspec its = {{0, 10000000}, {0, 10000000}};
		if (timer_create(CLOCK_MONOTONIC, &sev, &tid) || timer_settime(tid, 0, &its, NULL))
			wl_die("timer_sig");
	} else if (!strcmp(mode, "seccomp")) {
		struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
		struct sock_fprog prog = {.len = 1, .filter = &allow};
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
			wl_die("seccomp");
	} else if (!strcmp(mode, "nnp")) {
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
			wl_die("nnp");
	} else if (!strcmp(mode, "removed_cwd")) {
		if (mkdir(wl_path("gone"), 0755) != 0 || chdir(wl_path("gone")) != 0 || rmdir(wl_path("gone")) != 0)
			wl_die("removed_cwd");
	} else if (!strcmp(mode, "lease_breaking")) {
		/* a read lease, and a child whose open for writing breaks it:
		 * the child waits in open() until the lease is given up */
		signal(SIGIO, on_tick); /* the lease-break notice */
		int rd = open(wl_path("leased"), O_RDONLY | O_CREAT, 0644);
		if (rd < 0 || fcntl(rd, F_SETLEASE, F_RDLCK) != 0)
			wl_die("F_SETLEASE");
		breaker = fork();
		if (breaker == 0) {
			int w = open(wl_path("leased"), O_WRONLY);
			_exit(w < 0 ? 1 : 0);
		}
		lease_fd = rd;
		usleep(100000);
	}
	uint64_t n = 0, at_ready;
	at_ready = n;
	sig_atomic_t ticks_at_ready = ticks;
	wl_ready();
	while (wl_keep_going(n > at_ready + 20 && (strcmp(mode, "timer_sig") || ticks > ticks_at_ready + 10))) {
		n++;
		usleep(1000);
	}
	if (lease_fd >= 0) {
		fcntl(lease_fd, F_SETLEASE, F_UNLCK);
		wl_wait_child(breaker, "breaker", 10000);
	}
	if (!strcmp(mode, "lock")) {
		pid_t me = getpid(), c = fork();
		if (c == 0) {
			struct flock q = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
			int o = open(wl_path("locked"), O_RDWR);
			_exit(o >= 0 && fcntl(o, F_GETLK, &q) == 0 && q.l_type == F_WRLCK && q.l_pid == me ? 0 : 1);
		}
		int st = 0;
		waitpid(c, &st, 0);
		WL_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "fcntl lock no longer held");
	}

	if (!strcmp(mode, "nnp") || !strcmp(mode, "seccomp"))
		WL_CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "no_new_privs lost");
	if (!strcmp(mode, "timer")) {
		struct itimerspec cur;
		WL_CHECK(timer_gettime(tid, &cur) == 0 && cur.it_value.tv_sec > 0, "timer disarmed");
	}
	if (!strcmp(mode, "timer_sig")) {
		struct itimerspec cur;
		WL_CHECK(timer_gettime(tid, &cur) == 0 && cur.it_interval.tv_nsec == 10000000, "timer lost its id or period");
		WL_CHECK(ticks > ticks_at_ready + 10, "only %d timer signals after READY", (int)(ticks - ticks_at_ready));
	}
	if (!strcmp(mode, "flock")) {
		int other = open(wl_path("locked"), O_RDWR);
		WL_CHECK(flock(other, LOCK_EX | LOCK_NB) != 0, "flock no longer held");
		close(other);
	}
	WL_CHECK(n > at_ready + 20, "only %llu iterations after READY", (unsigned long long)(n - at_ready));
	if (wl_sabotage && !strcmp(mode, "nnp"))
		WL_CHECK(0, "sabotage");
	wl_finish();
}
