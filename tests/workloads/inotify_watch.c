/*
 * inotify_watch: an inotify instance watching <workdir>/b and <workdir>/c
 * (a first watch on <workdir>/a was removed, so their descriptors are 2 and
 * 3). Every 10 ms it creates a file in c and reads the IN_CREATE event at
 * once, checking its descriptor and name. At SIGTERM: the descriptors are
 * unchanged (adding the same paths again returns them) and events kept
 * coming after READY.
 * Sabotage: removes the watch on c.
 */
#include "wl_common.h"
#include <sys/inotify.h>
#include <sys/stat.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	mkdir(wl_path("a"), 0755);
	mkdir(wl_path("b"), 0755);
	mkdir(wl_path("c"), 0755);
	int in = inotify_init1(IN_NONBLOCK);
	int wa = inotify_add_watch(in, wl_path("a"), IN_CREATE);
	int wb = inotify_add_watch(in, wl_path("b"), IN_DELETE);
	inotify_rm_watch(in, wa);
	int wc = inotify_add_watch(in, wl_path("c"), IN_CREATE);
	if (in < 0 || wa < 0 || wb < 0 || wc < 0)
		wl_die("inotify");
	char buf[4096];
	while (read(in, buf, sizeof buf) > 0) /* the IN_IGNORED of watch a */
		;
	uint64_t n = 0, seen = 0, at_ready = 0;
	wl_ready();
	while (!wl_term) {
		char name[64];
		snprintf(name, sizeof name, "c/f%llu", (unsigned long long)n);
		int f = open(wl_path(name), O_CREAT | O_WRONLY, 0644);
		if (f >= 0)
			close(f);
		n++;
		ssize_t r = read(in, buf, sizeof buf);
		for (ssize_t off = 0; r > 0 && off < r;) {
			struct inotify_event *e = (struct inotify_event *)(buf + off);
			WL_CHECK(e->wd == wc && (e->mask & IN_CREATE), "event on wd %d mask %x", e->wd, e->mask);
			seen++;
			off += (ssize_t)(sizeof *e + e->len);
		}
		if (wl_sabotage && n == 20)
			inotify_rm_watch(in, wc);
		usleep(10000);
	}
	WL_CHECK(inotify_add_watch(in, wl_path("b"), IN_DELETE) == wb, "watch on b has another descriptor");
	WL_CHECK(inotify_add_watch(in, wl_path("c"), IN_CREATE) == wc, "watch on c has another descriptor");
	WL_CHECK(seen > at_ready + 10, "only %llu events after READY", (unsigned long long)(seen - at_ready));
	wl_finish();
}
