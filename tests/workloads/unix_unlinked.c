/*
 * unix_unlinked: a stream listener bound to <workdir>/gone.sock, a client
 * connected to it and accepted, then the path is unlinked. The pair keeps
 * exchanging sequence numbers. After restore the path must still not exist
 * (crt restores such a socket without a visible path), the connection goes
 * on with no gap, and the listener still answers getsockname with its name.
 * Sabotage: re-creates a file at the path.
 */
#include "wl_common.h"
#include <sys/socket.h>
#include <sys/un.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	struct sockaddr_un a;
	memset(&a, 0, sizeof a);
	a.sun_family = AF_UNIX;
	snprintf(a.sun_path, sizeof a.sun_path, "%s/gone.sock", wl_dir);
	int l = socket(AF_UNIX, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 4))
		wl_die("listen");
	int c = socket(AF_UNIX, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a))
		wl_die("connect");
	int s = accept(l, NULL, NULL);
	if (s < 0)
		wl_die("accept");
	if (unlink(a.sun_path))
		wl_die("unlink");
	uint64_t sent = 0, got = 0, at_ready = 0;
	wl_ready();
	while (!wl_term) {
		if (write(c, &sent, sizeof sent) == sizeof sent)
			sent++;
		uint64_t v;
		if (read(s, &v, sizeof v) == sizeof v) {
			WL_CHECK(v == got, "got %llu, expected %llu", (unsigned long long)v, (unsigned long long)got);
			got = v + 1;
		}
		if (got == 20)
			at_ready = got;
		if (wl_sabotage && got == 40) {
			int f = open(a.sun_path, O_CREAT | O_WRONLY, 0600);
			close(f);
		}
		usleep(2000);
	}
	struct stat st;
	WL_CHECK(stat(a.sun_path, &st) != 0 && errno == ENOENT, "%s exists again", a.sun_path);
	struct sockaddr_un n;
	socklen_t len = sizeof n;
	memset(&n, 0, sizeof n);
	WL_CHECK(getsockname(l, (struct sockaddr *)&n, &len) == 0 && strcmp(n.sun_path, a.sun_path) == 0,
		 "listener name is '%s'", n.sun_path);
	WL_CHECK(got > at_ready + 20, "only %llu messages after READY", (unsigned long long)(got - at_ready));
	wl_finish();
}
