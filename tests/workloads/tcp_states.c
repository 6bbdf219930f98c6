/*
 * tcp_states: TCP connections on 127.0.0.1 (both ends in this process)
 * left in the states a half-closed connection sits in:
 *   1. a1 sent "half-closed" and shut for writing: a1 FIN_WAIT2, b1
 *      CLOSE_WAIT with the bytes unread;
 *   2. a2 filled b2's receive queue and its own send queue, then shut for
 *      writing: the FIN waits behind bytes never sent (a2 FIN_WAIT1);
 *   3. a3 shut for reading (SHUT_RD), established otherwise.
 * At SIGTERM it checks, from inside: the states (TCP_INFO), that b1 reads
 * the bytes and then EOF and can still answer (a1 reads "back", then a1's
 * write fails with EPIPE); that b2 reads every byte of the pattern, then
 * EOF; that a3 reads EOF at once and can still send to b3.
 * Sabotage: b2 reads one byte before READY (lost: b2 comes up short).
 */
#include "wl_common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

static void pair(int l, struct sockaddr_in *a, int *c, int *s)
{
	*c = socket(AF_INET, SOCK_STREAM, 0);
	if (*c < 0 || connect(*c, (struct sockaddr *)a, sizeof *a))
		wl_die("connect");
	*s = accept(l, NULL, NULL);
	if (*s < 0)
		wl_die("accept");
}

static int state(int fd)
{
	struct tcp_info ti;
	socklen_t l = sizeof ti;
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l))
		return -1;
	return ti.tcpi_state;
}

/* Reads until EOF (or a 5 s pause); returns the bytes read, checks the pattern. */
static long drain(int fd, long start, const char *who)
{
	long n = 0;
	unsigned char buf[4096];
	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 5000) != 1) {
			wl_fail("%s: no EOF within 5 s after %ld bytes", who, n);
			return n;
		}
		ssize_t r = recv(fd, buf, sizeof buf, 0);
		if (r <= 0)
			return r < 0 ? -1 : n;
		for (ssize_t i = 0; i < r; i++)
			if (buf[i] != (unsigned char)((start + n + i) % 251) && wl_failures < 3)
				wl_fail("%s: byte %ld is %u, want %ld", who, start + n + i, buf[i], (start + n + i) % 251);
		n += r;
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof a;
	int l = socket(AF_INET, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 8) ||
	    getsockname(l, (struct sockaddr *)&a, &al))
		wl_die("listen");
	int a1, b1, a2, b2, a3, b3;
	pair(l, &a, &a1, &b1);
	pair(l, &a, &a2, &b2);
	pair(l, &a, &a3, &b3);

	const char *msg = "half-closed";
	if (send(a1, msg, strlen(msg), 0) != (ssize_t)strlen(msg) || shutdown(a1, SHUT_WR))
		wl_die("pair 1");

	long sent = 0;
	unsigned char buf[4096];
	for (int idle = 0; idle < 20;) {
		for (size_t i = 0; i < sizeof buf; i++)
			buf[i] = (unsigned char)((sent + (long)i) % 251);
		ssize_t w = send(a2, buf, sizeof buf, MSG_DONTWAIT);
		if (w > 0) {
			sent += w;
			idle = 0;
		} else {
			idle++;
			usleep(5000);
		}
	}
	if (shutdown(a2, SHUT_WR))
		wl_die("pair 2");
	if (wl_sabotage && recv(b2, buf, 1, 0) != 1)
		wl_die("sabotage");

	if (shutdown(a3, SHUT_RD))
		wl_die("pair 3");

	usleep(50000);
	wl_printf("INFO states a1=%d b1=%d a2=%d sent=%ld\n", state(a1), state(b1), state(a2), sent);
	wl_ready();
	while (!wl_term)
		usleep(5000);

	WL_CHECK(state(a1) == TCP_FIN_WAIT2, "a1 is in state %d, want FIN_WAIT2", state(a1));
	WL_CHECK(state(b1) == TCP_CLOSE_WAIT, "b1 is in state %d, want CLOSE_WAIT", state(b1));
	WL_CHECK(state(a2) == TCP_FIN_WAIT1, "a2 is in state %d, want FIN_WAIT1", state(a2));
	char got[32] = {0};
	ssize_t r = recv(b1, got, sizeof got - 1, 0);
	WL_CHECK(r == (ssize_t)strlen(msg) && !strcmp(got, msg), "b1 read %zd bytes '%s'", r, got);
	WL_CHECK(recv(b1, got, 1, 0) == 0, "b1 does not read EOF after the bytes");
	WL_CHECK(send(b1, "back", 4, 0) == 4, "b1 cannot answer: errno %d", errno);
	memset(got, 0, sizeof got);
	r = recv(a1, got, 4, MSG_WAITALL);
	WL_CHECK(r == 4 && !memcmp(got, "back", 4), "a1 read %zd bytes '%s'", r, got);
	WL_CHECK(send(a1, "x", 1, 0) < 0 && errno == EPIPE, "a1 can write after its shutdown");

	long n = drain(b2, 0, "b2");
	WL_CHECK(n == sent, "b2 read %ld bytes then EOF, a2 sent %ld", n, sent);

	WL_CHECK(recv(a3, got, 1, MSG_DONTWAIT) == 0, "a3 (SHUT_RD) does not read EOF");
	WL_CHECK(send(a3, "y", 1, 0) == 1, "a3 cannot send: errno %d", errno);
	WL_CHECK(recv(b3, got, 1, MSG_WAITALL) == 1 && got[0] == 'y', "b3 did not get a3's byte");
	wl_finish();
}
