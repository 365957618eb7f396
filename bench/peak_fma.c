// The CPU's peak float32 rate as a program can reach it: on every core
// (OpenMP), independent chains of fused multiply-adds on the widest vectors
// the compiler targets (-march=native), held in registers. Prints
// "<GFLOP/s, all threads> <threads>". Compiled and run by
// bench/_timing.py:peak_fma_gflops (the FLOP floor's rate); by hand:
//   gcc -O2 -march=native -fopenmp bench/peak_fma.c -o /tmp/peak && /tmp/peak
#include <omp.h>
#include <stdio.h>

#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif
typedef float V __attribute__((vector_size(LANES * 4)));

int main(void) {
  const long iters = 100000000;
  double t0 = omp_get_wtime();
  float sink = 0.f;
  int threads = 1;
#pragma omp parallel reduction(+ : sink)
  {
#pragma omp single
    threads = omp_get_num_threads();
    // 12 chains: more than (FMA units x latency), so throughput-bound.
    // Distinct starts, and the empty asm below, keep the compiler from
    // merging or removing the chains.
    const V z = {0};
    V a0 = z + 0.f, a1 = z + 1.f, a2 = z + 2.f, a3 = z + 3.f, a4 = z + 4.f;
    V a5 = z + 5.f, a6 = z + 6.f, a7 = z + 7.f, a8 = z + 8.f, a9 = z + 9.f;
    V a10 = z + 10.f, a11 = z + 11.f;
    const V b = z + 0.9999f, c = z + 1e-4f;
    for (long n = 0; n < iters; ++n) {
      a0 = a0 * b + c; a1 = a1 * b + c; a2 = a2 * b + c; a3 = a3 * b + c;
      a4 = a4 * b + c; a5 = a5 * b + c; a6 = a6 * b + c; a7 = a7 * b + c;
      a8 = a8 * b + c; a9 = a9 * b + c; a10 = a10 * b + c; a11 = a11 * b + c;
      __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3),
                       "+v"(a4), "+v"(a5), "+v"(a6), "+v"(a7));
      __asm__ volatile("" : "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));
    }
    V s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
    for (int k = 0; k < LANES; ++k) sink += s[k];
  }
  double secs = omp_get_wtime() - t0;
  printf("%.1f %d %g\n", 12.0 * 2 * LANES * iters * threads / secs / 1e9,
         threads, sink);
  return 0;
}
