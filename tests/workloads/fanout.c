/*
 * fanout: a root with $CRT_FANOUT - 1 children (default 10 processes in
 * all), each holding a little private state, for the forest benchmark.
 * Children pause until SIGTERM and exit 0 if their state is intact; at
 * SIGTERM the root signals and reaps them all and passes only if every
 * child passed.
 */
#include "wl_common.h"
#include <sys/wait.h>

static uint64_t state[512];

static int check_state(uint64_t seed)
{
	for (size_t i = 0; i < 512; i++)
		if (state[i] != wl_mix(seed + i))
			return 0;
	return 1;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	const char *n_s = getenv("CRT_FANOUT");
	int n = n_s ? atoi(n_s) : 10;
	pid_t *kids = calloc((size_t)n, sizeof(pid_t));
	if (!kids)
		wl_die("calloc");
	for (int i = 1; i < n; i++) {
		pid_t c = fork();
		if (c < 0)
			wl_die("fork");
		if (c == 0) {
			for (size_t k = 0; k < 512; k++)
				state[k] = wl_mix((uint64_t)i * 1000 + k);
			wl_wait_term();
			_exit(check_state((uint64_t)i * 1000) && getppid() == wl_pid ? 0 : 1);
		}
		kids[i] = c;
	}
	for (size_t k = 0; k < 512; k++)
		state[k] = wl_mix(k);
	wl_ready();
	wl_wait_term();
	int bad = 0;
	for (int i = 1; i < n; i++)
		kill(kids[i], SIGTERM);
	for (int i = 1; i < n; i++) {
		int st = 0;
		if (waitpid(kids[i], &st, 0) != kids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			bad++;
	}
	WL_CHECK(bad == 0, "%d of %d children failed", bad, n - 1);
	WL_CHECK(check_state(0), "root state changed");
	wl_finish();
}
