/*
 * seccomp_caps: seccomp filters and credentials that differ per thread.
 *
 * - thread "other" starts first; the main thread installs two filters with
 *   SECCOMP_FILTER_FLAG_TSYNC (both threads get them): getpriority fails
 *   with errno 77, and (the second one, with SECCOMP_FILTER_FLAG_LOG)
 *   sched_getparam with errno 76; then "other" adds a filter of its own:
 *   getpgid fails with errno 78 there only;
 * - the main thread, with raw syscalls (so only it changes): bounding set
 *   without CAP_NET_RAW, securebits NO_SETUID_FIXUP, uids 1000/1001/1002,
 *   gids 2000, groups {3000, 3001}, permitted and effective {NET_BIND_SERVICE,
 *   SETPCAP}, inheritable and ambient {NET_BIND_SERVICE}; "other" stays root.
 * At SIGTERM each thread compares its /proc/self/task/TID/status lines
 * (ids, capabilities, Seccomp, Seccomp_filters) and securebits with what
 * they were at READY, and checks each filter still acts, where it should.
 * Last, "other" installs one more filter with TSYNC, which the kernel
 * allows only if the common filters are shared, not copies.
 * Sabotage: the main thread adds a filter after READY.
 */
#include "wl_common.h"
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/securebits.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#define KEYS 11
static const char *keys[KEYS] = { "Uid:",    "Gid:",    "Groups:", "CapInh:",	      "CapPrm:",     "CapEff:",
				  "CapBnd:", "CapAmb:", "Seccomp:", "Seccomp_filters:", "NoNewPrivs:" };

struct snap {
	char lines[KEYS][128];
	int securebits;
};

static void snapshot(struct snap *s)
{
	char path[64], buf[4096];
	snprintf(path, sizeof(path), "/proc/self/task/%ld/status", syscall(SYS_gettid));
	ssize_t n = wl_read_file(path, buf, sizeof(buf) - 1);
	buf[n > 0 ? n : 0] = 0;
	for (int k = 0; k < KEYS; k++) {
		s->lines[k][0] = 0;
		char *p = strstr(buf, keys[k]);
		if (p && (p == buf || p[-1] == '\n')) {
			char *e = strchr(p, '\n');
			size_t len = e ? (size_t)(e - p) : strlen(p);
			snprintf(s->lines[k], sizeof(s->lines[k]), "%.*s", (int)(len < 127 ? len : 127), p);
		}
	}
	s->securebits = prctl(PR_GET_SECUREBITS);
}

static void compare(const char *who, const struct snap *a)
{
	struct snap b;
	snapshot(&b);
	for (int k = 0; k < KEYS; k++)
		WL_CHECK(strcmp(a->lines[k], b.lines[k]) == 0, "%s: \"%s\" became \"%s\"", who, a->lines[k],
			 b.lines[k]);
	WL_CHECK(a->securebits == b.securebits, "%s: securebits %#x became %#x", who, a->securebits,
		 b.securebits);
}

static int filter(int nr, int err, unsigned flags)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = 4, .filter = f };
	return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

/* errno of a raw syscall (0 on success) */
static int err_of(long nr, long a)
{
	return syscall(nr, a, 0, 0) < 0 ? errno : 0;
}

static pthread_barrier_t b1, b2, b3;
static struct snap other_snap;
static volatile int other_ok, tsync = -1;

static void *other(void *arg)
{
	(void)arg;
	pthread_barrier_wait(&b1); /* the main thread installs the TSYNC filters */
	pthread_barrier_wait(&b2);
	if (filter(SYS_getpgid, 78, 0) != 0)
		wl_die("other: filter");
	snapshot(&other_snap);
	other_ok = 1;
	while (!wl_term)
		usleep(10000);
	compare("other", &other_snap);
	WL_CHECK(err_of(SYS_getpriority, PRIO_PROCESS) == 77, "other: getpriority filter gone");
	WL_CHECK(err_of(SYS_getpgid, 0) == 78, "other: getpgid filter gone");
	pthread_barrier_wait(&b3); /* the main thread has checked */
	/* TSYNC works only if the main thread's filters are ancestors of
	 * ours: the filters the threads had in common are one object, not
	 * two copies */
	tsync = filter(SYS_getsid, 80, SECCOMP_FILTER_FLAG_TSYNC);
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	pthread_barrier_init(&b1, NULL, 2);
	pthread_barrier_init(&b2, NULL, 2);
	pthread_barrier_init(&b3, NULL, 2);
	pthread_t t;
	if (pthread_create(&t, NULL, other, NULL) != 0)
		wl_die("pthread_create");
	pthread_barrier_wait(&b1);
	if (filter(SYS_getpriority, 77, SECCOMP_FILTER_FLAG_TSYNC) != 0 ||
	    filter(SYS_sched_getparam, 76, SECCOMP_FILTER_FLAG_TSYNC | SECCOMP_FILTER_FLAG_LOG) != 0)
		wl_die("main: filters");
	pthread_barrier_wait(&b2);
	while (!other_ok)
		usleep(1000);

	/* credentials of the main thread only (raw syscalls, no glibc broadcast) */
	if (syscall(SYS_prctl, PR_CAPBSET_DROP, CAP_NET_RAW, 0, 0, 0) != 0 ||
	    syscall(SYS_prctl, PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0) != 0)
		wl_die("bounding/securebits");
	gid_t groups[] = { 3000, 3001 };
	if (syscall(SYS_setgroups, 2, groups) != 0 || syscall(SYS_setresgid, 2000, 2000, 2000) != 0 ||
	    syscall(SYS_setresuid, 1000, 1001, 1002) != 0)
		wl_die("ids");
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2] = { { 0 } };
	d[0].effective = d[0].permitted = (1u << CAP_NET_BIND_SERVICE) | (1u << CAP_SETPCAP);
	d[0].inheritable = 1u << CAP_NET_BIND_SERVICE;
	if (syscall(SYS_capset, &h, d) != 0 ||
	    syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0) != 0)
		wl_die("capset/ambient");
	struct snap main_snap;
	snapshot(&main_snap);
	WL_CHECK(err_of(SYS_sched_getparam, 0) == 76 && err_of(SYS_getpgid, 0) == 0, "main: filters before");

	wl_ready();
	if (wl_sabotage) {
		prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
		filter(SYS_getsid, 79, 0);
	}
	while (!wl_term)
		usleep(10000);
	compare("main", &main_snap);
	WL_CHECK(err_of(SYS_getpriority, PRIO_PROCESS) == 77, "main: getpriority filter gone");
	WL_CHECK(err_of(SYS_sched_getparam, 0) == 76, "main: sched_getparam filter gone");
	WL_CHECK(err_of(SYS_getpgid, 0) == 0, "main: got the other thread's getpgid filter");
	pthread_barrier_wait(&b3);
	pthread_join(t, NULL);
	WL_CHECK(tsync == 0, "other: TSYNC failed (%d): the threads' common filters are not shared", tsync);
	wl_finish();
}
