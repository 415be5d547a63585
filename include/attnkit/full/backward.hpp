// attnkit: the backward pass of exact attention (docs/design.md §4.1).
#pragma once

#include <tuple>

#include "../core/attention_args.hpp"
#include "../core/flash_backward.hpp"
#include "../core/simd.hpp"
#include "attention.hpp"
#include "detail/backward_decode.hpp"
#include "options.hpp"

ATTNKIT_BEGIN_NAMESPACE

/// The gradients of full_attention's out with respect to q, k and v, given out and lse from
/// full_attention(q, k, v, out, lse, options) and dout = dL/dout: dq [B, H, Lq, dk],
/// dk [B, Hkv, Lk, dk], dv [B, Hkv, Lk, dv] are overwritten (dk and dv of a kv head sum over the
/// heads that share it). The bias is a constant. Keys no query sees (padding, hidden by every
/// causal row) get exactly zero, a NaN or Inf in a hidden k or v reaches no gradient, and a query
/// that sees no key gets dq = 0. The same bits for any thread count. The gradients must overlap
/// nothing else; on an error (the forward's, or a gradient of the wrong shape) nothing is written.
/// Memory: per thread, the packed operands of one (b, kv head)'s queries (about 3 x its q and
/// dout) and one tile; nothing O(Lq Lk).
template <class Arch = simd::native, class T>
void full_attention_backward(
    tensor_view<const detail::identity_t<T>, 4> q, tensor_view<const detail::identity_t<T>, 4> k,
    tensor_view<const detail::identity_t<T>, 4> v, tensor_view<const detail::identity_t<T>, 4> out,
    tensor_view<const detail::identity_t<T>, 3> lse, tensor_view<const detail::identity_t<T>, 4> dout,
    tensor_view<T, 4> dq, tensor_view<T, 4> dk, tensor_view<T, 4> dv, const attention_options& options = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "full_attention_backward: float or double");
  constexpr const char* where = "attnkit::full_attention_backward";
  using detail::arg;
  const detail::attention_shape s = detail::check_attention_views(where, q, k, v, out, options.mask, true);
  const auto& m = options.mask;
  detail::check_backward(where, s, q, k, v, out, lse, dout, dq, dk, dv,
                         std::make_tuple(arg("mask.key_lengths", m.key_lengths), arg("mask.bias", m.bias)));
  detail::check_threads(options.threads, where);
  const double scale = detail::resolve_scale<T>(options.scale, s.dk, where);
  if (dq.empty() && dk.empty() && dv.empty()) return;
  detail::backward_views<T> x{
      detail::addressable(q),
      detail::addressable(k),
      detail::addressable(v),
      detail::addressable(out),
      detail::addressable(dout),
      detail::addressable(lse),
      detail::addressable_output(dq),
      detail::addressable_output(dk),
      detail::addressable_output(dv),
      m.bias ? detail::broadcast_bias(m.bias, s.B, s.H, s.Lq, s.Lk) : tensor_view<const float, 4>{}};
  // Few rows per kv head cannot fill a tile (as in the forward): dot products, keys in chunks.
  constexpr index_t Br = detail::flash_tiling<T, Arch>::NV * simd::batch<T, Arch>::size;
  if (3 * s.Lq * s.group() <= Br)
    detail::decode_attention_backward<Arch, T>(s, x, options, scale);
  else
    detail::flash_attention_backward<Arch, T>(s, x, options.mask, options.threads, scale);
}

ATTNKIT_END_NAMESPACE
