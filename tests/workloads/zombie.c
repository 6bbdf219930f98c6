/*
 * zombie: forks a child that exits at once with status 42 and never reaps
 * it before SIGTERM; a SIGCHLD handler counts deliveries.  Before READY the
 * child is seen exited (waitid WNOHANG|WNOWAIT: CLD_EXITED, status 42) and one
 * SIGCHLD has arrived.  While running it re-checks that periodically (and
 * that /proc shows the child as a zombie).  At SIGTERM: waitid WNOWAIT still
 * shows it exited with 42, waitpid(child) reaps it with status 42, no other
 * child exists, and exactly one SIGCHLD was delivered in total.
 * The child is listed in <workdir>/pids as "zombie".
 * Sabotage: reaps the child early.
 */
#include "wl_common.h"

static volatile sig_atomic_t chld_count;

static void on_chld(int sig)
{
	(void)sig;
	chld_count++;
}

/* 1 if waitid(WNOHANG|WNOWAIT) shows `child` exited with 42. */
static int peek_exited(pid_t child, const char *when)
{
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	int r = waitid(P_PID, (id_t)child, &si, WEXITED | WNOHANG | WNOWAIT);
	if (r != 0) {
		wl_fail("%s: waitid(WNOHANG|WNOWAIT) on the zombie: errno %d", when, errno);
		return 0;
	}
	if (si.si_pid != child) {
		wl_fail("%s: waitid(WNOHANG) says child %d has not exited (si_pid %d)", when,
			(int)child, (int)si.si_pid);
		return 0;
	}
	if (si.si_code != CLD_EXITED || si.si_status != 42) {
		wl_fail("%s: child exit is code %d status %d, want CLD_EXITED 42", when,
			si.si_code, si.si_status);
		return 0;
	}
	return 1;
}

static char proc_state(pid_t pid)
{
	char buf[512];
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	ssize_t n = wl_read_file(path, buf, sizeof(buf) - 1);
	if (n <= 0)
		return '?';
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	return p && p[1] == ' ' ? p[2] : '?';
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_chld;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGCHLD, &sa, NULL) != 0)
		wl_die("sigaction(SIGCHLD)");

	pid_t child = fork();
	if (child < 0)
		wl_die("fork");
	if (child == 0)
		_exit(42);
	wl_record_pid("zombie", child, getpid());

	int64_t deadline = wl_now_ns() + 5000000000LL;
	for (;;) {
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		if (waitid(P_PID, (id_t)child, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
		    si.si_pid == child && chld_count > 0)
			break;
		if (wl_now_ns() > deadline)
			wl_die("child did not become a zombie");
		usleep(1000);
	}
	peek_exited(child, "before READY");
	WL_CHECK(chld_count == 1, "before READY: %d SIGCHLD deliveries, want 1", (int)chld_count);
	wl_ready();

	unsigned iter = 0;
	while (!wl_term) {
		usleep(5000);
		iter++;
		if (wl_sabotage && iter == 30) {
			int st;
			waitpid(child, &st, 0);
		}
		if (iter % 20 == 0) {
			if (peek_exited(child, "while running")) {
				char s = proc_state(child);
				WL_CHECK(s == 'Z', "child %d is in state %c, want Z", (int)child, s);
			}
			WL_CHECK(chld_count == 1, "while running: %d SIGCHLD deliveries, want 1",
				 (int)chld_count);
		}
		if (wl_failures > 0)
			break; /* do not flood the log */
	}
	while (!wl_term)
		usleep(5000);

	peek_exited(child, "at SIGTERM");
	int st = 0;
	pid_t r = waitpid(child, &st, WNOHANG);
	WL_CHECK(r == child, "waitpid(zombie %d, WNOHANG) returned %d (errno %d)", (int)child,
		 (int)r, errno);
	if (r == child)
		WL_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 42,
			 "zombie's wait status is %#x, want exit 42", st);
	r = waitpid(-1, &st, WNOHANG);
	WL_CHECK(r < 0 && errno == ECHILD, "another child exists: waitpid(-1) returned %d",
		 (int)r);
	usleep(20000);
	wl_printf("INFO sigchld=%d iterations=%u\n", (int)chld_count, iter);
	WL_CHECK(chld_count == 1, "%d SIGCHLD deliveries in total, want exactly 1",
		 (int)chld_count);
	wl_finish();
}
