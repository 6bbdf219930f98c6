/*
 * stream_link: a launcher.  It creates a listening socket, forks a
 * server S (which accepts one connection and keeps the listener open) and
 * a client C (which connects), and exits, so S and C are re-parented to
 * the harness as two separate roots joined by the connection.  Each works
 * in argv[1]/s or argv[1]/c with its own out.log and pid file.
 *
 * CRT_UNIX_KIND selects the socket: "path" (unix stream, pathname-bound in
 * argv[1]/s/sock; default), "abstract" (unix stream, abstract name),
 * "seqpacket" (pathname-bound SOCK_SEQPACKET), "tcp4" (TCP on 127.0.0.1),
 * "tcp6" (TCP on ::1) or "tcp4v6" (an IPv6 listener on :: and an IPv4
 * client: the server's end is IPv6 with v4-mapped addresses).  TCP sockets
 * get TCP_NODELAY, keepalive settings and a linger time, checked after the
 * restore.
 *
 * Both sides send batches of BATCH sequence numbers (u64) with
 * non-blocking writes, twice as fast as they read, so the queues in both
 * directions fill (hundreds of KiB in flight).  Each checks the sequence it
 * receives continues with no gap or duplicate (seqpacket: every message is
 * exactly one batch).  After SIGTERM each goes on (wl_keep_going) until it
 * has made the progress its checks need, then verifies it made progress
 * after READY and after the last stall, and that kilobytes were queued.
 * The queues are full, so a side whose peer ended first still has hundreds
 * of KiB to read (and count).
 * When the peer goes away, a side reads what it left (a seqpacket socket
 * reports ECONNRESET first, then the messages queued), and at EOF stops,
 * tries one more write (must fail with EPIPE) and reports "eof=1 epipe=1".
 * CRT_UNIX_PEER_MAY_GO=1: only the sequence is checked (for tests where the
 * peer is left outside the dump).
 * Sabotage: C skips one sequence number (S must notice the gap); over
 * TCP it also changes its TCP_KEEPCNT (C must notice).
 */
#include "wl_common.h"
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>

#define BATCH 64
#define MSG (BATCH * 8)
#define R_MARGIN 200
#define AFTER_STALL_MIN 5
#define MIN_BUFFERED 4096

static int seqpacket, may_go, tcp_kind;

/* TCP options set on both ends, checked again at the end. */
static void tcp_opts(int fd, int check)
{
	int vals[][3] = {{IPPROTO_TCP, TCP_NODELAY, 1},  {SOL_SOCKET, SO_KEEPALIVE, 1},
			 {IPPROTO_TCP, TCP_KEEPIDLE, 77}, {IPPROTO_TCP, TCP_KEEPINTVL, 9},
			 {IPPROTO_TCP, TCP_KEEPCNT, 5},   {IPPROTO_TCP, TCP_USER_TIMEOUT, 30000}};
	for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
		int v = 0;
		socklen_t l = sizeof v;
		if (!check && setsockopt(fd, vals[i][0], vals[i][1], &vals[i][2], sizeof(int)))
			wl_die("setsockopt %d", vals[i][1]);
		if (check && (getsockopt(fd, vals[i][0], vals[i][1], &v, &l) || v != vals[i][2]))
			wl_fail("option %d is %d, want %d", vals[i][1], v, vals[i][2]);
	}
	struct linger lg = {1, 1}, got = {0, 0};
	socklen_t l = sizeof got;
	if (!check && setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg))
		wl_die("SO_LINGER");
	if (check && (getsockopt(fd, SOL_SOCKET, SO_LINGER, &got, &l) || got.l_onoff != 1 || got.l_linger != 1))
		wl_fail("SO_LINGER is %d/%d", got.l_onoff, got.l_linger);
}

static void run(const char *who, int fd)
{
	signal(SIGPIPE, SIG_IGN);
	int fl = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	uint64_t out_seq = 0, expect = 0, got = 0, ready_got = 0;
	unsigned char obuf[MSG], ibuf[MSG * 2];
	size_t opos = MSG, ihave = 0; /* opos == MSG: nothing pending */
	int max_buffered = 0, eof = 0, epipe = 0, reset = 0, iter = 0;
	struct wl_progress prog;
	wl_progress_init(&prog);
	while (!eof && wl_keep_going(may_go || (got >= ready_got + R_MARGIN &&
						prog.since_stall >= AFTER_STALL_MIN &&
						max_buffered >= MIN_BUFFERED))) {
		iter++;
		if (opos == MSG) {
			for (int i = 0; i < BATCH; i++) {
				if (wl_sabotage && who[0] == 'C' && out_seq == 3000) {
					out_seq++;
					int three = 3;
					if (tcp_kind)
						setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &three, sizeof three);
				}
				uint64_t v = out_seq++;
				memcpy(obuf + i * 8, &v, 8);
			}
			opos = 0;
		}
		ssize_t w = send(fd, obuf + opos, MSG - opos, MSG_DONTWAIT);
		if (w > 0)
			opos += (size_t)w;
		else if (w < 0 && errno != EAGAIN && errno != EINTR) {
			if (errno == EPIPE || errno == ECONNRESET)
				epipe = 1; /* the peer is gone (with unread bytes: ECONNRESET) */
			else
				wl_fail("%s: send errno %d", who, errno);
		}
		int avail = 0;
		if (ioctl(fd, FIONREAD, &avail) == 0 && avail > max_buffered)
			max_buffered = avail;
		if (iter % 2 && !epipe)
			goto sleep;
		/* once the peer is gone, drain what it left quickly */
		ssize_t r = recv(fd, ibuf + ihave, seqpacket || epipe ? sizeof(ibuf) - ihave : MSG / 2, MSG_DONTWAIT);
		if (r < 0 && errno == ECONNRESET && !reset) {
			/* the peer closed with bytes unread; what it sent may still be queued */
			reset = 1;
			goto sleep;
		}
		if (r < 0 && errno == ECONNRESET) {
			eof = 1;
			break;
		}
		if (r < 0) {
			if (errno != EAGAIN && errno != EINTR)
				wl_fail("%s: recv errno %d", who, errno);
			goto sleep;
		}
		if (r == 0) {
			eof = 1;
			break;
		}
		if (seqpacket && r != MSG && wl_failures < 5)
			wl_fail("%s: seqpacket message of %zd bytes, want %d", who, r, MSG);
		ihave += (size_t)r;
		size_t n = ihave / 8;
		for (size_t i = 0; i < n; i++) {
			uint64_t v;
			memcpy(&v, ibuf + i * 8, 8);
			if (v != expect && wl_failures < 5)
				wl_fail("%s: got seq %llu, want %llu (%s)", who, (unsigned long long)v,
					(unsigned long long)expect, v > expect ? "gap" : "duplicate");
			expect = v + 1;
			got++;
		}
		memmove(ibuf, ibuf + n * 8, ihave - n * 8);
		ihave -= n * 8;
		wl_progress_tick(&prog);
		if (!wl_is_ready && got > 2000 && max_buffered >= MIN_BUFFERED) {
			ready_got = got;
			wl_ready();
		}
	sleep:
		usleep(1000);
	}
	if (eof) {
		fcntl(fd, F_SETFL, fl);
		ssize_t w = send(fd, "x", 1, MSG_NOSIGNAL);
		epipe = w < 0 && errno == EPIPE;
	}
	while (!wl_term)
		usleep(5000);
	wl_printf("INFO %s: got=%llu ready=%llu stalls=%llu since_stall=%llu max_buffered=%d eof=%d epipe=%d\n",
		  who, (unsigned long long)got, (unsigned long long)ready_got, (unsigned long long)prog.stalls,
		  (unsigned long long)prog.since_stall, max_buffered, eof, epipe);
	if (!may_go) {
		WL_CHECK(got >= ready_got + R_MARGIN, "%s: only %llu numbers since READY", who,
			 (unsigned long long)(got - ready_got));
		WL_CHECK(prog.since_stall >= AFTER_STALL_MIN, "%s: only %llu reads after the last stall", who,
			 (unsigned long long)prog.since_stall);
	}
	WL_CHECK(max_buffered >= MIN_BUFFERED, "%s: at most %d bytes were ever queued", who, max_buffered);
	if (tcp_kind && !eof)
		tcp_opts(fd, 1);
	wl_finish();
}

/* Forks S (accepts one connection on listener l) and C (connects to
 * `to`), each running the exchange, and exits. */
static void launch(const char *root_dir, int l, struct sockaddr *to, socklen_t tl, int type)
{
	pid_t s = fork();
	if (s < 0)
		wl_die("fork S");
	if (s == 0) {
		wl_launch_role("s", root_dir, "S");
		int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			wl_die("accept");
		if (tcp_kind)
			tcp_opts(c, 0);
		run("S", c);
	}
	close(l);
	pid_t c = fork();
	if (c < 0)
		wl_die("fork C");
	if (c == 0) {
		wl_launch_role("c", root_dir, "C");
		int fd = socket(to->sa_family, type | SOCK_CLOEXEC, 0);
		if (fd < 0 || connect(fd, to, tl) != 0)
			wl_die("connect");
		if (tcp_kind)
			tcp_opts(fd, 0);
		run("C", fd);
	}
	wl_printf("LAUNCHED s=%d c=%d\n", (int)s, (int)c);
	exit(0);
}

static void tcp_link(const char *root_dir, const char *kind)
{
	int v6l = strcmp(kind, "tcp4") != 0, v6c = strcmp(kind, "tcp6") == 0;
	struct sockaddr_storage ss;
	socklen_t sl = v6l ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
	memset(&ss, 0, sizeof ss);
	if (v6l) {
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
		a6->sin6_family = AF_INET6;
		a6->sin6_addr = v6c ? in6addr_loopback : in6addr_any;
	} else {
		struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
		a4->sin_family = AF_INET;
		a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	}
	int l = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), zero = 0;
	if (v6l && setsockopt(l, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero))
		wl_die("IPV6_V6ONLY");
	if (l < 0 || bind(l, (struct sockaddr *)&ss, sl) || listen(l, 4) || getsockname(l, (struct sockaddr *)&ss, &sl))
		wl_die("listen on %s", kind);
	uint16_t port = ntohs(v6l ? ((struct sockaddr_in6 *)&ss)->sin6_port : ((struct sockaddr_in *)&ss)->sin_port);
	struct sockaddr_storage to;
	memset(&to, 0, sizeof to);
	socklen_t tl;
	if (v6c) {
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&to;
		a6->sin6_family = AF_INET6;
		a6->sin6_addr = in6addr_loopback;
		a6->sin6_port = htons(port);
		tl = sizeof *a6;
	} else {
		struct sockaddr_in *a4 = (struct sockaddr_in *)&to;
		a4->sin_family = AF_INET;
		a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		a4->sin_port = htons(port);
		tl = sizeof *a4;
	}
	launch(root_dir, l, (struct sockaddr *)&to, tl, SOCK_STREAM);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	const char *root_dir = argv[1];
	const char *kind = getenv("CRT_UNIX_KIND");
	if (!kind)
		kind = "path";
	seqpacket = strcmp(kind, "seqpacket") == 0;
	const char *mg = getenv("CRT_UNIX_PEER_MAY_GO");
	may_go = mg && strcmp(mg, "1") == 0;
	if (strncmp(kind, "tcp", 3) == 0) {
		tcp_kind = 1;
		tcp_link(root_dir, kind);
	}
	struct sockaddr_un a;
	memset(&a, 0, sizeof a);
	a.sun_family = AF_UNIX;
	socklen_t alen;
	if (strcmp(kind, "abstract") == 0) {
		snprintf(a.sun_path + 1, sizeof(a.sun_path) - 1, "crt-unix-link-%d", (int)getpid());
		alen = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(a.sun_path + 1);
	} else {
		snprintf(a.sun_path, sizeof(a.sun_path), "%s/sock", root_dir);
		unlink(a.sun_path);
		alen = sizeof a;
	}
	int type = seqpacket ? SOCK_SEQPACKET : SOCK_STREAM;
	int l = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&a, alen) != 0 || listen(l, 4) != 0)
		wl_die("listen on %s", kind);
	launch(root_dir, l, (struct sockaddr *)&a, alen, type);
	return 0;
}
