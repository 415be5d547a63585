// attnkit tour: every attention operator of the library at one shape, side by side.
//
//   scripts/tour.sh                      # B=1, H=8, L=2048, d=64, fp32, all threads
//   scripts/tour.sh --L 4096 --d 128 --threads 1 --samples 30
//
// One row per operator: the estimated time of one whole call (minimum over short samples; calls
// longer than a few ms are timed on slices of rows or heads and scaled by FLOPs, because this
// kind of machine stalls for hundreds of ms at a time), GFLOP/s and % of the measured FMA peak,
// speed-up against exact attention with the same mask, and the error: the relative error
// ||out - exact||_F / ||exact||_F against exact attention for operators that approximate softmax
// (FAVOR+, Combiner), the max abs error against the naive reference for exact ones.
//
// Adding an operator = appending a row in
// make_rows(): attention_row() for anything with the attention signature, or a custom tour_row.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "measure.hpp"

namespace ab = attnkit_bench;
using attnkit::index_t;

namespace {

struct tour_options {
  index_t batch = 1, heads = 8, L = 2048, d = 64;
  int threads = 0;  // 0: all
  int samples = 20;
};

/// What a row's output is compared with in the error column: nothing, exact attention with the
/// same mask (relative error: the row approximates it), or the naive reference (max abs error).
enum class versus { none, exact, reference };

/// One line of the table.
struct tour_row {
  std::string op;         ///< operator, as the user calls it
  std::string shape;      ///< shape column
  bool causal = false;    ///< speed-up and errors are against exact attention with the same mask
  bool baseline = false;  ///< exact attention itself: the reference point of the speed-up column
  bool speedup = true;    ///< false: no speed-up column (not an attention operator over the tokens)
  versus check = versus::none;
  double flops = 0.0;    ///< FLOPs of one whole call (0: not counted)
  std::string timed_on;  ///< how time() samples, e.g. "whole call"
  /// Estimated seconds of one whole call from `samples` samples (minimum, scaled to the call).
  std::function<double(int samples)> time;
  /// One whole call writing [B, H, L, dv] into out (the error column); may be empty.
  std::function<void(const ab::f4_view& out)> run;
};

/// A row for any operator with the attention signature fn(q, k, v, out, options) on `p`.
/// `how` says which parts of a call may be timed alone (see ab::slicing); `cost` gives the FLOPs of
/// an operator that is not exact attention (e.g. ab::favor_flops_fn; it is then timed on whole
/// calls or slices of heads, ab::plan_head_samples); empty: exact attention's (visible pairs only).
tour_row attention_row(std::string op, ab::attention_problem& p, bool causal, versus check,
                       ab::attention_fn fn, int threads, ab::slicing how = ab::slicing::heads_and_rows,
                       double target_flops_per_thread = 0.75e9, const ab::head_flops_fn& cost = {}) {
  ab::attention_spec spec = p.spec;
  spec.causal = causal ? attnkit::causal_mode::top_left : attnkit::causal_mode::none;
  const ab::sample_plan plan =
      cost ? ab::plan_head_samples(spec, target_flops_per_thread * threads, cost, how, threads)
           : ab::plan_samples(spec, target_flops_per_thread * threads, how, 4, 0, 2 * threads);
  attnkit::attention_options opt;
  opt.threads = threads;
  opt.mask.causal = spec.causal;
  tour_row r;
  r.op = std::move(op);
  r.shape = spec.str() + " fp32" + (causal ? " causal" : "");
  r.causal = causal;
  r.check = check;
  r.flops = plan.full_flops;
  r.timed_on = plan.describe();
  r.time = [&p, plan, fn, opt](int samples) { return ab::estimate_call_seconds(p, plan, fn, opt, samples); };
  r.run = [&p, fn, opt](const ab::f4_view& out) { fn(p.q.cview(), p.k.cview(), p.v.cview(), out, opt); };
  return r;
}

/// The reference materializes an L x L fp32 matrix per head and is slow: skip it beyond this.
constexpr index_t max_reference_L = 8192;

/// The registry: one row per operator that exists today. Later issues append theirs here.
std::vector<tour_row> make_rows(ab::attention_problem& p, const tour_options& o, int threads) {
  std::vector<tour_row> rows;
  for (bool causal : {false, true}) {
    tour_row r =
        attention_row("full_attention", p, causal, versus::reference, ab::full_attention_fn(), threads);
    r.baseline = true;
    rows.push_back(std::move(r));
  }
  if (o.L <= max_reference_L) {
    // Serial (Eigen on 1 thread) and ~10x slower per FLOP: 0.125 GFLOP keeps its samples short.
    rows.push_back(attention_row("reference::attention", p, false, versus::none, ab::reference_attention_fn(),
                                 threads, ab::slicing::heads_and_rows, 0.125e9 / threads));
  }
  // FAVOR+: softmax_positive with m = 256 orthogonal features (seed 1), drawn once; timed on whole
  // calls or slices of heads (its key pass runs over all keys before any query).
  const index_t m = 256;
  const auto features = std::make_shared<const attnkit::random_features<float>>(
      attnkit::random_features<float>::orthogonal(m, o.d, 1));
  for (bool causal : {false, true})
    rows.push_back(attention_row("favor_attention m=" + std::to_string(m), p, causal, versus::exact,
                                 ab::favor_attention_fn(features), threads, ab::slicing::heads, 0.75e9,
                                 ab::favor_flops_fn(m)));
  // Combiner (max pooling), one row per plan and mask: fixed (span ceil(sqrt L)), logsparse, axial
  // (grid ab::combiner_axial_grid) in its three orders, learnable (C = ceil(sqrt L) k-means
  // centroids of the keys, 3 iterations, seed 1, computed here, outside the timing). Timed on whole
  // calls or slices of heads; GFLOP/s counts the products the plan needs (ab::combiner_flops).
  for (ab::combiner_kind kind : ab::combiner_kinds()) {
    const auto plan = ab::make_combiner_case(kind, p);
    for (bool causal : {false, true})
      rows.push_back(attention_row("combiner " + plan->describe(), p, causal, versus::exact,
                                   ab::combiner_attention_fn(plan), threads, ab::slicing::heads, 0.75e9,
                                   ab::combiner_flops_fn(plan)));
  }
  // CoAtNet's 2D relative attention on the tokens as a grid (ab::combiner_axial_grid): exact
  // attention plus a per-head table w_h[dy, dx] (uniform in [-1, 1)), pre- and post-softmax. No
  // error column (the table changes the operator); the speed-up column is its cost over exact.
  const auto [grid_rows, grid_cols] = ab::combiner_axial_grid(o.L);
  for (auto mode : {attnkit::relative_mode::pre_softmax, attnkit::relative_mode::post_softmax}) {
    const bool pre = mode == attnkit::relative_mode::pre_softmax;
    rows.push_back(attention_row(std::string("relative_2d ") + (pre ? "pre " : "post ") +
                                     std::to_string(grid_rows) + "x" + std::to_string(grid_cols),
                                 p, false, versus::none,
                                 ab::relative_attention_fn(grid_rows, grid_cols, o.heads, mode), threads,
                                 ab::slicing::heads));
  }
  // Lambda layers: lambda_attention over the same tokens laid out as a grid (ab::combiner_axial_grid,
  // e.g. 32x64 at L = 2048), `heads` queries of k = 16 sharing each lambda, v = d (the output width
  // of the attention rows): the global relative term (u = 1) and the local one (lambda convolution,
  // scope 23x23, u = 4). Bidirectional, whole calls; no error column (a lambda layer is its own
  // operator, not an estimate of softmax attention).
  for (ab::lambda_term term : {ab::lambda_term::relative, ab::lambda_term::local}) {
    const bool local = term == ab::lambda_term::local;
    auto c = std::make_shared<ab::lambda_case>(term, grid_rows, grid_cols, o.heads * o.d, local ? 4 : 1, 23,
                                               o.batch, o.heads);
    tour_row r;
    r.op = std::string("lambda ") + (local ? "local r=23 u=4" : "relative u=1");
    r.shape = "B" + std::to_string(o.batch) + " " + std::to_string(grid_rows) + "x" +
              std::to_string(grid_cols) + " h" + std::to_string(o.heads) + " k16 v" + std::to_string(o.d) +
              " fp32";
    r.flops = c->flops();
    r.timed_on = "whole call";
    r.time = [c, threads](int samples) { return ab::min_time_of([&] { c->run(threads); }, samples); };
    rows.push_back(std::move(r));
  }
  // The CoAtNet networks (coatnet::network, whole forward passes on B 224 x 224 images, random
  // parameters of a trained model's scale: ab::coatnet_case): the paper's CoAtNet-0 and timm's
  // coatnet_0_rw_224. GFLOP/s counts every convolution, linear layer and attention product.
  for (const bool rw : {false, true}) {
    auto c = std::make_shared<ab::coatnet_case>(rw ? attnkit::coatnet::network_config::coatnet_0_rw_224()
                                                   : attnkit::coatnet::network_config::coatnet_0(),
                                                o.batch);
    tour_row r;
    r.op = rw ? "coatnet_0_rw_224 forward" : "coatnet_0 forward";
    r.shape = "B" + std::to_string(o.batch) + " 224x224x3 fp32";
    r.speedup = false;
    r.flops = c->flops();
    r.timed_on = "whole call";
    r.time = [c, threads](int samples) { return ab::min_time_of([&] { c->run(threads); }, samples); };
    rows.push_back(std::move(r));
  }
  return rows;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

[[noreturn]] void usage(const char* argv0, int code) {
  std::fprintf(code ? stderr : stdout,
               "usage: %s [--L 2048] [--d 64] [--heads 8] [--batch 1] [--threads 0 (all)] [--samples 20]\n"
               "  Prints time, GFLOP/s, %% of the measured FMA peak, speed-up and max error of every\n"
               "  attention operator at one shape (fp32; exact attention also with a causal mask).\n",
               argv0);
  std::exit(code);
}

tour_options parse(int argc, char** argv) {
  tour_options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i], value;
    if (a == "--help" || a == "-h") usage(argv[0], 0);
    const auto eq = a.find('=');
    if (eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      usage(argv[0], 2);
    }
    char* end = nullptr;
    const long v = std::strtol(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0') usage(argv[0], 2);
    if (a == "--L")
      o.L = v;
    else if (a == "--d")
      o.d = v;
    else if (a == "--heads")
      o.heads = v;
    else if (a == "--batch")
      o.batch = v;
    else if (a == "--threads")
      o.threads = static_cast<int>(v);
    else if (a == "--samples")
      o.samples = static_cast<int>(v);
    else
      usage(argv[0], 2);
  }
  if (o.L < 1 || o.d < 1 || o.heads < 1 || o.batch < 1 || o.threads < 0 || o.samples < 1) usage(argv[0], 2);
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const tour_options o = parse(argc, argv);
  const int threads = ab::resolve_threads(o.threads);
  const double t_start = ab::now_seconds();

  std::printf("attnkit %d.%d.%d tour   SIMD path: %s   threads: %d (of %d)\n", ATTNKIT_VERSION_MAJOR,
              ATTNKIT_VERSION_MINOR, ATTNKIT_VERSION_PATCH, attnkit::simd::native::name, threads,
              ab::max_threads());
  const ab::peak_result peak1 = ab::measure_peak(1);
  std::printf("measured fp32 FMA peak (%s): %.1f GFLOP/s on 1 thread", ab::peak_isa, peak1.gflops);
  if (threads > 1)
    std::printf(", %.1f GFLOP/s on %d threads", ab::measure_peak(threads, 0.5, threads * peak1.gflops).gflops,
                threads);
  std::printf("\n%%peak below = GFLOP/s / (%d x the 1-thread peak)", threads);
  const double load = ab::load_average();
  if (load > 0.5 * ab::online_cpus())
    std::printf("; load average %.1f on %d CPUs: other processes compete, expect pessimistic times", load,
                ab::online_cpus());
  std::printf("\n\n");
  std::fflush(stdout);

  ab::attention_problem p(ab::attention_spec::self(o.L, o.d, o.heads, attnkit::causal_mode::none, o.batch));
  std::vector<tour_row> rows = make_rows(p, o, threads);

  // Timings (min over samples), then outputs and errors.
  std::vector<double> seconds;
  for (auto& r : rows) seconds.push_back(r.time(o.samples));
  std::map<bool, double> exact_time;
  for (std::size_t i = 0; i < rows.size(); ++i)
    if (rows[i].baseline) exact_time[rows[i].causal] = seconds[i];

  const std::array<index_t, 4> out_extents{p.spec.B, p.spec.H, p.spec.Lq, p.spec.dv};
  std::map<std::pair<bool, versus>, attnkit::tensor<float, 4>> expected;  // (causal, kind) -> output
  auto expected_output = [&](bool causal, versus kind) -> const attnkit::tensor<float, 4>* {
    const auto key = std::make_pair(causal, kind);
    auto it = expected.find(key);
    if (it != expected.end()) return &it->second;
    attnkit::tensor<float, 4> out(out_extents);
    if (kind == versus::reference) {
      if (o.L > max_reference_L) return nullptr;
      attnkit::attention_options opt;
      opt.mask.causal = causal ? attnkit::causal_mode::top_left : attnkit::causal_mode::none;
      ab::reference_attention_fn()(p.q.cview(), p.k.cview(), p.v.cview(), out.view(), opt);
    } else {
      const tour_row* base = nullptr;
      for (const auto& r : rows)
        if (r.baseline && r.causal == causal) base = &r;
      if (!base || !base->run) return nullptr;
      base->run(out.view());
    }
    return &expected.emplace(key, std::move(out)).first->second;
  };

  std::printf("%-28s %-30s %10s %9s %6s %9s %10s  %-10s %s\n", "operator", "shape", "time ms", "GFLOP/s",
              "%peak", "speed-up", "error", "vs", "timed on");
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const tour_row& r = rows[i];
    const double gf = r.flops > 0 ? r.flops / seconds[i] * 1e-9 : 0.0;
    const std::string gfs = r.flops > 0 ? fmt("%.1f", gf) : "-";
    const std::string pct =
        r.flops > 0 && peak1.gflops > 0 ? fmt("%.1f", gf / (peak1.gflops * threads) * 100) : "-";
    const auto base = exact_time.find(r.causal);
    const std::string speed =
        r.speedup && base != exact_time.end() ? fmt("%.2fx", base->second / seconds[i]) : "-";
    std::string err = "-", vs = "-";
    if (r.check != versus::none && r.run) {
      if (const auto* want = expected_output(r.causal, r.check)) {
        attnkit::tensor<float, 4> got(out_extents);
        r.run(got.view());
        if (r.check == versus::reference) {
          err = fmt("%.2e", ab::max_abs_diff(got.cview(), want->cview()));
          vs = "reference";
        } else {
          err = fmt("%.2e", ab::relative_error(got.cview(), want->cview()));
          vs = "exact rel";
        }
      } else {
        vs = "(skipped)";
      }
    }
    std::printf("%-28s %-30s %10.3f %9s %6s %9s %10s  %-10s %s\n", r.op.c_str(), r.shape.c_str(),
                seconds[i] * 1e3, gfs.c_str(), pct.c_str(), speed.c_str(), err.c_str(), vs.c_str(),
                r.timed_on.c_str());
    std::fflush(stdout);
  }

  std::printf("\n");
  if (exact_time.count(false) && exact_time.count(true))
    std::printf(
        "exact attention, causal / non-causal time: %.2f (ideal ~0.5: blocks above the diagonal are "
        "skipped)\n",
        exact_time[true] / exact_time[false]);
  if (o.L > max_reference_L)
    std::printf("reference::attention skipped: L > %ld would materialize %.0f MiB per head\n",
                static_cast<long>(max_reference_L),
                static_cast<double>(o.L) * static_cast<double>(o.L) * 4 / (1 << 20));
  std::printf(
      "time: min over %d samples of a few ms each, scaled to one whole call; speed-up: exact attention\n"
      "with the same mask / this row; GFLOP/s counts 4*d per visible (query, key) pair (FAVOR+: its\n"
      "feature and state products, causal chunks whole; Combiner: 4*d per (query, direct key or\n"
      "summary) pair plus its summaries and routing, see bench/measure.hpp combiner_flops; lambda:\n"
      "2*k*u*v per (query, window position) pair plus its content lambda and Y = Q lambda; coatnet:\n"
      "2 per multiply-add of every convolution, linear layer and attention product). error:\n"
      "max |out - reference| (vs reference), or ||out - exact||_F / ||exact||_F (vs exact rel: exact\n"
      "attention with the same mask; Combiner's distribution differs from softmax by design).\n",
      o.samples);
  std::printf("tour finished in %.1f s\n", ab::now_seconds() - t_start);
  return 0;
}
