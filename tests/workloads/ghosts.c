/*
 * ghosts: files that exist only through the process, and descriptions
 * that must stay apart or shared, checked from inside after restore.
 *
 * - "a": deleted while open, sparse (data at 0 and at 4 MiB), mode 0751,
 *   owner 1234:5678 (its own when not
 *   run as root), atime/mtime set; a second description opened through
 *   /proc/self/fd (same inode: a write through one is read through the
 *   other) and an O_PATH fd on it;
 * - "b": deleted while open but still linked as "b.link": the same inode
 *   as b.link after restore;
 * - "m": a shared writable mapping of a deleted file, and "p": a private
 *   mapping of a deleted file with one page written privately;
 * - "f": a FIFO deleted while open read-write, with bytes buffered;
 * - a pipe's read end reopened through /proc/self/fd with O_NONBLOCK: two
 *   descriptions, only one non-blocking;
 * - memfds: one executable (a "#!/bin/true" script run with execveat), one
 *   with mode 0640, owner 1234:5678, a hole and seals;
 * - "ro.map": a file opened read-write and mapped shared read-only, so that
 *   mprotect(PROT_WRITE) works after restore.
 * - an inotify watch (IN_MODIFY) on "a" after it was deleted: a write to
 *   "a" after restore is reported with the watch's number.
 * Sabotage: after READY "a" gets mode 0600.
 */
#include "wl_common.h"
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/syscall.h>

/* The owner given to the ghosts: another user's when run as root. */
static uid_t own_uid = 1234;
static gid_t own_gid = 5678;

#define BIG (4 << 20)
#define PAGE 4096
#define ATIME 1000000000LL
#define MTIME 1500000000LL

static unsigned char pat(size_t i, int salt)
{
	return (unsigned char)(wl_mix(i + (size_t)salt * 7919) & 0xff);
}

static int check_pattern(const unsigned char *p, size_t n, int salt)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != pat(i, salt))
			return 0;
	return 1;
}

static ino_t ino_of(int fd)
{
	struct stat st;
	return fstat(fd, &st) == 0 ? st.st_ino : 0;
}

static int run_memfd(int fd)
{
	pid_t c = fork();
	if (c == 0) {
		char *const argv[] = { "true", NULL }, *const envp[] = { NULL };
		syscall(SYS_execveat, fd, "", argv, envp, AT_EMPTY_PATH);
		_exit(100 + errno);
	}
	int st = 0;
	waitpid(c, &st, 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 255;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (geteuid() != 0) {
		own_uid = geteuid();
		own_gid = getegid();
	}
	if (chdir(wl_dir) != 0)
		wl_die("chdir");

	/* a: sparse ghost with attributes, two descriptions and an O_PATH fd */
	int a = open("a", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (a < 0 || pwrite(a, "head", 4, 0) != 4 || pwrite(a, "tail", 4, BIG) != 4)
		wl_die("a");
	if (fchown(a, own_uid, own_gid) != 0 || fchmod(a, 0751) != 0)
		wl_die("a attributes");
	struct timespec times[2] = { { ATIME, 0 }, { MTIME, 123 } };
	if (futimens(a, times) != 0)
		wl_die("futimens");
	char self[64];
	snprintf(self, sizeof(self), "/proc/self/fd/%d", a);
	int a2 = open(self, O_RDONLY | O_CLOEXEC);
	int a3 = open("a", O_PATH | O_CLOEXEC);
	int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	int in_dummy = in < 0 ? -1 : inotify_add_watch(in, ".", IN_CREATE); /* wd 1 */
	int in_wd = in < 0 ? -1 : inotify_add_watch(in, "a", IN_MODIFY);
	if (a2 < 0 || a3 < 0 || in_dummy != 1 || in_wd != 2 || unlink("a") != 0)
		wl_die("a2/a3/inotify/unlink a");
	char evbuf[4096];
	while (read(in, evbuf, sizeof(evbuf)) > 0) /* IN_ATTRIB of the unlink */
		;

	/* b: deleted, but linked elsewhere */
	int b = open("b", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (b < 0 || write(b, "bbbb", 4) != 4 || link("b", "b.link") != 0 || unlink("b") != 0)
		wl_die("b");

	/* m, p: mappings of deleted files */
	unsigned char buf[2 * PAGE];
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = pat(i, 1);
	int mf = open("m", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	int pf = open("p", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (mf < 0 || pf < 0 || write(mf, buf, sizeof(buf)) != sizeof(buf) ||
	    write(pf, buf, sizeof(buf)) != sizeof(buf))
		wl_die("m/p");
	unsigned char *m = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, mf, 0);
	unsigned char *p = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, pf, 0);
	if (m == MAP_FAILED || p == MAP_FAILED)
		wl_die("mmap m/p");
	close(mf);
	close(pf);
	unlink("m");
	unlink("p");
	m[10] = 'M';
	memset(p + PAGE, 'P', PAGE); /* the second page private */

	/* f: a deleted FIFO with bytes in it */
	if (mkfifo("f", 0600) != 0)
		wl_die("mkfifo");
	int f = open("f", O_RDWR | O_CLOEXEC);
	if (f < 0 || write(f, "abc", 3) != 3 || unlink("f") != 0)
		wl_die("f");

	/* two descriptions of one pipe end */
	int pp[2];
	if (pipe2(pp, O_CLOEXEC) != 0)
		wl_die("pipe");
	snprintf(self, sizeof(self), "/proc/self/fd/%d", pp[0]);
	int pr2 = open(self, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (pr2 < 0)
		wl_die("reopen pipe");

	/* memfds */
	int mx = (int)syscall(SYS_memfd_create, "script", 0);
	if (mx < 0 || write(mx, "#!/bin/true\n", 12) != 12)
		wl_die("memfd script");
	int before = run_memfd(mx);
	int md = (int)syscall(SYS_memfd_create, "data", 2 /* MFD_ALLOW_SEALING */ | 1 /* CLOEXEC */);
	if (md < 0 || pwrite(md, "end", 3, BIG) != 3 || fchmod(md, 0640) != 0 || fchown(md, own_uid, own_gid) != 0 ||
	    fcntl(md, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0)
		wl_die("memfd data");

	/* a file opened read-write, mapped shared read-only */
	int ro = open("ro.map", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (ro < 0 || write(ro, buf, PAGE) != PAGE)
		wl_die("ro.map");
	unsigned char *rm = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, ro, 0);
	if (rm == MAP_FAILED)
		wl_die("mmap ro.map");
	close(ro);

	WL_CHECK(before == 0, "execveat of the memfd script failed before the dump: %d", before);
	while (read(in, evbuf, sizeof(evbuf)) > 0) /* the setup's events: none left unread */
		;
	wl_ready();
	if (wl_sabotage)
		fchmod(a, 0600);
	while (!wl_term)
		usleep(10000);

	/* a */
	struct stat st;
	if (fstat(a, &st) != 0)
		wl_die("fstat a");
	WL_CHECK(st.st_nlink == 0, "ghost a: nlink %lu", (unsigned long)st.st_nlink);
	WL_CHECK((st.st_mode & 07777) == 0751, "ghost a: mode %o, want 751", st.st_mode & 07777);
	WL_CHECK(st.st_uid == own_uid && st.st_gid == own_gid, "ghost a: owner %d:%d", st.st_uid, st.st_gid);
	WL_CHECK(st.st_size == BIG + 4, "ghost a: size %lld", (long long)st.st_size);
	WL_CHECK(st.st_mtim.tv_sec == MTIME && st.st_mtim.tv_nsec == 123, "ghost a: mtime %lld.%09ld",
		 (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
	WL_CHECK(st.st_atim.tv_sec == ATIME, "ghost a: atime %lld", (long long)st.st_atim.tv_sec);
	WL_CHECK(st.st_blocks < 512, "ghost a: %lld blocks, the holes were filled", (long long)st.st_blocks);
	off_t hole = lseek(a, 0, SEEK_HOLE);
	WL_CHECK(hole > 0 && hole < BIG, "ghost a: first hole at %lld", (long long)hole);
	char w[5] = "";
	WL_CHECK(pread(a, w, 4, 0) == 4 && memcmp(w, "head", 4) == 0, "ghost a: head is %.4s", w);
	WL_CHECK(pread(a, w, 4, BIG) == 4 && memcmp(w, "tail", 4) == 0, "ghost a: tail is %.4s", w);
	WL_CHECK(ino_of(a2) == st.st_ino && ino_of(a3) == st.st_ino, "ghost a: its descriptions are other files");
	WL_CHECK(pwrite(a, "X", 1, 100) == 1 && pread(a2, w, 1, 100) == 1 && w[0] == 'X',
		 "ghost a: a write through one fd is not seen through the other");
	WL_CHECK((fcntl(a2, F_GETFL) & O_ACCMODE) == O_RDONLY, "ghost a: second fd is not read-only");
	while (read(in, evbuf, sizeof(evbuf)) > 0) /* events of the writes above */
		;
	WL_CHECK(pwrite(a, "Y", 1, 101) == 1, "ghost a: write");
	ssize_t en = read(in, evbuf, sizeof(evbuf));
	struct inotify_event *ie = (struct inotify_event *)evbuf;
	WL_CHECK(en >= (ssize_t)sizeof(*ie) && ie->wd == in_wd && (ie->mask & IN_MODIFY),
		 "inotify watch on deleted a: read %zd, wd %d mask %#x", en, en > 0 ? ie->wd : -1,
		 en > 0 ? ie->mask : 0);

	/* b */
	struct stat sl;
	WL_CHECK(stat("b.link", &sl) == 0 && ino_of(b) == sl.st_ino, "ghost b: not the inode of b.link");
	int bl = open("b.link", O_RDONLY | O_CLOEXEC);
	WL_CHECK(pwrite(b, "Z", 1, 0) == 1 && pread(bl, w, 1, 0) == 1 && w[0] == 'Z',
		 "ghost b: writes do not reach b.link");

	/* m, p */
	WL_CHECK(m[10] == 'M', "deleted shared mapping lost its write");
	m[10] = pat(10, 1);
	WL_CHECK(check_pattern(m, 2 * PAGE, 1), "deleted shared mapping: wrong data");
	WL_CHECK(check_pattern(p, PAGE, 1), "deleted private mapping: wrong file page");
	WL_CHECK(p[PAGE] == 'P' && p[2 * PAGE - 1] == 'P', "deleted private mapping: private page lost");

	/* f */
	char fb[4] = "";
	WL_CHECK(read(f, fb, 3) == 3 && memcmp(fb, "abc", 3) == 0, "deleted FIFO: read %.3s", fb);
	WL_CHECK(write(f, "z", 1) == 1 && read(f, fb, 1) == 1 && fb[0] == 'z', "deleted FIFO: not a FIFO");

	/* pipe descriptions */
	WL_CHECK((fcntl(pp[0], F_GETFL) & O_NONBLOCK) == 0, "pipe read end became non-blocking");
	WL_CHECK(fcntl(pr2, F_GETFL) & O_NONBLOCK, "reopened pipe end lost O_NONBLOCK");
	WL_CHECK(write(pp[1], "q", 1) == 1 && read(pr2, fb, 1) == 1 && fb[0] == 'q', "reopened end: another pipe");

	/* memfds */
	int after = run_memfd(mx);
	WL_CHECK(after == 0, "execveat of the memfd script: status %d (100+errno)", after);
	WL_CHECK(fstat(md, &st) == 0 && (st.st_mode & 07777) == 0640 && st.st_uid == own_uid &&
			 st.st_gid == own_gid && st.st_size == BIG + 3,
		 "memfd data: mode %o owner %d:%d size %lld", st.st_mode & 07777, st.st_uid, st.st_gid,
		 (long long)st.st_size);
	WL_CHECK(st.st_blocks < 512, "memfd data: %lld blocks, the hole was filled", (long long)st.st_blocks);
	WL_CHECK(fcntl(md, F_GET_SEALS) == (F_SEAL_SHRINK | F_SEAL_GROW), "memfd data: seals %#x",
		 fcntl(md, F_GET_SEALS));
	WL_CHECK(pread(md, w, 3, BIG) == 3 && memcmp(w, "end", 3) == 0, "memfd data: wrong data");

	/* ro.map */
	WL_CHECK(mprotect(rm, PAGE, PROT_READ | PROT_WRITE) == 0, "mprotect(PROT_WRITE) of ro.map: errno %d",
		 errno);
	WL_CHECK(check_pattern(rm, PAGE, 1), "ro.map: wrong data");
	wl_finish();
}
