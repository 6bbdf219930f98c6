/*
 * Shared helpers for crt test workloads.
 *
 * Protocol (see tests/src/lib.rs): argv[1] is the per-test working directory;
 * stdout/stderr are an O_APPEND log file; output goes through write(2) only.
 * A workload prints "READY\n" once its state is set up, keeps working, and on
 * SIGTERM verifies its state and prints "PASS\n" or "FAIL: <reason>\n" as its
 * last line, exiting 0 or 1.  Individual failed checks are printed as
 * "CHECK FAILED: <reason>" lines as soon as they are detected.
 *
 * If the environment holds CRT_WL_SABOTAGE=1 a workload deliberately corrupts
 * its own state after READY, so tests can prove that its checks can fail.
 *
 * Draining: SIGTERM does not cut the work short.  A workload whose final
 * checks need progress (N iterations since READY, M since the last stall,
 * i.e. since the dump/restore gap) loops on wl_keep_going(<that condition>):
 * after SIGTERM it goes on working, and checking every step, until the
 * condition holds, for at most WL_DRAIN_NS (the harness waits 30 s for the
 * exit); only then it runs its final checks, which are unchanged: they fail
 * if the deadline passed without that progress.  So neither a scheduling
 * stall just before SIGTERM on a busy machine nor a harness that sends
 * SIGTERM early fails a workload that works.  A process whose peer needs it
 * to make progress (a pipe reader, a ping-pong partner) keeps serving it,
 * uncounted, until the peer is done (or wl_drain_time_left() runs out).
 * CRT_WL_NO_DRAIN=1 turns the drain off (wl_keep_going() returns 0 at once
 * after SIGTERM), so tests can prove the progress checks can fail.
 */
#ifndef WL_COMMON_H
#define WL_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static pid_t wl_pid;
static const char *wl_dir;
static volatile sig_atomic_t wl_term;
static int wl_failures;
static char wl_first_failure[256];
static int wl_sabotage;
static int wl_is_ready;
static const char *wl_role = "root";

static __attribute__((unused)) void wl_write_all(int fd, const char *s, size_t n)
{
	while (n > 0) {
		ssize_t r = write(fd, s, n);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		s += r;
		n -= (size_t)r;
	}
}

__attribute__((format(printf, 1, 2), unused)) static void wl_printf(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(buf))
		n = sizeof(buf) - 1;
	wl_write_all(1, buf, (size_t)n);
}

/* Record a failed check (printed immediately, reported again at the end). */
__attribute__((format(printf, 1, 2), unused)) static void wl_fail(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (wl_failures == 0)
		memcpy(wl_first_failure, buf, sizeof(buf));
	if (wl_failures < 50)
		wl_printf("CHECK FAILED: %s\n", buf);
	wl_failures++;
}

#define WL_CHECK(cond, ...)                \
	do {                               \
		if (!(cond))               \
			wl_fail(__VA_ARGS__); \
	} while (0)

/* Fatal setup error: the workload cannot even start. */
__attribute__((format(printf, 1, 2), noreturn, unused)) static void wl_die(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	wl_printf("FAIL: setup: %s (errno %d: %s)\n", buf, errno, strerror(errno));
	exit(2);
}

static __attribute__((unused)) void wl_on_term(int sig)
{
	(void)sig;
	wl_term = 1;
}

/*
 * Sleeps until SIGTERM. Not `while (!wl_term) pause();`: that loop can miss
 * its wake-up (natively too) when the signal comes while the task is being
 * resumed from a stop (SIGCONT, a ptrace detach, a restore). The kernel
 * rewinds the interrupted pause() for restart before it looks at signals a
 * last time; one that arrived in between runs its handler and then the
 * pause() again, for good. A short sleep ends anyway and sees the flag.
 */
static __attribute__((unused)) void wl_wait_term(void)
{
	while (!wl_term) {
		struct timespec ts = { 0, 50 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}

static __attribute__((unused)) const char *wl_path(const char *name)
{
	static char buf[4][4096];
	static int slot;
	char *p = buf[slot++ % 4];
	snprintf(p, 4096, "%s/%s", wl_dir, name);
	return p;
}

static __attribute__((unused)) int64_t wl_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- draining after SIGTERM (see the protocol above) ------------------- */

#define WL_DRAIN_NS 15000000000LL
/* a sabotaged run fails anyway: do not wait long for progress it prevents */
#define WL_DRAIN_SABOTAGE_NS 1000000000LL
static int wl_no_drain;
/*
 * How long after SIGTERM a process drains.  A process that is SIGTERMed by
 * another only once that one has drained (e.g. a child by its root) halves
 * it, so that both fit in the harness's 30 s.
 */
static int64_t wl_drain_ns = WL_DRAIN_NS;
static int64_t wl_term_seen; /* when SIGTERM was first seen here; 0: not yet */
static int wl_drain_reported;

/* After SIGTERM: 1 while the drain deadline has not passed (0 at once with CRT_WL_NO_DRAIN=1). */
static __attribute__((unused)) int wl_drain_time_left(void)
{
	if (!wl_term)
		return 1;
	int64_t now = wl_now_ns();
	if (wl_term_seen == 0)
		wl_term_seen = now;
	return !wl_no_drain && now - wl_term_seen < wl_drain_ns;
}

/*
 * The loop condition of a workload's main loop: 1 until SIGTERM; after it,
 * 1 until `satisfied` (the progress the final checks need) holds, or the
 * drain deadline passed, or at once with CRT_WL_NO_DRAIN=1.  When it first
 * returns 0 it logs an INFO line saying how long the drain took.
 */
static __attribute__((unused)) int wl_keep_going(int satisfied)
{
	if (!wl_term)
		return 1;
	int left = wl_drain_time_left();
	if (left && !satisfied)
		return 1;
	if (!wl_drain_reported) {
		wl_drain_reported = 1;
		wl_printf("INFO %s: drained %lld ms after SIGTERM%s\n", wl_role,
			  (long long)((wl_now_ns() - wl_term_seen) / 1000000),
			  satisfied ? "" : wl_no_drain ? " (CRT_WL_NO_DRAIN=1)"
						   : " (deadline passed without the progress wanted)");
	}
	return 0;
}

static __attribute__((unused)) void wl_init(int argc, char **argv)
{
	if (argc < 2) {
		wl_printf("FAIL: usage: %s WORKDIR\n", argv[0]);
		exit(2);
	}
	wl_dir = argv[1];
	wl_pid = getpid();
	const char *s = getenv("CRT_WL_SABOTAGE");
	wl_sabotage = s != NULL && strcmp(s, "1") == 0;
	const char *nd = getenv("CRT_WL_NO_DRAIN");
	wl_no_drain = nd != NULL && strcmp(nd, "1") == 0;
	if (wl_sabotage)
		wl_drain_ns = WL_DRAIN_SABOTAGE_NS;

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = wl_on_term;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART: SIGTERM interrupts sleeps */
	if (sigaction(SIGTERM, &sa, NULL) != 0)
		wl_die("sigaction(SIGTERM)");
}

static __attribute__((unused)) void wl_ready(void)
{
	if (wl_is_ready)
		wl_fail("READY printed twice");
	wl_is_ready = 1;
	wl_printf("READY\n");
}

/* Final verdict: common checks, then PASS or FAIL, and exit. */
__attribute__((noreturn, unused)) static void wl_finish(void)
{
	pid_t now = getpid();
	WL_CHECK(now == wl_pid, "getpid() changed: was %d, now %d", (int)wl_pid, (int)now);
	WL_CHECK(wl_is_ready, "terminated before READY");
	if (wl_failures == 0) {
		wl_printf("PASS\n");
		exit(0);
	}
	wl_printf("FAIL: %d check(s) failed, first: %s\n", wl_failures, wl_first_failure);
	exit(1);
}

/* Writes "a b c\n" into <workdir>/name (ids the harness reads). */
static __attribute__((unused)) void wl_write_ids(const char *name, int a, int b, int c)
{
	char line[64];
	int n = snprintf(line, sizeof(line), "%d %d %d\n", a, b, c);
	int fd = open(wl_path(name), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, line, (size_t)n) != n)
		wl_die("writing %s", name);
	close(fd);
}

/* Read a whole (small) file into buf with open/read only (no malloc). */
static __attribute__((unused)) ssize_t wl_read_file(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t len = 0;
	while (len < cap) {
		ssize_t r = read(fd, buf + len, cap - len);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			close(fd);
			return -1;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	return (ssize_t)len;
}

/* splitmix64: random-access pseudo-random pattern. */
static __attribute__((unused)) inline uint64_t wl_mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* ---- multi-process workloads ------------------------------------------ */
#include <sys/wait.h>

/*
 * QBYTES bytes of a pattern that depends on `id`, written in one go
 * (wl_fill_pattern) or read back without waiting and compared
 * (wl_check_pattern: 1 when all of them arrived and match).
 */
#define WL_QBYTES 4096
static __attribute__((unused)) unsigned char wl_pat(int id, size_t i)
{
	return (unsigned char)wl_mix((uint64_t)id * 31337 + i);
}

static __attribute__((unused)) void wl_fill_pattern(int fd, int id)
{
	unsigned char buf[WL_QBYTES];
	for (size_t i = 0; i < WL_QBYTES; i++)
		buf[i] = wl_pat(id, i);
	if (write(fd, buf, WL_QBYTES) != WL_QBYTES)
		wl_die("fill");
}

static __attribute__((unused)) int wl_check_pattern(int fd, int id)
{
	unsigned char buf[WL_QBYTES];
	size_t have = 0;
	while (have < WL_QBYTES) {
		ssize_t r = recv(fd, buf + have, WL_QBYTES - have, MSG_DONTWAIT);
		if (r <= 0)
			return 0;
		have += (size_t)r;
	}
	for (size_t i = 0; i < WL_QBYTES; i++)
		if (buf[i] != wl_pat(id, i))
			return 0;
	return 1;
}

/*
 * In a freshly forked child: it has its own pid and failure count, prints
 * no READY (the root does), and ends with wl_child_exit().
 */
static __attribute__((unused)) void wl_child_init(const char *role)
{
	wl_role = role;
	wl_pid = getpid();
	wl_failures = 0;
	wl_first_failure[0] = 0;
	wl_is_ready = 1;
}

/* A child's verdict: "CHILD <role> OK" or "CHILD <role> BAD: ...", exit 0/1. */
__attribute__((noreturn, unused)) static void wl_child_exit(void)
{
	pid_t now = getpid();
	WL_CHECK(now == wl_pid, "%s: getpid() changed: was %d, now %d", wl_role, (int)wl_pid,
		 (int)now);
	if (wl_failures == 0) {
		wl_printf("CHILD %s OK\n", wl_role);
		_exit(0);
	}
	wl_printf("CHILD %s BAD: %d check(s) failed, first: %s\n", wl_role, wl_failures,
		  wl_first_failure);
	_exit(1);
}

/*
 * A launcher's role process: works in ROOT_DIR/SUB (made here) with its own
 * out.log and pid file, as the harness's spawn_group expects.
 */
static __attribute__((unused)) void wl_launch_role(const char *sub, const char *root_dir, const char *role)
{
	wl_role = role;
	static char dir[4096];
	snprintf(dir, sizeof(dir), "%s/%s", root_dir, sub);
	if (mkdir(dir, 0755) != 0 && errno != EEXIST)
		wl_die("mkdir %s", dir);
	wl_dir = dir;
	wl_pid = getpid();
	int log = open(wl_path("out.log"), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (log < 0 || dup2(log, 1) != 1 || dup2(log, 2) != 2)
		wl_die("log");
	close(log);
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%d\n", (int)wl_pid);
	int fd = open(wl_path("pid.tmp"), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, buf, (size_t)n) != n || close(fd) != 0 ||
	    rename(wl_path("pid.tmp"), wl_path("pid")) != 0)
		wl_die("pid file");
}

/*
 * Appends "<role> <pid> <ppid>\n" to <workdir>/pids (one write on an O_APPEND
 * fd, so concurrent writers do not mix).  The harness reads it to find and
 * check the non-root processes of a tree.
 */
static __attribute__((unused)) void wl_record_pid(const char *role, pid_t pid, pid_t ppid)
{
	char line[128];
	int n = snprintf(line, sizeof(line), "%s %d %d\n", role, (int)pid, (int)ppid);
	int fd = open(wl_path("pids"), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, line, (size_t)n) != n)
		wl_die("writing pids file");
	close(fd);
}

/* 1 if child `pid` has exited (or does not exist); it is not reaped. */
static __attribute__((unused)) int wl_child_gone(pid_t pid)
{
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0)
		return errno != EINTR;
	return si.si_pid == pid;
}

/*
 * Waits up to timeout_ms for child `pid` (named `role`) to exit; it must exit
 * with status 0.  On timeout it is SIGKILLed.  Returns 1 if it passed.
 */
static __attribute__((unused)) int wl_wait_child(pid_t pid, const char *role, int timeout_ms)
{
	int64_t deadline = wl_now_ns() + (int64_t)timeout_ms * 1000000LL;
	for (;;) {
		int st = 0;
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid) {
			if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
				return 1;
			if (WIFEXITED(st))
				wl_fail("child %s (pid %d) exited with status %d", role, (int)pid,
					WEXITSTATUS(st));
			else if (WIFSIGNALED(st))
				wl_fail("child %s (pid %d) killed by signal %d", role, (int)pid,
					WTERMSIG(st));
			else
				wl_fail("child %s (pid %d): wait status %#x", role, (int)pid, st);
			return 0;
		}
		if (r < 0 && errno != EINTR) {
			wl_fail("waitpid(child %s, pid %d): errno %d", role, (int)pid, errno);
			return 0;
		}
		if (wl_now_ns() > deadline) {
			wl_fail("child %s (pid %d) did not exit within %d ms", role, (int)pid,
				timeout_ms);
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			return 0;
		}
		usleep(2000);
	}
}

/*
 * Progress of a loop across a dump/restore: a gap between two ticks longer
 * than WL_STALL_NS counts as a stall (the dump/restore gap, or a SIGSTOP).
 */
#define WL_STALL_NS 50000000LL
struct wl_progress {
	int64_t last;
	uint64_t ticks, since_stall, stalls;
	int64_t max_gap;
};

static __attribute__((unused)) void wl_progress_init(struct wl_progress *p)
{
	memset(p, 0, sizeof(*p));
	p->last = wl_now_ns();
}

static __attribute__((unused)) void wl_progress_tick(struct wl_progress *p)
{
	int64_t now = wl_now_ns();
	int64_t gap = now - p->last;
	if (gap > p->max_gap)
		p->max_gap = gap;
	if (gap > WL_STALL_NS) {
		p->stalls++;
		p->since_stall = 0;
	}
	p->last = now;
	p->ticks++;
	p->since_stall++;
}


#endif
