/*
 * unix_backlog: a pathname listener (socket file mode 0600) with two
 * connections queued but not accepted, one accepted connection with
 * KiB queued both ways, a half-shut connection (SHUT_WR after 3000 bytes)
 * and a connection whose peer closed after writing 2000 bytes, all in one
 * process.  After READY it accepts nothing until it notices a stall (the
 * dump/restore gap) or gets SIGTERM; then both pending connections must be
 * accepted in order (a third accept finds none) and work both ways.  On
 * SIGTERM it also checks the queued bytes, the half-shut state (reads the
 * 3000 bytes then EOF, can still write back), the closed peer (2000 bytes,
 * EOF, EPIPE) and the socket file's mode.
 * Sabotage: accepts one pending connection right after READY.
 */
#include "wl_common.h"
#include <sys/socket.h>
#include <sys/un.h>

static unsigned char pat(int id, size_t i) { return (unsigned char)wl_mix((uint64_t)id * 7919 + i); }

static void fill(int fd, int id, size_t n)
{
	unsigned char buf[8192];
	for (size_t i = 0; i < n; i++)
		buf[i] = pat(id, i);
	if (write(fd, buf, n) != (ssize_t)n)
		wl_die("fill %d", id);
}

static void expect_bytes(int fd, int id, size_t n, const char *what)
{
	unsigned char buf[8192];
	size_t have = 0;
	while (have < n) {
		ssize_t r = recv(fd, buf + have, n - have, MSG_DONTWAIT);
		if (r <= 0) {
			wl_fail("%s: %zu bytes, want %zu (r=%zd errno %d)", what, have, n, r, errno);
			return;
		}
		have += (size_t)r;
	}
	for (size_t i = 0; i < n; i++)
		if (buf[i] != pat(id, i)) {
			wl_fail("%s: byte %zu differs", what, i);
			return;
		}
}

static int accepted[3], naccepted;

static void accept_pending(int l, int *cl)
{
	for (;;) {
		int a = accept4(l, NULL, NULL, SOCK_NONBLOCK);
		if (a < 0)
			break;
		if (naccepted < 3)
			accepted[naccepted] = a;
		naccepted++;
	}
	WL_CHECK(errno == EAGAIN, "accept: errno %d", errno);
	for (int i = 0; i < naccepted && i < 2; i++) {
		char msg[16];
		snprintf(msg, sizeof msg, "hello-%d", i);
		if (write(accepted[i], msg, 8) != 8)
			wl_fail("write to accepted %d", i);
		char got[16] = { 0 };
		ssize_t r = recv(cl[i], got, sizeof got, MSG_DONTWAIT);
		WL_CHECK(r == 8 && memcmp(got, msg, 8) == 0, "pending client %d got %zd bytes '%.8s' (order?)", i, r, got);
		if (write(cl[i], "back", 4) != 4)
			wl_fail("client %d write back", i);
		r = recv(accepted[i], got, sizeof got, MSG_DONTWAIT);
		WL_CHECK(r == 4, "accepted %d: reply %zd", i, r);
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	struct sockaddr_un a;
	memset(&a, 0, sizeof a);
	a.sun_family = AF_UNIX;
	snprintf(a.sun_path, sizeof a.sun_path, "%s/listen.sock", wl_dir);
	unlink(a.sun_path);
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || chmod(a.sun_path, 0600) || listen(l, 8))
		wl_die("listener");
	int e = socket(AF_UNIX, SOCK_STREAM, 0);
	if (connect(e, (struct sockaddr *)&a, sizeof a))
		wl_die("connect e");
	int se = accept(l, NULL, NULL);
	if (se < 0)
		wl_die("accept e");
	fill(e, 1, 6000);
	fill(se, 2, 7000);
	int cl[2];
	for (int i = 0; i < 2; i++) {
		cl[i] = socket(AF_UNIX, SOCK_STREAM, 0);
		if (cl[i] < 0 || connect(cl[i], (struct sockaddr *)&a, sizeof a))
			wl_die("connect pending %d", i);
	}
	int hs[2], pc[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, hs) || socketpair(AF_UNIX, SOCK_STREAM, 0, pc))
		wl_die("socketpair");
	fill(hs[0], 3, 3000);
	shutdown(hs[0], SHUT_WR);
	fill(pc[0], 4, 2000);
	close(pc[0]);
	struct wl_progress prog;
	wl_progress_init(&prog);
	wl_ready();
	if (wl_sabotage)
		close(accept(l, NULL, NULL));
	while (!wl_term) {
		wl_progress_tick(&prog);
		if (prog.stalls > 0 && naccepted == 0)
			accept_pending(l, cl);
		usleep(10000);
	}
	if (naccepted == 0)
		accept_pending(l, cl);
	wl_printf("INFO accepted=%d stalls=%llu\n", naccepted, (unsigned long long)prog.stalls);
	WL_CHECK(naccepted == 2, "accepted %d pending connections, want 2", naccepted);
	expect_bytes(se, 1, 6000, "accepted e: queue");
	expect_bytes(e, 2, 7000, "client e: queue");
	expect_bytes(hs[1], 3, 3000, "half-shut: queue");
	char b[8];
	ssize_t r = recv(hs[1], b, sizeof b, MSG_DONTWAIT);
	WL_CHECK(r == 0, "half-shut: after the bytes recv gives %zd (errno %d), want EOF", r, errno);
	WL_CHECK(write(hs[1], "up", 2) == 2, "half-shut: writing back: errno %d", errno);
	r = recv(hs[0], b, sizeof b, MSG_DONTWAIT);
	WL_CHECK(r == 2, "half-shut: the shut side reads %zd, want 2", r);
	WL_CHECK(write(hs[0], "x", 1) < 0 && errno == EPIPE, "half-shut: the shut side can still write");
	expect_bytes(pc[1], 4, 2000, "peer closed: queue");
	r = recv(pc[1], b, sizeof b, MSG_DONTWAIT);
	WL_CHECK(r == 0, "peer closed: recv gives %zd (errno %d), want EOF", r, errno);
	WL_CHECK(write(pc[1], "x", 1) < 0 && errno == EPIPE, "peer closed: write did not fail with EPIPE");
	struct stat st;
	WL_CHECK(stat(a.sun_path, &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 07777) == 0600,
		 "socket file %s: mode %o", a.sun_path, st.st_mode);
	int again = socket(AF_UNIX, SOCK_STREAM, 0);
	WL_CHECK(connect(again, (struct sockaddr *)&a, sizeof a) == 0, "connect to the listener after: errno %d", errno);
	wl_finish();
}
