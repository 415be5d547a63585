// attnkit benchmarks: throughput of attnkit::exp (native SIMD and scalar batches) over a float
// array against std::exp, and, printed at start-up, the maximum error in ULP of attnkit::exp on
// [-87, 88] (the test suite asserts <= 3 ULP; here it is only reported).
//
//   bench_math                  # sweep 1 in 64 floats of [-87, 88], then the throughput table
//   bench_math --ulp_stride=1   # exhaustive sweep (all ~2.2e9 floats of the range, slower)
#include <cstring>

#include "common.hpp"

namespace ab = attnkit_bench;
using attnkit::index_t;

namespace {

/// Applies attnkit::exp with the batch of Arch to n floats (n a multiple of the lane count or not).
template <class Arch>
void exp_array(const float* x, float* y, index_t n) {
  using B = attnkit::simd::batch<float, Arch>;
  index_t i = 0;
  for (; i + B::size <= n; i += B::size) attnkit::exp(B::load(x + i)).store(y + i);
  for (; i < n; ++i) y[i] = attnkit::exp(attnkit::simd::batch<float, attnkit::simd::scalar>{x[i]}).v;
}

void std_exp_array(const float* x, float* y, index_t n) {
  for (index_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
}

std::uint32_t bits_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
float float_of(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// Orders floats as integers (negative floats below positive ones), so that consecutive floats
/// differ by 1.
std::int64_t ordered(float f) {
  const std::uint32_t u = bits_of(f);
  return (u & 0x80000000u) ? -static_cast<std::int64_t>(u & 0x7fffffffu) : static_cast<std::int64_t>(u);
}
float from_ordered(std::int64_t o) {
  return o < 0 ? float_of(static_cast<std::uint32_t>(-o) | 0x80000000u)
               : float_of(static_cast<std::uint32_t>(o));
}

/// Error of y against the exact value e in units of the float spacing at e.
double ulp_error(float y, double e) {
  if (std::isinf(e) || std::isinf(y)) return (std::isinf(e) && std::isinf(y)) ? 0.0 : HUGE_VAL;
  int ex = 0;
  std::frexp(e, &ex);  // e = m * 2^ex, m in [0.5, 1)
  const double ulp = std::ldexp(1.0, std::max(ex, -125) - 24);
  return std::fabs(static_cast<double>(y) - e) / ulp;
}

struct ulp_stats {
  double max_ulp = 0.0, at = 0.0, sum = 0.0;
  std::int64_t n = 0;
};

using array_fn = void (*)(const float*, float*, index_t);

/// Sweeps every `stride`-th float of [lo, hi] in blocks of 4096 through each function of `fns` and
/// compares with exp in double precision (whose rounding error is far below 0.01 ULP of float).
std::vector<ulp_stats> sweep(const std::vector<array_fn>& fns, float lo, float hi, std::int64_t stride) {
  std::vector<ulp_stats> stats(fns.size());
  constexpr index_t block = 4096;
  std::vector<float> x(block), y(block);
  std::vector<double> e(block);
  const std::int64_t o1 = ordered(hi);
  for (std::int64_t o = ordered(lo); o <= o1;) {
    index_t n = 0;
    for (; n < block && o <= o1; ++n, o += stride) {
      const auto u = static_cast<std::size_t>(n);
      x[u] = from_ordered(o);
      e[u] = std::exp(static_cast<double>(x[u]));
    }
    for (std::size_t k = 0; k < fns.size(); ++k) {
      fns[k](x.data(), y.data(), n);
      ulp_stats& s = stats[k];
      for (index_t i = 0; i < n; ++i) {
        const auto u = static_cast<std::size_t>(i);
        const double err = ulp_error(y[u], e[u]);
        s.sum += err;
        ++s.n;
        if (err > s.max_ulp) {
          s.max_ulp = err;
          s.at = x[u];
        }
      }
    }
  }
  return stats;
}

void register_exp(const char* name, array_fn f) {
  auto* b = benchmark::RegisterBenchmark(name, [f](benchmark::State& st) {
    const index_t n = st.range(0);
    std::vector<float> x(static_cast<std::size_t>(n)), y(static_cast<std::size_t>(n));
    ab::fill_uniform(x.data(), n, 7, -80.0f, 80.0f);
    for (auto _ : st) {
      f(x.data(), y.data(), n);
      benchmark::DoNotOptimize(y.data());
      benchmark::ClobberMemory();
    }
    st.counters["Gexp/s"] = ab::rate(static_cast<double>(n) * 1e-9);
  });
  ab::with_defaults(b->UseRealTime()->Arg(4096)->Arg(1 << 20), benchmark::kMicrosecond);
}

}  // namespace

int main(int argc, char** argv) {
  std::int64_t stride = 64;
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (i > 0 && std::strncmp(argv[i], "--ulp_stride=", 13) == 0) {
      stride = std::max<std::int64_t>(1, std::atoll(argv[i] + 13));
      continue;
    }
    rest.push_back(argv[i]);
  }
  int n = static_cast<int>(rest.size());
  rest.push_back(nullptr);
  ab::initialize(n, rest.data());

  const double t0 = ab::now_seconds();
  const auto stats =
      sweep({exp_array<attnkit::simd::native>, exp_array<attnkit::simd::scalar>, std_exp_array}, -87.0f,
            88.0f, stride);
  const ulp_stats &native = stats[0], &scalar = stats[1], &libm = stats[2];
  std::printf("exp accuracy on [-87, 88], 1 in %lld floats (%lld values), vs exp in double:\n",
              static_cast<long long>(stride), static_cast<long long>(native.n));
  auto line = [](const char* what, const ulp_stats& s) {
    std::printf("  %-28s max %.3f ULP (at x = %.9g), mean %.4f ULP\n", what, s.max_ulp, s.at,
                s.sum / static_cast<double>(std::max<std::int64_t>(1, s.n)));
  };
  line((std::string("attnkit::exp ") + attnkit::simd::native::name).c_str(), native);
  line("attnkit::exp scalar", scalar);
  line("std::exp (float)", libm);
  std::printf("  (sweep took %.1f s; the test suite asserts <= 3 ULP)\n\n", ab::now_seconds() - t0);
  std::fflush(stdout);

  register_exp("exp/attnkit_native", exp_array<attnkit::simd::native>);
  register_exp("exp/attnkit_scalar", exp_array<attnkit::simd::scalar>);
  register_exp("exp/std_exp", std_exp_array);
  return ab::run_benchmarks();
}
