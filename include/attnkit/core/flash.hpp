// attnkit: the tiled online-softmax engine (docs/design.md §1.2) that exact attention, the
// Combiner and CoAtNet's relative attention run on.
//
// A block of Br "columns" (query rows, packed transposed: Q^T, d x Br, pre-scaled by
// scale * log2(e)) runs over blocks of Bc keys; per key block (flash_step):
//   S^T = K_blk * Q^T          (micro-kernel, K read in place)
//   a hook may change S^T      (a bias, keys hidden from some columns)
//   online softmax per column  (exp2, running max m and sum l, rescale factor alpha)
//   O^T = O^T * alpha + V_blk^T * P^T   (micro-kernel, V read in place; up to two value sources)
// Each column sees the keys [0, key_end); the block straddling a column's key_end is masked so
// that invisible keys (even NaN ones) never reach its output. begin_columns starts a block,
// write_columns writes O / l. The merge of partial states is in softmax.hpp (merged_max,
// merge_weight).
#pragma once

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention_args.hpp"
#include "gemm.hpp"
#include "math.hpp"
#include "softmax.hpp"
#include "transpose.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// Block sizes per element type and ISA: Br = NV * W columns, MR rows per micro-tile (the block
/// products' tiling), Bc keys per step.
template <class T, class Arch>
struct flash_tiling {
  static constexpr int NV = gemm_tiling<T, Arch>::NV;
  static constexpr int MR = gemm_tiling<T, Arch>::MR;
  static constexpr index_t Bc = std::is_same_v<Arch, simd::scalar> ? 64 : 128;
};

/// The state of one column block (Br columns) while it runs over the key blocks: packed Q^T,
/// scores S^T of the current key block, unnormalized output O^T, running max m and sum l.
template <class T>
struct flash_columns {
  tensor<T, 1> qt, st, ot, m, l, alpha, kend, mnew;
  mutable tensor<T, 1> fin, inv;  ///< write_columns' scratch: O^T / l and 1 / l
  std::vector<index_t> col_head, col_query;
  index_t ncols = 0;           ///< columns in use (the rest are zero padding)
  index_t ld = 0;              ///< column stride of qt, st, ot: the active registers' width (see flash_width)
  index_t kmin = 0, kmax = 0;  ///< the smallest and largest key_end of the columns in use
  /// The next flash_step is the block's first and writes every row of O^T its value sources cover
  /// (O^T need not be zeroed: nothing is accumulated onto it).
  bool fresh = false;
  /// (At least one row of Q^T and O^T: a step on registers from v0 > 0 offsets their pointers
  /// even when dk or dv is 0.)
  flash_columns(index_t dk, index_t dv, index_t br, index_t bc)
      : qt({std::max<index_t>(dk, 1) * br}),
        st({bc * br}),
        ot({std::max<index_t>(dv, 1) * br}),
        m({br}),
        l({br}),
        alpha({br}),
        kend({br}),
        mnew({br}),
        fin({std::max<index_t>(dv, 1) * br}),
        inv({br}),
        col_head(static_cast<std::size_t>(br)),
        col_query(static_cast<std::size_t>(br)),
        ld(br) {}
};

/// The column stride (active width) of a block of ncols columns: half the tiling's registers when
/// they hold every column, else all of them. flash_step runs only the active registers.
template <class T, class Arch>
constexpr index_t flash_width(index_t ncols) {
  constexpr index_t W = simd::batch<T, Arch>::size, NV = flash_tiling<T, Arch>::NV, NH = NV / 2;
  return NH >= 1 && ncols <= NH * W ? NH * W : NV * W;
}

/// Per-thread scratch of the tiled kernel (64-byte aligned, reused across tasks): the states of
/// the column blocks one task interleaves.
template <class T>
struct flash_workspace {
  std::vector<flash_columns<T>> blocks;
  flash_workspace(int nblocks, index_t dk, index_t dv, index_t br, index_t bc) {
    blocks.reserve(static_cast<std::size_t>(nblocks));
    for (int i = 0; i < nblocks; ++i) blocks.emplace_back(dk, dv, br, bc);
  }
};

/// Packs the rows row(c)[p * rs] (c < n, p < d), scaled by `scale`, transposed into panel
/// (panel[p * ld + c]); the padding columns [n, ld) are zero. Register-tile transposes when the
/// rows are contiguous.
template <class Arch, class T, class R>
void pack_panel(T* panel, index_t ld, index_t d, index_t n, R&& row, index_t rs, T scale) {
  if (rs == 1) {
    rows_to_panel<Arch, T>(n, d, row, panel, ld);
  } else {
    for (index_t c = 0; c < n; ++c) {
      const T* r = row(c);
      for (index_t p = 0; p < d; ++p) panel[p * ld + c] = r[p * rs];
    }
  }
  for (index_t p = 0; p < d; ++p) {
    T* x = panel + p * ld;
    std::fill(x + n, x + ld, T(0));
    if (scale != T(1))
      for (index_t c = 0; c < n; ++c) x[c] *= scale;
  }
}

/// Packs Q^T of the columns c < n into cb.qt (column stride cb.ld): query row qrow(c) with element
/// stride qs, scaled by qscale; the padding columns [n, cb.ld) are zero.
template <class Arch, class T, class Q>
void pack_queries(flash_columns<T>& cb, index_t dk, index_t n, Q&& qrow, index_t qs, T qscale) {
  pack_panel<Arch>(cb.qt.data(), cb.ld, dk, n, qrow, qs, qscale);
}

/// Starts the block cb over ncols columns: column c sees the keys [0, kend(c)) (kmin and kmax
/// are set from them), its query is qrow(c)[p * qs] (packed and scaled by qscale); m = -inf,
/// l = 0, the active width is flash_width. O^T is the caller's: zero it, or set cb.fresh.
template <class Arch, class T, class Q, class E>
void begin_columns(flash_columns<T>& cb, index_t dk, index_t ncols, Q&& qrow, index_t qs, T qscale,
                   E&& kend) {
  cb.ncols = ncols;
  cb.ld = flash_width<T, Arch>(ncols);
  const index_t ld = cb.ld;
  cb.kmin = ncols > 0 ? std::numeric_limits<index_t>::max() : 0;
  cb.kmax = 0;
  T* ke = cb.kend.data();
  for (index_t c = 0; c < ld; ++c) {
    const index_t e = c < ncols ? kend(c) : 0;
    ke[c] = static_cast<T>(e);
    if (c < ncols) {
      cb.kmin = std::min(cb.kmin, e);
      cb.kmax = std::max(cb.kmax, e);
    }
  }
  pack_queries<Arch>(cb, dk, ncols, qrow, qs, qscale);
  std::fill(cb.m.data(), cb.m.data() + ld, -std::numeric_limits<T>::infinity());
  std::fill(cb.l.data(), cb.l.data() + ld, T(0));
}

/// Writes O / l (+ add, a panel laid out as O^T, when not null) of the columns c < n, rows
/// [e0, e0 + ne) of O^T, to dst(c)[e * ds]; a column that saw no key gets zeros (+ add). The
/// columns are scaled in the panel (contiguous, in cache), then transposed to the rows (register
/// tiles when ds == 1).
template <class Arch, class T, class D>
void write_columns(const flash_columns<T>& cb, index_t e0, index_t ne, index_t n, D&& dst, index_t ds,
                   const T* add = nullptr) {
  using B = simd::batch<T, Arch>;
  const index_t ld = cb.ld;
  T* inv = cb.inv.data();
  T* fin = cb.fin.data();
  for (index_t c = 0; c < ld; ++c) {
    const T l = cb.l.data()[c];
    inv[c] = c < n && l > T(0) ? T(1) / l : T(0);
  }
  const T* ot = cb.ot.data() + e0 * ld;
  for (index_t e = 0; e < ne; ++e)
    for (index_t c = 0; c < ld; c += B::size) {
      B r = B::load(ot + e * ld + c) * B::load(inv + c);
      if (add) r = r + B::load(add + (e0 + e) * ld + c);
      r.store(fin + e * ld + c);
    }
  if (ds == 1) {
    panel_to_rows<Arch, T>(n, ne, fin, ld, dst);
  } else {
    for (index_t c = 0; c < n; ++c) {
      T* d = dst(c);
      for (index_t e = 0; e < ne; ++e) d[e * ds] = fin[e * ld + c];
    }
  }
}

/// One source of values for the product O^T += V_blk^T P^T: `rows` value dimensions read at
/// ptr[j * sj + e * sd] for key j of the block (ptr points at the block's first key), written to
/// the rows [row0, row0 + rows) of O^T. Two sources fill one O^T with two value matrices.
template <class T>
struct value_source {
  const T* ptr;
  index_t sj, sd, rows, row0;
};

/// Consumes one block of nk keys (key j0 + jj of the column block's numbering at kp + jj * sk_j)
/// into the online softmax of the columns of cb: S^T = K_blk Q^T (saturated: saturate_logits);
/// `hook(st)` may then change the scaled logits (add a bias and saturate the sum, set -inf where a
/// key is hidden from a column) when hook_active;
/// keys at or past a column's kend are hidden from it and never reach its output (not even NaN);
/// O^T = O^T alpha + V_blk^T P^T for every value source.
/// The column stride of qt, st and ot is LDV registers (cb.ld == LDV * W); the NA registers from
/// v0 are active (the columns [v0 W, (v0 + NA) W)): the others are left as they are, which is
/// what the step would give them when they see none of its keys (alpha 1, nothing added).
template <class Arch, int NA, int LDV, class T, class Hook>
void flash_step_cols(flash_columns<T>& cb, index_t v0, index_t dk, index_t j0, index_t nk, const T* kp,
                     index_t sk_j, index_t sk_d, const value_source<T>* vs, int nvs, bool hook_active,
                     Hook&& hook) {
  using B = simd::batch<T, Arch>;
  using tiling = flash_tiling<T, Arch>;
  constexpr int W = B::size, NV = tiling::NV, MR = tiling::MR;
  constexpr index_t LD = LDV * W;  // the column stride: cb.ld
  static_assert(NA <= LDV && LDV <= NV, "flash_step: at most the stride's registers");
  const index_t off0 = v0 * W;
  const bool masked = j0 + nk > cb.kmin;  // some column does not see every key of this block
  // The new running max can come out of the product's epilogue only when every logit of the
  // block is final and visible; otherwise a hidden key's logit must not move the shift.
  const bool fused_max = !masked && !hook_active;
  T* st = cb.st.data();
  T* kend = cb.kend.data();
  T* mnew = cb.mnew.data();
  std::copy(cb.m.data() + off0, cb.m.data() + off0 + NA * W, mnew + off0);
  tile_args<T> g1;
  g1.saturate = logit_bound<T>;
  if (fused_max) g1.col_max = mnew + off0;
  // S^T = K_blk * Q^T
  block_product<B, MR, NA, false, false, a_layout::unit_col>(nk, dk, kp, sk_j, sk_d, cb.qt.data() + off0, LD,
                                                             st + off0, LD, g1);
  if (hook_active) hook(st);
  if (masked) {
    const B ninf = B::broadcast(-std::numeric_limits<T>::infinity());
    for (index_t jj = 0; jj < nk; ++jj) {
      const B j = B::broadcast(static_cast<T>(j0 + jj));
      for (int cv = 0; cv < NA; ++cv) {
        T* sp = st + jj * LD + off0 + cv * W;
        select(B::load(kend + off0 + cv * W) <= j, ninf, B::load(sp)).store(sp);  // invisible: key_end <= j
      }
    }
  }
  // Online softmax, one column batch at a time.
  for (int cv = 0; cv < NA; ++cv) {
    const index_t off = off0 + cv * W;
    const B m_old = B::load(cb.m.data() + off);
    B mx = B::load(mnew + off);
    if (!fused_max) {
      B m1 = mx, m2 = mx, m3 = mx;  // independent chains hide the latency of max
      index_t jj = 0;
      for (; jj + 4 <= nk; jj += 4) {
        mx = max(mx, B::load(st + jj * LD + off));
        m1 = max(m1, B::load(st + (jj + 1) * LD + off));
        m2 = max(m2, B::load(st + (jj + 2) * LD + off));
        m3 = max(m3, B::load(st + (jj + 3) * LD + off));
      }
      for (; jj < nk; ++jj) mx = max(mx, B::load(st + jj * LD + off));
      mx = max(max(mx, m1), max(m2, m3));
    }
    const B sh = online_softmax_batch<B>::shift(mx);
    B sum0 = B::zero(), sum1 = B::zero();
    index_t jj = 0;
    for (; jj + 2 <= nk; jj += 2) {
      const B p0 = exp2_nonpositive(B::load(st + jj * LD + off) - sh);
      const B p1 = exp2_nonpositive(B::load(st + (jj + 1) * LD + off) - sh);
      p0.store(st + jj * LD + off);
      p1.store(st + (jj + 1) * LD + off);
      sum0 = sum0 + p0;
      sum1 = sum1 + p1;
    }
    if (jj < nk) {
      const B p0 = exp2_nonpositive(B::load(st + jj * LD + off) - sh);
      p0.store(st + jj * LD + off);
      sum0 = sum0 + p0;
    }
    const B alpha = exp2_nonpositive(m_old - sh);
    alpha.store(cb.alpha.data() + off);
    fma(B::load(cb.l.data() + off), alpha, sum0 + sum1).store(cb.l.data() + off);
    mx.store(cb.m.data() + off);
  }
  // O^T = O^T * alpha + V_blk^T * P^T (the first step: O^T = V_blk^T * P^T)
  tile_args<T> args;
  args.col_scale = cb.alpha.data() + off0;
  const bool fresh = cb.fresh;
  cb.fresh = false;
  using yes = std::true_type;
  using no = std::false_type;
  auto product = [&](auto accumulate, auto masked_keys, const value_source<T>& v, T* ot) {
    block_product<B, MR, NA, decltype(accumulate)::value, decltype(masked_keys)::value, a_layout::unit_row>(
        v.rows, nk, v.ptr, v.sd, v.sj, st + off0, LD, ot + off0, LD, args);
  };
  if (masked) {
    args.col_limit = kend + off0;
    args.row_base = static_cast<T>(j0);
  }
  for (int i = 0; i < nvs; ++i) {
    T* ot = cb.ot.data() + vs[i].row0 * LD;
    if (masked)
      fresh ? product(no{}, yes{}, vs[i], ot) : product(yes{}, yes{}, vs[i], ot);
    else
      fresh ? product(no{}, no{}, vs[i], ot) : product(yes{}, no{}, vs[i], ot);
  }
}

/// flash_step over the column registers [v0, v1) (default: all), whatever the block's width. A
/// step that leaves out the registers whose columns see none of its keys costs what it computes,
/// and leaves those columns as the whole step would (used on causal diagonals: docs/design.md §1.2).
template <class Arch, class T, class Hook>
void flash_step(flash_columns<T>& cb, index_t dk, index_t j0, index_t nk, const T* kp, index_t sk_j,
                index_t sk_d, const value_source<T>* vs, int nvs, bool hook_active, Hook&& hook,
                index_t v0 = 0, index_t v1 = -1) {
  constexpr int W = simd::batch<T, Arch>::size, NV = flash_tiling<T, Arch>::NV, NH = NV / 2;
  const index_t nreg = cb.ld / W;
  if (std::is_same_v<Arch, simd::scalar> || cb.fresh || v1 < 0 || v0 < 0 || v0 >= v1 || v1 > nreg) {
    v0 = 0;  // all registers
    v1 = nreg;
  }
  auto run = [&](auto na, auto ldv) {
    flash_step_cols<Arch, decltype(na)::value, decltype(ldv)::value>(cb, v0, dk, j0, nk, kp, sk_j, sk_d, vs,
                                                                     nvs, hook_active, hook);
  };
  // the active registers, one instantiation per count (at most 4 on the vector ISAs)
  auto part = [&](auto ldv) {
    constexpr int L = decltype(ldv)::value;
    const index_t na = v1 - v0;
    if constexpr (!std::is_same_v<Arch, simd::scalar>) {
      static_assert(L <= 4, "flash_step: register counts written for at most 4");
      if constexpr (L >= 2)
        if (na == 1) return run(std::integral_constant<int, 1>{}, ldv);
      if constexpr (L >= 3)
        if (na == 2) return run(std::integral_constant<int, 2>{}, ldv);
      if constexpr (L >= 4)
        if (na == 3) return run(std::integral_constant<int, 3>{}, ldv);
    }
    (void)na;
    run(ldv, ldv);
  };
  // A block of at most half the columns (short Combiner lines, the last block of a sequence) costs half.
  if constexpr (NH >= 1 && NH < NV) {
    if (cb.ld == NH * W) return part(std::integral_constant<int, NH>{});
  }
  part(std::integral_constant<int, NV>{});
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
