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
#include <vector>

#include "../../core/attention_args.hpp"
#include "../../core/gemm.hpp"
#include "../../core/math.hpp"
#include "../../core/parallel.hpp"
#include "../../core/softmax.hpp"
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

/// Per-thread scratch of the tiled kernel (64-byte aligned, reused across tasks).
template <class T>
struct flash_workspace {
  tensor<T, 1> qt, st, ot, m, l, alpha, kend, mnew;
  std::vector<index_t> col_head, col_query;
  flash_workspace(index_t dk, index_t dv, index_t br, index_t bc)
      : qt({dk * br}),
        st({bc * br}),
        ot({dv * br}),
        m({br}),
        l({br}),
        alpha({br}),
        kend({br}),
        mnew({br}),
        col_head(static_cast<std::size_t>(br)),
        col_query(static_cast<std::size_t>(br)) {}
};

template <class Arch, class T>
void flash_task(const attention_shape& s, const tensor_view<const T, 4>& q, const tensor_view<const T, 4>& k,
                const tensor_view<const T, 4>& v, const tensor_view<T, 4>& out,
                const tensor_view<const float, 4>& bias, const mask& msk, T qscale, index_t b, index_t hkv,
                index_t col0, flash_workspace<T>& ws) {
  using B = simd::batch<T, Arch>;
  using tiling = flash_tiling<T, Arch>;
  constexpr int W = B::size;
  constexpr int NV = tiling::NV;
  constexpr int MR = tiling::MR;
  constexpr index_t Br = NV * W;
  constexpr index_t Bc = tiling::Bc;
  constexpr T log2e = T(1.4426950408889634074);
  const index_t G = s.group();
  const index_t ncols = std::min<index_t>(Br, s.Lq * G - col0);
  const visibility vis = make_visibility(msk, b, s.Lq, s.Lk);

  T* qt = ws.qt.data();
  T* st = ws.st.data();
  T* ot = ws.ot.data();
  T* kend = ws.kend.data();
  index_t kmin = std::numeric_limits<index_t>::max(), kmax = 0;
  for (index_t c = 0; c < Br; ++c) {
    if (c < ncols) {
      const index_t i = (col0 + c) / G;
      const index_t h = hkv * G + (col0 + c) % G;
      ws.col_query[c] = i;
      ws.col_head[c] = h;
      const index_t e = vis.key_end(i);
      kend[c] = static_cast<T>(e);
      kmin = std::min(kmin, e);
      kmax = std::max(kmax, e);
      const T* qrow = q.ptr(b, h, i, 0);
      const index_t qs = q.stride(3);
      for (index_t p = 0; p < s.dk; ++p) qt[p * Br + c] = qrow[p * qs] * qscale;
    } else {
      kend[c] = T(0);
      for (index_t p = 0; p < s.dk; ++p) qt[p * Br + c] = T(0);
    }
  }
  for (index_t c = 0; c < Br; ++c) {
    ws.m.data()[c] = -std::numeric_limits<T>::infinity();
    ws.l.data()[c] = T(0);
  }
  std::fill(ot, ot + s.dv * Br, T(0));

  const T* kb = k.ptr(b, hkv, 0, 0);
  const T* vb = v.ptr(b, hkv, 0, 0);
  const index_t sk_j = k.stride(2), sk_d = k.stride(3);
  const index_t sv_j = v.stride(2), sv_d = v.stride(3);
  for (index_t j0 = 0; j0 < kmax; j0 += Bc) {
    const index_t nk = std::min(Bc, kmax - j0);
    const bool masked = j0 + nk > kmin;  // some column does not see every key of this block
    // The new running max can come out of the product's epilogue only when every logit of the
    // block is final and visible; otherwise a masked key's logit must not move the shift.
    const bool fused_max = !masked && !bias;
    T* mnew = ws.mnew.data();
    std::copy(ws.m.data(), ws.m.data() + Br, mnew);
    tile_args<T> g1;
    if (fused_max) g1.col_max = mnew;
    // S^T = K_blk * Q^T
    block_product<B, MR, NV, false, false, a_layout::unit_col>(nk, s.dk, kb + j0 * sk_j, sk_j, sk_d, qt, Br,
                                                               st, Br, g1);
    if (bias) {
      for (index_t jj = 0; jj < nk; ++jj)
        for (index_t c = 0; c < ncols; ++c)
          st[jj * Br + c] += static_cast<T>(bias(b, ws.col_head[c], ws.col_query[c], j0 + jj)) * log2e;
    }
    if (masked) {
      const T ninf = -std::numeric_limits<T>::infinity();
      for (index_t jj = 0; jj < nk; ++jj) {
        const B j = B::broadcast(static_cast<T>(j0 + jj));
        for (int cv = 0; cv < Br / W; ++cv) {
          T* sp = st + jj * Br + cv * W;
          // invisible where key_end <= j
          select(B::load(kend + cv * W) <= j, B::broadcast(ninf), B::load(sp)).store(sp);
        }
      }
    }
    // Online softmax, one column batch at a time.
    for (int cv = 0; cv < Br / W; ++cv) {
      const index_t off = cv * W;
      const B m_old = B::load(ws.m.data() + off);
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
      alpha.store(ws.alpha.data() + off);
      fma(B::load(ws.l.data() + off), alpha, sum0 + sum1).store(ws.l.data() + off);
      mx.store(ws.m.data() + off);
    }
    // O^T = O^T * alpha + V_blk^T * P^T
    tile_args<T> args;
    args.col_scale = ws.alpha.data();
    if (masked) {
      args.col_limit = kend;
      args.row_base = static_cast<T>(j0);
      block_product<B, MR, NV, true, true, a_layout::unit_row>(s.dv, nk, vb + j0 * sv_j, sv_d, sv_j, st, Br,
                                                               ot, Br, args);
    } else {
      block_product<B, MR, NV, true, false, a_layout::unit_row>(s.dv, nk, vb + j0 * sv_j, sv_d, sv_j, st, Br,
                                                                ot, Br, args);
    }
  }
  // out = O / l; a column that saw no key gets zeros.
  for (index_t c = 0; c < ncols; ++c) {
    const T l = ws.l.data()[c];
    const T inv = l > T(0) ? T(1) / l : T(0);
    T* orow = out.ptr(b, ws.col_head[c], ws.col_query[c], 0);
    const index_t os = out.stride(3);
    for (index_t e = 0; e < s.dv; ++e) orow[e * os] = ot[e * Br + c] * inv;
  }
}

/// Runs the tiled kernel over every (b, kv head, column block) task.
template <class Arch, class T>
void flash_attention(const attention_shape& s, const tensor_view<const T, 4>& q,
                     const tensor_view<const T, 4>& k, const tensor_view<const T, 4>& v,
                     const tensor_view<T, 4>& out, const attention_options& opt, double scale) {
  using tiling = flash_tiling<T, Arch>;
  constexpr index_t Br = tiling::NV * simd::batch<T, Arch>::size;
  const index_t cols = s.Lq * s.group();
  const index_t nblk = (cols + Br - 1) / Br;
  const index_t ntasks = s.B * s.Hkv * nblk;
  const tensor_view<const float, 4> bias =
      opt.mask.bias ? broadcast_bias(opt.mask.bias, s.B, s.H, s.Lq, s.Lk) : tensor_view<const float, 4>{};
  const T qscale = static_cast<T>(scale * 1.4426950408889634074);
  const bool causal = opt.mask.causal != causal_mode::none;
  const int nt = resolve_threads(opt.threads, ntasks);
  std::vector<flash_workspace<T>> ws;
  ws.reserve(static_cast<std::size_t>(nt));
  for (int t = 0; t < nt; ++t) ws.emplace_back(s.dk, s.dv, Br, tiling::Bc);
  parallel_for(ntasks, nt, [&](index_t task, int thread) {
    const index_t bh = task / nblk;
    index_t blk = task % nblk;
    if (causal) blk = nblk - 1 - blk;  // the longest causal rows first balance the threads
    flash_task<Arch, T>(s, q, k, v, out, bias, opt.mask, qscale, bh / s.Hkv, bh % s.Hkv, blk * Br,
                        ws[static_cast<std::size_t>(thread)]);
  });
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
