/*
 * pauser: blocks in pause(); a SIGUSR1 handler sets a flag, and each wake-up
 * by SIGUSR1 prints "WOKE" before pausing again.  The dump lands inside
 * pause().  At SIGTERM: it woke exactly once (the harness sends one SIGUSR1
 * after restore and waits for "WOKE").
 */
#include "wl_common.h"

static volatile sig_atomic_t got_usr1;

static void on_usr1(int sig)
{
	(void)sig;
	got_usr1 = 1;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL) != 0)
		wl_die("sigaction(SIGUSR1)");

	int woke = 0, pauses = 0;
	wl_ready();
	while (!wl_term) {
		int r = pause();
		pauses++;
		if (r != -1 || errno != EINTR)
			wl_fail("pause() returned %d errno %d", r, errno);
		if (got_usr1) {
			got_usr1 = 0;
			woke++;
			wl_printf("WOKE\n");
		}
	}
	wl_printf("INFO woke=%d pauses=%d\n", woke, pauses);
	WL_CHECK(woke == 1, "woke %d times by SIGUSR1, want exactly 1", woke);
	wl_finish();
}
