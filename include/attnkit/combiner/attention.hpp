// attnkit: Combiner attention (Ren et al. 2021; docs/design.md §4.3): full attention at sparse cost.
#pragma once

#include <cstdint>
#include <vector>

#include "../core/attention_args.hpp"
#include "../core/parallel.hpp"
#include "../core/simd.hpp"
#include "clusters.hpp"
#include "detail/axial.hpp"
#include "detail/check.hpp"
#include "detail/fixed.hpp"
#include "detail/learnable.hpp"
#include "detail/logsparse.hpp"
#include "options.hpp"

ATTNKIT_BEGIN_NAMESPACE

/// Combiner attention: every query i attends directly to the positions D_i of `plan` and to the
/// rest of the keys it sees through group summaries:
///   out_i = (sum_{j in D_i} e^{s_ij} v_j + sum_groups e^{scale q_i . k~} e_group) / Z_i,
/// with each group's summary key k~ and local expectation e_group computed once per call and
/// shared by every query that uses the group (see combiner_probabilities for the distribution
/// this implies, and docs/design.md §4.3). Plans: combiner::fixed, logsparse, axial, learnable.
/// q [B, H, L, dk], k [B, Hkv, L, dk], v [B, Hkv, L, dv], out [B, H, L, dv]; any strides; H a
/// multiple of Hkv (self-attention: Lq == Lk). Bidirectional, or causal (options.causal or
/// mask.causal): query i sees keys j <= i, and its output does not depend on anything after i.
/// mask.key_lengths drops padding keys; a query that sees no key gets zeros. Throws
/// invalid_argument (and writes nothing) on inconsistent shapes, plans or masks (no bias). Same
/// bits for any thread count.
template <class Arch = simd::native, class T, class Plan>
void combiner_attention(tensor_view<const detail::identity_t<T>, 4> q,
                        tensor_view<const detail::identity_t<T>, 4> k,
                        tensor_view<const detail::identity_t<T>, 4> v, tensor_view<T, 4> out,
                        const Plan& plan, const combiner_options& options = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "combiner_attention: float or double");
  static_assert(detail::is_combiner_plan<Plan>,
                "combiner_attention: plan is combiner::fixed, logsparse, axial or learnable");
  constexpr const char* where = "attnkit::combiner_attention";
  const detail::attention_shape s =
      detail::check_attention_views(where, q, k, v, out, options.mask, /*allow_bias=*/false);
  const detail::combiner_call call = detail::check_combiner(where, s, k, plan, options);
  if constexpr (std::is_same_v<Plan, combiner::learnable>)
    detail::require_disjoint(where, detail::arg("out", out), detail::arg("plan.centroids", plan.centroids),
                             detail::arg("plan.cluster_ids", plan.cluster_ids));
  if (out.empty()) return;
  q = detail::addressable(q);
  k = detail::addressable(k);
  v = detail::addressable(v);
  const index_t G = s.group();
  auto len_of = [&](index_t b) {
    return options.mask.key_lengths ? static_cast<index_t>(options.mask.key_lengths(b)) : s.Lk;
  };
  // learnable: the clusters of every (b, kv head), once
  std::vector<std::vector<std::int32_t>> ids;
  if constexpr (std::is_same_v<Plan, combiner::learnable>) {
    ids.resize(static_cast<std::size_t>(s.B * s.Hkv));
    parallel_for(s.B * s.Hkv, resolve_threads(options.threads, s.B * s.Hkv), [&](index_t t, int) {
      detail::combiner_ids<Arch>(plan, k, t / s.Hkv, t % s.Hkv, len_of(t / s.Hkv),
                                 ids[static_cast<std::size_t>(t)]);
    });
  }
  const int nt = resolve_threads(options.threads, s.B * s.H);
  detail::combiner_workspace_pool<Arch, T> ws(nt, s.dk, s.dv);
  parallel_for(s.B * s.H, nt, [&](index_t task, int thread) {
    const index_t b = task / s.H, h = task % s.H;
    auto& w = ws[thread];
    const detail::row_view<T> dst{out.ptr(b, h, 0, 0), out.stride(2), out.stride(3)};
    detail::combiner_head<T> hd{s,
                                q,
                                k,
                                v,
                                dst,
                                b,
                                h,
                                h / G,
                                len_of(b),
                                call.causal,
                                options.pooling,
                                static_cast<T>(call.scale),
                                static_cast<T>(call.scale * 1.4426950408889634074)};
    if constexpr (std::is_same_v<Plan, combiner::fixed>) {
      detail::combiner_fixed(hd, call.span, w);
    } else if constexpr (std::is_same_v<Plan, combiner::logsparse>) {
      detail::combiner_logsparse(hd, w);
    } else if constexpr (std::is_same_v<Plan, combiner::axial>) {
      // mixture: the row-major output, then the column-major one averaged into it
      const bool mixture = plan.order == combiner::axial_order::mixture;
      if (plan.order != combiner::axial_order::col_major)
        detail::combiner_axial(hd, plan.rows, plan.cols, false, false, w);
      if (plan.order != combiner::axial_order::row_major)
        detail::combiner_axial(hd, plan.rows, plan.cols, true, mixture, w);
    } else {
      detail::combiner_learnable(hd, ids[static_cast<std::size_t>(b * s.Hkv + h / G)], call.span, w);
    }
  });
}

ATTNKIT_END_NAMESPACE
