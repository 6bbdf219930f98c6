/*
 * pipe_pair: a launcher.  It creates a pipe, forks a writer W and a reader R
 * and exits, so W and R are re-parented to the harness (a subreaper) as two
 * separate roots joined by the pipe.  Each runs in its own workdir
 * (argv[1]/w and argv[1]/r): its own out.log (stdout/stderr), and a "pid"
 * file holding its pid, written before READY.
 *
 * W writes batches of BATCH sequence numbers (u64) with blocking writes,
 * much faster than R reads, so the pipe is full (tens of KiB buffered) most
 * of the time.  R reads READ_CHUNK bytes every ~5 ms, checks the sequence
 * continues with no gap or duplicate, and records how many bytes were
 * buffered (FIONREAD).  After SIGTERM each goes on (wl_keep_going) until it
 * has made the progress its checks need: after READY and after the last
 * stall; R also that the pipe held kilobytes.  Then W verifies and exits; R
 * stops counting but reads on (checking the sequence) up to EOF, i.e. until
 * W has exited, so that W can always make its progress, and then verifies.
 * W ignores SIGPIPE and treats EPIPE (R already gone) as the end.
 * Sabotage: W skips one sequence number (R must notice the gap).
 */
#include "wl_common.h"
#include <sys/ioctl.h>

#define BATCH 64
/*
 * A pipe frees room for W only a page (4 KiB) at a time: with 256-byte
 * reads W blocked ~80 ms at a time, which counted as stalls and made its
 * "batches after the last stall" check flaky.  1 KiB: a page every ~20 ms,
 * still 2.5 times slower than W writes.
 */
#define READ_CHUNK 1024
#define W_MARGIN 20
#define R_MARGIN 200
#define AFTER_STALL_MIN 5
#define MIN_BUFFERED 4096

static void writer(int fd)
{
	signal(SIGPIPE, SIG_IGN);
	uint64_t seq = 0, batches = 0, ready_batches = 0;
	int peer_gone = 0;
	struct wl_progress prog;
	wl_progress_init(&prog);
	/* once R is gone there is no progress to wait for */
	while (wl_keep_going(peer_gone ||
			     (prog.since_stall >= AFTER_STALL_MIN && batches >= ready_batches + W_MARGIN))) {
		if (peer_gone) {
			usleep(5000);
			continue;
		}
		uint64_t buf[BATCH];
		for (int i = 0; i < BATCH; i++) {
			if (wl_sabotage && seq == 3000)
				seq++;
			buf[i] = seq++;
		}
		int written = 0;
		for (;;) {
			ssize_t r = write(fd, buf, sizeof(buf)); /* <= PIPE_BUF: atomic */
			if (r == sizeof(buf)) {
				written = 1;
				break;
			}
			/* SIGTERM: retry, the numbers in buf are taken (and R reads on until EOF) */
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0 && errno == EPIPE) {
				peer_gone = 1;
				break;
			}
			wl_fail("W: write returned %zd errno %d", r, errno);
			break;
		}
		if (!written)
			continue;
		batches++;
		wl_progress_tick(&prog);
		if (!wl_is_ready) {
			ready_batches = batches;
			wl_ready();
		}
		usleep(1000);
	}
	wl_printf("INFO W: batches=%llu ready=%llu stalls=%llu since_stall=%llu peer_gone=%d\n",
		  (unsigned long long)batches, (unsigned long long)ready_batches,
		  (unsigned long long)prog.stalls, (unsigned long long)prog.since_stall, peer_gone);
	WL_CHECK(batches >= ready_batches + W_MARGIN, "W: only %llu batches since READY",
		 (unsigned long long)(batches - ready_batches));
	WL_CHECK(prog.since_stall >= AFTER_STALL_MIN, "W: only %llu batches after the last stall",
		 (unsigned long long)prog.since_stall);
	wl_finish();
}

static void reader(int fd)
{
	unsigned char buf[READ_CHUNK + 8];
	size_t have = 0;
	uint64_t expect = 0, got = 0, ready_got = 0;
	int max_buffered = 0, max_buffered_after_stall = 0, eof = 0, counting = 1;
	struct wl_progress prog;
	wl_progress_init(&prog);
	uint64_t end_got = 0, end_since_stall = 0;
	while (!eof) {
		/* after SIGTERM: count until the checks below are met, then read on uncounted */
		if (counting && !wl_keep_going(got >= ready_got + R_MARGIN &&
					       prog.since_stall >= AFTER_STALL_MIN &&
					       max_buffered >= MIN_BUFFERED)) {
			counting = 0;
			end_got = got;
			end_since_stall = prog.since_stall;
		}
		/* ... up to EOF (W has exited), within the drain deadline */
		if (!counting && !wl_drain_time_left())
			break;
		int avail = 0;
		if (ioctl(fd, FIONREAD, &avail) == 0) {
			if (avail > max_buffered)
				max_buffered = avail;
			if (prog.stalls > 0 && avail > max_buffered_after_stall)
				max_buffered_after_stall = avail;
		}
		ssize_t r = read(fd, buf + have, READ_CHUNK);
		if (r < 0) {
			if (errno != EINTR)
				wl_fail("R: read errno %d", errno);
			continue;
		}
		if (r == 0) {
			eof = 1; /* W ended first (it got SIGTERM too) */
			break;
		}
		have += (size_t)r;
		size_t n = have / 8;
		for (size_t i = 0; i < n; i++) {
			uint64_t v;
			memcpy(&v, buf + i * 8, 8);
			if (v != expect && wl_failures < 5)
				wl_fail("R: got seq %llu, want %llu (%s)", (unsigned long long)v,
					(unsigned long long)expect, v > expect ? "gap" : "duplicate");
			expect = v + 1;
			got++;
		}
		memmove(buf, buf + n * 8, have - n * 8);
		have -= n * 8;
		if (!counting)
			continue; /* read on fast, uncounted */
		wl_progress_tick(&prog);
		if (!wl_is_ready) {
			ready_got = got;
			wl_ready();
		}
		usleep(5000);
	}
	while (!wl_term)
		usleep(5000);
	if (counting) {
		/* EOF before (or without) the drain: W ended first */
		wl_keep_going(1);
		end_got = got;
		end_since_stall = prog.since_stall;
	}
	wl_printf("INFO R: got=%llu counted=%llu ready=%llu stalls=%llu since_stall=%llu max_buffered=%d "
		  "max_buffered_after_stall=%d eof=%d\n",
		  (unsigned long long)got, (unsigned long long)end_got, (unsigned long long)ready_got,
		  (unsigned long long)prog.stalls, (unsigned long long)end_since_stall,
		  max_buffered, max_buffered_after_stall, eof);
	WL_CHECK(end_got >= ready_got + R_MARGIN, "R: only %llu numbers since READY",
		 (unsigned long long)(end_got - ready_got));
	WL_CHECK(end_since_stall >= AFTER_STALL_MIN, "R: only %llu reads after the last stall",
		 (unsigned long long)end_since_stall);
	WL_CHECK(max_buffered >= MIN_BUFFERED, "R: at most %d bytes were ever buffered",
		 max_buffered);
	wl_finish();
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	const char *root_dir = argv[1];
	int p[2];
	if (pipe2(p, O_CLOEXEC) != 0)
		wl_die("pipe");
	pid_t w = fork();
	if (w < 0)
		wl_die("fork W");
	if (w == 0) {
		close(p[0]);
		wl_launch_role("w", root_dir, "W");
		writer(p[1]);
	}
	pid_t r = fork();
	if (r < 0)
		wl_die("fork R");
	if (r == 0) {
		close(p[1]);
		wl_launch_role("r", root_dir, "R");
		reader(p[0]);
	}
	wl_printf("LAUNCHED w=%d r=%d\n", (int)w, (int)r);
	return 0;
}
