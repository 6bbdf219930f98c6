/*
 * signals: SIGUSR1 has a SA_SIGINFO|SA_RESTART handler with a non-empty
 * sa_mask (SIGHUP, SIGALRM); SIGINT is SIG_IGN; SIGUSR2 is blocked and raised
 * before READY, so it stays pending across the dump.
 * The harness sends SIGUSR1 (waits for "GOT USR1") and SIGINT after restore.
 * At SIGTERM: SIGUSR1 was handled (with the sa_mask in effect), sigaction
 * still reports the same handler/flags/mask, SIGINT is still ignored, the
 * blocked mask is unchanged and SIGUSR2 is still pending.
 */
#include "wl_common.h"

static volatile sig_atomic_t usr1_count;
static volatile sig_atomic_t usr1_bad_info;
static volatile sig_atomic_t usr1_bad_mask;

static void usr1_handler(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (sig != SIGUSR1 || si == NULL || si->si_signo != SIGUSR1)
		usr1_bad_info = 1;
	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	if (!sigismember(&cur, SIGHUP) || !sigismember(&cur, SIGALRM) ||
	    !sigismember(&cur, SIGUSR1) || !sigismember(&cur, SIGUSR2))
		usr1_bad_mask = 1;
	usr1_count++;
	static const char msg[] = "GOT USR1\n";
	wl_write_all(1, msg, sizeof(msg) - 1);
}

static int same_mask(const sigset_t *a, const sigset_t *b, int *which)
{
	for (int s = 1; s < 65; s++) {
		if (sigismember(a, s) != sigismember(b, s)) {
			*which = s;
			return 0;
		}
	}
	return 1;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);

	struct sigaction sa, orig_act, now;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = usr1_handler;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGHUP);
	sigaddset(&sa.sa_mask, SIGALRM);
	if (sigaction(SIGUSR1, &sa, NULL) != 0)
		wl_die("sigaction(SIGUSR1)");
	memset(&orig_act, 0, sizeof(orig_act));
	if (sigaction(SIGUSR1, NULL, &orig_act) != 0)
		wl_die("sigaction(SIGUSR1) query");
	if (signal(SIGINT, SIG_IGN) == SIG_ERR)
		wl_die("signal(SIGINT)");

	sigset_t block, orig_mask, pend;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR2);
	if (sigprocmask(SIG_BLOCK, &block, NULL) != 0)
		wl_die("sigprocmask");
	sigprocmask(SIG_BLOCK, NULL, &orig_mask);
	if (raise(SIGUSR2) != 0)
		wl_die("raise(SIGUSR2)");
	sigemptyset(&pend);
	if (sigpending(&pend) != 0 || !sigismember(&pend, SIGUSR2))
		wl_die("SIGUSR2 not pending after raise");

	int ready_usr1 = usr1_count;
	wl_ready();

	while (!wl_term)
		usleep(2000);

	int n = usr1_count;
	wl_printf("INFO usr1_count=%d\n", n);
	WL_CHECK(n > ready_usr1, "SIGUSR1 was never handled after READY");
	WL_CHECK(!usr1_bad_info, "SIGUSR1 handler got a wrong signo/siginfo");
	WL_CHECK(!usr1_bad_mask, "SIGUSR1 handler ran without its sa_mask (SIGHUP, SIGALRM) blocked");

	memset(&now, 0, sizeof(now));
	if (sigaction(SIGUSR1, NULL, &now) != 0) {
		wl_fail("sigaction(SIGUSR1) query failed: errno %d", errno);
	} else {
		int which = 0;
		WL_CHECK(now.sa_sigaction == usr1_handler, "SIGUSR1 handler changed: %p != %p",
			 (void *)now.sa_sigaction, (void *)usr1_handler);
		WL_CHECK(now.sa_flags == orig_act.sa_flags, "SIGUSR1 sa_flags changed: %#x != %#x",
			 (unsigned)now.sa_flags, (unsigned)orig_act.sa_flags);
		WL_CHECK((now.sa_flags & (SA_SIGINFO | SA_RESTART)) == (SA_SIGINFO | SA_RESTART),
			 "SIGUSR1 sa_flags lost SA_SIGINFO|SA_RESTART: %#x", (unsigned)now.sa_flags);
		WL_CHECK(same_mask(&now.sa_mask, &orig_act.sa_mask, &which),
			 "SIGUSR1 sa_mask differs at signal %d", which);
	}

	struct sigaction intact;
	memset(&intact, 0, sizeof(intact));
	sigaction(SIGINT, NULL, &intact);
	WL_CHECK(intact.sa_handler == SIG_IGN, "SIGINT is no longer SIG_IGN");

	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	int which = 0;
	WL_CHECK(sigismember(&cur, SIGUSR2) == 1, "SIGUSR2 is no longer blocked");
	WL_CHECK(same_mask(&cur, &orig_mask, &which), "blocked mask differs at signal %d", which);
	sigemptyset(&pend);
	sigpending(&pend);
	WL_CHECK(sigismember(&pend, SIGUSR2) == 1, "SIGUSR2 is no longer pending");
	wl_finish();
}
