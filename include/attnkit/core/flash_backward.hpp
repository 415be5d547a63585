// attnkit: the backward pass of exact attention on the engine's block products (docs/design.md §4.1),
// shared with CoAtNet's relative attention (§4.5: a window bias).
//
// FlashAttention-2's form, laid out as the forward is: a column is one query row of one head (the
// G = H/Hkv heads of a kv head interleaved, column = i*G + g) and tiles are keys x columns, so the
// columns are the vector lanes and every mask is a per-column key_end. One task per (b, kv head):
// its columns' Q^T, dO^T, Q and dO rows are packed once; then for each block of Bk keys, dK and dV
// accumulate in a tile over the column blocks that see the keys, in column order, while dQ^T of
// each column block accumulates over the key blocks, in key order. Per tile, with P^T recomputed
// from the forward's log-sum-exp:
//   S^T  = K_blk Q^T                 P^T = exp2(S^T - lse2)  (0 where a key is hidden)
//   dV  += P^T dO                    dP^T = V_blk dO^T
//   dS^T = scale P^T (dP^T - D)      (0 where hidden: a NaN in a hidden v never reaches it)
//   dK  += dS^T Q                    dQ^T += K_blk^T dS^T  (masked steps: nor does a hidden k)
// with D = rowsum(dO * O). The order of every sum is fixed by the shape alone, so the bits do not
// depend on the thread count; nothing is shared between tasks (no atomics).
#pragma once

#include <algorithm>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "attention_args.hpp"
#include "flash.hpp"
#include "parallel.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// The tensors of one backward call.
template <class T>
struct backward_views {
  tensor_view<const T, 4> q, k, v, out, dout;
  tensor_view<const T, 3> lse;
  tensor_view<T, 4> dq, dk, dv;
  tensor_view<const float, 4> bias;  // broadcast to [B, H, Lq, Lk], or empty
};

/// A bias that CoAtNet's relative attention (docs/design.md §4.5) adds to the logits or to the
/// attention weights, laid out so that a key's bias over a column block is contiguous: per kv head
/// and key column xj one row of (2H - 1) W G values (the group's heads interleaved, as the columns
/// are), bias(column c, key j) = row(hkv, j)[c]. The backward accumulates its gradient in the same
/// layout (one kv head per thread) and folds it into [G, 2H - 1, 2W - 1] tables per task.
template <class T>
struct window_bias {
  const T* c = nullptr;   // [Hkv][W][(2H - 1) W G], pre: times log2 e
  const T* dd = nullptr;  // post: D of every (b, h, i) at [(b H + h) Lq + i]
  index_t H = 0, W = 0, G = 1;
  bool post = false;  // on the weights (else on the logits)
  bool query_minus_key = false;
  index_t row() const { return (2 * H - 1) * W * G; }
  index_t size() const { return W * row(); }  // one kv head
  index_t offset(index_t j) const { return (j % W) * row() + (H - 1 - j / W) * W * G; }
  const T* row(index_t hkv, index_t j) const { return c + hkv * size() + offset(j); }
  index_t table_size() const { return G * (2 * H - 1) * (2 * W - 1); }
  /// part[g][ty][tx] = the sum of the window gradient dc over the pairs of offset (ty, tx).
  void fold(const T* dc, T* part) const {
    const index_t R = 2 * H - 1, TW = 2 * W - 1;
    std::fill(part, part + table_size(), T(0));
    for (index_t xj = 0; xj < W; ++xj)
      for (index_t r = 0; r < R; ++r)
        for (index_t x = 0; x < W; ++x) {
          // r = H - 1 - yj + yi, x = xi: key minus query (dy, dx) = (H - 1 - r, xj - x)
          const index_t ty = query_minus_key ? r : 2 * H - 2 - r;
          const index_t tx = query_minus_key ? W - 1 + x - xj : W - 1 + xj - x;
          const T* src = dc + xj * row() + (r * W + x) * G;
          for (index_t g = 0; g < G; ++g) part[(g * R + ty) * TW + tx] += src[g];
        }
  }
};

/// The checks of a backward call on top of the forward's (shape s): lse, dout and the gradients'
/// shapes, and gradients that overlap nothing (the inputs, `more` inputs given as a tuple of
/// arg()s, nor each other).
template <class T, class More>
void check_backward(const char* where, const attention_shape& s, const tensor_view<const T, 4>& q,
                    const tensor_view<const T, 4>& k, const tensor_view<const T, 4>& v,
                    const tensor_view<const T, 4>& out, const tensor_view<const T, 3>& lse,
                    const tensor_view<const T, 4>& dout, const tensor_view<T, 4>& dq,
                    const tensor_view<T, 4>& dk, const tensor_view<T, 4>& dv, const More& more) {
  auto same = [&](const char* name, const auto& x, const auto& want, const char* like) {
    require_view(x, where, name);
    require(x.extents() == want, where, [&] {
      return std::string(name) + " has shape " + shape_string(x.extents()) + ", expected " +
             shape_string(want) + " (the shape of " + like + ")";
    });
  };
  same("lse", lse, std::array<index_t, 3>{s.B, s.H, s.Lq}, "out without its last axis");
  same("dout", dout, out.extents(), "out");
  same("dq", dq, q.extents(), "q");
  same("dk", dk, k.extents(), "k");
  same("dv", dv, v.extents(), "v");
  const auto inputs = std::tuple_cat(std::make_tuple(arg("q", q), arg("k", k), arg("v", v), arg("out", out),
                                                     arg("lse", lse), arg("dout", dout)),
                                     more);
  std::apply([&](auto&&... in) { require_output(where, arg("dq", dq), in..., arg("dk", dk), arg("dv", dv)); },
             inputs);
  std::apply([&](auto&&... in) { require_output(where, arg("dk", dk), in..., arg("dv", dv)); }, inputs);
  std::apply([&](auto&&... in) { require_output(where, arg("dv", dv), in...); }, inputs);
}

inline index_t round_up(index_t n, index_t m) { return (n + m - 1) / m * m; }

/// Per-thread scratch of one (b, kv head) task: the columns' packed operands and per-column
/// values (cols rounded up to whole column blocks), the dQ^T panels, and one tile's buffers.
template <class T>
struct backward_workspace {
  tensor<T, 1> qt, dot, qr, dor, dqt, lse2, dd, kend, st, dpt, dkt, dvt;  // dqt: unsplit tasks' dQ^T
  tensor<T, 1> pbt, dc;  // a window bias: P^T + bias^T (post), the window gradient
  std::vector<index_t> kmin, kmax;
  backward_workspace(index_t colsp, index_t br, index_t bk, index_t dk, index_t dv, index_t dkp, index_t dvp,
                     index_t windows = 0, bool post = false)
      : qt({std::max<index_t>(colsp * dk, 1)}),
        dot({std::max<index_t>(colsp * dv, 1)}),
        qr({std::max<index_t>(colsp * dkp, 1)}),
        dor({std::max<index_t>(colsp * dvp, 1)}),
        dqt({std::max<index_t>(colsp * dk, 1)}),
        lse2({colsp}),
        dd({colsp}),
        kend({colsp}),
        st({bk * br}),
        dpt({bk * br}),
        dkt({std::max<index_t>(bk * dkp, 1)}),
        dvt({std::max<index_t>(bk * dvp, 1)}),
        pbt({post ? bk * br : 1}),
        dc({std::max<index_t>(windows, 1)}),
        kmin(static_cast<std::size_t>(colsp / br)),
        kmax(static_cast<std::size_t>(colsp / br)) {}
};

template <class Arch, class T>
class flash_backward_task {
 public:
  using B = simd::batch<T, Arch>;
  using tiling = flash_tiling<T, Arch>;
  static constexpr int W = B::size, NV = tiling::NV, MR = tiling::MR;
  static constexpr index_t Br = NV * W;
  static constexpr index_t Bk = tiling::Bc;

  flash_backward_task(const attention_shape& s, const backward_views<T>& x, const mask& m, double scale,
                      const window_bias<T>* wb = nullptr)
      : s_(s),
        x_(x),
        m_(m),
        wb_(wb),
        scale_(static_cast<T>(scale)),
        qscale_(static_cast<T>(scale * 1.4426950408889634074)) {}

  index_t cols() const { return s_.Lq * s_.group(); }
  index_t padded_cols() const { return round_up(std::max<index_t>(cols(), 1), Br); }
  index_t dkp() const { return round_up(s_.dk, W); }
  index_t dvp() const { return round_up(s_.dv, W); }
  backward_workspace<T> workspace() const {
    return backward_workspace<T>(padded_cols(), Br, Bk, s_.dk, s_.dv, dkp(), dvp(), wb_ ? wb_->size() : 0,
                                 wb_ && wb_->post);
  }

  /// The key blocks [kb0, kb1) of (b, hkv): their dk and dv rows, and their part of dQ^T
  /// accumulated into dqt (the panels of every column block, zeroed here); with a window bias,
  /// their part of its gradient, folded into table (window_bias::table_size values).
  void run(index_t b, index_t hkv, index_t kb0, index_t kb1, backward_workspace<T>& w, T* dqt,
           T* table = nullptr) const {
    const index_t kmax = pack(b, hkv, w);
    if (wb_) std::fill(w.dc.data(), w.dc.data() + wb_->size(), T(0));
    std::fill(dqt, dqt + padded_cols() * s_.dk, T(0));
    const index_t nqb = padded_cols() / Br, dkp_ = dkp(), dvp_ = dvp();
    const T* kb = x_.k.ptr(b, hkv, 0, 0);
    const T* vb = x_.v.ptr(b, hkv, 0, 0);
    const index_t ksj = x_.k.stride(2), vsj = x_.v.stride(2);
    const index_t ja = kb0 * Bk, jz = std::min(kb1 * Bk, s_.Lk);
    for (index_t j0 = ja; j0 < std::min(jz, kmax); j0 += Bk) {
      const index_t nk = std::min(Bk, kmax - j0);
      std::fill(w.dkt.data(), w.dkt.data() + nk * dkp_, T(0));
      std::fill(w.dvt.data(), w.dvt.data() + nk * dvp_, T(0));
      for (index_t qb = 0; qb < nqb; ++qb) {
        const index_t qmax = w.kmax[static_cast<std::size_t>(qb)];
        if (qmax <= j0) continue;  // no column of the block sees these keys
        tile(b, hkv, qb, j0, std::min(nk, qmax - j0), kb + j0 * ksj, vb + j0 * vsj, w, dqt);
      }
      for (index_t jj = 0; jj < nk; ++jj) {
        store_row(x_.dk, b, hkv, j0 + jj, w.dkt.data() + jj * dkp_, s_.dk);
        store_row(x_.dv, b, hkv, j0 + jj, w.dvt.data() + jj * dvp_, s_.dv);
      }
    }
    // keys no query sees (padding, past every causal row) get exactly zero
    for (index_t j = std::max(ja, kmax); j < jz; ++j) {
      store_row(x_.dk, b, hkv, j, nullptr, s_.dk);
      store_row(x_.dv, b, hkv, j, nullptr, s_.dv);
    }
    if (wb_) wb_->fold(w.dc.data(), table);
  }

  /// dq of (b, hkv)'s columns = the sum of the nparts dQ^T panel sets at dqt (stride: one set), in
  /// order.
  void write_dq(index_t b, index_t hkv, T* dqt, index_t nparts) const {
    const index_t G = s_.group(), set = padded_cols() * s_.dk;
    for (index_t p = 1; p < nparts; ++p)
      for (index_t e = 0; e < set; ++e) dqt[e] += dqt[p * set + e];
    for (index_t c0 = 0; c0 < cols() && s_.dk > 0; c0 += Br) {
      const index_t n = std::min(Br, cols() - c0);
      auto row = [&](index_t c) { return x_.dq.ptr(b, hkv * G + (c0 + c) % G, (c0 + c) / G, 0); };
      const T* panel = dqt + c0 * s_.dk;
      if (x_.dq.stride(3) == 1) {
        panel_to_rows<Arch, T>(n, s_.dk, panel, Br, row);
      } else {
        for (index_t c = 0; c < n; ++c)
          for (index_t p = 0; p < s_.dk; ++p) row(c)[p * x_.dq.stride(3)] = panel[p * Br + c];
      }
    }
  }

 private:
  /// Packs the task's columns; returns the largest key_end (the keys any column sees).
  index_t pack(index_t b, index_t hkv, backward_workspace<T>& w) const {
    const visibility vis = make_visibility(m_, b, s_.Lq, s_.Lk);
    const index_t G = s_.group(), cols_ = cols(), colsp = padded_cols(), dk = s_.dk, dv = s_.dv;
    const index_t dkp_ = dkp(), dvp_ = dvp();
    index_t kmax = 0;
    for (index_t c = 0; c < colsp; ++c) {
      T* qr = w.qr.data() + c * dkp_;
      T* dr = w.dor.data() + c * dvp_;
      if (c >= cols_) {
        std::fill(qr, qr + dkp_, T(0));
        std::fill(dr, dr + dvp_, T(0));
        w.kend.data()[c] = T(0);
        w.lse2.data()[c] = std::numeric_limits<T>::infinity();
        w.dd.data()[c] = T(0);
        continue;
      }
      const index_t i = c / G, h = hkv * G + c % G;
      const index_t e = vis.key_end(i);
      kmax = std::max(kmax, e);
      w.kend.data()[c] = static_cast<T>(e);
      for (index_t p = 0; p < dk; ++p) qr[p] = x_.q(b, h, i, p);
      std::fill(qr + dk, qr + dkp_, T(0));
      T d = T(0);
      for (index_t p = 0; p < dv; ++p) {
        dr[p] = x_.dout(b, h, i, p);
        d += dr[p] * x_.out(b, h, i, p);
      }
      std::fill(dr + dv, dr + dvp_, T(0));
      w.dd.data()[c] = wb_ && wb_->dd ? wb_->dd[(b * s_.H + h) * s_.Lq + i] : d;
      // A row that sees no key has lse = -inf: +inf makes its P exactly 0 (never inf - inf).
      const T l = x_.lse(b, h, i);
      w.lse2.data()[c] = e > 0 && l > -std::numeric_limits<T>::infinity()
                             ? static_cast<T>(static_cast<double>(l) * 1.4426950408889634074)
                             : std::numeric_limits<T>::infinity();
    }
    for (index_t qb = 0; qb * Br < colsp; ++qb) {
      const index_t c0 = qb * Br, n = std::max<index_t>(0, std::min(Br, cols_ - c0));
      index_t mn = std::numeric_limits<index_t>::max(), mx = 0;
      for (index_t c = 0; c < n; ++c) {
        const auto e = static_cast<index_t>(w.kend.data()[c0 + c]);
        mn = std::min(mn, e), mx = std::max(mx, e);
      }
      w.kmin[static_cast<std::size_t>(qb)] = n > 0 ? mn : 0;
      w.kmax[static_cast<std::size_t>(qb)] = mx;
      auto qrow = [&](index_t c) { return x_.q.ptr(b, hkv * G + (c0 + c) % G, (c0 + c) / G, 0); };
      auto drow = [&](index_t c) { return x_.dout.ptr(b, hkv * G + (c0 + c) % G, (c0 + c) / G, 0); };
      pack_panel<Arch>(w.qt.data() + c0 * dk, Br, dk, n, qrow, x_.q.stride(3), qscale_);
      pack_panel<Arch>(w.dot.data() + c0 * dv, Br, dv, n, drow, x_.dout.stride(3), T(1));
    }
    return kmax;
  }

  /// The keys [j0, j0 + nk) (at kp, vp) against column block qb.
  void tile(index_t b, index_t hkv, index_t qb, index_t j0, index_t nk, const T* kp, const T* vp,
            backward_workspace<T>& w, T* dqt_all) const {
    constexpr T log2e = T(1.4426950408889634074);
    const index_t c0 = qb * Br, n = std::min(Br, cols() - c0), G = s_.group();
    const index_t dk = s_.dk, dv = s_.dv, dkp_ = dkp(), dvp_ = dvp();
    const index_t ksj = x_.k.stride(2), ksd = x_.k.stride(3), vsj = x_.v.stride(2), vsd = x_.v.stride(3);
    const bool masked = j0 + nk > w.kmin[static_cast<std::size_t>(qb)];
    T* st = w.st.data();
    T* dpt = w.dpt.data();
    const T* kend = w.kend.data() + c0;
    const T* lse2 = w.lse2.data() + c0;
    const T* dd = w.dd.data() + c0;
    // S^T = K_blk Q^T, saturated as in the forward
    tile_args<T> g1;
    g1.saturate = logit_bound<T>;
    block_product<B, MR, NV, false, false, a_layout::unit_col>(nk, dk, kp, ksj, ksd, w.qt.data() + c0 * dk,
                                                               Br, st, Br, g1);
    if (x_.bias)
      for (index_t jj = 0; jj < nk; ++jj)
        for (index_t c = 0; c < n; ++c) {
          const index_t i = (c0 + c) / G, h = hkv * G + (c0 + c) % G;
          st[jj * Br + c] =
              saturate_logit(st[jj * Br + c] + static_cast<T>(x_.bias(b, h, i, j0 + jj)) * log2e);
        }
    const index_t nvec = (n + W - 1) / W;
    // a key's window row over the block's columns, the last register partial
    auto rows = [&](index_t jj, auto&& f) {
      const T* src = wb_->row(hkv, j0 + jj) + c0;
      for (index_t cv = 0; cv < nvec; ++cv) {
        const int m = static_cast<int>(std::min<index_t>(W, n - cv * W));
        f(m == W ? B::load(src + cv * W) : B::load_partial(src + cv * W, m), jj * Br + cv * W);
      }
    };
    if (wb_ && !wb_->post)
      for (index_t jj = 0; jj < nk; ++jj)
        rows(jj, [&](B bias, index_t e) { saturate_logits(B::load(st + e) + bias).store(st + e); });
    // P^T = exp2(S^T - lse2), 0 where the key is hidden from the column
    const B ninf = B::broadcast(-std::numeric_limits<T>::infinity());
    for (index_t jj = 0; jj < nk; ++jj) {
      const B j = B::broadcast(static_cast<T>(j0 + jj));
      for (int cv = 0; cv < NV; ++cv) {
        T* sp = st + jj * Br + cv * W;
        B x = B::load(sp);
        if (masked) x = select(B::load(kend + cv * W) <= j, ninf, x);
        // <= 0 exactly: lse is rounded, and with saturated logits s2 - lse2 may be an ulp of ~1e37
        exp2_nonpositive(min(x - B::load(lse2 + cv * W), B::zero())).store(sp);
      }
    }
    // dV += P^T dO (post window bias: (P^T + bias^T) dO)
    const T* pv = st;
    if (wb_ && wb_->post) {
      T* pb = w.pbt.data();  // (only its first n columns are read)
      for (index_t jj = 0; jj < nk; ++jj)
        rows(jj, [&](B bias, index_t e) { (B::load(st + e) + bias).store(pb + e); });
      pv = pb;
    }
    if (dvp_ > 0)
      panel_product<Arch, true>(nk, n, pv, Br, 1, w.dor.data() + c0 * dvp_, dvp_, w.dvt.data(), dvp_, dvp_);
    // dP^T = V_blk dO^T
    block_product<B, MR, NV, false, false, a_layout::unit_col>(nk, dv, vp, vsj, vsd, w.dot.data() + c0 * dv,
                                                               Br, dpt, Br, tile_args<T>{});
    // a window bias's gradient: dP^T (post) or dS^T / scale (pre), added to the key's window row
    // (no masked tile: every column of a window-bias task sees the same keys)
    auto window_gradient = [&](index_t jj, const T* tile) {
      T* dst = w.dc.data() + wb_->offset(j0 + jj) + c0;
      for (index_t cv = 0; cv < nvec; ++cv) {
        const int m = static_cast<int>(std::min<index_t>(W, n - cv * W));
        const B g = B::load(tile + jj * Br + cv * W);
        if (m == W)
          (B::load(dst + cv * W) + g).store(dst + cv * W);
        else
          (B::load_partial(dst + cv * W, m) + g).store_partial(dst + cv * W, m);
      }
    };
    if (wb_ && wb_->post)
      for (index_t jj = 0; jj < nk; ++jj) window_gradient(jj, dpt);
    // dS^T = scale P^T (dP^T - D), 0 where hidden
    const B sc = B::broadcast(scale_);
    const bool pre_window = wb_ && !wb_->post;
    for (index_t jj = 0; jj < nk; ++jj) {
      const B j = B::broadcast(static_cast<T>(j0 + jj));
      for (int cv = 0; cv < NV; ++cv) {
        T* sp = st + jj * Br + cv * W;
        B ds = B::load(sp) * (B::load(dpt + jj * Br + cv * W) - B::load(dd + cv * W));
        if (masked) ds = select(B::load(kend + cv * W) <= j, B::zero(), ds);
        if (pre_window) ds.store(dpt + jj * Br + cv * W);
        (ds * sc).store(sp);
      }
      if (pre_window) window_gradient(jj, dpt);
    }
    // dK += dS^T Q
    if (dkp_ > 0)
      panel_product<Arch, true>(nk, n, st, Br, 1, w.qr.data() + c0 * dkp_, dkp_, w.dkt.data(), dkp_, dkp_);
    // dQ^T += K_blk^T dS^T; a masked step keeps a hidden key's k (even NaN) out of the columns
    tile_args<T> ga;
    T* dqt = dqt_all + c0 * dk;
    if (masked) {
      ga.col_limit = kend;
      ga.row_base = static_cast<T>(j0);
      block_product<B, MR, NV, true, true, a_layout::unit_row>(dk, nk, kp, ksd, ksj, st, Br, dqt, Br, ga);
    } else {
      block_product<B, MR, NV, true, false, a_layout::unit_row>(dk, nk, kp, ksd, ksj, st, Br, dqt, Br, ga);
    }
  }

  /// dst(b, h, j, :) = src[0, n) (zeros when src is null).
  static void store_row(const tensor_view<T, 4>& dst, index_t b, index_t h, index_t j, const T* src,
                        index_t n) {
    T* d = n > 0 ? dst.ptr(b, h, j, 0) : nullptr;
    const index_t ds = dst.stride(3);
    for (index_t e = 0; e < n; ++e) d[e * ds] = src ? src[e] : T(0);
  }

  const attention_shape& s_;
  const backward_views<T>& x_;
  const mask& m_;
  const window_bias<T>* wb_;
  T scale_, qscale_;
};

/// Key-block parts per (b, kv head): enough tasks for 8 threads when there are few kv heads, each
/// part with its own dQ^T (summed in part order). A function of the shape alone, never of the
/// thread count, so neither are the bits.
inline index_t backward_parts(index_t bhkv, index_t key_blocks) {
  if (bhkv <= 0 || bhkv >= 8) return 1;
  return std::clamp<index_t>(8 / bhkv, 1, std::max<index_t>(key_blocks, 1));
}

/// Runs the backward over every (b, kv head, part) task. With a window bias, its gradient
/// dtable [H, 2 rows - 1, 2 cols - 1] is the sum of the tasks' folded tables, over b and the parts
/// in order.
template <class Arch, class T>
void flash_attention_backward(const attention_shape& s, const backward_views<T>& x, const mask& msk,
                              int threads, double scale, const window_bias<T>* wb = nullptr,
                              const tensor_view<T, 3>* dtable = nullptr) {
  using task_t = flash_backward_task<Arch, T>;
  const task_t task(s, x, msk, scale, wb);
  const index_t bhkv = s.B * s.Hkv, nkb = (s.Lk + task_t::Bk - 1) / task_t::Bk;
  const index_t parts = backward_parts(bhkv, nkb), per = (nkb + parts - 1) / parts;
  const index_t ntasks = bhkv * parts;
  const int nt = resolve_threads(threads, ntasks);
  std::vector<backward_workspace<T>> ws;
  ws.reserve(static_cast<std::size_t>(nt));
  for (int t = 0; t < nt; ++t) ws.push_back(task.workspace());
  const index_t set = task.padded_cols() * s.dk, tsz = wb ? wb->table_size() : 0;
  tensor<T, 1> partial({parts > 1 ? std::max<index_t>(ntasks * set, 1) : 1});
  tensor<T, 1> tables({std::max<index_t>(ntasks * tsz, 1)});
  parallel_for(ntasks, nt, [&](index_t t, int thread) {
    const index_t bh = t / parts, p = t % parts;
    auto& w = ws[static_cast<std::size_t>(thread)];
    T* dqt = parts > 1 ? partial.data() + t * set : w.dqt.data();
    task.run(bh / s.Hkv, bh % s.Hkv, p * per, (p + 1) * per, w, dqt, tables.data() + t * tsz);
    if (parts == 1) task.write_dq(bh / s.Hkv, bh % s.Hkv, dqt, 1);
  });
  if (parts > 1)
    parallel_for(bhkv, nt, [&](index_t bh, int) {
      task.write_dq(bh / s.Hkv, bh % s.Hkv, partial.data() + bh * parts * set, parts);
    });
  if (!wb || !dtable) return;
  const index_t G = s.group(), R = 2 * wb->H - 1, TW = 2 * wb->W - 1;
  parallel_for(s.H, nt, [&](index_t h, int) {
    const index_t hkv = h / G, g = h % G;
    for (index_t ty = 0; ty < R; ++ty)
      for (index_t tx = 0; tx < TW; ++tx) {
        T acc = T(0);
        for (index_t b = 0; b < s.B; ++b)
          for (index_t p = 0; p < parts; ++p)
            acc += tables.data()[((b * s.Hkv + hkv) * parts + p) * tsz + (g * R + ty) * TW + tx];
        (*dtable)(h, ty, tx) = acc;
      }
  });
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
