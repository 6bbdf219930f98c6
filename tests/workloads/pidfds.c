/*
 * pidfds: pidfds of every kind, checked from inside after restore (the
 * "Pid:" line of their fdinfo, and what they still do):
 * - of itself (non-blocking); of its child "kid" (which crt restores after
 *   the parent); of one of its threads (PIDFD_THREAD); of pid 1, outside
 *   the forest; two of a child that exited and was reaped (Pid: -1, one
 *   pidfs inode).
 * At SIGTERM: each shows the right pid; the kid is signalled and reaped
 * through its pidfd (waitid P_PIDFD); the dead one gives ESRCH.
 * Sabotage: the pidfd of the kid is replaced by one of pid 1.
 */
#include "wl_common.h"
#include <pthread.h>
#include <sys/syscall.h>

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif

static int pidfd_open(pid_t pid, unsigned flags)
{
	return (int)syscall(SYS_pidfd_open, pid, flags);
}

static int fdinfo_pid(int fd)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	ssize_t n = wl_read_file(path, buf, sizeof(buf) - 1);
	if (n <= 0)
		return -100;
	buf[n] = 0;
	char *p = strstr(buf, "\nPid:");
	return p ? atoi(p + 5) : -100;
}

static volatile pid_t thread_tid;

static void *thread(void *arg)
{
	(void)arg;
	thread_tid = (pid_t)syscall(SYS_gettid);
	for (;;)
		pause();
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	pthread_t t;
	pthread_create(&t, NULL, thread, NULL);
	while (thread_tid == 0)
		usleep(1000);
	pid_t kid = fork();
	if (kid == 0) {
		wl_child_init("kid");
		for (;;)
			pause();
	}
	wl_record_pid("kid", kid, getpid());
	pid_t gone = fork();
	if (gone == 0)
		_exit(0);
	int fd_gone = pidfd_open(gone, 0), fd_gone2 = pidfd_open(gone, 0);
	waitpid(gone, NULL, 0);
	int fd_self = pidfd_open(getpid(), O_NONBLOCK);
	int fd_kid = pidfd_open(kid, 0);
	int fd_thread = pidfd_open(thread_tid, PIDFD_THREAD);
	int fd_init = pidfd_open(1, 0);
	if (fd_gone < 0 || fd_gone2 < 0 || fd_self < 0 || fd_kid < 0 || fd_thread < 0 || fd_init < 0)
		wl_die("pidfd_open");
	wl_ready();
	if (wl_sabotage)
		dup2(fd_init, fd_kid);
	while (!wl_term)
		usleep(10000);

	WL_CHECK(fdinfo_pid(fd_self) == getpid(), "pidfd of self shows %d", fdinfo_pid(fd_self));
	WL_CHECK(fcntl(fd_self, F_GETFL) & O_NONBLOCK, "pidfd of self lost O_NONBLOCK");
	WL_CHECK(fdinfo_pid(fd_kid) == kid, "pidfd of the kid shows %d, want %d", fdinfo_pid(fd_kid), kid);
	WL_CHECK(fdinfo_pid(fd_thread) == thread_tid, "pidfd of the thread shows %d", fdinfo_pid(fd_thread));
	WL_CHECK(fdinfo_pid(fd_init) == 1, "pidfd of pid 1 shows %d", fdinfo_pid(fd_init));
	WL_CHECK(fdinfo_pid(fd_gone) == -1, "pidfd of the reaped child shows %d", fdinfo_pid(fd_gone));
	struct stat g1, g2;
	WL_CHECK(fstat(fd_gone, &g1) == 0 && fstat(fd_gone2, &g2) == 0 && g1.st_ino == g2.st_ino,
		 "two pidfds of one reaped child: inodes %lu and %lu", (unsigned long)g1.st_ino,
		 (unsigned long)g2.st_ino);
	WL_CHECK(syscall(SYS_pidfd_send_signal, fd_gone, 0, NULL, 0) < 0 && errno == ESRCH,
		 "signal through the reaped child's pidfd: errno %d", errno);
	if (fdinfo_pid(fd_kid) == kid) {
		WL_CHECK(syscall(SYS_pidfd_send_signal, fd_kid, SIGKILL, NULL, 0) == 0, "pidfd_send_signal(kid)");
		siginfo_t si = { 0 };
		WL_CHECK(waitid(P_PIDFD, (id_t)fd_kid, &si, WEXITED) == 0 && si.si_pid == kid &&
				 si.si_status == SIGKILL,
			 "waitid(P_PIDFD) on the kid: pid %d status %d", si.si_pid, si.si_status);
	} else {
		kill(kid, SIGKILL);
		waitpid(kid, NULL, 0);
	}
	wl_finish();
}
