/*
 * cgroup_nest (as root, on a hybrid cgroup layout: v1 pids and cpuset at
 * /sys/fs/cgroup/{pids,cpuset}, v2 at /sys/fs/cgroup/unified): nested
 * cgroups with settings, and a thread in other cgroups than its process.
 * B is "crt-cg-<pid>".
 *   pids:    the process in B/inner (mode 0750, owner 2345:2345,
 *            pids.max 77); the thread in B/thr (pids.max 33).
 *   cpuset:  the process in B (cpuset.cpus and cpuset.mems 0: a v1
 *            cpuset takes no task before both are set).
 *   v2:      the process in B, the thread in B/t (cgroup.type threaded).
 * After SIGTERM it checks from inside: /proc/self/cgroup and the thread's
 * /proc/self/task/TID/cgroup, the directories' modes and owners, and the
 * settings; then it goes back to its first cgroups and removes its own.
 * Sabotage: it sets inner's pids.max to 78 after READY.
 */
#include "wl_common.h"
#include <pthread.h>
#include <sys/syscall.h>

#define PIDS "/sys/fs/cgroup/pids"
#define CPUSET "/sys/fs/cgroup/cpuset"
#define V2 "/sys/fs/cgroup/unified"

static char base[64];
static volatile pid_t thread_tid;

static void put(const char *dir, const char *file, const char *value)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, value, strlen(value)) != (ssize_t)strlen(value))
		wl_die("writing %s to %s", value, path);
	close(fd);
}

static const char *dir_of(const char *root, const char *sub)
{
	static char buf[8][512];
	static int slot;
	char *p = buf[slot++ % 8];
	snprintf(p, 512, "%s/%s%s%s", root, base, *sub ? "/" : "", sub);
	return p;
}

static void make(const char *dir)
{
	if (mkdir(dir, 0755) != 0)
		wl_die("mkdir %s", dir);
}

static void join(const char *dir, const char *file, pid_t who)
{
	char v[32];
	snprintf(v, sizeof(v), "%d", (int)who);
	put(dir, file, v);
}

/* The path of hierarchy `ctrl` ("pids", "cpuset", "" for v2) in a cgroup file. */
static const char *cg_path(const char *file, const char *ctrl)
{
	static char buf[4096], out[512];
	ssize_t n = wl_read_file(file, buf, sizeof(buf) - 1);
	buf[n > 0 ? n : 0] = 0;
	strcpy(out, "?");
	for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n")) {
		char *a = strchr(l, ':'), *b = a ? strchr(a + 1, ':') : NULL;
		if (!b)
			continue;
		*b = 0;
		if (strcmp(a + 1, ctrl) == 0) {
			snprintf(out, sizeof(out), "%s", b + 1);
			break;
		}
	}
	return out;
}

static void check_path(const char *file, const char *ctrl, const char *sub)
{
	char want[256];
	snprintf(want, sizeof(want), "/%s%s%s", base, *sub ? "/" : "", sub);
	const char *got = cg_path(file, ctrl);
	WL_CHECK(strcmp(got, want) == 0, "%s: cgroup %s is %s, want %s", file,
		 *ctrl ? ctrl : "v2", got, want);
}

static void check_value(const char *dir, const char *file, const char *want)
{
	char path[512], buf[256];
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	ssize_t n = wl_read_file(path, buf, sizeof(buf) - 1);
	buf[n > 0 ? n : 0] = 0;
	char *nl = strchr(buf, '\n');
	if (nl)
		*nl = 0;
	WL_CHECK(n > 0 && strcmp(buf, want) == 0, "%s is %s, want %s", path, n > 0 ? buf : "unreadable",
		 want);
}

static void *thread_main(void *arg)
{
	(void)arg;
	thread_tid = (pid_t)syscall(SYS_gettid);
	while (!wl_term)
		usleep(10000);
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	snprintf(base, sizeof(base), "crt-cg-%d", (int)getpid());
	char orig[3][512];
	const char *roots[3] = { PIDS, CPUSET, V2 }, *ctrls[3] = { "pids", "cpuset", "" };
	for (int i = 0; i < 3; i++)
		snprintf(orig[i], sizeof(orig[i]), "%s%s", roots[i],
			 cg_path("/proc/self/cgroup", ctrls[i]));
	pthread_t th;
	if (pthread_create(&th, NULL, thread_main, NULL) != 0)
		wl_die("pthread_create");
	while (thread_tid == 0)
		usleep(1000);

	make(dir_of(PIDS, ""));
	make(dir_of(PIDS, "inner"));
	make(dir_of(PIDS, "thr"));
	put(dir_of(PIDS, "inner"), "pids.max", "77");
	put(dir_of(PIDS, "thr"), "pids.max", "33");
	if (chmod(dir_of(PIDS, "inner"), 0750) != 0 || chown(dir_of(PIDS, "inner"), 2345, 2345) != 0)
		wl_die("chmod/chown inner");
	join(dir_of(PIDS, "inner"), "cgroup.procs", getpid());
	join(dir_of(PIDS, "thr"), "tasks", thread_tid);

	make(dir_of(CPUSET, ""));
	put(dir_of(CPUSET, ""), "cpuset.cpus", "0");
	put(dir_of(CPUSET, ""), "cpuset.mems", "0");
	join(dir_of(CPUSET, ""), "cgroup.procs", getpid());

	make(dir_of(V2, ""));
	join(dir_of(V2, ""), "cgroup.procs", getpid());
	make(dir_of(V2, "t"));
	put(dir_of(V2, "t"), "cgroup.type", "threaded");
	join(dir_of(V2, "t"), "cgroup.threads", thread_tid);

	wl_ready();
	if (wl_sabotage)
		put(dir_of(PIDS, "inner"), "pids.max", "78");
	wl_wait_term();

	char tfile[64];
	snprintf(tfile, sizeof(tfile), "/proc/self/task/%d/cgroup", (int)thread_tid);
	check_path("/proc/self/cgroup", "pids", "inner");
	check_path("/proc/self/cgroup", "cpuset", "");
	check_path("/proc/self/cgroup", "", "");
	check_path(tfile, "pids", "thr");
	check_path(tfile, "cpuset", "");
	check_path(tfile, "", "t");
	struct stat st;
	WL_CHECK(stat(dir_of(PIDS, "inner"), &st) == 0 && (st.st_mode & 07777) == 0750 &&
			 st.st_uid == 2345 && st.st_gid == 2345,
		 "%s: mode %o owner %d:%d, want 750 2345:2345", dir_of(PIDS, "inner"),
		 st.st_mode & 07777, st.st_uid, st.st_gid);
	check_value(dir_of(PIDS, "inner"), "pids.max", "77");
	check_value(dir_of(PIDS, "thr"), "pids.max", "33");
	check_value(dir_of(CPUSET, ""), "cpuset.cpus", "0");
	check_value(dir_of(CPUSET, ""), "cpuset.mems", "0");
	check_value(dir_of(V2, "t"), "cgroup.type", "threaded");
	pthread_join(th, NULL);
	/* back where it came from, and its cgroups removed */
	for (int i = 0; i < 3; i++)
		join(orig[i], "cgroup.procs", getpid());
	const char *subs[6][2] = { { PIDS, "inner" }, { PIDS, "thr" }, { PIDS, "" },
				   { CPUSET, "" },    { V2, "t" },     { V2, "" } };
	for (int i = 0; i < 6; i++)
		WL_CHECK(rmdir(dir_of(subs[i][0], subs[i][1])) == 0, "rmdir %s: errno %d",
			 dir_of(subs[i][0], subs[i][1]), errno);
	wl_finish();
}
