// attnkit: exact attention for few query rows over many keys (decoding).
//
// With Lq * H/Hkv rows per kv head too few to fill a tile of the engine (core/flash.hpp), each row
// is computed with dot products over d. The keys are split into fixed chunks of decode_chunk
// (independent of the thread count, so results do not depend on it); each (b, kv head, chunk)
// task leaves a partial state (max, sum, unnormalized output) per row, and a second pass merges
// the chunks in order (merged_max, merge_weight: docs/design.md §1.3) on the exact (m, l) states, not
// on log-sum-exps, which lose the key count once |m| dwarfs log2 l (ties of huge logits).
#pragma once

#include <algorithm>
#include <limits>
#include <vector>

#include "../../core/attention_args.hpp"
#include "../../core/math.hpp"
#include "../../core/parallel.hpp"
#include "../../core/softmax.hpp"
#include "../options.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

constexpr index_t decode_chunk = 512;

template <class Arch, class T>
void decode_attention(const attention_shape& s, const tensor_view<const T, 4>& q,
                      const tensor_view<const T, 4>& k, const tensor_view<const T, 4>& v,
                      const tensor_view<T, 4>& out, const tensor_view<T, 3>& lse,
                      const attention_options& opt, double scale) {
  using B = simd::batch<T, Arch>;
  constexpr int W = B::size;
  const index_t G = s.group();
  const index_t rows = s.Lq * G;  // row r: query r / G of head hkv*G + r % G
  const index_t nchunk = std::max<index_t>(1, (s.Lk + decode_chunk - 1) / decode_chunk);
  const index_t stride_part = s.dv + 2;  // per row: m, l, o[dv]
  const T qscale = static_cast<T>(scale * 1.4426950408889634074);
  const tensor_view<const float, 4> bias =
      opt.mask.bias ? broadcast_bias(opt.mask.bias, s.B, s.H, s.Lq, s.Lk) : tensor_view<const float, 4>{};
  tensor<T, 1> part({s.B * s.Hkv * nchunk * rows * stride_part});
  const index_t ntasks = s.B * s.Hkv * nchunk;
  const int nt = resolve_threads(opt.threads, ntasks);
  // per thread: scaled query row, contiguous key row (for strided k), scores of one chunk
  std::vector<tensor<T, 1>> scratch;
  for (int t = 0; t < nt; ++t) scratch.emplace_back(std::array<index_t, 1>{2 * s.dk + decode_chunk + s.dv});

  parallel_for(ntasks, nt, [&](index_t task, int thread) {
    const index_t chunk = task % nchunk;
    const index_t bh = task / nchunk;
    const index_t b = bh / s.Hkv, hkv = bh % s.Hkv;
    const visibility vis = make_visibility(opt.mask, b, s.Lq, s.Lk);
    T* qv = scratch[static_cast<std::size_t>(thread)].data();
    T* krow = qv + s.dk;
    T* sc = krow + s.dk;
    T* vrow = sc + decode_chunk;
    const index_t j0 = chunk * decode_chunk;
    for (index_t r = 0; r < rows; ++r) {
      const index_t i = r / G, h = hkv * G + r % G;
      T* pr = part.data() + ((bh * nchunk + chunk) * rows + r) * stride_part;
      const index_t j1 = std::min(j0 + decode_chunk, vis.key_end(i));
      T m = -std::numeric_limits<T>::infinity();
      for (index_t p = 0; p < s.dk; ++p) qv[p] = q(b, h, i, p) * qscale;
      for (index_t j = j0; j < j1; ++j) {
        const T* kr = k.ptr(b, hkv, j, 0);
        if (k.stride(3) != 1) {
          for (index_t p = 0; p < s.dk; ++p) krow[p] = kr[p * k.stride(3)];
          kr = krow;
        }
        T sj = saturate_logit(dot<Arch>(qv, kr, s.dk));
        if (bias) sj = saturate_logit(sj + static_cast<T>(bias(b, h, i, j)) * T(1.4426950408889634074));
        sc[j - j0] = sj;
        m = std::max(m, sj);
      }
      const T sh = online_softmax_state<T>::shift(m);
      T l = T(0);
      index_t j = j0;
      B acc = B::zero();
      for (; j + W <= j1; j += W) {
        const B p = exp2_nonpositive(B::load(sc + (j - j0)) - B::broadcast(sh));
        p.store(sc + (j - j0));
        acc = acc + p;
      }
      l = reduce_add(acc);
      for (; j < j1; ++j) {
        sc[j - j0] = exp2_nonpositive(simd::batch<T, simd::scalar>{sc[j - j0] - sh}).v;
        l += sc[j - j0];
      }
      T* o = pr + 2;
      std::fill(o, o + s.dv, T(0));
      for (j = j0; j < j1; ++j) {
        const T* vr = v.ptr(b, hkv, j, 0);
        if (v.stride(3) != 1) {
          for (index_t e = 0; e < s.dv; ++e) vrow[e] = vr[e * v.stride(3)];
          vr = vrow;
        }
        axpy<Arch>(s.dv, sc[j - j0], vr, o);
      }
      pr[0] = m;
      pr[1] = l;
    }
  });

  // Merge the chunks' partial states of every row in chunk order (core/softmax.hpp).
  parallel_for(s.B * s.Hkv, nt, [&](index_t bh, int) {
    const index_t b = bh / s.Hkv, hkv = bh % s.Hkv;
    for (index_t r = 0; r < rows; ++r) {
      const index_t i = r / G, h = hkv * G + r % G;
      auto state = [&](index_t c) { return part.data() + ((bh * nchunk + c) * rows + r) * stride_part; };
      T M = state(0)[0], seen = state(0)[1];
      for (index_t c = 1; c < nchunk; ++c) {
        M = merged_max_scalar(M, seen, state(c)[0], state(c)[1]);
        seen = std::max(seen, state(c)[1]);
      }
      T l = T(0);
      T* o0 = state(0) + 2;
      for (index_t c = 0; c < nchunk; ++c) {
        const T* pr = state(c);
        const T f = merge_weight_scalar(pr[0], pr[1], M);
        l += pr[1] * f;
        if (c == 0) {
          for (index_t e = 0; e < s.dv; ++e) o0[e] *= f;
        } else if (f > T(0)) {
          axpy<Arch>(s.dv, f, pr + 2, o0);
        }
      }
      const T inv = l > T(0) ? T(1) / l : T(0);
      for (index_t e = 0; e < s.dv; ++e) out(b, h, i, e) = o0[e] * inv;
      if (lse) lse(b, h, i) = state_log_sum_exp(M, l);
    }
  });
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
