/*
 * shared_file: the parent opens <workdir>/data.txt (O_RDWR, not O_APPEND)
 * and forks a child; both write fixed-size records "P|C <seq>\n" in turn
 * through the one shared file offset, passing a token over two pipes
 * (record k is written by the parent if k is even).  Before each write the
 * writer checks the shared offset is k * RECLEN.  After SIGTERM the parent
 * goes on (wl_keep_going) until enough records were written after READY
 * and after the last stall, then stops the child (token STOP), waits for it (exit 0), and re-reads the
 * file: every record present, in order, none overwritten.  The child is
 * listed in <workdir>/pids.
 * Sabotage: the child re-opens the file (its own offset) after 50 records.
 */
#include "wl_common.h"

#define RECLEN 16 /* "P 0000000000123\n" */
#define STOP UINT64_MAX
#define MARGIN 40
#define AFTER_STALL_MIN 5

static void put_u64(int fd, uint64_t v)
{
	for (;;) {
		ssize_t r = write(fd, &v, sizeof(v));
		if (r == sizeof(v))
			return;
		if (r < 0 && errno == EINTR)
			continue;
		wl_fail("%s: token write returned %zd errno %d", wl_role, r, errno);
		return;
	}
}

/* 1: got a token, 0: EOF/error */
static int get_u64(int fd, uint64_t *v)
{
	for (;;) {
		ssize_t r = read(fd, v, sizeof(*v));
		if (r == sizeof(*v))
			return 1;
		if (r < 0 && errno == EINTR)
			continue;
		if (r != 0)
			wl_fail("%s: token read returned %zd errno %d", wl_role, r, errno);
		return 0;
	}
}

static void write_record(int fd, char who, uint64_t k)
{
	off_t off = lseek(fd, 0, SEEK_CUR);
	WL_CHECK(off == (off_t)(k * RECLEN), "%s: shared offset is %lld before record %llu, want %llu",
		 wl_role, (long long)off, (unsigned long long)k, (unsigned long long)(k * RECLEN));
	char rec[RECLEN + 1];
	snprintf(rec, sizeof(rec), "%c %013llu\n", who, (unsigned long long)k);
	ssize_t r = write(fd, rec, RECLEN);
	WL_CHECK(r == RECLEN, "%s: record write returned %zd errno %d", wl_role, r, errno);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int fd = open(wl_path("data.txt"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int to_child[2], to_parent[2];
	if (fd < 0 || pipe2(to_child, O_CLOEXEC) != 0 || pipe2(to_parent, O_CLOEXEC) != 0)
		wl_die("setup");
	pid_t parent = getpid();
	pid_t child = fork();
	if (child < 0)
		wl_die("fork");
	if (child == 0) {
		wl_child_init("child");
		close(to_child[1]);
		close(to_parent[0]);
		uint64_t t, n = 0;
		while (get_u64(to_child[0], &t) && t != STOP) {
			WL_CHECK(t % 2 == 1, "child: got token %llu (even)", (unsigned long long)t);
			WL_CHECK(getppid() == parent, "child: getppid() is %d, want %d",
				 (int)getppid(), (int)parent);
			if (wl_sabotage && ++n == 50) {
				off_t cur = lseek(fd, 0, SEEK_CUR);
				int nfd = open(wl_path("data.txt"), O_RDWR | O_CLOEXEC);
				lseek(nfd, cur, SEEK_SET);
				dup2(nfd, fd);
				close(nfd);
			}
			write_record(fd, 'C', t);
			put_u64(to_parent[1], t + 1);
			if (wl_failures > 0)
				break;
		}
		WL_CHECK(t == STOP, "child: token stream ended without STOP");
		wl_child_exit();
	}
	close(to_child[0]);
	close(to_parent[1]);
	wl_record_pid("child", child, parent);

	uint64_t k = 0, ready_k = 0;
	struct wl_progress prog;
	wl_progress_init(&prog);
	for (;;) {
		write_record(fd, 'P', k);
		if (k == 0) {
			ready_k = 0;
		}
		if (!wl_keep_going(prog.since_stall >= AFTER_STALL_MIN && k >= ready_k + MARGIN) ||
		    wl_failures > 0) {
			k++;
			break;
		}
		put_u64(to_child[1], k + 1);
		uint64_t t;
		if (!get_u64(to_parent[0], &t)) {
			wl_fail("parent: token pipe closed after record %llu", (unsigned long long)k);
			k += 2;
			break;
		}
		WL_CHECK(t == k + 2, "parent: got token %llu, want %llu", (unsigned long long)t,
			 (unsigned long long)(k + 2));
		k = t;
		wl_progress_tick(&prog);
		if (!wl_is_ready) {
			ready_k = k;
			wl_ready();
		}
		usleep(2000);
	}
	/* k records written: 0..k-1 */
	put_u64(to_child[1], STOP);
	close(to_child[1]);
	wl_wait_child(child, "child", 10000);
	while (!wl_term)
		usleep(5000);

	int cfd = open(wl_path("data.txt"), O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (cfd < 0 || fstat(cfd, &st) != 0)
		wl_die("re-reading data.txt");
	WL_CHECK(st.st_size == (off_t)(k * RECLEN), "data.txt is %lld bytes, want %llu records",
		 (long long)st.st_size, (unsigned long long)k);
	uint64_t bad = 0;
	for (uint64_t i = 0; i < k; i++) {
		char rec[RECLEN + 1], want[RECLEN + 1];
		snprintf(want, sizeof(want), "%c %013llu\n", i % 2 ? 'C' : 'P', (unsigned long long)i);
		if (pread(cfd, rec, RECLEN, (off_t)(i * RECLEN)) != RECLEN ||
		    memcmp(rec, want, RECLEN) != 0) {
			if (bad == 0)
				wl_fail("record %llu is \"%.15s\", want \"%.15s\"", (unsigned long long)i,
					rec, want);
			bad++;
		}
	}
	wl_printf("INFO records=%llu ready=%llu stalls=%llu since_stall=%llu bad=%llu\n",
		  (unsigned long long)k, (unsigned long long)ready_k,
		  (unsigned long long)prog.stalls, (unsigned long long)prog.since_stall,
		  (unsigned long long)bad);
	WL_CHECK(k >= ready_k + MARGIN, "only %llu records since READY",
		 (unsigned long long)(k - ready_k));
	WL_CHECK(prog.since_stall >= AFTER_STALL_MIN, "only %llu rounds after the last stall",
		 (unsigned long long)prog.since_stall);
	wl_finish();
}
