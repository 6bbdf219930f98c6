/*
 * unix_scm: file descriptors in flight (SCM_RIGHTS) in unix socket queues.
 *
 * Root: creates <workdir>/data (8 KiB pattern), a stream socketpair CH and a
 * datagram socketpair DG, and a stream socketpair SV.  Before forking it
 * queues on CH[0] (for CH[1]): 100 plain bytes; "FILE-MSG" carrying an fd of
 * data opened O_RDWR at offset 1000; "SOCK-MSG" carrying SV[1] (which has
 * "queued-in-sv" unread in its own queue); 50 plain bytes.  On DG[0]: a
 * datagram "DGRAM-FILE" carrying an fd of data opened O_RDONLY at offset
 * 3000, then a plain datagram "after".  The root then closes its copies of
 * both file fds and of SV[1]: they live only in flight.  A forked child C
 * holds CH[1] and DG[1] and leaves everything unread until SIGTERM.
 * On SIGTERM C reads the messages back with recvmsg: exact bytes, message
 * and fd boundaries (the plain prefix comes without fds), the file fds'
 * offsets, access modes and contents (reads continue from the offset), and
 * that the socket works: it reads "queued-in-sv" from it and writes "pong",
 * which the root reads from SV[0] once C has exited.
 * CRT_SCM_PIPE=1: a third datagram "PIPE" carries the read end of a pipe
 * (which crt refuses in flight).
 * Sabotage: C reads the 100 plain bytes of CH[1] after a while.
 */
#include "wl_common.h"
#include <sys/socket.h>
#include <sys/stat.h>

#define FSIZE 8192

static unsigned char fpat(size_t i) { return (unsigned char)wl_mix(i * 7 + 3); }
static unsigned char ppat(size_t i) { return (unsigned char)wl_mix(i + 5000); }

static void send_fd(int sock, const char *msg, int fd)
{
	char ctl[CMSG_SPACE(sizeof(int))];
	memset(ctl, 0, sizeof ctl);
	struct iovec iov = {.iov_base = (void *)msg, .iov_len = strlen(msg)};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sock, &mh, 0) != (ssize_t)strlen(msg))
		wl_die("sendmsg %s", msg);
}

/* recvmsg into buf (cap bytes); *fd gets the one fd received or -1; returns the length. */
static ssize_t recv_fd(int sock, char *buf, size_t cap, int *fd, int *nfds)
{
	char ctl[CMSG_SPACE(8 * sizeof(int))];
	struct iovec iov = {.iov_base = buf, .iov_len = cap};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
	ssize_t r = recvmsg(sock, &mh, MSG_DONTWAIT);
	*fd = -1;
	*nfds = 0;
	if (r < 0)
		return r;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			for (int i = 0; i < n; i++) {
				int f;
				memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
				if (*fd < 0)
					*fd = f;
				else
					close(f);
			}
			*nfds += n;
		}
	return r;
}

static void check_file(int fd, const char *what, off_t off, int accmode, ino_t ino)
{
	struct stat st;
	WL_CHECK(fstat(fd, &st) == 0 && st.st_ino == ino, "%s: the fd is not the data file", what);
	off_t at = lseek(fd, 0, SEEK_CUR);
	WL_CHECK(at == off, "%s: offset is %lld, want %lld", what, (long long)at, (long long)off);
	int fl = fcntl(fd, F_GETFL);
	WL_CHECK((fl & O_ACCMODE) == accmode, "%s: access mode %#x, want %#x", what, fl & O_ACCMODE, accmode);
	for (int round = 0; round < 2; round++) {
		unsigned char buf[64];
		ssize_t r = read(fd, buf, sizeof buf);
		if (r != (ssize_t)sizeof buf) {
			wl_fail("%s: read %zd bytes, errno %d", what, r, errno);
			return;
		}
		for (size_t i = 0; i < sizeof buf; i++)
			if (buf[i] != fpat((size_t)off + (size_t)round * 64 + i)) {
				wl_fail("%s: byte %zu of read %d differs (reads do not go on from the offset)", what, i,
					round);
				return;
			}
	}
}

static void expect(int sock, const char *what, const char *want, size_t len, const unsigned char *bytes,
		   int want_fds, int *fd)
{
	char buf[512];
	int nfds;
	size_t cap = len;
	ssize_t r = recv_fd(sock, buf, cap, fd, &nfds);
	if (r != (ssize_t)len) {
		wl_fail("C: %s: got %zd bytes, want %zu (errno %d)", what, r, len, errno);
		return;
	}
	if (want ? memcmp(buf, want, len) != 0 : memcmp(buf, bytes, len) != 0)
		wl_fail("C: %s: bytes differ", what);
	WL_CHECK(nfds == want_fds, "C: %s: came with %d fd(s), want %d", what, nfds, want_fds);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	int ch[2], dg[2], sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, ch) || socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		wl_die("socketpair");
	unsigned char data[FSIZE];
	for (size_t i = 0; i < FSIZE; i++)
		data[i] = fpat(i);
	int f = open(wl_path("data"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (f < 0 || write(f, data, FSIZE) != FSIZE)
		wl_die("data file");
	struct stat st;
	if (fstat(f, &st))
		wl_die("fstat");
	lseek(f, 1000, SEEK_SET);
	int g = open(wl_path("data"), O_RDONLY | O_CLOEXEC);
	if (g < 0)
		wl_die("open data");
	lseek(g, 3000, SEEK_SET);

	unsigned char plain[100], tail[50];
	for (size_t i = 0; i < sizeof plain; i++)
		plain[i] = ppat(i);
	for (size_t i = 0; i < sizeof tail; i++)
		tail[i] = ppat(1000 + i);
	if (write(ch[0], plain, sizeof plain) != sizeof plain)
		wl_die("plain");
	send_fd(ch[0], "FILE-MSG", f);
	if (write(sv[0], "queued-in-sv", 12) != 12)
		wl_die("sv");
	send_fd(ch[0], "SOCK-MSG", sv[1]);
	if (write(ch[0], tail, sizeof tail) != sizeof tail)
		wl_die("tail");
	send_fd(dg[0], "DGRAM-FILE", g);
	if (send(dg[0], "after", 5, 0) != 5)
		wl_die("after");
	int with_pipe = getenv("CRT_SCM_PIPE") != NULL, pp[2];
	if (with_pipe) {
		if (pipe(pp))
			wl_die("pipe");
		send_fd(dg[0], "PIPE", pp[0]);
		close(pp[0]);
	}
	close(f);
	close(g);
	close(sv[1]);

	pid_t c = fork();
	if (c < 0)
		wl_die("fork");
	if (c == 0) {
		wl_child_init("c");
		close(ch[0]);
		close(dg[0]);
		close(sv[0]);
		int n = 0;
		while (!wl_term) {
			usleep(5000);
			if (wl_sabotage && ++n == 40) {
				char z[100];
				recv(ch[1], z, sizeof z, 0);
			}
		}
		int fd;
		expect(ch[1], "plain prefix", NULL, sizeof plain, plain, 0, &fd);
		expect(ch[1], "file message", "FILE-MSG", 8, NULL, 1, &fd);
		if (fd >= 0)
			check_file(fd, "C: file fd from the stream", 1000, O_RDWR, st.st_ino);
		int sock;
		expect(ch[1], "socket message", "SOCK-MSG", 8, NULL, 1, &sock);
		expect(ch[1], "tail", NULL, sizeof tail, tail, 0, &fd);
		char b[64];
		ssize_t r = recv(ch[1], b, sizeof b, MSG_DONTWAIT);
		WL_CHECK(r < 0 && errno == EAGAIN, "C: %zd extra bytes on the stream", r);
		expect(dg[1], "datagram with a file", "DGRAM-FILE", 10, NULL, 1, &fd);
		if (fd >= 0)
			check_file(fd, "C: file fd from the datagram", 3000, O_RDONLY, st.st_ino);
		expect(dg[1], "plain datagram", "after", 5, NULL, 0, &fd);
		if (with_pipe)
			expect(dg[1], "datagram with a pipe", "PIPE", 4, NULL, 1, &fd);
		if (sock >= 0) {
			r = recv(sock, b, sizeof b, MSG_DONTWAIT);
			WL_CHECK(r == 12 && memcmp(b, "queued-in-sv", 12) == 0,
				 "C: the socket in flight reads %zd bytes, want its queued 12", r);
			WL_CHECK(write(sock, "pong", 4) == 4, "C: writing to the socket in flight: errno %d", errno);
		}
		wl_child_exit();
	}
	wl_record_pid("c", c, getpid());
	close(ch[1]);
	close(dg[1]);
	wl_ready();
	while (!wl_term)
		usleep(5000);
	kill(c, SIGTERM);
	wl_wait_child(c, "c", 5000);
	char b[16];
	ssize_t r = recv(sv[0], b, sizeof b, MSG_DONTWAIT);
	WL_CHECK(r == 4 && memcmp(b, "pong", 4) == 0, "root: got %zd bytes from the socket sent in flight, want pong",
		 r);
	wl_finish();
}
