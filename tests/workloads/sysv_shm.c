/*
 * sysv_shm: SysV shared memory segments and their attaches.
 *   A  keyed, 2 pages + 100 bytes (size not page-aligned), mode 0640,
 *      SHM_LOCKed, attached read-write before the fork (parent and child);
 *      the last byte of its size holds a pattern.
 *   B  IPC_PRIVATE, 16 pages, mode 0600, attached by the child only, which
 *      writes pages 0 and 15 (14 pages stay holes: 2 resident pages), then
 *      makes its attach read-only (mprotect; writable again at the end).
 *   C  keyed, one page of data, mode 0444 (set by IPC_SET once filled
 *      through an attach detached again), attached SHM_RDONLY by the parent.
 *   D  IPC_PRIVATE, one page, attached read-write before the fork, then
 *      removed (IPC_RMID: SHM_DEST, key 0): it lives on while attached.
 * Parent and child play ping-pong through A and D (a value written by one
 * side is answered by the other), so both stay shared across a restore.
 * After SIGTERM the parent checks from inside, for every segment: its id
 * (shmget by key), key, size, mode, SHM_DEST/SHM_LOCKED, owner and creator
 * (its own ids), number of attaches, bytes, the read-only attach staying
 * read-only, and that shmdt works on each attach; the child checks B's
 * bytes and holes (resident pages in /proc/sysvipc/shm).  The ids go to
 * <workdir>/sysv_ids ("A B C" ids) for the harness; A, B and C are removed
 * at the end.  Sabotage: the child replaces its attach of A with a private
 * copy (A is not shared any more).
 */
#include "wl_common.h"
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>

#define PAGE 4096
#define A_SIZE (2 * PAGE + 100)
#define B_PAGES 16
#define C_SIZE PAGE
#define SHM_DEST_BIT 01000
#define SHM_LOCKED_BIT 02000

struct game {
	volatile uint64_t ping; /* written by the parent */
	volatile uint64_t pong; /* the child's answer: ping + 1 */
};

static int id_a, id_b, id_c, id_d;
static key_t key_a, key_c;
static unsigned char *at_a, *at_c, *at_d;

static void *attach(int id, int flags, const char *what)
{
	void *p = shmat(id, NULL, flags);
	if (p == (void *)-1)
		wl_die("shmat %s", what);
	return p;
}

static unsigned char pattern(int seg, size_t off)
{
	return (unsigned char)wl_mix((uint64_t)seg << 32 | off);
}

/* The permissions of the mapping at `addr` in /proc/self/maps ("?" if none). */
static const char *maps_perms(const void *addr)
{
	static char buf[65536], perms[8] = "?";
	ssize_t n = wl_read_file("/proc/self/maps", buf, sizeof(buf) - 1);
	buf[n > 0 ? n : 0] = 0;
	for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
		unsigned long start;
		char p[8];
		if (sscanf(line, "%lx-%*x %7s", &start, p) == 2 && start == (unsigned long)addr) {
			strcpy(perms, p);
			break;
		}
	}
	return perms;
}

/* The child answers every ping in A and D. */
static void child(void)
{
	wl_child_init("child");
	unsigned char *b = attach(id_b, 0, "B");
	b[0] = pattern('B', 0);
	b[(B_PAGES - 1) * PAGE] = pattern('B', B_PAGES - 1);
	if (mprotect(b, B_PAGES * PAGE, PROT_READ) != 0)
		wl_die("mprotect B");
	struct game *ga = (struct game *)at_a, *gd = (struct game *)at_d;
	for (int i = 0; !wl_term; i++) {
		if (wl_sabotage && i == 100) { /* after READY: the first ping was answered */
			struct game copy = *ga;
			if (mmap(at_a, PAGE, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != at_a)
				wl_die("sabotage mmap");
			*ga = copy;
		}
		if (ga->pong != ga->ping + 1)
			ga->pong = ga->ping + 1;
		if (gd->pong != gd->ping + 1)
			gd->pong = gd->ping + 1;
		usleep(1000);
	}
	WL_CHECK(b[0] == pattern('B', 0) && b[(B_PAGES - 1) * PAGE] == pattern('B', B_PAGES - 1),
		 "child: B's bytes changed");
	/* resident pages of B, from /proc/sysvipc/shm (column 15: rss in bytes) */
	static char buf[65536];
	ssize_t n = wl_read_file("/proc/sysvipc/shm", buf, sizeof(buf) - 1);
	WL_CHECK(n > 0, "child: reading /proc/sysvipc/shm");
	buf[n > 0 ? n : 0] = 0;
	int found = 0;
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
		long long f[16];
		if (sscanf(line, "%lld %lld %llo %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld",
			   &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6], &f[7], &f[8], &f[9], &f[10],
			   &f[11], &f[12], &f[13], &f[14], &f[15]) == 16 &&
		    f[1] == id_b) {
			found = 1;
			WL_CHECK(f[14] == 2 * PAGE, "child: B has %lld resident bytes, want %d (holes filled?)",
				 f[14], 2 * PAGE);
		}
	}
	WL_CHECK(found, "child: segment B (id %d) not in /proc/sysvipc/shm", id_b);
	const char *perms = maps_perms(b);
	WL_CHECK(strcmp(perms, "r--s") == 0, "child: B is mapped %s, want r--s", perms);
	WL_CHECK(mprotect(b, B_PAGES * PAGE, PROT_READ | PROT_WRITE) == 0,
		 "child: B cannot be made writable again: errno %d", errno);
	WL_CHECK(shmdt(b) == 0, "child: shmdt(B): errno %d", errno);
	wl_child_exit();
}

/* One ping through `g`, answered within 5 s. */
static void ping(struct game *g, const char *seg)
{
	uint64_t want = g->ping + 2;
	g->ping = want - 1;
	int64_t deadline = wl_now_ns() + 5000000000LL;
	while (g->pong != want && wl_now_ns() < deadline)
		usleep(1000);
	WL_CHECK(g->pong == want, "segment %s: the child did not answer (pong %llu, want %llu): not shared",
		 seg, (unsigned long long)g->pong, (unsigned long long)want);
}

static void check_seg(const char *seg, int id, key_t key, size_t size, int mode, int flags,
		      int nattch)
{
	struct shmid_ds ds;
	if (shmctl(id, IPC_STAT, &ds) != 0) {
		wl_fail("segment %s (id %d): IPC_STAT: errno %d", seg, id, errno);
		return;
	}
	WL_CHECK(ds.shm_perm.__key == key, "segment %s: key %#x, want %#x", seg,
		 (unsigned)ds.shm_perm.__key, (unsigned)key);
	WL_CHECK(ds.shm_segsz == size, "segment %s: size %zu, want %zu", seg, (size_t)ds.shm_segsz,
		 size);
	WL_CHECK((ds.shm_perm.mode & 0777) == mode, "segment %s: mode %o, want %o", seg,
		 ds.shm_perm.mode & 0777, mode);
	WL_CHECK((ds.shm_perm.mode & (SHM_DEST_BIT | SHM_LOCKED_BIT)) == flags,
		 "segment %s: SHM_DEST/SHM_LOCKED bits %o, want %o", seg,
		 ds.shm_perm.mode & (SHM_DEST_BIT | SHM_LOCKED_BIT), flags);
	WL_CHECK(ds.shm_perm.uid == getuid() && ds.shm_perm.gid == getgid(),
		 "segment %s: owner %d:%d, want %d:%d", seg, ds.shm_perm.uid, ds.shm_perm.gid,
		 getuid(), getgid());
	WL_CHECK(ds.shm_perm.cuid == getuid() && ds.shm_perm.cgid == getgid(),
		 "segment %s: creator %d:%d, want %d:%d", seg, ds.shm_perm.cuid, ds.shm_perm.cgid,
		 getuid(), getgid());
	WL_CHECK((int)ds.shm_nattch == nattch, "segment %s: %d attaches, want %d", seg,
		 (int)ds.shm_nattch, nattch);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	key_a = 0x43520000 | (getpid() & 0xffff);
	key_c = key_a ^ 0x00010000;
	id_a = shmget(key_a, A_SIZE, IPC_CREAT | IPC_EXCL | 0640);
	id_b = shmget(IPC_PRIVATE, B_PAGES * PAGE, IPC_CREAT | 0600);
	id_c = shmget(key_c, C_SIZE, IPC_CREAT | IPC_EXCL | 0644);
	id_d = shmget(IPC_PRIVATE, PAGE, IPC_CREAT | 0600);
	if (id_a < 0 || id_b < 0 || id_c < 0 || id_d < 0)
		wl_die("shmget");
	wl_write_ids("sysv_ids", id_a, id_b, id_c);
	if (shmctl(id_a, SHM_LOCK, NULL) != 0)
		wl_die("SHM_LOCK");
	at_a = attach(id_a, 0, "A");
	at_a[A_SIZE - 1] = pattern('A', A_SIZE - 1);
	unsigned char *c = attach(id_c, 0, "C (to fill it)");
	for (size_t i = 0; i < C_SIZE; i++)
		c[i] = pattern('C', i);
	if (shmdt(c) != 0)
		wl_die("shmdt C");
	struct shmid_ds ds;
	if (shmctl(id_c, IPC_STAT, &ds) != 0)
		wl_die("IPC_STAT C");
	ds.shm_perm.mode = 0444;
	if (shmctl(id_c, IPC_SET, &ds) != 0)
		wl_die("IPC_SET C");
	at_c = attach(id_c, SHM_RDONLY, "C");
	at_d = attach(id_d, 0, "D");
	if (shmctl(id_d, IPC_RMID, NULL) != 0)
		wl_die("IPC_RMID D");

	pid_t kid = fork();
	if (kid < 0)
		wl_die("fork");
	if (kid == 0)
		child();
	wl_record_pid("child", kid, getpid());
	ping((struct game *)at_a, "A");
	if (wl_failures)
		wl_die("the child does not play");
	wl_ready();
	wl_wait_term();

	ping((struct game *)at_a, "A");
	ping((struct game *)at_d, "D");
	WL_CHECK(shmget(key_a, 0, 0) == id_a, "shmget(key A) is %d, want %d", shmget(key_a, 0, 0), id_a);
	WL_CHECK(shmget(key_c, 0, 0) == id_c, "shmget(key C) is %d, want %d", shmget(key_c, 0, 0), id_c);
	check_seg("A", id_a, key_a, A_SIZE, 0640, SHM_LOCKED_BIT, wl_sabotage ? 1 : 2);
	check_seg("B", id_b, IPC_PRIVATE, B_PAGES * PAGE, 0600, 0, 1);
	check_seg("C", id_c, key_c, C_SIZE, 0444, 0, 2);
	check_seg("D", id_d, IPC_PRIVATE, PAGE, 0600, SHM_DEST_BIT, 2);
	WL_CHECK(at_a[A_SIZE - 1] == pattern('A', A_SIZE - 1), "segment A: its last byte changed");
	size_t bad = 0;
	for (size_t i = 0; i < C_SIZE; i++)
		bad += at_c[i] != pattern('C', i);
	WL_CHECK(bad == 0, "segment C: %zu bytes changed", bad);
	errno = 0;
	WL_CHECK(mprotect(at_c, PAGE, PROT_READ | PROT_WRITE) != 0 && errno == EACCES,
		 "segment C: the SHM_RDONLY attach can be made writable (errno %d)", errno);

	kill(kid, SIGTERM);
	wl_wait_child(kid, "child", 10000);
	WL_CHECK(shmdt(at_c) == 0, "shmdt(C): errno %d", errno);
	check_seg("C", id_c, key_c, C_SIZE, 0444, 0, 0);
	WL_CHECK(shmdt(at_a) == 0 && shmdt(at_d) == 0, "shmdt(A, D): errno %d", errno);
	shmctl(id_a, IPC_RMID, NULL);
	shmctl(id_b, IPC_RMID, NULL);
	shmctl(id_c, IPC_RMID, NULL);
	WL_CHECK(shmctl(id_d, IPC_STAT, &(struct shmid_ds){ 0 }) != 0,
		 "segment D still exists after its last detach");
	wl_finish();
}
