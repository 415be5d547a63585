// attnkit: AVX-512 (F + DQ) batches (16 floats, 8 doubles). Compiled only with -mavx512f -mavx512dq -mfma.
#pragma once

#include "arch.hpp"

#if ATTNKIT_HAS_AVX512
#include <immintrin.h>

ATTNKIT_BEGIN_NAMESPACE
namespace simd {

template <>
struct batch<float, avx512> {
  using value_type = float;
  using mask_type = __mmask16;
  static constexpr int size = 16;
  __m512 v;

  static batch load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static batch broadcast(float x) { return {_mm512_set1_ps(x)}; }
  static batch zero() { return {_mm512_setzero_ps()}; }
  static batch iota() { return {_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  static batch load_partial(const float* p, int n) {
    return {_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p)};
  }
  void store_partial(float* p, int n) const {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), v);
  }

  friend batch operator+(batch a, batch b) { return {_mm512_add_ps(a.v, b.v)}; }
  friend batch operator-(batch a, batch b) { return {_mm512_sub_ps(a.v, b.v)}; }
  friend batch operator*(batch a, batch b) { return {_mm512_mul_ps(a.v, b.v)}; }
  friend batch fma(batch a, batch b, batch c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  friend batch max(batch a, batch b) { return {_mm512_max_ps(a.v, b.v)}; }
  friend batch min(batch a, batch b) { return {_mm512_min_ps(a.v, b.v)}; }
  friend batch round_nearest(batch a) {
    return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
  }
  /// scalef: a * 2^floor(n), saturating to 0 / inf, NaN in -> NaN out.
  friend batch ldexp(batch a, batch n) { return {_mm512_scalef_ps(a.v, n.v)}; }
  friend mask_type operator<=(batch a, batch b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_LE_OQ); }
  friend mask_type operator<(batch a, batch b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ); }
  friend batch select(mask_type m, batch a, batch b) { return {_mm512_mask_blend_ps(m, b.v, a.v)}; }
  friend batch fma_masked(mask_type m, batch a, batch b, batch acc) {
    return {_mm512_mask3_fmadd_ps(a.v, b.v, acc.v, m)};
  }
  friend float reduce_max(batch a) { return _mm512_reduce_max_ps(a.v); }
  friend float reduce_add(batch a) { return _mm512_reduce_add_ps(a.v); }
};

template <>
struct batch<double, avx512> {
  using value_type = double;
  using mask_type = __mmask8;
  static constexpr int size = 8;
  __m512d v;

  static batch load(const double* p) { return {_mm512_loadu_pd(p)}; }
  static batch broadcast(double x) { return {_mm512_set1_pd(x)}; }
  static batch zero() { return {_mm512_setzero_pd()}; }
  static batch iota() { return {_mm512_setr_pd(0, 1, 2, 3, 4, 5, 6, 7)}; }
  void store(double* p) const { _mm512_storeu_pd(p, v); }
  static batch load_partial(const double* p, int n) {
    return {_mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << n) - 1u), p)};
  }
  void store_partial(double* p, int n) const {
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << n) - 1u), v);
  }

  friend batch operator+(batch a, batch b) { return {_mm512_add_pd(a.v, b.v)}; }
  friend batch operator-(batch a, batch b) { return {_mm512_sub_pd(a.v, b.v)}; }
  friend batch operator*(batch a, batch b) { return {_mm512_mul_pd(a.v, b.v)}; }
  friend batch fma(batch a, batch b, batch c) { return {_mm512_fmadd_pd(a.v, b.v, c.v)}; }
  friend batch max(batch a, batch b) { return {_mm512_max_pd(a.v, b.v)}; }
  friend batch min(batch a, batch b) { return {_mm512_min_pd(a.v, b.v)}; }
  friend batch round_nearest(batch a) {
    return {_mm512_roundscale_pd(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
  }
  friend batch ldexp(batch a, batch n) { return {_mm512_scalef_pd(a.v, n.v)}; }
  friend mask_type operator<=(batch a, batch b) { return _mm512_cmp_pd_mask(a.v, b.v, _CMP_LE_OQ); }
  friend mask_type operator<(batch a, batch b) { return _mm512_cmp_pd_mask(a.v, b.v, _CMP_LT_OQ); }
  friend batch select(mask_type m, batch a, batch b) { return {_mm512_mask_blend_pd(m, b.v, a.v)}; }
  friend batch fma_masked(mask_type m, batch a, batch b, batch acc) {
    return {_mm512_mask3_fmadd_pd(a.v, b.v, acc.v, m)};
  }
  friend double reduce_max(batch a) { return _mm512_reduce_max_pd(a.v); }
  friend double reduce_add(batch a) { return _mm512_reduce_add_pd(a.v); }
};

}  // namespace simd
ATTNKIT_END_NAMESPACE
#endif  // ATTNKIT_HAS_AVX512
