// attnkit: register-tile transposes between rows (one pointer per row, unit stride) and a column
// panel (element (i, j) at panel[j * ld + i]): the packing of queries into Q^T and the saving and
// loading of column states in the kernels. A W x W tile (W = SIMD width) is W loads, a register
// transpose and W stores; edges and types without a register transpose go element by element.
#pragma once

#include <algorithm>

#include "config.hpp"
#include "simd.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// Transposes the W x W tile src[i][0..W) into dst[j][0..W) (dst[j][i] = src[i][j]). The generic
/// version is elementwise; specializations below use the registers.
template <class Arch, class T>
struct tile_transpose {
  static constexpr int W = simd::batch<T, Arch>::size;
  static void run(const T* const* src, T* const* dst) {
    for (int i = 0; i < W; ++i)
      for (int j = 0; j < W; ++j) dst[j][i] = src[i][j];
  }
};

#if ATTNKIT_HAS_AVX2
template <>
struct tile_transpose<simd::avx2, float> {
  static constexpr int W = 8;
  static void run(const float* const* src, float* const* dst) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src[i]);
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
      r[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
      r[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
      r[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
      r[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int k = 0; k < 4; ++k) {
      t[k] = _mm256_permute2f128_ps(r[k], r[4 + k], 0x20);
      t[4 + k] = _mm256_permute2f128_ps(r[k], r[4 + k], 0x31);
    }
    for (int j = 0; j < 8; ++j) _mm256_storeu_ps(dst[j], t[j]);
  }
};
#endif

#if ATTNKIT_HAS_AVX512
template <>
struct tile_transpose<simd::avx512, float> {
  static constexpr int W = 16;
  static void run(const float* const* src, float* const* dst) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src[i]);
    // 2 x 2 blocks of elements, then of pairs: 4 x 4 transposes inside each 128-bit lane
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
      r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
      r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
      r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
      r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    // then the 4 x 4 grid of 128-bit lanes
    for (int k = 0; k < 4; ++k) {
      t[k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88);
      t[4 + k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xDD);
      t[8 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88);
      t[12 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xDD);
    }
    for (int k = 0; k < 4; ++k) {
      r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
      r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xDD);
      r[4 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0x88);
      r[12 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0xDD);
    }
    for (int j = 0; j < 16; ++j) _mm512_storeu_ps(dst[j], r[j]);
  }
};
#endif

/// Prefetches the cache lines of n contiguous elements at p (for writing: `write`).
template <class T>
inline void prefetch_elements(const T* p, index_t n, bool write = false) {
#if defined(__GNUC__)
  const char* c = reinterpret_cast<const char*>(p);
  const index_t bytes = n * static_cast<index_t>(sizeof(T));
  if (write)
    for (index_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 1, 3);
  else
    for (index_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 0, 3);
#else
  (void)p, (void)n, (void)write;
#endif
}

/// panel[j * ld + i] = row(i)[j] for i < ni, j < nj.
template <class Arch, class T, class Row>
void rows_to_panel(index_t ni, index_t nj, Row&& row, T* panel, index_t ld) {
  using tt = tile_transpose<Arch, T>;
  constexpr int W = tt::W;
  const T* src[W];
  T* dst[W];
  index_t i0 = 0;
  for (; i0 + W <= ni; i0 += W) {
    for (int i = 0; i < W; ++i) src[i] = row(i0 + i);
    // the next tile's rows: rows far apart (a column of a matrix) defeat the hardware prefetchers
    for (index_t i = i0 + W; i < std::min(ni, i0 + 2 * W); ++i) prefetch_elements(row(i), nj);
    index_t j0 = 0;
    for (; j0 + W <= nj; j0 += W) {
      const T* s[W];
      for (int i = 0; i < W; ++i) {
        s[i] = src[i] + j0;
        dst[i] = panel + (j0 + i) * ld + i0;
      }
      tt::run(s, dst);
    }
    for (; j0 < nj; ++j0)
      for (int i = 0; i < W; ++i) panel[j0 * ld + i0 + i] = src[i][j0];
  }
  for (; i0 < ni; ++i0) {
    const T* r = row(i0);
    for (index_t j = 0; j < nj; ++j) panel[j * ld + i0] = r[j];
  }
}

/// row(i)[j] = panel[j * ld + i] for i < ni, j < nj.
template <class Arch, class T, class Row>
void panel_to_rows(index_t ni, index_t nj, const T* panel, index_t ld, Row&& row) {
  using tt = tile_transpose<Arch, T>;
  constexpr int W = tt::W;
  T* dst[W];
  const T* src[W];
  index_t i0 = 0;
  for (; i0 + W <= ni; i0 += W) {
    for (int i = 0; i < W; ++i) dst[i] = row(i0 + i);
    for (index_t i = i0 + W; i < std::min(ni, i0 + 2 * W); ++i) prefetch_elements(row(i), nj, true);
    index_t j0 = 0;
    for (; j0 + W <= nj; j0 += W) {
      T* d[W];
      for (int i = 0; i < W; ++i) {
        d[i] = dst[i] + j0;
        src[i] = panel + (j0 + i) * ld + i0;
      }
      tt::run(src, d);
    }
    for (; j0 < nj; ++j0)
      for (int i = 0; i < W; ++i) dst[i][j0] = panel[j0 * ld + i0 + i];
  }
  for (; i0 < ni; ++i0) {
    T* r = row(i0);
    for (index_t j = 0; j < nj; ++j) r[j] = panel[j * ld + i0];
  }
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
