// attnkit: the backward of exact attention for few query rows over many keys (docs/design.md §4.1).
//
// With Lq * H/Hkv rows per kv head too few to fill a tile (the shape decode.hpp serves forward),
// each (row, key) pair is a handful of dot products and axpys over d. Tasks are (b, kv head, chunk
// of decode_chunk keys): a task owns its keys' dk and dv rows (summed over the rows in row order)
// and leaves its part of every row's dq, which a second pass sums in chunk order. Chunks are fixed
// by the shape, so the bits do not depend on the thread count. Hidden keys are never read.
#pragma once

#include <algorithm>
#include <limits>
#include <vector>

#include "../../core/attention_args.hpp"
#include "../../core/flash_backward.hpp"
#include "../../core/math.hpp"
#include "../../core/parallel.hpp"
#include "../../core/softmax.hpp"
#include "../options.hpp"
#include "decode.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

template <class Arch, class T>
void decode_attention_backward(const attention_shape& s, const backward_views<T>& x,
                               const attention_options& opt, double scale) {
  constexpr T log2e = T(1.4426950408889634074);
  const index_t G = s.group(), rows = s.Lq * G, dk = s.dk,
                dv = s.dv;  // row r: query r / G, head hkv*G + r % G
  const index_t nchunk = std::max<index_t>(1, (s.Lk + decode_chunk - 1) / decode_chunk);
  const index_t ntasks = s.B * s.Hkv * nchunk;
  const int nt = resolve_threads(opt.threads, ntasks);
  const T qscale = static_cast<T>(scale * 1.4426950408889634074), sc = static_cast<T>(scale);
  // dq parts: [task][row][dk]
  tensor<T, 1> part({std::max<index_t>(ntasks * rows * dk, 1)});
  // per thread: the rows' scaled q, q, dout, D, lse2 (packed contiguously); a k, v and dk, dv row
  const index_t per_row = 2 * dk + dv + 2;
  std::vector<tensor<T, 1>> scratch;
  for (int t = 0; t < nt; ++t)
    scratch.emplace_back(std::array<index_t, 1>{std::max<index_t>(rows * per_row + 2 * (dk + dv), 1)});
  parallel_for(ntasks, nt, [&](index_t task, int thread) {
    const index_t chunk = task % nchunk, bh = task / nchunk;
    const index_t b = bh / s.Hkv, hkv = bh % s.Hkv;
    const visibility vis = make_visibility(opt.mask, b, s.Lq, s.Lk);
    T* rs = scratch[static_cast<std::size_t>(thread)].data();
    T* krow = rs + rows * per_row;
    T* vrow = krow + dk;
    T* gk = vrow + dv;
    T* gv = gk + dk;
    T* dqp = part.data() + task * rows * dk;
    std::fill(dqp, dqp + rows * dk, T(0));
    index_t kend = 0;
    for (index_t r = 0; r < rows; ++r) {
      const index_t i = r / G, h = hkv * G + r % G;
      T* qs = rs + r * per_row;
      T* qn = qs + dk;
      T* dr = qn + dk;
      T d = T(0);
      for (index_t p = 0; p < dk; ++p) qn[p] = x.q(b, h, i, p), qs[p] = qn[p] * qscale;
      for (index_t e = 0; e < dv; ++e) dr[e] = x.dout(b, h, i, e), d += dr[e] * x.out(b, h, i, e);
      const T l = x.lse(b, h, i);
      dr[dv] = d;
      dr[dv + 1] = vis.key_end(i) > 0 && l > -std::numeric_limits<T>::infinity()
                       ? static_cast<T>(static_cast<double>(l) * 1.4426950408889634074)
                       : std::numeric_limits<T>::infinity();
      kend = std::max(kend, vis.key_end(i));
    }
    const index_t j0 = chunk * decode_chunk, j1 = std::min(j0 + decode_chunk, s.Lk);
    for (index_t j = j0; j < j1; ++j) {
      std::fill(gk, gk + dk, T(0));
      std::fill(gv, gv + dv, T(0));
      if (j < kend) {
        for (index_t p = 0; p < dk; ++p) krow[p] = x.k(b, hkv, j, p);
        for (index_t e = 0; e < dv; ++e) vrow[e] = x.v(b, hkv, j, e);
        for (index_t r = 0; r < rows; ++r) {
          const index_t i = r / G, h = hkv * G + r % G;
          if (j >= vis.key_end(i)) continue;  // hidden from this row: never read
          const T* qs = rs + r * per_row;
          const T* qn = qs + dk;
          const T* dr = qn + dk;
          T sj = saturate_logit(dot<Arch>(qs, krow, dk));
          if (x.bias) sj = saturate_logit(sj + static_cast<T>(x.bias(b, h, i, j)) * log2e);
          const T pj = exp2_nonpositive(simd::batch<T, simd::scalar>{std::min(sj - dr[dv + 1], T(0))}).v;
          axpy<Arch>(dv, pj, dr, gv);
          const T ds = pj * (dot<Arch>(dr, vrow, dv) - dr[dv]) * sc;
          axpy<Arch>(dk, ds, qn, gk);
          axpy<Arch>(dk, ds, krow, dqp + r * dk);
        }
      }
      for (index_t p = 0; p < dk; ++p) x.dk(b, hkv, j, p) = gk[p];
      for (index_t e = 0; e < dv; ++e) x.dv(b, hkv, j, e) = gv[e];
    }
  });
  // dq: the chunks' parts of every row, in chunk order
  parallel_for(s.B * s.Hkv, nt, [&](index_t bh, int) {
    const index_t b = bh / s.Hkv, hkv = bh % s.Hkv;
    for (index_t r = 0; r < rows; ++r) {
      const index_t i = r / G, h = hkv * G + r % G;
      T* acc = part.data() + (bh * nchunk) * rows * dk + r * dk;
      for (index_t c = 1; c < nchunk; ++c) {
        const T* pc = part.data() + ((bh * nchunk + c) * rows + r) * dk;
        for (index_t p = 0; p < dk; ++p) acc[p] += pc[p];
      }
      for (index_t p = 0; p < dk; ++p) x.dq(b, h, i, p) = acc[p];
    }
  });
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
