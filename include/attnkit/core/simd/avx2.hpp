// attnkit: AVX2 + FMA batches (8 floats, 4 doubles). Compiled only with -mavx2 -mfma.
#pragma once

#include "arch.hpp"

#if ATTNKIT_HAS_AVX2
#include <immintrin.h>

#include <cstdint>

ATTNKIT_BEGIN_NAMESPACE
namespace simd {

namespace detail_avx2 {
inline __m256i tail_mask32(int n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
}
inline __m256i tail_mask64(int n) {
  const __m256i idx = _mm256_setr_epi64x(0, 1, 2, 3);
  return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), idx);
}
}  // namespace detail_avx2

template <>
struct batch<float, avx2> {
  using value_type = float;
  using mask_type = __m256;
  static constexpr int size = 8;
  __m256 v;

  static batch load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static batch broadcast(float x) { return {_mm256_set1_ps(x)}; }
  static batch zero() { return {_mm256_setzero_ps()}; }
  static batch iota() { return {_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7)}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  static batch load_partial(const float* p, int n) {
    return {_mm256_maskload_ps(p, detail_avx2::tail_mask32(n))};
  }
  void store_partial(float* p, int n) const { _mm256_maskstore_ps(p, detail_avx2::tail_mask32(n), v); }

  friend batch operator+(batch a, batch b) { return {_mm256_add_ps(a.v, b.v)}; }
  friend batch operator-(batch a, batch b) { return {_mm256_sub_ps(a.v, b.v)}; }
  friend batch operator*(batch a, batch b) { return {_mm256_mul_ps(a.v, b.v)}; }
  friend batch fma(batch a, batch b, batch c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  friend batch max(batch a, batch b) { return {_mm256_max_ps(a.v, b.v)}; }
  friend batch min(batch a, batch b) { return {_mm256_min_ps(a.v, b.v)}; }
  friend batch round_nearest(batch a) {
    return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
  }
  friend batch ldexp(batch a, batch n) {
    // 2^n as two factors 2^(n/2) and 2^(n - n/2), each a normal number for |n| <= 250.
    const __m256 lim = _mm256_set1_ps(250.f);
    const __m256 nc = _mm256_min_ps(_mm256_max_ps(n.v, _mm256_sub_ps(_mm256_setzero_ps(), lim)), lim);
    const __m256i ni = _mm256_cvtps_epi32(nc);
    const __m256i n1 = _mm256_srai_epi32(ni, 1);
    const __m256i n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    const __m256 r = _mm256_mul_ps(_mm256_mul_ps(a.v, f1), f2);
    // NaN exponent -> NaN.
    return {_mm256_blendv_ps(r, n.v, _mm256_cmp_ps(n.v, n.v, _CMP_UNORD_Q))};
  }
  friend mask_type operator<=(batch a, batch b) { return _mm256_cmp_ps(a.v, b.v, _CMP_LE_OQ); }
  friend mask_type operator<(batch a, batch b) { return _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ); }
  friend batch select(mask_type m, batch a, batch b) { return {_mm256_blendv_ps(b.v, a.v, m)}; }
  friend batch fma_masked(mask_type m, batch a, batch b, batch acc) {
    return {_mm256_blendv_ps(acc.v, _mm256_fmadd_ps(a.v, b.v, acc.v), m)};
  }
  friend float reduce_max(batch a) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
  }
  friend float reduce_add(batch a) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
  }
};

template <>
struct batch<double, avx2> {
  using value_type = double;
  using mask_type = __m256d;
  static constexpr int size = 4;
  __m256d v;

  static batch load(const double* p) { return {_mm256_loadu_pd(p)}; }
  static batch broadcast(double x) { return {_mm256_set1_pd(x)}; }
  static batch zero() { return {_mm256_setzero_pd()}; }
  static batch iota() { return {_mm256_setr_pd(0, 1, 2, 3)}; }
  void store(double* p) const { _mm256_storeu_pd(p, v); }
  static batch load_partial(const double* p, int n) {
    return {_mm256_maskload_pd(p, detail_avx2::tail_mask64(n))};
  }
  void store_partial(double* p, int n) const { _mm256_maskstore_pd(p, detail_avx2::tail_mask64(n), v); }

  friend batch operator+(batch a, batch b) { return {_mm256_add_pd(a.v, b.v)}; }
  friend batch operator-(batch a, batch b) { return {_mm256_sub_pd(a.v, b.v)}; }
  friend batch operator*(batch a, batch b) { return {_mm256_mul_pd(a.v, b.v)}; }
  friend batch fma(batch a, batch b, batch c) { return {_mm256_fmadd_pd(a.v, b.v, c.v)}; }
  friend batch max(batch a, batch b) { return {_mm256_max_pd(a.v, b.v)}; }
  friend batch min(batch a, batch b) { return {_mm256_min_pd(a.v, b.v)}; }
  friend batch round_nearest(batch a) {
    return {_mm256_round_pd(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
  }
  friend batch ldexp(batch a, batch n) {
    const __m256d lim = _mm256_set1_pd(2000.0);
    const __m256d nc = _mm256_min_pd(_mm256_max_pd(n.v, _mm256_sub_pd(_mm256_setzero_pd(), lim)), lim);
    const __m256i ni = _mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(nc));
    // Arithmetic shift right by one of 64-bit lanes (AVX2 has none): n1 = floor(n/2) via the 32-bit view.
    const __m256i n1 = _mm256_cvtepi32_epi64(_mm_srai_epi32(_mm256_cvtpd_epi32(nc), 1));
    const __m256i n2 = _mm256_sub_epi64(ni, n1);
    const __m256i bias = _mm256_set1_epi64x(1023);
    const __m256d f1 = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_add_epi64(n1, bias), 52));
    const __m256d f2 = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_add_epi64(n2, bias), 52));
    const __m256d r = _mm256_mul_pd(_mm256_mul_pd(a.v, f1), f2);
    return {_mm256_blendv_pd(r, n.v, _mm256_cmp_pd(n.v, n.v, _CMP_UNORD_Q))};
  }
  friend mask_type operator<=(batch a, batch b) { return _mm256_cmp_pd(a.v, b.v, _CMP_LE_OQ); }
  friend mask_type operator<(batch a, batch b) { return _mm256_cmp_pd(a.v, b.v, _CMP_LT_OQ); }
  friend batch select(mask_type m, batch a, batch b) { return {_mm256_blendv_pd(b.v, a.v, m)}; }
  friend batch fma_masked(mask_type m, batch a, batch b, batch acc) {
    return {_mm256_blendv_pd(acc.v, _mm256_fmadd_pd(a.v, b.v, acc.v), m)};
  }
  friend double reduce_max(batch a) {
    __m128d x = _mm_max_pd(_mm256_castpd256_pd128(a.v), _mm256_extractf128_pd(a.v, 1));
    x = _mm_max_sd(x, _mm_unpackhi_pd(x, x));
    return _mm_cvtsd_f64(x);
  }
  friend double reduce_add(batch a) {
    __m128d x = _mm_add_pd(_mm256_castpd256_pd128(a.v), _mm256_extractf128_pd(a.v, 1));
    x = _mm_add_sd(x, _mm_unpackhi_pd(x, x));
    return _mm_cvtsd_f64(x);
  }
};

}  // namespace simd
ATTNKIT_END_NAMESPACE
#endif  // ATTNKIT_HAS_AVX2
