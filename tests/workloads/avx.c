/*
 * avx: per round, loads distinct patterns into ymm8-ymm15 (xmm8-xmm15 if the
 * CPU/OS lacks AVX), spins for ~150 ms in an asm loop that never touches
 * them, stores them back and compares.  It also runs with a non-default
 * MXCSR (round toward zero + flush-to-zero) and x87 control word (round up,
 * double precision) and checks both every round.  A dump almost always lands
 * inside the spin.  Any mismatch is reported at once.  At SIGTERM: PASS if
 * nothing mismatched and rounds completed after READY (after SIGTERM it
 * runs rounds until they have, wl_keep_going).
 */
#include "wl_common.h"

#define NREG 8
#define MXCSR_WANT 0xFF80u  /* FTZ | RC=toward zero | all exceptions masked */
#define FPUCW_WANT 0x0A7Fu  /* RC=up, PC=double, all exceptions masked */
#define ROUND_NS 150000000LL

static int have_avx;
static uint8_t in[NREG][32] __attribute__((aligned(32)));
static uint8_t out[NREG][32] __attribute__((aligned(32)));

static void spin_avx(uint64_t iters)
{
	__asm__ volatile(
		"vmovdqu 0(%[in]), %%ymm8\n\t"
		"vmovdqu 32(%[in]), %%ymm9\n\t"
		"vmovdqu 64(%[in]), %%ymm10\n\t"
		"vmovdqu 96(%[in]), %%ymm11\n\t"
		"vmovdqu 128(%[in]), %%ymm12\n\t"
		"vmovdqu 160(%[in]), %%ymm13\n\t"
		"vmovdqu 192(%[in]), %%ymm14\n\t"
		"vmovdqu 224(%[in]), %%ymm15\n\t"
		"1:\n\t"
		"dec %[n]\n\t"
		"jnz 1b\n\t"
		"vmovdqu %%ymm8, 0(%[out])\n\t"
		"vmovdqu %%ymm9, 32(%[out])\n\t"
		"vmovdqu %%ymm10, 64(%[out])\n\t"
		"vmovdqu %%ymm11, 96(%[out])\n\t"
		"vmovdqu %%ymm12, 128(%[out])\n\t"
		"vmovdqu %%ymm13, 160(%[out])\n\t"
		"vmovdqu %%ymm14, 192(%[out])\n\t"
		"vmovdqu %%ymm15, 224(%[out])\n\t"
		"vzeroupper\n\t"
		: [n] "+r"(iters)
		: [in] "r"(in), [out] "r"(out)
		: "memory", "cc", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",
		  "xmm15");
}

static void spin_sse(uint64_t iters)
{
	__asm__ volatile(
		"movdqu 0(%[in]), %%xmm8\n\t"
		"movdqu 32(%[in]), %%xmm9\n\t"
		"movdqu 64(%[in]), %%xmm10\n\t"
		"movdqu 96(%[in]), %%xmm11\n\t"
		"movdqu 128(%[in]), %%xmm12\n\t"
		"movdqu 160(%[in]), %%xmm13\n\t"
		"movdqu 192(%[in]), %%xmm14\n\t"
		"movdqu 224(%[in]), %%xmm15\n\t"
		"1:\n\t"
		"dec %[n]\n\t"
		"jnz 1b\n\t"
		"movdqu %%xmm8, 0(%[out])\n\t"
		"movdqu %%xmm9, 32(%[out])\n\t"
		"movdqu %%xmm10, 64(%[out])\n\t"
		"movdqu %%xmm11, 96(%[out])\n\t"
		"movdqu %%xmm12, 128(%[out])\n\t"
		"movdqu %%xmm13, 160(%[out])\n\t"
		"movdqu %%xmm14, 192(%[out])\n\t"
		"movdqu %%xmm15, 224(%[out])\n\t"
		: [n] "+r"(iters)
		: [in] "r"(in), [out] "r"(out)
		: "memory", "cc", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",
		  "xmm15");
}

static void spin(uint64_t iters)
{
	if (iters == 0)
		iters = 1;
	if (have_avx)
		spin_avx(iters);
	else
		spin_sse(iters);
}

static unsigned get_mxcsr(void)
{
	unsigned v;
	__asm__ volatile("stmxcsr %0" : "=m"(v));
	return v;
}

static unsigned get_fpucw(void)
{
	unsigned short v;
	__asm__ volatile("fnstcw %0" : "=m"(v));
	return v;
}

static void set_control(void)
{
	unsigned m = MXCSR_WANT;
	unsigned short cw = FPUCW_WANT;
	__asm__ volatile("ldmxcsr %0" : : "m"(m));
	__asm__ volatile("fldcw %0" : : "m"(cw));
}

static int fill_and_check(uint64_t round, uint64_t iters)
{
	size_t width = have_avx ? 32 : 16;
	for (int r = 0; r < NREG; r++)
		for (size_t b = 0; b < 32; b++)
			in[r][b] = (uint8_t)wl_mix((round << 16) ^ ((uint64_t)r << 8) ^ b);
	memset(out, 0, sizeof(out));
	spin(iters);
	int bad = 0;
	for (int r = 0; r < NREG; r++) {
		if (memcmp(in[r], out[r], width) != 0) {
			size_t b = 0;
			while (b < width && in[r][b] == out[r][b])
				b++;
			wl_fail("round %llu: %cmm%d changed at byte %zu: %02x != %02x",
				(unsigned long long)round, have_avx ? 'y' : 'x', 8 + r, b, out[r][b],
				in[r][b]);
			bad = 1;
		}
	}
	unsigned mx = get_mxcsr() & ~0x3Fu; /* ignore sticky exception flags */
	if (mx != MXCSR_WANT) {
		wl_fail("round %llu: MXCSR is %#x, want %#x", (unsigned long long)round, mx, MXCSR_WANT);
		bad = 1;
	}
	unsigned cw = get_fpucw() & 0x1F3Fu; /* defined bits only */
	if (cw != (FPUCW_WANT & 0x1F3Fu)) {
		wl_fail("round %llu: x87 control word is %#x, want %#x", (unsigned long long)round,
			cw, FPUCW_WANT);
		bad = 1;
	}
	return bad;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	__builtin_cpu_init();
	have_avx = __builtin_cpu_supports("avx") != 0;
	set_control();

	/* calibrate: iterations for ~ROUND_NS */
	uint64_t probe = 20000000;
	int64_t t0 = wl_now_ns();
	spin(probe);
	int64_t dt = wl_now_ns() - t0;
	if (dt <= 0)
		dt = 1;
	uint64_t iters = (uint64_t)((double)probe * (double)ROUND_NS / (double)dt);
	if (iters < 1000000)
		iters = 1000000;

	uint64_t round = 0;
	fill_and_check(round++, 1000);
	wl_printf("INFO avx=%d iters_per_round=%llu\n", have_avx, (unsigned long long)iters);
	uint64_t ready_rounds = round;
	wl_ready();

	while (wl_keep_going(round > ready_rounds + 1)) {
		fill_and_check(round++, iters);
		usleep(20000);
	}
	wl_printf("INFO rounds=%llu ready_rounds=%llu\n", (unsigned long long)round,
		  (unsigned long long)ready_rounds);
	WL_CHECK(round > ready_rounds + 1, "only %llu rounds since READY",
		 (unsigned long long)(round - ready_rounds));
	wl_finish();
}
