// attnkit: lambda attention (Bello 2021, "LambdaNetworks"; docs/design.md §4.4): the context summarized
// into linear functions (lambdas) applied to every query, with no attention map.
#pragma once

#include "../core/attention_args.hpp"
#include "../core/simd.hpp"
#include "detail/check.hpp"
#include "detail/kernel.hpp"
#include "options.hpp"

ATTNKIT_BEGIN_NAMESPACE

/// Lambda attention. For every batch entry, query position n and head h:
///   Kbar[m, k, u] = softmax over the context positions m of keys[m, k, u]
///   lc[k, v]      = sum_{m, u} Kbar[m, k, u] values[m, v, u]               (content lambda)
///   lp_n[k, v]    = sum_{m, u} E[n, m, k, u] values[m, v, u]               (position lambda)
///   out[n, h * v_dim + v] = sum_k queries[n, h, k] (lc + lp_n)[k, v]
/// queries [B, n, h, k], keys [B, m, k, u], values [B, m, v, u], out [B, n, h * v]; any strides.
/// The h queries of a position share its lambda (multi-query). E comes from `position` (see
/// lambda_position): none, global E [n, m, k, u], relative (E[n, m] = R[pos_m - pos_n], 1D or on a
/// grid) or local (lambda convolution over a scope of rh x rw positions, zero padding); it is never
/// materialized. Masks: key_lengths drop context positions; causal (options.causal or mask.causal):
/// query n sees m <= n (bottom_right: m <= n + m_len - n_len), its content lambda normalized over
/// that prefix. A query that sees no context gets zeros. Throws invalid_argument (nothing written)
/// on inconsistent shapes, position terms or masks. Same bits for any thread count.
template <class Arch = simd::native, class T>
void lambda_attention(tensor_view<const detail::identity_t<T>, 4> queries,
                      tensor_view<const detail::identity_t<T>, 4> keys,
                      tensor_view<const detail::identity_t<T>, 4> values,
                      const lambda_position<detail::identity_t<T>>& position, tensor_view<T, 3> out,
                      const lambda_options& options = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "lambda_attention: float or double");
  constexpr const char* where = "attnkit::lambda_attention";
  const detail::lambda_shape s = detail::check_lambda(where, queries, keys, values, position, out, options);
  if (out.empty()) return;
  queries = detail::addressable(queries);
  keys = detail::addressable(keys);
  values = detail::addressable(values);
  detail::lambda_kernel<Arch, T>(s, queries, keys, values, position, out, options).run();
}

ATTNKIT_END_NAMESPACE
