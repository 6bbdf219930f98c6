/*
 * stopped: a plain counter loop (~1 ms per iteration) printing "TICK <n>"
 * every 20 iterations.  The harness SIGSTOPs it before the dump, checks it
 * stays stopped (no new TICK, state T) after restore, then SIGCONTs it and waits for 5 more TICKs.
 * At SIGTERM: the counter advanced well past READY, and kept running after
 * the last stall (the stop); after SIGTERM the loop drains until it has
 * (wl_keep_going).
 */
#include "wl_common.h"

#define MARGIN 80
#define AFTER_STALL_MIN 50

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	uint64_t count = 0;
	struct wl_progress prog;
	wl_progress_init(&prog);
	wl_ready();
	while (wl_keep_going(prog.since_stall >= AFTER_STALL_MIN && count >= MARGIN)) {
		count++;
		if (wl_sabotage && count == 50)
			count -= 40;
		wl_progress_tick(&prog);
		if (count % 20 == 0)
			wl_printf("TICK %llu\n", (unsigned long long)count);
		usleep(1000);
	}
	wl_printf("INFO count=%llu ticks=%llu stalls=%llu since_stall=%llu max_gap_ms=%lld\n",
		  (unsigned long long)count, (unsigned long long)prog.ticks,
		  (unsigned long long)prog.stalls, (unsigned long long)prog.since_stall,
		  (long long)(prog.max_gap / 1000000));
	WL_CHECK(count == prog.ticks, "counter is %llu, but the loop ran %llu times",
		 (unsigned long long)count, (unsigned long long)prog.ticks);
	WL_CHECK(count >= MARGIN, "counter advanced only %llu since READY",
		 (unsigned long long)count);
	WL_CHECK(prog.since_stall >= AFTER_STALL_MIN,
		 "loop ran only %llu iterations after the last stall",
		 (unsigned long long)prog.since_stall);
	wl_finish();
}
