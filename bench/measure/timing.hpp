// attnkit benchmarks (bench/measure.hpp): clocks and min-of-samples timing, threads, random inputs, the
// measured FMA peak.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include <attnkit/attnkit.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif
#if ATTNKIT_HAS_AVX2
#include <immintrin.h>
#endif

namespace attnkit_bench {

using attnkit::index_t;
using f4_cview = attnkit::tensor_view<const float, 4>;
using f4_view = attnkit::tensor_view<float, 4>;

// ----------------------------------------------------------------------------------------------
// Clocks and min-of-samples timing

/// Returns a monotonic time stamp in seconds.
inline double now_seconds() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

/// Runs f() `samples` times and returns the minimum wall time of one call in seconds.
template <class F>
double min_time_of(F&& f, int samples) {
  double best = std::numeric_limits<double>::infinity();
  for (int s = 0; s < std::max(1, samples); ++s) {
    const double t0 = now_seconds();
    f();
    best = std::min(best, now_seconds() - t0);
  }
  return best;
}

// ----------------------------------------------------------------------------------------------
// Threads

/// Returns the number of threads an attention call with threads = 0 uses (1 without OpenMP).
inline int max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Returns the 1-minute load average of the machine (-1 when unknown).
inline double load_average() {
  double l = -1.0;
  if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &l) != 1) l = -1.0;
    std::fclose(f);
  }
  return l;
}

/// Returns the number of online CPUs (1 when unknown).
inline int online_cpus() {
  const long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

/// Resolves a user thread count (0: all) to the count actually used.
inline int resolve_threads(int threads) { return threads > 0 ? threads : max_threads(); }

/// Returns {1, all threads} without duplicates: the default thread counts of every benchmark.
inline std::vector<int> default_thread_counts() {
  std::vector<int> t{1};
  if (max_threads() > 1) t.push_back(max_threads());
  return t;
}

/// Parses "1,2,4" into thread counts (0 means all threads); throws on malformed input.
inline std::vector<int> parse_thread_list(const std::string& s) {
  std::vector<int> out;
  std::size_t pos = 0;
  while (pos <= s.size()) {
    const std::size_t comma = std::min(s.find(',', pos), s.size());
    const int t = std::stoi(s.substr(pos, comma - pos));
    if (t < 0) throw std::invalid_argument("thread count must be >= 0: " + s);
    const int r = resolve_threads(t);
    if (std::find(out.begin(), out.end(), r) == out.end()) out.push_back(r);
    pos = comma + 1;
  }
  return out;
}

// ----------------------------------------------------------------------------------------------
// Random inputs

/// Fills `n` floats at `p` with uniform values in [lo, hi) from a splitmix64 stream.
inline void fill_uniform(float* p, index_t n, std::uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  const float span = (hi - lo) / 16777216.0f;  // 2^24 values
  for (index_t i = 0; i < n; ++i) {
    x += 0x9E3779B97F4A7C15ull;
    std::uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    p[i] = lo + static_cast<float>(z >> 40) * span;
  }
}

/// Fills a whole owning tensor with uniform values in [lo, hi).
template <std::size_t Rank>
void fill_uniform(attnkit::tensor<float, Rank>& t, std::uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  fill_uniform(t.data(), t.size(), seed, lo, hi);
}

// ----------------------------------------------------------------------------------------------
// Measured FMA peak (fp32, native SIMD width, independent accumulators kept in registers)

#if ATTNKIT_HAS_AVX512
using peak_vec = __m512;
inline constexpr int peak_lanes = 16;
inline constexpr const char* peak_isa = "avx512 (zmm)";
#define ATTNKIT_BENCH_SET1 _mm512_set1_ps
#define ATTNKIT_BENCH_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define ATTNKIT_BENCH_ADD _mm512_add_ps
#define ATTNKIT_BENCH_REG "+v"
inline float peak_hsum(peak_vec v) { return _mm512_reduce_add_ps(v); }
#elif ATTNKIT_HAS_AVX2
using peak_vec = __m256;
inline constexpr int peak_lanes = 8;
inline constexpr const char* peak_isa = "avx2 (ymm)";
#define ATTNKIT_BENCH_SET1 _mm256_set1_ps
#define ATTNKIT_BENCH_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define ATTNKIT_BENCH_ADD _mm256_add_ps
#define ATTNKIT_BENCH_REG "+v"
inline float peak_hsum(peak_vec v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#else
using peak_vec = float;
inline constexpr int peak_lanes = 1;
inline constexpr const char* peak_isa = "scalar";
#define ATTNKIT_BENCH_SET1(x) (x)
#define ATTNKIT_BENCH_FMA(a, b, c) ((a) * (b) + (c))
#define ATTNKIT_BENCH_ADD(a, b) ((a) + (b))
#if defined(__x86_64__) || defined(__i386__)
#define ATTNKIT_BENCH_REG "+x"
#elif defined(__aarch64__)
#define ATTNKIT_BENCH_REG "+w"
#endif
inline float peak_hsum(peak_vec v) { return v; }
#endif

/// Independent accumulators of the peak loop: 12 x (FMA latency 4) covers 2 FMA ports with room,
/// and 12 + 2 constants fit the 16 ymm registers of AVX2.
inline constexpr int peak_accumulators = 12;
/// FLOPs of one iteration of fma_peak_loop (one FMA = 2 FLOPs per lane).
inline constexpr double peak_flops_per_iter = 2.0 * peak_accumulators * peak_lanes;

/// Runs `iters` rounds of 12 independent FMAs; returns a value that depends on all of them.
/// Separate variables (an array gets spilled by g++) pinned to registers by empty asm statements.
__attribute__((noinline)) inline float fma_peak_loop(std::int64_t iters) {
  const peak_vec b = ATTNKIT_BENCH_SET1(0.9999f), c = ATTNKIT_BENCH_SET1(1e-4f);
  peak_vec a0 = ATTNKIT_BENCH_SET1(1.0f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0,
           a8 = a0, a9 = a0, a10 = a0, a11 = a0;
  for (std::int64_t i = 0; i < iters; ++i) {
    a0 = ATTNKIT_BENCH_FMA(a0, b, c);
    a1 = ATTNKIT_BENCH_FMA(a1, b, c);
    a2 = ATTNKIT_BENCH_FMA(a2, b, c);
    a3 = ATTNKIT_BENCH_FMA(a3, b, c);
    a4 = ATTNKIT_BENCH_FMA(a4, b, c);
    a5 = ATTNKIT_BENCH_FMA(a5, b, c);
    a6 = ATTNKIT_BENCH_FMA(a6, b, c);
    a7 = ATTNKIT_BENCH_FMA(a7, b, c);
    a8 = ATTNKIT_BENCH_FMA(a8, b, c);
    a9 = ATTNKIT_BENCH_FMA(a9, b, c);
    a10 = ATTNKIT_BENCH_FMA(a10, b, c);
    a11 = ATTNKIT_BENCH_FMA(a11, b, c);
#if defined(ATTNKIT_BENCH_REG)
    asm volatile(""
                 : ATTNKIT_BENCH_REG(a0), ATTNKIT_BENCH_REG(a1), ATTNKIT_BENCH_REG(a2), ATTNKIT_BENCH_REG(a3),
                   ATTNKIT_BENCH_REG(a4), ATTNKIT_BENCH_REG(a5), ATTNKIT_BENCH_REG(a6), ATTNKIT_BENCH_REG(a7),
                   ATTNKIT_BENCH_REG(a8), ATTNKIT_BENCH_REG(a9), ATTNKIT_BENCH_REG(a10),
                   ATTNKIT_BENCH_REG(a11));
#endif
  }
  peak_vec s = ATTNKIT_BENCH_ADD(ATTNKIT_BENCH_ADD(ATTNKIT_BENCH_ADD(a0, a1), ATTNKIT_BENCH_ADD(a2, a3)),
                                 ATTNKIT_BENCH_ADD(ATTNKIT_BENCH_ADD(a4, a5), ATTNKIT_BENCH_ADD(a6, a7)));
  s = ATTNKIT_BENCH_ADD(s, ATTNKIT_BENCH_ADD(ATTNKIT_BENCH_ADD(a8, a9), ATTNKIT_BENCH_ADD(a10, a11)));
  return peak_hsum(s);
}

#undef ATTNKIT_BENCH_SET1
#undef ATTNKIT_BENCH_FMA
#undef ATTNKIT_BENCH_ADD
#undef ATTNKIT_BENCH_REG

/// Receives the results of the peak loops so that they cannot be optimized away.
inline volatile float peak_sink = 0.0f;

/// Runs the peak loop on `threads` threads at once (one OpenMP region, each thread `iters`
/// iterations) and returns the wall time in seconds.
inline double run_peak_sample(int threads, std::int64_t iters) {
  const double t0 = now_seconds();
#if defined(_OPENMP)
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      const float r = fma_peak_loop(iters);
      if (r == 12345.678f) peak_sink = r;
    }
  } else {
    peak_sink = fma_peak_loop(iters);
  }
#else
  (void)threads;
  peak_sink = fma_peak_loop(iters);
#endif
  return now_seconds() - t0;
}

/// The measured FMA peak: GFLOP/s of `threads` threads and the loop length of one ~2 ms sample.
struct peak_result {
  double gflops = 0.0;
  int threads = 1;
  std::int64_t iters = 0;  ///< iterations of one sample (per thread)
  int samples = 0;
};

/// Measures the FMA peak of `threads` threads as the minimum over ~2 ms samples taken during at
/// least `wall_budget` seconds (0.5 s spans at least one stall-and-run cycle of a throttled vCPU).
/// With `expect_gflops` > 0 (e.g. threads x the 1-thread peak) sampling goes on, up to `max_wall`
/// seconds, while the best sample is below 90% of it: on a busy machine all threads rarely run at once.
inline peak_result measure_peak(int threads, double wall_budget = 0.5, double expect_gflops = 0.0,
                                double max_wall = 3.0) {
  peak_result r;
  r.threads = std::max(1, threads);
  // Calibrate the sample length to ~2 ms from the fastest of a few short probes; a stalled probe
  // only makes the samples shorter, never longer.
  const std::int64_t probe = 20000;
  double tp = std::numeric_limits<double>::infinity();
  for (int i = 0; i < 5; ++i) tp = std::min(tp, run_peak_sample(r.threads, probe));
  r.iters = std::max<std::int64_t>(probe, static_cast<std::int64_t>(static_cast<double>(probe) * 2e-3 / tp));
  const double flops = r.threads * static_cast<double>(r.iters) * peak_flops_per_iter;
  double best = std::numeric_limits<double>::infinity();
  const double start = now_seconds();
  for (;;) {
    best = std::min(best, run_peak_sample(r.threads, r.iters));
    ++r.samples;
    const double elapsed = now_seconds() - start;
    if (r.samples < 10 || elapsed < wall_budget) continue;
    if (expect_gflops > 0 && flops / best * 1e-9 < 0.9 * expect_gflops && elapsed < max_wall) continue;
    break;
  }
  r.gflops = r.threads * static_cast<double>(r.iters) * peak_flops_per_iter / best * 1e-9;
  return r;
}

}  // namespace attnkit_bench
