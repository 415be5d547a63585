// attnkit: the lambda kernel (docs/design.md §4.4). Per batch entry b:
//   Vp   = V repacked as [(m, u), v] rows (v padded to whole SIMD registers with zeros)
//   lc   = Kbar Vp, Kbar[k, (m, u)] = softmax over m of K[m, k, u] (causal: per query, prefix)
// and per query position n (its own lambda C, k x v, built in registers-sized tiles and used at once):
//   C    = lc + sum over the key rows of the term's window:  Rp[k, (x', u)] * Vp[(x', u), :]
//   Y[n] = Q[n] (h x k) * C
// Every product is a block product (core/gemm.hpp) with the repacked values as the packed operand,
// so no [n, m] map, per example or not, ever exists: a relative or local table is read through a
// window that slides with n, a global E row by row.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../../core/gemm.hpp"
#include "../../core/math.hpp"
#include "../../core/parallel.hpp"
#include "check.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// Online softmax over the context positions of every (k, u), with the value rows it weighs:
/// S[(k, u), :] = sum_m e^{K[m, k, u] - M[k, u]} Vp[(m, u), :], Z[k, u] = sum_m e^{K - M}.
template <class T>
struct lambda_prefix {
  std::vector<T> s, z, mx;
  void reset(index_t ku, index_t vp) {
    s.assign(static_cast<std::size_t>(ku * vp), T(0));
    z.assign(static_cast<std::size_t>(ku), T(0));
    mx.assign(static_cast<std::size_t>(ku), -std::numeric_limits<T>::infinity());
  }
};

/// Per-thread scratch.
template <class T>
struct lambda_workspace {
  std::vector<T> kbar, c, y, a;
  lambda_prefix<T> prefix;
};

/// The kernel on checked arguments.
template <class Arch, class T>
class lambda_kernel {
 public:
  using B = simd::batch<T, Arch>;
  static constexpr index_t W = B::size;
  static constexpr index_t chunk = 64;  ///< query positions per task (fixed: same bits for any thread count)

  lambda_kernel(const lambda_shape& s, const tensor_view<const T, 4>& q, const tensor_view<const T, 4>& k,
                const tensor_view<const T, 4>& v, const lambda_position<T>& pos, const tensor_view<T, 3>& out,
                const lambda_options& o)
      : s_(s), q_(q), k_(k), v_(v), pos_(pos), out_(out), o_(o), vp_((s.v + W - 1) / W * W) {}

  void run() {
    const index_t nchunks = (s_.n + chunk - 1) / chunk;
    vpack_.assign(static_cast<std::size_t>(s_.B * s_.m * s_.u * vp_), T(0));
    lc_.assign(static_cast<std::size_t>(s_.causal ? 0 : s_.B * s_.k * vp_), T(0));
    // causal: the prefix state at the start of every chunk (one serial pass per batch entry)
    const index_t nstate = s_.causal ? s_.B * nchunks : 0;
    states_.assign(static_cast<std::size_t>(nstate), lambda_prefix<T>{});
    pack_table();
    const int nt = resolve_threads(o_.threads, s_.B * nchunks);
    std::vector<lambda_workspace<T>> ws(static_cast<std::size_t>(nt));
    parallel_for(s_.B, resolve_threads(o_.threads, s_.B), [&](index_t b, int t) {
      pack_values(b);
      if (s_.causal)
        prefix_states(b, nchunks, ws[static_cast<std::size_t>(t)].prefix);
      else
        content(b, ws[static_cast<std::size_t>(t)]);
    });
    parallel_for(s_.B * nchunks, nt, [&](index_t task, int t) {
      const index_t b = task / nchunks, c = task % nchunks;
      positions(b, c, ws[static_cast<std::size_t>(t)]);
    });
  }

 private:
  index_t len(index_t b) const {
    return o_.mask.key_lengths ? static_cast<index_t>(o_.mask.key_lengths(b)) : s_.m;
  }
  const T* vp(index_t b) const { return vpack_.data() + b * s_.m * s_.u * vp_; }

  /// Vp[b][(m, u), e] = V[b, m, e, u] for the context positions m < len(b).
  void pack_values(index_t b) {
    T* dst = vpack_.data() + b * s_.m * s_.u * vp_;
    const index_t n = len(b);
    for (index_t m = 0; m < n; ++m)
      for (index_t u = 0; u < s_.u; ++u) {
        T* row = dst + (m * s_.u + u) * vp_;
        const T* src = v_.ptr(b, m, 0, u);
        const index_t se = v_.stride(2);
        for (index_t e = 0; e < s_.v; ++e) row[e] = src[e * se];
      }
  }

  /// Relative / local tables as Rp[ty][k][(tx, u)]: a window of key columns of one key row is one
  /// contiguous run of (tx, u) per k, the layout of the value rows Vp[(x', u)].
  void pack_table() {
    if (pos_.kind != lambda_position_kind::relative && pos_.kind != lambda_position_kind::local) return;
    const auto& t = pos_.table;
    const index_t rh = t.extent(0), rw = t.extent(1);
    rp_.assign(static_cast<std::size_t>(rh * s_.k * rw * s_.u), T(0));
    for (index_t ty = 0; ty < rh; ++ty)
      for (index_t kk = 0; kk < s_.k; ++kk)
        for (index_t tx = 0; tx < rw; ++tx)
          for (index_t u = 0; u < s_.u; ++u)
            rp_[static_cast<std::size_t>(((ty * s_.k + kk) * rw + tx) * s_.u + u)] = t(ty, tx, kk, u);
  }

  /// Bidirectional content lambda of batch entry b: lc = Kbar Vp.
  void content(index_t b, lambda_workspace<T>& w) {
    const index_t n = len(b), nu = n * s_.u;
    T* lc = lc_.data() + b * s_.k * vp_;
    if (n == 0) return;  // no context: lc = 0
    w.kbar.resize(static_cast<std::size_t>(s_.k * nu));
    for (index_t kk = 0; kk < s_.k; ++kk)
      for (index_t u = 0; u < s_.u; ++u) {
        T mx = -std::numeric_limits<T>::infinity();
        for (index_t m = 0; m < n; ++m) mx = std::max(mx, k_(b, m, kk, u));
        T z = 0;
        T* row = w.kbar.data() + kk * nu;
        for (index_t m = 0; m < n; ++m) {
          const T e = exp_scalar(k_(b, m, kk, u) - mx);
          row[m * s_.u + u] = e;
          z += e;
        }
        const T inv = T(1) / z;
        for (index_t m = 0; m < n; ++m) row[m * s_.u + u] *= inv;
      }
    panel_product<Arch, false>(s_.k, nu, w.kbar.data(), nu, index_t(1), vp(b), vp_, lc, vp_, vp_);
  }

  /// Advances the causal prefix state of batch entry b over the context positions [m0, m1).
  void advance(index_t b, lambda_prefix<T>& p, index_t m0, index_t m1) const {
    const T* vb = vp(b);
    for (index_t m = m0; m < m1; ++m)
      for (index_t kk = 0; kk < s_.k; ++kk)
        for (index_t u = 0; u < s_.u; ++u) {
          const std::size_t i = static_cast<std::size_t>(kk * s_.u + u);
          const T x = k_(b, m, kk, u);
          T* srow = p.s.data() + static_cast<index_t>(i) * vp_;
          if (x > p.mx[i]) {
            const T r = exp_scalar(p.mx[i] - x);  // 0 for the first position (mx = -inf)
            for (index_t e = 0; e < vp_; ++e) srow[e] *= r;
            p.z[i] *= r;
            p.mx[i] = x;
          }
          const T wgt = exp_scalar(x - p.mx[i]);
          p.z[i] += wgt;
          axpy<Arch>(vp_, wgt, vb + (m * s_.u + u) * vp_, srow);
        }
  }

  /// Visible context positions of query n: [0, end(b, n)).
  index_t visible_end(index_t b, index_t n) const {
    const index_t l = len(b);
    if (!s_.causal) return l;
    const index_t off = o_.mask.causal == causal_mode::bottom_right ? s_.m - s_.n : 0;
    return std::clamp<index_t>(n + off + 1, 0, l);
  }

  /// The causal prefix state at the start of every chunk of batch entry b.
  void prefix_states(index_t b, index_t nchunks, lambda_prefix<T>& p) {
    p.reset(s_.k * s_.u, vp_);
    index_t done = 0;
    for (index_t c = 0; c < nchunks; ++c) {
      const index_t e = c * chunk == 0 ? 0 : visible_end(b, c * chunk - 1);
      advance(b, p, done, std::max(done, e));
      done = std::max(done, e);
      states_[static_cast<std::size_t>(b * nchunks + c)] = p;
    }
  }

  /// The queries [c * chunk, ...) of batch entry b.
  void positions(index_t b, index_t c, lambda_workspace<T>& w) {
    const index_t n0 = c * chunk, n1 = std::min(s_.n, n0 + chunk);
    const index_t kv = s_.k * vp_;
    w.c.resize(static_cast<std::size_t>(kv));
    w.y.resize(static_cast<std::size_t>(s_.h * vp_));
    T* cm = w.c.data();
    index_t done = 0;
    if (s_.causal) {
      const index_t nchunks = (s_.n + chunk - 1) / chunk;
      w.prefix = states_[static_cast<std::size_t>(b * nchunks + c)];
      done = n0 == 0 ? 0 : visible_end(b, n0 - 1);
    }
    for (index_t n = n0; n < n1; ++n) {
      const index_t end = visible_end(b, n);
      if (s_.causal) {
        advance(b, w.prefix, done, std::max(done, end));
        done = std::max(done, end);
        causal_content(w.prefix, end, cm);
      } else {
        std::copy(lc_.data() + b * kv, lc_.data() + (b + 1) * kv, cm);
      }
      add_position(b, n, end, cm, w.a);
      // Y[n] = Q[n] C
      panel_product<Arch, false>(s_.h, s_.k, q_.ptr(b, n, 0, 0), q_.stride(2), q_.stride(3), cm, vp_,
                                 w.y.data(), vp_, vp_);
      const index_t os = out_.stride(2);
      T* orow = out_.ptr(b, n, 0);
      for (index_t hh = 0; hh < s_.h; ++hh)
        for (index_t e = 0; e < s_.v; ++e)
          orow[(hh * s_.v + e) * os] = w.y[static_cast<std::size_t>(hh * vp_ + e)];
    }
  }

  /// C = sum_u S[(k, u)] / Z[k, u] (0 when the query sees no context).
  void causal_content(const lambda_prefix<T>& p, index_t end, T* cm) const {
    std::fill(cm, cm + s_.k * vp_, T(0));
    if (end == 0) return;
    for (index_t kk = 0; kk < s_.k; ++kk)
      for (index_t u = 0; u < s_.u; ++u) {
        const std::size_t i = static_cast<std::size_t>(kk * s_.u + u);
        axpy<Arch>(vp_, T(1) / p.z[i], p.s.data() + static_cast<index_t>(i) * vp_, cm + kk * vp_);
      }
  }

  /// C += the position lambda of query n over the context positions [0, end).
  void add_position(index_t b, index_t n, index_t end, T* cm, std::vector<T>& ga) const {
    const T* vb = vp(b);
    const index_t U = s_.u;
    if (s_.k == 0) return;  // C has no rows (and the packed table no elements to address)
    switch (pos_.kind) {
      case lambda_position_kind::none:
        return;
      case lambda_position_kind::global: {
        const auto& e = pos_.embeddings;
        for (index_t u = 0; u < U && end > 0; ++u)
          panel_product<Arch, true>(s_.k, end, e.ptr(n, 0, 0, u), e.stride(2), e.stride(1), vb + u * vp_,
                                    U * vp_, cm, vp_, vp_);
        return;
      }
      default:
        break;
    }
    // relative / local: key rows y' of the window, columns [x0, x1) of each
    const bool rel = pos_.kind == lambda_position_kind::relative;
    const index_t H = s_.rows, Wd = s_.cols, rh = pos_.table.extent(0), rw = pos_.table.extent(1);
    const index_t y = n / Wd, x = n % Wd;
    const index_t cy = rel ? H - 1 : rh / 2, cx = rel ? Wd - 1 : rw / 2;  // table index of offset 0
    const index_t ya = std::max<index_t>(0, y - cy), yb = std::min<index_t>(H, y - cy + rh);
    const index_t xa = std::max<index_t>(0, x - cx), xw = std::min<index_t>(Wd, x - cx + rw);
    const index_t tx = xa - x + cx;
    auto table = [&](index_t yy, index_t kk) {
      return rp_.data() + (((yy - y + cy) * s_.k + kk) * rw + tx) * U;
    };
    if (xa == 0 && xw == Wd) {
      // Whole rows (every relative term; local terms wider than the grid): the window's value rows
      // are contiguous, so gather its table rows into one [k, (m, u)] panel and make one product
      // over all of them (a per-query panel, k x m, never an [n, m] map).
      const index_t m0 = ya * Wd, m1 = std::min(yb * Wd, end);
      if (m1 <= m0) return;
      const index_t kc = (m1 - m0) * U;
      ga.resize(static_cast<std::size_t>(s_.k * kc));
      for (index_t kk = 0; kk < s_.k; ++kk)
        for (index_t yy = ya; yy * Wd < m1; ++yy) {
          const T* src = table(yy, kk);
          std::copy(src, src + (std::min(Wd, m1 - yy * Wd)) * U, ga.data() + kk * kc + (yy - ya) * Wd * U);
        }
      // In slices of kb value rows: the slice of one column chunk (kb x NV registers, 24 KiB in
      // float) stays in L1 for every row tile of the k rows.
      constexpr index_t kb = 192 * 4 / static_cast<index_t>(sizeof(T));
      for (index_t p0 = 0; p0 < kc; p0 += kb)
        panel_product<Arch, true>(s_.k, std::min(kb, kc - p0), ga.data() + p0, kc, index_t(1),
                                  vb + (m0 * U + p0) * vp_, vp_, cm, vp_, vp_);
      return;
    }
    // A window narrower than the grid: one product per key row over its columns [xa, xb).
    for (index_t yy = ya; yy < yb; ++yy) {
      const index_t xb = std::min(xw, end - yy * Wd);
      if (xb <= xa) continue;
      panel_product<Arch, true>(s_.k, (xb - xa) * U, table(yy, 0), rw * U, index_t(1),
                                vb + (yy * Wd + xa) * U * vp_, vp_, cm, vp_, vp_);
    }
  }

  const lambda_shape& s_;
  const tensor_view<const T, 4>& q_;
  const tensor_view<const T, 4>& k_;
  const tensor_view<const T, 4>& v_;
  const lambda_position<T>& pos_;
  const tensor_view<T, 3>& out_;
  const lambda_options& o_;
  const index_t vp_;
  std::vector<T> vpack_, lc_, rp_;
  std::vector<lambda_prefix<T>> states_;
};

}  // namespace detail
ATTNKIT_END_NAMESPACE
