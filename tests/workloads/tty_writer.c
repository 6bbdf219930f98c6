/*
 * tty_writer: opens the pseudo-terminal slave $CRT_PTY (the test holds the
 * master) and writes "TTY <n>" lines to it every 5 ms. At SIGTERM: the
 * terminal still takes writes, and n advanced after READY. The test reads
 * the master and checks the numbers continue with no gap across the dump.
 */
#include "wl_common.h"
#include <termios.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	const char *pty = getenv("CRT_PTY");
	if (!pty)
		wl_die("CRT_PTY not set");
	int t = open(pty, O_RDWR | O_NOCTTY);
	if (t < 0)
		wl_die("open %s", pty);
	struct termios tio;
	if (tcgetattr(t, &tio) == 0) {
		cfmakeraw(&tio);
		tcsetattr(t, TCSANOW, &tio);
	}
	uint64_t n = 0, at_ready = 0;
	wl_ready();
	while (!wl_term) {
		char line[32];
		int l = snprintf(line, sizeof line, "TTY %llu\n", (unsigned long long)n);
		if (write(t, line, (size_t)l) == l)
			n++;
		usleep(5000);
	}
	WL_CHECK(write(t, "END\n", 4) == 4, "the terminal no longer takes writes");
	WL_CHECK(n > at_ready + 20, "only %llu lines after READY", (unsigned long long)(n - at_ready));
	wl_finish();
}
