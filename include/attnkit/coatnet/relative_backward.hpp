// attnkit: the backward pass of CoAtNet's 2D relative attention (docs/design.md §4.5, §7).
#pragma once

#include <algorithm>
#include <tuple>
#include <vector>

#include "../core/attention_args.hpp"
#include "../core/flash_backward.hpp"
#include "../core/parallel.hpp"
#include "../core/simd.hpp"
#include "detail/relative.hpp"
#include "options.hpp"
#include "relative_attention.hpp"

ATTNKIT_BEGIN_NAMESPACE

namespace detail {

/// post_softmax: D_i = sum_j P_ij dP_ij = dout_i . (out_i - O2_i) with O2_i = sum_{j visible} w_ij v_j
/// (out holds both terms), for every (b, h, i) at dd[(b H + h) L + i]. O2 runs as the forward's
/// second accumulator does, on tiles of the windows: one task per (b, kv head, column block).
template <class Arch, class T>
void relative_post_d(const attention_shape& s, const backward_views<T>& x, const window_bias<T>& wb,
                     const mask& msk, int threads, T* dd) {
  using B = simd::batch<T, Arch>;
  using tiling = flash_tiling<T, Arch>;
  constexpr int W = B::size, NV = tiling::NV, MR = tiling::MR;
  constexpr index_t Br = NV * W, Bc = tiling::Bc;
  const index_t G = s.group(), cols = s.Lq * G, nblk = (cols + Br - 1) / Br, dv = s.dv;
  const index_t ntasks = s.B * s.Hkv * nblk;
  const int nt = resolve_threads(threads, ntasks);
  struct scratch {
    tensor<T, 1> bt, o2t;
  };
  std::vector<scratch> ws;
  ws.reserve(static_cast<std::size_t>(nt));
  for (int t = 0; t < nt; ++t)
    ws.push_back({tensor<T, 1>({Bc * Br}), tensor<T, 1>({std::max<index_t>(dv * Br, 1)})});
  parallel_for(ntasks, nt, [&](index_t t, int thread) {
    const index_t bh = t / nblk, b = bh / s.Hkv, hkv = bh % s.Hkv, c0 = (t % nblk) * Br;
    const index_t n = std::min(Br, cols - c0);
    const index_t len = msk.key_lengths ? static_cast<index_t>(msk.key_lengths(b)) : s.Lk;
    scratch& w = ws[static_cast<std::size_t>(thread)];
    T* o2t = w.o2t.data();
    std::fill(o2t, o2t + dv * Br, T(0));
    for (index_t j0 = 0; j0 < len && dv > 0; j0 += Bc) {
      const index_t nk = std::min(Bc, len - j0);
      T* bt = w.bt.data();
      for (index_t jj = 0; jj < nk; ++jj) {
        const T* src = wb.row(hkv, j0 + jj) + c0;
        T* dst = bt + jj * Br;
        std::copy(src, src + n, dst);
        std::fill(dst + n, dst + Br, T(0));
      }
      block_product<B, MR, NV, true, false, a_layout::unit_row>(
          dv, nk, x.v.ptr(b, hkv, j0, 0), x.v.stride(3), x.v.stride(2), bt, Br, o2t, Br, tile_args<T>{});
    }
    for (index_t c = 0; c < n; ++c) {
      const index_t i = (c0 + c) / G, h = hkv * G + (c0 + c) % G;
      T d = T(0);
      for (index_t p = 0; p < dv; ++p) d += x.dout(b, h, i, p) * (x.out(b, h, i, p) - o2t[p * Br + c]);
      dd[(b * s.H + h) * s.Lq + i] = d;
    }
  });
}

}  // namespace detail

/// The gradients of relative_attention_2d's out with respect to q, k, v and the table, given out
/// and lse from relative_attention_2d(q, k, v, table, grid, out, lse, options) and dout = dL/dout:
/// dq [B, heads, L, dk], dk [B, Hkv, L, dk], dv [B, Hkv, L, dv] and dtable [heads, 2H - 1, 2W - 1]
/// (summed over the batch; 0 at offsets no pair of visible positions has) are overwritten; dk and
/// dv of a kv head sum over the heads that share it. Padding keys get exactly zero, and a NaN or
/// Inf in a padding k or v reaches no gradient. The same bits for any thread count (dtable: one
/// partial table per task, summed in a fixed order; no atomics). FlashAttention-2's backward on
/// the exact-attention engine (docs/design.md §4.1) with the table's windows as the bias: pre_softmax
/// adds them to the recomputed logits and dtable gathers dS; post_softmax adds them to P in dv's
/// product, gathers dP, and first computes D = dout . (out - W V) with one more product. The
/// gradients and dtable must overlap nothing else (a table shared by the heads through a 0 stride
/// still needs a whole dtable); on an error nothing is written.
/// Memory: the exact backward's, plus the windows (as the forward), one window gradient per thread
/// (the windows of one kv head) and one [heads / Hkv, 2H - 1, 2W - 1] table per task.
template <class Arch = simd::native, class T>
void relative_attention_2d_backward(tensor_view<const detail::identity_t<T>, 4> q,
                                    tensor_view<const detail::identity_t<T>, 4> k,
                                    tensor_view<const detail::identity_t<T>, 4> v,
                                    tensor_view<const detail::identity_t<T>, 3> table, relative_grid grid,
                                    tensor_view<const detail::identity_t<T>, 4> out,
                                    tensor_view<const detail::identity_t<T>, 3> lse,
                                    tensor_view<const detail::identity_t<T>, 4> dout, tensor_view<T, 4> dq,
                                    tensor_view<T, 4> dk, tensor_view<T, 4> dv, tensor_view<T, 3> dtable,
                                    const relative_options& options = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "relative_attention_2d_backward: float or double");
  constexpr const char* where = "attnkit::relative_attention_2d_backward";
  using detail::arg;
  const detail::relative_call rc = detail::check_relative(where, q, k, v, table, grid, out, options);
  const detail::attention_shape& s = rc.s;
  const auto& m = options.mask;
  detail::check_backward(where, s, q, k, v, out, lse, dout, dq, dk, dv,
                         std::make_tuple(arg("mask.key_lengths", m.key_lengths), arg("table", table)));
  detail::require_view(dtable, where, "dtable");
  detail::require(dtable.extents() == table.extents(), where, [&] {
    return std::string("dtable has shape " + detail::shape_string(dtable.extents()) + ", expected " +
                       detail::shape_string(table.extents()) + " (the shape of table)");
  });
  detail::require_output(where, arg("dtable", dtable), arg("q", q), arg("k", k), arg("v", v), arg("out", out),
                         arg("lse", lse), arg("dout", dout), arg("mask.key_lengths", m.key_lengths),
                         arg("table", table), arg("dq", dq), arg("dk", dk), arg("dv", dv));
  if (dq.empty() && dk.empty() && dv.empty() && dtable.empty()) return;
  if (s.B == 0 || s.Lq == 0) {  // no pair of positions: a zero table
    for (index_t h = 0; h < dtable.extent(0); ++h)
      for (index_t y = 0; y < dtable.extent(1); ++y)
        for (index_t x = 0; x < dtable.extent(2); ++x) dtable(h, y, x) = T(0);
    return;
  }
  const detail::backward_views<T> x{detail::addressable(q),         detail::addressable(k),
                                    detail::addressable(v),         detail::addressable(out),
                                    detail::addressable(dout),      detail::addressable(lse),
                                    detail::addressable_output(dq), detail::addressable_output(dk),
                                    detail::addressable_output(dv), {}};
  const bool post = options.mode == relative_mode::post_softmax;
  const index_t G = s.group();
  const std::vector<T> windows = detail::relative_windows<T>(table, rc.H, rc.W, options.offset,
                                                             post ? T(1) : T(1.4426950408889634074), G);
  detail::window_bias<T> wb;
  wb.c = windows.data();
  wb.H = rc.H;
  wb.W = rc.W;
  wb.G = G;
  wb.post = post;
  wb.query_minus_key = options.offset == relative_offset::query_minus_key;
  std::vector<T> dd;
  if (post) {
    dd.resize(static_cast<std::size_t>(s.B * s.H * s.Lq));
    detail::relative_post_d<Arch, T>(s, x, wb, m, options.threads, dd.data());
    wb.dd = dd.data();
  }
  detail::flash_attention_backward<Arch, T>(s, x, m, options.threads, rc.scale, &wb, &dtable);
}

ATTNKIT_END_NAMESPACE
