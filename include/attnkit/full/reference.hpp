// attnkit: the naive exact attention that materializes the Lq x Lk score matrix of every head and
// uses Eigen's GEMM. A readable specification and the strawman the tiled kernel is compared with.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <limits>

#include "../core/attention_args.hpp"
#include "options.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace reference {

/// Same contract as full_attention (shapes, masks, errors), computed as
/// P = softmax(scale Q K^T + bias) with masked entries at -inf, out = P V. Memory O(Lq * Lk).
template <class T>
void attention(tensor_view<const detail::identity_t<T>, 4> q, tensor_view<const detail::identity_t<T>, 4> k,
               tensor_view<const detail::identity_t<T>, 4> v, tensor_view<T, 4> out,
               const attention_options& options = {}) {
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  constexpr const char* where = "attnkit::reference::attention";
  const detail::attention_shape s = detail::check_attention_views(where, q, k, v, out, options.mask, true);
  detail::check_threads(options.threads, where);
  const T scale = static_cast<T>(detail::resolve_scale<T>(options.scale, s.dk, where));
  if (out.empty()) return;
  const auto bias = options.mask.bias ? detail::broadcast_bias(options.mask.bias, s.B, s.H, s.Lq, s.Lk)
                                      : tensor_view<const float, 4>{};
  Mat Q(s.Lq, s.dk), K(s.Lk, s.dk), V(s.Lk, s.dv), S(s.Lq, s.Lk), O(s.Lq, s.dv);
  for (index_t b = 0; b < s.B; ++b) {
    const detail::visibility vis = detail::make_visibility(options.mask, b, s.Lq, s.Lk);
    for (index_t h = 0; h < s.H; ++h) {
      const index_t hk = h / s.group();
      for (index_t i = 0; i < s.Lq; ++i)
        for (index_t p = 0; p < s.dk; ++p) Q(i, p) = q(b, h, i, p);
      for (index_t j = 0; j < s.Lk; ++j) {
        for (index_t p = 0; p < s.dk; ++p) K(j, p) = k(b, hk, j, p);
        for (index_t e = 0; e < s.dv; ++e) V(j, e) = v(b, hk, j, e);
      }
      S.noalias() = scale * Q * K.transpose();
      for (index_t i = 0; i < s.Lq; ++i) {
        const index_t end = vis.key_end(i);
        T mx = -std::numeric_limits<T>::infinity();
        for (index_t j = 0; j < s.Lk; ++j) {
          if (j >= end) {
            S(i, j) = -std::numeric_limits<T>::infinity();
            continue;
          }
          if (bias) S(i, j) += static_cast<T>(bias(b, h, i, j));
          mx = std::max(mx, S(i, j));
        }
        T sum = 0;
        for (index_t j = 0; j < s.Lk; ++j) {
          S(i, j) = j < end ? std::exp(S(i, j) - mx) : T(0);
          sum += S(i, j);
        }
        S.row(i) *= sum > 0 ? T(1) / sum : T(0);
      }
      O.noalias() = S * V;
      for (index_t i = 0; i < s.Lq; ++i) {
        // 0 * NaN in an invisible value row would leak: recompute such rows over visible keys only.
        if (!O.row(i).allFinite()) {
          O.row(i).setZero();
          for (index_t j = 0; j < vis.key_end(i); ++j) O.row(i) += S(i, j) * V.row(j);
        }
        for (index_t e = 0; e < s.dv; ++e) out(b, h, i, e) = O(i, e);
      }
    }
  }
}

}  // namespace reference
ATTNKIT_END_NAMESPACE
