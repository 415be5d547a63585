// attnkit: options and plans of Combiner attention (docs/design.md §4.3).
#pragma once

#include <cstdint>

#include "../core/mask.hpp"
#include "../core/tensor.hpp"

ATTNKIT_BEGIN_NAMESPACE

/// How a group's summary query and key are pooled from its members' queries and keys.
enum class combiner_pooling { max, mean };

/// Options of combiner_attention and combiner_probabilities.
struct combiner_options {
  bool causal = false;  ///< query i sees keys j <= i (same as mask.causal top_left)
  combiner_pooling pooling =
      combiner_pooling::max;  ///< summary query/key of fixed, logsparse, learnable groups
  attnkit::mask mask{};       ///< key_lengths (no bias: Combiner cannot honour one)
  double scale = 0.0;         ///< logit scale; 0 means 1/sqrt(dk)
  int threads = 0;            ///< 0: all available threads
};

namespace combiner {

/// Segments of `span` positions (0: ceil(sqrt(L))). Query i attends directly to its own segment
/// (causal: up to i) and to every other (causal: earlier) segment through its summary.
struct fixed {
  std::int64_t span = 0;
};

/// Dyadic blocks: query i attends directly to itself and to O(log L) blocks of sizes 1, 2, 4, ...
/// that tile the positions it sees (the binary expansion of i; bidirectional mirrors it forwards).
struct logsparse {};

enum class axial_order { row_major, col_major, mixture };

/// Positions as a rows x cols grid in raster order (rows * cols == L). row_major: direct to the own
/// row, each other row through its summary seen from the query's column; col_major: the transpose;
/// mixture: the equal-weight mixture of the two distributions.
struct axial {
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  axial_order order = axial_order::row_major;
};

/// Clusters: position j belongs to cluster argmax_c k_j . centroids[c] (its kv head's centroids),
/// or to cluster_ids[b, kv head, j] given by the caller (exactly one of the two). Bidirectional:
/// direct to the own cluster, the other clusters through their summaries. Causal: direct to the own
/// segment of `span` positions (0: ceil(sqrt(L))) up to i and to earlier positions of the own
/// cluster; earlier segments (minus the own cluster) through their summaries. Padding positions
/// (j >= key_lengths[b]) belong to no cluster.
struct learnable {
  tensor_view<const float, 3> centroids{};           ///< [1 or Hkv, clusters, dk]
  tensor_view<const std::int32_t, 3> cluster_ids{};  ///< [1 or B, 1 or Hkv, L]; in [0, L) at key positions
  std::int64_t span = 0;
};

}  // namespace combiner
ATTNKIT_END_NAMESPACE
