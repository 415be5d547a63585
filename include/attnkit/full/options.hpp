// attnkit: options of exact attention (full_attention and reference::attention).
#pragma once

#include "../core/mask.hpp"

ATTNKIT_BEGIN_NAMESPACE

/// Options of full_attention and reference::attention.
struct attention_options {
  double scale = 0.0;    ///< logit scale; 0 means 1/sqrt(dk)
  attnkit::mask mask{};  ///< causal mode, key_lengths, additive bias
  int threads = 0;       ///< 0: all available threads
};

ATTNKIT_END_NAMESPACE
