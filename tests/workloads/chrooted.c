/*
 * chrooted: chroots into its workdir and works there: every 2 ms it
 * rewrites /counter (which is <workdir>/counter outside). At SIGTERM: "/"
 * is still the workdir (same inode as recorded) and the counter advanced
 * (after SIGTERM it works on until it has, wl_keep_going).
 * Sabotage: chroots into a subdirectory after READY.
 */
#include "wl_common.h"
#include <sys/stat.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	struct stat before;
	if (mkdir(wl_path("sub"), 0755) && errno != EEXIST)
		wl_die("mkdir");
	if (chroot(wl_dir) || chdir("/") || stat("/", &before))
		wl_die("chroot");
	wl_dir = "";
	uint64_t n = 0;
	wl_ready();
	while (wl_keep_going(n > 20)) {
		int f = open("/counter", O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (f >= 0) {
			char b[32];
			int l = snprintf(b, sizeof b, "%llu\n", (unsigned long long)n++);
			if (write(f, b, (size_t)l) != l)
				wl_fail("write /counter");
			close(f);
		}
		if (wl_sabotage && n == 20 && chroot("/sub"))
			wl_fail("sabotage chroot");
		usleep(2000);
	}
	struct stat now;
	WL_CHECK(stat("/", &now) == 0 && now.st_ino == before.st_ino, "/ is another directory now");
	WL_CHECK(n > 20, "only %llu rounds", (unsigned long long)n);
	wl_finish();
}
