// attnkit: vectorized exp / exp2 for every ISA (one algorithm over the batch primitives), and the
// small dot / axpy helpers kernels share.
//
// exp(x) = 2^n * e^r with n = round(x / ln 2) and r = x - n ln 2 (Cody-Waite, two-part ln 2),
// |r| <= ln(2)/2; e^r is a Taylor polynomial of degree 7 (float) or 13 (double), whose truncation
// error is below 2^-27 (resp. 2^-57) relative. Measured max error of the float path on [-87, 88]:
// see tests/test_math.cpp (asserted <= 3 ULP) and bench/bench_math.cpp.
// Special values: exp(-inf) = 0, overflow -> +inf, NaN -> NaN; results below the smallest
// normal number flush towards 0 (possibly through denormals, ISA dependent).
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <limits>
#include <tuple>
#include <type_traits>

#include "config.hpp"
#include "simd.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

template <class T>
struct exp_constants;

template <>
struct exp_constants<float> {
  static constexpr int degree = 7;
  static constexpr float lo = -104.0f;  // exp(lo) underflows to 0 even through denormals
  static constexpr float hi = 89.0f;    // exp(hi) overflows to inf
  static constexpr float log2e = 1.44269504088896341f;
  static constexpr float ln2_hi = 0.693145751953125f;  // 13 significant bits: n * ln2_hi is exact
  static constexpr float ln2_lo = 1.428606765330187045e-06f;
};

template <>
struct exp_constants<double> {
  static constexpr int degree = 13;
  static constexpr double lo = -746.0;
  static constexpr double hi = 710.0;
  static constexpr double log2e = 1.4426950408889634074;
  static constexpr double ln2_hi = 0.693147180369123816490;  // 32 significant bits
  static constexpr double ln2_lo = 1.90821492927058770002e-10;
};

/// Taylor coefficients base^k / k!, k = 0..Degree, computed at compile time in long double.
template <class T, int Degree>
struct taylor_table {
  std::array<T, Degree + 1> c{};
  constexpr explicit taylor_table(long double base) {
    long double x = 1.0L;
    for (int k = 0; k <= Degree; ++k) {
      if (k > 0) x = x * base / static_cast<long double>(k);
      c[static_cast<std::size_t>(k)] = static_cast<T>(x);
    }
  }
};
template <class T>
inline constexpr taylor_table<T, exp_constants<T>::degree> exp_taylor{1.0L};
template <class T>
inline constexpr taylor_table<T, exp_constants<T>::degree> exp2_taylor{0.693147180559945309417232121458L};

/// Horner evaluation of the polynomial with coefficients `t` at r.
template <class B, class Table>
ATTNKIT_ALWAYS_INLINE B horner(B r, const Table& t) {
  constexpr int n = static_cast<int>(std::tuple_size<decltype(t.c)>::value);
  B p = B::broadcast(t.c[n - 1]);
  for (int k = n - 2; k >= 0; --k) p = fma(p, r, B::broadcast(t.c[static_cast<std::size_t>(k)]));
  return p;
}

}  // namespace detail

/// Returns e^x lane by lane (see the header comment for accuracy and special values).
template <class B>
ATTNKIT_ALWAYS_INLINE B exp(B x) {
  using T = typename B::value_type;
  using C = detail::exp_constants<T>;
  // min/max return their second operand on NaN: x stays NaN.
  x = max(B::broadcast(C::lo), min(B::broadcast(C::hi), x));
  const B n = round_nearest(x * B::broadcast(C::log2e));
  B r = fma(n, B::broadcast(-C::ln2_hi), x);
  r = fma(n, B::broadcast(-C::ln2_lo), r);
  return ldexp(detail::horner(r, detail::exp_taylor<T>), n);
}

/// Returns 2^x lane by lane; the softmax kernels use it with log2(e) folded into the logits.
template <class B>
ATTNKIT_ALWAYS_INLINE B exp2(B x) {
  using T = typename B::value_type;
  using C = detail::exp_constants<T>;
  x = max(B::broadcast(C::lo * C::log2e), min(B::broadcast(C::hi * C::log2e), x));
  const B n = round_nearest(x);
  const B f = x - n;  // exact, |f| <= 1/2
  return ldexp(detail::horner(f, detail::exp2_taylor<T>), n);
}

namespace detail {
/// Near-minimax (relative error) coefficients of 2^f on [-1/2, 1/2], degree 6 for float (max
/// relative error 1.04e-7 in float Horner, ~1.75 x 2^-24) and the Taylor table for double.
template <class T>
struct exp2_softmax_table {
  static constexpr auto& value = exp2_taylor<T>;
};
template <>
struct exp2_softmax_table<float> {
  struct table {
    std::array<float, 7> c;
  };
  static constexpr table value{{1.0f, 0.6931471824645996f, 0.24022646248340607f, 0.05550328642129898f,
                                0.009618489071726799f, 0.0013399930903688073f, 0.0001534581242594868f}};
};

/// 2^x for the arguments a softmax produces: x <= 0, -inf or NaN (any larger x is not clamped and
/// may overflow). One clamp and a degree-6 polynomial: cheaper than exp2 at the same accuracy.
template <class B>
ATTNKIT_ALWAYS_INLINE B exp2_nonpositive(B x) {
  using T = typename B::value_type;
  // -inf -> a power of two below the smallest denormal (2^-160 float, 2^-1100 double) so the result
  // is exactly 0; NaN stays NaN (max returns its second operand on NaN).
  constexpr T lo = std::is_same_v<T, float> ? T(-160) : T(-1100);
  x = max(B::broadcast(lo), x);
  const B n = round_nearest(x);
  return ldexp(horner(x - n, exp2_softmax_table<T>::value), n);
}
}  // namespace detail

/// Scalar conveniences over the same algorithm (scalar batch).
template <class T>
inline T exp_scalar(T x) {
  return exp(simd::batch<T, simd::scalar>{x}).v;
}

/// Returns sum_i a[i] * b[i] over n contiguous elements.
template <class Arch = simd::native, class T>
inline T dot(const T* a, const T* b, index_t n) {
  using B = simd::batch<T, Arch>;
  constexpr int W = B::size;
  B acc0 = B::zero(), acc1 = B::zero();
  index_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    acc0 = fma(B::load(a + i), B::load(b + i), acc0);
    acc1 = fma(B::load(a + i + W), B::load(b + i + W), acc1);
  }
  for (; i + W <= n; i += W) acc0 = fma(B::load(a + i), B::load(b + i), acc0);
  T s = reduce_add(acc0 + acc1);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

/// y[i] = alpha * x[i] + y[i] over n contiguous elements.
template <class Arch = simd::native, class T>
inline void axpy(index_t n, T alpha, const T* x, T* y) {
  using B = simd::batch<T, Arch>;
  constexpr int W = B::size;
  const B a = B::broadcast(alpha);
  index_t i = 0;
  for (; i + W <= n; i += W) fma(a, B::load(x + i), B::load(y + i)).store(y + i);
  for (; i < n; ++i) y[i] += alpha * x[i];
}

ATTNKIT_END_NAMESPACE
