/*
 * session: the root calls setsid() (it is started as a plain child, not a
 * group leader) and forks child A, which calls setpgid(0,0) and forks
 * grandchild A1 (inheriting A's group), and child B, which stays in the
 * root's group.  Everyone records getsid()/getpgid()/getppid() and checks
 * them every ~5 ms; the root also checks getpgid(A)==A, getpgid(A1)==A,
 * getpgid(B)==root and getsid(x)==root for all.  Non-root processes are
 * listed in <workdir>/pids.  At SIGTERM the root checks on (wl_keep_going)
 * until it has run enough iterations since READY, then SIGTERMs A and B (A
 * SIGTERMs A1) and waits for each to exit 0.
 * Sabotage: B moves to its own process group.
 */
#include "wl_common.h"

static void member(const char *role, pid_t ppid, pid_t pgid, pid_t sid, pid_t child,
		   const char *child_role)
{
	WL_CHECK(getsid(0) == sid, "%s: getsid() is %d, want %d", role, (int)getsid(0), (int)sid);
	WL_CHECK(getpgid(0) == pgid, "%s: getpgid() is %d, want %d", role, (int)getpgid(0),
		 (int)pgid);
	unsigned iter = 0;
	while (!wl_term && wl_failures == 0) {
		usleep(5000);
		iter++;
		if (wl_sabotage && strcmp(role, "B") == 0 && iter == 30)
			setpgid(0, 0);
		WL_CHECK(getppid() == ppid, "%s: getppid() is %d, want %d", role, (int)getppid(),
			 (int)ppid);
		WL_CHECK(getsid(0) == sid, "%s: getsid() is %d, want %d", role, (int)getsid(0),
			 (int)sid);
		WL_CHECK(getpgid(0) == pgid, "%s: getpgid() is %d, want %d", role,
			 (int)getpgid(0), (int)pgid);
	}
	while (!wl_term)
		usleep(5000);
	if (child > 0) {
		kill(child, SIGTERM);
		wl_wait_child(child, child_role, 10000);
	}
	wl_child_exit();
}

/* the layout as seen by the root; returns the number of failed checks */
static int check_layout(pid_t root, pid_t a, pid_t a1, pid_t b, const char *when)
{
	int before = wl_failures;
	WL_CHECK(getsid(0) == root, "%s: root's getsid() is %d", when, (int)getsid(0));
	WL_CHECK(getpgid(0) == root, "%s: root's getpgid() is %d", when, (int)getpgid(0));
	WL_CHECK(getpgid(a) == a, "%s: getpgid(A=%d) is %d", when, (int)a, (int)getpgid(a));
	WL_CHECK(getpgid(a1) == a, "%s: getpgid(A1=%d) is %d, want A=%d", when, (int)a1,
		 (int)getpgid(a1), (int)a);
	WL_CHECK(getpgid(b) == root, "%s: getpgid(B=%d) is %d, want root=%d", when, (int)b,
		 (int)getpgid(b), (int)root);
	pid_t all[3] = { a, a1, b };
	for (int i = 0; i < 3; i++)
		WL_CHECK(getsid(all[i]) == root, "%s: getsid(%d) is %d, want %d", when,
			 (int)all[i], (int)getsid(all[i]), (int)root);
	return wl_failures - before;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (setsid() < 0)
		wl_die("setsid");
	pid_t root = getpid();
	int pp[2];
	if (pipe2(pp, O_CLOEXEC) != 0)
		wl_die("pipe");

	pid_t a = fork();
	if (a < 0)
		wl_die("fork A");
	if (a == 0) {
		wl_child_init("A");
		close(pp[0]);
		if (setpgid(0, 0) != 0)
			wl_die("A: setpgid");
		pid_t me = getpid();
		pid_t a1 = fork();
		if (a1 < 0)
			wl_die("fork A1");
		if (a1 == 0) {
			wl_child_init("A1");
			close(pp[1]);
			member("A1", me, me, root, 0, NULL);
		}
		if (write(pp[1], &a1, sizeof(a1)) != sizeof(a1))
			wl_die("A: write A1 pid");
		close(pp[1]);
		wl_record_pid("A1", a1, me);
		member("A", root, me, root, a1, "A1");
	}
	close(pp[1]);
	setpgid(a, a); /* also done by A itself: whoever comes first */
	pid_t a1 = 0;
	if (read(pp[0], &a1, sizeof(a1)) != sizeof(a1))
		wl_die("reading A1's pid");
	close(pp[0]);

	pid_t b = fork();
	if (b < 0)
		wl_die("fork B");
	if (b == 0) {
		wl_child_init("B");
		member("B", root, root, root, 0, NULL);
	}
	wl_record_pid("A", a, root);
	wl_record_pid("B", b, root);

	check_layout(root, a, a1, b, "before READY");
	wl_ready();
	unsigned iter = 0;
	while (wl_keep_going(iter >= 20)) {
		usleep(5000);
		iter++;
		if (wl_failures == 0)
			check_layout(root, a, a1, b, "while running");
	}
	check_layout(root, a, a1, b, "at SIGTERM");
	kill(a, SIGTERM);
	kill(b, SIGTERM);
	wl_wait_child(a, "A", 10000);
	wl_wait_child(b, "B", 10000);
	wl_printf("INFO iterations=%u\n", iter);
	WL_CHECK(iter >= 20, "only %u iterations since READY", iter);
	wl_finish();
}
