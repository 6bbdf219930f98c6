/*
 * shared_mem: a MAP_SHARED|MAP_ANONYMOUS page created before fork; the
 * parent and the child each increment their own counter in it (~1 ms per
 * iteration) and play ping-pong through a shared "ball" (the parent moves it
 * when even, the child when odd).  Each side keeps a history of what it sees
 * of the other's counter and of the ball.  At the end each side checks it
 * ran enough iterations since the last stall (the dump/restore gap) and that
 * over its last HIST iterations the other's counter and the ball advanced:
 * which only holds if the page is still shared after restore.
 * After SIGTERM each side plays on (wl_keep_going) until it has made the
 * progress its checks need.  The parent then checks itself, SIGTERMs the
 * child and plays on (without counting: the child's checks need the
 * parent's counter and the ball to move) until the child has exited
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

/* One side of the game. */
struct player {
	int me;
	pid_t peer; /* the root: the child; the child: the root */
	uint64_t i;
	uint64_t hist_other[HIST], hist_ball[HIST]; /* [i % HIST]: before iteration i + 1 */
};

/* One iteration (without the sleep). */
static void step(struct player *p)
{
	int me = p->me;
	shm->counter[me]++;
	if ((shm->ball & 1) == (uint64_t)me)
		__atomic_add_fetch(&shm->ball, 1, __ATOMIC_SEQ_CST);
	p->hist_other[p->i % HIST] = shm->counter[1 - me];
	p->hist_ball[p->i % HIST] = shm->ball;
	p->i++;
}

/* Over my last HIST iterations the other's counter and the ball advanced enough. */
static int others_advanced(const struct player *p)
{
	uint64_t at = p->i % HIST;
	return p->i >= HIST && shm->counter[1 - p->me] >= p->hist_other[at] + OTHER_MIN &&
	       shm->ball >= p->hist_ball[at] + BALL_MIN;
}

/* The other side exited (the child; for the child: its parent). */
static int peer_gone(const struct player *p)
{
	return p->me == 0 ? wl_child_gone(p->peer) : getppid() != p->peer;
}

static void play(struct player *p)
{
	int me = p->me, other = 1 - me;
	struct wl_progress prog;
	wl_progress_init(&prog);
	/* (no progress to wait for once the other side is gone) */
	while (wl_keep_going(wl_term && (peer_gone(p) || (prog.since_stall >= AFTER_STALL_MIN &&
							  others_advanced(p))))) {
		step(p);
		uint64_t i = p->i;
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
	uint64_t i = p->i, other_now = shm->counter[other], ball_now = shm->ball;
	wl_printf("INFO %s: iterations=%llu stalls=%llu since_stall=%llu other=%llu ball=%llu\n",
		  wl_role, (unsigned long long)i, (unsigned long long)prog.stalls,
		  (unsigned long long)prog.since_stall, (unsigned long long)other_now,
		  (unsigned long long)ball_now);
	WL_CHECK(prog.since_stall >= AFTER_STALL_MIN,
		 "%s: only %llu iterations after the last stall", wl_role,
		 (unsigned long long)prog.since_stall);
	if (i >= HIST) {
		uint64_t o = p->hist_other[i % HIST], b = p->hist_ball[i % HIST];
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
		wl_drain_ns /= 2; /* SIGTERMed once the parent has drained */
		struct player p = { .me = 1, .peer = parent };
		play(&p);
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
	struct player p = { .me = 0, .peer = child };
	play(&p);
	kill(child, SIGTERM);
	/* play on while the child drains: its checks need my counter and the ball to move */
	deadline = wl_now_ns() + wl_drain_ns / 2 + 1000000000LL;
	while (!wl_child_gone(child) && wl_now_ns() < deadline) {
		step(&p);
		usleep(1000);
	}
	wl_wait_child(child, "child", 10000);
	wl_finish();
}
