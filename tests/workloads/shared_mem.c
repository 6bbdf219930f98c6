/*
 * shared_mem: a MAP_SHARED|MAP_ANONYMOUS page created before fork; the
 * parent and the child each increment their own counter in it (~1 ms per
 * iteration) and play ping-pong through a shared "ball" (the parent moves it
 * when even, the child when odd).  Each side keeps a history of what it sees
 * of the other's counter and of the ball.  At the end each side checks it
 * ran enough iterations since the last stall (the dump/restore gap) and that
 * over its last HIST iterations the other's counter and the ball advanced:
 * which only holds if the page is still shared after restore.
 * At SIGTERM the parent checks itself, SIGTERMs the child and waits for it
 * (exit 0).  The child is listed in <workdir>/pids.
 * Sabotage: the child replaces its mapping with a private copy.
 */
#include "wl_common.h"
#include <sys/mman.h>

#define HIST 50
#define AFTER_STALL_MIN (HIST + 10)
#define OTHER_MIN 10
#define BALL_MIN 5

struct shm {
	volatile uint64_t counter[2]; /* [0]: parent, [1]: child */
	volatile uint64_t ball;
};

static struct shm *shm;

static void play(int me)
{
	int other = 1 - me;
	uint64_t hist_other[HIST], hist_ball[HIST];
	struct wl_progress prog;
	wl_progress_init(&prog);
	uint64_t i = 0;
	while (!wl_term) {
		shm->counter[me]++;
		if ((shm->ball & 1) == (uint64_t)me)
			__atomic_add_fetch(&shm->ball, 1, __ATOMIC_SEQ_CST);
		hist_other[i % HIST] = shm->counter[other];
		hist_ball[i % HIST] = shm->ball;
		i++;
		wl_progress_tick(&prog);
		if (wl_sabotage && me == 1 && i == 50) {
			struct shm copy = *shm;
			if (mmap(shm, 4096, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != shm)
				wl_die("sabotage mmap");
			*shm = copy;
		}
		usleep(1000);
	}
	uint64_t other_now = shm->counter[other], ball_now = shm->ball;
	wl_printf("INFO %s: iterations=%llu stalls=%llu since_stall=%llu other=%llu ball=%llu\n",
		  wl_role, (unsigned long long)i, (unsigned long long)prog.stalls,
		  (unsigned long long)prog.since_stall, (unsigned long long)other_now,
		  (unsigned long long)ball_now);
	WL_CHECK(prog.since_stall >= AFTER_STALL_MIN,
		 "%s: only %llu iterations after the last stall", wl_role,
		 (unsigned long long)prog.since_stall);
	if (i >= HIST) {
		uint64_t o = hist_other[i % HIST], b = hist_ball[i % HIST];
		WL_CHECK(other_now >= o + OTHER_MIN,
			 "%s: the other side's counter advanced only %llu over my last %d iterations",
			 wl_role, (unsigned long long)(other_now - o), HIST);
		WL_CHECK(ball_now >= b + BALL_MIN,
			 "%s: the ball moved only %llu times over my last %d iterations", wl_role,
			 (unsigned long long)(ball_now - b), HIST);
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	shm = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shm == MAP_FAILED)
		wl_die("mmap");
	pid_t parent = getpid();
	pid_t child = fork();
	if (child < 0)
		wl_die("fork");
	if (child == 0) {
		wl_child_init("child");
		play(1);
		WL_CHECK(getppid() == parent, "child: getppid() is %d, want %d", (int)getppid(),
			 (int)parent);
		wl_child_exit();
	}
	wl_record_pid("child", child, parent);
	/* READY once the child plays */
	int64_t deadline = wl_now_ns() + 5000000000LL;
	while (shm->counter[1] == 0) {
		if (wl_now_ns() > deadline)
			wl_die("child never started");
		usleep(1000);
	}
	wl_ready();
	play(0);
	kill(child, SIGTERM);
	wl_wait_child(child, "child", 10000);
	wl_finish();
}
