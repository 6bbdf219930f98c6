/*
 * memstate: the state of memory areas besides their bytes, checked from
 * inside after restore (smaps VmFlags, PAGEMAP_SCAN categories, Rss):
 *
 * - areas with MADV_DONTFORK, MADV_WIPEONFORK, MADV_DONTDUMP,
 *   MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_MERGEABLE;
 * - an mlock'ed area (all pages present) and an mlock2(MLOCK_ONFAULT) one;
 *   mlockall(MCL_FUTURE | MCL_ONFAULT): an area mapped after restore is
 *   locked on fault too;
 * - guard regions (MADV_GUARD_INSTALL) in the middle of an area;
 * - a 512 MiB reservation with 3 pages written and 64 pages only read
 *   (mapped to the zero page): Rss stays small, the read pages are still
 *   zero-page mappings;
 * - a shared anonymous area of which only the second half is mapped
 *   (the first half unmapped: its offset in the object is not 0), shared
 *   with a child "sh", which writes into it after restore.
 * Sabotage: after READY the MADV_DONTDUMP area gets MADV_DODUMP.
 */
#include "wl_common.h"
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
#include <sys/syscall.h>

#define PAGE 4096
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#ifndef MCL_ONFAULT
#define MCL_ONFAULT 4
#endif

struct area {
	const char *name;
	int advice; /* -1: none */
	const char *flag;
	char *p;
};

static struct area areas[] = {
	{ "dontfork", MADV_DONTFORK, "dc", NULL }, { "wipeonfork", MADV_WIPEONFORK, "wf", NULL },
	{ "dontdump", MADV_DONTDUMP, "dd", NULL }, { "hugepage", MADV_HUGEPAGE, "hg", NULL },
	{ "nohugepage", MADV_NOHUGEPAGE, "nh", NULL }, { "mergeable", MADV_MERGEABLE, "mg", NULL },
};
#define NAREAS ((int)(sizeof(areas) / sizeof(areas[0])))

/* VmFlags of the smaps entry that starts at `start` ("" if none). */
static void vm_flags(void *start, char *out, size_t n)
{
	static char buf[1 << 18];
	char head[32];
	out[0] = 0;
	ssize_t len = wl_read_file("/proc/self/smaps", buf, sizeof(buf) - 1);
	if (len <= 0)
		return;
	buf[len] = 0;
	snprintf(head, sizeof(head), "%lx-", (unsigned long)start);
	for (char *p = strstr(buf, head); p; p = strstr(p + 1, head)) {
		if (p != buf && p[-1] != '\n')
			continue;
		char *f = strstr(p, "VmFlags:");
		char *e = f ? strchr(f, '\n') : NULL;
		if (f && e)
			snprintf(out, n, "%.*s ", (int)(e - f - 8), f + 8);
		return;
	}
}

static int has_flag(void *start, const char *flag)
{
	char f[512], want[8];
	vm_flags(start, f, sizeof(f));
	snprintf(want, sizeof(want), " %s ", flag);
	return strstr(f, want) != NULL;
}

/* Pages of [p, p+len) in a PAGEMAP_SCAN category. */
struct page_region {
	uint64_t start, end, categories;
};
struct pm_scan_arg {
	uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask,
		category_anyof_mask, return_mask;
};
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_PFNZERO (1 << 5)
#define PAGE_IS_GUARD (1 << 8)
static long pages_in(void *p, size_t len, uint64_t cat)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	struct page_region r[256];
	struct pm_scan_arg a = { .size = sizeof(a), .start = (uint64_t)p, .end = (uint64_t)p + len,
				 .vec = (uint64_t)r, .vec_len = 256, .category_mask = cat, .return_mask = cat };
	long n = ioctl(fd, _IOWR('f', 16, struct pm_scan_arg), &a), pages = 0;
	close(fd);
	for (long i = 0; i < n; i++)
		pages += (long)((r[i].end - r[i].start) / PAGE);
	return n < 0 ? -1 : pages;
}

static long rss_kb(void *start)
{
	static char buf[1 << 18];
	char head[32];
	ssize_t len = wl_read_file("/proc/self/smaps", buf, sizeof(buf) - 1);
	if (len <= 0)
		return -1;
	buf[len] = 0;
	snprintf(head, sizeof(head), "%lx-", (unsigned long)start);
	char *p = strstr(buf, head);
	char *r = p ? strstr(p, "\nRss:") : NULL;
	return r ? atol(r + 5) : -1;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	for (int i = 0; i < NAREAS; i++) {
		areas[i].p = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (areas[i].p == MAP_FAILED || madvise(areas[i].p, 4 * PAGE, areas[i].advice) != 0)
			wl_die("madvise %s", areas[i].name);
		memset(areas[i].p, i + 1, 4 * PAGE);
	}
	char *locked = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *onfault = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (locked == MAP_FAILED || mlock(locked, 8 * PAGE) != 0 || onfault == MAP_FAILED ||
	    syscall(SYS_mlock2, onfault, 8 * PAGE, 1 /* MLOCK_ONFAULT */) != 0)
		wl_die("mlock");
	onfault[0] = 1; /* one page present, seven not */
	char *guarded = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(guarded, 'g', 8 * PAGE);
	if (madvise(guarded + 2 * PAGE, 3 * PAGE, MADV_GUARD_INSTALL) != 0)
		wl_die("MADV_GUARD_INSTALL");
	size_t big = 512u << 20;
	char *sparse = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (sparse == MAP_FAILED)
		wl_die("mmap sparse");
	madvise(sparse, big, MADV_NOHUGEPAGE);
	sparse[0] = 'a';
	sparse[big / 2] = 'b';
	sparse[big - 1] = 'c';
	volatile char sum = 0;
	for (int i = 0; i < 64; i++)
		sum += sparse[PAGE * (100 + i)]; /* read only: zero page */
	long zero_before = pages_in(sparse, big, PAGE_IS_PFNZERO);

	/* shared anonymous memory mapped from offset 8 pages, shared with a child */
	char *sh = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED || munmap(sh, 8 * PAGE) != 0)
		wl_die("shared anon");
	sh += 8 * PAGE;
	memset(sh, 's', 8 * PAGE);
	pid_t child = fork();
	if (child == 0) {
		wl_child_init("sh");
		while (!wl_term)
			usleep(10000);
		sh[PAGE] = 'C';
		wl_child_exit();
	}
	wl_record_pid("sh", child, getpid());
	if (mlockall(MCL_FUTURE | MCL_ONFAULT) != 0)
		wl_die("mlockall");

	wl_ready();
	if (wl_sabotage)
		madvise(areas[2].p, 4 * PAGE, MADV_DODUMP);
	while (!wl_term)
		usleep(10000);

	for (int i = 0; i < NAREAS; i++) {
		WL_CHECK(has_flag(areas[i].p, areas[i].flag), "%s: no %s in VmFlags", areas[i].name, areas[i].flag);
		WL_CHECK(areas[i].p[4 * PAGE - 1] == i + 1, "%s: data lost", areas[i].name);
	}
	WL_CHECK(has_flag(locked, "lo") && pages_in(locked, 8 * PAGE, PAGE_IS_PRESENT) == 8,
		 "mlock'ed area: not locked or not all present");
	WL_CHECK(has_flag(onfault, "lf") && pages_in(onfault, 8 * PAGE, PAGE_IS_PRESENT) == 1,
		 "mlock2(MLOCK_ONFAULT) area: flags or %ld pages present", pages_in(onfault, 8 * PAGE, PAGE_IS_PRESENT));
	WL_CHECK(pages_in(guarded, 8 * PAGE, PAGE_IS_GUARD) == 3, "guard region: %ld guard pages, want 3",
		 pages_in(guarded, 8 * PAGE, PAGE_IS_GUARD));
	WL_CHECK(guarded[PAGE] == 'g' && guarded[6 * PAGE] == 'g', "guarded area: data lost");
	WL_CHECK(sparse[0] == 'a' && sparse[big / 2] == 'b' && sparse[big - 1] == 'c', "sparse area: data lost");
	long rss = rss_kb(sparse);
	WL_CHECK(rss >= 0 && rss < 1024, "sparse area: Rss %ld KiB", rss);
	WL_CHECK(pages_in(sparse, big, PAGE_IS_PFNZERO) == zero_before && zero_before == 64,
		 "sparse area: %ld zero-page mappings, was %ld", pages_in(sparse, big, PAGE_IS_PFNZERO), zero_before);
	char *later = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	WL_CHECK(later != MAP_FAILED && has_flag(later, "lf"), "mlockall(MCL_FUTURE|MCL_ONFAULT) lost");
	kill(child, SIGTERM);
	wl_wait_child(child, "sh", 10000);
	WL_CHECK(sh[PAGE] == 'C' && sh[0] == 's', "shared anon at an offset: not shared with the child");
	wl_finish();
}
