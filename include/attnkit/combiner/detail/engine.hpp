// attnkit: the Combiner engine. Every plan runs on two pieces:
//
// * combiner_block: one online softmax over up to Br columns (queries, or summary queries) and a
//   panel of augmented keys, given as runs (rows of K and V read in place through their strides, or
//   summary rows, or rows gathered into scratch). Column c sees the panel rows [0, kend[c]) (rows
//   past it are never read into its output, not even NaN), minus the rows whose mask bit c is
//   clear. The block products and the online softmax are the engine's (core/flash.hpp:
//   flash_step). A column's state (normalized output, m, l) can be saved,
//   and a later block over other keys finishes merged with it, so a query's augmented keys may
//   be consumed in several passes with differently grouped columns.
// * pooled_summary: the summary (k~, e) of one group whose summary query and key are pooled
//   from its members: e = sum_j softmax_j(scale q~ . k_j) v_j, one matrix-vector pass per group.
#pragma once

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../../core/attention_args.hpp"
#include "../../core/flash.hpp"
#include "../../core/math.hpp"
#include "../../core/transpose.hpp"
#include "../options.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// Rows of a matrix: element (i, e) at base[i * si + e * se].
template <class T>
struct row_view {
  T* base = nullptr;
  index_t si = 0, se = 1;
  T* row(index_t i) const { return base + i * si; }
};

/// One run of panel rows: keys at k + r * sk_j + p * sk_d, values from up to two sources.
template <class T>
struct panel_run {
  const T* k;
  index_t sk_j, sk_d;
  value_source<T> v[2];
  int nv;
  index_t n;
};

template <class Arch, class T>
class combiner_block {
 public:
  using B = simd::batch<T, Arch>;
  static constexpr index_t W = B::size;  ///< columns per register
  static constexpr index_t Br = flash_tiling<T, Arch>::NV * W;
  static constexpr index_t Bc = flash_tiling<T, Arch>::Bc;
  static_assert(Br <= 64, "combiner_block: column masks are 64-bit");
  static constexpr std::uint64_t all = Br == 64 ? ~std::uint64_t(0) : (std::uint64_t(1) << Br) - 1;

  /// dk: key dimension; dv: rows of O^T (the value dimensions of every source together).
  combiner_block(index_t dk, index_t dv) : cb_(dk, dv, Br, Bc), dk_(dk), dv_(dv) {}

  /// Starts ncols columns: column c's query is qrow(c)[p * qs] (scaled here by qscale), it sees the
  /// panel rows [0, kend(c)). The panel and the masks start empty; the value rows [0, vrows) of O^T
  /// (all: vrows < 0) start at zero, and only those may be written or finished.
  template <class Q, class E>
  void begin(index_t ncols, Q&& qrow, index_t qs, T qscale, E&& kend, index_t vrows = -1) {
    begin_columns<Arch>(cb_, dk_, ncols, qrow, qs, qscale, kend);
    vrows_ = vrows < 0 ? dv_ : std::min(vrows, dv_);
    cb_.fresh = true;  // O^T is written by the first step, or zeroed by run() (see there)
    clear_panel();
  }

  /// Starts the columns of `src` (the same queries, qscale and width) where src stands: its max,
  /// sum and value rows [0, vrows) of O^T (vrows at most src's), as if the panel rows src consumed
  /// were this block's and already run; column c sees this block's panel rows [0, kend(c)).
  /// A causal query's prefix of a line, split off a block that goes on over the whole line.
  template <class E>
  void resume(const combiner_block& src, E&& kend, index_t vrows) {
    assert(src.dk_ == dk_ && vrows <= src.vrows_ && vrows <= dv_);
    const index_t ld = src.cb_.ld;
    cb_.ncols = src.cb_.ncols;
    cb_.ld = ld;
    std::copy(src.cb_.qt.data(), src.cb_.qt.data() + dk_ * ld, cb_.qt.data());
    cb_.kmin = cb_.ncols > 0 ? std::numeric_limits<index_t>::max() : 0;
    cb_.kmax = 0;
    for (index_t c = 0; c < ld; ++c) {
      const index_t e = c < cb_.ncols ? kend(c) : 0;
      cb_.kend.data()[c] = static_cast<T>(e);
      if (c < cb_.ncols) cb_.kmin = std::min(cb_.kmin, e), cb_.kmax = std::max(cb_.kmax, e);
    }
    vrows_ = vrows;
    clear_panel();
    std::copy(src.cb_.m.data(), src.cb_.m.data() + ld, cb_.m.data());
    std::copy(src.cb_.l.data(), src.cb_.l.data() + ld, cb_.l.data());
    started_ = src.started_;
    cb_.fresh = src.cb_.fresh;
    if (started_) std::copy(src.cb_.ot.data(), src.cb_.ot.data() + vrows * ld, cb_.ot.data());
  }

  /// After resume(src, ...): the columns of register v start over from where src stands now (src
  /// has consumed more of its panel since), this block's panel not yet run.
  void take(const combiner_block& src, index_t v) {
    const index_t ld = cb_.ld, c0 = v * W;
    assert(src.cb_.ld == ld && c0 < ld && next_run_ == 0);
    if (!started_) {  // the registers not taken start from no key
      std::fill(cb_.ot.data(), cb_.ot.data() + vrows_ * ld, T(0));
      cb_.fresh = false;
      started_ = true;
    }
    if (!src.started_) return;  // src has seen no key either
    std::copy(src.cb_.m.data() + c0, src.cb_.m.data() + c0 + W, cb_.m.data() + c0);
    std::copy(src.cb_.l.data() + c0, src.cb_.l.data() + c0 + W, cb_.l.data() + c0);
    for (index_t e = 0; e < vrows_; ++e)
      std::copy(src.cb_.ot.data() + e * ld + c0, src.cb_.ot.data() + e * ld + c0 + W,
                cb_.ot.data() + e * ld + c0);
  }

  /// Appends n panel rows; returns the panel index of the first.
  index_t add(const T* k, index_t sk_j, index_t sk_d, value_source<T> v0, index_t n) {
    return add2(k, sk_j, sk_d, v0, v0, 1, n);
  }
  index_t add2(const T* k, index_t sk_j, index_t sk_d, value_source<T> v0, value_source<T> v1, int nv,
               index_t n) {
    const index_t first = rows_;
    assert(v0.row0 + v0.rows <= vrows_ && (nv < 2 || v1.row0 + v1.rows <= vrows_));
    if (n > 0) {
      runs_.push_back(panel_run<T>{k, sk_j, sk_d, {v0, v1}, nv, n});
      rows_ += n;
      if (!masks_.empty()) masks_.resize(static_cast<std::size_t>(rows_), all);
    }
    return first;
  }
  index_t rows() const { return rows_; }

  /// Hides panel row r from the columns whose bit is clear in `bits`.
  void restrict_row(index_t r, std::uint64_t bits) {
    if (masks_.empty()) masks_.assign(static_cast<std::size_t>(rows_), all);
    masks_[static_cast<std::size_t>(r)] &= bits;
  }

  /// Hides the panel rows [0, kstart(c)) from column c < ncols: the columns see the windows
  /// [kstart, kend), and a step leaves out the registers none of whose columns' windows meet
  /// its keys (as on a causal diagonal). Call after begin.
  template <class S>
  void start_at(S&& kstart) {
    kstart_.assign(static_cast<std::size_t>(Br), 0);
    std::fill(vstart_.begin(), vstart_.end(), index_t(0));
    for (index_t v = 0; v * W < cb_.ncols; ++v) {
      index_t mn = std::numeric_limits<index_t>::max();
      for (index_t c = v * W; c < (v + 1) * W && c < cb_.ncols; ++c) {
        kstart_[static_cast<std::size_t>(c)] = kstart(c);
        mn = std::min(mn, kstart_[static_cast<std::size_t>(c)]);
      }
      vstart_[static_cast<std::size_t>(v)] = mn;
    }
  }

  /// One step over the panel rows [j, j + nk), rows o.. of run r, on the column registers [v0, v1).
  void step(const panel_run<T>& r, index_t o, index_t j, index_t nk, std::uint64_t used, index_t v0,
            index_t v1) {
    value_source<T> vs[2] = {r.v[0], r.v[1]};
    for (int i = 0; i < r.nv; ++i) vs[i].ptr += o * vs[i].sj;
    bool hidden = false;
    if (!masks_.empty())
      for (index_t jj = 0; jj < nk && !hidden; ++jj) hidden = masks_[static_cast<std::size_t>(j + jj)] != all;
    // the columns of the registers in the step whose windows start inside it
    const index_t ca = v0 * W, cz = std::min(cb_.ncols, v1 * W);
    bool starts = false;
    if (!kstart_.empty())
      for (index_t c = ca; c < cz && !starts; ++c) starts = kstart_[static_cast<std::size_t>(c)] > j;
    auto hide = [&](T* st) {
      const T ninf = -std::numeric_limits<T>::infinity();
      if (!masks_.empty())
        for (index_t jj = 0; jj < nk; ++jj) {
          // the columns in use whose bit is clear, one at a time (usually one or none)
          for (std::uint64_t h = ~masks_[static_cast<std::size_t>(j + jj)] & used; h != 0; h &= h - 1)
            st[jj * cb_.ld + __builtin_ctzll(h)] = ninf;
        }
      if (starts)
        for (index_t c = ca; c < cz; ++c)
          for (index_t jj = 0, e = std::min(nk, kstart_[static_cast<std::size_t>(c)] - j); jj < e; ++jj)
            st[jj * cb_.ld + c] = ninf;
    };
    flash_step<Arch>(cb_, dk_, j, nk, r.k + o * r.sk_j, r.sk_j, r.sk_d, vs, r.nv, hidden || starts, hide, v0,
                     v1);
  }

  /// Consumes the panel rows added since the last run (all of them, the first time): a block may
  /// run in pieces, and resume() start another block where it stands between them.
  void run() {
    // On a causal diagonal the registers of the columns that see none of a key range are left
    // out of its step: vmax_[v] is the largest key_end of register v's columns.
    const index_t nvec = cb_.ld / W;
    index_t vlow = cb_.kmax;  // the smallest of them over the registers holding columns
    for (index_t v = 0; v < nvec; ++v) {
      index_t mx = 0;
      for (index_t c = v * W; c < (v + 1) * W && c < cb_.ncols; ++c)
        mx = std::max(mx, static_cast<index_t>(cb_.kend.data()[c]));
      vmax_[static_cast<std::size_t>(v)] = mx;
      if (v * W < cb_.ncols) vlow = std::min(vlow, mx);
    }
    // The first step writes O^T rather than accumulating onto it when its value sources cover
    // every row in use and it runs every register (no register stops seeing keys inside it);
    // otherwise (or with no step at all) O^T starts from zeros.
    const bool covered = started_ || (next_run_ < runs_.size() && cb_.kmax > 0 && [&] {
                           const panel_run<T>& r = runs_[next_run_];
                           if (!std::is_same_v<Arch, simd::scalar> &&
                               (vlow < std::min({Bc, r.n, cb_.kmax}) || !kstart_.empty()))
                             return false;
                           index_t top = 0;
                           for (int i = 0; i < r.nv; ++i) {
                             if (r.v[i].row0 != top) return false;
                             top += r.v[i].rows;
                           }
                           return top == vrows_;
                         }());
    if (!covered) {
      std::fill(cb_.ot.data(), cb_.ot.data() + vrows_ * cb_.ld, T(0));
      cb_.fresh = false;
    }
    started_ = true;
    const std::uint64_t used = cb_.ncols >= 64 ? ~std::uint64_t(0) : (std::uint64_t(1) << cb_.ncols) - 1;
    index_t base = done_;
    for (; next_run_ < runs_.size(); ++next_run_) {
      const panel_run<T>& r = runs_[next_run_];
      for (index_t o = 0; o < r.n && base + o < cb_.kmax; o += Bc) {
        const index_t j0 = base + o;
        const index_t nk = std::min({Bc, r.n - o, cb_.kmax - j0});
        // the keys [j0, j0 + nk) in steps that each keep the registers some column of which sees them
        for (index_t j = j0; j < j0 + nk;) {
          // the registers some column of which sees key j, and the first key at which one of them
          // stops, or another starts, seeing keys
          index_t v0 = nvec, v1 = 0, drop = j0 + nk;
          for (index_t v = 0; v < nvec; ++v) {
            const index_t e = vmax_[static_cast<std::size_t>(v)], a = vstart_[static_cast<std::size_t>(v)];
            if (a > j) {
              drop = std::min(drop, a);
            } else if (e > j) {
              v0 = std::min(v0, v);
              v1 = v + 1;
              drop = std::min(drop, e);
            }
          }
          if (std::is_same_v<Arch, simd::scalar> || cb_.fresh) {  // one column per scalar register
            v0 = 0, v1 = nvec, drop = j0 + nk;
          }
          if (v0 < v1) step(r, o + (j - j0), j, drop - j, used, v0, v1);
          j = drop;
        }
      }
      base += r.n;
    }
    done_ = rows_;
  }

  /// Writes the normalized output rows [e0, e0 + n) of the columns c < ncols to dst(c)[e * ds]
  /// (zeros for a column that saw nothing; core/flash.hpp: write_columns).
  template <class D>
  void finish_all(index_t ncols, index_t e0, index_t n, D&& dst, index_t ds) const {
    assert(e0 + n <= vrows_);
    write_columns<Arch>(cb_, e0, n, ncols, dst, ds);
  }
  /// A row of dv elements that finish_all may write the columns nobody reads to.
  T* sink() const {
    sink_.resize(static_cast<std::size_t>(dv_));
    return sink_.data();
  }
  /// Column c's running max and sum (of exp2 of the logits shifted by the max).
  T max_of(index_t c) const { return cb_.m.data()[c]; }
  T sum_of(index_t c) const { return cb_.l.data()[c]; }

  /// Finishes the columns c < ncols as if each had continued from a state saved earlier (the
  /// normalized output rows ea(c)[0, n) that finish_all wrote, and max_of / sum_of as ma(c), la(c)):
  /// the two online softmaxes merge into r = (wa ea(c) + wb O[:, c]) / (wa la + wb l), with
  /// wa = exp2(ma - M) la, wb = exp2(m - M), M the larger max; r is written to dst(c)[e * ds], or
  /// with `blend`, (dst(c)[e * ds] + r) / 2. A saved state with la == 0 (no key) is not read.
  template <class D, class EA, class MA, class LA>
  void finish_merged(index_t ncols, index_t n, D&& dst, index_t ds, EA&& ea, MA&& ma, LA&& la,
                     bool blend) const {
    const index_t ld = cb_.ld;
    inv_.resize(static_cast<std::size_t>(3 * Br));
    tmp_.resize(static_cast<std::size_t>(dv_ * Br));
    assert(n <= vrows_);
    T* cbv = inv_.data();  // the weight of this block's O, per column
    T* cav = cbv + Br;     // the weight of the saved rows
    T* den = cav + Br;
    for (index_t c = 0; c < ld; ++c) {  // the saved max and sum first (cav holds the max)
      cav[c] = c < ncols ? ma(c) : T(0);
      cbv[c] = c < ncols ? la(c) : T(0);
    }
    for (index_t c = 0; c < ld; c += B::size) {
      const B m0 = B::load(cav + c), l0 = B::load(cbv + c);
      const B mb = B::load(cb_.m.data() + c), lb = B::load(cb_.l.data() + c);
      // the merge of the two states (core/softmax.hpp); the saved one is normalized: weight * l0
      const B M = merged_max(m0, l0, mb, lb);
      const B wa = merge_weight(m0, l0, M) * l0;
      const B wb = merge_weight(mb, lb, M);
      wa.store(cav + c);
      wb.store(cbv + c);
      fma(wb, lb, wa).store(den + c);
    }
    for (index_t c = 0; c < ld; ++c) {
      const T inv = den[c] > T(0) ? T(1) / den[c] : T(0);
      cav[c] *= inv;
      cbv[c] *= inv;
    }
    T* tmp = tmp_.data();
    panel_to_rows<Arch, T>(ncols, n, cb_.ot.data(), ld, [&](index_t c) { return tmp + c * n; });
    constexpr index_t ahead = 4;  // rows prefetched ahead: dst and ea may be columns of matrices
    const B half = B::broadcast(T(0.5));
    for (index_t c = 0; c < ncols; ++c) {
      if (c + ahead < ncols) {
        prefetch_elements(dst(c + ahead), ds == 1 ? n : 1, true);
        if (cav[c + ahead] != T(0)) prefetch_elements(ea(c + ahead), n);
      }
      T* d = dst(c);
      const T* t = tmp + c * n;
      const T a = cav[c], b = cbv[c];
      const T* x = a != T(0) ? ea(c) : nullptr;
      if (ds == 1) {
        index_t e = 0;
        for (; e + W <= n; e += W) {
          B r = B::load(t + e) * B::broadcast(b);
          if (x) r = fma(B::broadcast(a), B::load(x + e), r);
          if (blend) r = (B::load(d + e) + r) * half;
          r.store(d + e);
        }
        for (; e < n; ++e) {
          const T r = x ? b * t[e] + a * x[e] : b * t[e];
          d[e] = blend ? T(0.5) * (d[e] + r) : r;
        }
      } else {
        for (index_t e = 0; e < n; ++e) {
          const T r = x ? b * t[e] + a * x[e] : b * t[e];
          d[e * ds] = blend ? T(0.5) * (d[e * ds] + r) : r;
        }
      }
    }
  }

 private:
  void clear_panel() {
    runs_.clear();
    masks_.clear();
    kstart_.clear();
    std::fill(vstart_.begin(), vstart_.end(), index_t(0));
    rows_ = done_ = 0;
    next_run_ = 0;
    started_ = false;
  }

  flash_columns<T> cb_;
  index_t dk_, dv_;
  std::vector<panel_run<T>> runs_;
  std::vector<std::uint64_t> masks_;
  index_t rows_ = 0;
  index_t done_ = 0;          // panel rows consumed by run()
  std::size_t next_run_ = 0;  // the first run not consumed
  bool started_ = false;      // O^T holds the block's state (run() has run, or resume() copied it)
  index_t vrows_ = 0;         // value rows of O^T in use (zeroed by begin)
  std::vector<index_t> vmax_ = std::vector<index_t>(static_cast<std::size_t>(Br / B::size) + 1);
  std::vector<index_t> kstart_;  // per column, when start_at was called (else empty)
  std::vector<index_t> vstart_ = std::vector<index_t>(static_cast<std::size_t>(Br / B::size) + 1);
  mutable std::vector<T> inv_, tmp_, sink_;  // finish_merged scratch, sink()
};

/// Saved online-softmax states of the queries of one (batch, head) between passes: normalized
/// output rows (finish_all), max and sum. A later pass over other keys runs a fresh block and
/// merges with them (combiner_block::finish_merged).
template <class T>
struct combiner_states {
  std::vector<T> e, m, l;
  index_t dv = 0;
  void resize(index_t L, index_t dv_) {
    dv = dv_;
    e.resize(static_cast<std::size_t>(L * dv));
    m.resize(static_cast<std::size_t>(L));
    l.resize(static_cast<std::size_t>(L));
  }
  /// The max and sum of the columns c < n, of the queries idx(c).
  template <class Arch, class I>
  void save_stats(const combiner_block<Arch, T>& blk, index_t n, I&& idx) {
    for (index_t c = 0; c < n; ++c) {
      m[static_cast<std::size_t>(idx(c))] = blk.max_of(c);
      l[static_cast<std::size_t>(idx(c))] = blk.sum_of(c);
    }
  }
  /// The whole states (output rows to e) of the columns c < n, of the queries idx(c).
  template <class Arch, class I>
  void save_all(const combiner_block<Arch, T>& blk, index_t n, I&& idx) {
    blk.finish_all(
        n, 0, dv, [&](index_t c) { return e.data() + idx(c) * dv; }, 1);
    save_stats(blk, n, idx);
  }
  /// Finishes the columns c < n, merged with the saved states idx(c) whose output rows are at
  /// rows + idx(c) * dv (e, or where save_stats' block wrote them), into dst(c)[p * ds].
  template <class Arch, class I, class D>
  void finish_merged(const combiner_block<Arch, T>& blk, index_t n, I&& idx, const T* rows, D&& dst,
                     index_t ds, bool blend) const {
    blk.finish_merged(
        n, dv, dst, ds, [&](index_t c) { return rows + idx(c) * dv; },
        [&](index_t c) { return m[static_cast<std::size_t>(idx(c))]; },
        [&](index_t c) { return l[static_cast<std::size_t>(idx(c))]; }, blend);
  }
};

/// Copies n elements src[p * stride] to dst.
template <class T>
inline void copy_strided(const T* src, index_t stride, index_t n, T* dst) {
  if (stride == 1)
    std::copy(src, src + n, dst);
  else
    for (index_t p = 0; p < n; ++p) dst[p] = src[p * stride];
}

/// Copies n rows of d elements (src + t * sj, elements at stride sd) to dst + t * d. For rows read
/// with a large stride (a column of a matrix) that defeats the hardware prefetchers, the rows a
/// few ahead are prefetched.
template <class T>
inline void gather_rows(const T* src, index_t sj, index_t sd, index_t d, index_t n, T* dst) {
  constexpr index_t ahead = 6;
  for (index_t t = 0; t < n; ++t) {
    if (sd == 1 && t + ahead < n) prefetch_elements(src + (t + ahead) * sj, d);
    copy_strided(src + t * sj, sd, d, dst + t * d);
  }
}

/// Pools the row a (element stride sa) into d[0, dk): the row itself when first, else the
/// elementwise max (mx) or the sum with d.
template <class T>
inline void pool_row(T* d, const T* a, index_t sa, index_t dk, bool first, bool mx) {
  if (first)
    copy_strided(a, sa, dk, d);
  else if (mx)
    for (index_t p = 0; p < dk; ++p) d[p] = std::max(d[p], a[p * sa]);
  else
    for (index_t p = 0; p < dk; ++p) d[p] += a[p * sa];
}

/// d[0, dk) = the pool of the rows row(t), t < n (element stride sa): their elementwise max (mx),
/// or their mean (the sum times 1 / n). The summary queries and keys of the Combiner plans.
template <class T, class R>
inline void pool_rows(T* d, index_t n, R&& row, index_t sa, index_t dk, bool mx) {
  for (index_t t = 0; t < n; ++t) pool_row(d, row(t), sa, dk, t == 0, mx);
  if (!mx) {
    const T r = T(1) / static_cast<T>(n);
    for (index_t p = 0; p < dk; ++p) d[p] *= r;
  }
}

/// Scratch of pooled_summary.
template <class T>
struct summary_scratch {
  std::vector<T> kc, vc, qp, logits;
};

/// One pooled group of (batch b, head h): members[0..n) (key positions). Writes the pooled key to
/// ks[0..dk) and the local expectation e = sum_j softmax_j(scale q~ . k_j) v_j to es[0..dv), where
/// q~ and k~ pool the members' queries (head h) and keys (its kv head) by max or mean.
template <class Arch, class T>
void pooled_summary(const tensor_view<const T, 4>& q, const tensor_view<const T, 4>& k,
                    const tensor_view<const T, 4>& v, index_t b, index_t h, index_t hkv,
                    const index_t* members, index_t n, combiner_pooling pooling, T scale, T* ks, T* es,
                    summary_scratch<T>& w) {
  const index_t dk = k.extent(3), dv = v.extent(3);
  w.kc.resize(static_cast<std::size_t>(n * dk));
  w.vc.resize(static_cast<std::size_t>(n * dv));
  w.qp.resize(static_cast<std::size_t>(dk));
  w.logits.resize(static_cast<std::size_t>(n));
  T* qp = w.qp.data();
  // the members' key and value rows: in place when contiguous, else copied
  const bool kin = k.stride(3) == 1, vin = v.stride(3) == 1;
  for (index_t t = 0; t < n; ++t) {
    const index_t j = members[t];
    if (!kin) copy_strided(k.ptr(b, hkv, j, 0), k.stride(3), dk, w.kc.data() + t * dk);
    if (!vin) copy_strided(v.ptr(b, hkv, j, 0), v.stride(3), dv, w.vc.data() + t * dv);
  }
  auto krow = [&](index_t t) -> const T* {
    return kin ? k.ptr(b, hkv, members[t], 0) : w.kc.data() + t * dk;
  };
  auto vrow = [&](index_t t) -> const T* {
    return vin ? v.ptr(b, hkv, members[t], 0) : w.vc.data() + t * dv;
  };
  // pooled key and query
  const bool mx = pooling == combiner_pooling::max;
  pool_rows(ks, n, krow, index_t(1), dk, mx);
  pool_rows(
      qp, n, [&](index_t t) { return q.ptr(b, h, members[t], 0); }, q.stride(3), dk, mx);
  // e = softmax-weighted values
  T m = -std::numeric_limits<T>::infinity();
  for (index_t t = 0; t < n; ++t) {
    w.logits[static_cast<std::size_t>(t)] = saturate_logit(scale * dot<Arch>(qp, krow(t), dk));
    m = std::max(m, w.logits[static_cast<std::size_t>(t)]);
  }
  std::fill(es, es + dv, T(0));
  T sum = 0;
  for (index_t t = 0; t < n; ++t) {
    const T p = exp_scalar(w.logits[static_cast<std::size_t>(t)] - m);
    sum += p;
    axpy<Arch>(dv, p, vrow(t), es);
  }
  const T inv = T(1) / sum;
  for (index_t e = 0; e < dv; ++e) es[e] *= inv;
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
