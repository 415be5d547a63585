// attnkit: register-blocked block products for the attention kernels.
//
// The micro-kernel computes an MR x (NV*W) tile of C = A * Bp, where A is read in place through
// arbitrary strides (one broadcast per element) and Bp is a packed panel whose rows are contiguous
// (NV vector loads per step). In the attention kernels the queries are the packed vector dimension,
// so K and V are consumed straight from the caller's memory without any packing:
//   scores^T [keys x queries]   = K        [keys x d]   * Q^T [d x queries]
//   out^T    [dv x queries]    += V^T      [dv x keys]  * P^T [keys x queries]
// Eigen's GEMM is not used here: for these block shapes (k = 64..128, one pass) its packing costs
// more than the product; see bench/bench_attention.cpp for the measured comparison (reference).
#pragma once

#include <type_traits>

#include "config.hpp"
#include "simd.hpp"
#include "tensor.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// Epilogue and masking of one micro-kernel call.
template <class T>
struct tile_args {
  /// Accumulate: C = C * col_scale[col] + A*B (col_scale may be null: factor 1). Else C = A*B.
  const T* col_scale = nullptr;
  /// Masked: the product term of step p reaches column col only when row_base + p < col_limit[col],
  /// and nothing of A or B (not even NaN) reaches the other columns.
  const T* col_limit = nullptr;
  T row_base = T(0);
  /// Not accumulating: col_max[col] = max(col_max[col], max_r C[r][col]) (may be null: skipped).
  T* col_max = nullptr;
  /// Not accumulating, when > 0: C is saturated to [-saturate, saturate] before col_max and the
  /// store, NaN to -saturate (logits: see saturate_logits in softmax.hpp).
  T saturate = T(0);
};

/// How A is addressed: unit_col (a_cs == 1: rows of A are contiguous, e.g. K rows),
/// unit_row (a_rs == 1: columns of A are contiguous, e.g. V^T read from V rows), or general.
enum class a_layout { general, unit_col, unit_row };

/// C[r][0..NV*W) (r < MR) = epilogue(sum_{p < kc} A(r, p) * Bp[p][...]), A(r, p) = a[r*a_rs + p*a_cs].
template <class B, int MR, int NV, bool Accumulate, bool Masked, a_layout L>
ATTNKIT_ALWAYS_INLINE void micro_kernel(index_t kc, const typename B::value_type* a, index_t a_rs,
                                        index_t a_cs, const typename B::value_type* bp, index_t ldb,
                                        typename B::value_type* c, index_t ldc,
                                        const tile_args<typename B::value_type>& args) {
  using T = typename B::value_type;
  constexpr int W = B::size;
  B acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = B::zero();
  B lim[Masked ? NV : 1];
  if constexpr (Masked)
    for (int v = 0; v < NV; ++v) lim[v] = B::load(args.col_limit + v * W);
  const T* ar[MR];
  for (int r = 0; r < MR; ++r) ar[r] = a + r * a_rs;
  // The broadcast operand A(r, p) in the addressing the layout allows the compiler to use best.
  auto a_at = [&](int r, index_t p) -> T {
    if constexpr (L == a_layout::unit_col)
      return ar[r][p];
    else if constexpr (L == a_layout::unit_row)
      return a[p * a_cs + r];
    else
      return ar[r][p * a_cs];
  };
#pragma GCC unroll 4
  for (index_t p = 0; p < kc; ++p) {
    B bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = B::load(bp + p * ldb + v * W);
    if constexpr (Masked) {
      typename B::mask_type m[NV];
      const B row = B::broadcast(args.row_base + static_cast<T>(p));
      for (int v = 0; v < NV; ++v) m[v] = row < lim[v];
      for (int r = 0; r < MR; ++r) {
        const B x = B::broadcast(a_at(r, p));
        for (int v = 0; v < NV; ++v) acc[r][v] = fma_masked(m[v], x, bv[v], acc[r][v]);
      }
    } else {
      for (int r = 0; r < MR; ++r) {
        const B x = B::broadcast(a_at(r, p));
        for (int v = 0; v < NV; ++v) acc[r][v] = fma(x, bv[v], acc[r][v]);
      }
    }
  }
  if constexpr (!Accumulate) {
    if (args.saturate > T(0)) {
      // max(x, -s) returns -s for a NaN x (the x86 operand order, kept by every batch)
      const B lo = B::broadcast(-args.saturate), hi = B::broadcast(args.saturate);
      for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = min(max(acc[r][v], lo), hi);
    }
    if (args.col_max) {
      for (int v = 0; v < NV; ++v) {
        B m = acc[0][v];
        for (int r = 1; r < MR; ++r) m = max(m, acc[r][v]);
        max(B::load(args.col_max + v * W), m).store(args.col_max + v * W);
      }
    }
  }
  if constexpr (Accumulate) {
    // Read the scale once into registers: stores to C could alias args for the compiler.
    if (const T* cs = args.col_scale) {
      B scale[NV];
      for (int v = 0; v < NV; ++v) scale[v] = B::load(cs + v * W);
      for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = fma(B::load(c + r * ldc + v * W), scale[v], acc[r][v]);
    } else {
      for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = B::load(c + r * ldc + v * W) + acc[r][v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v].store(c + r * ldc + v * W);
}

/// The same over `rows` rows (any count): full MR tiles, then the remainder (< MR rows) as tiles of
/// 4, 2 and 1 rows. Power-of-two remainder tiles keep the accumulators in registers with at most
/// three extra instantiations per kernel (one per remainder size would need MR - 1).
template <class B, int MR, int NV, bool Accumulate, bool Masked, a_layout L>
inline void block_product_impl(index_t rows, index_t kc, const typename B::value_type* a, index_t a_rs,
                               index_t a_cs, const typename B::value_type* bp, index_t ldb,
                               typename B::value_type* c, index_t ldc,
                               const tile_args<typename B::value_type>& args) {
  index_t r0 = 0;
  for (; r0 + MR <= rows; r0 += MR)
    micro_kernel<B, MR, NV, Accumulate, Masked, L>(kc, a + r0 * a_rs, a_rs, a_cs, bp, ldb, c + r0 * ldc, ldc,
                                                   args);
  auto tail = [&](auto n) {
    constexpr int N = decltype(n)::value;
    if constexpr (N < MR) {
      if (rows - r0 >= N) {
        micro_kernel<B, N, NV, Accumulate, Masked, L>(kc, a + r0 * a_rs, a_rs, a_cs, bp, ldb, c + r0 * ldc,
                                                      ldc, args);
        r0 += N;
      }
    }
  };
  static_assert(MR <= 8, "block_product: remainder tiles cover MR <= 8");
  tail(std::integral_constant<int, 4>{});
  tail(std::integral_constant<int, 2>{});
  tail(std::integral_constant<int, 1>{});
}

/// C (rows x NV*W, row stride ldc) = epilogue(A * Bp) with A(r, p) = a[r*a_rs + p*a_cs] for any
/// strides, Bp (kc x NV*W) packed with row stride ldb. See tile_args for the epilogue and masking.
/// A is addressed with the specialized layout Fast when its strides allow it, else generally (two
/// instantiations per call site, not three: each call site has one layout its callers normally use).
template <class B, int MR, int NV, bool Accumulate, bool Masked, a_layout Fast>
inline void block_product(index_t rows, index_t kc, const typename B::value_type* a, index_t a_rs,
                          index_t a_cs, const typename B::value_type* bp, index_t ldb,
                          typename B::value_type* c, index_t ldc,
                          const tile_args<typename B::value_type>& args) {
  static_assert(Fast != a_layout::general, "block_product: Fast names a specialized layout");
  const bool fast = Fast == a_layout::unit_col ? a_cs == 1 : a_rs == 1;
  if (fast)
    block_product_impl<B, MR, NV, Accumulate, Masked, Fast>(rows, kc, a, a_rs, a_cs, bp, ldb, c, ldc, args);
  else
    block_product_impl<B, MR, NV, Accumulate, Masked, a_layout::general>(rows, kc, a, a_rs, a_cs, bp, ldb, c,
                                                                         ldc, args);
}

/// Register tiling of the block products per element type and ISA: MR rows by NV vectors per
/// micro-tile (the exact-attention engine, core/flash.hpp, uses the same shape).
template <class T, class Arch>
struct gemm_tiling {
  static constexpr int NV = 3;
  static constexpr int MR = 4;
};
template <class T>
struct gemm_tiling<T, simd::scalar> {
  static constexpr int NV = 8;
  static constexpr int MR = 4;
};
template <class T>
struct gemm_tiling<T, simd::avx512> {
  static constexpr int NV = 4;
  static constexpr int MR = 6;
};

/// The general block product: C (rows x ncols, row stride ldc) = [C +] A * Bp with
/// A(r, p) = a[r * a_rs + p * a_cs] for any strides and Bp (kc x ncols) packed with row stride
/// ldb, ncols a multiple of the register width. Column chunks of the tiling's NV registers, then
/// narrower ones (4, 3, 2, 1 registers); A is addressed by the layout its strides allow.
/// col_max (optional, not accumulating): col_max[c] = max(col_max[c], max_r C[r][c]).
/// Lambda, CoAtNet's convolutions and FAVOR+ run on it.
template <class Arch, bool Accumulate, class T>
void panel_product(index_t rows, index_t kc, const T* a, index_t a_rs, index_t a_cs, const T* bp, index_t ldb,
                   T* c, index_t ldc, index_t ncols, T* col_max = nullptr) {
  using B = simd::batch<T, Arch>;
  constexpr int W = B::size, NV = gemm_tiling<T, Arch>::NV, MR = gemm_tiling<T, Arch>::MR;
  tile_args<T> args{};
  index_t c0 = 0;
  auto chunk = [&](auto nv) {
    constexpr int N = decltype(nv)::value;
    if (col_max) args.col_max = col_max + c0;
    if (a_cs == 1)
      block_product_impl<B, MR, N, Accumulate, false, a_layout::unit_col>(rows, kc, a, a_rs, a_cs, bp + c0,
                                                                          ldb, c + c0, ldc, args);
    else if (a_rs == 1)
      block_product_impl<B, MR, N, Accumulate, false, a_layout::unit_row>(rows, kc, a, a_rs, a_cs, bp + c0,
                                                                          ldb, c + c0, ldc, args);
    else
      block_product_impl<B, MR, N, Accumulate, false, a_layout::general>(rows, kc, a, a_rs, a_cs, bp + c0,
                                                                         ldb, c + c0, ldc, args);
    c0 += N * W;
  };
  while (c0 + NV * W <= ncols) chunk(std::integral_constant<int, NV>{});
  if constexpr (NV > 4)
    while (c0 + 4 * W <= ncols) chunk(std::integral_constant<int, 4>{});
  if constexpr (NV > 3)
    if (c0 + 3 * W <= ncols) chunk(std::integral_constant<int, 3>{});
  if constexpr (NV > 2)
    if (c0 + 2 * W <= ncols) chunk(std::integral_constant<int, 2>{});
  if constexpr (NV > 1)
    if (c0 + W <= ncols) chunk(std::integral_constant<int, 1>{});
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
