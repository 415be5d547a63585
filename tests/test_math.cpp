// attnkit tests: vectorized exp / exp2 (core/math.hpp) measured in ULP against a wider reference,
// their special values, dot / axpy, and softmax_inplace / log_sum_exp (core/softmax.hpp) against fp64.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <random>
#include <tuple>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include <attnkit/core/math.hpp>
#include <attnkit/core/softmax.hpp>

#include "reference/common.hpp"

namespace {

using attnkit::index_t;
using attnkit_test::seeded_rng;

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

using attnkit_test::arch_list;

/// The functions under test: exp, exp2, and detail::exp2_nonpositive (the softmax kernels' 2^x
/// for x <= 0).
enum fn : int { fn_exp = 0, fn_exp2 = 1, fn_exp2_np = 2 };

template <int Fn, class B>
B call(B x) {
  if constexpr (Fn == fn_exp)
    return attnkit::exp(x);
  else if constexpr (Fn == fn_exp2)
    return attnkit::exp2(x);
  else
    return attnkit::detail::exp2_nonpositive(x);
}

/// Applies function Fn to n contiguous values through batch<T, Arch>.
template <class Arch, int Fn, class T>
void apply(const T* x, T* y, index_t n) {
  using B = attnkit::simd::batch<T, Arch>;
  constexpr int W = B::size;
  index_t i = 0;
  for (; i + W <= n; i += W) call<Fn>(B::load(x + i)).store(y + i);
  if (i < n) call<Fn>(B::load_partial(x + i, int(n - i))).store_partial(y + i, int(n - i));
}

template <class Arch, int Fn, class T>
T eval(T x) {
  T y;
  apply<Arch, Fn>(&x, &y, 1);
  return y;
}

/// The error of y in units of the last place of T at the (exact) value `want`.
template <class T>
long double ulp_error(T y, long double want) {
  const int e = std::ilogb(static_cast<long double>(want));
  const int emin = std::numeric_limits<T>::min_exponent - 1;  // below: denormal spacing
  const long double ulp = std::ldexp(1.0L, std::max(e, emin) - (std::numeric_limits<T>::digits - 1));
  return std::fabs(static_cast<long double>(y) - want) / ulp;
}

/// ulp_error<float> for a positive normal double `want`, with the exponent read from the bits
/// (the dense sweep calls it ~70 million times).
inline double float_ulp_error(float y, double want) {
  std::uint64_t bits;
  std::memcpy(&bits, &want, 8);
  const int e = std::max(static_cast<int>((bits >> 52) & 0x7ff) - 1023, -126);
  const std::uint64_t ub = static_cast<std::uint64_t>(e - 23 + 1023) << 52;
  double ulp;
  std::memcpy(&ulp, &ub, 8);
  return std::fabs(static_cast<double>(y) - want) / ulp;
}

/// Max ULP error of exp / exp2 over every `step`-th float bit pattern in [lo, hi].
template <class Arch, int Fn>
double float_sweep(float lo, float hi, std::uint32_t step, float* worst_x) {
  std::vector<float> xs, ys;
  xs.reserve(1 << 16);
  double worst = 0;
  auto flush = [&]() {
    ys.resize(xs.size());
    apply<Arch, Fn>(xs.data(), ys.data(), static_cast<index_t>(xs.size()));
    for (std::size_t t = 0; t < xs.size(); ++t) {
      const double want =
          Fn == fn_exp ? std::exp(static_cast<double>(xs[t])) : std::exp2(static_cast<double>(xs[t]));
      const double err = float_ulp_error(ys[t], want);
      if (!(err <= worst)) {  // NaN counts as the worst
        worst = std::isnan(err) ? std::numeric_limits<double>::infinity() : err;
        *worst_x = xs[t];
      }
    }
    xs.clear();
  };
  // Positive and negative halves: bit patterns increase with |x|.
  for (float end : {hi, lo}) {
    if (end == 0.0f && end == hi) continue;  // [lo, 0]: the negative half only
    std::uint32_t first, last;
    const float zero = end > 0 ? 0.0f : -0.0f;
    std::memcpy(&first, &zero, 4);
    std::memcpy(&last, &end, 4);
    for (std::uint64_t b = first; b <= last; b += step) {
      float x;
      const auto bits = static_cast<std::uint32_t>(b);
      std::memcpy(&x, &bits, 4);
      xs.push_back(x);
      if (xs.size() == (1u << 16)) flush();
    }
    xs.push_back(end);
    flush();
  }
  return worst;
}

/// Max ULP error of exp / exp2 in double over n uniform samples of [lo, hi] (reference: long double).
template <class Arch, int Fn>
double double_sample(double lo, double hi, int n, std::uint64_t salt, double* worst_x) {
  auto gen = seeded_rng(salt);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> xs(static_cast<std::size_t>(n)), ys(static_cast<std::size_t>(n));
  for (double& x : xs) x = dist(gen);
  // and some small arguments, where the result is close to 1
  const double span = std::max(std::fabs(lo), std::fabs(hi));
  for (int i = 0; i < n / 16; ++i) xs[static_cast<std::size_t>(i)] = std::ldexp(dist(gen) / span, -(i % 60));
  apply<Arch, Fn>(xs.data(), ys.data(), n);
  double worst = 0;
  for (std::size_t t = 0; t < xs.size(); ++t) {
    const long double xl = xs[t];
    const long double want = Fn == fn_exp ? std::exp(xl) : std::exp2(xl);
    const double err = static_cast<double>(ulp_error<double>(ys[t], want));
    if (!(err <= worst)) {
      worst = std::isnan(err) ? std::numeric_limits<double>::infinity() : err;
      *worst_x = xs[t];
    }
  }
  return worst;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("exp and exp2 (float): max ULP error over a dense sweep", "[math][exp]", arch_list) {
  using Arch = TestType;
  // Every 64th float bit pattern (~34 million arguments per function); every 512th for the scalar
  // batch (the same algorithm, one lane at a time: 8x fewer keeps it as fast as the SIMD sweeps);
  // sparser under sanitizers.
  const std::uint32_t step = kSanitized ? 4096 : std::is_same_v<Arch, attnkit::simd::scalar> ? 512 : 64;
  float wx = 0;
  const double e = float_sweep<Arch, fn_exp>(-87.0f, 88.0f, step, &wx);
  std::cout << "attnkit exp<float, " << Arch::name << "> max error on [-87, 88]: " << e
            << " ulp (at x = " << wx << ", every " << step << "th float)\n";
  {
    INFO("exp<float, " << Arch::name << ">: " << e << " ulp at x = " << wx);
    REQUIRE(e <= 3.0);
  }
  float wx2 = 0;
  const double e2 = float_sweep<Arch, fn_exp2>(-126.0f, 127.0f, step, &wx2);
  std::cout << "attnkit exp2<float, " << Arch::name << "> max error on [-126, 127]: " << e2
            << " ulp (at x = " << wx2 << ")\n";
  {
    INFO("exp2<float, " << Arch::name << ">: " << e2 << " ulp at x = " << wx2);
    REQUIRE(e2 <= 3.0);
  }
  float wx3 = 0;
  const double e3 = float_sweep<Arch, fn_exp2_np>(-126.0f, 0.0f, step, &wx3);
  std::cout << "attnkit detail::exp2_nonpositive<float, " << Arch::name << "> max error on [-126, 0]: " << e3
            << " ulp (at x = " << wx3 << ")\n";
  INFO("exp2_nonpositive<float, " << Arch::name << ">: " << e3 << " ulp at x = " << wx3);
  REQUIRE(e3 <= 3.0);
}

TEMPLATE_LIST_TEST_CASE("exp and exp2 (double): max ULP error on random samples", "[math][exp]", arch_list) {
  using Arch = TestType;
  const int n = kSanitized ? 100000 : 1000000;
  double wx = 0;
  const double e = double_sample<Arch, fn_exp>(-700, 700, n, 11, &wx);
  std::cout << "attnkit exp<double, " << Arch::name << "> max error on [-700, 700]: " << e
            << " ulp (at x = " << wx << ", " << n << " samples)\n";
  {
    INFO("exp<double, " << Arch::name << ">: " << e << " ulp at x = " << wx);
    REQUIRE(e <= 3.0);
  }
  double wx2 = 0;
  const double e2 = double_sample<Arch, fn_exp2>(-1000, 1000, n, 12, &wx2);
  std::cout << "attnkit exp2<double, " << Arch::name << "> max error on [-1000, 1000]: " << e2
            << " ulp (at x = " << wx2 << ")\n";
  {
    INFO("exp2<double, " << Arch::name << ">: " << e2 << " ulp at x = " << wx2);
    REQUIRE(e2 <= 3.0);
  }
  double wx3 = 0;
  const double e3 = double_sample<Arch, fn_exp2_np>(-1000, 0, n, 13, &wx3);
  std::cout << "attnkit detail::exp2_nonpositive<double, " << Arch::name
            << "> max error on [-1000, 0]: " << e3 << " ulp (at x = " << wx3 << ")\n";
  INFO("exp2_nonpositive<double, " << Arch::name << ">: " << e3 << " ulp at x = " << wx3);
  REQUIRE(e3 <= 3.0);
}

TEMPLATE_LIST_TEST_CASE("exp and exp2: special values and range ends", "[math][exp]", arch_list) {
  using Arch = TestType;
  INFO("arch " << Arch::name);
  const float finf = std::numeric_limits<float>::infinity();
  const double dinf = std::numeric_limits<double>::infinity();
  auto fexp = [](float x) { return eval<Arch, fn_exp>(x); };
  auto fexp2 = [](float x) { return eval<Arch, fn_exp2>(x); };
  auto dexp = [](double x) { return eval<Arch, fn_exp>(x); };
  auto dexp2 = [](double x) { return eval<Arch, fn_exp2>(x); };

  SECTION("float exp") {
    CHECK(fexp(-finf) == 0.0f);
    CHECK(fexp(finf) == finf);
    CHECK(std::isnan(fexp(std::numeric_limits<float>::quiet_NaN())));
    CHECK(fexp(100.0f) == finf);
    CHECK(fexp(89.0f) == finf);
    CHECK(fexp(std::numeric_limits<float>::max()) == finf);
    CHECK(fexp(-200.0f) == 0.0f);
    CHECK(fexp(-std::numeric_limits<float>::max()) == 0.0f);
    CHECK(fexp(0.0f) == 1.0f);
    CHECK(fexp(-0.0f) == 1.0f);
    CHECK(fexp(1.0f) == Approx(2.718281828).epsilon(1e-7));
    // Just below the overflow threshold ln(FLT_MAX) = 88.7228: finite, still accurate.
    for (float x : {88.0f, 88.5f, 88.72f, 88.7228f}) {
      INFO("x = " << x);
      CHECK(ulp_error<float>(fexp(x), std::exp(static_cast<long double>(x))) <= 3);
    }
    CHECK(fexp(88.7229f) == finf);
    // Below the smallest normal result: flushed towards 0, never negative, NaN or above FLT_MIN.
    for (float x : {-87.5f, -90.0f, -100.0f, -103.9f, -104.0f, -110.0f}) {
      INFO("x = " << x);
      const float y = fexp(x);
      CHECK(y >= 0.0f);
      CHECK(y <= std::numeric_limits<float>::min());
    }
  }
  SECTION("float exp2") {
    CHECK(fexp2(-finf) == 0.0f);
    CHECK(fexp2(finf) == finf);
    CHECK(std::isnan(fexp2(std::numeric_limits<float>::quiet_NaN())));
    CHECK(fexp2(128.0f) == finf);
    CHECK(fexp2(200.0f) == finf);
    CHECK(fexp2(-200.0f) == 0.0f);
    CHECK(fexp2(0.5f) == Approx(1.41421356).epsilon(1e-7));
    int inexact = 0;
    for (int n = -126; n <= 127; ++n)
      if (fexp2(static_cast<float>(n)) != std::ldexp(1.0f, n)) ++inexact;
    INFO("exp2 of an integer n in [-126, 127] must be exactly 2^n");
    CHECK(inexact == 0);
  }
  SECTION("double exp") {
    CHECK(dexp(-dinf) == 0.0);
    CHECK(dexp(dinf) == dinf);
    CHECK(std::isnan(dexp(std::numeric_limits<double>::quiet_NaN())));
    CHECK(dexp(710.0) == dinf);
    CHECK(dexp(1000.0) == dinf);
    CHECK(dexp(-1000.0) == 0.0);
    CHECK(dexp(0.0) == 1.0);
    CHECK(dexp(-0.0) == 1.0);
    for (double x : {700.0, 709.0, 709.78}) {
      INFO("x = " << x);
      CHECK(ulp_error<double>(dexp(x), std::exp(static_cast<long double>(x))) <= 3);
    }
    for (double x : {-709.0, -720.0, -745.0, -746.0}) {
      INFO("x = " << x);
      const double y = dexp(x);
      CHECK(y >= 0.0);
      CHECK(y <= std::numeric_limits<double>::min());
    }
  }
  SECTION("double exp2") {
    CHECK(dexp2(-dinf) == 0.0);
    CHECK(dexp2(dinf) == dinf);
    CHECK(std::isnan(dexp2(std::numeric_limits<double>::quiet_NaN())));
    CHECK(dexp2(1024.0) == dinf);
    CHECK(dexp2(-1100.0) == 0.0);
    int inexact = 0;
    for (int n = -1022; n <= 1023; ++n)
      if (dexp2(static_cast<double>(n)) != std::ldexp(1.0, n)) ++inexact;
    INFO("exp2 of an integer n in [-1022, 1023] must be exactly 2^n");
    CHECK(inexact == 0);
  }
  SECTION("detail::exp2_nonpositive (the softmax kernels' 2^x, x <= 0)") {
    auto f = [](float x) { return eval<Arch, fn_exp2_np>(x); };
    auto d = [](double x) { return eval<Arch, fn_exp2_np>(x); };
    CHECK(f(0.0f) == 1.0f);
    CHECK(f(-0.0f) == 1.0f);
    CHECK(f(-finf) == 0.0f);
    CHECK(f(-200.0f) == 0.0f);
    CHECK(std::isnan(f(std::numeric_limits<float>::quiet_NaN())));
    CHECK(d(0.0) == 1.0);
    INFO("exp2_nonpositive<double>(-inf) = " << d(-dinf) << ", (-200) = " << d(-200.0) << " (want "
                                             << std::exp2(-200.0) << ")");
    CHECK(d(-dinf) == 0.0);
    CHECK(d(-200.0) == std::exp2(-200.0));
    CHECK(std::isnan(d(std::numeric_limits<double>::quiet_NaN())));
    int inexact = 0;
    for (int n = -126; n <= 0; ++n) inexact += f(static_cast<float>(n)) != std::ldexp(1.0f, n);
    for (int n = -1022; n <= 0; ++n) inexact += d(static_cast<double>(n)) != std::ldexp(1.0, n);
    INFO("exp2_nonpositive of a non-positive integer n must be exactly 2^n");
    CHECK(inexact == 0);
    for (float x : {-130.0f, -140.0f, -149.5f, -159.0f}) {  // below the normal range: towards 0
      INFO("x = " << x);
      CHECK(f(x) >= 0.0f);
      CHECK(f(x) <= std::numeric_limits<float>::min());
    }
  }
  SECTION("every lane of a batch is computed independently") {
    using B = attnkit::simd::batch<float, Arch>;
    constexpr int W = B::size;
    std::vector<float> x(static_cast<std::size_t>(W)), y(static_cast<std::size_t>(W));
    const float specials[] = {0.0f, -finf,  finf,   std::numeric_limits<float>::quiet_NaN(),
                              1.5f, -3.25f, 100.0f, -200.0f};
    for (int s = 0; s < 8; ++s) {
      for (int l = 0; l < W; ++l) x[static_cast<std::size_t>(l)] = specials[(s + l) % 8];
      attnkit::exp(B::load(x.data())).store(y.data());
      for (int l = 0; l < W; ++l) {
        const float want = fexp(x[static_cast<std::size_t>(l)]);
        INFO("lane " << l << " x = " << x[static_cast<std::size_t>(l)]);
        CHECK(std::memcmp(&want, &y[static_cast<std::size_t>(l)], 4) == 0);
      }
    }
  }
  SECTION("exp_scalar follows the same algorithm") {
    CHECK(attnkit::exp_scalar(0.0f) == 1.0f);
    CHECK(attnkit::exp_scalar(-finf) == 0.0f);
    CHECK(ulp_error<float>(attnkit::exp_scalar(-3.0f), std::exp(-3.0L)) <= 3);
    CHECK(ulp_error<double>(attnkit::exp_scalar(-3.0), std::exp(-3.0L)) <= 3);
  }
}

TEMPLATE_LIST_TEST_CASE("dot and axpy agree with fp64 sums", "[math][dot]", arch_list) {
  using Arch = TestType;
  auto gen = seeded_rng(21);
  std::uniform_real_distribution<double> dist(-1, 1);
  for (index_t n : {0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 100, 257}) {
    INFO("n = " << n << " arch " << Arch::name);
    std::vector<float> a(static_cast<std::size_t>(n) + 1), b(a.size()), y(a.size());
    std::vector<double> ad(a.size()), bd(a.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
      a[i] = static_cast<float>(dist(gen));
      b[i] = static_cast<float>(dist(gen));
      y[i] = static_cast<float>(dist(gen));
    }
    const std::vector<float> y0(y);  // (copy-constructed: g++ 12 -Wnonnull misfires on y0 = y)
    double want = 0, mag = 0;
    for (index_t i = 0; i < n; ++i) {
      want += double(a[std::size_t(i)]) * double(b[std::size_t(i)]);
      mag += std::fabs(double(a[std::size_t(i)]) * double(b[std::size_t(i)]));
    }
    // fp32 dot product: |error| <= n u sum |a_i b_i| (Higham 3.1)
    const float got = attnkit::dot<Arch>(a.data() + 1, b.data() + 1, n);
    double want1 = 0;
    for (index_t i = 1; i <= n; ++i) want1 += double(a[std::size_t(i)]) * double(b[std::size_t(i)]);
    (void)want;
    (void)mag;
    double mag1 = 0;
    for (index_t i = 1; i <= n; ++i) mag1 += std::fabs(double(a[std::size_t(i)]) * double(b[std::size_t(i)]));
    CHECK(std::fabs(got - want1) <= (n + 1) * 0x1p-24 * mag1 + 1e-30);
    const float alpha = 0.75f;
    attnkit::axpy<Arch>(n, alpha, a.data() + 1, y.data() + 1);
    index_t bad = 0;
    for (index_t i = 0; i <= n; ++i) {
      const double w =
          i == 0 ? double(y0[0]) : double(alpha) * a[std::size_t(i)] + double(y0[std::size_t(i)]);
      // alpha * a + y in fp32, fused (one rounding) or not (the scalar tail, or targets without FMA:
      // two roundings): |error| <= u |alpha a| (1 + u) + u |w|. Element 0 is outside the range and
      // must be untouched.
      const double bound =
          0x1p-24 * (std::fabs(double(alpha) * a[std::size_t(i)]) * (1 + 0x1p-24) + std::fabs(w));
      if (i == 0 ? y[0] != y0[0] : std::fabs(y[std::size_t(i)] - w) > bound) ++bad;
    }
    CHECK(bad == 0);
  }
}

TEMPLATE_LIST_TEST_CASE("softmax_inplace and log_sum_exp agree with fp64", "[math][softmax]", arch_list) {
  using Arch = TestType;
  auto gen = seeded_rng(31);
  std::uniform_real_distribution<double> dist(-20, 20);
  const auto check_type = [&](auto tag) {
    using T = decltype(tag);
    const double u = std::is_same_v<T, float> ? 0x1p-24 : 0x1p-53;
    const T ninf = -std::numeric_limits<T>::infinity();
    for (index_t n : {0, 1, 2, 3, 7, 15, 16, 17, 31, 33, 100, 1001})
      for (int kind = 0; kind < 4; ++kind) {
        INFO("n = " << n << " kind = " << kind << " arch " << Arch::name
                    << " T = " << (sizeof(T) == 4 ? "float" : "double"));
        std::vector<T> x(static_cast<std::size_t>(n) + 1);
        for (T& e : x) e = static_cast<T>(dist(gen));
        if (kind == 1)  // some keys masked with -inf
          for (std::size_t i = 0; i < x.size(); i += 3) x[i] = ninf;
        if (kind == 2)  // huge logits: exp without max subtraction overflows
          for (T& e : x) e = static_cast<T>(e * 500 + 30000);
        if (kind == 3)  // all -inf
          for (T& e : x) e = ninf;
        const T guard = x[static_cast<std::size_t>(n)];
        const std::vector<T> x0 = x;
        // fp64 reference
        double m = -std::numeric_limits<double>::infinity();
        for (index_t i = 0; i < n; ++i) m = std::max(m, double(x[std::size_t(i)]));
        std::vector<double> p(static_cast<std::size_t>(n));
        double s = 0;
        for (index_t i = 0; i < n; ++i) {
          p[std::size_t(i)] = std::isinf(m) ? 0.0 : std::exp(double(x[std::size_t(i)]) - m);
          s += p[std::size_t(i)];
        }
        const double lse =
            n == 0 || std::isinf(m) ? -std::numeric_limits<double>::infinity() : m + std::log(s);
        const T got_lse = attnkit::log_sum_exp<Arch>(x.data(), n);
        // error: rounding of each exp (3 ulp) and of the n-term sum (n u) relative to s, i.e. absolute
        // in log space, plus the final addition m + log(s) (|lse| u).
        if (std::isinf(lse)) {
          CHECK(got_lse == static_cast<T>(lse));
        } else {
          CHECK(std::fabs(double(got_lse) - lse) <= (n + 8) * u + 2 * std::fabs(lse) * u);
        }
        attnkit::softmax_inplace<Arch>(x.data(), n);
        index_t bad = 0;
        double worst = 0;
        for (index_t i = 0; i < n; ++i) {
          const double want = s > 0 ? p[std::size_t(i)] / s : 0.0;
          // Relative error budget of p_i: the rounding of x_i - m (<= u |x_i - m|, amplified 1:1 by
          // exp), exp itself (<= 3 ulp), the n-term sum of the normalizer (<= n u) and the division.
          const double err = std::fabs(double(x[std::size_t(i)]) - want);
          worst = std::max(worst, err);
          if (std::isinf(x0[std::size_t(i)])) {  // a -inf logit (and an all -inf row) gives exactly 0
            bad += x[std::size_t(i)] != T(0);
            continue;
          }
          // Results below the smallest normal number may flush towards 0 (core/math.hpp): that
          // absolute floor is added.
          const double budget = (std::fabs(double(x0[std::size_t(i)]) - m) + n + 8) * u * want +
                                double(std::numeric_limits<T>::min());
          bad += !(err <= budget + 1e-300);
        }
        INFO("worst abs error " << worst);
        CHECK(bad == 0);
        CHECK(std::memcmp(&guard, &x[static_cast<std::size_t>(n)], sizeof(T)) ==
              0);  // nothing past n written
      }
  };
  check_type(float{});
  check_type(double{});
}
