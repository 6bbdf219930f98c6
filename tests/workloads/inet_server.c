/*
 * inet_server: a TCP listener and a UDP socket on 127.0.0.1 (ephemeral
 * ports, written to <workdir>/ports as "TCP UDP"). It answers each TCP
 * connection's "ping" with "pong" and counts UDP datagrams. At SIGTERM it
 * passes only if it served at least one connection and one datagram (the
 * test sends them after restore) and the ports did not change.
 */
#include "wl_common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

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
	int served = 0, datagrams = 0;
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
		if (recv(u, d, sizeof d, 0) > 0)
			datagrams++;
		usleep(2000);
	}
	struct sockaddr_in a;
	socklen_t l = sizeof a;
	WL_CHECK(getsockname(t, (struct sockaddr *)&a, &l) == 0 && ntohs(a.sin_port) == tp, "TCP port changed");
	WL_CHECK(served >= 1, "served %d connections", served);
	WL_CHECK(datagrams >= 1, "got %d datagrams", datagrams);
	wl_finish();
}
