/*
 * prctl_state: process and thread attributes set with prctl that must
 * survive: the root is a child subreaper, has THP disabled, is not
 * dumpable and has a 123 µs timer slack; its child has a parent-death
 * signal (SIGUSR2) and its own 77 µs timer slack. At SIGTERM both check
 * their attributes; the root reaps the child and passes only if it passed.
 */
#include "wl_common.h"
#include <sys/prctl.h>
#include <sys/wait.h>

static int child_main(void)
{
	while (!wl_term)
		usleep(2000);
	int sig = 0, ok = 1;
	if (prctl(PR_GET_PDEATHSIG, &sig) || sig != SIGUSR2) {
		wl_printf("CHECK FAILED: child pdeathsig %d\n", sig);
		ok = 0;
	}
	if (prctl(PR_GET_TIMERSLACK) != 77000) {
		wl_printf("CHECK FAILED: child timer slack %d\n", prctl(PR_GET_TIMERSLACK));
		ok = 0;
	}
	return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) || prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) || prctl(PR_SET_TIMERSLACK, 123000))
		wl_die("prctl");
	pid_t c = fork();
	if (c == 0) {
		if (prctl(PR_SET_PDEATHSIG, SIGUSR2) || prctl(PR_SET_TIMERSLACK, 77000))
			_exit(3);
		_exit(child_main());
	}
	if (prctl(PR_SET_DUMPABLE, 0))
		wl_die("dumpable");
	if (wl_sabotage)
		prctl(PR_SET_CHILD_SUBREAPER, 0);
	wl_ready();
	while (!wl_term)
		usleep(2000);
	int sub = 0;
	WL_CHECK(prctl(PR_GET_CHILD_SUBREAPER, &sub) == 0 && sub == 1, "not a child subreaper any more");
	WL_CHECK(prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1, "THP no longer disabled");
	WL_CHECK(prctl(PR_GET_DUMPABLE) == 0, "dumpable again");
	WL_CHECK(prctl(PR_GET_TIMERSLACK) == 123000, "timer slack %d", prctl(PR_GET_TIMERSLACK));
	kill(c, SIGTERM);
	int st = 0;
	WL_CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed its checks (%x)", st);
	wl_finish();
}
