/*
 * forker: a busy tree, like `while :; do sleep 0.01; done` in a shell: a
 * loop that forks a child, which sleeps 10 ms and exits with status 7,
 * and reaps it. Children are born, exit and are reaped all the time, also
 * while crt freezes the tree.
 * At SIGTERM: every child exited with 7 (none lost, none killed), and the
 * loop made progress after READY (drained).
 * Sabotage: one child exits with 8.
 */
#include "wl_common.h"

#define MARGIN 20

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	uint64_t rounds = 0;
	wl_ready();
	while (wl_keep_going(rounds >= MARGIN)) {
		pid_t c = fork();
		if (c < 0) {
			wl_fail("fork: errno %d", errno);
			break;
		}
		if (c == 0) {
			usleep(10000);
			_exit(wl_sabotage && rounds == 5 ? 8 : 7);
		}
		int st = 0;
		pid_t r;
		while ((r = waitpid(c, &st, 0)) < 0 && errno == EINTR)
			;
		WL_CHECK(r == c && WIFEXITED(st) && WEXITSTATUS(st) == 7, "round %llu: child %d ended with %#x",
			 (unsigned long long)rounds, (int)c, st);
		rounds++;
	}
	wl_printf("INFO rounds=%llu\n", (unsigned long long)rounds);
	WL_CHECK(rounds >= MARGIN, "only %llu rounds", (unsigned long long)rounds);
	wl_finish();
}
