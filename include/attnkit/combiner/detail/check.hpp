// attnkit: argument checks shared by combiner_attention and combiner_probabilities, and the
// resolved form of a plan (spans, cluster ids) both use.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "../../core/attention_args.hpp"
#include "../clusters.hpp"
#include "../options.hpp"
#include "../spec.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

template <class Plan>
constexpr bool is_combiner_plan =
    std::is_same_v<Plan, combiner::fixed> || std::is_same_v<Plan, combiner::logsparse> ||
    std::is_same_v<Plan, combiner::axial> || std::is_same_v<Plan, combiner::learnable>;

/// The checked call: causal flag, scale, and the plan's span (fixed, causal learnable).
struct combiner_call {
  bool causal = false;
  double scale = 1.0;
  index_t span = 1;
};

template <class T, class Plan>
combiner_call check_combiner(const char* where, const attention_shape& s, const tensor_view<const T, 4>& k,
                             const Plan& plan, const combiner_options& o) {
  combiner_call c;
  check_threads(o.threads, where);
  c.scale = resolve_scale<T>(o.scale, s.dk, where);
  c.causal = o.causal || o.mask.causal != causal_mode::none;
  require(s.Lq == s.Lk, where, [&] {
    return std::string(
        "Combiner is self-attention: needs Lq == Lk (a plan pools each group's queries and keys), "
        "got Lq = " +
        std::to_string(s.Lq) + " and Lk = " + std::to_string(s.Lk));
  });
  require(o.pooling == combiner_pooling::max || o.pooling == combiner_pooling::mean, where,
          "options.pooling is not a combiner_pooling value");
  const index_t L = s.Lq;
  c.span = combiner_default_span(L);
  if constexpr (std::is_same_v<Plan, combiner::fixed> || std::is_same_v<Plan, combiner::learnable>) {
    require(plan.span >= 0, where, [&] {
      return std::string("span = " + std::to_string(plan.span) + " (0: ceil(sqrt(L)), else >= 1)");
    });
    // A span of L or more is one segment (the plan is then exact attention, causal or not).
    if (plan.span > 0) c.span = std::min<index_t>(static_cast<index_t>(plan.span), std::max<index_t>(L, 1));
  }
  if constexpr (std::is_same_v<Plan, combiner::axial>) {
    require(grid_covers(plan.rows, plan.cols, L), where, [&] {
      return std::string("axial plan has rows = " + std::to_string(plan.rows) +
                         " and cols = " + std::to_string(plan.cols) +
                         ": rows * cols must equal the sequence length L = " + std::to_string(L));
    });
    require(plan.order == combiner::axial_order::row_major ||
                plan.order == combiner::axial_order::col_major ||
                plan.order == combiner::axial_order::mixture,
            where, "axial plan order is not an axial_order value");
  }
  if constexpr (std::is_same_v<Plan, combiner::learnable>) {
    const bool has_mu = plan.centroids.data() != nullptr, has_ids = plan.cluster_ids.data() != nullptr;
    require(has_mu != has_ids, where,
            "learnable plan needs exactly one of centroids and cluster_ids (got " +
                std::string(has_mu && has_ids ? "both" : "neither") + ")");
    if (has_mu) check_centroids(plan.centroids, s.Hkv, s.dk, where);
    if (has_ids) {
      const auto& id = plan.cluster_ids;
      require_view(id, where, "cluster_ids");
      require((id.extent(0) == 1 || id.extent(0) == s.B) && (id.extent(1) == 1 || id.extent(1) == s.Hkv) &&
                  id.extent(2) == L,
              where, [&] {
                return std::string("cluster_ids have shape " + shape_string(id.extents()) +
                                   ", expected [1 or B=" + std::to_string(s.B) +
                                   ", 1 or Hkv=" + std::to_string(s.Hkv) + ", L=" + std::to_string(L) + "]");
              });
      // Positions that are padding in every batch entry reading them are never routed: any id
      // (assign_clusters writes -1 there).
      for (index_t b = 0; b < s.B; ++b) {
        const index_t len = o.mask.key_lengths ? static_cast<index_t>(o.mask.key_lengths(b)) : L;
        const index_t bi = id.extent(0) == 1 ? 0 : b;
        for (index_t h = 0; h < id.extent(1); ++h)
          for (index_t j = 0; j < len; ++j)
            require(id(bi, h, j) >= 0 && id(bi, h, j) < std::max<index_t>(L, 1), where, [&] {
              return std::string("cluster_ids[" + std::to_string(bi) + ", " + std::to_string(h) + ", " +
                                 std::to_string(j) + "] = " + std::to_string(id(bi, h, j)) +
                                 " is outside [0, L = " + std::to_string(L) + ") at a key position");
            });
      }
    }
  }
  (void)k;
  return c;
}

/// The clusters of (b, hkv) under a learnable plan: -1 for padding keys.
template <class Arch, class T>
void combiner_ids(const combiner::learnable& plan, const tensor_view<const T, 4>& k, index_t b, index_t hkv,
                  index_t len, std::vector<std::int32_t>& id) {
  if (plan.centroids.data() != nullptr) {
    route_clusters<Arch>(k, b, hkv, len, plan.centroids, id);
    return;
  }
  const auto& ids = plan.cluster_ids;
  const index_t L = k.extent(2);
  id.assign(static_cast<std::size_t>(L), -1);
  for (index_t j = 0; j < len; ++j)
    id[static_cast<std::size_t>(j)] = ids(ids.extent(0) == 1 ? 0 : b, ids.extent(1) == 1 ? 0 : hkv, j);
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
