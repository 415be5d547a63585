// attnkit: the fast paths of the Combiner plans, on the engine of engine.hpp. Each runs one
// (batch, head): summaries first (each distinct group once), then one or two passes of column
// blocks over panels of direct keys and summaries. spec.hpp is the per-query statement of the
// same plans.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "../spec.hpp"
#include "engine.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// Per-thread scratch of the plans.
template <class Arch, class T>
struct combiner_workspace {
  combiner_block<Arch, T> blk;
  combiner_states<T> states;
  summary_scratch<T> sum;
  std::vector<T> ks, es, pk, pv, mix;
  std::vector<index_t> idx;
  combiner_workspace(index_t dk, index_t dv) : blk(dk, dv + dk) {}
};

/// The inputs of one (batch b, head h) and where its output goes.
template <class T>
struct combiner_head {
  const attention_shape& s;
  const tensor_view<const T, 4>& q;
  const tensor_view<const T, 4>& k;
  const tensor_view<const T, 4>& v;
  row_view<T> out;
  index_t b, h, hkv, len;
  bool causal;
  combiner_pooling pooling;
  T scale, qscale;

  index_t L() const { return s.Lq; }
  const T* qrow(index_t i) const { return q.ptr(b, h, i, 0); }
  index_t qs() const { return q.stride(3); }
  /// Keys [j0, j0 + n) read in place (values: rows [0, dv) of O^T).
  template <class Arch>
  index_t add_keys(combiner_block<Arch, T>& blk, index_t j0, index_t n, index_t step = 1) const {
    const value_source<T> vs{v.ptr(b, hkv, j0, 0), v.stride(2) * step, v.stride(3), s.dv, 0};
    return blk.add(k.ptr(b, hkv, j0, 0), k.stride(2) * step, k.stride(3), vs, n);
  }
  /// Summary rows [g0, g0 + n) (stepping by `step`) of ks [*, dk] and es [*, dv].
  template <class Arch>
  index_t add_summaries(combiner_block<Arch, T>& blk, const T* ks, const T* es, index_t g0, index_t n,
                        index_t step = 1) const {
    const value_source<T> vs{es + g0 * s.dv, s.dv * step, 1, s.dv, 0};
    return blk.add(ks + g0 * s.dk, s.dk * step, 1, vs, n);
  }
  /// Starts a block over the queries qi(c), c < n.
  template <class Arch, class Qi, class E>
  void begin(combiner_block<Arch, T>& blk, index_t n, Qi&& qi, E&& kend) const {
    blk.begin(
        n, [&](index_t c) { return qrow(qi(c)); }, qs(), qscale, kend);
  }
  /// Writes the outputs of the columns c < n to the queries idx(c).
  template <class Arch, class I>
  void finish_all(const combiner_block<Arch, T>& blk, index_t n, I&& idx) const {
    blk.finish_all(
        n, 0, s.dv, [&](index_t c) { return out.row(idx(c)); }, out.se);
  }
};

/// Keys of query i in a causal prefix of the keys [j0, j0 + n): min(max(i + 1 - j0, 0), n).
inline index_t causal_count(index_t i, index_t j0, index_t n) {
  return std::clamp<index_t>(i + 1 - j0, 0, n);
}

// ---------------------------------------------------------------------------------------------
// fixed(span)
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

// ---------------------------------------------------------------------------------------------
// logsparse
/// Summary index of the dyadic block t at level l (size 2^l) among the blocks of [0, len).
/// Levels: every c = 2^l <= L; blocks: those that start before len.
struct dyadic_index {
  std::vector<index_t> offset;  // offset[l]: first index of level l
  dyadic_index(index_t L, index_t len) {
    index_t o = 0;
    for (index_t c = 1; c <= std::max<index_t>(L, 1); c *= 2) {
      offset.push_back(o);
      o += (len + c - 1) / c;
    }
    offset.push_back(o);
  }
  index_t levels() const { return static_cast<index_t>(offset.size()) - 1; }
  index_t total() const { return offset.back(); }
};

template <class Arch, class T>
void combiner_logsparse(const combiner_head<T>& hd, combiner_workspace<Arch, T>& w) {
  constexpr index_t Br = combiner_block<Arch, T>::Br;
  index_t P = 1;  // queries per block: the largest power of two <= Br
  while (2 * P <= Br) P *= 2;
  const index_t L = hd.L(), len = hd.len, dk = hd.s.dk, dv = hd.s.dv;
  const dyadic_index di(L, len);
  const index_t nl = di.levels();
  w.ks.resize(static_cast<std::size_t>(di.total() * dk));
  w.es.resize(static_cast<std::size_t>(di.total() * dv));
  // Pooled queries and keys level by level, each block from its two halves; then each block's
  // local expectation over its keys (causal plans use the blocks of even index only).
  w.pk.resize(static_cast<std::size_t>(di.total() * dk));  // pooled queries
  const bool mx = hd.pooling == combiner_pooling::max;
  for (index_t l = 0; l < nl; ++l) {
    const index_t c = index_t(1) << l;
    for (index_t t = 0; t * c < len; ++t) {
      const index_t j0 = t * c, n = std::min(len, j0 + c) - j0,
                    g = di.offset[static_cast<std::size_t>(l)] + t;
      T* qg = w.pk.data() + g * dk;
      T* kg = w.ks.data() + g * dk;
      if (l == 0) {
        copy_strided(hd.qrow(j0), hd.qs(), dk, qg);
        copy_strided(hd.k.ptr(hd.b, hd.hkv, j0, 0), hd.k.stride(3), dk, kg);
      } else {
        const index_t h0 = di.offset[static_cast<std::size_t>(l) - 1] + 2 * t, half = c / 2;
        const index_t n0 = std::min(half, n), n1 = n - n0;
        const T* q0 = w.pk.data() + h0 * dk;
        const T* k0 = w.ks.data() + h0 * dk;
        if (n1 == 0) {
          std::copy(q0, q0 + dk, qg);
          std::copy(k0, k0 + dk, kg);
        } else if (mx) {
          for (index_t p = 0; p < dk; ++p) {
            qg[p] = std::max(q0[p], q0[dk + p]);
            kg[p] = std::max(k0[p], k0[dk + p]);
          }
        } else {
          const T a = static_cast<T>(n0) / static_cast<T>(n), bb = static_cast<T>(n1) / static_cast<T>(n);
          for (index_t p = 0; p < dk; ++p) {
            qg[p] = a * q0[p] + bb * q0[dk + p];
            kg[p] = a * k0[p] + bb * k0[dk + p];
          }
        }
      }
    }
    for (index_t t = 0; t * c < len; ++t) {
      if (hd.causal && t % 2 == 1) continue;
      const index_t j0 = t * c, n = std::min(len, j0 + c) - j0,
                    g = di.offset[static_cast<std::size_t>(l)] + t;
      if (n == 1) {
        copy_strided(hd.v.ptr(hd.b, hd.hkv, j0, 0), hd.v.stride(3), dv, w.es.data() + g * dv);
        continue;
      }
      range_expectation<Arch>(hd.k, hd.v, hd.b, hd.hkv, j0, n, w.pk.data() + g * dk, hd.scale,
                              w.es.data() + g * dv, w.sum);
    }
  }
  // One block of P aligned queries: the groups of levels c >= P are shared by all of them (gathered
  // first); the direct keys and the blocks of levels c < P lie inside the block's own range,
  // sorted by their end so that a causal query's keys are a prefix (then masked to its own set).
  struct entry {
    index_t end, level, t;  // level < 0: direct key t
  };
  // The in-block entries of the block at i0 (n queries, keys below len): sorted by end, with
  // the columns that see each and the number each column sees (causal prefix).
  struct inner_set {
    std::vector<entry> e;
    std::vector<std::uint64_t> bits;
    std::vector<index_t> count;
  };
  // Levels below S (and the direct key) are per query: 2 log2(S) of a block's rows would otherwise
  // be computed for every column for the one each needs.
  const index_t ls = std::min<index_t>(3, nl);  // S = 2^ls = 8
  const T qs2 = hd.qscale;
  std::vector<T> o(static_cast<std::size_t>(dv)), qi(static_cast<std::size_t>(dk)),
      vdir(static_cast<std::size_t>(dv));
  std::vector<T> x(8);
  std::vector<const T*> vp(8);
  auto build_inner = [&](index_t i0, index_t n, inner_set& in) {
    in.e.clear();
    for (index_t l = ls; l < nl && (index_t(1) << l) < P; ++l) {
      const index_t c = index_t(1) << l;
      for (index_t t = i0 / c; t * c < std::min(i0 + P, len); ++t)
        if (!hd.causal || t % 2 == 0) in.e.push_back({(t + 1) * c, l, t});
    }
    std::stable_sort(in.e.begin(), in.e.end(), [](const entry& x, const entry& y) { return x.end < y.end; });
    in.bits.assign(in.e.size(), 0);
    in.count.assign(static_cast<std::size_t>(n), 0);
    for (std::size_t x = 0; x < in.e.size(); ++x) {
      const entry& e = in.e[x];
      for (index_t c = 0; c < n; ++c) {
        const index_t i = i0 + c;
        bool vis;
        if (e.level < 0) {
          vis = e.t == i;
        } else {
          const index_t f = i >> e.level;
          vis = (f % 2 == 1 && e.t == f - 1) || (!hd.causal && f % 2 == 0 && e.t == f + 1);
        }
        if (vis) in.bits[x] |= std::uint64_t(1) << c;
        if (e.end <= i + 1) ++in.count[static_cast<std::size_t>(c)];
      }
    }
  };
  // Every whole block below len has the same structure, shifted: built once.
  inner_set tmpl, part;
  if (P <= len) build_inner(0, P, tmpl);
  std::vector<entry> shared;
  auto& blk = w.blk;
  for (index_t i0 = 0; i0 < L; i0 += P) {
    const index_t n = std::min(P, L - i0);
    const bool whole = n == P && i0 + P <= len;
    if (!whole) build_inner(i0, n, part);
    const inner_set& in = whole ? tmpl : part;
    shared.clear();
    for (index_t l = 0; l < nl; ++l) {
      const index_t c = index_t(1) << l;
      if (c < P) continue;
      const index_t f = i0 / c;
      if (f % 2 == 1) {
        if ((f - 1) * c < len) shared.push_back({f * c, l, f - 1});
      } else if (!hd.causal && (f + 1) * c < len) {
        shared.push_back({(f + 2) * c, l, f + 1});
      }
    }
    // gather the panel: shared summaries, then the block's own entries
    const index_t ns = static_cast<index_t>(shared.size());
    const index_t rows = ns + static_cast<index_t>(in.e.size());
    w.pk.resize(static_cast<std::size_t>(rows * dk));
    w.pv.resize(static_cast<std::size_t>(rows * dv));
    index_t r = 0;
    auto put = [&](index_t level, index_t t) {
      if (level < 0) {
        copy_strided(hd.k.ptr(hd.b, hd.hkv, t, 0), hd.k.stride(3), dk, w.pk.data() + r * dk);
        copy_strided(hd.v.ptr(hd.b, hd.hkv, t, 0), hd.v.stride(3), dv, w.pv.data() + r * dv);
      } else {
        const index_t g = di.offset[static_cast<std::size_t>(level)] + t;
        std::copy(w.ks.data() + g * dk, w.ks.data() + (g + 1) * dk, w.pk.data() + r * dk);
        std::copy(w.es.data() + g * dv, w.es.data() + (g + 1) * dv, w.pv.data() + r * dv);
      }
      ++r;
    };
    for (const entry& e : shared) put(e.level, e.t);
    for (const entry& e : in.e) put(e.level, whole ? e.t + (e.level < 0 ? i0 : i0 >> e.level) : e.t);
    hd.begin(
        blk, n, [&](index_t c) { return i0 + c; },
        [&](index_t c) { return hd.causal ? ns + in.count[static_cast<std::size_t>(c)] : rows; });
    hd.add_summaries(blk, w.pk.data(), w.pv.data(), 0, rows);
    for (std::size_t x = 0; x < in.e.size(); ++x) blk.restrict_row(ns + static_cast<index_t>(x), in.bits[x]);
    blk.run();
    // The direct key and the blocks of levels below S, per query, into its saved state.
    for (index_t c = 0; c < n; ++c) {
      const index_t i = i0 + c;
      T m, l;
      blk.save(c, dv, o.data(), m, l);
      index_t ne = 0;
      auto add = [&](const T* kr, const T* vr) {
        x[static_cast<std::size_t>(ne)] = qs2 * dot<Arch>(qi.data(), kr, dk);
        vp[static_cast<std::size_t>(ne++)] = vr;
      };
      copy_strided(hd.qrow(i), hd.qs(), dk, qi.data());
      if (i < len) {
        const T* kr = w.ks.data() + i * dk;  // level 0 holds the keys themselves
        const T* vr = hd.v.ptr(hd.b, hd.hkv, i, 0);
        if (hd.v.stride(3) != 1) {
          copy_strided(vr, hd.v.stride(3), dv, vdir.data());
          vr = vdir.data();
        }
        add(kr, vr);
      }
      for (index_t lv = 1; lv < ls && lv < nl; ++lv) {
        const index_t f = i >> lv, cl = index_t(1) << lv;
        index_t t = -1;
        if (f % 2 == 1)
          t = (f - 1) * cl < len ? f - 1 : -1;
        else if (!hd.causal && (f + 1) * cl < len)
          t = f + 1;
        if (t < 0) continue;
        const index_t g = di.offset[static_cast<std::size_t>(lv)] + t;
        add(w.ks.data() + g * dk, w.es.data() + g * dv);
      }
      // level 0 (c = 1) blocks are single keys: the key and value of position i -+ 1
      if (ls > 0 && nl > 0) {
        const index_t t = i % 2 == 1 ? i - 1 : (!hd.causal && i + 1 < len ? i + 1 : -1);
        if (t >= 0 && t < len) add(w.ks.data() + t * dk, w.es.data() + t * dv);
      }
      T mx = m;
      for (index_t e = 0; e < ne; ++e) mx = std::max(mx, x[static_cast<std::size_t>(e)]);
      const T sh = mx == -std::numeric_limits<T>::infinity() ? T(0) : mx;
      const T alpha = std::exp2(m - sh);
      l *= alpha;
      for (index_t e = 0; e < dv; ++e) o[static_cast<std::size_t>(e)] *= alpha;
      for (index_t e = 0; e < ne; ++e) {
        const T p = std::exp2(x[static_cast<std::size_t>(e)] - sh);
        l += p;
        axpy<Arch>(dv, p, vp[static_cast<std::size_t>(e)], o.data());
      }
      const T inv = l > T(0) ? T(1) / l : T(0);
      T* orow = hd.out.row(i);
      for (index_t e = 0; e < dv; ++e) orow[e * hd.out.se] = o[static_cast<std::size_t>(e)] * inv;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// axial(rows, cols, row_major | col_major)
/// Anchored summaries over one line of keys (a row, or a column read with stride m): for anchors
/// a(c) (c < count), (e, k~) = attention of q_a(c) over the line's first kend(c) keys with values
/// (V, K), written to es/ks at summary index g(c). With `save`, the anchor's unnormalized state
/// over the line (the direct part of its own query when the line is its own row or column) is
/// also saved for the next pass.
template <class Arch, class T, class A, class E, class G>
void axial_summaries(const combiner_head<T>& hd, combiner_workspace<Arch, T>& w, index_t j0, index_t step,
                     index_t nkeys, index_t count, A&& anchor, E&& kend, G&& g, T* ks, T* es, bool save) {
  constexpr index_t Br = combiner_block<Arch, T>::Br;
  const index_t dk = hd.s.dk, dv = hd.s.dv;
  auto& blk = w.blk;
  for (index_t c0 = 0; c0 < count; c0 += Br) {
    const index_t n = std::min(Br, count - c0);
    hd.begin(
        blk, n, [&](index_t c) { return anchor(c0 + c); }, [&](index_t c) { return kend(c0 + c); });
    const value_source<T> vv{hd.v.ptr(hd.b, hd.hkv, j0, 0), hd.v.stride(2) * step, hd.v.stride(3), dv, 0};
    const value_source<T> vk{hd.k.ptr(hd.b, hd.hkv, j0, 0), hd.k.stride(2) * step, hd.k.stride(3), dk, dv};
    blk.add2(hd.k.ptr(hd.b, hd.hkv, j0, 0), hd.k.stride(2) * step, hd.k.stride(3), vv, vk, 2, nkeys);
    blk.run();
    blk.finish_all(
        n, 0, dv, [&](index_t c) { return es + g(c0 + c) * dv; }, 1);
    blk.finish_all(
        n, dv, dk, [&](index_t c) { return ks + g(c0 + c) * dk; }, 1);
    if (save) w.states.save_all(blk, n, [&](index_t c) { return anchor(c0 + c); });
  }
}

template <class Arch, class T>
void combiner_axial(const combiner_head<T>& hd, index_t nr, index_t m, bool col_major,
                    combiner_workspace<Arch, T>& w) {
  constexpr index_t Br = combiner_block<Arch, T>::Br;
  const index_t L = hd.L(), len = hd.len, dk = hd.s.dk, dv = hd.s.dv;
  const bool causal = hd.causal;
  auto& blk = w.blk;
  auto& st = w.states;
  st.resize(L, dv);
  w.ks.resize(static_cast<std::size_t>(L * dk));
  w.es.resize(static_cast<std::size_t>(L * dv));
  if (!col_major) {
    const index_t nvr = (len + m - 1) / m;  // rows holding keys
    // summaries (r', c): row r' seen from column c, bidirectional within the row. Bidirectional,
    // that is also the direct part (pass A) of query (r', c): its state is saved on the way.
    for (index_t r = 0; r < nvr; ++r) {
      const index_t nk = std::min(len, (r + 1) * m) - r * m;
      axial_summaries(
          hd, w, r * m, 1, nk, m, [&](index_t c) { return r * m + c; }, [&](index_t) { return nk; },
          [&](index_t c) { return r * m + c; }, w.ks.data(), w.es.data(), !causal);
    }
    // pass A: the own row (causal: columns <= c); bidirectional rows without keys see nothing yet
    for (index_t r = causal ? 0 : nvr; r < nr; ++r) {
      const index_t nk = std::clamp<index_t>(len - r * m, 0, m);
      for (index_t c0 = 0; c0 < m; c0 += Br) {
        const index_t n = std::min(Br, m - c0);
        hd.begin(
            blk, n, [&](index_t c) { return r * m + c0 + c; },
            [&](index_t c) { return causal ? causal_count(c0 + c, 0, nk) : nk; });
        hd.add_keys(blk, r * m, nk);
        blk.run();
        st.save_all(blk, n, [&](index_t c) { return r * m + c0 + c; });
      }
    }
    // pass B: down each column c, the summaries (r', c) of the other (causal: earlier) rows
    for (index_t c = 0; c < m; ++c)
      for (index_t r0 = 0; r0 < nr; r0 += Br) {
        const index_t n = std::min(Br, nr - r0);
        hd.begin(
            blk, n, [&](index_t x) { return (r0 + x) * m + c; },
            [&](index_t x) { return causal ? std::min(r0 + x, nvr) : nvr; });
        hd.add_summaries(blk, w.ks.data(), w.es.data(), c, nvr, m);
        if (!causal)
          for (index_t x = 0; x < n && r0 + x < nvr; ++x) blk.restrict_row(r0 + x, ~(std::uint64_t(1) << x));
        st.load_all(blk, n, [&](index_t x) { return (r0 + x) * m + c; });
        blk.run();
        hd.finish_all(blk, n, [&](index_t x) { return (r0 + x) * m + c; });
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
        hd, w, c, m, nk, nr, anchor, [&](index_t r) { return causal ? causal_count(r, 0, nk) : nk; }, anchor,
        w.ks.data(), w.es.data(), true);
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
      if (ne > 0) hd.add_summaries(blk, w.ks.data(), w.es.data(), (r - 1) * m, ne);
      hd.add_summaries(blk, w.ks.data(), w.es.data(), r * m, mv);
      for (index_t cc = 0; cc < mv; ++cc) {
        std::uint64_t bits = 0;  // columns x that may see this summary
        for (index_t x = 0; x < n; ++x)
          if (causal ? c0 + x < cc : c0 + x != cc) bits |= std::uint64_t(1) << x;
        if (ne > 0) blk.restrict_row(cc, bits);
        if (!causal) blk.restrict_row(cc, bits);
      }
      st.load_all(blk, n, [&](index_t x) { return r * m + c0 + x; });
      blk.run();
      hd.finish_all(blk, n, [&](index_t x) { return r * m + c0 + x; });
    }
}

// ---------------------------------------------------------------------------------------------
// learnable(cluster ids)
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
  auto gather = [&](const std::vector<index_t>& pos, index_t r0) {
    for (std::size_t t = 0; t < pos.size(); ++t) {
      const index_t r = r0 + static_cast<index_t>(t);
      copy_strided(hd.k.ptr(hd.b, hd.hkv, pos[t], 0), hd.k.stride(3), dk, w.pk.data() + r * dk);
      copy_strided(hd.v.ptr(hd.b, hd.hkv, pos[t], 0), hd.v.stride(3), dv, w.pv.data() + r * dv);
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
      gather(mc, 0);
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
  for (index_t a = 0; a < nvs; ++a) {
    const auto& pr = present[static_cast<std::size_t>(a)];
    const auto& si = sidx[static_cast<std::size_t>(a)];
    const index_t j0 = a * s, nk = std::min(len, j0 + s) - j0, npr = static_cast<index_t>(pr.size());
    // per-cluster pools of q and k (max or sum) and counts, then each column's pool from them
    std::vector<T> pq(static_cast<std::size_t>(npr * dk)), pkk(static_cast<std::size_t>(npr * dk));
    std::vector<index_t> cnt(static_cast<std::size_t>(npr), 0);
    for (index_t j = j0; j < j0 + nk; ++j) {
      const index_t x = std::lower_bound(pr.begin(), pr.end(), id[static_cast<std::size_t>(j)]) - pr.begin();
      const T* qr = hd.qrow(j);
      const T* kr = hd.k.ptr(hd.b, hd.hkv, j, 0);
      T* qd = pq.data() + x * dk;
      T* kd = pkk.data() + x * dk;
      const bool first = cnt[static_cast<std::size_t>(x)]++ == 0;
      for (index_t p = 0; p < dk; ++p) {
        const T qv = qr[p * hd.qs()], kv = kr[p * hd.k.stride(3)];
        qd[p] = first ? qv : (mx ? std::max(qd[p], qv) : qd[p] + qv);
        kd[p] = first ? kv : (mx ? std::max(kd[p], kv) : kd[p] + kv);
      }
    }
    const index_t ncol = npr + 1;
    // Column 1 + x pools every present cluster but x: the pool of the clusters before x combined
    // with the pool of those after it (prefix and suffix pools, O(npr dk) per segment).
    auto combine = [&](T* d, const T* a, bool first) {
      for (index_t p = 0; p < dk; ++p) d[p] = first ? a[p] : (mx ? std::max(d[p], a[p]) : d[p] + a[p]);
    };
    const std::size_t pw = static_cast<std::size_t>((npr + 1) * dk);
    std::vector<T> preq(pw), prek(pw), sufq(pw), sufk(pw);
    std::vector<index_t> pren(static_cast<std::size_t>(npr) + 1, 0),
        sufn(static_cast<std::size_t>(npr) + 1, 0);
    for (index_t x = 0; x < npr; ++x) {  // pre*[x + 1] = pool of clusters [0, x]
      const std::size_t o = static_cast<std::size_t>((x + 1) * dk), o0 = o - static_cast<std::size_t>(dk);
      std::copy(preq.begin() + static_cast<std::ptrdiff_t>(o0), preq.begin() + static_cast<std::ptrdiff_t>(o),
                preq.begin() + static_cast<std::ptrdiff_t>(o));
      std::copy(prek.begin() + static_cast<std::ptrdiff_t>(o0), prek.begin() + static_cast<std::ptrdiff_t>(o),
                prek.begin() + static_cast<std::ptrdiff_t>(o));
      combine(preq.data() + o, pq.data() + x * dk, x == 0);
      combine(prek.data() + o, pkk.data() + x * dk, x == 0);
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
      combine(sufq.data() + o, pq.data() + x * dk, x == npr - 1);
      combine(sufk.data() + o, pkk.data() + x * dk, x == npr - 1);
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
        combine(qd, sufq.data() + after * dk, nb == 0);
        combine(kd, sufk.data() + after * dk, nb == 0);
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
          [&](index_t) { return nk; });
      hd.add_keys(blk, j0, nk);
      for (index_t j = 0; j < nk; ++j) {
        const index_t x =
            std::lower_bound(pr.begin(), pr.end(), id[static_cast<std::size_t>(j0 + j)]) - pr.begin();
        const index_t col = 1 + x - c0;
        if (col >= 0 && col < n) blk.restrict_row(j, ~(std::uint64_t(1) << col));
      }
      blk.run();
      for (index_t c = 0; c < n; ++c) {
        const index_t g = si[static_cast<std::size_t>(c0 + c)];
        if (g >= 0) blk.finish(c, 0, dv, w.es.data() + g * dv, 1);
      }
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
  // pass B: per cluster, the earlier segments in order: summary (a, minus the cluster), then the
  // cluster's keys in a. A query in segment a' sees exactly the rows of the segments a < a'.
  std::vector<index_t> seg_end(static_cast<std::size_t>(nseg) + 1, 0);
  for (std::int32_t c = 0; c <= ncl; ++c) {
    const auto& qc = queries[static_cast<std::size_t>(c)];
    if (qc.empty()) continue;
    const index_t last = std::min(qc.back() / s, nvs);  // segments [0, last) are needed
    const std::vector<index_t> none;
    const auto& mc = c < ncl ? members[static_cast<std::size_t>(c)] : none;
    const index_t rows =
        last + static_cast<index_t>(mc.size());  // at most a summary per segment, and members
    w.pk.resize(static_cast<std::size_t>(std::max<index_t>(rows, 1) * dk));
    w.pv.resize(static_cast<std::size_t>(std::max<index_t>(rows, 1) * dv));
    index_t r = 0;
    std::size_t mi = 0;
    seg_end[0] = 0;
    for (index_t a = 0; a < last; ++a) {
      const auto& pr = present[static_cast<std::size_t>(a)];
      const auto it = std::lower_bound(pr.begin(), pr.end(), c);
      const index_t col = c < ncl && it != pr.end() && *it == c ? 1 + (it - pr.begin()) : 0;
      const index_t g = sidx[static_cast<std::size_t>(a)][static_cast<std::size_t>(col)];
      if (g >= 0) {
        std::copy(w.ks.data() + g * dk, w.ks.data() + (g + 1) * dk, w.pk.data() + r * dk);
        std::copy(w.es.data() + g * dv, w.es.data() + (g + 1) * dv, w.pv.data() + r * dv);
        ++r;
      }
      std::vector<index_t> in_a;
      for (; mi < mc.size() && mc[mi] < (a + 1) * s; ++mi) in_a.push_back(mc[mi]);
      gather(in_a, r);
      r += static_cast<index_t>(in_a.size());
      seg_end[static_cast<std::size_t>(a) + 1] = r;
    }
    for (std::size_t t0 = 0; t0 < qc.size(); t0 += static_cast<std::size_t>(Br)) {
      const index_t n = std::min<index_t>(Br, static_cast<index_t>(qc.size() - t0));
      auto qi = [&](index_t x) { return qc[t0 + static_cast<std::size_t>(x)]; };
      hd.begin(blk, n, qi,
               [&](index_t x) { return seg_end[static_cast<std::size_t>(std::min(qi(x) / s, last))]; });
      hd.add_summaries(blk, w.pk.data(), w.pv.data(), 0, r);
      st.load_all(blk, n, qi);
      blk.run();
      hd.finish_all(blk, n, qi);
    }
  }
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
