/*
 * aio_events: raw Linux AIO (no libaio). Sets up $CRT_AIO_CONTEXTS contexts
 * (default 2). On each, writes and reads a file in its workdir and leaves
 * the completion events unreaped before READY. At SIGTERM it reaps exactly
 * those events (data, result), submits new writes and reads on the same
 * contexts, and verifies the file.
 */
#include "wl_common.h"
#include <linux/aio_abi.h>
#include <poll.h>
#include <pthread.h>
#include <sys/syscall.h>

#define MAX_CTX 8
#define PENDING 3

static long io_setup(unsigned n, aio_context_t *c) { return syscall(SYS_io_setup, n, c); }
static long io_submit(aio_context_t c, long n, struct iocb **p) { return syscall(SYS_io_submit, c, n, p); }
static long io_getevents(aio_context_t c, long min, long n, struct io_event *e, struct timespec *t)
{
	return syscall(SYS_io_getevents, c, min, n, e, t);
}

static char bufs[MAX_CTX][PENDING][64];
static volatile uint64_t thread_ticks[8];

static void *ticker(void *arg)
{
	size_t i = (size_t)arg;
	for (;;) {
		thread_ticks[i]++;
		usleep(5000);
	}
	return NULL;
}

static void submit(aio_context_t ctx, int fd, int op, char *buf, size_t len, off_t off, uint64_t data)
{
	struct iocb cb;
	memset(&cb, 0, sizeof cb);
	cb.aio_lio_opcode = (uint16_t)op;
	cb.aio_fildes = (uint32_t)fd;
	cb.aio_buf = (uint64_t)(uintptr_t)buf;
	cb.aio_nbytes = len;
	cb.aio_offset = off;
	cb.aio_data = data;
	struct iocb *p = &cb;
	if (io_submit(ctx, 1, &p) != 1)
		wl_die("io_submit");
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	const char *n_s = getenv("CRT_AIO_CONTEXTS");
	int nctx = n_s ? atoi(n_s) : 2;
	if (nctx < 1 || nctx > MAX_CTX)
		nctx = 2;
	aio_context_t ctx[MAX_CTX] = {0};
	int fd = open(wl_path("aio.dat"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		wl_die("open");
	/* a context created and destroyed before the dump leaves nothing */
	aio_context_t gone = 0;
	if (io_setup(4, &gone) != 0 || syscall(SYS_io_destroy, gone) != 0)
		wl_die("io_setup/io_destroy");
	for (int c = 0; c < nctx; c++) {
		if (io_setup(8 + c * 40, &ctx[c]) != 0)
			wl_die("io_setup");
		char rec[32];
		int l = snprintf(rec, sizeof rec, "ctx%d-record", c);
		if (pwrite(fd, rec, (size_t)l, c * 64) != l)
			wl_die("pwrite");
		for (int i = 0; i < PENDING; i++)
			submit(ctx[c], fd, IOCB_CMD_PREAD, bufs[c][i], (size_t)l, c * 64, 0x1000u * (c + 1) + i);
	}
	/* $CRT_AIO_THREADS idle threads: contexts in a multi-threaded process */
	const char *t_s = getenv("CRT_AIO_THREADS");
	int nthreads = t_s ? atoi(t_s) : 0;
	for (int i = 0; i < nthreads && i < 8; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, ticker, (void *)(size_t)i) != 0)
			wl_die("pthread_create");
	}
	/* $CRT_AIO_POLL_FIFO: a POLLIN request on a FIFO, completed later by the test */
	const char *fifo = getenv("CRT_AIO_POLL_FIFO");
	int pfd = -1;
	if (fifo) {
		pfd = open(fifo, O_RDONLY | O_NONBLOCK);
		if (pfd < 0)
			wl_die("open fifo");
		submit(ctx[0], pfd, IOCB_CMD_POLL, (char *)(uintptr_t)POLLIN, 0, 0, 0xf1f0);
	}
	if (wl_sabotage) {
		struct io_event e[PENDING];
		io_getevents(ctx[0], 1, 1, e, NULL);
	}
	wl_ready();
	wl_wait_term();
	struct timespec zero = {0, 0};
	uint64_t ticks_at_term[8];
	for (int i = 0; i < nthreads && i < 8; i++)
		ticks_at_term[i] = thread_ticks[i];
	for (int c = 0; c < nctx; c++) {
		struct io_event ev[PENDING + 4];
		long n = io_getevents(ctx[c], 0, PENDING + 4, ev, &zero);
		if (c == 0 && fifo) {
			/* the poll completion came last */
			WL_CHECK(n == PENDING + 1, "ctx 0: %ld events waiting, want %d (incl. the poll)", n, PENDING + 1);
			WL_CHECK(n >= 1 && ev[n - 1].data == 0xf1f0 && (ev[n - 1].res & POLLIN), "ctx 0: poll event missing");
			n -= n > PENDING ? 1 : 0;
		} else {
			WL_CHECK(n == PENDING, "ctx %d: %ld events waiting, want %d", c, n, PENDING);
		}
		char want[32];
		int l = snprintf(want, sizeof want, "ctx%d-record", c);
		for (long i = 0; i < n && i < PENDING; i++) {
			WL_CHECK(ev[i].data == 0x1000u * (c + 1) + (uint64_t)i, "ctx %d event %ld: data %llx", c, i,
				 (unsigned long long)ev[i].data);
			WL_CHECK(ev[i].res == l, "ctx %d event %ld: res %lld, want %d", c, i, (long long)ev[i].res, l);
			WL_CHECK(memcmp(bufs[c][i], want, (size_t)l) == 0, "ctx %d event %ld: buffer differs", c, i);
		}
		/* the context still works: a new write and read */
		char nw[32], back[32] = {0};
		int nl = snprintf(nw, sizeof nw, "after-%d", c);
		submit(ctx[c], fd, IOCB_CMD_PWRITE, nw, (size_t)nl, 1024 + c * 64, 0xbeef);
		n = io_getevents(ctx[c], 1, 1, ev, NULL);
		WL_CHECK(n == 1 && ev[0].data == 0xbeef && ev[0].res == nl, "ctx %d: new write event", c);
		submit(ctx[c], fd, IOCB_CMD_PREAD, back, (size_t)nl, 1024 + c * 64, 0xcafe);
		n = io_getevents(ctx[c], 1, 1, ev, NULL);
		WL_CHECK(n == 1 && ev[0].res == nl && memcmp(back, nw, (size_t)nl) == 0, "ctx %d: new read", c);
	}
	usleep(30000);
	for (int i = 0; i < nthreads && i < 8; i++)
		WL_CHECK(thread_ticks[i] > ticks_at_term[i], "thread %d stopped ticking", i);
	wl_finish();
}
