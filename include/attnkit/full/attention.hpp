// attnkit: exact softmax attention, tiled with an online softmax (docs/design.md §4.1). The baseline every
// other operator is measured against.
#pragma once

#include "../core/attention_args.hpp"
#include "../core/simd.hpp"
#include "detail/decode.hpp"
#include "detail/flash.hpp"
#include "options.hpp"

ATTNKIT_BEGIN_NAMESPACE

namespace detail {

template <class Arch, class T>
void full_attention_impl(tensor_view<const T, 4> q, tensor_view<const T, 4> k, tensor_view<const T, 4> v,
                         tensor_view<T, 4> out, const tensor_view<T, 3>* lse,
                         const attention_options& options) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "full_attention: float or double");
  constexpr const char* where = "attnkit::full_attention";
  const attention_shape s = check_attention_views(where, q, k, v, out, options.mask, true);
  if (lse) check_lse(where, s, *lse, out, q, k, v, options.mask);
  check_threads(options.threads, where);
  const double scale = resolve_scale<T>(options.scale, s.dk, where);
  if (out.empty() && !(lse && !lse->empty())) return;
  q = addressable(q);
  k = addressable(k);
  v = addressable(v);
  out = addressable_output(out);
  const tensor_view<T, 3> no_lse{};
  const tensor_view<T, 3>& l = lse ? *lse : no_lse;
  using B = simd::batch<T, Arch>;
  constexpr index_t Br = flash_tiling<T, Arch>::NV * B::size;
  // Few rows per kv head cannot fill a tile: dot-product kernel with keys split in chunks.
  if (3 * s.Lq * s.group() <= Br)
    decode_attention<Arch, T>(s, q, k, v, out, l, options, scale);
  else
    flash_attention<Arch, T>(s, q, k, v, out, l, options, scale);
}

}  // namespace detail

/// Writes out_i = sum_{j visible to i} softmax_j(scale q_i.k_j + bias_ij) v_j for every (b, h, i).
/// q [B, H, Lq, dk], k [B, Hkv, Lk, dk], v [B, Hkv, Lk, dv], out [B, H, Lq, dv]; any strides;
/// H a multiple of Hkv. A query that sees no key gets zeros. out must not overlap the inputs.
/// Throws invalid_argument (and writes nothing) on inconsistent shapes, masks or options.
template <class Arch = simd::native, class T>
void full_attention(tensor_view<const detail::identity_t<T>, 4> q,
                    tensor_view<const detail::identity_t<T>, 4> k,
                    tensor_view<const detail::identity_t<T>, 4> v, tensor_view<T, 4> out,
                    const attention_options& options = {}) {
  detail::full_attention_impl<Arch, T>(q, k, v, out, nullptr, options);
}

/// The same, and lse [B, H, Lq] = ln sum_{j visible to i} exp(scale q_i.k_j + bias_ij) of every
/// query row (-inf for a row that sees no key): the state full_attention_backward and
/// merge_attention_states take. lse must overlap neither out nor the inputs.
template <class Arch = simd::native, class T>
void full_attention(tensor_view<const detail::identity_t<T>, 4> q,
                    tensor_view<const detail::identity_t<T>, 4> k,
                    tensor_view<const detail::identity_t<T>, 4> v, tensor_view<T, 4> out,
                    tensor_view<T, 3> lse, const attention_options& options = {}) {
  detail::full_attention_impl<Arch, T>(q, k, v, out, &lse, options);
}

/// Attention over two disjoint key sets merged into attention over their union: with
/// w = exp(lse_x - max(lse_a, lse_b)), out = (w_a out_a + w_b out_b) / (w_a + w_b) and
/// lse = max + ln(w_a + w_b), row by row (docs/design.md §1.3). out [B, H, L, dv], lse [B, H, L]; a
/// state with lse = -inf is neutral (its output is not read). out may be out_a or out_b and lse
/// lse_a or lse_b (the same view: in place); otherwise outputs overlap nothing.
template <class Arch = simd::native, class T>
void merge_attention_states(tensor_view<const detail::identity_t<T>, 4> out_a,
                            tensor_view<const detail::identity_t<T>, 3> lse_a,
                            tensor_view<const detail::identity_t<T>, 4> out_b,
                            tensor_view<const detail::identity_t<T>, 3> lse_b, tensor_view<T, 4> out,
                            tensor_view<T, 3> lse) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "merge_attention_states: float or double");
  constexpr const char* where = "attnkit::merge_attention_states";
  const auto e = out.extents();
  const std::array<index_t, 3> el{e[0], e[1], e[2]};
  auto same = [&](const char* name, const auto& x, const auto& want) {
    detail::require_view(x, where, name);
    detail::require(x.extents() == want, where, [&] {
      return std::string(name) + " has shape " + detail::shape_string(x.extents()) + ", expected " +
             detail::shape_string(want) + " (from out " + detail::shape_string(e) + ")";
    });
  };
  same("out_a", out_a, e);
  same("out_b", out_b, e);
  same("lse_a", lse_a, el);
  same("lse_b", lse_b, el);
  same("lse", lse, el);
  using detail::arg;
  using detail::unless_in_place;
  const tensor_view<const T, 4> co(out.data(), out.extents(), out.strides());
  const tensor_view<const T, 3> cl(lse.data(), lse.extents(), lse.strides());
  detail::require_output(where, arg("out", out), arg("out_a", unless_in_place(out_a, co)),
                         arg("out_b", unless_in_place(out_b, co)), arg("lse_a", lse_a), arg("lse_b", lse_b));
  detail::require_output(where, arg("lse", lse), arg("out", out), arg("out_a", out_a), arg("out_b", out_b),
                         arg("lse_a", unless_in_place(lse_a, cl)), arg("lse_b", unless_in_place(lse_b, cl)));
  if (out.empty()) return;  // (dv may then be any extent, even one no buffer could hold)
  const index_t dv = e[3];
  std::vector<T> a(static_cast<std::size_t>(dv)), b(a.size()), r(a.size());
  for (index_t x = 0; x < e[0]; ++x)
    for (index_t h = 0; h < e[1]; ++h)
      for (index_t i = 0; i < e[2]; ++i) {
        const T la = lse_a(x, h, i), lb = lse_b(x, h, i);
        constexpr T ninf = -std::numeric_limits<T>::infinity();
        for (index_t c = 0; c < dv; ++c) {
          a[static_cast<std::size_t>(c)] = la > ninf ? out_a(x, h, i, c) : T(0);
          b[static_cast<std::size_t>(c)] = lb > ninf ? out_b(x, h, i, c) : T(0);
        }
        const T l = merge_state_row<Arch>(a.data(), la, b.data(), lb, r.data(), dv);
        for (index_t c = 0; c < dv; ++c) out(x, h, i, c) = r[static_cast<std::size_t>(c)];
        lse(x, h, i) = l;
      }
}

ATTNKIT_END_NAMESPACE
