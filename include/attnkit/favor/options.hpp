// attnkit: options of FAVOR+ attention (favor_attention and favor_decoder).
#pragma once

#include "../core/mask.hpp"

ATTNKIT_BEGIN_NAMESPACE

/// The feature map phi of docs/design.md §4.2: positive or hyperbolic random features estimating the
/// softmax kernel exp(scale q.k), or relu features (generalized attention).
enum class favor_kernel { softmax_positive, softmax_hyperbolic, relu };

/// Options of favor_attention and favor_decoder.
struct favor_options {
  favor_kernel kernel = favor_kernel::softmax_positive;
  /// Causal (prefix) attention: query i sees keys j <= i. Requires Lq == Lk; the same as
  /// mask.causal = top_left (bottom_right is accepted when Lq == Lk, where the two agree).
  bool causal = false;
  /// key_lengths only; a bias cannot be honoured by a feature map and is rejected.
  attnkit::mask mask{};
  /// Softmax kernels estimate exp(scale q.k) (x' = sqrt(scale) x); 0 means 1/sqrt(dk).
  double scale = 0.0;
  /// relu kernel: phi(x) = m^(-1/2) relu(W x) + relu_epsilon.
  double relu_epsilon = 1e-3;
  int threads = 0;  ///< 0: all available threads
};

ATTNKIT_END_NAMESPACE
