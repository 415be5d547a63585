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
// FAVOR+ (favor_attention, softmax_positive, m = 256 orthogonal features, seed 1): d = 64,
// L in {512 .. 65536}, causal and not, threads 1 and all; timed on whole calls or slices of heads
// (its key pass runs over all keys, so no block of query rows is representative), GFLOP/s counting
// its feature and state products only (ab::favor_flops). favor_decode: favor_decoder::step after a
// 4096-token prefill, time per token (one step: every head), beside decode at Lk = 4096, d = 64.
//
//   bench_attention --benchmark_filter='^(peak|favor.*L:(2048|16384)/|full_attention/d:64/L:(2048|16384)/)'
#include <memory>

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

  // Decode: one query per head against an Lk-token KV cache; memory-bound, reported in us and as
  // bytes of K and V streamed per second. Timed on whole calls (a sample of heads would be re-read
  // from the cache hierarchy instead of memory).
  auto register_decode = [](index_t lk, index_t d) {
    for (int t : ab::config().threads) {
      ab::attention_spec spec = ab::attention_spec::self(lk, d, 8);
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
  };
  register_decode(32768, 128);  // 33.5 MB of K and V per head, 268 MB in all

  // FAVOR+ beside exact attention: the exact entries above cover d = 64 up to L = 16384 (where
  // FAVOR+ is measured too); FAVOR+ goes on to 65536, where exact attention would take minutes.
  const index_t m = 256;
  const std::string m_param = "/m:" + std::to_string(m);
  const auto features = std::make_shared<const attnkit::random_features<float>>(
      attnkit::random_features<float>::orthogonal(m, 64, 1));
  for (index_t L : {512, 1024, 2048, 4096, 8192, 16384, 32768, 65536})
    for (causal_mode c : {causal_mode::none, causal_mode::top_left})
      for (int t : ab::config().threads) {
        const auto spec = ab::attention_spec::self(L, 64, 8, c);
        ab::sampling smp;
        smp.how = ab::slicing::heads;  // one head of L = 65536: ~9 GFLOP, the smallest sample there
        smp.cost = ab::favor_flops_fn(m);
        ab::attention_counters which;
        which.dense = false;
        ab::register_attention(ab::attention_name("favor", spec, t, m_param), spec, t,
                               ab::favor_attention_fn(features), smp, which);
      }

  // Exact decode on the shape of favor_decode (one query against a 4096-token KV cache, d = 64).
  register_decode(4096, 64);

  // favor_decode: favor_decoder<float>::step (one token of every head: q [1, 8, 1, 64]) after a
  // 4096-token prefill (outside the timing; once per thread count, the decoder is kept). Every
  // iteration appends the same token again: the state grows, its cost does not. Time per token.
  for (int t : ab::config().threads) {
    ab::attention_spec spec = ab::attention_spec::self(4096, 64, 8, causal_mode::top_left);
    spec.Lq = 1;
    auto* b = benchmark::RegisterBenchmark(
        ab::attention_name("favor_decode", spec, t, m_param).c_str(), [=](benchmark::State& st) {
          using decoder = attnkit::favor_decoder<float>;
          static std::map<int, std::unique_ptr<decoder>> prefilled;
          ab::attention_problem token(ab::attention_spec::self(1, 64, 8), 7);
          try {
            auto& dec = prefilled[t];
            if (!dec) {
              attnkit::favor_options o;
              o.threads = t;
              dec = std::make_unique<decoder>(*features, spec.B, spec.H, spec.Hkv, spec.dv, o);
              ab::attention_problem prompt(ab::attention_spec::self(spec.Lk, 64, 8));
              dec->prefill(prompt.q.cview(), prompt.k.cview(), prompt.v.cview(), prompt.out.view());
            }
            for (auto _ : st) dec->step(token.q.cview(), token.k.cview(), token.v.cview(), token.out.view());
          } catch (const std::exception& e) {
            st.SkipWithError(e.what());
            return;
          }
          // One step: the products of favor_flops for one token (Lq = Lk = 1, no chunk).
          ab::set_flop_counters(st, ab::favor_flops(ab::attention_spec::self(1, 64, 8), m, spec.H), t);
          st.SetLabel("prefill " + std::to_string(spec.Lk) + ", 1 token x " + std::to_string(spec.H) +
                      " heads per step");
        });
    ab::with_defaults(b->UseRealTime(), benchmark::kMicrosecond);
  }

  return ab::run_benchmarks();
}
