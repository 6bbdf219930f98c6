/*
 * anon_fds: an eventfd in semaphore mode with counter 5, a periodic 20 ms
 * timerfd, a signalfd for SIGUSR2 (blocked, raised before READY so it is
 * pending), and an epoll watching the eventfd (EPOLLIN|EPOLLET, data
 * 0x1234) and the timerfd (EPOLLIN, data 77). The loop waits on the epoll
 * and counts timer expirations. At SIGTERM: timer events kept coming after
 * READY through the epoll with their data, the eventfd still yields 1 five
 * times then EAGAIN, and the signalfd delivers the pending SIGUSR2.
 * Sabotage: reads one unit from the eventfd.
 */
#include "wl_common.h"
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int e = eventfd(5, EFD_NONBLOCK | EFD_SEMAPHORE);
	int t = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	struct itimerspec its = {{0, 20000000}, {0, 20000000}};
	if (e < 0 || t < 0 || timerfd_settime(t, 0, &its, NULL))
		wl_die("eventfd/timerfd");
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGUSR2);
	sigprocmask(SIG_BLOCK, &m, NULL);
	int s = signalfd(-1, &m, SFD_NONBLOCK);
	int ep = epoll_create1(0);
	struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data = {.u64 = 0x1234}};
	if (s < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, e, &ev))
		wl_die("signalfd/epoll");
	ev.events = EPOLLIN;
	ev.data.u64 = 77;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, t, &ev))
		wl_die("epoll_ctl timerfd");
	raise(SIGUSR2);
	uint64_t ticks = 0, timer_events = 0, at_ready = 0, events_at_ready = 0;
	int ready = 0;
	while (!wl_term) {
		struct epoll_event out[4];
		int n = epoll_wait(ep, out, 4, 50);
		for (int i = 0; i < n; i++) {
			if (out[i].data.u64 == 77) {
				uint64_t k;
				if (read(t, &k, sizeof k) == sizeof k)
					ticks += k;
				timer_events++;
			} else if (out[i].data.u64 != 0x1234) {
				wl_fail("epoll event with unknown data %llx", (unsigned long long)out[i].data.u64);
			}
		}
		if (!ready && ticks >= 3) {
			ready = 1;
			at_ready = ticks;
			events_at_ready = timer_events;
			wl_ready();
			if (wl_sabotage) {
				uint64_t one;
				if (read(e, &one, sizeof one) != sizeof one)
					wl_die("sabotage read");
			}
		}
	}
	WL_CHECK(ticks >= at_ready + 5, "only %llu timer ticks after READY", (unsigned long long)(ticks - at_ready));
	WL_CHECK(timer_events > events_at_ready, "no timer event through epoll after READY");
	for (int i = 0; i < 5; i++) {
		uint64_t v = 0;
		WL_CHECK(read(e, &v, sizeof v) == sizeof v && v == 1, "eventfd read %d: %llu", i, (unsigned long long)v);
	}
	uint64_t v;
	WL_CHECK(read(e, &v, sizeof v) < 0 && errno == EAGAIN, "eventfd counter was above 5");
	struct signalfd_siginfo si;
	WL_CHECK(read(s, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR2, "no pending SIGUSR2 on the signalfd");
	wl_finish();
}
