/*
 * sysv_ipc: SysV message queues and a semaphore set, used by id and key.
 *   Q1  keyed, mode 0640, three messages queued: type 1 "first", type 7
 *       with 3000 bytes, type 2 empty.
 *   Q2  IPC_PRIVATE, mode 0600, empty (one message sent and received),
 *       its byte limit lowered to 8192.
 *   S   keyed, mode 0660, three semaphores set to 1, 5 and 0 by semop
 *       (without SEM_UNDO).
 * After SIGTERM it checks from inside: ids (msgget/semget by key), keys,
 * modes, owners and creators (its own ids), Q2's limit, the semaphore
 * values, and receives Q1's messages in order with their types and bytes;
 * then removes all three.  The ids go to <workdir>/sysv_ids ("Q1 Q2 S").
 * CRT_SYSV_UNDO=1: it also raises semaphore 2 with SEM_UNDO (an undo
 * adjustment crt refuses; the value is then 1).
 * Sabotage: it takes one message of Q1 after READY (a message lost).
 */
#include "wl_common.h"
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>

#define BIG 3000

struct msg {
	long mtype;
	char mtext[BIG];
};

static int msg_send(int q, long type, const char *data, size_t len)
{
	struct msg m = { .mtype = type };
	memcpy(m.mtext, data, len);
	return msgsnd(q, &m, len, IPC_NOWAIT);
}

static void check_perm(const char *what, const struct ipc_perm *p, key_t key, int mode)
{
	WL_CHECK(p->__key == key, "%s: key %#x, want %#x", what, (unsigned)p->__key, (unsigned)key);
	WL_CHECK((p->mode & 0777) == mode, "%s: mode %o, want %o", what, p->mode & 0777, mode);
	WL_CHECK(p->uid == getuid() && p->gid == getgid() && p->cuid == getuid() &&
			 p->cgid == getgid(),
		 "%s: owner %d:%d creator %d:%d, want %d:%d", what, p->uid, p->gid, p->cuid, p->cgid,
		 getuid(), getgid());
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	const char *u = getenv("CRT_SYSV_UNDO");
	int undo = u != NULL && strcmp(u, "1") == 0;
	key_t key_q = 0x43540000 | (getpid() & 0xffff), key_s = key_q ^ 0x00010000;
	int q1 = msgget(key_q, IPC_CREAT | IPC_EXCL | 0640);
	int q2 = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
	int s = semget(key_s, 3, IPC_CREAT | IPC_EXCL | 0660);
	if (q1 < 0 || q2 < 0 || s < 0)
		wl_die("msgget/semget");
	wl_write_ids("sysv_ids", q1, q2, s);

	static char big[BIG];
	for (int i = 0; i < BIG; i++)
		big[i] = (char)wl_mix((uint64_t)i);
	if (msg_send(q1, 1, "first", 5) || msg_send(q1, 7, big, BIG) || msg_send(q1, 2, "", 0))
		wl_die("msgsnd Q1");
	struct msg m;
	if (msg_send(q2, 3, "gone", 4) || msgrcv(q2, &m, BIG, 0, IPC_NOWAIT) != 4)
		wl_die("msgsnd/msgrcv Q2");
	struct msqid_ds qd;
	if (msgctl(q2, IPC_STAT, &qd) != 0)
		wl_die("IPC_STAT Q2");
	qd.msg_qbytes = 8192;
	if (msgctl(q2, IPC_SET, &qd) != 0)
		wl_die("IPC_SET Q2");
	struct sembuf ops[2] = { { 0, 1, 0 }, { 1, 5, 0 } };
	if (semop(s, ops, 2) != 0)
		wl_die("semop");
	struct sembuf up = { 2, 1, SEM_UNDO };
	if (undo && semop(s, &up, 1) != 0)
		wl_die("semop SEM_UNDO");
	wl_ready();
	if (wl_sabotage && msgrcv(q1, &m, BIG, 0, IPC_NOWAIT) < 0)
		wl_die("sabotage msgrcv");
	wl_wait_term();

	WL_CHECK(msgget(key_q, 0) == q1, "msgget(key Q1) is %d, want %d", msgget(key_q, 0), q1);
	WL_CHECK(semget(key_s, 0, 0) == s, "semget(key S) is %d, want %d", semget(key_s, 0, 0), s);
	if (msgctl(q1, IPC_STAT, &qd) == 0) {
		check_perm("Q1", &qd.msg_perm, key_q, 0640);
		WL_CHECK(qd.msg_qnum == 3, "Q1: %d messages, want 3", (int)qd.msg_qnum);
	} else {
		wl_fail("Q1 (id %d): IPC_STAT: errno %d", q1, errno);
	}
	if (msgctl(q2, IPC_STAT, &qd) == 0) {
		check_perm("Q2", &qd.msg_perm, IPC_PRIVATE, 0600);
		WL_CHECK(qd.msg_qnum == 0, "Q2: %d messages, want 0", (int)qd.msg_qnum);
		WL_CHECK(qd.msg_qbytes == 8192, "Q2: limit %lu bytes, want 8192",
			 (unsigned long)qd.msg_qbytes);
	} else {
		wl_fail("Q2 (id %d): IPC_STAT: errno %d", q2, errno);
	}
	struct semid_ds sd;
	union {
		struct semid_ds *buf;
		unsigned short *array;
	} arg = { .buf = &sd };
	if (semctl(s, 0, IPC_STAT, arg) == 0) {
		check_perm("S", &sd.sem_perm, key_s, 0660);
		WL_CHECK(sd.sem_nsems == 3, "S: %d semaphores, want 3", (int)sd.sem_nsems);
	} else {
		wl_fail("S (id %d): IPC_STAT: errno %d", s, errno);
	}
	unsigned short vals[3] = { 9, 9, 9 };
	arg.array = vals;
	WL_CHECK(semctl(s, 0, GETALL, arg) == 0 && vals[0] == 1 && vals[1] == 5 && vals[2] == undo,
		 "S: values %d %d %d, want 1 5 %d", vals[0], vals[1], vals[2], undo);
	struct {
		long type;
		const char *data;
		size_t len;
	} want[3] = { { 1, "first", 5 }, { 7, big, BIG }, { 2, "", 0 } };
	for (int i = 0; i < 3; i++) {
		ssize_t got = msgrcv(q1, &m, BIG, 0, IPC_NOWAIT);
		if (got < 0) {
			wl_fail("Q1: message %d missing (errno %d)", i, errno);
			break;
		}
		WL_CHECK(m.mtype == want[i].type && (size_t)got == want[i].len &&
				 memcmp(m.mtext, want[i].data, want[i].len) == 0,
			 "Q1: message %d is type %ld, %zd bytes; want type %ld, %zu bytes", i, m.mtype,
			 got, want[i].type, want[i].len);
	}
	msgctl(q1, IPC_RMID, NULL);
	msgctl(q2, IPC_RMID, NULL);
	semctl(s, 0, IPC_RMID);
	wl_finish();
}
