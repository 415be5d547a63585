// attnkit benchmarks: exact attention (full_attention), the naive materializing reference and the
// decode path (one query over a long KV cache), beside the measured FMA peak in the same binary.
//
//   bench_attention                                  # everything, ~20 repetitions each
//   bench_attention --benchmark_filter='full_attention/d:64/L:4096/'   # one shape
//   bench_attention --threads=1 --benchmark_repetitions=10
//
// Shapes: B=1, H=8 fp32. full_attention: d in {64, 128}, L in {256 .. 16384}, causal (top_left) and
// not, threads 1 and all. reference::attention: L <= 4096 (it materializes L x L scores per head),
// non-causal (its cost does not depend on the mask), 1 thread (it is serial). decode: Lq = 1,
// Lk = 32768, d = 128, whole calls. Long calls are timed on samples of their rows and heads (see
// common.hpp).
#include "common.hpp"

namespace ab = attnkit_bench;
using attnkit::causal_mode;
using attnkit::index_t;

int main(int argc, char** argv) {
  ab::initialize(argc, argv);
  ab::register_peak();

  const index_t lengths[] = {256, 512, 1024, 2048, 4096, 8192, 16384};
  const index_t dims[] = {64, 128};

  for (index_t d : dims)
    for (index_t L : lengths)
      for (causal_mode c : {causal_mode::none, causal_mode::top_left})
        for (int t : ab::config().threads) {
          const auto spec = ab::attention_spec::self(L, d, 8, c);
          ab::register_attention(ab::attention_name("full_attention", spec, t), spec, t,
                                 ab::full_attention_fn());
        }

  // The reference reaches a few tens of GFLOP/s: 1/6 of the sample FLOPs keeps a repetition short.
  for (index_t d : dims)
    for (index_t L : lengths) {
      if (L > 4096) continue;
      const auto spec = ab::attention_spec::self(L, d, 8);
      ab::sampling smp;
      smp.scale = 1.0 / 6;
      ab::register_attention(ab::attention_name("reference", spec, 1), spec, 1, ab::reference_attention_fn(),
                             smp);
    }

  // Decode: one query per head against a 32768-token KV cache (33.5 MB of K and V per head, 268 MB
  // in all); memory-bound, reported in us and as bytes of K and V streamed per second. Timed on
  // whole calls (a sample of heads would be re-read from the cache hierarchy instead of memory).
  for (int t : ab::config().threads) {
    ab::attention_spec spec = ab::attention_spec::self(32768, 128, 8);
    spec.Lq = 1;
    ab::sampling smp;
    smp.how = ab::slicing::none;
    ab::attention_counters which;
    which.dense = false;
    which.kv_bytes = true;
    ab::register_attention(ab::attention_name("decode", spec, t), spec, t, ab::full_attention_fn(), smp,
                           which)
        ->Unit(benchmark::kMicrosecond);
  }

  return ab::run_benchmarks();
}
