// attnkit: the Combiner plan fixed(span) on the engine (engine.hpp; docs/design.md §4.3).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "workspace.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

template <class Arch, class T>
void combiner_fixed(const combiner_head<T>& hd, index_t span, combiner_workspace<Arch, T>& w) {
  constexpr index_t Br = combiner_block<Arch, T>::Br;
  const index_t L = hd.L(), s = span, nseg = (L + s - 1) / s, nvs = (hd.len + s - 1) / s;
  const index_t dk = hd.s.dk, dv = hd.s.dv;
  w.ks.resize(static_cast<std::size_t>(nvs * dk));
  w.es.resize(static_cast<std::size_t>(nvs * dv));
  w.idx.resize(static_cast<std::size_t>(s));
  for (index_t a = 0; a < nvs; ++a) {
    const index_t j0 = a * s, n = std::min(hd.len, j0 + s) - j0;
    std::iota(w.idx.begin(), w.idx.begin() + n, j0);
    pooled_summary<Arch>(hd.q, hd.k, hd.v, hd.b, hd.h, hd.hkv, w.idx.data(), n, hd.pooling, hd.scale,
                         w.ks.data() + a * dk, w.es.data() + a * dv, w.sum);
  }
  auto& blk = w.blk;
  for (index_t a = 0; a < nseg; ++a) {
    const index_t j0 = a * s, j1 = std::min(L, j0 + s), nd = std::max<index_t>(0, std::min(hd.len, j1) - j0);
    const index_t before = std::min(a, nvs);
    for (index_t i0 = j0; i0 < j1; i0 += Br) {
      const index_t n = std::min(Br, j1 - i0);
      const index_t total = hd.causal ? before + nd : nvs - (a < nvs ? 1 : 0) + nd;
      hd.begin(
          blk, n, [&](index_t c) { return i0 + c; },
          [&](index_t c) { return hd.causal ? before + causal_count(i0 + c, j0, nd) : total; });
      hd.add_summaries(blk, w.ks.data(), w.es.data(), 0, before);
      if (!hd.causal && a + 1 < nvs) hd.add_summaries(blk, w.ks.data(), w.es.data(), a + 1, nvs - a - 1);
      hd.add_keys(blk, j0, nd);
      blk.run();
      hd.finish_all(blk, n, [&](index_t c) { return i0 + c; });
    }
  }
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
