// attnkit benchmarks: measurement helpers shared by bench/ and examples/tour (no Google Benchmark
// dependency here; bench/common.hpp adds the Google Benchmark glue on top).
//
// The machines we measure on deschedule their vCPUs for hundreds of milliseconds at a time (steal
// time), and both wall time and thread CPU time include the stalls. Everything here therefore
// estimates a time as the MINIMUM over many short samples (a few ms each), and a long operator
// call is timed on a representative slice of its work (a few heads, a few blocks of query rows)
// whose time is scaled by (FLOPs of the whole call) / (FLOPs of the slice). See plan_samples().
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

// ----------------------------------------------------------------------------------------------
// Attention problems, FLOP counts and sampled timing

/// The sizes of one attention call: q [B, H, Lq, dk], k [B, Hkv, Lk, dk], v [B, Hkv, Lk, dv].
struct attention_spec {
  index_t B = 1, H = 8, Hkv = 8, Lq = 0, Lk = 0, dk = 64, dv = 64;
  attnkit::causal_mode causal = attnkit::causal_mode::none;

  /// Self-attention [B, H, L, d] with H == Hkv and dk == dv.
  static attention_spec self(index_t L, index_t d, index_t H = 8,
                             attnkit::causal_mode c = attnkit::causal_mode::none, index_t B = 1) {
    attention_spec s;
    s.B = B;
    s.H = s.Hkv = H;
    s.Lq = s.Lk = L;
    s.dk = s.dv = d;
    s.causal = c;
    return s;
  }
  index_t group() const { return Hkv > 0 ? H / Hkv : 1; }
  bool is_causal() const { return causal != attnkit::causal_mode::none; }
  /// Keys query i sees (causal masks only; key_lengths are not modelled here).
  index_t keys_of(index_t i) const {
    if (!is_causal()) return Lk;
    const index_t off = causal == attnkit::causal_mode::bottom_right ? Lk - Lq : 0;
    return std::clamp<index_t>(i + off + 1, 0, Lk);
  }
  /// "B1 H8 L2048 d64" (or with Hkv / Lq != Lk / dv when they differ).
  std::string str() const {
    std::string s = "B" + std::to_string(B) + " H" + std::to_string(H);
    if (Hkv != H) s += "/" + std::to_string(Hkv) + "kv";
    s += Lq == Lk ? " L" + std::to_string(Lq) : " Lq" + std::to_string(Lq) + " Lk" + std::to_string(Lk);
    s += " d" + std::to_string(dk);
    if (dv != dk) s += "/" + std::to_string(dv);
    return s;
  }
};

/// FLOPs of exact attention over query rows [r0, r1) of `heads` heads (all batch entries):
/// 2*(dk + dv) per visible (query, key) pair, i.e. 4*Lq*Lk*d per head when nothing is masked.
inline double attention_flops(const attention_spec& s, index_t heads, index_t r0, index_t r1) {
  double pairs = 0.0;
  if (!s.is_causal()) {
    pairs = static_cast<double>(r1 - r0) * static_cast<double>(s.Lk);
  } else {
    for (index_t i = r0; i < r1; ++i) pairs += static_cast<double>(s.keys_of(i));
  }
  return 2.0 * static_cast<double>(s.dk + s.dv) * pairs * static_cast<double>(heads * s.B);
}
/// FLOPs of the whole call (causal: only the visible pairs).
inline double attention_flops(const attention_spec& s) { return attention_flops(s, s.H, 0, s.Lq); }
/// FLOPs of the whole call as if nothing were masked (4*Lq*Lk*d per head for dk == dv).
inline double dense_attention_flops(const attention_spec& s) {
  return 2.0 * static_cast<double>(s.dk + s.dv) * static_cast<double>(s.Lq) * static_cast<double>(s.Lk) *
         static_cast<double>(s.H * s.B);
}
/// Bytes of K and V (fp32) one call reads at least once.
inline double kv_bytes(const attention_spec& s) {
  return 4.0 * static_cast<double>(s.B * s.Hkv * s.Lk * (s.dk + s.dv));
}

/// Owning, contiguous [B, H, L, D] inputs filled with uniform values in [-1, 1) and the output.
struct attention_problem {
  attention_spec spec;
  attnkit::tensor<float, 4> q, k, v, out;
  explicit attention_problem(const attention_spec& s, std::uint64_t seed = 42)
      : spec(s),
        q({s.B, s.H, s.Lq, s.dk}),
        k({s.B, s.Hkv, s.Lk, s.dk}),
        v({s.B, s.Hkv, s.Lk, s.dv}),
        out({s.B, s.H, s.Lq, s.dv}) {
    fill_uniform(q, seed);
    fill_uniform(k, seed + 1);
    fill_uniform(v, seed + 2);
  }
  /// True when `s` has the same tensor extents (the mask may differ).
  bool fits(const attention_spec& s) const {
    return s.B == spec.B && s.H == spec.H && s.Hkv == spec.Hkv && s.Lq == spec.Lq && s.Lk == spec.Lk &&
           s.dk == spec.dk && s.dv == spec.dv;
  }
};

/// Every operator with the attention signature (inputs, output, options), e.g. full_attention.
using attention_fn = std::function<void(const f4_cview& q, const f4_cview& k, const f4_cview& v,
                                        const f4_view& out, const attnkit::attention_options& opt)>;

/// Which independent parts of a call may be timed alone and scaled up.
enum class slicing {
  none,            ///< time whole calls only
  heads,           ///< heads are independent and cost the same (true of every attention operator)
  heads_and_rows,  ///< query rows too: the cost of a row is its visible keys (exact attention, reference)
};

/// Heads [h0, h0 + nh) (all batch entries) and query rows [r0, r0 + nr) of one call.
struct attention_slice {
  index_t h0 = 0, nh = 0, r0 = 0, nr = 0;
};

/// The slices one timing sample runs, their FLOPs and the FLOPs of the whole call.
struct sample_plan {
  attention_spec spec;
  std::vector<attention_slice> slices;
  double sample_flops = 0.0, full_flops = 0.0;
  bool whole() const { return slices.size() == 1 && slices[0].nh == spec.H && slices[0].nr == spec.Lq; }
  /// Time of the whole call estimated from the time of one sample.
  double scale_to_whole(double sample_seconds) const {
    return sample_flops > 0 ? sample_seconds * full_flops / sample_flops : sample_seconds;
  }
  /// "whole call" or e.g. "sample 4x96 rows x 2/8 heads".
  std::string describe() const {
    if (whole()) return "whole call";
    std::string d = "sample ";
    if (slices[0].nr != spec.Lq)
      d += (slices.size() > 1 ? std::to_string(slices.size()) + "x" : std::string()) +
           std::to_string(slices[0].nr) + " rows x ";
    return d + std::to_string(slices[0].nh) + "/" + std::to_string(spec.H) + " heads";
  }
};

/// Query rows of one tile of full_attention's kernel for `group` query heads per kv head. The
/// kernel computes whole tiles (a partial tile costs a full one), so row slices that start and end
/// on multiples of this run exactly the tiles of the whole call. Reads an internal of the kernel.
/// Query rows of one task of the tiled kernel (two column blocks, which share each K/V block), per
/// kv head group: samples made of whole tasks run the kernel as the whole call does.
inline index_t attention_row_quantum(index_t group = 1) {
  constexpr index_t cols = 2 * attnkit::detail::flash_tiling<float, attnkit::simd::native>::NV *
                           attnkit::simd::batch<float, attnkit::simd::native>::size;
  return cols / std::gcd(cols, std::max<index_t>(1, group));
}

/// Chooses what one timing sample of `s` runs so that it costs about `target_flops` (a few ms):
/// the whole call when it is cheap enough; otherwise all heads (or fewer, a multiple of the group)
/// over blocks of `quantum` query rows (0: attention_row_quantum). Non-causal rows all cost the
/// same, so one block of rows is representative; causal rows cost their visible keys, so `strata`
/// blocks centred in equal parts of the sequence are taken (exact for a cost linear in the keys;
/// the FLOPs count them exactly). Each slice keeps at least `min_tiles` tiles (quantum rows x one
/// kv head group), e.g. 2 per thread, so that no thread idles.
inline sample_plan plan_samples(const attention_spec& s, double target_flops,
                                slicing how = slicing::heads_and_rows, int strata = 4, index_t quantum = 0,
                                index_t min_tiles = 1) {
  if (quantum <= 0) quantum = attention_row_quantum(s.group());
  sample_plan p;
  p.spec = s;
  p.full_flops = attention_flops(s);
  const index_t G = std::max<index_t>(1, s.group());
  auto round_heads = [&](double want) {
    index_t nh = static_cast<index_t>(std::ceil(want));
    nh = (nh + G - 1) / G * G;
    return std::clamp<index_t>(nh, G, s.H);
  };
  index_t nh = s.H, nr = s.Lq;
  int K = 1;
  if (how != slicing::none && p.full_flops > 1.5 * target_flops && s.H > 0 && s.Lq > 0) {
    const double per_row_head = p.full_flops / static_cast<double>(s.H * s.Lq);
    const double row_heads = target_flops / std::max(per_row_head, 1.0);
    bool rows = how == slicing::heads_and_rows && (!s.is_causal() || s.Lq == s.Lk);
    if (rows) {
      K = s.is_causal() ? std::max(1, strata) : 1;
      const double want = row_heads / static_cast<double>(s.H * K);
      nr = std::max<index_t>(quantum,
                             (static_cast<index_t>(std::ceil(want)) + quantum - 1) / quantum * quantum);
      if (nr == quantum) nh = round_heads(row_heads / static_cast<double>(K * quantum));
      if (static_cast<index_t>(K) * nr >= s.Lq) rows = false;
    }
    if (!rows) {
      K = 1;
      nr = s.Lq;
      nh = round_heads(row_heads / static_cast<double>(s.Lq));
    }
    // Enough tiles per slice: more heads first, then more rows.
    auto tiles = [&] { return (nh / G) * ((nr + quantum - 1) / quantum); };
    while (tiles() < min_tiles && nh < s.H) nh = std::min(s.H, nh + G);
    while (tiles() < min_tiles && static_cast<index_t>(K) * (nr + quantum) < s.Lq) nr += quantum;
  }
  for (int k = 0; k < K; ++k) {
    attention_slice sl;
    sl.nh = nh;
    sl.nr = nr;
    if (nr < s.Lq) {
      const index_t centre = (2 * k + 1) * s.Lq / (2 * K);
      sl.r0 = std::clamp<index_t>((centre - nr / 2) / quantum * quantum, 0, s.Lq - nr);
    }
    p.slices.push_back(sl);
    p.sample_flops += attention_flops(s, nh, sl.r0, sl.r0 + nr);
  }
  return p;
}

/// FLOPs of `heads` query heads (all batch entries, every row; a multiple of the group) of one call
/// of `s`: the cost model of an operator that is timed on slices of heads (see plan_head_samples).
using head_flops_fn = std::function<double(const attention_spec& s, index_t heads)>;

/// Chooses the heads one timing sample of `s` runs for an operator that can only be sliced by heads
/// (e.g. FAVOR+, whose key pass runs over all keys before any query: no block of query rows is
/// representative) and costs `flops`: the whole call when how == none or it costs at most 1.5 x
/// `target_flops`; otherwise the fewest heads that cost `target_flops`, a multiple of the group and
/// of `head_quantum` (e.g. the thread count, so that every thread gets as many heads as in a whole
/// call when the operator parallelizes over heads).
inline sample_plan plan_head_samples(const attention_spec& s, double target_flops, const head_flops_fn& flops,
                                     slicing how = slicing::heads, index_t head_quantum = 1) {
  sample_plan p;
  p.spec = s;
  p.full_flops = flops(s, s.H);
  index_t nh = s.H;
  if (how != slicing::none && p.full_flops > 1.5 * target_flops && s.H > 0) {
    const index_t G = std::max<index_t>(1, s.group());
    const index_t q = std::lcm(G, std::max<index_t>(1, head_quantum));
    const double per_head = p.full_flops / static_cast<double>(s.H);
    nh = static_cast<index_t>(std::ceil(target_flops / std::max(per_head, 1.0)));
    nh = std::min(s.H, std::max<index_t>(q, (nh + q - 1) / q * q));
    if (nh % G != 0) nh = s.H;  // the quantum exceeds H: only whole calls are representative
  }
  attention_slice sl;
  sl.nh = nh;
  sl.nr = s.Lq;
  p.slices.push_back(sl);
  p.sample_flops = nh == s.H ? p.full_flops : flops(s, nh);
  return p;
}

/// Views of one slice of a problem and the mask that gives its rows the same visible keys as in
/// the whole call (a causal row block [r0, r0+nr) is a bottom-right causal call over keys [0, r0+nr)).
struct slice_views {
  f4_cview q, k, v;
  f4_view out;
  attnkit::causal_mode causal = attnkit::causal_mode::none;
};

/// `s` is the spec of the call (its mask may differ from p.spec; its extents must not).
inline slice_views make_slice(attention_problem& p, const attention_spec& s, const attention_slice& sl) {
  const index_t G = std::max<index_t>(1, s.group());
  const index_t hk0 = sl.h0 / G, nhk = std::max<index_t>(1, sl.nh / G);
  index_t lk = s.Lk;
  slice_views r;
  r.causal = s.causal;
  if (sl.nr != s.Lq && s.is_causal()) {
    lk = sl.r0 + sl.nr;  // plan_samples slices causal rows only when Lq == Lk
    r.causal = attnkit::causal_mode::bottom_right;
  }
  auto sub = [](auto view, index_t h0, index_t nh, index_t r0, index_t nr) {
    auto e = view.extents();
    auto st = view.strides();
    e[1] = nh;
    e[2] = nr;
    using V = decltype(view);
    return V(view.data() + h0 * st[1] + r0 * st[2], e, st);
  };
  r.q = sub(f4_cview(p.q.view()), sl.h0, sl.nh, sl.r0, sl.nr);
  r.out = sub(p.out.view(), sl.h0, sl.nh, sl.r0, sl.nr);
  r.k = sub(f4_cview(p.k.view()), hk0, nhk, 0, lk);
  r.v = sub(f4_cview(p.v.view()), hk0, nhk, 0, lk);
  return r;
}

/// Runs the slices of one sample of plan.spec (on the tensors of `p`, which must fit it) back to
/// back and returns their wall time in seconds.
inline double run_sample(attention_problem& p, const sample_plan& plan, const attention_fn& fn,
                         const attnkit::attention_options& opt) {
  if (!p.fits(plan.spec))
    throw std::invalid_argument("run_sample: the problem does not fit " + plan.spec.str());
  std::vector<slice_views> views;
  views.reserve(plan.slices.size());
  for (const auto& sl : plan.slices) views.push_back(make_slice(p, plan.spec, sl));
  attnkit::attention_options o = opt;
  const double t0 = now_seconds();
  for (const auto& sv : views) {
    o.mask.causal = sv.causal;
    fn(sv.q, sv.k, sv.v, sv.out, o);
  }
  return now_seconds() - t0;
}

/// Estimates the time of one whole call: the minimum over `samples` samples, scaled to the whole.
inline double estimate_call_seconds(attention_problem& p, const sample_plan& plan, const attention_fn& fn,
                                    const attnkit::attention_options& opt, int samples) {
  return plan.scale_to_whole(min_time_of([&] { run_sample(p, plan, fn, opt); }, samples));
}

/// full_attention<simd::native, float> as an attention_fn.
inline attention_fn full_attention_fn() {
  return [](const f4_cview& q, const f4_cview& k, const f4_cview& v, const f4_view& out,
            const attnkit::attention_options& o) { attnkit::full_attention(q, k, v, out, o); };
}
/// reference::attention<float> as an attention_fn: materializes Lq x Lk per head, serial loops.
/// Its Eigen products would run on Eigen's own OpenMP threads; `eigen_threads` (default 1) fixes
/// their number for the call, so the strawman is a well-defined single-threaded program.
inline attention_fn reference_attention_fn(int eigen_threads = 1) {
  return [eigen_threads](const f4_cview& q, const f4_cview& k, const f4_cview& v, const f4_view& out,
                         const attnkit::attention_options& o) {
    const int saved = Eigen::nbThreads();
    Eigen::setNbThreads(eigen_threads);
    attnkit::reference::attention(q, k, v, out, o);
    Eigen::setNbThreads(saved);
  };
}

/// Tokens of one chunk of causal FAVOR+ (and of one query block of bidirectional FAVOR+).
/// Reads an internal of the kernel.
inline index_t favor_chunk() { return attnkit::detail::favor_tiling<float, attnkit::simd::native>::chunk; }

/// FLOPs of the feature and state products of favor_attention over `heads` query heads (a multiple
/// of the group) of `s`, with mf features per token (m for softmax_positive and relu, 2m for
/// softmax_hyperbolic); see favor/detail/kernel.hpp for the products:
///   per (batch, kv head)   key features  U = K F^T           2 * Lk * dk * mf
///                          state         S^T += V^T Phi_K    2 * Lk * mf * dv
///   per (batch, query head) query features U^T = F Q^T       2 * Lq * dk * mf
///                          output        [S^T; z^T] Phi_Q^T  2 * Lq * mf * (dv + 1)
///   causal, per query head intra-chunk   A^T = Phi_K Phi_Q^T 2 * L * C * mf
///                          and           O += V^T A^T        2 * L * C * dv
/// with C = favor_chunk(). The intra-chunk products are counted over the whole C x C block, as the
/// kernel computes it (only the part on and below the diagonal is needed: about half). Not counted:
/// z += colsum(Phi_K) (Lk * mf adds), the exponentials, stabilizers, masking and normalization.
inline double favor_flops(const attention_spec& s, index_t mf, index_t heads) {
  const double kv_heads = static_cast<double>(heads / std::max<index_t>(1, s.group()) * s.B);
  const double q_heads = static_cast<double>(heads * s.B);
  const double Lq = static_cast<double>(s.Lq), Lk = static_cast<double>(s.Lk), f = static_cast<double>(mf);
  const double dk = static_cast<double>(s.dk), dv = static_cast<double>(s.dv);
  double per_q = 2.0 * Lq * dk * f + 2.0 * Lq * f * (dv + 1.0);
  if (s.is_causal()) per_q += 2.0 * Lq * static_cast<double>(favor_chunk()) * (f + dv);
  return kv_heads * (2.0 * Lk * dk * f + 2.0 * Lk * f * dv) + q_heads * per_q;
}
/// favor_flops as the cost model of plan_head_samples / register_attention.
inline head_flops_fn favor_flops_fn(index_t mf) {
  return [mf](const attention_spec& s, index_t heads) { return favor_flops(s, mf, heads); };
}

/// favor_attention<simd::native, float> with `features` as an attention_fn: the mask (causal,
/// key_lengths), scale and threads come from the attention_options of the call, the rest (kernel,
/// relu_epsilon) from `base`.
inline attention_fn favor_attention_fn(std::shared_ptr<const attnkit::random_features<float>> features,
                                       const attnkit::favor_options& base = {}) {
  return [features, base](const f4_cview& q, const f4_cview& k, const f4_cview& v, const f4_view& out,
                          const attnkit::attention_options& o) {
    attnkit::favor_options fo = base;
    fo.mask = o.mask;
    fo.scale = o.scale;
    fo.threads = o.threads;
    attnkit::favor_attention(q, k, v, out, *features, fo);
  };
}

// ----------------------------------------------------------------------------------------------
// Combiner attention (combiner_attention): the plans the benchmarks and the tour run, their cost

/// The Combiner plans of the benchmarks and the tour (axial has three orders).
enum class combiner_kind { fixed, logsparse, axial_row, axial_col, axial_mixture, learnable };

/// Every combiner_kind, in the order the benchmarks and the tour list them.
inline std::vector<combiner_kind> combiner_kinds() {
  return {combiner_kind::fixed,     combiner_kind::logsparse,     combiner_kind::axial_row,
          combiner_kind::axial_col, combiner_kind::axial_mixture, combiner_kind::learnable};
}

/// "fixed", "logsparse", "axial_row", "axial_col", "axial_mixture", "learnable": the <plan> of the
/// benchmark names combiner/<plan>/d:64/L:.../causal:.../threads:...
inline const char* combiner_kind_name(combiner_kind k) {
  switch (k) {
    case combiner_kind::fixed:
      return "fixed";
    case combiner_kind::logsparse:
      return "logsparse";
    case combiner_kind::axial_row:
      return "axial_row";
    case combiner_kind::axial_col:
      return "axial_col";
    case combiner_kind::axial_mixture:
      return "axial_mixture";
    case combiner_kind::learnable:
      return "learnable";
  }
  return "?";
}

/// ceil(sqrt(n)) for n >= 1: the default span of fixed plans and the cluster count of the benchmarks.
inline index_t ceil_sqrt(index_t n) {
  index_t r = static_cast<index_t>(std::sqrt(static_cast<double>(n)));
  while (r * r < n) ++r;
  while (r > 1 && (r - 1) * (r - 1) >= n) --r;
  return std::max<index_t>(1, r);
}

/// The axial grid of the benchmarks for L: rows = the largest divisor of L not above sqrt(L),
/// cols = L / rows. For a power of two: rows = 2^floor(log2(L) / 2), so rows = cols = sqrt(L) when
/// L is a power of 4 (1024: 32 x 32), else cols = 2 rows (2048: 32 x 64).
inline std::pair<index_t, index_t> combiner_axial_grid(index_t L) {
  index_t rows = 1;
  for (index_t r = 1; r * r <= L; ++r)
    if (L % r == 0) rows = r;
  return {rows, L / std::max<index_t>(1, rows)};
}

/// One Combiner plan resolved for one problem [B, H, L, d]: span, grid and, for learnable, the
/// routing centroids and the clusters they give (the cost model reads them).
struct combiner_case {
  combiner_kind kind = combiner_kind::fixed;
  index_t L = 0;
  index_t span = 0;                      ///< fixed, causal learnable: the segment length, ceil(sqrt(L))
  index_t rows = 0, cols = 0;            ///< axial: the grid
  index_t clusters = 0;                  ///< learnable: C
  attnkit::tensor<float, 3> centroids;   ///< learnable: [Hkv, C, dk] (k-means of the keys)
  attnkit::tensor<std::int32_t, 3> ids;  ///< learnable: [B, Hkv, L] clusters of the keys

  /// "fixed s=32", "logsparse", "axial_row 32x64", "learnable C=32".
  std::string describe() const {
    std::string d = combiner_kind_name(kind);
    if (kind == combiner_kind::fixed) d += " s=" + std::to_string(span);
    if (rows > 0) d += " " + std::to_string(rows) + "x" + std::to_string(cols);
    if (kind == combiner_kind::learnable) d += " C=" + std::to_string(clusters);
    return d;
  }
};

/// Resolves `kind` for the keys of `p` (Lq == Lk). learnable: C = ceil(sqrt(L)) centroids from
/// combiner::kmeans(k, C, `iterations`, `seed`) over p.k (outside any timing), then the clusters
/// they route every key to.
inline std::shared_ptr<const combiner_case> make_combiner_case(combiner_kind kind, const attention_problem& p,
                                                               int iterations = 3, std::uint64_t seed = 1) {
  auto c = std::make_shared<combiner_case>();
  c->kind = kind;
  c->L = p.spec.Lk;
  c->span = ceil_sqrt(c->L);
  if (kind == combiner_kind::axial_row || kind == combiner_kind::axial_col ||
      kind == combiner_kind::axial_mixture) {
    const auto g = combiner_axial_grid(c->L);
    c->rows = g.first;
    c->cols = g.second;
  }
  if (kind == combiner_kind::learnable) {
    c->clusters = ceil_sqrt(c->L);
    c->centroids = attnkit::combiner::kmeans(p.k.cview(), c->clusters, iterations, seed);
    c->ids = attnkit::combiner::assign_clusters(p.k.cview(), c->centroids.cview());
  }
  return c;
}

/// (query, key or summary) pairs, members of pooled summaries and members of anchored summaries of
/// one query head: the counts combiner_flops weighs.
struct combiner_counts {
  double pairs = 0.0;     ///< (query i, direct key j in D_i) and (query i, group of i) pairs
  double pooled = 0.0;    ///< members of the distinct pooled groups some query uses (groups of >= 2)
  double anchored = 0.0;  ///< members of the distinct anchored (axial) groups some query uses
};

/// The counts of fixed(span s) over L positions (DESIGN 4.3).
inline combiner_counts combiner_fixed_counts(index_t L, index_t s, bool causal) {
  combiner_counts r;
  const index_t nseg = (L + s - 1) / s;
  for (index_t a = 0; a < nseg; ++a) {
    const double n = static_cast<double>(std::min(L, (a + 1) * s) - a * s);
    if (causal) {
      r.pairs += n * (n + 1) / 2 + n * static_cast<double>(a);  // own segment up to i, earlier segments
      if (a + 1 < nseg && n >= 2) r.pooled += n;                // used by the later segments
    } else {
      r.pairs += n * (n + static_cast<double>(nseg - 1));
      if (nseg > 1 && n >= 2) r.pooled += n;
    }
  }
  return r;
}

/// The counts of logsparse over L positions: one direct key, one group per level c = 2^l where
/// floor(i/c) is odd (bidirectional also where it is even and the next block exists).
inline combiner_counts combiner_logsparse_counts(index_t L, bool causal) {
  combiner_counts r;
  r.pairs = static_cast<double>(L);
  for (index_t c = 1; c < L; c *= 2) {
    const index_t nblocks = (L + c - 1) / c;
    for (index_t t = 0; t < nblocks; ++t) {
      const index_t n = std::min(L, (t + 1) * c) - t * c;  // members of block t
      // queries of block t + 1 use block t when t is even; queries of block t - 1 use it when t is
      // odd (bidirectional)
      index_t users = 0;
      if (t % 2 == 0 && t + 1 < nblocks) users += std::min(L, (t + 2) * c) - (t + 1) * c;
      if (!causal && t % 2 == 1) users += c;
      r.pairs += static_cast<double>(users);
      if (users > 0 && n >= 2) r.pooled += static_cast<double>(n);
    }
  }
  return r;
}

/// The counts of axial(rows n, cols m) in one order (col_major: the transpose).
inline combiner_counts combiner_axial_counts(index_t n, index_t m, bool causal, bool col_major) {
  combiner_counts r;
  const double N = static_cast<double>(n), M = static_cast<double>(m), L = N * M;
  auto members = [](double groups, double size) { return size >= 2 ? groups * size : 0.0; };
  if (!col_major) {
    // D_i: row r (causal: columns <= c); groups: rows r' != r (causal: r' < r) seen from column c,
    // one anchored group per (row r', column c) that some query uses
    r.pairs = causal ? N * M * (M + 1) / 2 + M * N * (N - 1) / 2 : L * (M + N - 1);
    r.anchored = n < 2 ? 0.0 : members(causal ? (N - 1) * M : L, M);
  } else {
    // D_i: column c (causal: rows <= r); groups: columns c' != c seen from row r; causal: rows <= r
    // of columns c' < c (c groups), rows < r of columns c' > c (m - 1 - c groups when r > 0)
    r.pairs =
        causal ? M * N * (N + 1) / 2 + N * M * (M - 1) / 2 + (N - 1) * M * (M - 1) / 2 : L * (N + M - 1);
    if (m >= 2) {
      if (!causal) {
        r.anchored = members(L, N);
      } else {  // (row r, column c'): rows <= r of columns 0 .. m-2, rows < r of columns 1 .. m-1
        for (index_t row = 0; row < n; ++row)
          r.anchored +=
              members(M - 1, static_cast<double>(row + 1)) + members(M - 1, static_cast<double>(row));
      }
    }
  }
  return r;
}

/// The counts of learnable over the clusters id[0..L) of one (batch, kv head) (DESIGN 4.3).
inline combiner_counts combiner_learnable_counts(const std::vector<std::int32_t>& id, index_t s,
                                                 bool causal) {
  combiner_counts r;
  const index_t L = static_cast<index_t>(id.size());
  std::int32_t nc = 0;
  for (auto c : id) nc = std::max(nc, c + 1);
  std::vector<double> size(static_cast<std::size_t>(nc), 0.0);
  if (!causal) {
    for (auto c : id) size[static_cast<std::size_t>(c)] += 1;
    double K = 0;
    for (double n : size) K += n > 0 ? 1 : 0;
    for (double n : size) {
      r.pairs += n * (n + K - 1);
      if (K > 1 && n >= 2) r.pooled += n;
    }
    return r;
  }
  const index_t nseg = (L + s - 1) / s;
  // pairs: own segment up to i + earlier positions of the own cluster + the earlier segments that
  // hold some other cluster (a segment made only of cluster c is no group of c's queries)
  std::vector<double> before(static_cast<std::size_t>(nc), 0.0), pure(static_cast<std::size_t>(nc), 0.0);
  std::vector<std::pair<std::int32_t, index_t>> seg;  // (cluster, count) of one segment
  auto segment_counts = [&](index_t a) {
    seg.clear();
    std::vector<std::int32_t> ids(id.begin() + a * s, id.begin() + std::min(L, (a + 1) * s));
    std::sort(ids.begin(), ids.end());
    for (auto c : ids)
      if (seg.empty() || seg.back().first != c)
        seg.emplace_back(c, 1);
      else
        ++seg.back().second;
  };
  for (index_t a = 0; a < nseg; ++a) {
    const index_t j0 = a * s, j1 = std::min(L, j0 + s);
    for (index_t i = j0; i < j1; ++i) {
      const auto c = static_cast<std::size_t>(id[static_cast<std::size_t>(i)]);
      r.pairs += static_cast<double>(i - j0 + 1) + before[c] + static_cast<double>(a) - pure[c];
    }
    segment_counts(a);
    for (const auto& e : seg) before[static_cast<std::size_t>(e.first)] += static_cast<double>(e.second);
    if (seg.size() == 1) pure[static_cast<std::size_t>(seg[0].first)] += 1;
  }
  // distinct groups: segment b minus cluster c for every cluster c of a later query; a c absent
  // from b leaves the whole segment (one group shared by all such c)
  std::vector<char> later(static_cast<std::size_t>(nc), 0);
  index_t nlater = 0;
  for (index_t b = nseg - 2; b >= 0; --b) {
    for (index_t j = (b + 1) * s; j < std::min(L, (b + 2) * s); ++j) {
      auto& f = later[static_cast<std::size_t>(id[static_cast<std::size_t>(j)])];
      if (!f) ++nlater;
      f = 1;
    }
    segment_counts(b);
    const index_t nb = std::min(L, (b + 1) * s) - b * s;
    index_t present_later = 0;
    for (const auto& e : seg) {
      if (!later[static_cast<std::size_t>(e.first)]) continue;
      ++present_later;
      if (nb - e.second >= 2) r.pooled += static_cast<double>(nb - e.second);
    }
    if (nlater > present_later && nb >= 2) r.pooled += static_cast<double>(nb);
  }
  return r;
}

/// FLOPs of combiner_attention under `c` over query heads [0, heads) (all batch entries; a
/// multiple of the group) of `s`:
///   2 (dk + dv)   per (query, direct key) and (query, summary) pair: the score and the value
///   2 (dk + dv)   per member of each distinct pooled group a query uses (fixed, logsparse,
///                 learnable): its local expectation e = sum_j softmax_j(q~ . k_j) v_j, per query head
///   (4 dk + 2 dv) per member of each distinct anchored group (axial): e and k~ = sum_j w_j k_j
///   2 dk C        per key (learnable): routing to C centroids, per (batch, kv head)
/// i.e. the products the plan needs (DESIGN 4.3), whatever the kernel computes beyond them
/// (masked entries of whole blocks, summaries nobody uses). A one-member group is its member:
/// no products. Not counted: pooling, exponentials, masking, k-means (outside the call).
inline double combiner_flops(const attention_spec& s, const combiner_case& c, index_t heads) {
  const bool causal = s.is_causal();
  const double dk = static_cast<double>(s.dk), dv = static_cast<double>(s.dv);
  auto weigh = [&](const combiner_counts& n) {
    return 2.0 * (dk + dv) * (n.pairs + n.pooled) + (4.0 * dk + 2.0 * dv) * n.anchored;
  };
  const index_t L = s.Lq, G = std::max<index_t>(1, s.group());
  double per_head = 0.0;  // every query head costs the same (all but learnable)
  switch (c.kind) {
    case combiner_kind::fixed:
      per_head = weigh(combiner_fixed_counts(L, c.span, causal));
      break;
    case combiner_kind::logsparse:
      per_head = weigh(combiner_logsparse_counts(L, causal));
      break;
    case combiner_kind::axial_row:
    case combiner_kind::axial_col:
    case combiner_kind::axial_mixture:
      if (c.kind != combiner_kind::axial_col)
        per_head += weigh(combiner_axial_counts(c.rows, c.cols, causal, false));
      if (c.kind != combiner_kind::axial_row)
        per_head += weigh(combiner_axial_counts(c.rows, c.cols, causal, true));
      break;
    case combiner_kind::learnable: {
      double f = 0.0;
      std::vector<std::int32_t> id(static_cast<std::size_t>(L));
      for (index_t b = 0; b < s.B; ++b)
        for (index_t hk = 0; hk < heads / G; ++hk) {
          for (index_t j = 0; j < L; ++j) id[static_cast<std::size_t>(j)] = c.ids(b, hk, j);
          f += static_cast<double>(G) * weigh(combiner_learnable_counts(id, c.span, causal)) +
               2.0 * dk * static_cast<double>(c.clusters) * static_cast<double>(L);
        }
      return f;
    }
  }
  return per_head * static_cast<double>(heads * s.B);
}

/// combiner_flops as the cost model of plan_head_samples / register_attention.
inline head_flops_fn combiner_flops_fn(std::shared_ptr<const combiner_case> c) {
  return [c](const attention_spec& s, index_t heads) { return combiner_flops(s, *c, heads); };
}

/// combiner_attention<simd::native, float> under `c` as an attention_fn: causal, key_lengths, scale
/// and threads come from the attention_options of the call (a bias is rejected), pooling from
/// `base`. learnable routes with the centroids of the call's first k.extent(1) kv heads: the
/// slices of plan_head_samples start at head 0.
inline attention_fn combiner_attention_fn(std::shared_ptr<const combiner_case> c,
                                          const attnkit::combiner_options& base = {}) {
  return [c, base](const f4_cview& q, const f4_cview& k, const f4_cview& v, const f4_view& out,
                   const attnkit::attention_options& o) {
    attnkit::combiner_options co = base;
    co.causal = o.mask.causal != attnkit::causal_mode::none;
    co.mask = o.mask;
    co.mask.causal = attnkit::causal_mode::none;
    co.scale = o.scale;
    co.threads = o.threads;
    namespace cb = attnkit::combiner;
    switch (c->kind) {
      case combiner_kind::fixed:
        attnkit::combiner_attention(q, k, v, out, cb::fixed{c->span}, co);
        break;
      case combiner_kind::logsparse:
        attnkit::combiner_attention(q, k, v, out, cb::logsparse{}, co);
        break;
      case combiner_kind::axial_row:
        attnkit::combiner_attention(q, k, v, out, cb::axial{c->rows, c->cols, cb::axial_order::row_major},
                                    co);
        break;
      case combiner_kind::axial_col:
        attnkit::combiner_attention(q, k, v, out, cb::axial{c->rows, c->cols, cb::axial_order::col_major},
                                    co);
        break;
      case combiner_kind::axial_mixture:
        attnkit::combiner_attention(q, k, v, out, cb::axial{c->rows, c->cols, cb::axial_order::mixture}, co);
        break;
      case combiner_kind::learnable: {
        const auto& mu = c->centroids;
        cb::learnable plan;
        plan.centroids = attnkit::tensor_view<const float, 3>(
            mu.data(), {k.extent(1), mu.extent(1), mu.extent(2)}, mu.view().strides());
        attnkit::combiner_attention(q, k, v, out, plan, co);
        break;
      }
    }
  };
}

// ----------------------------------------------------------------------------------------------
// Lambda layers (lambda_attention on projected inputs)

/// The position term of a lambda benchmark: local (lambda convolution of scope r x r) or global
/// relative (a [2H-1, 2W-1, k, u] table on the side x side grid).
enum class lambda_term { local, relative };

inline const char* lambda_term_name(lambda_term t) { return t == lambda_term::local ? "local" : "relative"; }

/// One lambda_attention problem on a rows x cols feature map of d channels, as a lambda layer of
/// LambdaResNet would run it: h queries (default 4) of k = 16 per position, intra-depth u, v = d / h,
/// so the output has d channels like h-head attention with head dimension d / h. Inputs uniform in
/// [-1, 1), built once.
struct lambda_case {
  lambda_term term = lambda_term::local;
  index_t B = 1, rows = 0, cols = 0, d = 0, h = 4, k = 16, u = 1, v = 0, rh = 0, rw = 0;
  attnkit::tensor<float, 4> q, keys, values, table;
  attnkit::tensor<float, 3> out;

  /// Square side x side maps; local terms of scope r x r, relative tables [2 side - 1, 2 side - 1].
  lambda_case(lambda_term t, index_t side, index_t d_, index_t u_, index_t r, index_t batch = 1)
      : lambda_case(t, side, side, d_, u_, r, batch) {}
  lambda_case(lambda_term t, index_t rows_, index_t cols_, index_t d_, index_t u_, index_t r, index_t batch,
              index_t heads = 4)
      : term(t),
        B(batch),
        rows(rows_),
        cols(cols_),
        d(d_),
        h(heads),
        u(u_),
        v(d_ / heads),
        rh(t == lambda_term::local ? r : 2 * rows_ - 1),
        rw(t == lambda_term::local ? r : 2 * cols_ - 1),
        q({B, rows * cols, h, k}),
        keys({B, rows * cols, k, u}),
        values({B, rows * cols, v, u}),
        table({rh, rw, k, u}),
        out({B, rows * cols, h * v}) {
    fill_uniform(q, 11);
    fill_uniform(keys, 12);
    fill_uniform(values, 13);
    fill_uniform(table, 14, -0.1f, 0.1f);
  }
  index_t n() const { return rows * cols; }
  attnkit::lambda_position<float> position() const {
    const attnkit::lambda_grid g{rows, cols};
    return term == lambda_term::local ? attnkit::lambda_position<float>::local(table.view(), g)
                                      : attnkit::lambda_position<float>::relative(table.view(), g);
  }
  void run(int threads) {
    attnkit::lambda_options o;
    o.threads = threads;
    attnkit::lambda_attention(q.view(), keys.view(), values.view(), position(), out.view(), o);
  }
  /// FLOPs of the position lambdas: 2 k u v per (query, context position) pair of its window
  /// (border windows clipped: zero padding costs nothing).
  double position_flops() const {
    auto span = [](index_t extent, index_t r, index_t i) {
      const index_t c = r / 2;
      return static_cast<double>(std::min(extent, i - c + r) - std::max<index_t>(0, i - c));
    };
    double ys = 0.0, xs = 0.0;
    for (index_t y = 0; y < rows; ++y) ys += span(rows, rh, y);
    for (index_t x = 0; x < cols; ++x) xs += span(cols, rw, x);
    return 2.0 * static_cast<double>(k * u * v * B) * ys * xs;
  }
  /// All products: content lambda (2 m u k v), position lambdas, and Y = Q lambda (2 n h k v).
  double flops() const {
    const double nb = static_cast<double>(n() * B);
    return position_flops() + 2.0 * nb * static_cast<double>(u * k * v) +
           2.0 * nb * static_cast<double>(h * k * v);
  }
  /// "local r=23 u=4 k=16 h=4 v=64, B1 56x56x256"
  std::string describe() const {
    std::string s = std::string(lambda_term_name(term));
    if (term == lambda_term::local) s += " r=" + std::to_string(rh);
    return s + " u=" + std::to_string(u) + " k=" + std::to_string(k) + " h=" + std::to_string(h) +
           " v=" + std::to_string(v) + ", B" + std::to_string(B) + " " + std::to_string(rows) + "x" +
           std::to_string(cols) + "x" + std::to_string(d);
  }
};

// ----------------------------------------------------------------------------------------------
// CoAtNet's relative attention

/// relative_attention_2d as an attention_fn on a rows x cols grid, with a table [heads, 2 rows - 1,
/// 2 cols - 1] uniform in [-1, 1) built once; a call on a slice of heads uses the table's first
/// rows (samples are slices of heads: their cost does not depend on which).
inline attention_fn relative_attention_fn(index_t rows, index_t cols, index_t heads,
                                          attnkit::relative_mode mode) {
  auto table =
      std::make_shared<attnkit::tensor<float, 3>>(std::array<index_t, 3>{heads, 2 * rows - 1, 2 * cols - 1});
  fill_uniform(table->data(), table->size(), 77);
  return [=](const f4_cview& q, const f4_cview& k, const f4_cview& v, const f4_view& out,
             const attnkit::attention_options& o) {
    attnkit::relative_options ro;
    ro.mode = mode;
    ro.threads = o.threads;
    const attnkit::tensor_view<const float, 3> t(table->data(), {q.extent(1), 2 * rows - 1, 2 * cols - 1},
                                                 table->view().strides());
    attnkit::relative_attention_2d(q, k, v, t, attnkit::relative_grid{rows, cols}, out, ro);
  };
}

// ----------------------------------------------------------------------------------------------
// The CoAtNet network

/// A CoAtNet forward pass on `batch` random images with random parameters of a trained network's
/// scale (convolution and linear weights uniform with the variance of He initialization, biases
/// and norm shifts small, norm scales ~1, batch-norm variances 1, relative tables in [-1, 1)), so
/// activations stay O(1) through the network like a checkpoint's: the cost of a real model.
struct coatnet_case {
  attnkit::coatnet::network<float> net;
  index_t batch;
  attnkit::tensor<float, 4> images;
  attnkit::tensor<float, 2> logits;

  coatnet_case(const attnkit::coatnet::network_config& cfg, index_t batch_)
      : net(cfg),
        batch(batch_),
        images({batch_, cfg.image_rows, cfg.image_cols, cfg.in_channels}),
        logits({batch_, cfg.num_classes}) {
    fill_uniform(images.data(), images.size(), 5, -2.0f, 2.0f);
    std::uint64_t seed = 100;
    for (const auto& param : net.parameters()) {
      const std::string& name = param.first;  // not a structured binding: the lambda below captures it
      const auto& shape = param.second;
      index_t n = 1;
      for (index_t e : shape) n *= e;
      std::vector<float> v(static_cast<std::size_t>(n));
      auto ends = [&](const char* tail) {
        const std::string t(tail);
        return name.size() >= t.size() && name.compare(name.size() - t.size(), t.size(), t) == 0;
      };
      if (ends("running_var")) {
        std::fill(v.begin(), v.end(), 1.0f);
      } else if (shape.size() >= 2 && !ends("relative_position_bias_table")) {
        const float a = std::sqrt(6.0f / static_cast<float>(n / shape[0]));  // He: var 2 / fan_in
        fill_uniform(v.data(), n, ++seed, -a, a);
      } else if (ends("norm.weight") || ends("norm1.weight") || ends("norm2.weight") ||
                 ends("pre_norm.weight")) {
        fill_uniform(v.data(), n, ++seed, 0.8f, 1.2f);
      } else {
        fill_uniform(v.data(), n, ++seed, -0.1f, 0.1f);
      }
      net.set_parameter(name, v.data(), n);
    }
    run(1);  // packs the weights and sizes the buffers
  }
  void run(int threads) { net.forward(images.cview(), logits.view(), threads); }
  double flops() const { return net.flops(batch); }
};

/// ||a - b||_F / ||b||_F over two equally shaped views: the relative error of an approximation `a`
/// of `b` (NaN when any difference is NaN).
inline double relative_error(const attnkit::tensor_view<const float, 4>& a,
                             const attnkit::tensor_view<const float, 4>& b) {
  double num = 0.0, den = 0.0;
  for (index_t i0 = 0; i0 < a.extent(0); ++i0)
    for (index_t i1 = 0; i1 < a.extent(1); ++i1)
      for (index_t i2 = 0; i2 < a.extent(2); ++i2)
        for (index_t i3 = 0; i3 < a.extent(3); ++i3) {
          const double y = b(i0, i1, i2, i3), d = static_cast<double>(a(i0, i1, i2, i3)) - y;
          num += d * d;
          den += y * y;
        }
  return std::sqrt(num) / std::sqrt(den);
}

/// Returns max |a - b| over two equally shaped views (NaN when any difference is NaN).
inline double max_abs_diff(const attnkit::tensor_view<const float, 4>& a,
                           const attnkit::tensor_view<const float, 4>& b) {
  double m = 0.0;
  for (index_t i0 = 0; i0 < a.extent(0); ++i0)
    for (index_t i1 = 0; i1 < a.extent(1); ++i1)
      for (index_t i2 = 0; i2 < a.extent(2); ++i2)
        for (index_t i3 = 0; i3 < a.extent(3); ++i3) {
          const double d = std::fabs(static_cast<double>(a(i0, i1, i2, i3)) - b(i0, i1, i2, i3));
          if (std::isnan(d)) return d;
          m = std::max(m, d);
        }
  return m;
}

}  // namespace attnkit_bench
