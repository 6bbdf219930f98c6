/*
 * threads4: 4 extra pthreads, each advancing its own counter (~1 ms) and
 * recording its gettid(); each also holds a thread-local (__thread) value
 * derived from its index.  The tids are written to <workdir>/tids.
 * At SIGTERM the main thread checks that every thread's counter advanced
 * since READY and is still advancing now (by 5, over at least 60 ms after
 * SIGTERM: it waits until they have, wl_keep_going), that every tid is
 * still listed in /proc/self/task, and its own thread-local value; then it
 * stops the threads, each of which checks gettid() and its thread-local
 * value are unchanged.
 * Sabotage: thread 2 corrupts its thread-local value.
 */
#include "wl_common.h"
#include <pthread.h>
#include <sys/syscall.h>

#define NT 4
#define MARGIN 50

struct th {
	pthread_t t;
	int idx;
	volatile pid_t tid;
	volatile uint64_t count;
	volatile int stop;
	uint64_t ready_count;
	int ok;
	char why[160];
};

static struct th ths[NT];
static uint64_t seed;
static __thread uint64_t tls_value;
static __thread int tls_idx = -1;

static uint64_t tls_want(int idx)
{
	return wl_mix(seed + (uint64_t)idx * 7919);
}

static void *run(void *arg)
{
	struct th *t = arg;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals go to the main thread */
	tls_idx = t->idx;
	tls_value = tls_want(t->idx);
	t->tid = (pid_t)syscall(SYS_gettid);
	t->ok = 1;
	while (!t->stop) {
		t->count++;
		if (wl_sabotage && t->idx == 2 && t->count == 200)
			tls_value ^= 1;
		if (t->ok && (tls_value != tls_want(t->idx) || tls_idx != t->idx)) {
			t->ok = 0;
			snprintf(t->why, sizeof(t->why), "thread %d: thread-local value changed",
				 t->idx);
		}
		usleep(1000);
	}
	pid_t now = (pid_t)syscall(SYS_gettid);
	if (t->ok && now != t->tid) {
		t->ok = 0;
		snprintf(t->why, sizeof(t->why), "thread %d: gettid() was %d, now %d", t->idx,
			 (int)t->tid, (int)now);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	seed = (uint64_t)wl_now_ns();
	tls_idx = 100;
	tls_value = tls_want(100);
	for (int i = 0; i < NT; i++) {
		ths[i].idx = i;
		if (pthread_create(&ths[i].t, NULL, run, &ths[i]) != 0)
			wl_die("pthread_create");
	}
	for (int i = 0; i < NT; i++)
		while (ths[i].tid == 0)
			usleep(1000);
	char buf[256];
	int n = 0;
	for (int i = 0; i < NT; i++)
		n += snprintf(buf + n, sizeof(buf) - (size_t)n, "%d\n", (int)ths[i].tid);
	int fd = open(wl_path("tids"), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, buf, (size_t)n) != n)
		wl_die("writing tids");
	close(fd);
	for (int i = 0; i < NT; i++)
		ths[i].ready_count = ths[i].count;
	wl_ready();

	while (!wl_term)
		usleep(10000);

	/* every thread is still advancing now (i.e. after any restore) */
	uint64_t before[NT];
	for (int i = 0; i < NT; i++)
		before[i] = ths[i].count;
	usleep(60000);
	for (;;) {
		int all = 1;
		for (int i = 0; i < NT; i++)
			all &= ths[i].count >= ths[i].ready_count + MARGIN && ths[i].count >= before[i] + 5;
		if (!wl_keep_going(all))
			break;
		usleep(10000);
	}
	for (int i = 0; i < NT; i++) {
		uint64_t c = ths[i].count;
		wl_printf("INFO thread %d tid %d count %llu (ready %llu)\n", i, (int)ths[i].tid,
			  (unsigned long long)c, (unsigned long long)ths[i].ready_count);
		WL_CHECK(c >= ths[i].ready_count + MARGIN,
			 "thread %d advanced only %llu since READY", i,
			 (unsigned long long)(c - ths[i].ready_count));
		WL_CHECK(c >= before[i] + 5, "thread %d is not advancing (%llu -> %llu after SIGTERM)",
			 i, (unsigned long long)before[i], (unsigned long long)c);
		char p[64];
		snprintf(p, sizeof(p), "/proc/self/task/%d", (int)ths[i].tid);
		struct stat st;
		WL_CHECK(stat(p, &st) == 0, "thread %d: tid %d not in /proc/self/task", i,
			 (int)ths[i].tid);
	}
	WL_CHECK(tls_idx == 100 && tls_value == tls_want(100),
		 "main thread's thread-local value changed");
	for (int i = 0; i < NT; i++) {
		ths[i].stop = 1;
		pthread_join(ths[i].t, NULL);
		WL_CHECK(ths[i].ok, "%s", ths[i].why);
	}
	wl_finish();
}
