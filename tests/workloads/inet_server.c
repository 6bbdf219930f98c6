/*
 * inet_server: a TCP listener and a UDP socket on 127.0.0.1 (ephemeral
 * ports, written to <workdir>/ports as "TCP UDP"). It answers each TCP
 * connection's "ping" with "pong" and counts UDP datagrams. At SIGTERM it
 * passes only if it served at least one connection and one datagram (the
 * test sends them after restore) and the ports did not change.
 * The UDP socket has a classic BPF filter that cuts every datagram to 3
 * bytes (locked with SO_LOCK_FILTER): each datagram must arrive cut, and
 * the filter read back the same.  A second UDP socket, connected to the
 * first and shut for writing, must still refuse to send (EPIPE).
 * Sabotage: no filter is attached.
 */
#include "wl_common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <linux/filter.h>

static int bound(int type, uint16_t *port)
{
	int s = socket(AF_INET, type | SOCK_NONBLOCK, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t l = sizeof a;
	int one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || getsockname(s, (struct sockaddr *)&a, &l))
		wl_die("bind");
	*port = ntohs(a.sin_port);
	return s;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	uint16_t tp, up;
	int t = bound(SOCK_STREAM, &tp), u = bound(SOCK_DGRAM, &up);
	if (listen(t, 16))
		wl_die("listen");
	FILE *f = fopen(wl_path("ports"), "w");
	if (!f)
		wl_die("ports");
	fprintf(f, "%u %u\n", tp, up);
	fclose(f);
	/* UDP filters see the 8-byte UDP header first */
	struct sock_filter cut[] = {BPF_STMT(BPF_RET | BPF_K, 8 + 3)};
	struct sock_fprog prog = {.len = 1, .filter = cut};
	int one = 1;
	if (!wl_sabotage && (setsockopt(u, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) ||
			     setsockopt(u, SOL_SOCKET, SO_LOCK_FILTER, &one, sizeof one)))
		wl_die("filter");
	int shut = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in ua = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = htons(up)};
	if (shut < 0 || connect(shut, (struct sockaddr *)&ua, sizeof ua) || shutdown(shut, SHUT_WR))
		wl_die("shut UDP socket");
	int served = 0, datagrams = 0, uncut = 0;
	wl_ready();
	while (!wl_term) {
		int c = accept(t, NULL, NULL);
		if (c >= 0) {
			char b[8] = {0};
			for (int i = 0; i < 200 && recv(c, b, 4, MSG_DONTWAIT) != 4; i++)
				usleep(1000);
			if (!memcmp(b, "ping", 4) && send(c, "pong", 4, 0) == 4)
				served++;
			close(c);
		}
		char d[64];
		ssize_t n = recv(u, d, sizeof d, 0);
		if (n > 0)
			datagrams++;
		if (n > 3)
			uncut++;
		usleep(2000);
	}
	struct sockaddr_in a;
	socklen_t l = sizeof a;
	WL_CHECK(getsockname(t, (struct sockaddr *)&a, &l) == 0 && ntohs(a.sin_port) == tp, "TCP port changed");
	WL_CHECK(served >= 1, "served %d connections", served);
	WL_CHECK(datagrams >= 1, "got %d datagrams", datagrams);
	WL_CHECK(uncut == 0, "%d datagrams passed the filter uncut", uncut);
	struct sock_filter back[4];
	socklen_t bl = 4;
	WL_CHECK(getsockopt(u, SOL_SOCKET, SO_GET_FILTER, back, &bl) == 0 && bl == 1 &&
			 back[0].code == cut[0].code && back[0].k == 8 + 3,
		 "the filter read back is not the one attached (%u instructions)", bl);
	int locked = 0;
	socklen_t ll = sizeof locked;
	WL_CHECK(getsockopt(u, SOL_SOCKET, SO_LOCK_FILTER, &locked, &ll) == 0 && locked, "the filter is not locked");
	WL_CHECK(send(shut, "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "a UDP socket shut for writing sends again");
	wl_finish();
}
