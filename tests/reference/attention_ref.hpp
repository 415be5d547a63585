// attnkit tests: naive fp64 exact attention, written from docs/design.md §4.1 and the mask model of
// section 3, independently of the library's kernels (it only reads attnkit's option structs and
// views). Everything is materialized; only visible keys are ever read, so NaN / Inf stored in
// invisible keys, values or bias entries cannot reach a reference output.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <attnkit/core/tensor.hpp>
#include <attnkit/full/options.hpp>

#include "common.hpp"

namespace attnkit_test {
namespace ref {

/// Is key j visible to query i of batch entry b? (docs/design.md §3: causal offset uses the full Lk.)
inline bool visible(const attnkit::mask& m, index_t b, index_t i, index_t j, index_t lq, index_t lk) {
  const index_t len = m.key_lengths.data() ? static_cast<index_t>(m.key_lengths(b)) : lk;
  if (j < 0 || j >= len) return false;
  switch (m.causal) {
    case attnkit::causal_mode::none:
      return true;
    case attnkit::causal_mode::top_left:
      return j <= i;
    case attnkit::causal_mode::bottom_right:
      return j <= i + (lk - lq);
  }
  return false;
}

/// The additive bias of (b, h, i, j); a bias extent of 1 broadcasts along its axis.
inline double bias_at(const view<const float, 4>& bias, index_t b, index_t h, index_t i, index_t j) {
  if (!bias.data()) return 0.0;
  const std::array<index_t, 4> ix{bias.extent(0) == 1 ? 0 : b, bias.extent(1) == 1 ? 0 : h,
                                  bias.extent(2) == 1 ? 0 : i, bias.extent(3) == 1 ? 0 : j};
  return static_cast<double>(at(bias, ix));
}

/// The logit scale: `scale`, or 1/sqrt(dk) when it is 0.
inline double resolve_scale(double scale, index_t dk) {
  return scale != 0.0 ? scale : 1.0 / std::sqrt(static_cast<double>(std::max<index_t>(dk, 1)));
}

/// Extra facts about one reference row, for tolerance budgets.
struct row_info {
  index_t visible = 0;                                    ///< number of visible keys
  double max_abs_logit = 0;                               ///< max over visible keys of |scale q.k + bias|
  double lse = -std::numeric_limits<double>::infinity();  ///< ln sum over visible keys of exp(logit)
};

/// out[b, h, i, :] = sum_{j visible} softmax_j(scale q_i.k_j + bias_ij) v_j in fp64, with
/// q [B, H, Lq, dk], k [B, Hkv, Lk, dk], v [B, Hkv, Lk, dv]; head h reads kv head h / (H / Hkv).
/// A row without visible keys is zero. `info` (optional) receives one row_info per (b, h, i).
template <class T>
attnkit::tensor<double, 4> attention(const view<const T, 4>& q, const view<const T, 4>& k,
                                     const view<const T, 4>& v, const attnkit::attention_options& opt,
                                     std::vector<row_info>* info = nullptr) {
  const index_t B = q.extent(0), H = q.extent(1), Lq = q.extent(2), dk = q.extent(3);
  const index_t Hkv = k.extent(1), Lk = k.extent(2), dv = v.extent(3);
  REQUIRE(k.extent(0) == B);
  REQUIRE(v.extent(0) == B);
  REQUIRE(v.extent(1) == Hkv);
  REQUIRE(v.extent(2) == Lk);
  REQUIRE(k.extent(3) == dk);
  REQUIRE((H == 0 || (Hkv > 0 && H % Hkv == 0)));
  const index_t group = Hkv > 0 ? H / Hkv : 1;
  const double scale = resolve_scale(opt.scale, dk);
  attnkit::tensor<double, 4> out({B, H, Lq, dv});
  if (info) info->assign(static_cast<std::size_t>(B * H * Lq), row_info{});
  // K and V of one (b, kv head) and one query row, widened to double and packed contiguously.
  std::vector<double> K(static_cast<std::size_t>(Lk * dk)), V(static_cast<std::size_t>(Lk * dv)),
      qi(static_cast<std::size_t>(dk)), acc(static_cast<std::size_t>(dv));
  std::vector<index_t> keys;
  std::vector<double> s;
  for (index_t b = 0; b < B; ++b)
    for (index_t hk = 0; hk < Hkv; ++hk) {
      for (index_t j = 0; j < Lk; ++j) {
        const T* kr = &at(k, {b, hk, j, 0});
        const T* vr = &at(v, {b, hk, j, 0});
        double* Kj = K.data() + j * dk;
        double* Vj = V.data() + j * dv;
        for (index_t p = 0; p < dk; ++p) Kj[p] = static_cast<double>(kr[p * k.stride(3)]);
        for (index_t e = 0; e < dv; ++e) Vj[e] = static_cast<double>(vr[e * v.stride(3)]);
      }
      for (index_t h = hk * group; h < (hk + 1) * group; ++h)
        for (index_t i = 0; i < Lq; ++i) {
          for (index_t p = 0; p < dk; ++p)
            qi[static_cast<std::size_t>(p)] = static_cast<double>(at(q, {b, h, i, p}));
          keys.clear();
          s.clear();
          for (index_t j = 0; j < Lk; ++j) {
            if (!visible(opt.mask, b, i, j, Lq, Lk)) continue;
            const double* kj = K.data() + j * dk;
            double d4[4] = {0, 0, 0, 0};  // four partial sums: no loop-carried dependency on one add
            index_t p = 0;
            for (; p + 4 <= dk; p += 4)
              for (int r = 0; r < 4; ++r) d4[r] += qi[static_cast<std::size_t>(p + r)] * kj[p + r];
            for (; p < dk; ++p) d4[0] += qi[static_cast<std::size_t>(p)] * kj[p];
            const double dot = (d4[0] + d4[1]) + (d4[2] + d4[3]);
            keys.push_back(j);
            s.push_back(scale * dot + bias_at(opt.mask.bias, b, h, i, j));
          }
          row_info ri;
          ri.visible = static_cast<index_t>(keys.size());
          std::fill(acc.begin(), acc.end(), 0.0);
          if (!keys.empty()) {
            const double mx = *std::max_element(s.begin(), s.end());
            double sum = 0;
            for (std::size_t t = 0; t < keys.size(); ++t) {
              ri.max_abs_logit = std::max(ri.max_abs_logit, std::fabs(s[t]));
              const double w = std::exp(s[t] - mx);
              sum += w;
              const double* vj = V.data() + keys[t] * dv;
              for (index_t e = 0; e < dv; ++e) acc[static_cast<std::size_t>(e)] += w * vj[e];
            }
            for (double& a : acc) a /= sum;
            ri.lse = mx + std::log(sum);
          }
          for (index_t e = 0; e < dv; ++e)
            out.data()[((b * H + h) * Lq + i) * dv + e] = acc[static_cast<std::size_t>(e)];
          if (info) (*info)[static_cast<std::size_t>((b * H + h) * Lq + i)] = ri;
        }
    }
  return out;
}

/// The gradients of attention (above) in fp64, from the materialized probabilities of each
/// (b, head): with P the softmax over the visible keys, dP_ij = dout_i.v_j, D_i = sum_j P_ij dP_ij,
/// dS = P (dP - D): dq_i = scale sum_j dS_ij k_j, dk_j = scale sum_{heads, i} dS_ij q_i,
/// dv_j = sum_{heads, i} P_ij dout_i. Hidden keys are never read. adq, adk, adv are the sums of
/// the magnitudes of the terms of each gradient element, with |dS| taken as P (|dP| + |D|) (the
/// scale against which a kernel's rounding of dP - D and of the sums is measured).
struct gradients {
  attnkit::tensor<double, 4> dq, dk, dv, adq, adk, adv;
};
template <class T>
gradients attention_backward(const view<const T, 4>& q, const view<const T, 4>& k, const view<const T, 4>& v,
                             const view<const T, 4>& dout, const attnkit::attention_options& opt) {
  const index_t B = q.extent(0), H = q.extent(1), Lq = q.extent(2), dk = q.extent(3);
  const index_t Hkv = k.extent(1), Lk = k.extent(2), dv = v.extent(3);
  const index_t group = Hkv > 0 ? H / Hkv : 1;
  const double scale = resolve_scale(opt.scale, dk);
  gradients g{attnkit::tensor<double, 4>({B, H, Lq, dk}),   attnkit::tensor<double, 4>({B, Hkv, Lk, dk}),
              attnkit::tensor<double, 4>({B, Hkv, Lk, dv}), attnkit::tensor<double, 4>({B, H, Lq, dk}),
              attnkit::tensor<double, 4>({B, Hkv, Lk, dk}), attnkit::tensor<double, 4>({B, Hkv, Lk, dv})};
  std::vector<index_t> keys;
  std::vector<double> p, dp;
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h) {
      const index_t hk = h / group;
      for (index_t i = 0; i < Lq; ++i) {
        keys.clear();
        p.clear();
        for (index_t j = 0; j < Lk; ++j) {
          if (!visible(opt.mask, b, i, j, Lq, Lk)) continue;
          double d = 0;
          for (index_t x = 0; x < dk; ++x)
            d += static_cast<double>(at(q, {b, h, i, x})) * static_cast<double>(at(k, {b, hk, j, x}));
          keys.push_back(j);
          p.push_back(scale * d + bias_at(opt.mask.bias, b, h, i, j));
        }
        if (keys.empty()) continue;
        const double mx = *std::max_element(p.begin(), p.end());
        double sum = 0;
        for (double& x : p) sum += (x = std::exp(x - mx));
        for (double& x : p) x /= sum;
        dp.assign(keys.size(), 0.0);
        double D = 0;
        for (std::size_t t = 0; t < keys.size(); ++t) {
          for (index_t e = 0; e < dv; ++e)
            dp[t] +=
                static_cast<double>(at(dout, {b, h, i, e})) * static_cast<double>(at(v, {b, hk, keys[t], e}));
          D += p[t] * dp[t];
        }
        for (std::size_t t = 0; t < keys.size(); ++t) {
          const index_t j = keys[t];
          const double ds = p[t] * (dp[t] - D) * scale;
          const double da = p[t] * (std::fabs(dp[t]) + std::fabs(D)) * std::fabs(scale);
          for (index_t x = 0; x < dk; ++x) {
            const double kx = static_cast<double>(at(k, {b, hk, j, x})),
                         qx = static_cast<double>(at(q, {b, h, i, x}));
            const index_t iq = ((b * H + h) * Lq + i) * dk + x, ik = ((b * Hkv + hk) * Lk + j) * dk + x;
            g.dq.data()[iq] += ds * kx;
            g.adq.data()[iq] += da * std::fabs(kx);
            g.dk.data()[ik] += ds * qx;
            g.adk.data()[ik] += da * std::fabs(qx);
          }
          for (index_t e = 0; e < dv; ++e) {
            const double de = static_cast<double>(at(dout, {b, h, i, e}));
            const index_t iv = ((b * Hkv + hk) * Lk + j) * dv + e;
            g.dv.data()[iv] += p[t] * de;
            g.adv.data()[iv] += p[t] * std::fabs(de);
          }
        }
      }
    }
  return g;
}

}  // namespace ref
}  // namespace attnkit_test
