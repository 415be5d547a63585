// attnkit: FAVOR+ attention (Performer), bidirectional and causal (docs/design.md §4.2).
#pragma once

#include <string>
#include <vector>

#include "../core/attention_args.hpp"
#include "../core/parallel.hpp"
#include "detail/kernel.hpp"
#include "features.hpp"
#include "options.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// Validates the options of a FAVOR+ call against the features; returns the scale to use.
template <class T>
double check_favor(const char* where, const attention_shape& s, const random_features<T>& features,
                   const favor_options& o) {
  check_threads(o.threads, where);
  require(features.dim() == s.dk, where, [&] {
    return std::string("features have dimension d = " + std::to_string(features.dim()) +
                       " but q and k have dk = " + std::to_string(s.dk));
  });
  require(o.kernel == favor_kernel::softmax_positive || o.kernel == favor_kernel::softmax_hyperbolic ||
              o.kernel == favor_kernel::relu,
          where, "options.kernel is not a favor_kernel value");
  require(std::isfinite(o.relu_epsilon) && o.relu_epsilon >= 0, where, [&] {
    return std::string("relu_epsilon = " + std::to_string(o.relu_epsilon) + " (must be finite and >= 0)");
  });
  const double scale = resolve_scale<T>(o.scale, s.dk, where);
  require(scale > 0 || o.kernel == favor_kernel::relu, where, [&] {
    return std::string("scale = " + std::to_string(scale) +
                       ": the softmax kernels estimate exp(scale q.k) with scale > 0");
  });
  return scale;
}

/// Keys per state segment of bidirectional attention: long sequences are split into segments of
/// this many keys whose states are summed, so one (batch, head) spreads over several threads
/// with a partition that does not depend on the thread count.
constexpr index_t favor_segment = 4096;

template <class Arch, class T>
void favor_bidirectional(const attention_shape& s, const tensor_view<const T, 4>& q,
                         const tensor_view<const T, 4>& k, const tensor_view<const T, 4>& v,
                         const tensor_view<T, 4>& out, const favor_weights<T>& w, const favor_options& o) {
  constexpr index_t C = favor_tiling<T, Arch>::chunk;
  const index_t G = s.group(), bhkv = s.B * s.Hkv;
  const index_t nseg = std::max<index_t>(1, (s.Lk + favor_segment - 1) / favor_segment);
  std::vector<favor_state<T>> states;
  states.reserve(static_cast<std::size_t>(bhkv * nseg));
  for (index_t i = 0; i < bhkv * nseg; ++i) states.emplace_back(s.dv, w.mpad);
  const index_t nqb = (s.Lq + C - 1) / C;
  const int nt = resolve_threads(o.threads, std::max(bhkv * nseg, s.B * s.H * nqb));
  std::vector<favor_workspace<T>> ws;
  ws.reserve(static_cast<std::size_t>(nt));
  for (int t = 0; t < nt; ++t) ws.emplace_back(C, s.dk, s.dv, w.mf, w.mpad);
  // 1. each segment's state
  parallel_for(bhkv * nseg, nt, [&](index_t task, int thread) {
    const index_t bh = task / nseg, sg = task % nseg, b = bh / s.Hkv, hkv = bh % s.Hkv;
    const index_t len = o.mask.key_lengths ? static_cast<index_t>(o.mask.key_lengths(b)) : s.Lk;
    const index_t end = std::min(len, (sg + 1) * favor_segment);
    favor_state<T>& st = states[static_cast<std::size_t>(task)];
    favor_workspace<T>& wk = ws[static_cast<std::size_t>(thread)];
    for (index_t j0 = sg * favor_segment; j0 < end; j0 += C) {
      const index_t n = std::min(C, end - j0);
      favor_key_features<Arch>(w, k.ptr(b, hkv, j0, 0), k.stride(2), k.stride(3), n, st, wk, true);
      favor_accumulate<Arch>(w, v.ptr(b, hkv, j0, 0), v.stride(2), v.stride(3), n, st, wk);
    }
  });
  // 2. the segments of each (b, kv head) summed in a fixed order
  if (nseg > 1)
    parallel_for(bhkv, nt, [&](index_t bh, int) {
      for (index_t sg = 1; sg < nseg; ++sg)
        states[static_cast<std::size_t>(bh * nseg)].merge(states[static_cast<std::size_t>(bh * nseg + sg)]);
    });
  // 3. every block of queries reads its state
  parallel_for(s.B * s.H * nqb, nt, [&](index_t task, int thread) {
    const index_t bh = task / nqb, i0 = (task % nqb) * C, b = bh / s.H, h = bh % s.H;
    const favor_state<T>& st = states[static_cast<std::size_t>((b * s.Hkv + h / G) * nseg)];
    favor_workspace<T>& wk = ws[static_cast<std::size_t>(thread)];
    const index_t n = std::min(C, s.Lq - i0);
    favor_query_features<Arch>(w, q.ptr(b, h, i0, 0), q.stride(2), q.stride(3), n, C, wk);
    favor_apply_state<Arch>(w, st, C, wk);
    favor_finish(wk, s.dv, n, C, out.ptr(b, h, i0, 0), out.stride(2), out.stride(3));
  });
}

}  // namespace detail

/// FAVOR+ attention: out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / phi(q_i)^T (sum_j phi(k_j)) over
/// the keys j visible to query i, phi the feature map of options.kernel built on `features`.
/// q [B, H, Lq, dk], k [B, Hkv, Lk, dk], v [B, Hkv, Lk, dv], out [B, H, Lq, dv]; any strides; H a
/// multiple of Hkv; features.dim() == dk. Bidirectional (every query sees every non-padding key;
/// Lq may differ from Lk) or causal (options.causal or mask.causal; Lq == Lk; query i sees keys
/// j <= i), computed in chunks of block products. mask.key_lengths drops padding keys; a query
/// that sees no key gets zeros. Throws invalid_argument (and writes nothing) on inconsistent
/// shapes, a bias (no feature map can honour it), or causal attention with Lq != Lk (decode with
/// favor_decoder). Same bits for any thread count.
template <class Arch = simd::native, class T>
void favor_attention(tensor_view<const detail::identity_t<T>, 4> q,
                     tensor_view<const detail::identity_t<T>, 4> k,
                     tensor_view<const detail::identity_t<T>, 4> v, tensor_view<T, 4> out,
                     const random_features<T>& features, const favor_options& options = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "favor_attention: float or double");
  constexpr const char* where = "attnkit::favor_attention";
  const detail::attention_shape s =
      detail::check_attention_views(where, q, k, v, out, options.mask, /*allow_bias=*/false);
  const double scale = detail::check_favor(where, s, features, options);
  const bool causal = options.causal || options.mask.causal != causal_mode::none;
  detail::require(!causal || s.Lq == s.Lk, where, [&] {
    return std::string("causal FAVOR+ needs Lq == Lk, got Lq = " + std::to_string(s.Lq) +
                       " and Lk = " + std::to_string(s.Lk) +
                       " (to decode queries after a prefix, use attnkit::favor_decoder)");
  });
  if (out.empty()) return;
  q = detail::addressable(q);
  k = detail::addressable(k);
  v = detail::addressable(v);
  const detail::favor_weights<T> w =
      detail::prepare_weights<Arch>(features, options.kernel, scale, options.relu_epsilon);
  if (!causal) {
    detail::favor_bidirectional<Arch, T>(s, q, k, v, out, w, options);
    return;
  }
  using tl = detail::favor_tiling<T, Arch>;
  const index_t bhkv = s.B * s.Hkv;
  const int nt = resolve_threads(options.threads, bhkv);
  std::vector<detail::favor_workspace<T>> ws;
  std::vector<detail::favor_state<T>> states;
  for (int t = 0; t < nt; ++t) {
    ws.emplace_back(tl::chunk, s.dk, s.dv, w.mf, w.mpad);
    states.emplace_back(s.dv, w.mpad);
  }
  parallel_for(bhkv, nt, [&](index_t task, int thread) {
    const index_t b = task / s.Hkv, hkv = task % s.Hkv;
    const index_t len = options.mask.key_lengths ? static_cast<index_t>(options.mask.key_lengths(b)) : s.Lk;
    detail::favor_state<T>& st = states[static_cast<std::size_t>(thread)];
    st.reset();
    detail::favor_causal<Arch>(w, st, ws[static_cast<std::size_t>(thread)], s.group(), q, k, v, out, b, hkv,
                               s.Lq, len, false);
  });
}

ATTNKIT_END_NAMESPACE
