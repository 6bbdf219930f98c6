/*
 * tcp_fan: a launcher.  A server S and a client C, two separate roots, with
 * CRT_TCP_CONNS (default 100, at most 1000) TCP connections between them
 * on 127.0.0.1, WL_QBYTES queued unread in each direction of each.  At SIGTERM
 * each side checks the bytes of every connection, then sends one byte on
 * each (the connections still work).  For the
 * TCP benchmark and the many-connections test.
 * Sabotage: S reads one byte of the first connection after READY.
 */
#include "wl_common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>

#define MAXC 1000

static int n;
static int conns[MAXC];

/* Checks what the other side queued, then that each connection still sends. */
static void side(const char *who, int base_in)
{
	wl_ready();
	if (wl_sabotage && who[0] == 'S')
		recv(conns[0], (char[1]){0}, 1, 0);
	while (!wl_term)
		usleep(20000);
	int bad = 0;
	for (int i = 0; i < n; i++)
		if (!wl_check_pattern(conns[i], base_in + i) && bad++ < 3)
			wl_fail("%s: bytes of connection %d differ", who, i);
	for (int i = 0; i < n; i++)
		if (send(conns[i], "!", 1, MSG_NOSIGNAL) != 1 && bad++ < 3)
			wl_fail("%s: connection %d cannot send: errno %d", who, i, errno);
	wl_finish();
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	const char *root_dir = argv[1];
	const char *e = getenv("CRT_TCP_CONNS");
	n = e ? atoi(e) : 100;
	if (n < 1 || n > MAXC)
		n = 100;
	/* CRT_TCP_NOFILE: a tighter fd limit (each side's fds nearly fill it) */
	const char *nf = getenv("CRT_TCP_NOFILE");
	rlim_t lim = nf ? (rlim_t)atoi(nf) : MAXC + 64;
	struct rlimit rl = {lim, lim};
	setrlimit(RLIMIT_NOFILE, &rl);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof a;
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 128) ||
	    getsockname(l, (struct sockaddr *)&a, &al))
		wl_die("listen");
	pid_t s = fork();
	if (s < 0)
		wl_die("fork S");
	if (s == 0) {
		wl_launch_role("s", root_dir, "S");
		for (int i = 0; i < n; i++) {
			conns[i] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
			if (conns[i] < 0)
				wl_die("accept");
			wl_fill_pattern(conns[i], i);
		}
		close(l);
		side("S", 1000);
	}
	pid_t c = fork();
	if (c < 0)
		wl_die("fork C");
	if (c == 0) {
		wl_launch_role("c", root_dir, "C");
		close(l);
		for (int i = 0; i < n; i++) {
			conns[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
			if (conns[i] < 0 || connect(conns[i], (struct sockaddr *)&a, sizeof a))
				wl_die("connect %d", i);
			wl_fill_pattern(conns[i], 1000 + i);
		}
		side("C", 0);
	}
	wl_printf("LAUNCHED s=%d c=%d\n", (int)s, (int)c);
	return 0;
}
