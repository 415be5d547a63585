// attnkit benchmarks: peak extra memory of full_attention, to show that it does not grow with L*L.
//
// Every operator new / delete of the process goes through the counting versions below; the peak
// of the bytes live during one call, minus the bytes live before it, is what the call allocated
// at most (workspaces, per-thread scratch). As a cross-check the peak resident set (VmHWM) is
// reset through /proc/self/clear_refs before the call and read after it.
// The naive reference would materialize one Lq x Lk fp32 score matrix per head: its L*L*4 bytes
// are printed, not run (4 GiB at L = 32768).
//
//   attention_memory                      # L in {8192, 16384, 32768}, H = 1, d = 64, threads 1 and all
//   attention_memory --L=4096,65536 --d=128 --heads=2 --threads=1 --causal
//   attention_memory --lambda --side=64 --batch=8   # lambda_attention, relative and local terms, vs
//                                                    # the attention maps of 4-head attention
#include <malloc.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include "measure.hpp"

namespace {

std::atomic<long long> g_live{0};
std::atomic<long long> g_peak{0};
std::atomic<long long> g_count{0};

void note_alloc(void* p) {
  const auto n = static_cast<long long>(malloc_usable_size(p));
  const long long live = g_live.fetch_add(n) + n;
  long long peak = g_peak.load();
  while (live > peak && !g_peak.compare_exchange_weak(peak, live)) {
  }
  g_count.fetch_add(1);
}
void note_free(void* p) {
  if (p) g_live.fetch_sub(static_cast<long long>(malloc_usable_size(p)));
}
void* counted_alloc(std::size_t n) {
  void* p = std::malloc(n ? n : 1);
  if (!p) throw std::bad_alloc();
  note_alloc(p);
  return p;
}
void* counted_alloc_aligned(std::size_t n, std::size_t a) {
  void* p = nullptr;
  if (posix_memalign(&p, std::max(a, sizeof(void*)), n ? n : 1) != 0) throw std::bad_alloc();
  note_alloc(p);
  return p;
}
void counted_free(void* p) noexcept {
  note_free(p);
  std::free(p);
}

/// Peak resident set (kB) from /proc/self/status; "VmHWM" or "VmRSS".
long long proc_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::atoll(line.c_str() + std::strlen(key) + 1);
  return -1;
}
/// Resets VmHWM to the current RSS (Linux >= 4.0); returns false when not permitted.
bool reset_hwm() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  return static_cast<bool>(f);
}

/// What one call allocated: heap peak over the bytes live before it, RSS high-water growth.
struct call_memory {
  double heap_kib = 0.0, rss_kib = -1.0, secs = 0.0;
  long long allocs = 0;
};

template <class F>
call_memory measure_call(int threads, F&& call) {
  // Warm up the OpenMP thread pool (its stacks and runtime state are not the kernel's).
  attnkit_bench::run_peak_sample(threads, 1000);
  const long long live0 = g_live.load();
  const long long count0 = g_count.load();
  g_peak.store(live0);
  const bool hwm_ok = reset_hwm();
  const long long rss0 = proc_kb("VmRSS:");
  const double t0 = attnkit_bench::now_seconds();
  call();
  call_memory m;
  m.secs = attnkit_bench::now_seconds() - t0;
  const long long hwm = proc_kb("VmHWM:");
  m.heap_kib = static_cast<double>(g_peak.load() - live0) / 1024.0;
  if (hwm_ok) m.rss_kib = static_cast<double>(hwm - rss0);
  m.allocs = g_count.load() - count0;
  return m;
}

std::string kib_string(double kib) {
  char b[32];
  if (kib < 0)
    std::snprintf(b, sizeof b, "n/a");
  else
    std::snprintf(b, sizeof b, "%.1f KiB", kib);
  return b;
}

/// --lambda: lambda_attention with the global relative term (u = 1) and the local one (r = 23,
/// u = 4) on side x side maps (h = 4, k = 16, v = d / 4), against the attention maps of 4-head
/// attention over the same tokens and batch (B * 4 * L^2 fp32), which any attention that
/// materializes them per head would hold.
int run_lambda(const std::vector<long>& sides, long d, long batch, const std::vector<int>& threads) {
  namespace ab = attnkit_bench;
  std::printf(
      "attnkit lambda_attention (h=4 k=16 v=%ld, fp32, B=%ld, SIMD %s): extra memory of one call, global "
      "relative "
      "(u=1) and local (r=23, u=4) terms\n",
      d / 4, batch, attnkit::simd::native::name);
  std::printf("inputs and output are allocated and filled before the call (not counted).\n");
  std::printf("%9s %-9s %7s %10s %12s %14s %16s %10s %9s\n", "map", "term", "threads", "allocs", "heap peak",
              "RSS HWM delta", "4-head maps", "heap/maps", "time s");
  for (long side : sides)
    for (ab::lambda_term term : {ab::lambda_term::relative, ab::lambda_term::local}) {
      const bool local = term == ab::lambda_term::local;
      ab::lambda_case c(term, side, d, local ? 4 : 1, 23, batch);
      const double maps_kib = static_cast<double>(batch) * 4.0 * static_cast<double>(c.n()) *
                              static_cast<double>(c.n()) * 4.0 / 1024.0;
      for (int t : threads) {
        const call_memory m = measure_call(t, [&] { c.run(t); });
        char map[32], maps[32];
        std::snprintf(map, sizeof map, "%ldx%ld", side, side);
        std::snprintf(maps, sizeof maps, "%.1f MiB", maps_kib / 1024.0);
        std::printf("%9s %-9s %7d %10lld %12s %14s %16s %10.4f %9.2f\n", map, ab::lambda_term_name(term), t,
                    m.allocs, kib_string(m.heap_kib).c_str(), kib_string(m.rss_kib).c_str(), maps,
                    m.heap_kib / maps_kib, m.secs);
        std::fflush(stdout);
      }
    }
  std::printf(
      "heap peak: bytes allocated through operator new and live at once during the call (the repacked\n"
      "values, the repacked table, per-thread k x v lambdas and k x m table panels);\n"
      "4-head maps: B * 4 * L * L * 4 bytes, the attention maps of 4-head attention over the same tokens.\n");
  return 0;
}

std::vector<long> parse_list(const char* s) {
  std::vector<long> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(std::atol(item.c_str()));
  return v;
}

}  // namespace

void* operator new(std::size_t n) { return counted_alloc(n); }
void* operator new[](std::size_t n) { return counted_alloc(n); }
void* operator new(std::size_t n, std::align_val_t a) {
  return counted_alloc_aligned(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return counted_alloc_aligned(n, static_cast<std::size_t>(a));
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted_alloc(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted_alloc(n);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept { counted_free(p); }
void operator delete[](void* p) noexcept { counted_free(p); }
void operator delete(void* p, std::size_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::size_t) noexcept { counted_free(p); }
void operator delete(void* p, std::align_val_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { counted_free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { counted_free(p); }

int main(int argc, char** argv) {
  namespace ab = attnkit_bench;
  std::vector<long> lengths{8192, 16384, 32768};
  long d = 64, heads = 1;
  std::vector<int> threads = ab::default_thread_counts();
  bool causal = false, lambda = false;
  std::vector<long> sides{64};
  long batch = 1;
  bool d_given = false;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    if (std::strncmp(a, "--L=", 4) == 0) {
      lengths = parse_list(a + 4);
    } else if (std::strncmp(a, "--d=", 4) == 0) {
      d = std::atol(a + 4);
      d_given = true;
    } else if (std::strncmp(a, "--heads=", 8) == 0) {
      heads = std::atol(a + 8);
    } else if (std::strncmp(a, "--threads=", 10) == 0) {
      threads = ab::parse_thread_list(a + 10);
    } else if (std::strcmp(a, "--causal") == 0) {
      causal = true;
    } else if (std::strcmp(a, "--lambda") == 0) {
      lambda = true;
    } else if (std::strncmp(a, "--side=", 7) == 0) {
      sides = parse_list(a + 7);
    } else if (std::strncmp(a, "--batch=", 8) == 0) {
      batch = std::atol(a + 8);
    } else {
      std::fprintf(stderr,
                   "usage: %s [--L=8192,16384,32768] [--d=64] [--heads=1] [--threads=1,2] [--causal]\n"
                   "       %s --lambda [--side=64] [--d=256] [--batch=1] [--threads=1,2]\n",
                   argv[0], argv[0]);
      return 2;
    }
  }
  if (lambda) return run_lambda(sides, d_given ? d : 256, batch, threads);

  std::printf("attnkit full_attention: extra memory of one call (fp32, B=1, H=%ld, d=%ld, %s, SIMD %s)\n",
              heads, d, causal ? "causal" : "non-causal", attnkit::simd::native::name);
  std::printf("inputs+output = 4 * H*L*d*4 bytes, allocated and filled before the call (not counted).\n");
  std::printf("%7s %7s %11s %10s %12s %14s %14s %10s\n", "L", "threads", "inputs MiB", "allocs", "heap peak",
              "RSS HWM delta", "reference LxL", "time s");
  for (long L : lengths) {
    const auto spec = ab::attention_spec::self(
        L, d, heads, causal ? attnkit::causal_mode::top_left : attnkit::causal_mode::none);
    ab::attention_problem p(spec);
    const double inputs_mib = 4.0 * static_cast<double>(heads * L * d) * 4.0 / (1 << 20);
    for (int t : threads) {
      attnkit::attention_options opt;
      opt.threads = t;
      opt.mask.causal = spec.causal;
      const call_memory m = measure_call(
          t, [&] { attnkit::full_attention(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view(), opt); });
      char ref[32];
      std::snprintf(ref, sizeof ref, "%.0f MiB",
                    static_cast<double>(L) * static_cast<double>(L) * 4.0 / (1 << 20));
      std::printf("%7ld %7d %11.1f %10lld %12s %14s %14s %10.2f\n", L, t, inputs_mib, m.allocs,
                  kib_string(m.heap_kib).c_str(), kib_string(m.rss_kib).c_str(), ref, m.secs);
      std::fflush(stdout);
    }
  }
  std::printf(
      "heap peak: bytes allocated through operator new and live at once during the call;\n"
      "RSS HWM delta: growth of the resident set's high-water mark during the call (page granular);\n"
      "reference LxL: the score matrix reference::attention materializes per head (not run).\n");
  return 0;
}
