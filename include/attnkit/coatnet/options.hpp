// attnkit: options of CoAtNet's 2D relative attention (docs/design.md §4.5).
#pragma once

#include <cstdint>

#include "../core/mask.hpp"

ATTNKIT_BEGIN_NAMESPACE

/// Where the relative kernel w_h[dy, dx] enters: added to the logits before the softmax, or to
/// the attention weights after it.
enum class relative_mode { pre_softmax, post_softmax };

/// The sign of the offset (dy, dx) that indexes the table w_h[dy + H - 1, dx + W - 1]:
/// key minus query (the TF / maxvit code) or query minus key (timm, Swin).
enum class relative_offset { key_minus_query, query_minus_key };

/// The H x W grid of the L = H * W positions, in raster order (position i = y * W + x).
struct relative_grid {
  std::int64_t rows = 0;
  std::int64_t cols = 0;
};

/// Options of relative_attention_2d.
struct relative_options {
  relative_mode mode = relative_mode::pre_softmax;
  relative_offset offset = relative_offset::key_minus_query;
  /// key_lengths only: keys j >= key_lengths[b] are padding (a causal mask or an extra bias is
  /// rejected: the relative kernel is the model's bias).
  attnkit::mask mask{};
  double scale = 0.0;  ///< logit scale; 0 means 1/sqrt(dk)
  int threads = 0;     ///< 0: all available threads
};

ATTNKIT_END_NAMESPACE
