/*
 * tree_pipes: the root forks c1, c2, c3; c3 forks a grandchild gc.  Messages
 * {seq, wl_mix(seq)} travel a ring of pipes root -> c1 -> c2 -> c3 -> gc ->
 * root continuously, WINDOW of them in flight (each hop pauses a little
 * before forwarding, so bytes sit in every pipe).  Every hop checks the
 * sequence continues with no gap or duplicate and that getppid() is still
 * its original parent.  The non-root processes are listed in <workdir>/pids.
 * After SIGTERM the root goes on (wl_keep_going) until the ring has advanced
 * enough after READY and after the last stall, then stops sending and
 * closes its ring pipe; the EOF
 * cascades, each hop verifies itself and exits 0/1, the root drains the
 * ring, waits for c1..c3 (c3 waits for gc) and passes if all passed and the
 * ring advanced after READY and after the last stall.
 * Sabotage: c2 drops message 300.
 */
#include "wl_common.h"

#define WINDOW 8
#define MARGIN 50
#define AFTER_STALL_MIN 5

struct msg {
	uint64_t seq;
	uint64_t check;
};

/* 1: a message, 0: EOF, -1: interrupted before any byte (EINTR). */
static int read_msg(int fd, struct msg *m)
{
	size_t got = 0;
	while (got < sizeof(*m)) {
		ssize_t r = read(fd, (char *)m + got, sizeof(*m) - got);
		if (r < 0) {
			if (errno == EINTR) {
				if (got == 0)
					return -1;
				continue;
			}
			wl_fail("%s: read from ring: errno %d", wl_role, errno);
			return 0;
		}
		if (r == 0) {
			if (got != 0)
				wl_fail("%s: EOF inside a message (%zu bytes)", wl_role, got);
			return 0;
		}
		got += (size_t)r;
	}
	return 1;
}

static void write_msg(int fd, const struct msg *m)
{
	for (;;) {
		ssize_t r = write(fd, m, sizeof(*m));
		if (r == (ssize_t)sizeof(*m))
			return;
		if (r < 0 && errno == EINTR)
			continue;
		wl_fail("%s: write to ring returned %zd errno %d", wl_role, r, errno);
		return;
	}
}

/* One hop of the ring; never returns. */
static void hop(const char *role, int in, int out, pid_t ppid, pid_t child, const char *child_role)
{
	uint64_t expect = 0, n = 0;
	int ppid_bad = 0;
	struct msg m;
	for (;;) {
		int r = read_msg(in, &m);
		if (r < 0)
			continue;
		if (r == 0)
			break;
		if (m.check != wl_mix(m.seq))
			wl_fail("%s: corrupt message seq %llu", role, (unsigned long long)m.seq);
		if (m.seq != expect)
			wl_fail("%s: got seq %llu, want %llu (%s)", role, (unsigned long long)m.seq,
				(unsigned long long)expect, m.seq > expect ? "gap" : "duplicate");
		expect = m.seq + 1;
		n++;
		if (!ppid_bad && getppid() != ppid) {
			ppid_bad = 1;
			wl_fail("%s: getppid() is %d, want %d", role, (int)getppid(), (int)ppid);
		}
		if (wl_sabotage && strcmp(role, "c2") == 0 && m.seq == 300)
			continue; /* drop it */
		usleep(150);
		write_msg(out, &m);
	}
	close(out);
	close(in);
	if (child > 0)
		wl_wait_child(child, child_role, 10000);
	wl_printf("INFO %s forwarded %llu messages\n", role, (unsigned long long)n);
	wl_child_exit();
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int p[5][2]; /* p[0]: root->c1, p[1]: c1->c2, p[2]: c2->c3, p[3]: c3->gc, p[4]: gc->root */
	for (int i = 0; i < 5; i++)
		if (pipe2(p[i], O_CLOEXEC) != 0)
			wl_die("pipe");
	pid_t root = getpid();
	pid_t kids[3];
	const char *names[3] = { "c1", "c2", "c3" };

	for (int k = 0; k < 3; k++) {
		pid_t pid = fork();
		if (pid < 0)
			wl_die("fork");
		if (pid > 0) {
			kids[k] = pid;
			continue;
		}
		wl_child_init(names[k]);
		/* child k reads p[k], writes p[k+1]; c3 also hands p[3]r, p[4]w to gc */
		for (int i = 0; i < 5; i++) {
			if (i != k && !(k == 2 && i == 3))
				close(p[i][0]);
			if (i != k + 1 && !(k == 2 && i == 4))
				close(p[i][1]);
		}
		if (k < 2)
			hop(names[k], p[k][0], p[k + 1][1], root, 0, NULL);
		pid_t me = getpid();
		pid_t gc = fork();
		if (gc < 0)
			wl_die("fork gc");
		if (gc == 0) {
			wl_child_init("gc");
			close(p[2][0]);
			close(p[3][1]);
			wl_record_pid("gc", getpid(), me);
			hop("gc", p[3][0], p[4][1], me, 0, NULL);
		}
		close(p[3][0]);
		close(p[4][1]);
		hop("c3", p[2][0], p[3][1], root, gc, "gc");
	}
	for (int k = 0; k < 3; k++)
		wl_record_pid(names[k], kids[k], root);
	for (int i = 0; i < 5; i++) {
		if (i != 4)
			close(p[i][0]);
		if (i != 0)
			close(p[i][1]);
	}
	int out = p[0][1], in = p[4][0];

	uint64_t sent = 0, recvd = 0, ready_recvd = 0;
	struct msg m;
	for (; sent < WINDOW; sent++) {
		m.seq = sent;
		m.check = wl_mix(sent);
		write_msg(out, &m);
	}
	struct wl_progress prog;
	wl_progress_init(&prog);
	int ring_closed = 0;
	while (wl_keep_going(prog.since_stall >= AFTER_STALL_MIN && recvd >= ready_recvd + MARGIN)) {
		int r = read_msg(in, &m);
		if (r < 0)
			continue;
		if (r == 0) {
			wl_fail("ring closed unexpectedly after %llu messages", (unsigned long long)recvd);
			ring_closed = 1;
			break;
		}
		if (m.check != wl_mix(m.seq) || m.seq != recvd)
			wl_fail("root: got seq %llu, want %llu", (unsigned long long)m.seq,
				(unsigned long long)recvd);
		recvd = m.seq + 1;
		wl_progress_tick(&prog);
		if (!wl_is_ready) {
			ready_recvd = recvd;
			wl_ready();
		}
		usleep(1000);
		m.seq = sent;
		m.check = wl_mix(sent);
		write_msg(out, &m);
		sent++;
	}
	uint64_t at_stop = recvd;
	close(out);
	/* drain what is still in flight */
	while (!ring_closed) {
		int r = read_msg(in, &m);
		if (r < 0)
			continue;
		if (r == 0)
			break;
		if (m.check != wl_mix(m.seq) || m.seq != recvd)
			wl_fail("root (drain): got seq %llu, want %llu", (unsigned long long)m.seq,
				(unsigned long long)recvd);
		recvd = m.seq + 1;
	}
	close(in);
	int ok = 1;
	for (int k = 0; k < 3; k++)
		ok &= wl_wait_child(kids[k], names[k], 10000);
	wl_printf("INFO sent=%llu recvd=%llu ready=%llu stalls=%llu since_stall=%llu children_ok=%d\n",
		  (unsigned long long)sent, (unsigned long long)recvd,
		  (unsigned long long)ready_recvd, (unsigned long long)prog.stalls,
		  (unsigned long long)prog.since_stall, ok);
	WL_CHECK(recvd == sent, "ring lost messages: sent %llu, received %llu",
		 (unsigned long long)sent, (unsigned long long)recvd);
	WL_CHECK(at_stop >= ready_recvd + MARGIN, "ring advanced only %llu messages since READY",
		 (unsigned long long)(at_stop - ready_recvd));
	WL_CHECK(prog.since_stall >= AFTER_STALL_MIN,
		 "ring advanced only %llu messages after the last stall",
		 (unsigned long long)prog.since_stall);
	wl_finish();
}
