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
// Training: train_forward (full_attention with lse), train_backward (full_attention_backward
// alone) and train_step (both), d in {64, 128}, L in {512 .. 16384}, H = 8, and grouped-query
// heads (H = 32 over Hkv = 8, d = 128, L in {1024, 2048, 4096}, beside full_attention on them),
// causal and not, threads 1 and all; sampled like the forward (rows and heads), GFLOP/s counting
// 4, 10 and 14 Lq Lk d per head.
//
//   bench_attention --benchmark_filter='^(peak|(full_attention|train_.*)/d:64/L:4096/)'
//
// FAVOR+ (favor_attention, softmax_positive, m = 256 orthogonal features, seed 1): d = 64,
// L in {512 .. 65536}, causal and not, threads 1 and all; timed on whole calls or slices of heads
// (its key pass runs over all keys, so no block of query rows is representative), GFLOP/s counting
// its feature and state products only (ab::favor_flops). favor_decode: favor_decoder::step after a
// 4096-token prefill, time per token (one step: every head), beside decode at Lk = 4096, d = 64.
//
//   bench_attention --benchmark_filter='^(peak|favor.*L:(2048|16384)/|full_attention/d:64/L:(2048|16384)/)'
//
// Combiner (combiner_attention, max pooling): combiner/<plan>/d:64/L:<L>/causal:<0|1>/threads:<t>
// for the plans fixed (span ceil(sqrt L)), logsparse, axial_row, axial_col, axial_mixture (grid
// ab::combiner_axial_grid: 32x32 at 1024, 32x64 at 2048, ..., 256x256 at 65536) and learnable
// (C = ceil(sqrt L) centroids: combiner::kmeans of the keys, 3 iterations, seed 1, computed once
// before the first timing), L in {1024, 2048, 4096, 16384, 65536}, B = 1, H = 8, causal and not,
// threads 1 and all, beside full_attention/d:64 (L <= 16384) in the same binary. Timed on whole calls
// or slices of heads; GFLOP/s counts the products the plan needs (ab::combiner_flops). Each
// (plan, causal, threads) is one Google Benchmark family over L with a complexity fit
// (N^1.5 for fixed, axial and learnable; N lgN for logsparse), printed after the summary.
//
//   bench_attention --benchmark_filter='^(peak|(combiner|full_attention/d:64)/.*L:(1024|16384)/)'
//   bench_attention --benchmark_filter='^combiner/logsparse/' --threads=1
//
// Lambda (lambda_attention, h = 4, k = 16, v = d / 4): lambda/local/d:<d>/u:4/r:23/L:<pixels>/threads:<t>
// and lambda/relative/d:<d>/u:1/L:<pixels>/threads:<t> on the ResNet stages 56x56 d=256, 28x28 d=512,
// 14x14 d=1024, beside full_attention/d:<d/4>/L:<pixels>/H:4 (exact 4-head attention, the same output
// width over the same tokens); whole calls. pos_pct_peak: the position-lambda products' FLOPs over the
// whole call's time, as a percentage of the peak. lambda/local/d:256 runs 56x56 .. 160x160 (maps at least
// twice the scope: fewer clipped border windows) and fits time against the pixel count (N).
//
//   bench_attention --benchmark_filter='^(peak|lambda/|full_attention/d:(64|128|256)/L:(3136|784|196)/H:4/)'
//
// CoAtNet (relative_attention_2d): relative_pre|relative_post/d:32/grid:<s>x<s>/L:<s^2>/H:<heads>/...
// at 14x14 (12 heads) and 7x7 (24 heads), batch 32, beside full_attention/d:32/L:<s^2>/H:<heads> of
// the same shapes (batch 32); whole calls or slices of heads.
//
//   bench_attention --benchmark_filter='^(peak|(relative_pre|relative_post|full_attention)/d:32/)'
//
// The CoAtNet network: coatnet/<preset>/image:224/batch:<b>/threads:<t>, a whole forward pass
// (coatnet::network<float>::forward, random parameters of a trained model's scale: ab::coatnet_case)
// of the presets coatnet_0 (the paper's CoAtNet-0) and coatnet_0_rw_224 (timm's), batch 1 and 8,
// threads 1 and all. GFLOP/s counts every convolution, linear layer and attention product
// (network::flops: 2 per multiply-add), pct_peak against the measured FMA peak.
//
//   bench_attention --benchmark_filter='^(peak|coatnet/)'

#include <cmath>
#include <map>
#include <memory>
#include <set>
#include <tuple>

#include "common.hpp"

namespace ab = attnkit_bench;
using attnkit::causal_mode;
using attnkit::index_t;

namespace {

/// The Combiner problems [1, 8, L, 64] (the same inputs as full_attention's at equal L), their
/// plans resolved (k-means for learnable) and sample plans, built on first use outside the timing
/// and kept for the whole run: the families of every (plan, causal, threads) visit the same L.
struct combiner_setup {
  std::shared_ptr<ab::attention_problem> problem;
  std::shared_ptr<const ab::combiner_case> plan;
  ab::attention_fn fn;
  ab::sample_plan samples;
};

const combiner_setup& combiner_entry(ab::combiner_kind kind, index_t L, bool causal, int threads) {
  static std::map<index_t, std::shared_ptr<ab::attention_problem>> problems;
  static std::map<std::pair<ab::combiner_kind, index_t>, std::shared_ptr<const ab::combiner_case>> cases;
  static std::map<std::tuple<ab::combiner_kind, index_t, bool, int>, combiner_setup> setups;
  const auto key = std::make_tuple(kind, L, causal, threads);
  auto it = setups.find(key);
  if (it != setups.end()) return it->second;
  auto& prob = problems[L];
  if (!prob) prob = std::make_shared<ab::attention_problem>(ab::attention_spec::self(L, 64, 8));
  auto& plan = cases[{kind, L}];
  if (!plan) plan = ab::make_combiner_case(kind, *prob);
  combiner_setup e;
  e.problem = prob;
  e.plan = plan;
  e.fn = ab::combiner_attention_fn(plan);
  const auto spec = ab::attention_spec::self(L, 64, 8, causal ? causal_mode::top_left : causal_mode::none);
  // Slices of heads (a multiple of the thread count); sample FLOPs as for the other operators.
  e.samples = ab::plan_head_samples(spec, ab::config().sample_gflop * 1e9 * threads,
                                    ab::combiner_flops_fn(plan), ab::slicing::heads, threads);
  return setups.emplace(key, std::move(e)).first->second;
}

/// Complexity of the plans' cost: O(L sqrt(L) d) for fixed, axial and learnable (spans and clusters
/// of ~sqrt(L)), O(L log L d) for logsparse.
double n_sqrt_n(benchmark::IterationCount n) {
  const double x = static_cast<double>(n);
  return x * std::sqrt(x);
}

/// Registers the family combiner/<plan>/d:64 over `lengths` for one mask and thread count: its
/// instances are named combiner/<plan>/d:64/L:<L>/causal:<0|1>/threads:<t> (argument names), and
/// the family fits time against L (SetComplexityN(L)).
void register_combiner_family(ab::combiner_kind kind, bool causal, int threads,
                              const std::vector<index_t>& lengths) {
  const std::string family = std::string("combiner/") + ab::combiner_kind_name(kind) + "/d:64";
  auto* b = benchmark::RegisterBenchmark(family.c_str(), [kind, causal, threads](benchmark::State& st) {
    const index_t L = st.range(0);
    st.SetComplexityN(L);
    try {
      const combiner_setup& e = combiner_entry(kind, L, causal, threads);
      attnkit::attention_options opt;
      opt.threads = threads;
      for (auto _ : st)
        st.SetIterationTime(e.samples.scale_to_whole(ab::run_sample(*e.problem, e.samples, e.fn, opt)));
      ab::set_flop_counters(st, e.samples.full_flops, threads);
      st.SetLabel(e.plan->describe() + ", " + e.samples.describe());
    } catch (const std::exception& ex) {
      st.SkipWithError(ex.what());
    }
  });
  b->ArgNames({"L", "causal", "threads"});
  for (index_t L : lengths) b->Args({L, causal ? 1 : 0, threads});
  if (kind == ab::combiner_kind::logsparse)
    b->Complexity(benchmark::oNLogN);
  else
    b->Complexity(n_sqrt_n);
  ab::with_defaults(b->UseManualTime());
}

/// The lambda problem of (term, pixels, d, u, r), built on first use outside the timing and kept.
ab::lambda_case& lambda_entry(ab::lambda_term term, index_t side, index_t d, index_t u, index_t r) {
  static std::map<std::tuple<ab::lambda_term, index_t, index_t, index_t, index_t>,
                  std::unique_ptr<ab::lambda_case>>
      cases;
  auto& c = cases[std::make_tuple(term, side, d, u, r)];
  if (!c) c = std::make_unique<ab::lambda_case>(term, side, d, u, r);
  return *c;
}

/// Registers the family lambda/<term>/d:<d>/u:<u>[/r:<r>] over square maps of side^2 = L pixels for
/// one thread count: whole calls of lambda_attention. Counters: GFLOP/s and pct_peak of every
/// product, pos_pct_peak of the position-lambda products alone (their FLOPs over the whole time).
/// With `fit`, the family fits time against L (linear for local terms).
void register_lambda_family(ab::lambda_term term, index_t d, index_t u, index_t r, int threads,
                            const std::vector<index_t>& sides, bool fit) {
  std::string family = std::string("lambda/") + ab::lambda_term_name(term) + "/d:" + std::to_string(d) +
                       "/u:" + std::to_string(u);
  if (term == ab::lambda_term::local) family += "/r:" + std::to_string(r);
  auto* b = benchmark::RegisterBenchmark(family.c_str(), [=](benchmark::State& st) {
    const index_t L = st.range(0),
                  side = static_cast<index_t>(std::lround(std::sqrt(static_cast<double>(L))));
    st.SetComplexityN(L);
    try {
      ab::lambda_case& c = lambda_entry(term, side, d, u, r);
      for (auto _ : st) {
        const double t0 = ab::now_seconds();
        c.run(threads);
        st.SetIterationTime(ab::now_seconds() - t0);
      }
      ab::set_flop_counters(st, c.flops(), threads);
      st.counters["pos_pct_peak"] =
          ab::rate(c.position_flops() * 100.0 / (ab::peak_gflops_single() * 1e9 * threads));
      st.SetLabel(c.describe());
    } catch (const std::exception& ex) {
      st.SkipWithError(ex.what());
    }
  });
  b->ArgNames({"L", "threads"});
  for (index_t side : sides) b->Args({side * side, threads});
  if (fit) b->Complexity(benchmark::oN);
  ab::with_defaults(b->UseManualTime());
}

/// ab::summary_reporter plus the complexity fits of the families (Google Benchmark names a fit
/// after the family, "combiner/<plan>/d:64", whatever the mask and threads, and summary_reporter
/// shows min/max only): after the summary, one line per family that ran two lengths or more, named
/// after its instances without /L:<L>. Time = coefficient x f(L), RMS = relative RMS of the residuals
/// over every repetition (the fit takes the mean of the repetitions, not the minimum).
class fit_reporter : public ab::summary_reporter {
 public:
  using ab::summary_reporter::summary_reporter;

  void ReportRuns(const std::vector<Run>& runs) override {
    ab::summary_reporter::ReportRuns(runs);
    for (const auto& r : runs) {
      if (!r.report_big_o && !r.report_rms) {
        last_ = r.run_name.str();
        const auto l = last_.find("/L:");
        if (l != std::string::npos) {
          const auto end = last_.find('/', l + 3);
          lengths_[strip(last_)].insert(last_.substr(l + 3, end == std::string::npos ? end : end - l - 3));
        }
        continue;
      }
      const std::string name = strip(last_);
      if (lengths_[name].size() < 2) continue;
      if (fits_.empty() || fits_.back().name != name) {
        fits_.emplace_back();
        fits_.back().name = name;
      }
      if (r.report_big_o) {
        fits_.back().coef = r.real_accumulated_time;  // seconds per unit of f(N)
        fits_.back().f = r.complexity == benchmark::oNLogN ? "N lgN"
                         : r.complexity == benchmark::oN   ? "N"
                                                           : "N^1.5";
      } else {
        fits_.back().rms = r.GetAdjustedRealTime();  // relative
      }
    }
  }

  void Finalize() override {
    ab::summary_reporter::Finalize();
    if (fits_.empty()) return;
    std::ostream& os = GetOutputStream();
    os << "\nComplexity fits (Google Benchmark least squares over every repetition of every L):\n";
    for (const auto& f : fits_) {
      char line[256];
      std::snprintf(line, sizeof line, "%-46s time = %10.4g ns x %-6s RMS %5.1f %%\n", f.name.c_str(),
                    f.coef * 1e9, f.f.c_str(), f.rms * 100);
      os << line;
    }
    os.flush();
  }

 private:
  struct fit {
    std::string name;
    double coef = 0.0, rms = 0.0;
    std::string f;
  };
  std::string last_;
  std::map<std::string, std::set<std::string>> lengths_;
  std::vector<fit> fits_;

  /// "combiner/fixed/d:64/L:1024/causal:0/threads:1/manual_time" -> "combiner/fixed/d:64/causal:0/threads:1".
  static std::string strip(std::string n) {
    const auto l = n.find("/L:");
    if (l != std::string::npos) {
      const auto e = n.find('/', l + 3);
      n.erase(l, e == std::string::npos ? e : e - l);
    }
    const auto m = n.find("/manual_time");
    if (m != std::string::npos) n.erase(m);
    return n;
  }
};

}  // namespace

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

  // Training: the forward with its log-sum-exp, the backward alone and both, beside the forward
  // above (the same shapes and threads) and on grouped-query heads (32 query heads over 8 kv
  // heads). GFLOP/s count 4, 10 and 14 Lq Lk d per head (visible pairs only when causal).
  auto register_training = [](const ab::attention_spec& spec, int t) {
    const std::pair<const char*, ab::training_step> steps[] = {
        {"train_forward", ab::training_step::forward_lse},
        {"train_backward", ab::training_step::backward},
        {"train_step", ab::training_step::both}};
    for (auto [family, step] : steps) {
      ab::sampling smp;
      smp.flop_factor = ab::training_flop_factor(step);
      // The backward's samples keep every head (its key blocks split in parts when there are few
      // kv heads: a sample of fewer heads would run another schedule) and hundreds of rows (every
      // key block's dK / dV tile is written once per sample, as once per call).
      if (step != ab::training_step::forward_lse) smp.scale = 32;
      ab::register_attention(ab::attention_name(family, spec, t), spec, t, ab::training_fn(step), smp);
    }
  };
  for (index_t d : dims)
    for (index_t L : {index_t(512), index_t(1024), index_t(2048), index_t(4096), index_t(16384)})
      for (causal_mode c : {causal_mode::none, causal_mode::top_left})
        for (int t : ab::config().threads) register_training(ab::attention_spec::self(L, d, 8, c), t);
  for (index_t L : {index_t(1024), index_t(2048), index_t(4096)})
    for (causal_mode c : {causal_mode::none, causal_mode::top_left})
      for (int t : ab::config().threads) {
        auto spec = ab::attention_spec::self(L, 128, 32, c);
        spec.Hkv = 8;
        ab::register_attention(ab::attention_name("full_attention", spec, t), spec, t,
                               ab::full_attention_fn());
        register_training(spec, t);
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

  // Combiner beside exact attention: full_attention/d:64 above covers L <= 16384 (causal and not,
  // the same thread counts); Combiner goes on to 65536, where exact attention would take minutes.
  const std::vector<index_t> combiner_lengths{1024, 2048, 4096, 16384, 65536};
  for (ab::combiner_kind kind : ab::combiner_kinds())
    for (bool causal : {false, true})
      for (int t : ab::config().threads) register_combiner_family(kind, causal, t, combiner_lengths);

  // Lambda layers (lambda_attention on projected inputs; h = 4, k = 16, v = d / 4) on the stages
  // of a ResNet (56x56 d=256, 28x28 d=512, 14x14 d=1024): local r = 23 with u = 4 (LambdaResNet's
  // lambda convolution) and the global relative term with u = 1; beside the exact 4-head attention
  // with the same output width over the same tokens (head dimension d / 4). The local family over
  // 56x56 .. 160x160 at d = 256 fits time against the pixel count (linear).
  const std::pair<index_t, index_t> stages[] = {{56, 256}, {28, 512}, {14, 1024}};
  for (int t : ab::config().threads) {
    for (auto [side, d] : stages) {
      if (d != 256) register_lambda_family(ab::lambda_term::local, d, 4, 23, t, {side}, false);
      register_lambda_family(ab::lambda_term::relative, d, 1, 0, t, {side}, false);
      const auto spec = ab::attention_spec::self(side * side, d / 4, 4);
      ab::register_attention(ab::attention_name("full_attention", spec, t), spec, t, ab::full_attention_fn());
    }
    register_lambda_family(ab::lambda_term::local, 256, 4, 23, t, {56, 80, 112, 160}, true);
  }

  // CoAtNet's relative attention beside exact attention on the shapes of CoAtNet-0's attention
  // stages at 224 x 224: 14 x 14 with C = 384 (12 heads) and 7 x 7 with C = 768 (24 heads), head
  // dimension 32, batch 32; pre- and post-softmax. GFLOP/s counts exact attention's products.
  for (int t : ab::config().threads)
    for (auto [side, heads] : {std::pair<index_t, index_t>{14, 12}, {7, 24}}) {
      const auto spec = ab::attention_spec::self(side * side, 32, heads, causal_mode::none, 32);
      ab::sampling smp;
      smp.how = ab::slicing::heads;
      ab::register_attention(ab::attention_name("full_attention", spec, t), spec, t, ab::full_attention_fn(),
                             smp);
      const std::string grid = "/grid:" + std::to_string(side) + "x" + std::to_string(side);
      for (auto mode : {attnkit::relative_mode::pre_softmax, attnkit::relative_mode::post_softmax})
        ab::register_attention(
            ab::attention_name(mode == attnkit::relative_mode::pre_softmax ? "relative_pre" : "relative_post",
                               spec, t, grid),
            spec, t, ab::relative_attention_fn(side, side, heads, mode), smp);
    }

  // Relative attention's backward and training step beside exact attention's backward on the same
  // shapes and samples (slices of heads): CoAtNet-0's attention stages (batch 32, d 32) and
  // 32 x 32 and 64 x 64 grids (d 64, 8 heads, batch 1). GFLOP/s count exact attention's 10 and
  // 14 Lq Lk d per head.
  struct grid_case {
    index_t side, heads, d, batch;
  };
  for (int t : ab::config().threads)
    for (const grid_case g : {grid_case{14, 12, 32, 32}, {7, 24, 32, 32}, {32, 8, 64, 1}, {64, 8, 64, 1}}) {
      const auto spec = ab::attention_spec::self(g.side * g.side, g.d, g.heads, causal_mode::none, g.batch);
      const std::string grid = "/grid:" + std::to_string(g.side) + "x" + std::to_string(g.side);
      auto smp_for = [](ab::training_step step) {
        ab::sampling smp;
        smp.how = ab::slicing::heads;
        smp.flop_factor = ab::training_flop_factor(step);
        smp.scale = 32;
        return smp;
      };
      ab::register_attention(ab::attention_name("train_backward", spec, t, grid), spec, t,
                             ab::training_fn(ab::training_step::backward),
                             smp_for(ab::training_step::backward));
      for (auto mode : {attnkit::relative_mode::pre_softmax, attnkit::relative_mode::post_softmax})
        for (auto step : {ab::training_step::backward, ab::training_step::both}) {
          const std::string family =
              std::string(mode == attnkit::relative_mode::pre_softmax ? "relative_pre" : "relative_post") +
              (step == ab::training_step::backward ? "_backward" : "_step");
          ab::register_attention(
              ab::attention_name(family, spec, t, grid), spec, t,
              ab::training_fn(step, ab::relative_training_ops(g.side, g.side, g.heads, mode)), smp_for(step));
        }
    }

  // The CoAtNet network, whole forward passes (one case per preset and batch, built once).
  for (const bool rw : {false, true})
    for (index_t batch : {1, 8})
      for (int t : ab::config().threads) {
        const std::string name = std::string("coatnet/") + (rw ? "coatnet_0_rw_224" : "coatnet_0") +
                                 "/image:224/batch:" + std::to_string(batch) +
                                 "/threads:" + std::to_string(t);
        auto* b = benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) {
          static std::map<std::pair<bool, index_t>, std::unique_ptr<ab::coatnet_case>> cases;
          try {
            auto& c = cases[{rw, batch}];
            if (!c)
              c = std::make_unique<ab::coatnet_case>(rw ? attnkit::coatnet::network_config::coatnet_0_rw_224()
                                                        : attnkit::coatnet::network_config::coatnet_0(),
                                                     batch);
            for (auto _ : st) {
              const double t0 = ab::now_seconds();
              c->run(t);
              st.SetIterationTime(ab::now_seconds() - t0);
            }
            ab::set_flop_counters(st, c->flops(), t);
          } catch (const std::exception& ex) {
            st.SkipWithError(ex.what());
          }
        });
        ab::with_defaults(b->UseManualTime());
      }

  return ab::run_benchmarks<fit_reporter>();
}
