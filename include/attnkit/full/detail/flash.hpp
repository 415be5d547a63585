// attnkit: exact attention on the tiled engine (core/flash.hpp; docs/design.md §4.1).
//
// Work is split into tasks (batch b, kv head, block of Br columns). A column is one query row of
// one head; the G = H/Hkv heads sharing a kv head are interleaved (column = i*G + g), so K and V
// are read once for all of them. Key blocks past the last column's key_end are never touched.
#pragma once

#include <algorithm>
#include <limits>
#include <vector>

#include "../../core/attention_args.hpp"
#include "../../core/flash.hpp"
#include "../../core/parallel.hpp"
#include "../options.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

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
             const tensor_view<const T, 4>& v, const tensor_view<T, 4>& out, const tensor_view<T, 3>& lse,
             const tensor_view<const float, 4>& bias, const mask& msk, T qscale)
      : s_(s), q_(q), k_(k), v_(v), out_(out), lse_(lse), bias_(bias), msk_(msk), qscale_(qscale) {}

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
    const index_t G = s_.group(), n = std::min<index_t>(Br, s_.Lq * G - col0);
    for (index_t c = 0; c < n; ++c) {
      cb.col_query[c] = (col0 + c) / G;
      cb.col_head[c] = hkv * G + (col0 + c) % G;
    }
    begin_columns<Arch>(
        cb, s_.dk, n, [&](index_t c) { return q_.ptr(b, cb.col_head[c], cb.col_query[c], 0); }, q_.stride(3),
        qscale_, [&](index_t c) { return vis.key_end(cb.col_query[c]); });
    std::fill(cb.ot.data(), cb.ot.data() + s_.dv * cb.ld, T(0));
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

  /// out = O / l; a column that saw no key gets zeros. lse (when given) = ln sum_j exp(logit_j).
  void finish(const flash_columns<T>& cb, index_t b) const {
    write_columns<Arch>(
        cb, 0, s_.dv, cb.ncols, [&](index_t c) { return out_.ptr(b, cb.col_head[c], cb.col_query[c], 0); },
        out_.stride(3));
    if (lse_)
      for (index_t c = 0; c < cb.ncols; ++c)
        lse_(b, cb.col_head[c], cb.col_query[c]) = state_log_sum_exp(cb.m.data()[c], cb.l.data()[c]);
  }

  const attention_shape& s_;
  const tensor_view<const T, 4>& q_;
  const tensor_view<const T, 4>& k_;
  const tensor_view<const T, 4>& v_;
  const tensor_view<T, 4>& out_;
  const tensor_view<T, 3>& lse_;
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

/// Runs the tiled kernel over every (b, kv head, column blocks) task; lse may be empty (not written).
template <class Arch, class T>
void flash_attention(const attention_shape& s, const tensor_view<const T, 4>& q,
                     const tensor_view<const T, 4>& k, const tensor_view<const T, 4>& v,
                     const tensor_view<T, 4>& out, const tensor_view<T, 3>& lse, const attention_options& opt,
                     double scale) {
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
  const task_t task_fn(s, q, k, v, out, lse, bias, opt.mask, qscale);
  parallel_for(ntasks, nt, [&](index_t task, int thread) {
    const index_t bh = task / ntb;
    index_t t = task % ntb;
    if (causal) t = ntb - 1 - t;  // the longest causal rows first balance the threads
    task_fn.run(bh / s.Hkv, bh % s.Hkv, t * per_task * Br, per_task, ws[static_cast<std::size_t>(thread)]);
  });
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
