// attnkit: the Combiner plan learnable(cluster ids, span) on the engine (engine.hpp; docs/design.md §4.3).
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
void combiner_learnable(const combiner_head<T>& hd, const std::vector<std::int32_t>& id, index_t span,
                        combiner_workspace<Arch, T>& w) {
  constexpr index_t Br = combiner_block<Arch, T>::Br;
  const index_t L = hd.L(), len = hd.len, dk = hd.s.dk, dv = hd.s.dv;
  auto& blk = w.blk;
  std::int32_t ncl = 0;
  for (index_t j = 0; j < len; ++j) ncl = std::max(ncl, id[static_cast<std::size_t>(j)] + 1);
  // members (keys) and queries of each cluster; queries without one (padding) go to list ncl
  std::vector<std::vector<index_t>> members(static_cast<std::size_t>(ncl)),
      queries(static_cast<std::size_t>(ncl) + 1);
  for (index_t j = 0; j < L; ++j) {
    const std::int32_t c = id[static_cast<std::size_t>(j)];
    if (j < len) members[static_cast<std::size_t>(c)].push_back(j);
    queries[static_cast<std::size_t>(j < len ? c : ncl)].push_back(j);
  }
  // keys and values of the positions pos[0, n) to the panel rows r0, r0 + 1, ...; the rows are
  // scattered: those a few ahead are prefetched
  auto gather = [&](const index_t* pos, index_t n, index_t r0) {
    constexpr index_t ahead = 6;
    for (index_t t = 0; t < n; ++t) {
      if (t + ahead < n) {
        prefetch_elements(hd.k.ptr(hd.b, hd.hkv, pos[t + ahead], 0), hd.k.stride(3) == 1 ? dk : 1);
        prefetch_elements(hd.v.ptr(hd.b, hd.hkv, pos[t + ahead], 0), hd.v.stride(3) == 1 ? dv : 1);
      }
      copy_strided(hd.k.ptr(hd.b, hd.hkv, pos[t], 0), hd.k.stride(3), dk, w.pk.data() + (r0 + t) * dk);
      copy_strided(hd.v.ptr(hd.b, hd.hkv, pos[t], 0), hd.v.stride(3), dv, w.pv.data() + (r0 + t) * dv);
    }
  };
  if (!hd.causal) {
    // summaries of the non-empty clusters, in cluster order
    std::vector<index_t> gi(static_cast<std::size_t>(ncl), -1);
    index_t ng = 0;
    for (std::int32_t c = 0; c < ncl; ++c)
      if (!members[static_cast<std::size_t>(c)].empty()) gi[static_cast<std::size_t>(c)] = ng++;
    w.ks.resize(static_cast<std::size_t>(ng * dk));
    w.es.resize(static_cast<std::size_t>(ng * dv));
    for (std::int32_t c = 0; c < ncl; ++c) {
      const auto& mc = members[static_cast<std::size_t>(c)];
      if (mc.empty()) continue;
      const index_t g = gi[static_cast<std::size_t>(c)];
      pooled_summary<Arch>(hd.q, hd.k, hd.v, hd.b, hd.h, hd.hkv, mc.data(), static_cast<index_t>(mc.size()),
                           hd.pooling, hd.scale, w.ks.data() + g * dk, w.es.data() + g * dv, w.sum);
    }
    for (std::int32_t c = 0; c <= ncl; ++c) {
      const auto& qc = queries[static_cast<std::size_t>(c)];
      if (qc.empty()) continue;
      const std::vector<index_t> none;
      const auto& mc = c < ncl ? members[static_cast<std::size_t>(c)] : none;
      const index_t nm = static_cast<index_t>(mc.size());
      w.pk.resize(static_cast<std::size_t>(std::max<index_t>(nm, 1) * dk));
      w.pv.resize(static_cast<std::size_t>(std::max<index_t>(nm, 1) * dv));
      gather(mc.data(), nm, 0);
      const index_t own = c < ncl ? gi[static_cast<std::size_t>(c)] : -1;  // own summary, excluded
      const index_t nb = own >= 0 ? own : ng, na = own >= 0 ? ng - own - 1 : 0;
      const index_t total = nm + nb + na;
      for (std::size_t t0 = 0; t0 < qc.size(); t0 += static_cast<std::size_t>(Br)) {
        const index_t n = std::min<index_t>(Br, static_cast<index_t>(qc.size() - t0));
        hd.begin(
            blk, n, [&](index_t x) { return qc[t0 + static_cast<std::size_t>(x)]; },
            [&](index_t) { return total; });
        hd.add_summaries(blk, w.pk.data(), w.pv.data(), 0, nm);
        hd.add_summaries(blk, w.ks.data(), w.es.data(), 0, nb);
        hd.add_summaries(blk, w.ks.data(), w.es.data(), ng - na, na);
        blk.run();
        hd.finish_all(blk, n, [&](index_t x) { return qc[t0 + static_cast<std::size_t>(x)]; });
      }
    }
    return;
  }
  // Causal. Summaries per segment a: column 0 pools the whole segment (for queries whose cluster
  // is not in it), column 1 + x pools it minus its x-th present cluster (empty ones are dropped).
  const index_t s = span, nseg = (L + s - 1) / s, nvs = (len + s - 1) / s;
  std::vector<std::vector<std::int32_t>> present(static_cast<std::size_t>(nvs));
  std::vector<std::vector<index_t>> sidx(
      static_cast<std::size_t>(nvs));  // summary index per column (-1: empty)
  index_t ng = 0;
  for (index_t a = 0; a < nvs; ++a) {
    auto& pr = present[static_cast<std::size_t>(a)];
    const index_t j0 = a * s, j1 = std::min(len, j0 + s);
    for (index_t j = j0; j < j1; ++j) pr.push_back(id[static_cast<std::size_t>(j)]);
    std::sort(pr.begin(), pr.end());
    pr.erase(std::unique(pr.begin(), pr.end()), pr.end());
    auto& si = sidx[static_cast<std::size_t>(a)];
    si.push_back(ng++);
    for (std::int32_t c : pr) {
      bool other = false;
      for (index_t j = j0; j < j1 && !other; ++j) other = id[static_cast<std::size_t>(j)] != c;
      si.push_back(other ? ng++ : -1);
    }
  }
  w.ks.resize(static_cast<std::size_t>(ng * dk));
  w.es.resize(static_cast<std::size_t>(ng * dv));
  std::vector<T> qsum;  // pooled summary queries of one segment, [columns, dk]
  const bool mx = hd.pooling == combiner_pooling::max;
  // d[p] = a[p * sa] (first), else pooled into d (max or sum), p < dk
  auto combine = [&](T* d, const T* a, index_t sa, bool first) { pool_row(d, a, sa, dk, first, mx); };
  std::vector<T> pq, pkk, preq, prek, sufq, sufk;
  std::vector<index_t> cnt, pren, sufn, xid;
  for (index_t a = 0; a < nvs; ++a) {
    const auto& pr = present[static_cast<std::size_t>(a)];
    const auto& si = sidx[static_cast<std::size_t>(a)];
    const index_t j0 = a * s, nk = std::min(len, j0 + s) - j0, npr = static_cast<index_t>(pr.size());
    // per-cluster pools of q and k (max or sum) and counts, then each column's pool from them
    pq.resize(static_cast<std::size_t>(npr * dk));
    pkk.resize(static_cast<std::size_t>(npr * dk));
    cnt.assign(static_cast<std::size_t>(npr), 0);
    xid.resize(static_cast<std::size_t>(nk));  // key j0 + j's cluster is pr[xid[j]]
    for (index_t j = j0; j < j0 + nk; ++j) {
      const index_t x = std::lower_bound(pr.begin(), pr.end(), id[static_cast<std::size_t>(j)]) - pr.begin();
      xid[static_cast<std::size_t>(j - j0)] = x;
      const bool first = cnt[static_cast<std::size_t>(x)]++ == 0;
      combine(pq.data() + x * dk, hd.qrow(j), hd.qs(), first);
      combine(pkk.data() + x * dk, hd.k.ptr(hd.b, hd.hkv, j, 0), hd.k.stride(3), first);
    }
    const index_t ncol = npr + 1;
    // Column 1 + x pools every present cluster but x: the pool of the clusters before x combined
    // with the pool of those after it (prefix and suffix pools, O(npr dk) per segment).
    const std::size_t pw = static_cast<std::size_t>((npr + 1) * dk);
    for (auto* v : {&preq, &prek, &sufq, &sufk}) v->resize(pw);
    pren.assign(static_cast<std::size_t>(npr) + 1, 0);
    sufn.assign(static_cast<std::size_t>(npr) + 1, 0);
    for (index_t x = 0; x < npr; ++x) {  // pre*[x + 1] = pool of clusters [0, x]
      const std::size_t o = static_cast<std::size_t>((x + 1) * dk), o0 = o - static_cast<std::size_t>(dk);
      std::copy(preq.begin() + static_cast<std::ptrdiff_t>(o0), preq.begin() + static_cast<std::ptrdiff_t>(o),
                preq.begin() + static_cast<std::ptrdiff_t>(o));
      std::copy(prek.begin() + static_cast<std::ptrdiff_t>(o0), prek.begin() + static_cast<std::ptrdiff_t>(o),
                prek.begin() + static_cast<std::ptrdiff_t>(o));
      combine(preq.data() + o, pq.data() + x * dk, 1, x == 0);
      combine(prek.data() + o, pkk.data() + x * dk, 1, x == 0);
      pren[static_cast<std::size_t>(x) + 1] =
          pren[static_cast<std::size_t>(x)] + cnt[static_cast<std::size_t>(x)];
    }
    for (index_t x = npr - 1; x >= 0; --x) {  // suf*[x] = pool of clusters [x, npr)
      const std::size_t o = static_cast<std::size_t>(x * dk), o1 = o + static_cast<std::size_t>(dk);
      std::copy(sufq.begin() + static_cast<std::ptrdiff_t>(o1),
                sufq.begin() + static_cast<std::ptrdiff_t>(o1 + dk),
                sufq.begin() + static_cast<std::ptrdiff_t>(o));
      std::copy(sufk.begin() + static_cast<std::ptrdiff_t>(o1),
                sufk.begin() + static_cast<std::ptrdiff_t>(o1 + dk),
                sufk.begin() + static_cast<std::ptrdiff_t>(o));
      combine(sufq.data() + o, pq.data() + x * dk, 1, x == npr - 1);
      combine(sufk.data() + o, pkk.data() + x * dk, 1, x == npr - 1);
      sufn[static_cast<std::size_t>(x)] =
          sufn[static_cast<std::size_t>(x) + 1] + cnt[static_cast<std::size_t>(x)];
    }
    qsum.assign(static_cast<std::size_t>(ncol * dk), T(0));
    for (index_t col = 0; col < ncol; ++col) {
      const index_t g = si[static_cast<std::size_t>(col)];
      if (g < 0) continue;
      T* qd = qsum.data() + col * dk;
      T* kd = w.ks.data() + g * dk;
      // clusters [0, x) and [x + 1, npr) for column 1 + x; column 0: all of them
      const index_t x = col == 0 ? npr : col - 1, after = col == 0 ? npr : col;
      const index_t nb = pren[static_cast<std::size_t>(x)], na = sufn[static_cast<std::size_t>(after)];
      if (nb > 0) {
        std::copy(preq.data() + x * dk, preq.data() + (x + 1) * dk, qd);
        std::copy(prek.data() + x * dk, prek.data() + (x + 1) * dk, kd);
      }
      if (na > 0) {
        combine(qd, sufq.data() + after * dk, 1, nb == 0);
        combine(kd, sufk.data() + after * dk, 1, nb == 0);
      }
      if (!mx)
        for (index_t p = 0; p < dk; ++p) {
          qd[p] /= static_cast<T>(nb + na);
          kd[p] /= static_cast<T>(nb + na);
        }
    }
    // local expectations: the columns over the segment's keys, each hiding its excluded cluster
    for (index_t c0 = 0; c0 < ncol; c0 += Br) {
      const index_t n = std::min(Br, ncol - c0);
      blk.begin(
          n, [&](index_t c) { return qsum.data() + (c0 + c) * dk; }, 1, hd.qscale,
          [&](index_t) { return nk; }, dv);
      hd.add_keys(blk, j0, nk);
      for (index_t j = 0; j < nk; ++j) {
        const index_t col = 1 + xid[static_cast<std::size_t>(j)] - c0;
        if (col >= 0 && col < n) blk.restrict_row(j, ~(std::uint64_t(1) << col));
      }
      blk.run();
      T* sink = blk.sink();  // the columns whose group is not summarized
      blk.finish_all(
          n, 0, dv,
          [&](index_t c) {
            const index_t g = si[static_cast<std::size_t>(c0 + c)];
            return g >= 0 ? w.es.data() + g * dv : sink;
          },
          1);
    }
  }
  auto& st = w.states;
  st.resize(L, dv);
  // pass A: the own segment up to i
  for (index_t a = 0; a < nseg; ++a) {
    const index_t j0 = a * s, j1 = std::min(L, j0 + s), nd = std::max<index_t>(0, std::min(len, j1) - j0);
    for (index_t i0 = j0; i0 < j1; i0 += Br) {
      const index_t n = std::min(Br, j1 - i0);
      hd.begin(
          blk, n, [&](index_t c) { return i0 + c; }, [&](index_t c) { return causal_count(i0 + c, j0, nd); });
      hd.add_keys(blk, j0, nd);
      blk.run();
      st.save_all(blk, n, [&](index_t c) { return i0 + c; });
    }
  }
  // pass B: per cluster, a panel of the summaries of the earlier segments (minus the cluster),
  // latest first, then the cluster's members in order. A query in segment a' sees the window of
  // the summaries of the segments a < a' and the members before a' s (combiner_block::start_at).
  std::vector<index_t> sum_before(static_cast<std::size_t>(nseg) + 1), mem_before(sum_before.size()), gs;
  for (std::int32_t c = 0; c <= ncl; ++c) {
    const auto& qc = queries[static_cast<std::size_t>(c)];
    if (qc.empty()) continue;
    const index_t last = std::min(qc.back() / s, nvs);  // segments [0, last) are needed
    const std::vector<index_t> none;
    const auto& mc = c < ncl ? members[static_cast<std::size_t>(c)] : none;
    gs.clear();
    std::size_t mi = 0;
    for (index_t a = 0; a < last; ++a) {
      const auto& pr = present[static_cast<std::size_t>(a)];
      const auto it = std::lower_bound(pr.begin(), pr.end(), c);
      const index_t col = c < ncl && it != pr.end() && *it == c ? 1 + (it - pr.begin()) : 0;
      const index_t g = sidx[static_cast<std::size_t>(a)][static_cast<std::size_t>(col)];
      sum_before[static_cast<std::size_t>(a)] = static_cast<index_t>(gs.size());
      mem_before[static_cast<std::size_t>(a)] = static_cast<index_t>(mi);
      if (g >= 0) gs.push_back(g);
      while (mi < mc.size() && mc[mi] < (a + 1) * s) ++mi;
    }
    sum_before[static_cast<std::size_t>(last)] = static_cast<index_t>(gs.size());
    mem_before[static_cast<std::size_t>(last)] = static_cast<index_t>(mi);
    const index_t ns = static_cast<index_t>(gs.size()), rows = ns + static_cast<index_t>(mi);
    w.pk.resize(static_cast<std::size_t>(std::max<index_t>(rows, 1) * dk));
    w.pv.resize(static_cast<std::size_t>(std::max<index_t>(rows, 1) * dv));
    for (index_t t = 0; t < ns; ++t) {
      if (t + 6 < ns) {
        const index_t ga = gs[static_cast<std::size_t>(ns - 7 - t)];
        prefetch_elements(w.ks.data() + ga * dk, dk);
        prefetch_elements(w.es.data() + ga * dv, dv);
      }
      const index_t g = gs[static_cast<std::size_t>(ns - 1 - t)];
      std::copy(w.ks.data() + g * dk, w.ks.data() + (g + 1) * dk, w.pk.data() + t * dk);
      std::copy(w.es.data() + g * dv, w.es.data() + (g + 1) * dv, w.pv.data() + t * dv);
    }
    gather(mc.data(), static_cast<index_t>(mi), ns);
    for (std::size_t t0 = 0; t0 < qc.size(); t0 += static_cast<std::size_t>(Br)) {
      const index_t n = std::min<index_t>(Br, static_cast<index_t>(qc.size() - t0));
      auto qi = [&](index_t x) { return qc[t0 + static_cast<std::size_t>(x)]; };
      auto seg = [&](index_t x) { return static_cast<std::size_t>(std::min(qi(x) / s, last)); };
      hd.begin(blk, n, qi, [&](index_t x) { return ns + mem_before[seg(x)]; });
      blk.start_at([&](index_t x) { return ns - sum_before[seg(x)]; });
      hd.add_summaries(blk, w.pk.data(), w.pv.data(), 0, rows);
      blk.run();
      hd.finish_merged(blk, n, st, qi, st.e.data(), qi);
    }
  }
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
