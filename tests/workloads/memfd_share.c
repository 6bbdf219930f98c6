/*
 * memfd_share: the root memfd_create()s "crt_wl_memfd", write()s SIZE bytes
 * (a header page of zeros, then a pattern), maps it MAP_SHARED and forks a
 * child.  The root keeps the inherited fd, lseek()ed to ROOT_POS; the child
 * re-opens the memfd through /proc/self/fd (its own open file description),
 * lseek()s it to CHILD_POS and closes the inherited fd: two descriptions,
 * one mapping (inherited), one object.
 *
 * Every ~1 ms each side increments its counter in the mapping, pwrite()s
 * its iteration number into the file through its fd (and checks its own
 * mapping shows it at once: fd and mapping are one object), stores its
 * fd's inode in the mapping, and records what it sees of the other's
 * counter.  At the end each side checks: the other's counter advanced over
 * its last HIST iterations; the other's fd has the same inode as its own;
 * its fd's offset, size, FD_CLOEXEC and link name; the pattern (read with
 * pread); /proc/self/maps shows exactly one "/memfd:crt_wl_memfd" mapping
 * with the inode of its fd; progress after the last stall.
 * After SIGTERM each side plays on (wl_keep_going) until it has made the
 * progress its checks need.  The root then checks itself, SIGTERMs the child
 * and plays on (without counting: the child's checks need the root's
 * counter to move) until the child has exited (exit 0).  The child is
 * listed in <workdir>/pids.
 * Sabotage: the child replaces its mapping with a private anonymous copy.
 */
#include "wl_common.h"
#include <stddef.h>
#include <sys/mman.h>

#define NAME "crt_wl_memfd"
#define PAGE 4096
#define SIZE (3 * PAGE)
#define PATTERN_OFF 256
#define ROOT_POS 5000
#define CHILD_POS 777
#define HIST 50
#define AFTER_STALL_MIN (HIST + 10)
#define OTHER_MIN 10

struct shm {
	volatile uint64_t counter[2]; /* [0]: root, [1]: child */
	volatile uint64_t fdcnt[2];   /* written with pwrite() through each side's fd */
	volatile uint64_t ino[2];     /* st_ino of each side's fd */
};

static struct shm *shm;
static int fd;

static unsigned char pattern_at(size_t i)
{
	return i < PATTERN_OFF ? 0 : (unsigned char)wl_mix(i);
}

/* The inode of the one /memfd:NAME line of /proc/self/maps, or 0. */
static uint64_t maps_inode(int *lines)
{
	static char buf[65536];
	ssize_t n = wl_read_file("/proc/self/maps", buf, sizeof(buf) - 1);
	*lines = 0;
	if (n < 0)
		return 0;
	buf[n] = 0;
	uint64_t ino = 0;
	for (char *line = buf; line && *line;) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = 0;
		if (strstr(line, "/memfd:" NAME)) {
			unsigned long long i = 0;
			/* start-end perms offset dev inode path */
			if (sscanf(line, "%*s %*s %*s %*s %llu", &i) == 1)
				ino = i;
			(*lines)++;
		}
		line = nl ? nl + 1 : NULL;
	}
	return ino;
}

static void check_fd(int me, off_t want_pos)
{
	struct stat st;
	if (fstat(fd, &st) != 0) {
		wl_fail("%s: fstat(memfd): errno %d", wl_role, errno);
		return;
	}
	WL_CHECK(st.st_size == SIZE, "%s: memfd size %lld, want %d", wl_role, (long long)st.st_size, SIZE);
	off_t pos = lseek(fd, 0, SEEK_CUR);
	WL_CHECK(pos == want_pos, "%s: memfd offset %lld, want %lld", wl_role, (long long)pos,
		 (long long)want_pos);
	int fdfl = fcntl(fd, F_GETFD);
	WL_CHECK(fdfl == FD_CLOEXEC, "%s: F_GETFD %d, want FD_CLOEXEC", wl_role, fdfl);
	char link[64], want[64];
	snprintf(want, sizeof(want), "/memfd:%s", NAME);
	char proc[64];
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	ssize_t ln = readlink(proc, link, sizeof(link) - 1);
	if (ln < 0)
		ln = 0;
	link[ln] = 0;
	WL_CHECK(strncmp(link, want, strlen(want)) == 0, "%s: fd links to %s, want %s", wl_role, link, want);
	static unsigned char buf[SIZE];
	ssize_t r = pread(fd, buf, SIZE, 0);
	WL_CHECK(r == SIZE, "%s: pread returned %zd errno %d", wl_role, r, errno);
	for (size_t i = PATTERN_OFF; r == SIZE && i < SIZE; i++) {
		if (buf[i] != pattern_at(i)) {
			wl_fail("%s: memfd byte %zu is %#x, want %#x", wl_role, i, buf[i], pattern_at(i));
			break;
		}
	}
	int lines = 0;
	uint64_t mino = maps_inode(&lines);
	WL_CHECK(lines == 1, "%s: %d /memfd:%s line(s) in /proc/self/maps, want 1", wl_role, lines, NAME);
	WL_CHECK(mino == st.st_ino, "%s: the mapping is inode %llu, the fd inode %llu", wl_role,
		 (unsigned long long)mino, (unsigned long long)st.st_ino);
	uint64_t other = shm->ino[1 - me];
	WL_CHECK(other == st.st_ino, "%s: the other side's fd is inode %llu, mine %llu", wl_role,
		 (unsigned long long)other, (unsigned long long)st.st_ino);
}

/* One side of the game. */
struct player {
	int me;
	pid_t peer; /* the root: the child; the child: the root */
	uint64_t i, unseen;
	uint64_t hist_other[HIST]; /* [i % HIST]: the other's counter at my iteration i */
};

/* One iteration (without the sleep). */
static void step(struct player *p)
{
	int me = p->me;
	shm->counter[me]++;
	p->i++;
	uint64_t v = p->i;
	ssize_t w = pwrite(fd, &v, sizeof(v), offsetof(struct shm, fdcnt) + 8 * (size_t)me);
	if (w != sizeof(v) && wl_failures < 5)
		wl_fail("%s: pwrite returned %zd errno %d", wl_role, w, errno);
	if (shm->fdcnt[me] != p->i && p->unseen++ < 3)
		wl_fail("%s: the mapping shows %llu, not %llu just pwrite()n through the fd", wl_role,
			(unsigned long long)shm->fdcnt[me], (unsigned long long)p->i);
	struct stat st;
	if (fstat(fd, &st) == 0)
		shm->ino[me] = st.st_ino;
	p->hist_other[p->i % HIST] = shm->counter[1 - me];
}

/* The other's counter advanced at least OTHER_MIN over my last HIST iterations. */
static int other_advanced(const struct player *p)
{
	return p->i >= HIST && shm->counter[1 - p->me] >= p->hist_other[(p->i + 1) % HIST] + OTHER_MIN;
}

/* The other side exited (the child; for the child: its parent). */
static int peer_gone(const struct player *p)
{
	return p->me == 0 ? wl_child_gone(p->peer) : getppid() != p->peer;
}

static void play(struct player *p)
{
	int me = p->me, other = 1 - me;
	struct wl_progress prog;
	wl_progress_init(&prog);
	/* (no progress to wait for once the other side is gone) */
	while (wl_keep_going(wl_term && (peer_gone(p) || (prog.since_stall >= AFTER_STALL_MIN &&
							  other_advanced(p))))) {
		step(p);
		uint64_t i = p->i;
		wl_progress_tick(&prog);
		if (wl_sabotage && me == 1 && i == 50) {
			struct shm copy = *shm;
			if (mmap(shm, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
				 -1, 0) != shm)
				wl_die("sabotage mmap");
			*shm = copy;
		}
		usleep(1000);
	}
	/* let the other side store its inode after any stall */
	uint64_t i = p->i, other_now = shm->counter[other];
	wl_printf("INFO %s: iterations=%llu stalls=%llu since_stall=%llu other=%llu\n", wl_role,
		  (unsigned long long)i, (unsigned long long)prog.stalls,
		  (unsigned long long)prog.since_stall, (unsigned long long)other_now);
	WL_CHECK(prog.since_stall >= AFTER_STALL_MIN, "%s: only %llu iterations after the last stall",
		 wl_role, (unsigned long long)prog.since_stall);
	if (i >= HIST) {
		uint64_t o = p->hist_other[(i + 1) % HIST];
		WL_CHECK(other_now >= o + OTHER_MIN,
			 "%s: the other side's counter advanced only %llu over my last %d iterations",
			 wl_role, (unsigned long long)(other_now - o), HIST);
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	fd = memfd_create(NAME, MFD_CLOEXEC);
	if (fd < 0)
		wl_die("memfd_create");
	static unsigned char init[SIZE];
	for (size_t i = 0; i < SIZE; i++)
		init[i] = pattern_at(i);
	for (size_t done = 0; done < SIZE;) {
		size_t n = SIZE - done < 1000 ? SIZE - done : 1000; /* several writes */
		ssize_t r = write(fd, init + done, n);
		if (r <= 0)
			wl_die("write memfd");
		done += (size_t)r;
	}
	shm = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (shm == MAP_FAILED)
		wl_die("mmap memfd");
	pid_t parent = getpid();
	pid_t child = fork();
	if (child < 0)
		wl_die("fork");
	if (child == 0) {
		wl_child_init("child");
		char proc[64];
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
		int own = open(proc, O_RDWR | O_CLOEXEC);
		if (own < 0)
			wl_die("child: reopen memfd");
		close(fd);
		fd = own;
		if (lseek(fd, CHILD_POS, SEEK_SET) != CHILD_POS)
			wl_die("child: lseek");
		wl_drain_ns /= 2; /* SIGTERMed once the root has drained */
		struct player p = { .me = 1, .peer = parent };
		play(&p);
		check_fd(1, CHILD_POS);
		WL_CHECK(getppid() == parent, "child: getppid() is %d, want %d", (int)getppid(),
			 (int)parent);
		wl_child_exit();
	}
	wl_record_pid("child", child, parent);
	if (lseek(fd, ROOT_POS, SEEK_SET) != ROOT_POS)
		wl_die("lseek");
	int64_t deadline = wl_now_ns() + 5000000000LL;
	while (shm->counter[1] == 0) {
		if (wl_now_ns() > deadline)
			wl_die("child never started");
		usleep(1000);
	}
	wl_ready();
	struct player p = { .me = 0, .peer = child };
	play(&p);
	kill(child, SIGTERM);
	/* play on while the child drains: its checks need my counter to move */
	deadline = wl_now_ns() + wl_drain_ns / 2 + 1000000000LL;
	while (!wl_child_gone(child) && wl_now_ns() < deadline) {
		step(&p);
		usleep(1000);
	}
	check_fd(0, ROOT_POS);
	wl_wait_child(child, "child", 10000);
	wl_finish();
}
