// attnkit: the one mask model shared by every operator (docs/design.md §3).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "check.hpp"
#include "config.hpp"
#include "tensor.hpp"

ATTNKIT_BEGIN_NAMESPACE

/// none: every key is visible; top_left: query i sees keys j <= i;
/// bottom_right: query i sees keys j <= i + Lk - Lq (the last query sees every key).
enum class causal_mode { none, top_left, bottom_right };

/// Which keys each query sees. Absent views (null data) mean "no such restriction".
struct mask {
  causal_mode causal = causal_mode::none;
  /// Optional, [B]: keys j >= key_lengths[b] are padding, never read.
  tensor_view<const std::int64_t, 1> key_lengths{};
  /// Optional additive bias broadcastable to [B, H, Lq, Lk] (each extent 1 or full).
  tensor_view<const float, 4> bias{};
};

namespace detail {

/// Answers "which keys does query i see" for one batch entry. Every mask of the model leaves each
/// query a prefix [0, key_end(i)) of the keys, so operators can iterate ranges, not test pairs.
struct visibility {
  index_t lk = 0;      // keys that exist after key_lengths
  index_t offset = 0;  // causal: query i sees j <= i + offset
  bool causal = false;

  /// One past the last key query i sees (0 when it sees none).
  index_t key_end(index_t i) const {
    if (!causal) return lk;
    return std::clamp<index_t>(i + offset + 1, 0, lk);
  }
  bool visible(index_t i, index_t j) const { return j < key_end(i); }
};

/// Builds the visibility of batch entry b for Lq queries over Lk keys.
inline visibility make_visibility(const mask& m, index_t b, index_t lq, index_t lk) {
  visibility v;
  v.lk = m.key_lengths ? static_cast<index_t>(m.key_lengths(b)) : lk;
  v.causal = m.causal != causal_mode::none;
  v.offset = m.causal == causal_mode::bottom_right ? lk - lq : 0;
  return v;
}

/// Validates mask fields against batch B, heads H, Lq queries and Lk keys; `where` names the caller.
/// `allow_bias` is false for operators that cannot honour an additive bias.
inline void check_mask(const mask& m, const char* where, index_t B, index_t H, index_t lq, index_t lk,
                       bool allow_bias = true) {
  require(m.causal == causal_mode::none || m.causal == causal_mode::top_left ||
              m.causal == causal_mode::bottom_right,
          where, [&] {
            return std::string("mask.causal = " + std::to_string(static_cast<int>(m.causal)) +
                               " is not a causal_mode value (none, top_left, bottom_right)");
          });
  require_view(m.key_lengths, where, "mask.key_lengths");
  require_view(m.bias, where, "mask.bias");
  if (m.key_lengths) {
    require(m.key_lengths.extent(0) == B, where, [&] {
      return std::string("mask.key_lengths has shape " + shape_string(m.key_lengths.extents()) +
                         ", expected [" + std::to_string(B) + "] (one length per batch entry)");
    });
    for (index_t b = 0; b < B; ++b) {
      const auto len = m.key_lengths(b);
      require(len >= 0 && len <= lk, where, [&] {
        return std::string("mask.key_lengths[" + std::to_string(b) + "] = " + std::to_string(len) +
                           " is outside [0, Lk = " + std::to_string(lk) + "]");
      });
    }
  }
  if (m.bias) {
    require(allow_bias, where, "mask.bias is not supported by this operator");
    const std::array<index_t, 4> full{B, H, lq, lk};
    bool ok = true;
    for (std::size_t d = 0; d < 4; ++d) ok = ok && (m.bias.extent(d) == 1 || m.bias.extent(d) == full[d]);
    require(ok, where, [&] {
      return std::string("mask.bias has shape " + shape_string(m.bias.extents()) + ", not broadcastable to " +
                         shape_string(full) + " (each extent must be 1 or full)");
    });
  }
}

/// Returns the bias view with broadcast dimensions given stride 0, so it indexes as [B, H, Lq, Lk].
inline tensor_view<const float, 4> broadcast_bias(const tensor_view<const float, 4>& bias, index_t B,
                                                  index_t H, index_t lq, index_t lk) {
  const std::array<index_t, 4> full{B, H, lq, lk};
  std::array<index_t, 4> s = bias.strides();
  for (std::size_t d = 0; d < 4; ++d)
    if (bias.extent(d) != full[d]) s[d] = 0;
  return tensor_view<const float, 4>(bias.data(), full, s);
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
