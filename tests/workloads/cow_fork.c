/*
 * cow_fork: copy-on-write sharing between a parent and a child since fork.
 *
 * The parent fills REGION (anonymous, private) with a pattern, writes one
 * page of a private file mapping ("data.bin", like a library's .data), and
 * forks the child "cow". Then the child rewrites its first CHILD_PAGES
 * pages, the parent its last PARENT_PAGES pages, and the child drops
 * (MADV_DONTNEED) the DROP_PAGES pages after its own, so it reads zeros
 * there while the parent keeps them.
 * At SIGTERM each checks its contents, and that the pages neither wrote
 * are still shared: Shared_Dirty of REGION in its /proc/self/smaps covers
 * them (memory did not double).
 * Sabotage: the child rewrites every page after READY (nothing is shared).
 */
#include "wl_common.h"
#include <sys/mman.h>

#define PAGE 4096
#define NPAGES 4096 /* 16 MiB */
#define REGION (NPAGES * PAGE)
#define CHILD_PAGES 16
#define DROP_PAGES 16
#define PARENT_PAGES 16
#define UNTOUCHED (NPAGES - CHILD_PAGES - DROP_PAGES - PARENT_PAGES)

static unsigned char *region, *fmap;
static volatile sig_atomic_t unshare;

static void on_usr1(int sig)
{
	(void)sig;
	unshare = 1;
}

static unsigned char pat(size_t i, int who)
{
	return (unsigned char)(wl_mix(i / 8 + (size_t)who * 1000003) & 0xff);
}

/* Shared_Dirty in KiB of the smaps entry starting at `start`. */
static long shared_dirty_kb(void *start)
{
	char buf[1 << 16], head[32];
	ssize_t n = wl_read_file("/proc/self/smaps", buf, sizeof(buf) - 1);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	snprintf(head, sizeof(head), "%lx-", (unsigned long)start);
	char *p = strstr(buf, head);
	if (p == NULL || (p != buf && p[-1] != '\n'))
		return -1;
	char *s = strstr(p, "Shared_Dirty:");
	return s ? atol(s + 13) : -1;
}

/* who: 0 parent, 1 child */
static void check(int who)
{
	for (size_t pg = 0; pg < NPAGES; pg++) {
		int want_who = 0, zero = 0;
		if (who == 1 && pg < CHILD_PAGES)
			want_who = 1;
		else if (who == 1 && pg < CHILD_PAGES + DROP_PAGES)
			zero = 1;
		else if (who == 0 && pg >= NPAGES - PARENT_PAGES)
			want_who = 2;
		for (size_t off = 0; off < PAGE; off += 512) {
			size_t i = pg * PAGE + off;
			unsigned char want = zero ? 0 : pat(i, want_who);
			if (region[i] != want) {
				wl_fail("%s: page %zu byte %zu is %02x, want %02x", wl_role, pg, off, region[i], want);
				return;
			}
		}
	}
	WL_CHECK(fmap[0] == 'W' && fmap[PAGE] == 'f', "%s: private file mapping has %c%c", wl_role, fmap[0],
		 fmap[PAGE]);
	long kb = shared_dirty_kb(region);
	WL_CHECK(kb >= (long)UNTOUCHED * PAGE / 1024, "%s: only %ld KiB of the region shared, want %d",
		 wl_role, kb, UNTOUCHED * PAGE / 1024);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	region = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED)
		wl_die("mmap");
	madvise(region, REGION, MADV_NOHUGEPAGE); /* 4 KiB pages, counted exactly */
	for (size_t i = 0; i < REGION; i++)
		region[i] = pat(i, 0);
	int fd = open(wl_path("data.bin"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	char fbuf[2 * PAGE];
	memset(fbuf, 'f', sizeof(fbuf));
	if (fd < 0 || write(fd, fbuf, sizeof(fbuf)) != sizeof(fbuf))
		wl_die("data.bin");
	fmap = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (fmap == MAP_FAILED)
		wl_die("mmap data.bin");
	close(fd);
	fmap[0] = 'W';

	pid_t child = fork();
	if (child < 0)
		wl_die("fork");
	if (child == 0) {
		wl_child_init("cow");
		for (size_t i = 0; i < CHILD_PAGES * PAGE; i++)
			region[i] = pat(i, 1);
		madvise(region + CHILD_PAGES * PAGE, DROP_PAGES * PAGE, MADV_DONTNEED);
		signal(SIGUSR1, on_usr1);
		while (!wl_term) {
			if (unshare) { /* same bytes, but every page copied */
				for (size_t pg = CHILD_PAGES + DROP_PAGES; pg < NPAGES; pg++)
					((volatile unsigned char *)region)[pg * PAGE] = region[pg * PAGE];
				unshare = 0;
			}
			usleep(10000);
		}

		check(1);
		wl_child_exit();
	}
	wl_record_pid("cow", child, getpid());
	for (size_t i = (NPAGES - PARENT_PAGES) * PAGE; i < REGION; i++)
		region[i] = pat(i, 2);
	usleep(100000); /* the child has done its writes */
	check(0);
	wl_ready();
	if (wl_sabotage)
		kill(child, SIGUSR1);
	while (!wl_term)
		usleep(10000);
	check(0);
	kill(child, SIGTERM);
	wl_wait_child(child, "cow", 10000);
	wl_finish();
}
