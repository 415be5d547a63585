// attnkit: the explicit distribution p(j|i) a Combiner plan implies (docs/design.md §4.3), for small L.
#pragma once

#include <cmath>
#include <limits>
#include <vector>

#include "../core/attention_args.hpp"
#include "../core/simd.hpp"
#include "detail/check.hpp"
#include "options.hpp"
#include "spec.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// Adds weight * p(.|i) of one query to prow[0..L), in double, from the sets of spec.hpp:
///   Z = sum_{j in D} exp(s_ij) + sum_groups exp(scale q_i . k~)
///   p(j) = exp(s_ij) / Z (j in D);  p(j) = exp(scale q_i . k~) / Z * softmax_{t in group}(scale q~ . k_t)_j
/// q~ and k~ pool the members' queries and keys (max or mean), or, for an anchored group, q~ is the
/// anchor's query and k~ = sum_t softmax_t(scale q~ . k_t) k_t.
template <class T>
void combiner_row(const combiner_sets& sets, const tensor_view<const T, 4>& q,
                  const tensor_view<const T, 4>& k, index_t b, index_t h, index_t hkv, index_t i,
                  double scale, combiner_pooling pooling, double weight, double* prow) {
  const index_t dk = q.extent(3);
  auto qd = [&](index_t j, index_t p) { return static_cast<double>(q(b, h, j, p)); };
  auto kd = [&](index_t j, index_t p) { return static_cast<double>(k(b, hkv, j, p)); };
  auto dot_q = [&](const std::vector<double>& x, index_t j) {
    double d = 0;
    for (index_t p = 0; p < dk; ++p) d += x[static_cast<std::size_t>(p)] * kd(j, p);
    return d;
  };
  std::vector<double> qi(static_cast<std::size_t>(dk));
  for (index_t p = 0; p < dk; ++p) qi[static_cast<std::size_t>(p)] = qd(i, p);
  std::vector<double> logit;  // direct keys, then groups
  std::vector<std::vector<double>> inner;
  for (index_t j : sets.direct) logit.push_back(scale * dot_q(qi, j));
  for (const combiner_group& g : sets.groups) {
    std::vector<double> qt(static_cast<std::size_t>(dk)), kt(static_cast<std::size_t>(dk));
    const index_t n = static_cast<index_t>(g.members.size());
    if (g.anchor >= 0) {
      for (index_t p = 0; p < dk; ++p) qt[static_cast<std::size_t>(p)] = qd(g.anchor, p);
    } else {
      for (index_t p = 0; p < dk; ++p) {
        double aq = qd(g.members[0], p), ak = kd(g.members[0], p);
        for (index_t t = 1; t < n; ++t) {
          const index_t j = g.members[static_cast<std::size_t>(t)];
          aq = pooling == combiner_pooling::max ? std::max(aq, qd(j, p)) : aq + qd(j, p);
          ak = pooling == combiner_pooling::max ? std::max(ak, kd(j, p)) : ak + kd(j, p);
        }
        qt[static_cast<std::size_t>(p)] = pooling == combiner_pooling::max ? aq : aq / static_cast<double>(n);
        kt[static_cast<std::size_t>(p)] = pooling == combiner_pooling::max ? ak : ak / static_cast<double>(n);
      }
    }
    std::vector<double> w(static_cast<std::size_t>(n));
    double mx = -std::numeric_limits<double>::infinity(), sum = 0;
    for (index_t t = 0; t < n; ++t) {
      w[static_cast<std::size_t>(t)] = scale * dot_q(qt, g.members[static_cast<std::size_t>(t)]);
      mx = std::max(mx, w[static_cast<std::size_t>(t)]);
    }
    for (double& x : w) sum += (x = std::exp(x - mx));
    for (double& x : w) x /= sum;
    if (g.anchor >= 0) {
      for (index_t p = 0; p < dk; ++p) {
        double a = 0;
        for (index_t t = 0; t < n; ++t)
          a += w[static_cast<std::size_t>(t)] * kd(g.members[static_cast<std::size_t>(t)], p);
        kt[static_cast<std::size_t>(p)] = a;
      }
    }
    double d = 0;
    for (index_t p = 0; p < dk; ++p) d += qi[static_cast<std::size_t>(p)] * kt[static_cast<std::size_t>(p)];
    logit.push_back(scale * d);
    inner.push_back(std::move(w));
  }
  if (logit.empty()) return;
  double mx = -std::numeric_limits<double>::infinity(), z = 0;
  for (double x : logit) mx = std::max(mx, x);
  for (double& x : logit) z += (x = std::exp(x - mx));
  std::size_t at = 0;
  for (index_t j : sets.direct) prow[j] += weight * logit[at++] / z;
  for (std::size_t g = 0; g < sets.groups.size(); ++g, ++at) {
    const auto& mem = sets.groups[g].members;
    for (std::size_t t = 0; t < mem.size(); ++t) prow[mem[t]] += weight * logit[at] / z * inner[g][t];
  }
}

}  // namespace detail

/// The distribution p(j|i) that combiner_attention with the same arguments implies, as an explicit
/// [B, H, L, L] tensor (row i: the weights of the keys in out_i = sum_j p(j|i) v_j). Built query by
/// query from the plan's sets (combiner/spec.hpp) in double, independently of the fast path:
/// O(L^2 d) per head or more, for inspection and tests at small L. Learnable plans route with the
/// same cluster ids as combiner_attention.
template <class Arch = simd::native, class T, class Plan>
tensor<T, 4> combiner_probabilities(tensor_view<const T, 4> q, tensor_view<const T, 4> k, const Plan& plan,
                                    const combiner_options& options = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "combiner_probabilities: float or double");
  static_assert(detail::is_combiner_plan<Plan>,
                "combiner_probabilities: plan is combiner::fixed, logsparse, axial or learnable");
  constexpr const char* where = "attnkit::combiner_probabilities";
  const tensor_view<const T, 4> v0(k.data(), {k.extent(0), k.extent(1), k.extent(2), 0}, k.strides());
  tensor_view<T, 4> o0(nullptr, {q.extent(0), q.extent(1), q.extent(2), 0}, {0, 0, 0, 0});
  const detail::attention_shape s =
      detail::check_attention_views(where, q, k, v0, o0, options.mask, /*allow_bias=*/false);
  const detail::combiner_call call = detail::check_combiner(where, s, k, plan, options);
  const index_t L = s.Lq, G = s.group();
  tensor<T, 4> p({s.B, s.H, L, L});
  std::vector<double> row(static_cast<std::size_t>(L));
  std::vector<std::int32_t> id;
  for (index_t b = 0; b < s.B; ++b) {
    const index_t len = options.mask.key_lengths ? static_cast<index_t>(options.mask.key_lengths(b)) : L;
    for (index_t h = 0; h < s.H; ++h) {
      const index_t hkv = h / G;
      if constexpr (std::is_same_v<Plan, combiner::learnable>)
        detail::combiner_ids<Arch>(plan, k, b, hkv, len, id);
      for (index_t i = 0; i < L; ++i) {
        std::fill(row.begin(), row.end(), 0.0);
        auto add = [&](const detail::combiner_sets& sets, double weight) {
          detail::combiner_row(sets, q, k, b, h, hkv, i, call.scale, options.pooling, weight, row.data());
        };
        if constexpr (std::is_same_v<Plan, combiner::fixed>) {
          add(detail::fixed_sets(i, L, len, call.causal, call.span), 1.0);
        } else if constexpr (std::is_same_v<Plan, combiner::logsparse>) {
          add(detail::logsparse_sets(i, L, len, call.causal), 1.0);
        } else if constexpr (std::is_same_v<Plan, combiner::axial>) {
          const double wt = plan.order == combiner::axial_order::mixture ? 0.5 : 1.0;
          if (plan.order != combiner::axial_order::col_major)
            add(detail::axial_sets(i, plan.rows, plan.cols, len, call.causal, false), wt);
          if (plan.order != combiner::axial_order::row_major)
            add(detail::axial_sets(i, plan.rows, plan.cols, len, call.causal, true), wt);
        } else {
          add(detail::learnable_sets(i, L, len, call.causal, call.span, id), 1.0);
        }
        for (index_t j = 0; j < L; ++j) p(b, h, i, j) = static_cast<T>(row[static_cast<std::size_t>(j)]);
      }
    }
  }
  return p;
}

ATTNKIT_END_NAMESPACE
