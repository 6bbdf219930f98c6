/*
 * fifo_pair: the root mkfifo()s <workdir>/seq.fifo and forks a writer w and
 * a reader r, which each open the FIFO by path (w O_WRONLY, then
 * O_NONBLOCK; r O_RDONLY, blocking).  w writes batches of BATCH sequence
 * numbers (u64, atomic: <= PIPE_BUF) every ~1 ms, much faster than r reads
 * READ_CHUNK bytes every ~3 ms, so the FIFO holds kilobytes most of the
 * time (r records the FIONREAD maximum).  r checks the sequence continues
 * with no gap or duplicate.  Both check their fd is still the FIFO at the
 * path (same device and inode, S_ISFIFO), with its open flags.
 * At SIGTERM the root SIGTERMs r, which reads on until it has made the
 * progress its checks need (wl_keep_going), then stops counting, creates
 * <workdir>/r.drained and reads on.  The root then SIGTERMs w, which writes
 * on until it has made its progress, then writes an end record
 * {END, next seq} and closes; r drains the FIFO up to EOF and checks the end
 * record matches what it counted (no byte lost at the tail).  The root
 * waits for w then r (exit 0) and checks the FIFO is still at its path.
 * Each child also checks it made progress after the last stall (the
 * dump/restore gap).  The children are listed in <workdir>/pids.
 * Sabotage: w skips sequence number 3000 (r must notice the gap).
 */
#include "wl_common.h"
#include <sys/ioctl.h>

#define BATCH 64
#define READ_CHUNK 256
#define END UINT64_MAX
#define AFTER_STALL_MIN 10
#define MIN_BUFFERED 4096

static void check_is_the_fifo(int fd, int want_flags)
{
	struct stat a, b;
	if (fstat(fd, &a) != 0) {
		wl_fail("%s: fstat(fifo fd): errno %d", wl_role, errno);
		return;
	}
	if (stat(wl_path("seq.fifo"), &b) != 0) {
		wl_fail("%s: stat(seq.fifo): errno %d", wl_role, errno);
		return;
	}
	WL_CHECK(S_ISFIFO(a.st_mode), "%s: the fd is not a FIFO (mode %o)", wl_role, a.st_mode);
	WL_CHECK(a.st_dev == b.st_dev && a.st_ino == b.st_ino,
		 "%s: the fd is not the FIFO at the path (fd ino %llu, path ino %llu)", wl_role,
		 (unsigned long long)a.st_ino, (unsigned long long)b.st_ino);
	int fl = fcntl(fd, F_GETFL);
	WL_CHECK(fl >= 0 && (fl & (O_ACCMODE | O_NONBLOCK)) == want_flags,
		 "%s: fifo fd flags %#x, want %#x", wl_role, fl, want_flags);
}

static void writer(void)
{
	int fd = open(wl_path("seq.fifo"), O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		wl_die("w: open fifo");
	if (fcntl(fd, F_SETFL, O_NONBLOCK) != 0)
		wl_die("w: O_NONBLOCK");
	signal(SIGPIPE, SIG_IGN);
	uint64_t seq = 0, batches = 0, full = 0, written_since_stall = 0, stalls = 0;
	struct wl_progress prog;
	wl_progress_init(&prog);
	uint64_t buf[BATCH];
	int pending = 0;
	wl_drain_ns /= 2; /* SIGTERMed once r has drained */
	while (wl_keep_going(prog.since_stall >= AFTER_STALL_MIN && written_since_stall >= 5)) {
		if (!pending) {
			for (int i = 0; i < BATCH; i++) {
				if (wl_sabotage && seq == 3000)
					seq++;
				buf[i] = seq++;
			}
			pending = 1;
		}
		ssize_t r = write(fd, buf, sizeof(buf));
		if (r == (ssize_t)sizeof(buf)) {
			pending = 0;
			batches++;
			written_since_stall++;
		} else if (r < 0 && errno == EAGAIN) {
			full++;
		} else if (!(r < 0 && errno == EINTR)) {
			wl_fail("w: write returned %zd errno %d", r, errno);
			break;
		}
		wl_progress_tick(&prog);
		if (prog.stalls != stalls) {
			stalls = prog.stalls;
			written_since_stall = r == (ssize_t)sizeof(buf);
		}
		usleep(1000);
	}
	/* the batch not written yet is dropped: its numbers are not "sent" */
	if (pending)
		seq -= BATCH;
	uint64_t end[2] = { END, seq };
	int64_t deadline = wl_now_ns() + 10000000000LL;
	for (;;) {
		ssize_t r = write(fd, end, sizeof(end));
		if (r == (ssize_t)sizeof(end))
			break;
		if (r < 0 && (errno == EAGAIN || errno == EINTR) && wl_now_ns() < deadline) {
			usleep(1000);
			continue;
		}
		wl_fail("w: writing the end record returned %zd errno %d", r, errno);
		break;
	}
	check_is_the_fifo(fd, O_WRONLY | O_NONBLOCK);
	close(fd);
	wl_printf("INFO w: batches=%llu next_seq=%llu full=%llu stalls=%llu since_stall=%llu "
		  "written_since_stall=%llu\n",
		  (unsigned long long)batches, (unsigned long long)seq, (unsigned long long)full,
		  (unsigned long long)prog.stalls, (unsigned long long)prog.since_stall,
		  (unsigned long long)written_since_stall);
	WL_CHECK(prog.since_stall >= AFTER_STALL_MIN, "w: only %llu iterations after the last stall",
		 (unsigned long long)prog.since_stall);
	WL_CHECK(written_since_stall >= 5, "w: only %llu batches written after the last stall",
		 (unsigned long long)written_since_stall);
	wl_child_exit();
}

static void reader(void)
{
	int fd = open(wl_path("seq.fifo"), O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		wl_die("r: open fifo");
	unsigned char buf[READ_CHUNK + 16];
	size_t have = 0;
	uint64_t expect = 0, got = 0, reads_since_stall = 0, stalls = 0;
	int max_buffered = 0, eof = 0, ended = 0, started = 0, counting = 1;
	struct wl_progress prog;
	wl_progress_init(&prog);
	while (!eof) {
		/* after SIGTERM: count until the checks below are met, then only read on */
		if (counting && !wl_keep_going(reads_since_stall >= AFTER_STALL_MIN &&
					       max_buffered >= MIN_BUFFERED)) {
			counting = 0;
			int dfd = open(wl_path("r.drained"), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
			if (dfd < 0)
				wl_fail("r: creating r.drained: errno %d", errno);
			else
				close(dfd);
		}
		int avail = 0;
		if (!ended && ioctl(fd, FIONREAD, &avail) == 0 && avail > max_buffered)
			max_buffered = avail;
		ssize_t r = read(fd, buf + have, READ_CHUNK);
		if (r < 0) {
			if (errno != EINTR) {
				wl_fail("r: read errno %d", errno);
				break;
			}
			continue;
		}
		if (r == 0) {
			eof = 1;
			break;
		}
		have += (size_t)r;
		size_t n = 0;
		while (have - n >= 8) {
			uint64_t v;
			memcpy(&v, buf + n, 8);
			if (v == END) {
				if (have - n < 16)
					break; /* the count follows */
				uint64_t sent;
				memcpy(&sent, buf + n + 8, 8);
				WL_CHECK(!ended, "r: a second end record");
				WL_CHECK(sent == expect, "r: w sent up to %llu, r got up to %llu",
					 (unsigned long long)sent, (unsigned long long)expect);
				ended = 1;
				n += 16;
				continue;
			}
			if (ended && wl_failures < 5)
				wl_fail("r: seq %llu after the end record", (unsigned long long)v);
			if (v != expect && wl_failures < 5)
				wl_fail("r: got seq %llu, want %llu (%s)", (unsigned long long)v,
					(unsigned long long)expect, v > expect ? "gap" : "duplicate");
			expect = v + 1;
			got++;
			n += 8;
		}
		memmove(buf, buf + n, have - n);
		have -= n;
		if (ended)
			continue; /* drain fast, do not count */
		if (!counting)
			continue; /* read on fast, do not count */
		wl_progress_tick(&prog);
		reads_since_stall++;
		if (prog.stalls != stalls) {
			stalls = prog.stalls;
			reads_since_stall = 1;
		}
		if (!started && got > 0) {
			started = 1;
			int sfd = open(wl_path("r.started"), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
			if (sfd >= 0)
				close(sfd);
		}
		usleep(3000);
	}
	WL_CHECK(have == 0, "r: %zu stray bytes at EOF", have);
	WL_CHECK(ended, "r: EOF without the end record (got up to %llu)", (unsigned long long)expect);
	check_is_the_fifo(fd, O_RDONLY);
	close(fd);
	wl_printf("INFO r: got=%llu stalls=%llu since_stall=%llu max_buffered=%d\n",
		  (unsigned long long)got, (unsigned long long)prog.stalls,
		  (unsigned long long)prog.since_stall, max_buffered);
	WL_CHECK(reads_since_stall >= AFTER_STALL_MIN, "r: only %llu reads after the last stall",
		 (unsigned long long)reads_since_stall);
	WL_CHECK(max_buffered >= MIN_BUFFERED, "r: at most %d bytes were ever buffered", max_buffered);
	wl_child_exit();
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (mkfifo(wl_path("seq.fifo"), 0600) != 0)
		wl_die("mkfifo");
	struct stat fifo_st;
	if (stat(wl_path("seq.fifo"), &fifo_st) != 0)
		wl_die("stat fifo");
	pid_t root = getpid();
	pid_t w = fork();
	if (w < 0)
		wl_die("fork w");
	if (w == 0) {
		wl_child_init("w");
		writer();
	}
	pid_t r = fork();
	if (r < 0)
		wl_die("fork r");
	if (r == 0) {
		wl_child_init("r");
		reader();
	}
	wl_record_pid("w", w, root);
	wl_record_pid("r", r, root);
	int64_t deadline = wl_now_ns() + 5000000000LL;
	struct stat st;
	while (stat(wl_path("r.started"), &st) != 0) {
		if (wl_now_ns() > deadline)
			wl_die("the reader never started");
		usleep(1000);
	}
	wl_ready();
	while (!wl_term)
		usleep(10000);
	/* r first: w must write on until r has made its progress */
	kill(r, SIGTERM);
	deadline = wl_now_ns() + wl_drain_ns + 1000000000LL;
	for (;;) {
		if (stat(wl_path("r.drained"), &st) == 0)
			break;
		if (wl_child_gone(r)) {
			wl_fail("root: r exited before it drained");
			break;
		}
		if (wl_now_ns() > deadline) {
			wl_fail("root: r did not drain in time");
			break;
		}
		usleep(1000);
	}
	kill(w, SIGTERM);
	wl_wait_child(w, "w", 10000);
	wl_wait_child(r, "r", 10000);
	if (stat(wl_path("seq.fifo"), &st) != 0)
		wl_fail("root: seq.fifo is gone: errno %d", errno);
	else
		WL_CHECK(S_ISFIFO(st.st_mode) && st.st_ino == fifo_st.st_ino,
			 "root: seq.fifo changed (mode %o, ino %llu, was %llu)", st.st_mode,
			 (unsigned long long)st.st_ino, (unsigned long long)fifo_st.st_ino);
	wl_finish();
}
