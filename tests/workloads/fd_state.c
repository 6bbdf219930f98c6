/*
 * fd_state: the state the kernel keeps per fd and per open file description,
 * on every kind of fd, checked from inside after restore.
 *
 * - directories: "/" and the cwd (open O_DIRECTORY), and <workdir>/list
 *   (NFILES entries) read halfway with getdents64: after restore the rest
 *   of the listing follows, every name exactly once;
 * - O_PATH fds on a regular file, a directory, a symlink (O_NOFOLLOW), a
 *   character device, a FIFO and a socket file: the same inodes, O_PATH;
 * - /proc/self/status and a /proc/self directory fd: they show the
 *   restored pid; /proc/1/status: pid 1;
 * - status flags set after open (F_SETFL): O_NONBLOCK on a pipe's read end
 *   and an eventfd, O_APPEND|O_NOATIME on a file; FD_CLOEXEC per fd;
 * - SIGIO: a pipe with O_ASYNC, F_SETOWN_EX (this process), F_SETSIG
 *   SIGUSR1: a write after restore raises SIGUSR1 with si_fd;
 * - locks: POSIX write 0-9 and read 20-EOF, flock LOCK_EX, an OFD write lock
 *   100-199, a read lease; checked from a child (F_GETLK, flock, F_OFD_GETLK)
 *   and with F_GETLEASE;
 * - a child process "locker" holding its own POSIX read lock on a file the
 *   parent read-locks too, and sharing the parent's flock LOCK_SH
 *   description: each finds its locks in its own fdinfo.
 * - epoll: a pipe read end added as fd 702 (a dup) which was closed since,
 *   an eventfd added under its own number, and another epoll instance
 *   watching the first one; after restore each reports its own data.
 * - timerfds: one holding 5 expirations not yet read, one absolute
 *   CLOCK_REALTIME timer with TFD_TIMER_CANCEL_ON_SET an hour away;
 * Sabotage: after READY the POSIX lock on 0-9 is dropped and the pipe loses
 * O_NONBLOCK.
 */
#include "wl_common.h"
#include <dirent.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/timerfd.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>

#define NFILES 40
#define KERNEL_O_LARGEFILE 0100000 /* glibc defines O_LARGEFILE as 0 on x86_64 */

struct opath {
	const char *name;
	int fd;
	ino_t ino;
	int flags;
};

static volatile sig_atomic_t sigio_fd = -1, sigio_code;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	sigio_fd = si->si_fd;
	sigio_code = si->si_code;
}

/* Names from one getdents64 call on fd; returns how many. */
static int read_names(int fd, char names[][32], int max, size_t bufsz)
{
	char buf[4096];
	long n = syscall(SYS_getdents64, fd, buf, bufsz);
	if (n < 0)
		wl_fail("getdents64: errno %d", errno);
	int k = 0;
	for (long off = 0; off < n && k < max;) {
		struct dirent64 *d = (struct dirent64 *)(buf + off);
		snprintf(names[k++], 32, "%.31s", d->d_name);
		off += d->d_reclen;
	}
	return k;
}

static void check_ino(const char *what, int fd, const char *path, int follow)
{
	struct stat a, b;
	int r = follow ? stat(path, &b) : lstat(path, &b);
	if (fstat(fd, &a) != 0 || r != 0) {
		wl_fail("%s: fstat/stat failed: errno %d", what, errno);
		return;
	}
	WL_CHECK(a.st_ino == b.st_ino && a.st_dev == b.st_dev, "%s: fd is inode %lu, %s is %lu", what,
		 (unsigned long)a.st_ino, path, (unsigned long)b.st_ino);
}

static int proc_pid_of(int fd, const char *name)
{
	char buf[4096];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	if (n <= 0) {
		wl_fail("%s: pread: %zd errno %d", name, n, errno);
		return -1;
	}
	buf[n] = 0;
	char *p = strstr(buf, "\nPid:");
	return p ? atoi(p + 5) : -1;
}

static int has_lock_line(int fd, const char *kind, const char *type)
{
	char path[64], buf[4096];
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	ssize_t n = wl_read_file(path, buf, sizeof(buf) - 1);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	for (char *l = strstr(buf, "lock:"); l; l = strstr(l + 1, "lock:")) {
		char k[16], t[16];
		int pid;
		if (sscanf(l, "lock: %*d: %15s %*s %15s %d", k, t, &pid) == 3 && strcmp(k, kind) == 0 &&
		    strcmp(t, type) == 0 && (pid == getpid() || pid == -1 || strcmp(kind, "FLOCK") == 0))
			return 1;
	}
	return 0;
}

static void locker(int shared_fd, int flock_fd)
{
	wl_child_init("locker");
	struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
	if (fcntl(shared_fd, F_SETLK, &fl) != 0)
		wl_die("locker: F_SETLK");
	wl_wait_term();
	WL_CHECK(has_lock_line(shared_fd, "POSIX", "READ"), "locker: its POSIX read lock is gone");
	WL_CHECK(has_lock_line(flock_fd, "FLOCK", "READ"), "locker: the shared flock LOCK_SH is gone");
	wl_child_exit();
}

/* From a child: what another process sees of our locks. Returns failures. */
static int check_locks_from_outside(pid_t owner)
{
	int bad = 0;
	int fd = open(wl_path("lk_posix"), O_RDWR | O_CLOEXEC);
	struct flock q = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10 };
	if (fd < 0 || fcntl(fd, F_GETLK, &q) != 0 || q.l_type != F_WRLCK || q.l_pid != owner) {
		wl_printf("CHECK FAILED: posix lock 0-9: type %d pid %d (want write lock of %d)\n", q.l_type,
			  q.l_pid, owner);
		bad++;
	}
	struct flock r = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 20, .l_len = 5 };
	if (fcntl(fd, F_GETLK, &r) != 0 || r.l_type != F_RDLCK) {
		wl_printf("CHECK FAILED: posix lock 20-EOF: type %d (want read lock)\n", r.l_type);
		bad++;
	}
	struct flock u = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 10 };
	if (fcntl(fd, F_GETLK, &u) != 0 || u.l_type != F_UNLCK) {
		wl_printf("CHECK FAILED: bytes 10-19 are locked (type %d)\n", u.l_type);
		bad++;
	}
	int ffd = open(wl_path("lk_flock"), O_RDONLY | O_CLOEXEC);
	if (ffd < 0 || flock(ffd, LOCK_SH | LOCK_NB) == 0 || errno != EWOULDBLOCK) {
		wl_printf("CHECK FAILED: flock LOCK_EX is gone (a LOCK_SH was granted)\n");
		bad++;
	}
	int ofd = open(wl_path("lk_ofd"), O_RDWR | O_CLOEXEC);
	struct flock o = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 150, .l_len = 1 };
	if (ofd < 0 || fcntl(ofd, F_OFD_GETLK, &o) != 0 || o.l_type != F_WRLCK || o.l_start != 100 ||
	    o.l_len != 100) {
		wl_printf("CHECK FAILED: OFD lock 100-199: type %d start %lld len %lld\n", o.l_type,
			  (long long)o.l_start, (long long)o.l_len);
		bad++;
	}
	return bad;
}

static void check_outside(void)
{
	pid_t me = getpid();
	pid_t c = fork();
	if (c == 0)
		_exit(check_locks_from_outside(me) ? 1 : 0);
	int st = 0;
	waitpid(c, &st, 0);
	WL_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "locks as seen from another process are wrong");
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (chdir(wl_dir) != 0)
		wl_die("chdir");

	/* directories */
	int d_root = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int d_cwd = open(".", O_RDONLY | O_DIRECTORY);
	if (mkdir("list", 0755) != 0)
		wl_die("mkdir list");
	for (int i = 0; i < NFILES; i++) {
		char p[64];
		snprintf(p, sizeof(p), "list/f%02d", i);
		int f = open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
		if (f < 0)
			wl_die("create %s", p);
		close(f);
	}
	int d_list = open("list", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (d_root < 0 || d_cwd < 0 || d_list < 0)
		wl_die("opening directories");
	static char names[NFILES + 8][32];
	int nnames = read_names(d_list, names, NFILES + 2, 512); /* part of the listing */
	if (nnames <= 0 || nnames >= NFILES)
		wl_die("first getdents64 returned %d names", nnames);

	/* O_PATH fds of every file type */
	int f = open("plain", O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
	close(f);
	if (symlink("plain", "link") != 0 || mkfifo("fifo", 0600) != 0)
		wl_die("symlink/mkfifo");
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/sock", wl_dir);
	if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		wl_die("bind sock");
	close(s);
	struct opath op[] = {
		{ "plain", -1, 0, O_PATH },	{ "list", -1, 0, O_PATH | O_DIRECTORY },
		{ "link", -1, 0, O_PATH | O_NOFOLLOW }, { "/dev/null", -1, 0, O_PATH },
		{ "fifo", -1, 0, O_PATH },	{ "sock", -1, 0, O_PATH },
	};
	const int nop = sizeof(op) / sizeof(op[0]);
	for (int i = 0; i < nop; i++) {
		op[i].fd = open(op[i].name, op[i].flags | O_CLOEXEC);
		struct stat st;
		if (op[i].fd < 0 || fstat(op[i].fd, &st) != 0)
			wl_die("O_PATH open %s", op[i].name);
		op[i].ino = st.st_ino;
	}

	/* /proc */
	int p_status = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
	int p_dir = open("/proc/self", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int p_init = open("/proc/1/status", O_RDONLY | O_CLOEXEC);
	if (p_status < 0 || p_dir < 0 || p_init < 0)
		wl_die("opening /proc files");

	/* status flags set after open, FD_CLOEXEC per fd */
	int pp[2];
	if (pipe2(pp, O_CLOEXEC) != 0 || fcntl(pp[0], F_SETFL, O_NONBLOCK) != 0)
		wl_die("pipe");
	int efd = eventfd(3, EFD_CLOEXEC);
	if (efd < 0 || fcntl(efd, F_SETFL, O_NONBLOCK) != 0)
		wl_die("eventfd");
	int afd = open("append.log", O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
	if (afd < 0 || write(afd, "x", 1) != 1 || fcntl(afd, F_SETFL, O_APPEND | O_NOATIME) != 0)
		wl_die("append.log");
	int nocloexec = dup(afd); /* no FD_CLOEXEC on this one */
	const int want_pp0 = O_RDONLY | O_NONBLOCK, want_efd = O_RDWR | O_NONBLOCK;
	const int want_afd = O_WRONLY | O_APPEND | O_NOATIME;

	/* SIGIO owner and signal */
	struct sigaction act = { .sa_sigaction = on_usr1, .sa_flags = SA_SIGINFO };
	sigemptyset(&act.sa_mask);
	sigaction(SIGUSR1, &act, NULL);
	int sio[2];
	if (pipe2(sio, O_CLOEXEC) != 0)
		wl_die("sio pipe");
	struct f_owner_ex owner = { .type = F_OWNER_PID, .pid = getpid() };
	if (fcntl(sio[0], F_SETOWN_EX, &owner) != 0 || fcntl(sio[0], F_SETSIG, SIGUSR1) != 0 ||
	    fcntl(sio[0], F_SETFL, O_ASYNC | O_NONBLOCK) != 0)
		wl_die("F_SETOWN_EX/F_SETSIG/O_ASYNC");

	/* locks */
	int lk_posix = open("lk_posix", O_CREAT | O_RDWR | O_CLOEXEC, 0644);
	int lk_flock = open("lk_flock", O_CREAT | O_RDWR | O_CLOEXEC, 0644);
	int lk_ofd = open("lk_ofd", O_CREAT | O_RDWR | O_CLOEXEC, 0644);
	int f_lease0 = open("lk_lease", O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
	close(f_lease0);
	int lk_lease = open("lk_lease", O_RDONLY | O_CLOEXEC);
	struct flock w09 = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10 };
	struct flock r20 = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 20, .l_len = 0 };
	struct flock o100 = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 100 };
	if (fcntl(lk_posix, F_SETLK, &w09) != 0 || fcntl(lk_posix, F_SETLK, &r20) != 0 ||
	    flock(lk_flock, LOCK_EX | LOCK_NB) != 0 || fcntl(lk_ofd, F_OFD_SETLK, &o100) != 0 ||
	    fcntl(lk_lease, F_SETLEASE, F_RDLCK) != 0)
		wl_die("taking locks");

	/* shared with a child */
	int lk_shared = open("lk_shared", O_CREAT | O_RDWR | O_CLOEXEC, 0644);
	int lk_shflock = open("lk_shflock", O_CREAT | O_RDONLY | O_CLOEXEC, 0644);
	struct flock rall = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
	if (fcntl(lk_shared, F_SETLK, &rall) != 0 || flock(lk_shflock, LOCK_SH | LOCK_NB) != 0)
		wl_die("shared locks");
	pid_t child = fork();
	if (child < 0)
		wl_die("fork");
	if (child == 0)
		locker(lk_shared, lk_shflock);
	wl_record_pid("locker", child, getpid());

	/* epoll: an entry whose number was closed, one plain, one nested epoll */
	int ep = epoll_create1(EPOLL_CLOEXEC), ep2 = epoll_create1(EPOLL_CLOEXEC);
	int ep_pipe[2], ep_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (ep < 0 || ep2 < 0 || ep_efd < 0 || pipe2(ep_pipe, O_CLOEXEC) != 0 || dup2(ep_pipe[0], 702) != 702)
		wl_die("epoll setup");
	struct epoll_event e1 = { .events = EPOLLIN, .data.u64 = 0x702 }, e2 = { .events = EPOLLIN, .data.u64 = 0xef };
	struct epoll_event e3 = { .events = EPOLLIN, .data.u64 = 0xe9 };
	if (epoll_ctl(ep, EPOLL_CTL_ADD, 702, &e1) != 0 || epoll_ctl(ep, EPOLL_CTL_ADD, ep_efd, &e2) != 0 ||
	    epoll_ctl(ep2, EPOLL_CTL_ADD, ep, &e3) != 0 || close(702) != 0)
		wl_die("epoll_ctl");

	/* timerfds */
	int tf_ticks = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	int tf_abs = timerfd_create(CLOCK_REALTIME, TFD_CLOEXEC);
	uint64_t five = 5;
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	struct itimerspec in_an_hour = { { 0, 0 }, { now.tv_sec + 3600, 0 } };
	if (tf_ticks < 0 || tf_abs < 0 || ioctl(tf_ticks, _IOW('T', 0, uint64_t), &five) != 0 ||
	    timerfd_settime(tf_abs, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &in_an_hour, NULL) != 0)
		wl_die("timerfds");

	check_outside(); /* the checks themselves hold before the dump */
	wl_ready();
	if (wl_sabotage) {
		struct flock un = { .l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10 };
		fcntl(lk_posix, F_SETLK, &un);
		fcntl(pp[0], F_SETFL, 0);
	}
	while (!wl_term)
		usleep(10000);

	/* directories */
	check_ino("fd on /", d_root, "/", 1);
	check_ino("fd on the cwd", d_cwd, wl_dir, 1);
	nnames += read_names(d_list, names + nnames, NFILES + 8 - nnames, 4096);
	int seen[NFILES] = { 0 }, dots = 0;
	for (int i = 0; i < nnames; i++) {
		int k;
		if (strcmp(names[i], ".") == 0 || strcmp(names[i], "..") == 0)
			dots++;
		else if (sscanf(names[i], "f%d", &k) == 1 && k >= 0 && k < NFILES)
			seen[k]++;
		else
			wl_fail("listing: unexpected name %s", names[i]);
	}
	for (int k = 0; k < NFILES; k++)
		WL_CHECK(seen[k] == 1, "listing: f%02d seen %d times (directory position lost)", k,
			 seen[k]);
	WL_CHECK(dots == 2, "listing: . and .. seen %d times", dots);

	/* O_PATH */
	for (int i = 0; i < nop; i++) {
		struct stat st;
		int fl = fcntl(op[i].fd, F_GETFL);
		WL_CHECK(fstat(op[i].fd, &st) == 0 && st.st_ino == op[i].ino,
			 "O_PATH fd on %s: another inode", op[i].name);
		WL_CHECK(fl >= 0 && (fl & O_PATH) && (fl & O_NOFOLLOW) == (op[i].flags & O_NOFOLLOW),
			 "O_PATH fd on %s: flags %#o", op[i].name, fl);
	}
	char target[64] = "";
	ssize_t tl = readlinkat(op[2].fd, "", target, sizeof(target) - 1);
	WL_CHECK(tl == 5 && memcmp(target, "plain", 5) == 0, "O_PATH symlink fd reads %zd", tl);

	/* /proc */
	WL_CHECK(proc_pid_of(p_status, "/proc/self/status") == getpid(),
		 "/proc/self/status fd shows pid %d, not %d", proc_pid_of(p_status, "status"), getpid());
	int st_fd = openat(p_dir, "status", O_RDONLY | O_CLOEXEC);
	WL_CHECK(st_fd >= 0 && proc_pid_of(st_fd, "status") == getpid(), "/proc/self dir fd is not mine");
	WL_CHECK(proc_pid_of(p_init, "/proc/1/status") == 1, "/proc/1/status fd is not pid 1's");

	/* flags */
	WL_CHECK(fcntl(pp[0], F_GETFL) == want_pp0, "pipe read end flags %#o, want %#o",
		 fcntl(pp[0], F_GETFL), want_pp0);
	char c;
	if (fcntl(pp[0], F_GETFL) & O_NONBLOCK) /* else the read would block */
		WL_CHECK(read(pp[0], &c, 1) < 0 && errno == EAGAIN, "empty pipe read: no EAGAIN");
	WL_CHECK((fcntl(efd, F_GETFL) & ~KERNEL_O_LARGEFILE) == want_efd, "eventfd flags %#o, want %#o",
		 fcntl(efd, F_GETFL), want_efd);
	WL_CHECK((fcntl(afd, F_GETFL) & ~KERNEL_O_LARGEFILE) == want_afd, "append.log flags %#o, want %#o",
		 fcntl(afd, F_GETFL), want_afd);
	WL_CHECK(fcntl(afd, F_GETFD) == FD_CLOEXEC && fcntl(nocloexec, F_GETFD) == 0,
		 "FD_CLOEXEC: %d and %d", fcntl(afd, F_GETFD), fcntl(nocloexec, F_GETFD));
	WL_CHECK(write(nocloexec, "y", 1) == 1 && lseek(afd, 0, SEEK_CUR) == 2,
		 "O_APPEND write did not land at the end");

	/* SIGIO */
	struct f_owner_ex got = { 0 };
	WL_CHECK(fcntl(sio[0], F_GETOWN_EX, &got) == 0 && got.type == F_OWNER_PID && got.pid == getpid(),
		 "F_GETOWN_EX: type %d pid %d", got.type, got.pid);
	WL_CHECK(fcntl(sio[0], F_GETSIG) == SIGUSR1, "F_GETSIG is %d", fcntl(sio[0], F_GETSIG));
	if (write(sio[1], "s", 1) != 1)
		wl_fail("write to the SIGIO pipe");
	for (int i = 0; i < 200 && sigio_fd < 0; i++)
		usleep(10000);
	WL_CHECK(sigio_fd == sio[0] && sigio_code == POLL_IN, "SIGUSR1 for the pipe (fd %d): si_fd %d code %d", sio[0],
		 (int)sigio_fd, (int)sigio_code);

	/* timerfds */
	uint64_t ticks = 0;
	WL_CHECK(read(tf_ticks, &ticks, 8) == 8 && ticks == 5, "timerfd: %llu expirations unread, want 5",
		 (unsigned long long)ticks);
	struct itimerspec left;
	WL_CHECK(timerfd_gettime(tf_abs, &left) == 0 && left.it_value.tv_sec > 3000 && left.it_value.tv_sec <= 3600,
		 "absolute timerfd: %lld s left", (long long)left.it_value.tv_sec);
	char fi[64], fib[512];
	snprintf(fi, sizeof(fi), "/proc/self/fdinfo/%d", tf_abs);
	ssize_t fin = wl_read_file(fi, fib, sizeof(fib) - 1);
	fib[fin > 0 ? fin : 0] = 0;
	WL_CHECK(strstr(fib, "settime flags: 03") != NULL, "absolute timerfd: lost TFD_TIMER_ABSTIME|CANCEL_ON_SET");

	/* epoll */
	struct epoll_event got_ev;
	WL_CHECK(epoll_wait(ep, &got_ev, 1, 0) == 0, "epoll: ready before any write");
	WL_CHECK(write(ep_pipe[1], "p", 1) == 1 && epoll_wait(ep2, &got_ev, 1, 1000) == 1 && got_ev.data.u64 == 0xe9,
		 "nested epoll: not woken by the inner one");
	WL_CHECK(epoll_wait(ep, &got_ev, 1, 1000) == 1 && got_ev.data.u64 == 0x702,
		 "epoll: the pipe added as fd 702 (closed since) reports %#llx", (unsigned long long)got_ev.data.u64);
	WL_CHECK(read(ep_pipe[0], &c, 1) == 1, "epoll: pipe read");
	uint64_t one = 1;
	WL_CHECK(write(ep_efd, &one, 8) == 8 && epoll_wait(ep, &got_ev, 1, 1000) == 1 && got_ev.data.u64 == 0xef,
		 "epoll: the eventfd reports %#llx", (unsigned long long)got_ev.data.u64);
	WL_CHECK(fcntl(702, F_GETFD) < 0, "epoll: fd 702 is open again");

	/* locks */
	check_outside();
	WL_CHECK(fcntl(lk_lease, F_GETLEASE) == F_RDLCK, "F_GETLEASE is %d",
		 fcntl(lk_lease, F_GETLEASE));
	WL_CHECK(has_lock_line(lk_shared, "POSIX", "READ"), "my POSIX read lock on lk_shared is gone");
	kill(child, SIGTERM);
	wl_wait_child(child, "locker", 10000);
	wl_finish();
}
