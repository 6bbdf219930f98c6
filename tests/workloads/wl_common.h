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

#endif
