/*
 * unix_fan: one server and CRT_UNIX_CLIENTS (default 100) client processes
 * (its children), each connected to the server over an abstract stream
 * socket, with WL_QBYTES queued in each direction and nobody reading.  On
 * SIGTERM the server checks what each client sent, then terminates the
 * clients, which check what the server sent.  For the unix benchmark.
 * Sabotage: the server reads one byte of the first connection after READY.
 */
#include "wl_common.h"
#include <sys/socket.h>
#include <sys/un.h>
#include <stddef.h>

#define MAXC 1000

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	const char *e = getenv("CRT_UNIX_CLIENTS");
	int n = e ? atoi(e) : 100;
	if (n < 1 || n > MAXC)
		n = 100;
	struct sockaddr_un a;
	memset(&a, 0, sizeof a);
	a.sun_family = AF_UNIX;
	snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "crt-unix-fan-%d", (int)getpid());
	socklen_t al = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(a.sun_path + 1);
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&a, al) || listen(l, 128))
		wl_die("listen");
	static pid_t kids[MAXC];
	static int conns[MAXC];
	for (int i = 0; i < n; i++) {
		pid_t c = fork();
		if (c < 0)
			wl_die("fork");
		if (c == 0) {
			char role[32];
			snprintf(role, sizeof role, "c%d", i);
			wl_child_init(role);
			close(l);
			int s = socket(AF_UNIX, SOCK_STREAM, 0);
			if (s < 0 || connect(s, (struct sockaddr *)&a, al))
				wl_die("connect");
			wl_fill_pattern(s, 1000 + i);
			while (!wl_term)
				usleep(20000);
			WL_CHECK(wl_check_pattern(s, i), "client %d: bytes from the server differ", i);
			wl_child_exit();
		}
		kids[i] = c;
		wl_record_pid("client", c, getpid());
		conns[i] = accept(l, NULL, NULL);
		if (conns[i] < 0)
			wl_die("accept");
		wl_fill_pattern(conns[i], i);
	}
	wl_ready();
	if (wl_sabotage)
		recv(conns[0], (char[1]){ 0 }, 1, 0);
	while (!wl_term)
		usleep(20000);
	for (int i = 0; i < n; i++)
		WL_CHECK(wl_check_pattern(conns[i], 1000 + i), "server: bytes from client %d differ", i);
	for (int i = 0; i < n; i++)
		kill(kids[i], SIGTERM);
	for (int i = 0; i < n; i++)
		wl_wait_child(kids[i], "client", 10000);
	wl_finish();
}
