/*
 * sleeper: loops on a 700 ms nanosleep(&req, &rem), restarted with rem on
 * EINTR, timing each complete sleep with CLOCK_MONOTONIC (fails if one
 * completed early) and printing "SLEPT <n> <ms>" after each.  A dump almost
 * always lands inside a sleep.  At SIGTERM: at least one sleep completed
 * since READY (the harness waits for a new SLEPT line after restore).
 */
#include "wl_common.h"

#define SLEEP_NS 700000000L

int main(int argc, char **argv)
{
	wl_init(argc, argv);

	unsigned long long count = 0, ready_count = 0, eintr = 0;
	wl_ready();

	while (!wl_term) {
		struct timespec req = { 0, SLEEP_NS }, rem = { 0, 0 };
		int64_t t0 = wl_now_ns();
		int r;
		while ((r = nanosleep(&req, &rem)) == -1 && errno == EINTR) {
			eintr++;
			if (wl_term)
				break;
			req = rem;
		}
		if (wl_term)
			break;
		if (r != 0) {
			wl_fail("nanosleep failed: errno %d (req %lld.%09ld)", errno,
				(long long)req.tv_sec, req.tv_nsec);
			break;
		}
		int64_t elapsed = wl_now_ns() - t0;
		count++;
		if (elapsed < SLEEP_NS)
			wl_fail("sleep %llu completed early: %lld ns < %ld ns", count,
				(long long)elapsed, SLEEP_NS);
		wl_printf("SLEPT %llu %lld ms\n", count, (long long)(elapsed / 1000000));
	}

	wl_printf("INFO sleeps=%llu eintr=%llu\n", count, eintr);
	WL_CHECK(count > ready_count, "no sleep completed after READY");
	wl_finish();
}
