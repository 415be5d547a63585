// attnkit benchmarks: Google Benchmark glue shared by every operator family.
//
//   int main(int argc, char** argv) {
//     attnkit_bench::initialize(argc, argv);   // own flags, defaults, start-up peak measurement
//     attnkit_bench::register_peak();           // "peak/threads:N", the FMA baseline
//     attnkit_bench::register_attention("full_attention/...", spec, threads,
//                                       attnkit_bench::full_attention_fn());
//     return attnkit_bench::run_benchmarks();  // console table + min/max summary
//   }
//
// Statistics: every benchmark runs --benchmark_repetitions (default 20) short repetitions and
// reports the aggregates "min" (read the TIME there) and "max" (read the RATE counters there:
// GFLOP/s, pct_peak, ...). The closing summary table puts both on one line per benchmark.
// Attention benchmarks use manual time: a repetition times a representative sample of the call
// (plan_samples) and reports the time scaled to the whole call, so the time column reads as the
// estimated time of one whole call and GFLOP/s = FLOPs of the call / that time.
// Own flags: --threads=1,2 (thread counts; 0 = all), --peak_budget=SECONDS (start-up peak),
// --sample_gflop=0.75 (GFLOP per thread of one timing sample: smaller = shorter samples).
#pragma once

#include <unistd.h>

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "measure.hpp"

namespace attnkit_bench {

/// Run-wide settings: thread counts to benchmark and the peak measured at start-up.
struct bench_config {
  std::vector<int> threads = default_thread_counts();
  double peak_budget = 0.5;
  double sample_gflop = 0.75;  ///< FLOPs of one timing sample per thread, in GFLOP (a few ms)
  peak_result peak1;           ///< single-thread FMA peak, measured by initialize()
  std::string format = "console";
};
inline bench_config& config() {
  static bench_config c;
  return c;
}

/// The single-thread fp32 FMA peak in GFLOP/s measured by initialize() (pct_peak divides by it).
inline double peak_gflops_single() { return config().peak1.gflops; }

inline double stat_min(const std::vector<double>& v) {
  return v.empty() ? 0.0 : *std::min_element(v.begin(), v.end());
}
inline double stat_max(const std::vector<double>& v) {
  return v.empty() ? 0.0 : *std::max_element(v.begin(), v.end());
}

/// Adds the "min" and "max" statistics, shows only aggregates on the console, sets the time unit.
inline benchmark::internal::Benchmark* with_defaults(benchmark::internal::Benchmark* b,
                                                     benchmark::TimeUnit unit = benchmark::kMillisecond) {
  return b->ComputeStatistics("min", stat_min)
      ->ComputeStatistics("max", stat_max)
      ->DisplayAggregatesOnly(true)
      ->Unit(unit);
}

/// A rate counter: `per_iteration` divided by the time of one iteration.
inline benchmark::Counter rate(double per_iteration) {
  return benchmark::Counter(per_iteration, benchmark::Counter::kIsIterationInvariantRate);
}

/// Sets "GFLOP/s" and "pct_peak" (of threads x the single-thread peak) for `flops` per iteration.
inline void set_flop_counters(benchmark::State& st, double flops, int threads) {
  st.counters["GFLOP/s"] = rate(flops * 1e-9);
  const double peak = peak_gflops_single() * 1e9 * std::max(1, threads);
  if (peak > 0) st.counters["pct_peak"] = rate(flops * 100.0 / peak);
}

/// Consumes the own flags, adds default repetitions / min_time unless given, initializes Google
/// Benchmark and measures the single-thread FMA peak (printed, and used by pct_peak).
inline void initialize(int& argc, char** argv) {
  static std::vector<std::string> args;
  static std::vector<char*> ptrs;
  bool has_reps = false, has_min_time = false;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* flag) { return a.substr(std::string(flag).size()); };
    if (i > 0 && a.rfind("--threads=", 0) == 0) {
      config().threads = parse_thread_list(value("--threads="));
      continue;
    }
    if (i > 0 && a.rfind("--peak_budget=", 0) == 0) {
      config().peak_budget = std::stod(value("--peak_budget="));
      continue;
    }
    if (i > 0 && a.rfind("--sample_gflop=", 0) == 0) {
      config().sample_gflop = std::stod(value("--sample_gflop="));
      continue;
    }
    if (a.rfind("--benchmark_repetitions", 0) == 0) has_reps = true;
    if (a.rfind("--benchmark_min_time", 0) == 0) has_min_time = true;
    if (a.rfind("--benchmark_format=", 0) == 0) config().format = value("--benchmark_format=");
    args.push_back(a);
  }
  // Defaults through the flags (not ->Repetitions()), so the command line still overrides them.
  if (!has_reps) args.push_back("--benchmark_repetitions=20");
  if (!has_min_time) args.push_back("--benchmark_min_time=0.005");
  for (auto& a : args) ptrs.push_back(a.data());
  ptrs.push_back(nullptr);
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, ptrs.data());
  if (benchmark::ReportUnrecognizedArguments(n, ptrs.data())) std::exit(1);
  argc = n;

  config().peak1 = measure_peak(1, config().peak_budget);
  std::string th;
  for (int t : config().threads) th += (th.empty() ? "" : ",") + std::to_string(t);
  std::printf("attnkit %d.%d.%d  SIMD path: %s  OpenMP threads: %d  benchmarked thread counts: %s\n",
              ATTNKIT_VERSION_MAJOR, ATTNKIT_VERSION_MINOR, ATTNKIT_VERSION_PATCH,
              attnkit::simd::native::name, max_threads(), th.c_str());
  std::printf(
      "measured fp32 FMA peak (%s, %d accumulators), 1 thread: %.1f GFLOP/s "
      "(min over %d samples of %.2f ms)\n",
      peak_isa, peak_accumulators, config().peak1.gflops, config().peak1.samples,
      static_cast<double>(config().peak1.iters) * peak_flops_per_iter / config().peak1.gflops * 1e-6);
  const double load = load_average();
  if (load >= 0)
    std::printf("load average (1 min): %.2f on %d CPUs%s\n", load, online_cpus(),
                load > 0.5 * online_cpus()
                    ? "  -- other processes compete for the cores: expect pessimistic numbers"
                    : "");
  std::printf(
      "reading guide: time from the *_min rows, rates (GFLOP/s, pct_peak, ...) from the *_max rows;\n"
      "               the summary at the end puts both on one line.\n");
  std::fflush(stdout);
}

/// Registers "peak/threads:N" for every configured thread count: the FMA loop of measure_peak on
/// N threads at once; counter GFLOP/s = total FLOPs / real time.
inline void register_peak() {
  for (int t : config().threads) {
    auto* b = benchmark::RegisterBenchmark(
        ("peak/threads:" + std::to_string(t)).c_str(), [t](benchmark::State& st) {
          const std::int64_t iters = std::max<std::int64_t>(1, config().peak1.iters);
          for (auto _ : st) run_peak_sample(t, iters);
          st.counters["GFLOP/s"] = rate(t * static_cast<double>(iters) * peak_flops_per_iter * 1e-9);
          st.SetLabel(std::string(peak_isa) + " x" + std::to_string(peak_accumulators) + " FMA chains");
        });
    with_defaults(b->UseRealTime(), benchmark::kMicrosecond);
  }
}

/// Returns the problem of `s`, reusing the previous one when the extents match (benchmarks of the
/// same shape are registered next to each other, so big inputs are built and filled once).
inline std::shared_ptr<attention_problem> shared_problem(const attention_spec& s) {
  static std::shared_ptr<attention_problem> cache;
  if (!cache || !cache->fits(s)) {
    cache.reset();
    cache = std::make_shared<attention_problem>(s);
  }
  return cache;
}

/// What register_attention reports besides time.
struct attention_counters {
  bool gflops = true;     ///< "GFLOP/s" (visible pairs only) and "pct_peak"
  bool dense = true;      ///< "dense_GFLOP/s": 4*Lq*Lk*d per head whether masked or not
  bool kv_bytes = false;  ///< "KV_GB/s": bytes of K and V per second
};

/// How register_attention samples a call (see plan_samples).
struct sampling {
  slicing how = slicing::heads_and_rows;
  double scale = 1.0;  ///< sample FLOPs = scale * --sample_gflop * threads (< 1 for slow operators)
  double flops = 0.0;  ///< if > 0: the sample FLOPs, whatever the threads (e.g. memory-bound calls)
  /// The operator's FLOPs when it is not exact attention (e.g. favor_flops_fn): samples are then
  /// slices of heads only (plan_head_samples, how = heads or none, heads a multiple of the thread
  /// count), and GFLOP/s and pct_peak count these FLOPs.
  head_flops_fn cost;
  /// The operator costs flop_factor x exact attention's FLOPs (e.g. 2.5 for the backward): samples
  /// are planned and the rates counted with it.
  double flop_factor = 1.0;
};

/// Registers one attention benchmark: `fn` on `spec` with attention_options::threads = threads.
/// A repetition times one sample of the call (plan_samples) and reports its time scaled to the
/// whole call (manual time), so "time" reads as the estimated time of one whole call.
inline benchmark::internal::Benchmark* register_attention(const std::string& name, const attention_spec& spec,
                                                          int threads, attention_fn fn, sampling smp = {},
                                                          attention_counters which = {}) {
  const double target =
      (smp.flops > 0 ? smp.flops : config().sample_gflop * 1e9 * smp.scale * std::max(1, threads)) /
      smp.flop_factor;
  // Row slices keep >= 2 tiles per thread; head-only slicing (decode) has many tasks per head.
  const index_t min_tiles = smp.how == slicing::heads_and_rows ? 2 * threads : 1;
  const sample_plan plan = smp.cost ? plan_head_samples(spec, target, smp.cost, smp.how, std::max(1, threads))
                                    : plan_samples(spec, target, smp.how, 4, 0, min_tiles);
  auto* b = benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) {
    try {
      auto prob = shared_problem(spec);
      attnkit::attention_options opt;
      opt.threads = threads;
      for (auto _ : st) st.SetIterationTime(plan.scale_to_whole(run_sample(*prob, plan, fn, opt)));
    } catch (const std::exception& e) {
      st.SkipWithError(e.what());
      return;
    }
    if (which.gflops) set_flop_counters(st, smp.flop_factor * plan.full_flops, threads);
    if (which.dense)
      st.counters["dense_GFLOP/s"] = rate(smp.flop_factor * dense_attention_flops(spec) * 1e-9);
    if (which.kv_bytes) st.counters["KV_GB/s"] = rate(kv_bytes(spec) * 1e-9);
    st.SetLabel(plan.describe());
  });
  return with_defaults(b->UseManualTime());
}

/// "name/d:64/L:1024/causal:1/threads:2": the naming scheme of the attention families. `params`
/// (e.g. "/m:256") follows d: the operator's own parameters.
inline std::string attention_name(const std::string& family, const attention_spec& s, int threads,
                                  const std::string& params = "") {
  std::string n = family + "/d:" + std::to_string(s.dk) + params;
  n += s.Lq == s.Lk ? "/L:" + std::to_string(s.Lq)
                    : "/Lq:" + std::to_string(s.Lq) + "/Lk:" + std::to_string(s.Lk);
  if (s.H != 8 || s.Hkv != s.H)
    n += "/H:" + std::to_string(s.H) + (s.Hkv != s.H ? "/Hkv:" + std::to_string(s.Hkv) : "");
  return n + "/causal:" + std::to_string(s.is_causal() ? 1 : 0) + "/threads:" + std::to_string(threads);
}

/// Console reporter that shows only the min/max aggregates and closes with one summary line per
/// benchmark: time from "min", counters from "max".
class summary_reporter : public benchmark::ConsoleReporter {
 public:
  using benchmark::ConsoleReporter::ConsoleReporter;

  void ReportRuns(const std::vector<Run>& runs) override {
    bool aggregates = false;
    for (const auto& r : runs) aggregates = aggregates || r.run_type == Run::RT_Aggregate;
    std::vector<Run> shown;
    for (const auto& r : runs) {
      const bool keep = !aggregates || (r.run_type == Run::RT_Aggregate &&
                                        (r.aggregate_name == "min" || r.aggregate_name == "max"));
      if (!keep) continue;
      shown.push_back(r);
      entry& e = lookup(r.run_name.str());
      if (r.error_occurred) e.error = r.error_message;
      if (!aggregates || r.aggregate_name == "min") {
        e.time = r.GetAdjustedRealTime();
        e.unit = benchmark::GetTimeUnitString(r.time_unit);
        e.label = r.report_label;
      }
      if (!aggregates || r.aggregate_name == "max") {
        e.counters.clear();
        for (const auto& c : r.counters) e.counters.emplace_back(c.first, c.second.value);
      }
    }
    if (!shown.empty()) benchmark::ConsoleReporter::ReportRuns(shown);
  }

  void Finalize() override {
    print_summary();
    benchmark::ConsoleReporter::Finalize();
  }

 private:
  struct entry {
    std::string name, unit, label, error;
    double time = 0.0;
    std::vector<std::pair<std::string, double>> counters;
  };
  std::vector<entry> entries_;
  std::map<std::string, std::size_t> index_;

  entry& lookup(const std::string& name) {
    auto it = index_.find(name);
    if (it != index_.end()) return entries_[it->second];
    index_[name] = entries_.size();
    entries_.push_back(entry{});
    entries_.back().name = name;
    return entries_.back();
  }

  static std::string short_name(std::string n) {
    for (const char* suffix : {"/manual_time", "/real_time"}) {
      const auto p = n.find(suffix);
      if (p != std::string::npos) n.erase(p, std::string(suffix).size());
    }
    return n;
  }
  static std::string fmt(double v) {
    char buf[32];
    const double a = std::fabs(v);
    std::snprintf(buf, sizeof buf, a >= 100 ? "%.1f" : a >= 10 ? "%.2f" : "%.3f", v);
    return buf;
  }

  void print_summary() {
    if (entries_.empty()) return;
    std::ostream& os = GetOutputStream();
    std::size_t w = 10;
    for (const auto& e : entries_) w = std::max(w, short_name(e.name).size());
    os << "\nSummary (time: min over repetitions, estimated for the whole call; rates: max over "
          "repetitions)\n";
    std::vector<std::string> prev;
    for (const auto& e : entries_) {
      std::vector<std::string> names;
      for (const auto& c : e.counters) names.push_back(c.first);
      if (names != prev || &e == &entries_.front()) {
        std::string h = short_name("benchmark");
        h.resize(w, ' ');
        char tb[32];
        std::snprintf(tb, sizeof tb, " %14s", "time");
        h += tb;
        for (const auto& n : names) {
          std::snprintf(tb, sizeof tb, " %13s", n.c_str());
          h += tb;
        }
        os << "\n" << h << "  sample\n";
        prev = names;
      }
      std::string line = short_name(e.name);
      line.resize(w, ' ');
      char tb[48];
      if (!e.error.empty()) {
        os << line << "  ERROR: " << e.error << "\n";
        continue;
      }
      std::snprintf(tb, sizeof tb, " %11s %2s", fmt(e.time).c_str(), e.unit.c_str());
      line += tb;
      for (const auto& c : e.counters) {
        std::snprintf(tb, sizeof tb, " %13s", fmt(c.second).c_str());
        line += tb;
      }
      os << line << "  " << e.label << "\n";
    }
    os.flush();
  }
};

/// Runs the registered benchmarks (console: with Reporter, a summary_reporter by default) and shuts
/// Google Benchmark down.
template <class Reporter = summary_reporter>
int run_benchmarks() {
  if (config().format == "console") {
    Reporter rep(isatty(STDOUT_FILENO) ? benchmark::ConsoleReporter::OO_ColorTabular
                                       : benchmark::ConsoleReporter::OO_Tabular);
    benchmark::RunSpecifiedBenchmarks(&rep);
  } else {
    benchmark::RunSpecifiedBenchmarks();
  }
  benchmark::Shutdown();
  return 0;
}

}  // namespace attnkit_bench
