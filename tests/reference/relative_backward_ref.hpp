// attnkit tests: the naive fp64 forward (with its log-sum-exp) and backward of CoAtNet's 2D relative
// attention (docs/design.md §4.5), written from the formulas, independently of the kernels (it only
// reads attnkit's option structs and views). For every (b, h, i) the logits, the probabilities P,
// dP = dout_i . v_j and dS of the visible keys are materialized in double. Only visible keys
// (j < key_lengths[b]) are ever read, so NaN / Inf stored in padding keys or values cannot reach a
// reference gradient.
//
//   z_ij = scale q_i . k_j + w_ij (pre_softmax) or scale q_i . k_j (post_softmax),
//   P_ij = softmax_{j visible}(z_ij),  lse_i = ln sum_{j visible} exp(z_ij) (-inf without keys),
//   a_ij = P_ij (pre) or P_ij + w_ij (post),  out_i = sum_j a_ij v_j,
//   dP_ij = dout_i . v_j,  D_i = sum_j P_ij dP_ij  (= dout_i . out_i pre, dout_i . (out_i - sum_j w_ij v_j)
//   post),  dS_ij = P_ij (dP_ij - D_i),
//   dq_i = scale sum_j dS_ij k_j,  dk_j = scale sum_{heads of the group, i} dS_ij q_i,
//   dv_j = sum_{heads, i} a_ij dout_i,  dtable[h, off(i, j)] += dS_ij (pre) or dP_ij (post), over b too.
//
// Magnitudes (the sums of the absolute values of each element's terms, against which a kernel's
// rounding is measured, as ref::attention_backward's):
//   out: sum_j (P_ij + |w_ij| post) |v_j|;
//   |D_i| is taken as AD_i = |D_i| (pre, as ref::attention_backward) and
//     AD_i = |D_i| + 2 sum_j |w_ij| sum_p |dout_ip v_jp| (post): the kernel forms D = dout . (out - O2)
//     with out and O2 = sum_j w_ij v_j both carrying the table's terms, which cancel in the
//     difference; the rounding of each scales with sum_j |w_ij| |v_j|, hence twice that dotted with |dout|;
//   |dS_ij| = P_ij (|dP_ij| + AD_i);  adq = |scale| sum_j |dS_ij| |k_j|, adk alike with |q_i|;
//   adv = sum_i (P_ij + |w_ij| post) |dout_i|;
//   adtable: sum |dS_ij| (pre) or sum_{pairs} sum_p |dout_ip v_jp| (post: dP's own terms; a table
//     entry few pairs use is a sum of few dot products, whose rounding scales with their terms, not
//     with their possibly cancelling value).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include <attnkit/coatnet/options.hpp>
#include <attnkit/core/tensor.hpp>

#include "common.hpp"
#include "relative_ref.hpp"

namespace attnkit_test {
namespace ref {

/// The table index (dy + H - 1, dx + W - 1) of query i and key j of a rows x cols grid.
inline std::pair<index_t, index_t> relative_index(attnkit::relative_grid grid,
                                                  attnkit::relative_offset offset, index_t i, index_t j) {
  const index_t H = grid.rows, W = grid.cols;
  const index_t yi = i / W, xi = i % W, yj = j / W, xj = j % W;
  const bool kmq = offset == attnkit::relative_offset::key_minus_query;
  return {(kmq ? yj - yi : yi - yj) + H - 1, (kmq ? xj - xi : xi - xj) + W - 1};
}

/// The forward with lse, the four gradients and their magnitudes (see the file header).
struct relative_gradients {
  attnkit::tensor<double, 4> out, aout;        ///< [B, heads, L, dv]
  attnkit::tensor<double, 3> lse;              ///< [B, heads, L]
  attnkit::tensor<double, 4> dq, adq;          ///< [B, heads, L, dk]
  attnkit::tensor<double, 4> dk, adk;          ///< [B, Hkv, L, dk]
  attnkit::tensor<double, 4> dv, adv;          ///< [B, Hkv, L, dv]
  attnkit::tensor<double, 3> dtable, adtable;  ///< [heads, 2H - 1, 2W - 1]
};

/// q [B, heads, L, dk], k [B, Hkv, L, dk], v [B, Hkv, L, dv], table [heads, 2H - 1, 2W - 1],
/// dout [B, heads, L, dv]; head h reads kv head h / (heads / Hkv). opt.mask.causal / bias are
/// ignored (the operator rejects them; the reference is only called with valid arguments).
template <class T, class U>
relative_gradients relative_attention_2d_backward(const view<const T, 4>& q, const view<const T, 4>& k,
                                                  const view<const T, 4>& v, const view<const U, 3>& table,
                                                  const view<const T, 4>& dout, attnkit::relative_grid grid,
                                                  const attnkit::relative_options& opt) {
  const index_t B = q.extent(0), H = q.extent(1), L = q.extent(2), dk = q.extent(3);
  const index_t Hkv = k.extent(1), dv = v.extent(3);
  REQUIRE(k.extent(0) == B);
  REQUIRE(k.extent(2) == L);
  REQUIRE(k.extent(3) == dk);
  REQUIRE(v.extent(0) == B);
  REQUIRE(v.extent(1) == Hkv);
  REQUIRE(v.extent(2) == L);
  REQUIRE(dout.extents() == (std::array<index_t, 4>{B, H, L, dv}));
  REQUIRE(grid.rows * grid.cols == L);
  REQUIRE((H == 0 || (Hkv > 0 && H % Hkv == 0)));
  const index_t R = std::max<index_t>(2 * grid.rows - 1, 0), C = std::max<index_t>(2 * grid.cols - 1, 0);
  REQUIRE(table.extents() == (std::array<index_t, 3>{H, R, C}));
  const index_t group = Hkv > 0 ? H / Hkv : 1;
  const double scale =
      opt.scale != 0.0 ? opt.scale : 1.0 / std::sqrt(static_cast<double>(std::max<index_t>(dk, 1)));
  const double ascale = std::fabs(scale);
  const bool post = opt.mode == attnkit::relative_mode::post_softmax;
  using t4 = attnkit::tensor<double, 4>;
  using t3 = attnkit::tensor<double, 3>;
  relative_gradients g{t4({B, H, L, dv}),   t4({B, H, L, dv}),   t3({B, H, L}),       t4({B, H, L, dk}),
                       t4({B, H, L, dk}),   t4({B, Hkv, L, dk}), t4({B, Hkv, L, dk}), t4({B, Hkv, L, dv}),
                       t4({B, Hkv, L, dv}), t3({H, R, C}),       t3({H, R, C})};
  std::vector<double> qi(static_cast<std::size_t>(dk)), di(static_cast<std::size_t>(dv));
  std::vector<double> p, w, dp, adp;
  for (index_t b = 0; b < B; ++b) {
    const index_t len = opt.mask.key_lengths.data() ? static_cast<index_t>(opt.mask.key_lengths(b)) : L;
    REQUIRE((len >= 0 && len <= L));
    for (index_t h = 0; h < H; ++h) {
      const index_t hk = h / group;
      for (index_t i = 0; i < L; ++i) {
        if (len == 0) {
          g.lse(b, h, i) = -std::numeric_limits<double>::infinity();
          continue;  // out, dq = 0; no pair
        }
        for (index_t x = 0; x < dk; ++x)
          qi[static_cast<std::size_t>(x)] = static_cast<double>(at(q, {b, h, i, x}));
        for (index_t e = 0; e < dv; ++e)
          di[static_cast<std::size_t>(e)] = static_cast<double>(at(dout, {b, h, i, e}));
        const std::size_t n = static_cast<std::size_t>(len);
        p.assign(n, 0.0);
        w.assign(n, 0.0);
        dp.assign(n, 0.0);
        adp.assign(n, 0.0);
        for (index_t j = 0; j < len; ++j) {
          const std::size_t t = static_cast<std::size_t>(j);
          double s = 0;
          for (index_t x = 0; x < dk; ++x)
            s += qi[static_cast<std::size_t>(x)] * static_cast<double>(at(k, {b, hk, j, x}));
          w[t] = relative_weight(table, h, grid, opt.offset, i, j);
          p[t] = scale * s + (post ? 0.0 : w[t]);
          for (index_t e = 0; e < dv; ++e) {
            const double y = di[static_cast<std::size_t>(e)] * static_cast<double>(at(v, {b, hk, j, e}));
            dp[t] += y;
            adp[t] += std::fabs(y);
          }
        }
        const double mx = *std::max_element(p.begin(), p.end());
        double sum = 0;
        for (double& x : p) sum += (x = std::exp(x - mx));
        for (double& x : p) x /= sum;
        g.lse(b, h, i) = mx + std::log(sum);
        double D = 0, cancel = 0;
        for (std::size_t t = 0; t < n; ++t) {
          D += p[t] * dp[t];
          cancel += std::fabs(w[t]) * adp[t];
        }
        const double AD = std::fabs(D) + (post ? 2 * cancel : 0.0);
        for (index_t j = 0; j < len; ++j) {
          const std::size_t t = static_cast<std::size_t>(j);
          const double a = post ? p[t] + w[t] : p[t], aa = post ? p[t] + std::fabs(w[t]) : p[t];
          const double ds = p[t] * (dp[t] - D), ads = p[t] * (std::fabs(dp[t]) + AD);
          for (index_t e = 0; e < dv; ++e) {
            const double ve = static_cast<double>(at(v, {b, hk, j, e})), de = di[static_cast<std::size_t>(e)];
            g.out(b, h, i, e) += a * ve;
            g.aout(b, h, i, e) += aa * std::fabs(ve);
            g.dv(b, hk, j, e) += a * de;
            g.adv(b, hk, j, e) += aa * std::fabs(de);
          }
          for (index_t x = 0; x < dk; ++x) {
            const double kx = static_cast<double>(at(k, {b, hk, j, x})), qx = qi[static_cast<std::size_t>(x)];
            g.dq(b, h, i, x) += scale * ds * kx;
            g.adq(b, h, i, x) += ascale * ads * std::fabs(kx);
            g.dk(b, hk, j, x) += scale * ds * qx;
            g.adk(b, hk, j, x) += ascale * ads * std::fabs(qx);
          }
          const auto o = relative_index(grid, opt.offset, i, j);
          g.dtable(h, o.first, o.second) += post ? dp[t] : ds;
          g.adtable(h, o.first, o.second) += post ? adp[t] : ads;
        }
      }
    }
  }
  return g;
}

}  // namespace ref
}  // namespace attnkit_test
