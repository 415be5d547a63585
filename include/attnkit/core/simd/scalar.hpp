// attnkit: the portable one-lane batch (no intrinsics). Always available.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "arch.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace simd {

template <class T>
struct batch<T, scalar> {
  static_assert(std::is_floating_point_v<T>, "batch: float or double");
  using value_type = T;
  using mask_type = bool;
  static constexpr int size = 1;
  T v;

  static batch load(const T* p) { return {*p}; }
  static batch broadcast(T x) { return {x}; }
  static batch zero() { return {T(0)}; }
  /// Lane indices 0, 1, ..., size-1.
  static batch iota() { return {T(0)}; }
  void store(T* p) const { *p = v; }
  /// Loads the first n lanes (0 <= n <= size), zeros in the others.
  static batch load_partial(const T* p, int n) { return {n > 0 ? *p : T(0)}; }
  void store_partial(T* p, int n) const {
    if (n > 0) *p = v;
  }

  friend batch operator+(batch a, batch b) { return {a.v + b.v}; }
  friend batch operator-(batch a, batch b) { return {a.v - b.v}; }
  friend batch operator*(batch a, batch b) { return {a.v * b.v}; }
  /// a * b + c: fused when the target has FMA instructions; without them std::fma is a software
  /// emulation dozens of times slower than the kernels can afford, so the product is rounded first.
  friend batch fma(batch a, batch b, batch c) {
#if defined(__FMA__)
    return {std::fma(a.v, b.v, c.v)};
#else
    return {a.v * b.v + c.v};
#endif
  }
  /// max/min return b when either is NaN (as the x86 instructions do).
  friend batch max(batch a, batch b) { return {a.v > b.v ? a.v : b.v}; }
  friend batch min(batch a, batch b) { return {a.v < b.v ? a.v : b.v}; }
  friend batch round_nearest(batch a) { return {std::nearbyint(a.v)}; }
  /// a * 2^n for integral-valued n; saturates to 0 / inf.
  friend batch ldexp(batch a, batch n) {
    const T lim = T(4096);
    const T nn = std::isnan(n.v) ? n.v : std::min(std::max(n.v, -lim), lim);
    if (std::isnan(nn)) return {nn};
    return {std::ldexp(a.v, static_cast<int>(nn))};
  }
  friend mask_type operator<=(batch a, batch b) { return a.v <= b.v; }
  friend mask_type operator<(batch a, batch b) { return a.v < b.v; }
  friend batch select(mask_type m, batch a, batch b) { return {m ? a.v : b.v}; }
  /// acc + a * b in the lanes of m, acc elsewhere (nothing of a or b reaches the other lanes).
  friend batch fma_masked(mask_type m, batch a, batch b, batch acc) { return m ? fma(a, b, acc) : acc; }
  friend T reduce_max(batch a) { return a.v; }
  friend T reduce_add(batch a) { return a.v; }
};

}  // namespace simd
ATTNKIT_END_NAMESPACE
