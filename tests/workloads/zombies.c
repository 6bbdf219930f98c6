/*
 * zombies: children that ended every way, left unreaped: exit status 7,
 * killed by SIGKILL, killed by SIGTERM, killed by SIGSEGV with a core
 * dump (it sets RLIMIT_CORE and moves to <workdir>/cores first), and one
 * that left for its own process group and (when run as root) for uid
 * 4321 before exiting 9.
 * At SIGTERM the parent checks each from /proc (a zombie, its process
 * group), its real uid as waitid reports it, then reaps it with waitpid:
 * the same status, WCOREDUMP included.
 * Their roles in <workdir>/pids are zombie-<how>.
 * Sabotage: the SIGTERM child is reaped early.
 */
#include "wl_common.h"
#include <sys/resource.h>

struct z {
	const char *name;
	pid_t pid;
	int status; /* the wait status it left */
	int own_group;
	int other_user; /* 4321 when the workload runs as root */
};

static struct z zs[] = {
	{ "zombie-exit7", 0, 7 << 8, 0 },	 { "zombie-sigkill", 0, SIGKILL, 0 },
	{ "zombie-sigterm", 0, SIGTERM, 0 },	 { "zombie-segv", 0, SIGSEGV | 0x80, 0 },
	{ "zombie-group", 0, 9 << 8, 1, 1 },
};
#define NZ ((int)(sizeof(zs) / sizeof(zs[0])))

static void die_as(const struct z *z)
{
	if (z->own_group)
		setpgid(0, 0);
	if (z->other_user && getuid() == 0 && setresuid(4321, 4321, 4321) != 0)
		_exit(97);
	if ((z->status & 0x7f) == 0)
		_exit(z->status >> 8);
	if (z->status & 0x80) {
		struct rlimit rl = { RLIM_INFINITY, RLIM_INFINITY };
		setrlimit(RLIMIT_CORE, &rl);
		if (chdir(wl_path("cores")) != 0)
			_exit(99);
	}
	signal(z->status & 0x7f, SIG_DFL);
	kill(getpid(), z->status & 0x7f);
	_exit(98);
}

/* Field 5 (pgrp) and the state of /proc/<pid>/stat. */
static int stat_of(pid_t pid, char *state)
{
	char buf[512], path[64];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	ssize_t n = wl_read_file(path, buf, sizeof(buf) - 1);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	int ppid, pgrp;
	if (p == NULL || sscanf(p + 2, "%c %d %d", state, &ppid, &pgrp) != 3)
		return -1;
	return pgrp;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	signal(SIGCHLD, SIG_DFL);
	mkdir(wl_path("cores"), 0755);
	for (int i = 0; i < NZ; i++) {
		zs[i].pid = fork();
		if (zs[i].pid < 0)
			wl_die("fork");
		if (zs[i].pid == 0)
			die_as(&zs[i]);
		wl_record_pid(zs[i].name, zs[i].pid, getpid());
		siginfo_t si;
		if (waitid(P_PID, (id_t)zs[i].pid, &si, WEXITED | WNOWAIT) != 0)
			wl_die("waitid %s", zs[i].name);
	}
	/* the core dump really happened (else the test checks nothing) */
	for (int i = 0; i < NZ; i++) {
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		waitid(P_PID, (id_t)zs[i].pid, &si, WEXITED | WNOWAIT);
		if ((zs[i].status & 0x80) && si.si_code != CLD_DUMPED)
			wl_die("the %s child did not dump core (si_code %d)", zs[i].name, si.si_code);
	}
	wl_ready();
	if (wl_sabotage)
		waitpid(zs[2].pid, NULL, 0);
	while (!wl_term)
		usleep(10000);

	for (int i = 0; i < NZ; i++) {
		char state = '?';
		int pgrp = stat_of(zs[i].pid, &state);
		int want_pgrp = zs[i].own_group ? zs[i].pid : getpgrp();
		WL_CHECK(state == 'Z', "zombie %s: state %c", zs[i].name, state);
		WL_CHECK(pgrp == want_pgrp, "zombie %s: process group %d, want %d", zs[i].name, pgrp, want_pgrp);
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		uid_t want_uid = zs[i].other_user && getuid() == 0 ? 4321 : getuid();
		WL_CHECK(waitid(P_PID, (id_t)zs[i].pid, &si, WEXITED | WNOWAIT) == 0 && si.si_uid == want_uid,
			 "zombie %s: waitid gives uid %d, want %d", zs[i].name, (int)si.si_uid, (int)want_uid);
		int st = 0;
		pid_t r = waitpid(zs[i].pid, &st, WNOHANG);
		WL_CHECK(r == zs[i].pid && st == zs[i].status, "zombie %s: waitpid %d status %#x, want %#x",
			 zs[i].name, (int)r, st, zs[i].status);
	}
	WL_CHECK(waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD, "another child is left");
	wl_finish();
}
