// attnkit: validation of the [B, H, L, D] views shared by every attention operator.
#pragma once

#include <cmath>
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

template <class V>
void require_data(const V& x, const char* where, const char* name) {
  require(x.data() != nullptr || x.size() == 0, where, [&] {
    return std::string(std::string(name) + " has shape " + shape_string(x.extents()) +
                       " but no data (null pointer)");
  });
}

/// Checks the views of an attention call and returns its shape; throws invalid_argument naming
/// the argument, the shape it got and the shape it expected.
template <class TQ, class TK, class TV, class TO>
attention_shape check_attention_views(const char* where, const tensor_view<TQ, 4>& q,
                                      const tensor_view<TK, 4>& k, const tensor_view<TV, 4>& v,
                                      const tensor_view<TO, 4>& out) {
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
  require_data(q, where, "q");
  require_data(k, where, "k");
  require_data(v, where, "v");
  require_data(out, where, "out");
  for (std::size_t d = 0; d < 4 && !out.empty(); ++d)
    require(out.stride(d) != 0 || out.extent(d) <= 1, where, [&] {
      return std::string("out has stride 0 in dimension " + std::to_string(d) + " (extent " +
                         std::to_string(out.extent(d)) + "): outputs would overwrite each other");
    });
  return s;
}

/// Checks a scale (0: default 1/sqrt(dk)) and returns the one to use.
inline double resolve_scale(double scale, index_t dk, const char* where) {
  require(std::isfinite(scale), where,
          [&] { return std::string("scale = " + std::to_string(scale) + " is not finite"); });
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

}  // namespace detail
ATTNKIT_END_NAMESPACE
