// attnkit: the Combiner plan axial(rows, cols; row-major, column-major or their mixture) on the engine
// (engine.hpp; docs/design.md §4.3).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "workspace.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// Anchored summaries over one line of keys (a row, or a column read with stride m): for anchors
/// a(c) (c < count), (e, k~) = attention of q_a(c) over the line's first kend(c) keys with values
/// (V, K), written to es/ks at summary index g(c). With `save`, the anchor's max and sum are saved
/// at state index g(c) too: with e, its state over the line (the direct part of its own query when
/// the line is its own row or column), which the next pass merges with.
template <class Arch, class T, class A, class E, class G>
void axial_summaries(const combiner_head<T>& hd, combiner_workspace<Arch, T>& w, index_t j0, index_t step,
                     index_t nkeys, index_t count, A&& anchor, E&& kend, G&& g, T* ks, T* es, bool save) {
  constexpr index_t Br = combiner_block<Arch, T>::Br;
  const index_t dk = hd.s.dk, dv = hd.s.dv;
  auto& blk = w.blk;
  // A line read with a large stride (a column) is gathered first: its rows would all fall in the
  // same few cache sets.
  const T* kp = hd.k.ptr(hd.b, hd.hkv, j0, 0);
  const T* vp = hd.v.ptr(hd.b, hd.hkv, j0, 0);
  index_t kj = hd.k.stride(2) * step, kd = hd.k.stride(3), vj = hd.v.stride(2) * step, vd = hd.v.stride(3);
  if (step != 1 && nkeys > 0) {
    w.pk.resize(static_cast<std::size_t>(nkeys * dk));
    w.pv.resize(static_cast<std::size_t>(nkeys * dv));
    gather_rows(kp, kj, kd, dk, nkeys, w.pk.data());
    gather_rows(vp, vj, vd, dv, nkeys, w.pv.data());
    kp = w.pk.data();
    vp = w.pv.data();
    kj = dk, kd = 1, vj = dv, vd = 1;
  }
  for (index_t c0 = 0; c0 < count; c0 += Br) {
    const index_t n = std::min(Br, count - c0);
    hd.begin(
        blk, n, [&](index_t c) { return anchor(c0 + c); }, [&](index_t c) { return kend(c0 + c); }, dv + dk);
    const value_source<T> vv{vp, vj, vd, dv, 0};
    const value_source<T> vk{kp, kj, kd, dk, dv};
    blk.add2(kp, kj, kd, vv, vk, 2, nkeys);
    blk.run();
    // e: also the saved state's output rows, with its max and sum
    if (save) w.states.save_stats(blk, n, [&](index_t c) { return g(c0 + c); });
    blk.finish_all(
        n, 0, dv, [&](index_t c) { return es + g(c0 + c) * dv; }, 1);
    blk.finish_all(
        n, dv, dk, [&](index_t c) { return ks + g(c0 + c) * dk; }, 1);
  }
}

template <class Arch, class T>
void combiner_axial(const combiner_head<T>& hd, index_t nr, index_t m, bool col_major, bool blend,
                    combiner_workspace<Arch, T>& w) {
  constexpr index_t Br = combiner_block<Arch, T>::Br;
  const index_t len = hd.len, dk = hd.s.dk, dv = hd.s.dv;
  const bool causal = hd.causal;
  auto& blk = w.blk;
  auto& st = w.states;
  // Saved states and summaries of (r, c) at r * mp + c: a padded row length, so that a column of
  // them (stride mp rows) does not fall into a few cache sets when m is a power of two.
  const index_t mp = m + 1, nrp = nr + 1;
  st.resize(std::max(nr * mp, m * nrp), dv);
  w.ks.resize(static_cast<std::size_t>(std::max(nr * mp, m * nrp) * dk));
  w.es.resize(static_cast<std::size_t>(std::max(nr * mp, m * nrp) * dv));
  if (!col_major) {
    const index_t nvr = (len + m - 1) / m;  // rows holding keys
    // row-major: summaries and states of (r, c) at c * nrp + r, so that pass B reads each
    // column's contiguously
    auto at = [&](index_t r, index_t c) { return c * nrp + r; };
    // summaries (r', c): row r' seen from column c, bidirectional within the row. Bidirectional,
    // that is also the direct part (pass A) of query (r', c): its state is saved on the way.
    for (index_t r = 0; r < nvr; ++r) {
      const index_t nk = std::min(len, (r + 1) * m) - r * m;
      axial_summaries(
          hd, w, r * m, 1, nk, m, [&](index_t c) { return r * m + c; }, [&](index_t) { return nk; },
          [&](index_t c) { return at(r, c); }, w.ks.data(), w.es.data(), !causal);
    }
    // pass A: the own row (causal: columns <= c); bidirectional rows without keys see nothing yet
    if (!causal)
      for (index_t r = nvr; r < nr; ++r)
        for (index_t c = 0; c < m; ++c) {
          st.m[static_cast<std::size_t>(at(r, c))] = -std::numeric_limits<T>::infinity();
          st.l[static_cast<std::size_t>(at(r, c))] = T(0);
        }
    for (index_t r = causal ? 0 : nr; r < nr; ++r) {
      const index_t nk = std::clamp<index_t>(len - r * m, 0, m);
      for (index_t c0 = 0; c0 < m; c0 += Br) {
        const index_t n = std::min(Br, m - c0);
        hd.begin(
            blk, n, [&](index_t c) { return r * m + c0 + c; },
            [&](index_t c) { return causal ? causal_count(c0 + c, 0, nk) : nk; });
        hd.add_keys(blk, r * m, nk);
        blk.run();
        st.save_all(blk, n, [&](index_t c) { return at(r, c0 + c); });
      }
    }
    // pass B: down each column c, the summaries (r', c) of the other (causal: earlier) rows
    const T* erows = causal ? st.e.data() : w.es.data();
    for (index_t c = 0; c < m; ++c) {
      for (index_t r0 = 0; r0 < nr; r0 += Br) {
        const index_t n = std::min(Br, nr - r0);
        hd.begin(
            blk, n, [&](index_t x) { return (r0 + x) * m + c; },
            [&](index_t x) { return causal ? std::min(r0 + x, nvr) : nvr; });
        hd.add_summaries(blk, w.ks.data(), w.es.data(), at(0, c), nvr);
        if (!causal)
          for (index_t x = 0; x < n && r0 + x < nvr; ++x) blk.restrict_row(r0 + x, ~(std::uint64_t(1) << x));
        blk.run();
        hd.finish_merged(
            blk, n, st, [&](index_t x) { return at(r0 + x, c); }, erows,
            [&](index_t x) { return (r0 + x) * m + c; }, blend);
      }
    }
    return;
  }
  // column-major: column c' holds the keys c', c' + m, ... below len
  auto col_keys = [&](index_t c) { return c < len ? (len - c + m - 1) / m : 0; };
  const index_t mv = std::min(m, len);  // columns holding keys
  // Summaries (r, c'): column c' (causal: rows <= r) anchored at (r, c'). They are also the direct
  // part (pass A) of query (r, c'): its state is saved on the way. A causal group of rows < r
  // (c' > c) is anchored at its last row r - 1, so it is the summary (r - 1, c').
  for (index_t c = 0; c < m; ++c) {
    const index_t nk = col_keys(c);
    auto anchor = [&](index_t r) { return r * m + c; };
    axial_summaries(
        hd, w, c, m, nk, nr, anchor, [&](index_t r) { return causal ? causal_count(r, 0, nk) : nk; },
        [&](index_t r) { return r * mp + c; }, w.ks.data(), w.es.data(), true);
  }
  // pass B: along each row r, the summaries (r, c') of the other columns. Causal: exclusive
  // summaries (rows < r) first, visible to column c for c' > c, then inclusive ones (rows <= r),
  // a prefix c' < c: every panel row past a query's kend holds a key after the query.
  for (index_t r = 0; r < nr; ++r)
    for (index_t c0 = 0; c0 < m; c0 += Br) {
      const index_t n = std::min(Br, m - c0);
      const index_t ne = causal && r > 0 ? mv : 0;
      hd.begin(
          blk, n, [&](index_t x) { return r * m + c0 + x; },
          [&](index_t x) { return causal ? ne + std::min(c0 + x, mv) : mv; });
      if (ne > 0) hd.add_summaries(blk, w.ks.data(), w.es.data(), (r - 1) * mp, ne);
      hd.add_summaries(blk, w.ks.data(), w.es.data(), r * mp, mv);
      const std::uint64_t used = n >= 64 ? ~std::uint64_t(0) : (std::uint64_t(1) << n) - 1;
      for (index_t cc = 0; cc < mv && (causal ? ne > 0 : true); ++cc) {
        std::uint64_t bits;  // columns x that may see this summary: c0 + x < cc, or c0 + x != cc
        if (causal) {
          const index_t k = std::clamp<index_t>(cc - c0, 0, n);
          bits = k >= 64 ? ~std::uint64_t(0) : (std::uint64_t(1) << k) - 1;
        } else {
          bits = cc >= c0 && cc < c0 + n ? used & ~(std::uint64_t(1) << (cc - c0)) : used;
        }
        if (bits != used) blk.restrict_row(cc, bits);
      }
      blk.run();
      hd.finish_merged(
          blk, n, st, [&](index_t x) { return r * mp + c0 + x; }, w.es.data(),
          [&](index_t x) { return r * m + c0 + x; }, blend);
    }
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
