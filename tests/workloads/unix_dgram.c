/*
 * unix_dgram: datagram sockets with datagrams queued.  A connected
 * socketpair D with datagrams queued both ways (one of them empty), and an
 * unconnected receiver R bound to <workdir>/r.sock holding datagrams from
 * an unbound sender, an abstract-bound sender and a sender K connected to
 * R.  Nobody reads before SIGTERM, except that every 10 ms D and K send one
 * more datagram each way... no: they send nothing more until after a stall
 * (the dump/restore gap) or SIGTERM, then one round trip over D and one
 * datagram K->R must work.  On SIGTERM every datagram must come back in
 * order with its exact length and bytes.
 * Sabotage: reads one datagram from R after READY.
 */
#include "wl_common.h"
#include <sys/socket.h>
#include <sys/un.h>
#include <stddef.h>

static unsigned char pat(int id, size_t i) { return (unsigned char)wl_mix((uint64_t)id * 104729 + i); }

static void sendp(int fd, int id, size_t len, const struct sockaddr_un *to, socklen_t tl)
{
	unsigned char buf[4096];
	for (size_t i = 0; i < len; i++)
		buf[i] = pat(id, i);
	if (sendto(fd, buf, len, 0, (const struct sockaddr *)to, tl) != (ssize_t)len)
		wl_die("send %d", id);
}

/* Datagram `id` must come from the socket named `from` (`fl` bytes of address). */
static void expect_from(int fd, int id, size_t len, const struct sockaddr_un *from, socklen_t fl)
{
	unsigned char buf[8192];
	struct sockaddr_un a;
	socklen_t al = sizeof a;
	memset(&a, 0, sizeof a);
	ssize_t r = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&a, &al);
	WL_CHECK(r == (ssize_t)len, "R: datagram %d has %zd bytes, want %zu", id, r, len);
	WL_CHECK(al == fl && memcmp(a.sun_path, from->sun_path, fl - offsetof(struct sockaddr_un, sun_path)) == 0,
		 "R: datagram %d lost its sender's address (got %u bytes of address)", id, (unsigned)al);
}

static void expectp(int fd, int id, size_t len, const char *what)
{
	unsigned char buf[8192];
	ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
	if (r != (ssize_t)len) {
		wl_fail("%s: datagram %d has %zd bytes (errno %d), want %zu", what, id, r, errno, len);
		return;
	}
	for (size_t i = 0; i < len; i++)
		if (buf[i] != pat(id, i)) {
			wl_fail("%s: datagram %d byte %zu differs", what, id, i);
			return;
		}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int d[2];
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, d))
		wl_die("socketpair");
	sendp(d[0], 1, 10, NULL, 0);
	sendp(d[0], 2, 0, NULL, 0);
	sendp(d[0], 3, 3000, NULL, 0);
	sendp(d[1], 4, 77, NULL, 0);
	sendp(d[1], 5, 1500, NULL, 0);
	struct sockaddr_un ra, na;
	memset(&ra, 0, sizeof ra);
	ra.sun_family = AF_UNIX;
	snprintf(ra.sun_path, sizeof ra.sun_path, "%s/r.sock", wl_dir);
	unlink(ra.sun_path);
	int r = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (r < 0 || bind(r, (struct sockaddr *)&ra, sizeof ra))
		wl_die("bind R");
	memset(&na, 0, sizeof na);
	na.sun_family = AF_UNIX;
	snprintf(na.sun_path + 1, sizeof na.sun_path - 1, "crt-dgram-%d", (int)getpid());
	socklen_t nl = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(na.sun_path + 1);
	int u = socket(AF_UNIX, SOCK_DGRAM, 0), n = socket(AF_UNIX, SOCK_DGRAM, 0), k = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (u < 0 || n < 0 || k < 0 || bind(n, (struct sockaddr *)&na, nl) || connect(k, (struct sockaddr *)&ra, sizeof ra))
		wl_die("senders");
	sendp(u, 10, 100, &ra, sizeof ra);
	sendp(n, 11, 200, &ra, sizeof ra);
	sendp(k, 12, 300, NULL, 0);
	sendp(u, 13, 2500, &ra, sizeof ra);
	sendp(k, 14, 1, NULL, 0);
	struct wl_progress prog;
	wl_progress_init(&prog);
	wl_ready();
	if (wl_sabotage)
		recv(r, (char[8]){ 0 }, 8, 0);
	int after = 0;
	while (!wl_term) {
		wl_progress_tick(&prog);
		usleep(10000);
	}
	after = prog.stalls > 0;
	wl_printf("INFO stalls=%llu\n", (unsigned long long)prog.stalls);
	expectp(d[1], 1, 10, "D[1]");
	expectp(d[1], 2, 0, "D[1]");
	expectp(d[1], 3, 3000, "D[1]");
	expectp(d[0], 4, 77, "D[0]");
	expectp(d[0], 5, 1500, "D[0]");
	expectp(r, 10, 100, "R");
	expect_from(r, 11, 200, &na, nl);
	expectp(r, 12, 300, "R");
	expectp(r, 13, 2500, "R");
	expectp(r, 14, 1, "R");
	char b[8];
	WL_CHECK(recv(r, b, sizeof b, MSG_DONTWAIT) < 0 && errno == EAGAIN, "R: extra datagram");
	WL_CHECK(recv(d[0], b, sizeof b, MSG_DONTWAIT) < 0 && errno == EAGAIN, "D[0]: extra datagram");
	/* still connected and working */
	sendp(d[0], 20, 50, NULL, 0);
	expectp(d[1], 20, 50, "D after");
	sendp(d[1], 21, 60, NULL, 0);
	expectp(d[0], 21, 60, "D after");
	sendp(k, 22, 70, NULL, 0);
	expectp(r, 22, 70, "R after");
	sendp(n, 23, 80, &ra, sizeof ra);
	expectp(r, 23, 80, "R after");
	(void)after;
	wl_finish();
}
