/*
 * clone_files: the root creates a child with a raw clone3(CLONE_FILES |
 * CLONE_FS, exit_signal SIGCHLD): one fd table and one fs state (cwd,
 * umask) for both.  They then play rounds over two pipes (ping root->child,
 * pong child->root), forever, ~2 ms apart.  Round k:
 * - the root sets umask UMASK(k) and sends k;
 * - the child checks the fd it opened in round k-1 is closed (the root
 *   closed it in the shared table) and that its umask is UMASK(k), opens
 *   <workdir>/f<k%2> (a new fd X), chdir()s to <workdir>/d<k%2>, and
 *   answers {k, X};
 * - the root checks fd X is open in its own table (fcntl F_GETFD:
 *   FD_CLOEXEC) and is f<k%2> (same inode), that its cwd is d<k%2> (same
 *   inode as ".", and getcwd()), and closes X.
 * So after a restore every round proves the table and the fs state are still
 * shared, both ways.  Each side checks it played rounds after the last stall
 * (the dump/restore gap) and in the last 100 ms.  After SIGTERM the root
 * plays on (wl_keep_going) until both sides have played enough rounds after
 * their last stall (the child reports its count in every answer) and it
 * played enough in the last 100 ms; then it sends STOP and waits for the
 * child (exit 0).  The child is listed in <workdir>/pids.
 * Sabotage: the child unshare()s CLONE_FILES|CLONE_FS at round 100.
 */
#include "wl_common.h"
#include <sched.h>
#include <stdint.h>
#include <sys/syscall.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif

#define STOP UINT64_MAX
#define READY_ROUNDS 5
#define AFTER_STALL_MIN 20
#define UMASK(k) ((k) % 2 ? 027 : 062)
#define RECENT_NS 100000000LL /* rounds must go on up to the end: */
#define RECENT_MIN 10	      /* at least RECENT_MIN in the last RECENT_NS */
#define RING 64

/* Completion times of the last RING rounds. */
struct recent {
	int64_t t[RING];
	uint64_t n;
};

static void recent_add(struct recent *r)
{
	r->t[r->n++ % RING] = wl_now_ns();
}

static int recent_count(const struct recent *r)
{
	int64_t now = wl_now_ns();
	int cnt = 0;
	for (uint64_t i = 0; i < RING && i < r->n; i++)
		cnt += now - r->t[i] < RECENT_NS;
	return cnt;
}

static void recent_check(const struct recent *r)
{
	int cnt = recent_count(r);
	WL_CHECK(cnt >= RECENT_MIN, "%s: only %d rounds in the last %lld ms", wl_role, cnt,
		 RECENT_NS / 1000000);
}

struct clone_args_v0 {
	uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
};

struct answer {
	uint64_t k;
	int64_t fd;
	uint64_t since_stall; /* the child's rounds after its last stall, this one included */
};

static int ping[2], pong[2];

static void put(int fd, const void *p, size_t n)
{
	for (;;) {
		ssize_t r = write(fd, p, n);
		if (r == (ssize_t)n)
			return;
		if (r < 0 && errno == EINTR)
			continue;
		wl_fail("%s: pipe write returned %zd errno %d", wl_role, r, errno);
		return;
	}
}

/* 1: got it, 0: EOF or error */
static int get(int fd, void *p, size_t n)
{
	for (;;) {
		ssize_t r = read(fd, p, n);
		if (r == (ssize_t)n)
			return 1;
		if (r < 0 && errno == EINTR)
			continue;
		if (r != 0)
			wl_fail("%s: pipe read returned %zd errno %d", wl_role, r, errno);
		return 0;
	}
}

static int same_file(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

static void child_loop(pid_t parent)
{
	struct wl_progress prog;
	wl_progress_init(&prog);
	int prev = -1;
	uint64_t k, rounds = 0;
	struct recent rec = { { 0 }, 0 };
	while (get(ping[0], &k, sizeof(k)) && k != STOP) {
		if (prev >= 0 && wl_failures < 20) {
			int r = fcntl(prev, F_GETFD);
			WL_CHECK(r == -1 && errno == EBADF,
				 "child: round %llu: fd %d (closed by the root) is still open: F_GETFD %d",
				 (unsigned long long)k, prev, r);
		}
		mode_t m = umask(0);
		umask(m);
		if (wl_failures < 20)
			WL_CHECK(m == UMASK(k), "child: round %llu: umask %03o, want %03o (set by the root)",
				 (unsigned long long)k, (unsigned)m, (unsigned)UMASK(k));
		if (wl_sabotage && k == 100 && unshare(CLONE_FILES | CLONE_FS) != 0)
			wl_die("sabotage unshare");
		int x = open(wl_path(k % 2 ? "f1" : "f0"), O_RDONLY | O_CLOEXEC);
		if (x < 0)
			wl_fail("child: open f%d: errno %d", (int)(k % 2), errno);
		if (chdir(wl_path(k % 2 ? "d1" : "d0")) != 0)
			wl_fail("child: chdir d%d: errno %d", (int)(k % 2), errno);
		prev = x;
		rounds++;
		wl_progress_tick(&prog);
		recent_add(&rec);
		struct answer a = { k, x, prog.since_stall };
		put(pong[1], &a, sizeof(a));
	}
	recent_check(&rec);
	wl_printf("INFO child: rounds=%llu stalls=%llu since_stall=%llu\n", (unsigned long long)rounds,
		  (unsigned long long)prog.stalls, (unsigned long long)prog.since_stall);
	WL_CHECK(k == STOP, "child: the ping pipe closed without STOP");
	WL_CHECK(prog.since_stall >= AFTER_STALL_MIN, "child: only %llu rounds after the last stall",
		 (unsigned long long)prog.since_stall);
	WL_CHECK(getppid() == parent, "child: getppid() is %d, want %d", (int)getppid(), (int)parent);
	wl_child_exit();
}

/* Plays round k; returns 0 if the child did not answer. */
static int root_round(uint64_t k, uint64_t *child_since_stall)
{
	umask(UMASK(k));
	put(ping[1], &k, sizeof(k));
	struct answer a;
	if (!get(pong[0], &a, sizeof(a))) {
		wl_fail("root: round %llu: no answer from the child", (unsigned long long)k);
		return 0;
	}
	*child_since_stall = a.since_stall;
	if (a.k != k)
		wl_fail("root: answer for round %llu, want %llu", (unsigned long long)a.k, (unsigned long long)k);
	int x = (int)a.fd;
	int chk = wl_failures < 20;
	struct stat fs, want;
	int r = fcntl(x, F_GETFD);
	if (chk)
		WL_CHECK(r == FD_CLOEXEC, "root: round %llu: fd %d opened by the child: F_GETFD %d errno %d",
			 (unsigned long long)k, x, r, r < 0 ? errno : 0);
	if (chk && r >= 0 && fstat(x, &fs) == 0 && stat(wl_path(k % 2 ? "f1" : "f0"), &want) == 0)
		WL_CHECK(same_file(&fs, &want), "root: round %llu: fd %d is not f%d", (unsigned long long)k, x,
			 (int)(k % 2));
	const char *d = wl_path(k % 2 ? "d1" : "d0");
	struct stat dot, dir;
	if (chk && stat(".", &dot) == 0 && stat(d, &dir) == 0)
		WL_CHECK(same_file(&dot, &dir), "root: round %llu: my cwd is not d%d (the child's chdir)",
			 (unsigned long long)k, (int)(k % 2));
	char cwd[4096];
	if (chk && getcwd(cwd, sizeof(cwd)) != NULL)
		WL_CHECK(strcmp(cwd, d) == 0, "root: round %llu: getcwd() %s, want %s", (unsigned long long)k, cwd,
			 d);
	if (r >= 0)
		close(x);
	return 1;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (wl_dir[0] != '/')
		wl_die("the workdir must be an absolute path");
	const char *dirs[] = { "d0", "d1" }, *files[] = { "f0", "f1" };
	for (int i = 0; i < 2; i++) {
		if (mkdir(wl_path(dirs[i]), 0755) != 0)
			wl_die("mkdir %s", dirs[i]);
		int f = open(wl_path(files[i]), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (f < 0 || write(f, files[i], 2) != 2 || close(f) != 0)
			wl_die("create %s", files[i]);
	}
	if (pipe2(ping, O_CLOEXEC) != 0 || pipe2(pong, O_CLOEXEC) != 0)
		wl_die("pipe");
	pid_t parent = getpid();
	struct clone_args_v0 ca;
	memset(&ca, 0, sizeof(ca));
	ca.flags = CLONE_FILES | CLONE_FS;
	ca.exit_signal = SIGCHLD;
	long child = syscall(SYS_clone3, &ca, sizeof(ca));
	if (child < 0)
		wl_die("clone3");
	if (child == 0) {
		wl_child_init("child");
		child_loop(parent);
	}
	wl_record_pid("child", (pid_t)child, parent);
	struct wl_progress prog;
	wl_progress_init(&prog);
	uint64_t k = 0, child_since_stall = 0;
	struct recent rec = { { 0 }, 0 };
	while (wl_keep_going(prog.since_stall >= AFTER_STALL_MIN && child_since_stall >= AFTER_STALL_MIN &&
			     recent_count(&rec) >= RECENT_MIN)) {
		if (!root_round(k, &child_since_stall))
			break;
		k++;
		wl_progress_tick(&prog);
		recent_add(&rec);
		if (k == READY_ROUNDS)
			wl_ready();
		usleep(2000);
	}
	recent_check(&rec);
	uint64_t stop = STOP;
	put(ping[1], &stop, sizeof(stop));
	wl_wait_child((pid_t)child, "child", 10000);
	wl_printf("INFO root: rounds=%llu stalls=%llu since_stall=%llu\n", (unsigned long long)k,
		  (unsigned long long)prog.stalls, (unsigned long long)prog.since_stall);
	WL_CHECK(prog.since_stall >= AFTER_STALL_MIN, "root: only %llu rounds after the last stall",
		 (unsigned long long)prog.since_stall);
	wl_finish();
}
