// attnkit: 2D relative attention on the tiled engine (core/flash.hpp: flash_step).
//
// The bias of query i = (yi, xi) and key j = (yj, xj) is w_h[dy + H - 1, dx + W - 1]. For a fixed
// key it is, over the queries in raster order, an H x W window of the (flipped) table: rows of W
// contiguous entries with a stride of 2W - 1. Per head and key column xj the windows of all key
// rows are laid out as one array C_h[xj][(2H - 1) * W] with stride W, so that
//     bias(i, j) = C_h[xj][(H - 1 - yj) * W + i]
// is contiguous over the queries i of a column block: a key tile's bias is read with vector
// loads, never gathered, and no [L, L] bias exists (C is heads x W x (2H - 1) x W).
// pre_softmax adds it to the logits inside the online softmax (log2 domain); post_softmax keeps a
// second accumulator O2^T += V^T B^T beside the softmax one, out = O / l + O2.
#pragma once

#include <algorithm>
#include <limits>
#include <vector>

#include "../../core/attention_args.hpp"
#include "../../core/flash.hpp"
#include "../../core/gemm.hpp"
#include "../../core/parallel.hpp"
#include "../../core/transpose.hpp"
#include "../options.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// The per-head windows C (see above), multiplied by `factor`. With G > 1 the windows of the G
/// heads that share a kv head are interleaved, [heads / G][xj][(2H - 1) W][G], as the backward's
/// columns are (column = i G + g): bias(i G + g, j) = C[h / G][xj][((H - 1 - yj) W + i) G + g].
template <class T, class U>
std::vector<T> relative_windows(const tensor_view<const U, 3>& table, index_t H, index_t W,
                                relative_offset off, T factor, index_t G = 1) {
  const index_t heads = table.extent(0), R = 2 * H - 1;
  std::vector<T> c(static_cast<std::size_t>(heads * W * R * W));
  for (index_t h = 0; h < heads; ++h)
    for (index_t xj = 0; xj < W; ++xj)
      for (index_t r = 0; r < R; ++r)
        for (index_t x = 0; x < W; ++x) {
          // r = H - 1 - yj + yi, x = xi: key minus query dy = yj - yi = H - 1 - r, dx = xj - x
          const T w = off == relative_offset::key_minus_query
                          ? static_cast<T>(table(h, 2 * H - 2 - r, W - 1 + xj - x))
                          : static_cast<T>(table(h, r, W - 1 + x - xj));
          c[static_cast<std::size_t>((((h / G) * W + xj) * R * W + r * W + x) * G + h % G)] = w * factor;
        }
  return c;
}

/// Per-thread state: one column block and, for post_softmax, the second accumulator and the
/// bias tile.
template <class T>
struct relative_workspace {
  flash_columns<T> cb;
  std::vector<T> ot2, bt;
  relative_workspace(index_t dk, index_t dv, index_t br, index_t bc)
      : cb(dk, dv, br, bc), ot2(static_cast<std::size_t>(dv * br)), bt(static_cast<std::size_t>(bc * br)) {}
};

template <class Arch, class T>
class relative_task {
 public:
  using B = simd::batch<T, Arch>;
  static constexpr int W = B::size;
  static constexpr int NV = flash_tiling<T, Arch>::NV, MR = flash_tiling<T, Arch>::MR;
  static constexpr index_t Br = NV * W;
  static constexpr index_t Bc = flash_tiling<T, Arch>::Bc;

  relative_task(const attention_shape& s, const tensor_view<const T, 4>& q, const tensor_view<const T, 4>& k,
                const tensor_view<const T, 4>& v, const tensor_view<T, 4>& out, const tensor_view<T, 3>& lse,
                const std::vector<T>& windows, index_t H, index_t Wd, bool post, const mask& msk, T qscale)
      : s_(s),
        q_(q),
        k_(k),
        v_(v),
        out_(out),
        lse_(lse),
        c_(windows),
        H_(H),
        W_(Wd),
        post_(post),
        msk_(msk),
        qscale_(qscale) {}

  /// The queries [i0, i0 + Br) of head h of batch entry b.
  void run(index_t b, index_t h, index_t i0, relative_workspace<T>& w) const {
    flash_columns<T>& cb = w.cb;
    const index_t hkv = h / s_.group(), n = std::min(Br, s_.Lq - i0);
    const index_t len = msk_.key_lengths ? static_cast<index_t>(msk_.key_lengths(b)) : s_.Lk;
    begin_columns<Arch>(
        cb, s_.dk, n, [&](index_t c) { return q_.ptr(b, h, i0 + c, 0); }, q_.stride(3), qscale_,
        [&](index_t) { return len; });
    const index_t ld = cb.ld;
    std::fill(cb.ot.data(), cb.ot.data() + s_.dv * ld, T(0));
    if (post_) std::fill(w.ot2.begin(), w.ot2.begin() + s_.dv * ld, T(0));
    const T* ch = c_.data() + h * W_ * (2 * H_ - 1) * W_;
    const index_t nvec = (n + W - 1) / W;
    // bias of key j over the block's queries: C_h[xj][(H - 1 - yj) * W + i0 + c], c < n
    auto bias_row = [&](index_t j) { return ch + ((j % W_) * (2 * H_ - 1) + (H_ - 1 - j / W_)) * W_ + i0; };
    for (index_t j0 = 0; j0 < len; j0 += Bc) {
      const index_t nk = std::min(Bc, len - j0);
      const value_source<T> vs{v_.ptr(b, hkv, j0, 0), v_.stride(2), v_.stride(3), s_.dv, 0};
      auto add_bias = [&](T* st) {
        for (index_t jj = 0; jj < nk; ++jj) {
          const T* src = bias_row(j0 + jj);
          T* dst = st + jj * ld;
          for (index_t cv = 0; cv < nvec; ++cv) {
            const int m = static_cast<int>(std::min<index_t>(W, n - cv * W));
            const B w = m == W ? B::load(src + cv * W) : B::load_partial(src + cv * W, m);
            saturate_logits(B::load(dst + cv * W) + w).store(dst + cv * W);
          }
        }
      };
      flash_step<Arch>(cb, s_.dk, j0, nk, k_.ptr(b, hkv, j0, 0), k_.stride(2), k_.stride(3), &vs, 1, !post_,
                       add_bias);
      if (post_) post_product(w, ld, nk, nvec, n, vs, [&](index_t jj) { return bias_row(j0 + jj); });
    }
    // out = O / l (+ O2)
    write_columns<Arch>(
        cb, 0, s_.dv, n, [&](index_t c) { return out_.ptr(b, h, i0 + c, 0); }, out_.stride(3),
        post_ ? w.ot2.data() : nullptr);
    // lse (when given) = ln sum_j exp(logit_j) (post_softmax: the softmax's logits, without the table)
    if (lse_)
      for (index_t c = 0; c < n; ++c) lse_(b, h, i0 + c) = state_log_sum_exp(cb.m.data()[c], cb.l.data()[c]);
  }

 private:
  /// O2^T += V_blk^T B^T for the key tile: B^T[jj][c] = bias(i0 + c, j0 + jj) (0 past the columns).
  template <class Row>
  void post_product(relative_workspace<T>& w, index_t ld, index_t nk, index_t nvec, index_t n,
                    const value_source<T>& vs, Row&& bias_row) const {
    T* bt = w.bt.data();
    for (index_t jj = 0; jj < nk; ++jj) {
      const T* src = bias_row(jj);
      T* dst = bt + jj * ld;
      std::fill(dst, dst + ld, T(0));
      for (index_t cv = 0; cv < nvec; ++cv) {
        const int m = static_cast<int>(std::min<index_t>(W, n - cv * W));
        B::load_partial(src + cv * W, m).store(dst + cv * W);
      }
    }
    const tile_args<T> args{};
    auto product = [&](auto na) {
      constexpr int NA = decltype(na)::value;
      block_product<B, MR, NA, true, false, a_layout::unit_row>(vs.rows, nk, vs.ptr, vs.sd, vs.sj, bt, ld,
                                                                w.ot2.data(), ld, args);
    };
    constexpr int NH = NV / 2;
    if constexpr (NH >= 1 && NH < NV) {
      if (ld == NH * W) {
        product(std::integral_constant<int, NH>{});
        return;
      }
    }
    product(std::integral_constant<int, NV>{});
  }

  const attention_shape& s_;
  const tensor_view<const T, 4>& q_;
  const tensor_view<const T, 4>& k_;
  const tensor_view<const T, 4>& v_;
  const tensor_view<T, 4>& out_;
  const tensor_view<T, 3>& lse_;
  const std::vector<T>& c_;
  index_t H_, W_;
  bool post_;
  const mask& msk_;
  T qscale_;
};

}  // namespace detail
ATTNKIT_END_NAMESPACE
