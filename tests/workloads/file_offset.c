/*
 * file_offset: appends fixed-width sequence-numbered lines to
 * <workdir>/data.txt through a plain O_RDWR fd (relying on the fd's file
 * offset, not O_APPEND) every ~5 ms, and reads a pre-written file through a
 * second O_RDONLY fd that started at offset 100.
 * At SIGTERM: both offsets are where they must be, data.txt re-read from a
 * fresh fd holds lines 0..N-1 exactly (no gaps, no duplicates, no NUL holes),
 * and the read fd continues with the right bytes.
 */
#include "wl_common.h"

#define LINE_LEN 11 /* "%010u\n" */
#define RO_SIZE (64 * 1024)
#define RO_START 100
#define RO_CHUNK 16

static unsigned char ro_byte(size_t i)
{
	return (unsigned char)(wl_mix(i) & 0xff);
}

static void write_all_or_fail(int fd, const char *buf, size_t n)
{
	ssize_t r = write(fd, buf, n);
	if (r != (ssize_t)n)
		wl_fail("write returned %zd (errno %d), want %zu", r, errno, n);
}

static void read_check(int rofd, off_t *ro_off)
{
	unsigned char buf[RO_CHUNK];
	if (*ro_off + RO_CHUNK > RO_SIZE) {
		if (lseek(rofd, RO_START, SEEK_SET) != RO_START)
			wl_fail("lseek ro fd back to %d failed", RO_START);
		*ro_off = RO_START;
	}
	ssize_t r = read(rofd, buf, sizeof(buf));
	if (r != RO_CHUNK) {
		wl_fail("read on ro fd at %lld returned %zd", (long long)*ro_off, r);
		return;
	}
	for (int k = 0; k < RO_CHUNK; k++) {
		if (buf[k] != ro_byte((size_t)*ro_off + k)) {
			wl_fail("ro fd read wrong data: at expected offset %lld byte %d is %02x, want %02x",
				(long long)*ro_off, k, buf[k], ro_byte((size_t)*ro_off + k));
			break;
		}
	}
	*ro_off += RO_CHUNK;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);

	/* pre-written read-only file */
	{
		static unsigned char buf[RO_SIZE];
		for (size_t i = 0; i < RO_SIZE; i++)
			buf[i] = ro_byte(i);
		int wfd = open(wl_path("ro.bin"), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (wfd < 0 || write(wfd, buf, RO_SIZE) != RO_SIZE || close(wfd) != 0)
			wl_die("writing ro.bin");
	}
	int rofd = open(wl_path("ro.bin"), O_RDONLY | O_CLOEXEC);
	if (rofd < 0 || lseek(rofd, RO_START, SEEK_SET) != RO_START)
		wl_die("opening ro.bin");
	off_t ro_off = RO_START;

	int fd = open(wl_path("data.txt"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		wl_die("opening data.txt");

	unsigned n = 0;
	char line[32];
	for (; n < 10; n++) {
		snprintf(line, sizeof(line), "%010u\n", n);
		write_all_or_fail(fd, line, LINE_LEN);
	}
	wl_ready();

	unsigned iter = 0;
	while (!wl_term) {
		snprintf(line, sizeof(line), "%010u\n", n);
		write_all_or_fail(fd, line, LINE_LEN);
		n++;
		if (wl_sabotage && n == 40)
			lseek(fd, LINE_LEN, SEEK_CUR); /* leaves a NUL hole */
		if (++iter % 10 == 0)
			read_check(rofd, &ro_off);
		usleep(5000);
	}

	wl_printf("INFO lines=%u ro_off=%lld\n", n, (long long)ro_off);

	off_t off = lseek(fd, 0, SEEK_CUR);
	WL_CHECK(off == (off_t)n * LINE_LEN, "data.txt fd offset is %lld, want %lld",
		 (long long)off, (long long)n * LINE_LEN);
	off_t roff = lseek(rofd, 0, SEEK_CUR);
	WL_CHECK(roff == ro_off, "ro.bin fd offset is %lld, want %lld", (long long)roff,
		 (long long)ro_off);
	read_check(rofd, &ro_off);

	/* re-read data.txt from a fresh fd */
	int cfd = open(wl_path("data.txt"), O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (cfd < 0 || fstat(cfd, &st) != 0) {
		wl_fail("cannot open/stat data.txt: errno %d", errno);
		wl_finish();
	}
	WL_CHECK(st.st_size == (off_t)n * LINE_LEN, "data.txt size %lld, want %lld (%u lines)",
		 (long long)st.st_size, (long long)n * LINE_LEN, n);
	size_t size = (size_t)st.st_size;
	char *buf = malloc(size + 1);
	if (buf == NULL)
		wl_die("malloc");
	size_t got = 0;
	while (got < size) {
		ssize_t r = read(cfd, buf + got, size - got);
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	WL_CHECK(got == size, "read %zu of %zu bytes of data.txt", got, size);
	WL_CHECK(memchr(buf, 0, got) == NULL, "data.txt contains NUL bytes (hole) at %zu",
		 memchr(buf, 0, got) ? (size_t)((char *)memchr(buf, 0, got) - buf) : 0);
	size_t lines = got / LINE_LEN;
	for (size_t i = 0; i < lines; i++) {
		char *l = buf + i * LINE_LEN;
		char want[32];
		snprintf(want, sizeof(want), "%010zu\n", i);
		if (memcmp(l, want, LINE_LEN) != 0) {
			wl_fail("data.txt line %zu is \"%.10s\", want %zu", i, l, i);
			break;
		}
	}
	WL_CHECK(lines == n, "data.txt holds %zu lines, in-memory count is %u", lines, n);
	wl_finish();
}
