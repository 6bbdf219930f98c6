/*
 * timers_rlimits: a periodic ITIMER_REAL (every PERIOD_US) with a SIGALRM
 * handler counting ticks; a lowered RLIMIT_NOFILE soft limit (NOFILE_SOFT,
 * hard unchanged) and RLIMIT_CORE {CORE_SOFT, CORE_HARD}.  The main loop
 * notes every new tick (~2 ms polling).  After SIGTERM it polls on
 * (wl_keep_going) until the tick checks below hold, then checks: the ticks
 * kept arriving after the last stall (the dump/restore gap), the last one
 * recently, at about the right rate over the last 8 (all after the restore
 * in a round trip); getitimer() still shows the period;
 * getrlimit() shows the limits set, and the NOFILE limit is enforced (dup()
 * fails with EMFILE exactly at fd NOFILE_SOFT).
 * Sabotage: the timer is disarmed after 20 ticks.
 */
#include "wl_common.h"
#include <sys/resource.h>
#include <sys/time.h>

#define PERIOD_US 20000
#define NOFILE_SOFT 173
#define CORE_SOFT (3 * 4096)
#define CORE_HARD (1 << 20)
#define AFTER_STALL_MIN 8
#define READY_TICKS 5
#define RECENT 8 /* the rate is checked over the last RECENT ticks */

static volatile sig_atomic_t ticks;

static void on_alarm(int sig)
{
	(void)sig;
	ticks++;
}

static rlim_t nofile_hard;

/* Observation times of the last RECENT + 1 ticks seen (recent[n % (RECENT + 1)]). */
static int64_t recent[RECENT + 1];
static uint64_t observed;

/* The mean time per tick over the last RECENT ticks seen, in us; -1 if too few. */
static int64_t recent_period_us(int64_t last_tick)
{
	if (observed <= RECENT)
		return -1;
	int64_t first = recent[(observed - 1 - RECENT) % (RECENT + 1)];
	return (last_tick - first) / 1000 / RECENT;
}

static int period_ok(int64_t per)
{
	return per >= PERIOD_US / 2 && per <= PERIOD_US * 2;
}

static void check_limits(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
		wl_fail("getrlimit(NOFILE): errno %d", errno);
	} else {
		WL_CHECK(rl.rlim_cur == NOFILE_SOFT && rl.rlim_max == nofile_hard,
			 "RLIMIT_NOFILE is {%llu, %llu}, want {%d, %llu}", (unsigned long long)rl.rlim_cur,
			 (unsigned long long)rl.rlim_max, NOFILE_SOFT, (unsigned long long)nofile_hard);
	}
	if (getrlimit(RLIMIT_CORE, &rl) != 0) {
		wl_fail("getrlimit(CORE): errno %d", errno);
	} else {
		WL_CHECK(rl.rlim_cur == CORE_SOFT && rl.rlim_max == CORE_HARD,
			 "RLIMIT_CORE is {%llu, %llu}, want {%d, %d}", (unsigned long long)rl.rlim_cur,
			 (unsigned long long)rl.rlim_max, CORE_SOFT, CORE_HARD);
	}
	/* the kernel enforces it: dup() until EMFILE, the last fd is NOFILE_SOFT - 1 */
	int fds[NOFILE_SOFT + 8], n = 0, highest = -1, err = 0;
	while (n < NOFILE_SOFT + 8) {
		int d = dup(1);
		if (d < 0) {
			err = errno;
			break;
		}
		fds[n++] = d;
		if (d > highest)
			highest = d;
	}
	for (int i = 0; i < n; i++)
		close(fds[i]);
	WL_CHECK(err == EMFILE && highest == NOFILE_SOFT - 1,
		 "dup() stopped with errno %d at highest fd %d, want EMFILE at %d", err, highest, NOFILE_SOFT - 1);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		wl_die("getrlimit");
	if (rl.rlim_max < NOFILE_SOFT + 8)
		wl_die("RLIMIT_NOFILE hard limit %llu is too low", (unsigned long long)rl.rlim_max);
	nofile_hard = rl.rlim_max;
	rl.rlim_cur = NOFILE_SOFT;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
		wl_die("setrlimit(NOFILE)");
	rl.rlim_cur = CORE_SOFT;
	rl.rlim_max = CORE_HARD;
	if (setrlimit(RLIMIT_CORE, &rl) != 0)
		wl_die("setrlimit(CORE)");

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	if (sigaction(SIGALRM, &sa, NULL) != 0)
		wl_die("sigaction(SIGALRM)");
	struct itimerval it = { { 0, PERIOD_US }, { 0, PERIOD_US } };
	if (setitimer(ITIMER_REAL, &it, NULL) != 0)
		wl_die("setitimer");

	struct wl_progress prog;
	wl_progress_init(&prog);
	int seen = 0;
	int64_t since_stall_start = wl_now_ns(), last_tick = wl_now_ns();
	uint64_t stalls = 0, ticks_since_stall = 0;
	while (wl_keep_going(ticks_since_stall >= AFTER_STALL_MIN && wl_now_ns() - last_tick < 150000000LL &&
			     period_ok(recent_period_us(last_tick)))) {
		int now_ticks = ticks;
		if (now_ticks != seen) {
			/* a gap of more than 50 ms between ticks is a stall */
			wl_progress_tick(&prog);
			last_tick = prog.last;
			ticks_since_stall += (uint64_t)(now_ticks - seen);
			if (prog.stalls != stalls) {
				stalls = prog.stalls;
				since_stall_start = prog.last;
				ticks_since_stall = 0;
			}
			seen = now_ticks;
			recent[observed++ % (RECENT + 1)] = prog.last;
			if (!wl_is_ready && seen >= READY_TICKS)
				wl_ready();
			if (wl_sabotage && seen >= 20) {
				struct itimerval off;
				memset(&off, 0, sizeof(off));
				setitimer(ITIMER_REAL, &off, NULL);
			}
		}
		usleep(2000);
	}
	int64_t now = wl_now_ns();
	struct itimerval cur;
	if (getitimer(ITIMER_REAL, &cur) != 0)
		wl_fail("getitimer: errno %d", errno);
	int64_t span_ms = (last_tick - since_stall_start) / 1000000;
	wl_printf("INFO ticks=%d stalls=%llu ticks_since_stall=%llu over %lld ms, last tick %lld ms ago, "
		  "interval %ld.%06ld s\n",
		  (int)ticks, (unsigned long long)prog.stalls, (unsigned long long)ticks_since_stall,
		  (long long)span_ms, (long long)((now - last_tick) / 1000000), (long)cur.it_interval.tv_sec,
		  (long)cur.it_interval.tv_usec);
	WL_CHECK((now - last_tick) < 150000000LL, "the last SIGALRM tick was %lld ms ago",
		 (long long)((now - last_tick) / 1000000));
	WL_CHECK(cur.it_interval.tv_sec == 0 && cur.it_interval.tv_usec == PERIOD_US,
		 "ITIMER_REAL interval is %ld.%06ld s, want 0.%06d", (long)cur.it_interval.tv_sec,
		 (long)cur.it_interval.tv_usec, PERIOD_US);
	WL_CHECK(ticks_since_stall >= AFTER_STALL_MIN, "only %llu SIGALRM ticks after the last stall",
		 (unsigned long long)ticks_since_stall);
	/*
	 * About one tick per period over the last RECENT ticks (well after the
	 * restore, which the harness does >= 300 ms before SIGTERM), so not a
	 * timer restored with the wrong period.
	 */
	if (observed > RECENT) {
		int64_t per = recent_period_us(last_tick);
		WL_CHECK(period_ok(per),
			 "SIGALRM ticks every %lld us over the last %d, want about %d", (long long)per, RECENT,
			 PERIOD_US);
	}
	check_limits();
	wl_finish();
}
