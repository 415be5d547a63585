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

/// Which online-softmax state axial_summaries saves per anchor (at state index g(c), beside e).
enum class axial_state {
  none,
  line,   ///< its state over the line: the direct part of its query when the line is its own
  prefix  ///< its state over the line's first c + 1 keys (a causal query's own row, row-major)
};

/// Anchored summaries over one line of keys (a row, or a column read with stride m): for anchors
/// a(c) (c < count), (e, k~) = attention of q_a(c) over the line's first kend(c) keys with values
/// (V, K), written to es/ks at summary index g(c); and the state `save` names. The prefix states
/// split off the summary blocks: each register of columns of `w.prefix` takes the block's state
/// when the block has run the keys before its first anchor, then runs its own diagonal keys, so
/// the prefixes cost one diagonal tile per register more.
template <class Arch, class T, class A, class E, class G>
void axial_summaries(const combiner_head<T>& hd, combiner_workspace<Arch, T>& w, index_t j0, index_t step,
                     index_t nkeys, index_t count, A&& anchor, E&& kend, G&& g, T* ks, T* es,
                     axial_state save) {
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
  // keys [a, b) of the line as panel rows, with values (V, K), or V alone
  auto add_keys = [&](combiner_block<Arch, T>& b, index_t a, index_t e, bool with_keys) {
    const value_source<T> vv{vp + a * vj, vj, vd, dv, 0};
    const value_source<T> vk{kp + a * kj, kj, kd, dk, dv};
    b.add2(kp + a * kj, kj, kd, vv, vk, with_keys ? 2 : 1, e - a);
  };
  for (index_t c0 = 0; c0 < count; c0 += Br) {
    const index_t n = std::min(Br, count - c0);
    hd.begin(
        blk, n, [&](index_t c) { return anchor(c0 + c); }, [&](index_t c) { return kend(c0 + c); }, dv + dk);
    index_t done = 0;  // the keys blk has consumed
    if (save == axial_state::prefix) {
      // Register v of the prefix block takes blk's state after the keys [0, cut(v)), before the
      // first anchor of its columns, then runs the diagonal keys [cut(v), c + 1) alone.
      constexpr index_t W = combiner_block<Arch, T>::W;
      const index_t pre = std::min(c0, nkeys), top = std::min(c0 + n, nkeys);
      auto cut = [&](index_t v) { return std::clamp<index_t>(c0 + v * W, pre, nkeys); };
      auto consume = [&](index_t e) {
        if (e > done) add_keys(blk, done, e, true), blk.run(), done = e;
      };
      auto& pb = w.prefix;
      consume(pre);
      pb.resume(
          blk, [&](index_t c) { return std::min(c0 + c + 1, nkeys) - pre; }, dv);
      for (index_t v = 1; v * W < n; ++v) {
        consume(cut(v));
        pb.take(blk, v);
      }
      pb.start_at([&](index_t c) { return cut(c / W) - pre; });
      add_keys(pb, pre, top, false);
      pb.run();
      w.states.save_all(pb, n, [&](index_t c) { return g(c0 + c); });
    }
    add_keys(blk, done, nkeys, true);
    blk.run();
    // e: also the saved state's output rows, with its max and sum
    if (save == axial_state::line) w.states.save_stats(blk, n, [&](index_t c) { return g(c0 + c); });
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
    // summaries (r', c): row r' seen from column c, bidirectional within the row. That is also
    // the direct part of query (r', c), bidirectional; causal, its prefix of the row splits off
    // the summary blocks. Either way its state is saved on the way. (Causal, the last row's
    // summaries are seen by no query.)
    for (index_t r = 0; r < nvr; ++r) {
      const index_t nk = std::min(len, (r + 1) * m) - r * m;
      axial_summaries(
          hd, w, r * m, 1, nk, m, [&](index_t c) { return r * m + c; }, [&](index_t) { return nk; },
          [&](index_t c) { return at(r, c); }, w.ks.data(), w.es.data(),
          causal ? axial_state::prefix : axial_state::line);
    }
    // rows without keys see nothing yet
    for (index_t r = nvr; r < nr; ++r)
      for (index_t c = 0; c < m; ++c) {
        st.m[static_cast<std::size_t>(at(r, c))] = -std::numeric_limits<T>::infinity();
        st.l[static_cast<std::size_t>(at(r, c))] = T(0);
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
        [&](index_t r) { return r * mp + c; }, w.ks.data(), w.es.data(), axial_state::line);
  }
  // pass B: along each row r, the summaries (r, c') of the other columns. Causal: the exclusive
  // summaries (rows < r) first, then the inclusive ones (rows <= r): column c sees the window
  // [c + 1, ne + c) of that panel (exclusive c' > c, inclusive c' < c).
  for (index_t r = 0; r < nr; ++r)
    for (index_t c0 = 0; c0 < m; c0 += Br) {
      const index_t n = std::min(Br, m - c0);
      const index_t ne = causal && r > 0 ? mv : 0;
      hd.begin(
          blk, n, [&](index_t x) { return r * m + c0 + x; },
          [&](index_t x) { return causal ? ne + std::min(c0 + x, mv) : mv; });
      if (ne > 0) {
        hd.add_summaries(blk, w.ks.data(), w.es.data(), (r - 1) * mp, ne);
        blk.start_at([&](index_t x) { return std::min(c0 + x + 1, ne); });
      }
      hd.add_summaries(blk, w.ks.data(), w.es.data(), r * mp, mv);
      if (!causal)  // the own column's summary is the direct part
        for (index_t x = 0; x < n && c0 + x < mv; ++x) blk.restrict_row(c0 + x, ~(std::uint64_t(1) << x));
      blk.run();
      hd.finish_merged(
          blk, n, st, [&](index_t x) { return r * mp + c0 + x; }, w.es.data(),
          [&](index_t x) { return r * m + c0 + x; }, blend);
    }
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
