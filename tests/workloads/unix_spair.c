/*
 * unix_spair: socketpairs with bytes queued both ways, in one process and
 * across a fork.
 *
 * Root: a stream socketpair A (both ends in the root) and a seqpacket
 * socketpair B (both ends in the root); a stream socketpair X whose end
 * X[1] goes to a forked child C.  Before READY each side writes a fixed
 * pattern into each pair in both directions and leaves it unread (several
 * KiB), so it is queued at dump time.  While running, the root and C also
 * ping-pong sequence numbers over a second stream pair P (root P[0], C P[1])
 * to prove the connection works after restore.  On SIGTERM every queued
 * pattern must read back exactly (seqpacket: message boundaries too), and
 * the ping-pong must have continued without a gap.  After SIGTERM the root
 * pings on (wl_keep_going) until it has pinged enough after the last
 * stall; it then checks its queues, SIGTERMs C and pings on (uncounted:
 * C's checks need the ping-pong to go on) while C does the same, until C
 * exits.
 * Sabotage: the root reads one byte of A[1]'s queue after READY.
 */
#include "wl_common.h"
#include <sys/socket.h>
#include <poll.h>

#define QBYTES 5000
#define NMSG 7

static unsigned char pat(int stream, size_t i) { return (unsigned char)wl_mix((uint64_t)stream * 1000003 + i); }

static void fill(int fd, int id)
{
	unsigned char buf[QBYTES];
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = pat(id, i);
	if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf)
		wl_die("fill %d", id);
}

static void check_stream(int fd, int id, const char *what)
{
	unsigned char buf[QBYTES + 16];
	size_t have = 0;
	while (have < QBYTES) {
		ssize_t r = recv(fd, buf + have, sizeof(buf) - have, MSG_DONTWAIT);
		if (r <= 0) {
			wl_fail("%s: queue holds %zu bytes, want %d (r=%zd errno %d)", what, have, QBYTES, r, errno);
			return;
		}
		have += (size_t)r;
	}
	for (size_t i = 0; i < QBYTES; i++)
		if (buf[i] != pat(id, i)) {
			wl_fail("%s: byte %zu differs", what, i);
			return;
		}
	ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
	WL_CHECK(r < 0 && errno == EAGAIN, "%s: %zd extra bytes queued", what, r);
}

static void fill_seq(int fd, int id)
{
	for (int m = 0; m < NMSG; m++) {
		unsigned char buf[600];
		size_t len = 100 + (size_t)m * 71;
		for (size_t i = 0; i < len; i++)
			buf[i] = pat(id + m, i);
		if (send(fd, buf, len, 0) != (ssize_t)len)
			wl_die("seqpacket fill");
	}
}

static void check_seq(int fd, int id, const char *what)
{
	for (int m = 0; m < NMSG; m++) {
		unsigned char buf[2048];
		size_t len = 100 + (size_t)m * 71;
		ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
		if (r != (ssize_t)len) {
			wl_fail("%s: message %d has %zd bytes, want %zu", what, m, r, len);
			return;
		}
		for (size_t i = 0; i < len; i++)
			if (buf[i] != pat(id + m, i)) {
				wl_fail("%s: message %d byte %zu differs", what, m, i);
				return;
			}
	}
	unsigned char b[8];
	ssize_t r = recv(fd, b, sizeof b, MSG_DONTWAIT);
	WL_CHECK(r < 0 && errno == EAGAIN, "%s: extra message of %zd bytes", what, r);
}

/*
 * One ping-pong step: send our counter, receive the peer's; both must
 * follow.  prog: NULL for an uncounted step.  Returns 0 if the peer is gone
 * (EOF, or no answer within timeout_ms: -1 waits for ever).
 */
static int pingpong(int fd, uint64_t *sent, uint64_t *expect, struct wl_progress *prog, int timeout_ms)
{
	uint64_t v = (*sent)++;
	ssize_t w;
	while ((w = send(fd, &v, 8, MSG_NOSIGNAL)) < 0 && errno == EINTR)
		;
	if (w != 8) {
		if (!wl_term)
			wl_fail("%s: ping write errno %d", wl_role, errno);
		return 0;
	}
	uint64_t got;
	ssize_t r;
	for (;;) {
		struct pollfd pfd = { fd, POLLIN, 0 };
		int n = timeout_ms < 0 ? 1 : poll(&pfd, 1, timeout_ms);
		if (n == 0)
			return 0;
		r = n < 0 ? -1 : read(fd, &got, 8);
		if (r < 0 && errno == EINTR)
			continue; /* SIGTERM: the answer is still to come */
		break;
	}
	if (r != 8) {
		if (!wl_term)
			wl_fail("%s: ping read %zd errno %d", wl_role, r, errno);
		return 0;
	}
	if (got != *expect && wl_failures < 5)
		wl_fail("%s: ping got %llu want %llu", wl_role, (unsigned long long)got,
			(unsigned long long)*expect);
	*expect = got + 1;
	if (prog)
		wl_progress_tick(prog);
	return 1;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int a[2], b[2], x[2], p[2], sync[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a) || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, b) ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, x) || socketpair(AF_UNIX, SOCK_STREAM, 0, p) || pipe(sync))
		wl_die("socketpair");
	fill(a[0], 1);
	fill(a[1], 2);
	fill_seq(b[0], 10);
	fill_seq(b[1], 20);
	pid_t c = fork();
	if (c < 0)
		wl_die("fork");
	if (c == 0) {
		wl_child_init("c");
		signal(SIGPIPE, SIG_IGN);
		close(x[0]);
		close(p[0]);
		fill(x[1], 4);
		char one = 1;
		write(sync[1], &one, 1);
		uint64_t sent = 1000000, expect = 0;
		struct wl_progress prog;
		wl_progress_init(&prog);
		wl_drain_ns /= 2; /* SIGTERMed once the root has drained */
		while (wl_keep_going(prog.since_stall >= 5 || prog.stalls == 0)) {
			if (!pingpong(p[1], &sent, &expect, &prog, -1))
				break;
			usleep(2000);
		}
		check_stream(x[1], 3, "C: x[1] queue");
		WL_CHECK(prog.since_stall >= 5 || prog.stalls == 0, "C: only %llu pings after the stall",
			 (unsigned long long)prog.since_stall);
		wl_child_exit();
	}
	wl_record_pid("c", c, getpid());
	close(x[1]);
	close(p[1]);
	fill(x[0], 3);
	char one;
	if (read(sync[0], &one, 1) != 1)
		wl_die("sync");
	uint64_t sent = 0, expect = 1000000;
	struct wl_progress prog;
	wl_progress_init(&prog);
	int n = 0;
	while (wl_keep_going((prog.since_stall >= 5 || prog.stalls == 0) && sent > 50)) {
		if (!pingpong(p[0], &sent, &expect, &prog, -1))
			break;
		if (++n == 5)
			wl_ready();
		if (wl_is_ready && wl_sabotage && n == 6) {
			char z;
			recv(a[1], &z, 1, 0);
		}
		usleep(2000);
	}
	check_stream(a[1], 1, "root: a[1] queue");
	check_stream(a[0], 2, "root: a[0] queue");
	check_seq(b[1], 10, "root: b[1] messages");
	check_seq(b[0], 20, "root: b[0] messages");
	check_stream(x[0], 4, "root: x[0] queue");
	uint64_t pings = sent, since_stall = prog.since_stall;
	kill(c, SIGTERM);
	/* ping on while C drains: its checks need the ping-pong; C's exit ends it (EOF) */
	int64_t deadline = wl_now_ns() + wl_drain_ns / 2 + 1000000000LL;
	while (wl_now_ns() < deadline && pingpong(p[0], &sent, &expect, NULL, 1000))
		usleep(2000);
	close(p[0]);
	WL_CHECK(pings > 50, "root: only %llu pings", (unsigned long long)pings);
	WL_CHECK(since_stall >= 5 || prog.stalls == 0, "root: only %llu pings after the stall",
		 (unsigned long long)since_stall);
	wl_wait_child(c, "c", 10000);
	wl_finish();
}
