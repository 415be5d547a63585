// attnkit: the tiled exact-attention kernel (online softmax, no Lq x Lk buffer).
//
// Work is split into tasks (batch b, kv head, block of Br "columns"). A column is one query row of
// one head; the G = H/Hkv heads sharing a kv head are interleaved (column = i*G + g), so K and V
// are read once for all of them. Per task, queries are packed transposed (Q^T, d x Br, pre-scaled
// by scale*log2(e)), and for each block of Bc keys:
//   S^T = K_blk * Q^T          (micro-kernel, K read in place)
//   online softmax per column  (exp2, running max m and sum l, rescale factor alpha)
//   O^T = O^T * alpha + V_blk^T * P^T   (micro-kernel, V read in place)
// Each column sees the keys [0, key_end); key blocks past the last column's end are never touched,
// and the block straddling a causal diagonal is masked so that invisible keys (even NaN ones) never
// reach an output.
#pragma once

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "../../core/attention_args.hpp"
#include "../../core/gemm.hpp"
#include "../../core/math.hpp"
#include "../../core/parallel.hpp"
#include "../../core/softmax.hpp"
#include "../../core/transpose.hpp"
#include "../options.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// Block sizes per element type and ISA: Br = NV * W columns, MR rows per micro-tile, Bc keys.
template <class T, class Arch>
struct flash_tiling {
  static constexpr int NV = 3;
  static constexpr int MR = 4;
  static constexpr index_t Bc = 128;
};
template <class T>
struct flash_tiling<T, simd::scalar> {
  static constexpr int NV = 8;
  static constexpr int MR = 4;
  static constexpr index_t Bc = 64;
};
template <class T>
struct flash_tiling<T, simd::avx512> {
  static constexpr int NV = 4;
  static constexpr int MR = 6;
  static constexpr index_t Bc = 128;
};

/// The state of one column block (Br columns) while it runs over the key blocks: packed Q^T,
/// scores S^T of the current key block, unnormalized output O^T, running max m and sum l.
template <class T>
struct flash_columns {
  tensor<T, 1> qt, st, ot, m, l, alpha, kend, mnew;
  std::vector<index_t> col_head, col_query;
  index_t ncols = 0;           ///< columns in use (the rest are zero padding)
  index_t ld = 0;              ///< column stride of qt, st, ot: the active registers' width (see flash_width)
  index_t kmin = 0, kmax = 0;  ///< the smallest and largest key_end of the columns in use
  /// The next flash_step is the block's first and writes every row of O^T its value sources cover
  /// (O^T need not be zeroed: nothing is accumulated onto it).
  bool fresh = false;
  flash_columns(index_t dk, index_t dv, index_t br, index_t bc)
      : qt({dk * br}),
        st({bc * br}),
        ot({dv * br}),
        m({br}),
        l({br}),
        alpha({br}),
        kend({br}),
        mnew({br}),
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

/// Packs Q^T of the columns c < n into cb.qt (column stride cb.ld): query row qrow(c) with element
/// stride qs, scaled by qscale; the padding columns [n, cb.ld) are zero. Register-tile transposes
/// when the rows are contiguous.
template <class Arch, class T, class Q>
void pack_queries(flash_columns<T>& cb, index_t dk, index_t n, Q&& qrow, index_t qs, T qscale) {
  T* qt = cb.qt.data();
  const index_t ld = cb.ld;
  if (qs == 1) {
    rows_to_panel<Arch, T>(n, dk, qrow, qt, ld);
  } else {
    for (index_t c = 0; c < n; ++c) {
      const T* qr = qrow(c);
      for (index_t p = 0; p < dk; ++p) qt[p * ld + c] = qr[p * qs];
    }
  }
  for (index_t p = 0; p < dk; ++p) {
    T* row = qt + p * ld;
    std::fill(row + n, row + ld, T(0));
    for (index_t c = 0; c < n; ++c) row[c] *= qscale;
  }
}

/// Writes O / l of the columns c < n (rows [e0, e0 + ne) of O^T) to dst(c)[e * ds]; a column that
/// saw no key gets zeros. Register-tile transposes when ds == 1.
template <class Arch, class T, class D>
void write_columns(const flash_columns<T>& cb, index_t e0, index_t ne, index_t n, D&& dst, index_t ds) {
  const T* ot = cb.ot.data() + e0 * cb.ld;
  if (ds == 1) panel_to_rows<Arch, T>(n, ne, ot, cb.ld, dst);
  for (index_t c = 0; c < n; ++c) {
    const T l = cb.l.data()[c];
    const T inv = l > T(0) ? T(1) / l : T(0);
    T* d = dst(c);
    if (ds == 1)
      for (index_t e = 0; e < ne; ++e) d[e] *= inv;
    else
      for (index_t e = 0; e < ne; ++e) d[e * ds] = ot[e * cb.ld + c] * inv;
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
/// NA of the tiling's NV column registers are active (cb.ncols <= NA * W == cb.ld, the column
/// stride of qt, st and ot).
template <class Arch, int NA, class T, class Hook>
void flash_step_cols(flash_columns<T>& cb, index_t dk, index_t j0, index_t nk, const T* kp, index_t sk_j,
                     index_t sk_d, const value_source<T>* vs, int nvs, bool hook_active, Hook&& hook) {
  using B = simd::batch<T, Arch>;
  using tiling = flash_tiling<T, Arch>;
  constexpr int W = B::size, NV = tiling::NV, MR = tiling::MR;
  constexpr index_t Br = NA * W;  // the column stride: cb.ld
  static_assert(NA <= NV, "flash_step: at most NV registers");
  const bool masked = j0 + nk > cb.kmin;  // some column does not see every key of this block
  // The new running max can come out of the product's epilogue only when every logit of the
  // block is final and visible; otherwise a hidden key's logit must not move the shift.
  const bool fused_max = !masked && !hook_active;
  T* st = cb.st.data();
  T* kend = cb.kend.data();
  T* mnew = cb.mnew.data();
  std::copy(cb.m.data(), cb.m.data() + Br, mnew);
  tile_args<T> g1;
  g1.saturate = logit_bound<T>;
  if (fused_max) g1.col_max = mnew;
  // S^T = K_blk * Q^T
  block_product<B, MR, NA, false, false, a_layout::unit_col>(nk, dk, kp, sk_j, sk_d, cb.qt.data(), Br, st, Br,
                                                             g1);
  if (hook_active) hook(st);
  if (masked) {
    const B ninf = B::broadcast(-std::numeric_limits<T>::infinity());
    for (index_t jj = 0; jj < nk; ++jj) {
      const B j = B::broadcast(static_cast<T>(j0 + jj));
      for (int cv = 0; cv < NA; ++cv) {
        T* sp = st + jj * Br + cv * W;
        select(B::load(kend + cv * W) <= j, ninf, B::load(sp)).store(sp);  // invisible: key_end <= j
      }
    }
  }
  // Online softmax, one column batch at a time.
  for (int cv = 0; cv < NA; ++cv) {
    const index_t off = cv * W;
    const B m_old = B::load(cb.m.data() + off);
    B mx = B::load(mnew + off);
    if (!fused_max) {
      B m1 = mx, m2 = mx, m3 = mx;  // independent chains hide the latency of max
      index_t jj = 0;
      for (; jj + 4 <= nk; jj += 4) {
        mx = max(mx, B::load(st + jj * Br + off));
        m1 = max(m1, B::load(st + (jj + 1) * Br + off));
        m2 = max(m2, B::load(st + (jj + 2) * Br + off));
        m3 = max(m3, B::load(st + (jj + 3) * Br + off));
      }
      for (; jj < nk; ++jj) mx = max(mx, B::load(st + jj * Br + off));
      mx = max(max(mx, m1), max(m2, m3));
    }
    const B sh = online_softmax_batch<B>::shift(mx);
    B sum0 = B::zero(), sum1 = B::zero();
    index_t jj = 0;
    for (; jj + 2 <= nk; jj += 2) {
      const B p0 = exp2_nonpositive(B::load(st + jj * Br + off) - sh);
      const B p1 = exp2_nonpositive(B::load(st + (jj + 1) * Br + off) - sh);
      p0.store(st + jj * Br + off);
      p1.store(st + (jj + 1) * Br + off);
      sum0 = sum0 + p0;
      sum1 = sum1 + p1;
    }
    if (jj < nk) {
      const B p0 = exp2_nonpositive(B::load(st + jj * Br + off) - sh);
      p0.store(st + jj * Br + off);
      sum0 = sum0 + p0;
    }
    const B alpha = exp2_nonpositive(m_old - sh);
    alpha.store(cb.alpha.data() + off);
    fma(B::load(cb.l.data() + off), alpha, sum0 + sum1).store(cb.l.data() + off);
    mx.store(cb.m.data() + off);
  }
  // O^T = O^T * alpha + V_blk^T * P^T (the first step: O^T = V_blk^T * P^T)
  tile_args<T> args;
  args.col_scale = cb.alpha.data();
  const bool fresh = cb.fresh;
  cb.fresh = false;
  using yes = std::true_type;
  using no = std::false_type;
  auto product = [&](auto accumulate, auto masked_keys, const value_source<T>& v, T* ot) {
    block_product<B, MR, NA, decltype(accumulate)::value, decltype(masked_keys)::value, a_layout::unit_row>(
        v.rows, nk, v.ptr, v.sd, v.sj, st, Br, ot, Br, args);
  };
  if (masked) {
    args.col_limit = kend;
    args.row_base = static_cast<T>(j0);
  }
  for (int i = 0; i < nvs; ++i) {
    T* ot = cb.ot.data() + vs[i].row0 * Br;
    if (masked)
      fresh ? product(no{}, yes{}, vs[i], ot) : product(yes{}, yes{}, vs[i], ot);
    else
      fresh ? product(no{}, no{}, vs[i], ot) : product(yes{}, no{}, vs[i], ot);
  }
}

template <class Arch, class T, class Hook>
void flash_step(flash_columns<T>& cb, index_t dk, index_t j0, index_t nk, const T* kp, index_t sk_j,
                index_t sk_d, const value_source<T>* vs, int nvs, bool hook_active, Hook&& hook) {
  constexpr int W = simd::batch<T, Arch>::size, NV = flash_tiling<T, Arch>::NV, NH = NV / 2;
  // A block of at most half the columns (short Combiner lines, the last block of a sequence) costs half.
  if constexpr (NH >= 1 && NH < NV) {
    if (cb.ld == NH * W) {
      flash_step_cols<Arch, NH>(cb, dk, j0, nk, kp, sk_j, sk_d, vs, nvs, hook_active, hook);
      return;
    }
  }
  flash_step_cols<Arch, NV>(cb, dk, j0, nk, kp, sk_j, sk_d, vs, nvs, hook_active, hook);
}

/// One task of the tiled kernel: the column blocks [col0, col0 + nblk * Br) of (b, hkv) (clipped
/// to the columns that exist). The blocks advance through the key blocks together, so each block
/// of K and V is brought into the cache once for all of them. Every column's arithmetic is the
/// same whatever the number of blocks a task holds.
template <class Arch, class T>
class flash_task {
 public:
  using B = simd::batch<T, Arch>;
  using tiling = flash_tiling<T, Arch>;
  static constexpr int W = B::size;
  static constexpr int NV = tiling::NV;
  static constexpr int MR = tiling::MR;
  static constexpr index_t Br = NV * W;
  static constexpr index_t Bc = tiling::Bc;

  flash_task(const attention_shape& s, const tensor_view<const T, 4>& q, const tensor_view<const T, 4>& k,
             const tensor_view<const T, 4>& v, const tensor_view<T, 4>& out,
             const tensor_view<const float, 4>& bias, const mask& msk, T qscale)
      : s_(s), q_(q), k_(k), v_(v), out_(out), bias_(bias), msk_(msk), qscale_(qscale) {}

  void run(index_t b, index_t hkv, index_t col0, int nblk, flash_workspace<T>& ws) const {
    const visibility vis = make_visibility(msk_, b, s_.Lq, s_.Lk);
    const index_t cols = s_.Lq * s_.group();
    int used = 0;
    index_t kmax = 0;
    for (int i = 0; i < nblk && col0 + i * Br < cols; ++i, ++used) {
      flash_columns<T>& cb = ws.blocks[static_cast<std::size_t>(i)];
      begin(cb, vis, b, hkv, col0 + i * Br);
      kmax = std::max(kmax, cb.kmax);
    }
    const T* kb = k_.ptr(b, hkv, 0, 0);
    const T* vb = v_.ptr(b, hkv, 0, 0);
    for (index_t j0 = 0; j0 < kmax; j0 += Bc)
      for (int i = 0; i < used; ++i) {
        flash_columns<T>& cb = ws.blocks[static_cast<std::size_t>(i)];
        if (j0 < cb.kmax) step(cb, b, j0, kb, vb);
      }
    for (int i = 0; i < used; ++i) finish(ws.blocks[static_cast<std::size_t>(i)], b);
  }

 private:
  /// Packs Q^T (scaled by scale * log2(e)) of the columns [col0, col0 + Br) and resets the state.
  void begin(flash_columns<T>& cb, const visibility& vis, index_t b, index_t hkv, index_t col0) const {
    const index_t G = s_.group();
    cb.ncols = std::min<index_t>(Br, s_.Lq * G - col0);
    cb.ld = flash_width<T, Arch>(cb.ncols);
    const index_t ld = cb.ld;
    cb.kmin = std::numeric_limits<index_t>::max();
    cb.kmax = 0;
    T* kend = cb.kend.data();
    for (index_t c = 0; c < ld; ++c) {
      if (c < cb.ncols) {
        const index_t i = (col0 + c) / G;
        const index_t h = hkv * G + (col0 + c) % G;
        cb.col_query[c] = i;
        cb.col_head[c] = h;
        const index_t e = vis.key_end(i);
        kend[c] = static_cast<T>(e);
        cb.kmin = std::min(cb.kmin, e);
        cb.kmax = std::max(cb.kmax, e);
      } else {
        kend[c] = T(0);
      }
    }
    pack_queries<Arch>(
        cb, s_.dk, cb.ncols, [&](index_t c) { return q_.ptr(b, cb.col_head[c], cb.col_query[c], 0); },
        q_.stride(3), qscale_);
    std::fill(cb.m.data(), cb.m.data() + ld, -std::numeric_limits<T>::infinity());
    std::fill(cb.l.data(), cb.l.data() + ld, T(0));
    std::fill(cb.ot.data(), cb.ot.data() + s_.dv * ld, T(0));
  }

  /// Consumes the keys [j0, j0 + Bc) (clipped to the block's kmax).
  void step(flash_columns<T>& cb, index_t b, index_t j0, const T* kb, const T* vb) const {
    constexpr T log2e = T(1.4426950408889634074);
    const index_t nk = std::min(Bc, cb.kmax - j0);
    const value_source<T> vs{vb + j0 * v_.stride(2), v_.stride(2), v_.stride(3), s_.dv, 0};
    auto add_bias = [&](T* st) {
      for (index_t jj = 0; jj < nk; ++jj)
        for (index_t c = 0; c < cb.ncols; ++c)
          st[jj * cb.ld + c] =
              saturate_logit(st[jj * cb.ld + c] +
                             static_cast<T>(bias_(b, cb.col_head[c], cb.col_query[c], j0 + jj)) * log2e);
    };
    flash_step<Arch>(cb, s_.dk, j0, nk, kb + j0 * k_.stride(2), k_.stride(2), k_.stride(3), &vs, 1,
                     static_cast<bool>(bias_), add_bias);
  }

  /// out = O / l; a column that saw no key gets zeros.
  void finish(const flash_columns<T>& cb, index_t b) const {
    write_columns<Arch>(
        cb, 0, s_.dv, cb.ncols, [&](index_t c) { return out_.ptr(b, cb.col_head[c], cb.col_query[c], 0); },
        out_.stride(3));
  }

  const attention_shape& s_;
  const tensor_view<const T, 4>& q_;
  const tensor_view<const T, 4>& k_;
  const tensor_view<const T, 4>& v_;
  const tensor_view<T, 4>& out_;
  const tensor_view<const float, 4>& bias_;
  const mask& msk_;
  T qscale_;
};

/// Column blocks per task: 2 share each block of K and V (half the K/V traffic from L2/memory)
/// when that still leaves >= 2 tasks per thread, else 1. Any choice gives the same bits.
inline int flash_blocks_per_task(index_t bhkv, index_t nblk, int threads) {
  const index_t tasks2 = bhkv * ((nblk + 1) / 2);
  return nblk >= 2 && tasks2 >= 2 * static_cast<index_t>(std::max(1, threads)) ? 2 : 1;
}

/// Runs the tiled kernel over every (b, kv head, column blocks) task.
template <class Arch, class T>
void flash_attention(const attention_shape& s, const tensor_view<const T, 4>& q,
                     const tensor_view<const T, 4>& k, const tensor_view<const T, 4>& v,
                     const tensor_view<T, 4>& out, const attention_options& opt, double scale) {
  using task_t = flash_task<Arch, T>;
  constexpr index_t Br = task_t::Br;
  const index_t cols = s.Lq * s.group();
  const index_t nblk = (cols + Br - 1) / Br;
  const index_t bhkv = s.B * s.Hkv;
  const int max_threads = resolve_threads(opt.threads, bhkv * nblk);
  const int per_task = flash_blocks_per_task(bhkv, nblk, max_threads);
  const index_t ntb = (nblk + per_task - 1) / per_task;  // tasks per (b, kv head)
  const index_t ntasks = bhkv * ntb;
  const tensor_view<const float, 4> bias =
      opt.mask.bias ? broadcast_bias(opt.mask.bias, s.B, s.H, s.Lq, s.Lk) : tensor_view<const float, 4>{};
  const T qscale = static_cast<T>(scale * 1.4426950408889634074);
  const bool causal = opt.mask.causal != causal_mode::none;
  const int nt = resolve_threads(opt.threads, ntasks);
  std::vector<flash_workspace<T>> ws;
  ws.reserve(static_cast<std::size_t>(nt));
  for (int t = 0; t < nt; ++t) ws.emplace_back(per_task, s.dk, s.dv, Br, task_t::Bc);
  const task_t task_fn(s, q, k, v, out, bias, opt.mask, qscale);
  parallel_for(ntasks, nt, [&](index_t task, int thread) {
    const index_t bh = task / ntb;
    index_t t = task % ntb;
    if (causal) t = ntb - 1 - t;  // the longest causal rows first balance the threads
    task_fn.run(bh / s.Hkv, bh % s.Hkv, t * per_task * Br, per_task, ws[static_cast<std::size_t>(thread)]);
  });
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
