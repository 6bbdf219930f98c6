/*
 * ghost_file: writes sequence-numbered records to a file it unlinked right
 * after opening it (like tmpfile()), through the file offset, and holds a
 * second deleted file open read-only at offset 100. At SIGTERM: the first
 * file holds records 0..n-1 with no gap, the second reads on from offset
 * 100, and both are still unlinked ("(deleted)").
 */
#include "wl_common.h"

static int is_deleted(int fd)
{
	char p[64], link[512];
	snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(p, link, sizeof link - 1);
	if (n < 0)
		return 0;
	link[n] = 0;
	return strstr(link, "(deleted)") != NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int w = open(wl_path("ghost.dat"), O_RDWR | O_CREAT | O_TRUNC, 0600);
	int r = open(wl_path("ghost.ro"), O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (w < 0 || r < 0)
		wl_die("open");
	char pat[256];
	for (int i = 0; i < 256; i++)
		pat[i] = (char)i;
	if (write(r, pat, sizeof pat) != sizeof pat)
		wl_die("write");
	close(r);
	r = open(wl_path("ghost.ro"), O_RDONLY);
	if (r < 0 || lseek(r, 100, SEEK_SET) != 100)
		wl_die("reopen");
	unlink(wl_path("ghost.dat"));
	unlink(wl_path("ghost.ro"));
	uint64_t n = 0, at_ready = 0;
	wl_ready();
	while (!wl_term) {
		char rec[32];
		snprintf(rec, sizeof rec, "%014llu\n", (unsigned long long)n);
		if (write(w, rec, 15) == 15)
			n++;
		if (wl_sabotage && n == 30)
			lseek(w, 15, SEEK_SET);
		usleep(2000);
	}
	static char buf[1 << 20];
	ssize_t got = pread(w, buf, sizeof buf, 0);
	WL_CHECK(got == (ssize_t)(n * 15), "file holds %zd bytes, want %llu", got, (unsigned long long)(n * 15));
	for (uint64_t i = 0; i < n && got == (ssize_t)(n * 15); i++) {
		char want[32];
		snprintf(want, sizeof want, "%014llu\n", (unsigned long long)i);
		if (memcmp(buf + i * 15, want, 15)) {
			wl_fail("record %llu is wrong", (unsigned long long)i);
			break;
		}
	}
	unsigned char c = 0;
	WL_CHECK(read(r, &c, 1) == 1 && c == 100, "read-only ghost: got byte %d at offset 100", c);
	WL_CHECK(is_deleted(w) && is_deleted(r), "the files are visible again");
	WL_CHECK(n > at_ready + 20, "only %llu records after READY", (unsigned long long)(n - at_ready));
	wl_finish();
}
