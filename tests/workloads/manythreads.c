/*
 * manythreads: $CRT_THREADS threads (default 8) besides main, each
 * advancing its own counter, for the forest benchmark.  At SIGTERM every
 * thread must have advanced since READY (after SIGTERM the main thread
 * waits until they have, wl_keep_going).
 */
#include "wl_common.h"
#include <pthread.h>

#define MAX_THREADS 256
static volatile uint64_t counters[MAX_THREADS];

static void *run(void *arg)
{
	size_t i = (size_t)arg;
	for (;;) {
		counters[i]++;
		usleep(20000);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	const char *n_s = getenv("CRT_THREADS");
	int n = n_s ? atoi(n_s) : 8;
	if (n > MAX_THREADS)
		n = MAX_THREADS;
	for (int i = 0; i < n; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, run, (void *)(size_t)i) != 0)
			wl_die("pthread_create");
	}
	usleep(50000);
	uint64_t at_ready[MAX_THREADS];
	for (int i = 0; i < n; i++)
		at_ready[i] = counters[i];
	wl_ready();
	wl_wait_term();
	int stuck;
	for (;;) {
		stuck = 0;
		for (int i = 0; i < n; i++)
			stuck += counters[i] <= at_ready[i];
		if (!wl_keep_going(stuck == 0))
			break;
		usleep(20000);
	}
	WL_CHECK(stuck == 0, "%d of %d threads did not advance", stuck, n);
	wl_finish();
}
