// attnkit: validation of the [B, H, L, D] views shared by every attention operator.
#pragma once

#include <cmath>
#include <limits>
#include <string>

#include "check.hpp"
#include "mask.hpp"
#include "tensor.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// The sizes of one attention call: q [B, H, Lq, dk], k [B, Hkv, Lk, dk], v [B, Hkv, Lk, dv].
struct attention_shape {
  index_t B = 0, H = 0, Hkv = 0, Lq = 0, Lk = 0, dk = 0, dv = 0;
  index_t group() const { return Hkv > 0 ? H / Hkv : 0; }
};

/// Checks the views and the mask of an attention call (check_mask; allow_bias: see there), and
/// that out overlaps neither itself nor any input; returns the call's shape. Throws
/// invalid_argument naming the argument, the shape it got and the shape it expected.
template <class TQ, class TK, class TV, class TO>
attention_shape check_attention_views(const char* where, const tensor_view<TQ, 4>& q,
                                      const tensor_view<TK, 4>& k, const tensor_view<TV, 4>& v,
                                      const tensor_view<TO, 4>& out, const mask& m, bool allow_bias) {
  attention_shape s;
  s.B = q.extent(0);
  s.H = q.extent(1);
  s.Lq = q.extent(2);
  s.dk = q.extent(3);
  s.Hkv = k.extent(1);
  s.Lk = k.extent(2);
  s.dv = v.extent(3);
  for (std::size_t d = 0; d < 4; ++d) {
    require(q.extent(d) >= 0 && k.extent(d) >= 0 && v.extent(d) >= 0 && out.extent(d) >= 0, where, [&] {
      return std::string("negative extent: q " + shape_string(q.extents()) + ", k " +
                         shape_string(k.extents()) + ", v " + shape_string(v.extents()) + ", out " +
                         shape_string(out.extents()));
    });
  }
  require(k.extent(0) == s.B && k.extent(3) == s.dk, where, [&] {
    return std::string("k has shape " + shape_string(k.extents()) + ", expected [B=" + std::to_string(s.B) +
                       ", Hkv, Lk, dk=" + std::to_string(s.dk) + "] for q " + shape_string(q.extents()));
  });
  const std::array<index_t, 4> want_v{s.B, s.Hkv, s.Lk, s.dv};
  require(v.extent(0) == s.B && v.extent(1) == s.Hkv && v.extent(2) == s.Lk, where, [&] {
    return std::string("v has shape " + shape_string(v.extents()) + ", expected " + shape_string(want_v) +
                       " (batch, kv heads and keys of k " + shape_string(k.extents()) + ")");
  });
  require(s.Hkv > 0 ? s.H % s.Hkv == 0 : s.H == 0, where, [&] {
    return std::string("q has H=" + std::to_string(s.H) +
                       " heads, not a multiple of the Hkv=" + std::to_string(s.Hkv) + " heads of k and v");
  });
  const std::array<index_t, 4> want_o{s.B, s.H, s.Lq, s.dv};
  require(out.extents() == want_o, where, [&] {
    return std::string("out has shape " + shape_string(out.extents()) + ", expected " + shape_string(want_o));
  });
  require_view(q, where, "q");
  require_view(k, where, "k");
  require_view(v, where, "v");
  check_mask(m, where, s.B, s.H, s.Lq, s.Lk, allow_bias);
  require_output(where, arg("out", out), arg("q", q), arg("k", k), arg("v", v),
                 arg("mask.key_lengths", m.key_lengths), arg("mask.bias", m.bias));
  return s;
}

/// x, or, when x has no elements, a view of the same extents at the address of a static zero with
/// strides 0: kernels may then form addresses from an empty input (dk = 0, no keys) without
/// arithmetic on a null pointer or strides no check bounded (an empty view may have any).
/// Nothing is read through it beyond that zero.
template <class T, std::size_t R>
tensor_view<const T, R> addressable(const tensor_view<const T, R>& x) {
  alignas(64) static const T zero[64 / sizeof(T) * 2] = {};
  if (x.size() != 0) return x;
  return tensor_view<const T, R>(zero, x.extents(), {});
}

/// An output view the kernels may index: an empty one (e.g. dv = 0 beside a non-empty lse) becomes
/// the same extents with zero strides, so no element address is formed from strides no check
/// bounded. Nothing is written through it.
template <class T, std::size_t R>
tensor_view<T, R> addressable_output(const tensor_view<T, R>& x) {
  if (x.size() != 0) return x;
  return tensor_view<T, R>(x.data(), x.extents(), {});
}

/// Checks a scale (0: default 1/sqrt(dk)) and returns the one to use: finite, and small enough
/// that the kernels' scale * log2(e) is a finite T (|scale| <= max(T) / 2).
template <class T>
double resolve_scale(double scale, index_t dk, const char* where) {
  require(std::isfinite(scale) && std::fabs(scale) <= static_cast<double>(std::numeric_limits<T>::max()) / 2,
          where, [&] {
            return std::string("scale = " + std::to_string(scale) +
                               " is not finite or exceeds max(T) / 2 = " +
                               std::to_string(static_cast<double>(std::numeric_limits<T>::max()) / 2));
          });
  if (scale != 0.0) return scale;
  return dk > 0 ? 1.0 / std::sqrt(static_cast<double>(dk)) : 1.0;
}

inline void check_threads(int threads, const char* where) {
  require(threads >= 0, where,
          [&] { return std::string("threads = " + std::to_string(threads) + " (0 means all, else >= 1)"); });
}

/// Deduces T from the output alone, so inputs may be views of T or of const T.
template <class T>
struct identity {
  using type = T;
};
template <class T>
using identity_t = typename identity<T>::type;

/// Checks lse [B, H, Lq] of a call with shape s: its extents, and memory that overlaps neither out
/// nor any input.
template <class T>
void check_lse(const char* where, const attention_shape& s, const tensor_view<T, 3>& lse,
               const tensor_view<T, 4>& out, const tensor_view<const T, 4>& q,
               const tensor_view<const T, 4>& k, const tensor_view<const T, 4>& v, const mask& m) {
  const std::array<index_t, 3> want{s.B, s.H, s.Lq};
  require(lse.extents() == want, where, [&] {
    return std::string("lse has shape " + shape_string(lse.extents()) + ", expected " + shape_string(want) +
                       " (one log-sum-exp per query row)");
  });
  require_output(where, arg("lse", lse), arg("out", out), arg("q", q), arg("k", k), arg("v", v),
                 arg("mask.key_lengths", m.key_lengths), arg("mask.bias", m.bias));
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
