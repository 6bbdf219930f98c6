/*
 * counters: a global, a heap and a stack counter incremented together in a
 * loop, plus a 16 MiB malloc'd buffer holding a seeded pseudo-random pattern.
 * At SIGTERM: the three counters are equal, advanced well past their value at
 * READY, the loop kept running after the last stall (dump/restore gap), and
 * the heap pattern is intact.  After SIGTERM the loop drains until it has
 * made that progress (wl_keep_going).
 *
 * eventfd_holder.c includes this file with WITH_EVENTFD=1 to also hold an
 * eventfd with a counter value (restored by crt's eventfd handler), and
 * io_uring_holder.c with WITH_IO_URING=1 to hold an io_uring (an fd kind
 * crt refuses to dump).
 */
#include "wl_common.h"

#ifndef WITH_EVENTFD
#define WITH_EVENTFD 0
#endif
#ifndef WITH_IO_URING
#define WITH_IO_URING 0
#endif
#if WITH_IO_URING
#include <sys/syscall.h>
#endif
#if WITH_EVENTFD
#include <sys/eventfd.h>
#endif

#define HEAP_BYTES (16u << 20)
#define HEAP_WORDS (HEAP_BYTES / 8)
#define MARGIN 100            /* iterations required between READY and SIGTERM */
#define AFTER_STALL_MIN 5     /* iterations required after the last stall */
#define EVENTFD_VALUE 7

struct heap_state {
	uint64_t count;
	uint64_t seed;
	uint64_t words[];
};

static volatile uint64_t g_count;

static size_t check_words(const struct heap_state *h, size_t from, size_t to)
{
	size_t bad = 0;
	for (size_t i = from; i < to; i++) {
		if (h->words[i] != wl_mix(h->seed + i)) {
			if (bad == 0)
				wl_fail("heap pattern mismatch at word %zu: %016llx != %016llx", i,
					(unsigned long long)h->words[i],
					(unsigned long long)wl_mix(h->seed + i));
			bad++;
		}
	}
	return bad;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);

	struct heap_state *h = malloc(sizeof(*h) + HEAP_BYTES);
	if (h == NULL)
		wl_die("malloc");
	h->count = 0;
	h->seed = 0x5eed0000ULL ^ ((uint64_t)wl_pid << 20) ^ (uint64_t)wl_now_ns();
	for (size_t i = 0; i < HEAP_WORDS; i++)
		h->words[i] = wl_mix(h->seed + i);

	volatile uint64_t s_count = 0;

#if WITH_EVENTFD
	int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (efd < 0)
		wl_die("eventfd");
	uint64_t ev = EVENTFD_VALUE;
	if (write(efd, &ev, sizeof(ev)) != sizeof(ev))
		wl_die("write eventfd");
#endif

#if WITH_IO_URING
	/* an io_uring: an fd kind crt refuses to dump */
	uint32_t params[30];
	memset(params, 0, sizeof params);
	if (syscall(SYS_io_uring_setup, 4, params) < 0)
		wl_die("io_uring_setup");
#endif

	uint64_t ready_count = g_count;
	wl_ready();

	/* a loop gap longer than WL_STALL_NS counts as a stall */
	struct wl_progress prog;
	wl_progress_init(&prog);
	while (wl_keep_going(prog.since_stall >= AFTER_STALL_MIN && g_count >= ready_count + MARGIN)) {
		g_count++;
		h->count++;
		s_count++;

		if (wl_sabotage && g_count == 50)
			h->words[HEAP_WORDS / 2] ^= 0x100;

		/* spot-check one 4 KiB chunk of the pattern every 64 iterations */
		if (g_count % 64 == 0) {
			size_t chunk = (size_t)((g_count / 64) * 4099) % (HEAP_WORDS / 512);
			check_words(h, chunk * 512, chunk * 512 + 512);
		}

		usleep(1000);
		wl_progress_tick(&prog);
	}

	uint64_t g = g_count, hc = h->count, s = s_count;
	wl_printf("INFO count=%llu ready_count=%llu stalls=%llu since_last_stall=%llu max_gap_ms=%lld\n",
		  (unsigned long long)g, (unsigned long long)ready_count,
		  (unsigned long long)prog.stalls, (unsigned long long)prog.since_stall,
		  (long long)(prog.max_gap / 1000000));
	WL_CHECK(g == hc && g == s, "counters differ: global=%llu heap=%llu stack=%llu",
		 (unsigned long long)g, (unsigned long long)hc, (unsigned long long)s);
	WL_CHECK(g >= ready_count + MARGIN, "counter advanced only %llu since READY (need %d)",
		 (unsigned long long)(g - ready_count), MARGIN);
	WL_CHECK(prog.since_stall >= AFTER_STALL_MIN,
		 "loop ran only %llu iterations after the last stall (need %d)",
		 (unsigned long long)prog.since_stall, AFTER_STALL_MIN);
	size_t bad = check_words(h, 0, HEAP_WORDS);
	WL_CHECK(bad == 0, "%zu heap pattern words corrupted", bad);

#if WITH_EVENTFD
	uint64_t got = 0;
	ssize_t r = read(efd, &got, sizeof(got));
	WL_CHECK(r == sizeof(got) && got == EVENTFD_VALUE,
		 "eventfd read returned %zd value %llu (want %d)", r, (unsigned long long)got,
		 EVENTFD_VALUE);
#endif
	wl_finish();
}
