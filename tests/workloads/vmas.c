/*
 * vmas: one of each kind of mapping, checked at SIGTERM:
 *  - shared.bin mapped MAP_SHARED RW, counters written every loop; the file
 *    (read back with pread) must equal the mapping and hold the last counter;
 *  - private.bin mapped MAP_PRIVATE RW, page 0 modified (COW): page 0 keeps
 *    the private data, page 1 the file data, and the file is unchanged;
 *  - anonymous pages written, then mprotect(PROT_READ): content and r--p;
 *  - a PROT_NONE guard region: still ---p in /proc/self/maps;
 *  - MAP_SHARED|MAP_ANONYMOUS pages with data and a counter (rw-s);
 *  - a 64 MiB sparse anonymous region (MADV_NOHUGEPAGE), every 16th page
 *    touched: touched pages hold their markers, at most those are resident
 *    (mincore), every other page reads as zero;
 *  - a heap grown with sbrk: contents intact, the break where it was, and
 *    sbrk can still grow it and the new memory works.
 */
#include "wl_common.h"
#include <sys/mman.h>

#define SHARED_PAGES 4
#define PRIVATE_PAGES 2
#define RO_PAGES 3
#define GUARD_PAGES 2
#define SHANON_PAGES 4
#define SPARSE_BYTES (64UL << 20)
#define SPARSE_STRIDE 16
#define BRK_BYTES (1UL << 20)
#define BRK_MORE (256UL << 10)

static size_t page;

static unsigned char pat(uint64_t tag, size_t i)
{
	return (unsigned char)(wl_mix(tag * 0x100000000ULL + i) & 0xff);
}

static void fill(unsigned char *p, size_t n, uint64_t tag)
{
	for (size_t i = 0; i < n; i++)
		p[i] = pat(tag, i);
}

/* first mismatching index, or n */
static size_t check(const unsigned char *p, size_t n, uint64_t tag)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != pat(tag, i))
			return i;
	return n;
}

static char maps_buf[1 << 20];

/* Perms ("rwxp") of the mapping covering [addr, addr+len), or "" if none. */
static const char *perms_of(const void *addr, size_t len, char *out)
{
	out[0] = 0;
	ssize_t n = wl_read_file("/proc/self/maps", maps_buf, sizeof(maps_buf) - 1);
	if (n < 0)
		return out;
	maps_buf[n] = 0;
	uintptr_t a = (uintptr_t)addr;
	for (char *l = maps_buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
		char *end;
		uintptr_t s = strtoul(l, &end, 16);
		if (*end != '-')
			continue;
		uintptr_t e = strtoul(end + 1, &end, 16);
		if (s <= a && a + len <= e && *end == ' ') {
			memcpy(out, end + 1, 4);
			out[4] = 0;
			return out;
		}
	}
	return out;
}

static int in_heap_vma(const void *addr, size_t len)
{
	ssize_t n = wl_read_file("/proc/self/maps", maps_buf, sizeof(maps_buf) - 1);
	if (n < 0)
		return 0;
	maps_buf[n] = 0;
	uintptr_t a = (uintptr_t)addr;
	for (char *l = maps_buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
		char *end;
		uintptr_t s = strtoul(l, &end, 16);
		uintptr_t e = strtoul(end + 1, &end, 16);
		char *nl = strchr(l, '\n');
		char *h = strstr(l, "[heap]");
		if (h && (!nl || h < nl) && s <= a && a + len <= e)
			return 1;
	}
	return 0;
}

static void *map_or_die(size_t len, int prot, int flags, int fd, const char *what)
{
	void *p = mmap(NULL, len, prot, flags, fd, 0);
	if (p == MAP_FAILED)
		wl_die("mmap %s", what);
	return p;
}

static int make_file(const char *name, size_t len, uint64_t tag)
{
	int fd = open(wl_path(name), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		wl_die("open %s", name);
	unsigned char *buf = malloc(len);
	if (buf == NULL)
		wl_die("malloc");
	fill(buf, len, tag);
	if (pwrite(fd, buf, len, 0) != (ssize_t)len)
		wl_die("write %s", name);
	free(buf);
	return fd;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	page = (size_t)sysconf(_SC_PAGESIZE);
	char perms[8];

	/* let malloc set up its arena before we move the break ourselves */
	free(malloc(64));

	/* 1. MAP_SHARED file */
	int shfd = make_file("shared.bin", SHARED_PAGES * page, 1);
	unsigned char *sh = map_or_die(SHARED_PAGES * page, PROT_READ | PROT_WRITE, MAP_SHARED,
				       shfd, "shared.bin");
	close(shfd);

	/* 2. MAP_PRIVATE file, page 0 modified */
	int pvfd = make_file("private.bin", PRIVATE_PAGES * page, 2);
	unsigned char *pv = map_or_die(PRIVATE_PAGES * page, PROT_READ | PROT_WRITE, MAP_PRIVATE,
				       pvfd, "private.bin");
	close(pvfd);
	fill(pv, page, 3);

	/* 3. anonymous, then read-only */
	unsigned char *ro = map_or_die(RO_PAGES * page, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, "ro");
	fill(ro, RO_PAGES * page, 4);
	if (mprotect(ro, RO_PAGES * page, PROT_READ) != 0)
		wl_die("mprotect");

	/* 4. PROT_NONE guard */
	unsigned char *guard = map_or_die(GUARD_PAGES * page, PROT_NONE,
					  MAP_PRIVATE | MAP_ANONYMOUS, -1, "guard");

	/* 5. shared anonymous */
	unsigned char *sa = map_or_die(SHANON_PAGES * page, PROT_READ | PROT_WRITE,
				       MAP_SHARED | MAP_ANONYMOUS, -1, "shared anon");
	fill(sa, SHANON_PAGES * page, 5);
	volatile uint64_t *sa_counter = (volatile uint64_t *)(sa + SHANON_PAGES * page - 8);

	/* 6. sparse */
	unsigned char *sp = map_or_die(SPARSE_BYTES, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, "sparse");
	if (madvise(sp, SPARSE_BYTES, MADV_NOHUGEPAGE) != 0)
		wl_die("madvise");
	size_t sp_pages = SPARSE_BYTES / page, touched = 0;
	for (size_t i = 0; i < sp_pages; i += SPARSE_STRIDE) {
		uint64_t *w = (uint64_t *)(sp + i * page);
		w[0] = wl_mix(i);
		w[page / 8 - 1] = ~wl_mix(i);
		touched++;
	}

	/* 7. sbrk heap */
	unsigned char *brk0 = sbrk(0);
	unsigned char *hb = sbrk((intptr_t)BRK_BYTES);
	if (hb == (void *)-1)
		wl_die("sbrk");
	if (hb != brk0)
		wl_die("sbrk returned %p, break was %p", (void *)hb, (void *)brk0);
	fill(hb, BRK_BYTES, 7);

	/* sanity before READY */
	if (strcmp(perms_of(guard, GUARD_PAGES * page, perms), "---p") != 0)
		wl_die("guard perms are '%s' before READY", perms);

	uint64_t iter = 0, ready_iter = 0;
	wl_ready();
	while (!wl_term) {
		iter++;
		for (int p = 0; p < SHARED_PAGES; p++)
			*(volatile uint64_t *)(sh + p * page) = iter * (uint64_t)(p + 1);
		*sa_counter = iter;
		if (wl_sabotage && iter == 20) {
			unsigned char junk[16];
			memset(junk, 0xEE, sizeof(junk));
			int fd = open(wl_path("private.bin"), O_WRONLY | O_CLOEXEC);
			if (fd >= 0) {
				ssize_t r = pwrite(fd, junk, sizeof(junk), page + 100);
				(void)r;
				close(fd);
			}
		}
		usleep(2000);
	}

	wl_printf("INFO iterations=%llu\n", (unsigned long long)iter);
	WL_CHECK(iter > ready_iter + 20, "loop ran only %llu times", (unsigned long long)iter);

	/* 1 */
	{
		size_t len = SHARED_PAGES * page;
		unsigned char *f = malloc(len);
		int fd = open(wl_path("shared.bin"), O_RDONLY | O_CLOEXEC);
		ssize_t r = (fd >= 0 && f) ? pread(fd, f, len, 0) : -1;
		if (fd >= 0)
			close(fd);
		WL_CHECK(r == (ssize_t)len, "pread shared.bin returned %zd", r);
		if (r == (ssize_t)len) {
			WL_CHECK(memcmp(f, sh, len) == 0, "shared.bin on disk differs from the mapping");
			for (int p = 0; p < SHARED_PAGES; p++) {
				size_t off = (size_t)p * page;
				uint64_t m = *(volatile uint64_t *)(sh + off);
				WL_CHECK(m == iter * (uint64_t)(p + 1),
					 "shared.bin page %d counter is %llu, want %llu", p,
					 (unsigned long long)m, (unsigned long long)(iter * (p + 1)));
				for (size_t k = 8; k < page; k++) {
					if (sh[off + k] != pat(1, off + k)) {
						wl_fail("shared.bin page %d lost its pattern at %zu", p, k);
						break;
					}
				}
			}
		}
		free(f);
	}

	/* 2 */
	{
		size_t i = check(pv, page, 3);
		WL_CHECK(i == page, "private.bin mapping page 0 (modified) differs at %zu", i);
		const unsigned char *p1 = pv + page;
		size_t j = 0;
		while (j < page && p1[j] == pat(2, page + j))
			j++;
		WL_CHECK(j == page, "private.bin mapping page 1 (unmodified) differs at %zu", j);
		unsigned char *f = malloc(PRIVATE_PAGES * page);
		int fd = open(wl_path("private.bin"), O_RDONLY | O_CLOEXEC);
		ssize_t r = fd >= 0 ? pread(fd, f, PRIVATE_PAGES * page, 0) : -1;
		if (fd >= 0)
			close(fd);
		WL_CHECK(r == (ssize_t)(PRIVATE_PAGES * page), "pread private.bin returned %zd", r);
		size_t k = check(f, PRIVATE_PAGES * page, 2);
		WL_CHECK(k == PRIVATE_PAGES * page, "private.bin on disk changed at byte %zu", k);
		free(f);
		WL_CHECK(strcmp(perms_of(pv, PRIVATE_PAGES * page, perms), "rw-p") == 0,
			 "private.bin mapping perms '%s', want rw-p", perms);
		WL_CHECK(strcmp(perms_of(sh, SHARED_PAGES * page, perms), "rw-s") == 0,
			 "shared.bin mapping perms '%s', want rw-s", perms);
	}

	/* 3 */
	{
		size_t i = check(ro, RO_PAGES * page, 4);
		WL_CHECK(i == RO_PAGES * page, "read-only region differs at %zu", i);
		WL_CHECK(strcmp(perms_of(ro, RO_PAGES * page, perms), "r--p") == 0,
			 "read-only region perms '%s', want r--p", perms);
	}

	/* 4 */
	WL_CHECK(strcmp(perms_of(guard, GUARD_PAGES * page, perms), "---p") == 0,
		 "guard region perms '%s', want ---p", perms);

	/* 5 */
	{
		WL_CHECK(*sa_counter == iter, "shared anon counter %llu, want %llu",
			 (unsigned long long)*sa_counter, (unsigned long long)iter);
		size_t i = check(sa, SHANON_PAGES * page - 8, 5);
		WL_CHECK(i == SHANON_PAGES * page - 8, "shared anon region differs at %zu", i);
		WL_CHECK(strcmp(perms_of(sa, SHANON_PAGES * page, perms), "rw-s") == 0,
			 "shared anon perms '%s', want rw-s", perms);
	}

	/* 6: residency first (reading untouched pages maps the zero page) */
	{
		unsigned char *vec = malloc(sp_pages);
		if (vec == NULL || mincore(sp, SPARSE_BYTES, vec) != 0) {
			wl_fail("mincore failed: errno %d", errno);
		} else {
			size_t resident = 0, touched_missing = 0;
			for (size_t i = 0; i < sp_pages; i++) {
				if (vec[i] & 1)
					resident++;
				else if (i % SPARSE_STRIDE == 0)
					touched_missing++;
			}
			WL_CHECK(resident <= touched + 16,
				 "sparse region: %zu pages resident, only %zu were touched", resident,
				 touched);
			WL_CHECK(touched_missing == 0, "sparse region: %zu touched pages not resident",
				 touched_missing);
		}
		free(vec);
		size_t bad_marker = 0, bad_zero = 0;
		for (size_t i = 0; i < sp_pages; i++) {
			const uint64_t *w = (const uint64_t *)(sp + i * page);
			if (i % SPARSE_STRIDE == 0) {
				if (w[0] != wl_mix(i) || w[page / 8 - 1] != ~wl_mix(i))
					bad_marker++;
				for (size_t k = 1; k < page / 8 - 1; k++)
					if (w[k] != 0) {
						bad_zero++;
						break;
					}
			} else {
				for (size_t k = 0; k < page / 8; k++)
					if (w[k] != 0) {
						bad_zero++;
						break;
					}
			}
		}
		WL_CHECK(bad_marker == 0, "sparse region: %zu touched pages lost their markers",
			 bad_marker);
		WL_CHECK(bad_zero == 0, "sparse region: %zu pages hold unexpected non-zero data",
			 bad_zero);
	}

	/* 7 */
	{
		size_t i = check(hb, BRK_BYTES, 7);
		WL_CHECK(i == BRK_BYTES, "sbrk region differs at %zu", i);
		WL_CHECK(in_heap_vma(hb, BRK_BYTES), "sbrk region is not inside [heap]");
		unsigned char *cur = sbrk(0);
		WL_CHECK(cur == hb + BRK_BYTES, "program break is %p, want %p", (void *)cur,
			 (void *)(hb + BRK_BYTES));
		unsigned char *more = sbrk((intptr_t)BRK_MORE);
		if (more == (void *)-1) {
			wl_fail("sbrk cannot grow after restore: errno %d", errno);
		} else {
			WL_CHECK(more == cur, "sbrk grew at %p, want %p", (void *)more, (void *)cur);
			fill(more, BRK_MORE, 8);
			size_t k = check(more, BRK_MORE, 8);
			WL_CHECK(k == BRK_MORE, "new sbrk memory differs at %zu", k);
			WL_CHECK(in_heap_vma(hb, BRK_BYTES + BRK_MORE),
				 "grown sbrk region is not one [heap] mapping");
		}
	}
	wl_finish();
}
