/*
 * plugin_file: appends sequence-numbered fixed-width records (through the
 * file offset) to <workdir>/data.crt-recorder, a file only the test plugin
 * crt-plugin-recorder claims. At SIGTERM re-reads the file: records 0..N
 * contiguous, N advanced after READY.
 */
#include "wl_common.h"

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int fd = open(wl_path("data.crt-recorder"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		wl_die("open data.crt-recorder");
	long n = 0, at_ready = 0;
	for (; n < 20; n++) {
		char b[32];
		int l = snprintf(b, sizeof b, "%08ld\n", n);
		wl_write_all(fd, b, (size_t)l);
	}
	at_ready = n;
	wl_ready();
	while (!wl_term) {
		char b[32];
		int l = snprintf(b, sizeof b, "%08ld\n", n++);
		if (wl_sabotage && n == at_ready + 50)
			lseek(fd, 9, SEEK_SET);
		wl_write_all(fd, b, (size_t)l);
		usleep(3000);
	}
	static char buf[1 << 22];
	ssize_t r = pread(fd, buf, sizeof buf, 0);
	WL_CHECK(r == n * 9, "file holds %zd bytes, want %ld", r, n * 9);
	for (long i = 0; i < n && r == n * 9; i++) {
		char e[32];
		snprintf(e, sizeof e, "%08ld\n", i);
		if (memcmp(buf + i * 9, e, 9) != 0) {
			wl_fail("record %ld is wrong", i);
			break;
		}
	}
	WL_CHECK(n > at_ready + 5, "only %ld records after READY", n - at_ready);
	wl_finish();
}
