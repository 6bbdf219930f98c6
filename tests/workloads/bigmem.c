/*
 * bigmem: holds $CRT_BIGMEM_MB MiB (default 64) of pseudo-random anonymous
 * memory, for the page benchmark.  Sleeps until SIGTERM, then verifies
 * every word of the pattern.
 */
#include "wl_common.h"
#include <sys/mman.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	const char *mb_s = getenv("CRT_BIGMEM_MB");
	size_t mb = mb_s ? strtoul(mb_s, NULL, 10) : 64;
	size_t words = (mb << 20) / 8;
	uint64_t *p = mmap(NULL, mb << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		wl_die("mmap %zu MiB", mb);
	for (size_t i = 0; i < words; i++)
		p[i] = wl_mix(i);
	wl_ready();
	wl_wait_term();
	size_t bad = 0;
	for (size_t i = 0; i < words; i++)
		bad += p[i] != wl_mix(i);
	WL_CHECK(bad == 0, "%zu of %zu words differ", bad, words);
	wl_finish();
}
