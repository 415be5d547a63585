// attnkit: exact softmax attention, tiled with an online softmax (docs/design.md §4.1). The baseline every
// other operator is measured against.
#pragma once

#include "../core/attention_args.hpp"
#include "../core/simd.hpp"
#include "detail/decode.hpp"
#include "detail/flash.hpp"
#include "options.hpp"

ATTNKIT_BEGIN_NAMESPACE

/// Writes out_i = sum_{j visible to i} softmax_j(scale q_i.k_j + bias_ij) v_j for every (b, h, i).
/// q [B, H, Lq, dk], k [B, Hkv, Lk, dk], v [B, Hkv, Lk, dv], out [B, H, Lq, dv]; any strides;
/// H a multiple of Hkv. A query that sees no key gets zeros. out must not overlap the inputs.
/// Throws invalid_argument (and writes nothing) on inconsistent shapes, masks or options.
template <class Arch = simd::native, class T>
void full_attention(tensor_view<const detail::identity_t<T>, 4> q,
                    tensor_view<const detail::identity_t<T>, 4> k,
                    tensor_view<const detail::identity_t<T>, 4> v, tensor_view<T, 4> out,
                    const attention_options& options = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "full_attention: float or double");
  constexpr const char* where = "attnkit::full_attention";
  const detail::attention_shape s = detail::check_attention_views(where, q, k, v, out, options.mask, true);
  detail::check_threads(options.threads, where);
  const double scale = detail::resolve_scale<T>(options.scale, s.dk, where);
  if (out.empty()) return;
  q = detail::addressable(q);
  k = detail::addressable(k);
  v = detail::addressable(v);
  using B = simd::batch<T, Arch>;
  constexpr index_t Br = detail::flash_tiling<T, Arch>::NV * B::size;
  // Few rows per kv head cannot fill a tile: dot-product kernel with keys split in chunks.
  if (3 * s.Lq * s.group() <= Br)
    detail::decode_attention<Arch, T>(s, q, k, v, out, options, scale);
  else
    detail::flash_attention<Arch, T>(s, q, k, v, out, options, scale);
}

ATTNKIT_END_NAMESPACE
