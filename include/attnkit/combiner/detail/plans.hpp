// attnkit: the fast paths of the Combiner plans, on the engine of engine.hpp. Each runs one
// (batch, head): summaries first (each distinct group once), then one or two passes of column
// blocks over panels of direct keys and summaries. spec.hpp is the per-query statement of the
// same plans.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
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
  std::vector<T> ks, es, pk, pv;
  std::vector<index_t> idx;
  index_t dk, dv;
  combiner_workspace(index_t dk_, index_t dv_) : blk(dk_, dv_ + dk_), dk(dk_), dv(dv_) {}
};

/// Workspaces kept between calls: their buffers (up to L rows of saved states and summaries per
/// head) would otherwise be allocated, page-faulted and zeroed on every call. A call takes one
/// per thread (a matching one from the cache, else a new one) and gives them back at the end;
/// the cache keeps at most `keep` of them.
template <class Arch, class T>
class combiner_workspace_pool {
 public:
  using ws_t = combiner_workspace<Arch, T>;
  static constexpr std::size_t keep = 64;
  explicit combiner_workspace_pool(int n, index_t dk, index_t dv) {
    {
      std::lock_guard<std::mutex> lock(mutex());
      auto& c = cache();
      for (std::size_t i = c.size(); i-- > 0 && static_cast<int>(ws_.size()) < n;)
        if (c[i]->dk == dk && c[i]->dv == dv) {
          ws_.push_back(std::move(c[i]));
          c.erase(c.begin() + static_cast<std::ptrdiff_t>(i));
        }
    }
    while (static_cast<int>(ws_.size()) < n) ws_.push_back(std::make_unique<ws_t>(dk, dv));
  }
  ~combiner_workspace_pool() {
    std::lock_guard<std::mutex> lock(mutex());
    auto& c = cache();
    for (auto& w : ws_)
      if (c.size() < keep) c.push_back(std::move(w));
  }
  combiner_workspace_pool(const combiner_workspace_pool&) = delete;
  combiner_workspace_pool& operator=(const combiner_workspace_pool&) = delete;
  ws_t& operator[](int t) { return *ws_[static_cast<std::size_t>(t)]; }

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static std::vector<std::unique_ptr<ws_t>>& cache() {
    static std::vector<std::unique_ptr<ws_t>> c;
    return c;
  }
  std::vector<std::unique_ptr<ws_t>> ws_;
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
  /// Starts a block over the queries qi(c), c < n, with vrows value rows (values: dv).
  template <class Arch, class Qi, class E>
  void begin(combiner_block<Arch, T>& blk, index_t n, Qi&& qi, E&& kend, index_t vrows = -1) const {
    blk.begin(
        n, [&](index_t c) { return qrow(qi(c)); }, qs(), qscale, kend, vrows < 0 ? s.dv : vrows);
  }
  /// Writes the outputs of the columns c < n to the queries idx(c).
  template <class Arch, class I>
  void finish_all(const combiner_block<Arch, T>& blk, index_t n, I&& idx) const {
    blk.finish_all(
        n, 0, s.dv, [&](index_t c) { return out.row(idx(c)); }, out.se);
  }
  /// The same, merged with the saved states sidx(c) of `st` whose output rows are at `rows`
  /// (combiner_states::finish_merged); with `blend`, averaged with what the outputs hold.
  template <class Arch, class I, class J>
  void finish_merged(const combiner_block<Arch, T>& blk, index_t n, const combiner_states<T>& st, J&& sidx,
                     const T* rows, I&& idx, bool blend = false) const {
    st.finish_merged(
        blk, n, sidx, rows, [&](index_t c) { return out.row(idx(c)); }, out.se, blend);
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
/// Pools the summary query and key of a dyadic block from its two halves (q0, k0 and q1, k1,
/// with n0 and n1 members; n1 == 0: the block is its first half).
template <class T>
void pool_halves(const T* q0, const T* q1, const T* k0, const T* k1, index_t d, index_t n0, index_t n1,
                 bool mx, T* qg, T* kg) {
  if (n1 == 0) {
    std::copy(q0, q0 + d, qg);
    std::copy(k0, k0 + d, kg);
  } else if (mx) {
    for (index_t p = 0; p < d; ++p) {
      qg[p] = std::max(q0[p], q1[p]);
      kg[p] = std::max(k0[p], k1[p]);
    }
  } else {
    const index_t n = n0 + n1;
    const T a = static_cast<T>(n0) / static_cast<T>(n), bb = static_cast<T>(n1) / static_cast<T>(n);
    for (index_t p = 0; p < d; ++p) {
      qg[p] = a * q0[p] + bb * q1[p];
      kg[p] = a * k0[p] + bb * k1[p];
    }
  }
}

/// o[e] = alpha * o[e] + sum_{c < n} p[c] * row(c)[e] for e < d.
template <class Arch, class T, class R>
void accumulate_rows(index_t n, index_t d, const T* p, R&& row, T alpha, T* o) {
  using B = simd::batch<T, Arch>;
  constexpr int W = B::size;
  index_t e = 0;
  for (; e + W <= d; e += W) {
    B a = B::load(o + e) * B::broadcast(alpha);
    for (index_t c = 0; c < n; ++c) a = fma(B::broadcast(p[c]), B::load(row(c) + e), a);
    a.store(o + e);
  }
  for (; e < d; ++e) {
    T a = o[e] * alpha;
    for (index_t c = 0; c < n; ++c) a += p[c] * row(c)[e];
    o[e] = a;
  }
}

// GCC reports the never-taken remainder loops of rows_to_panel (C is whole tiles) inlined into
// combiner_logsparse as undefined behavior at absurd trip counts.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Waggressive-loop-optimizations"
#endif
/// logsparse, on chunks of C = 16 aligned positions. Query i's augmented keys are its own key and,
/// at each level l (blocks of 2^l), the summary of the sibling of its block: one softmax over at
/// most log2(L) + 2 entries. Levels below C have their blocks (and siblings) inside the chunk:
/// their summaries are computed per chunk from the chunk's rows. Blocks of levels from C up are
/// shared by whole chunks: their summaries are computed first, key chunk by key chunk, each block
/// as an online softmax (running max, sum and weighted values) over its chunks. Logits and
/// outputs are vectorized over the 16 positions of a chunk (transposed panels: queries, keys,
/// values of the entries that differ between positions, O^T).
template <class Arch, class T>
void combiner_logsparse(const combiner_head<T>& hd, combiner_workspace<Arch, T>& w) {
  using Bt = simd::batch<T, Arch>;
  using S1 = simd::batch<T, simd::scalar>;
  constexpr int W = Bt::size;
  constexpr index_t C = 16, LC = 4;  // chunk = 2^LC positions
  static_assert(C % W == 0, "combiner_logsparse: the chunk is whole batches");
  constexpr int NB = static_cast<int>(C / W);
  const index_t L = hd.L(), len = hd.len, dk = hd.s.dk, dv = hd.s.dv;
  const bool causal = hd.causal, mx = hd.pooling == combiner_pooling::max;
  const T qs2 = hd.qscale;
  const T ninf = -std::numeric_limits<T>::infinity();
  index_t nl = 0;  // levels: every 2^l <= L
  for (index_t c = 1; c <= std::max<index_t>(L, 1); c *= 2) ++nl;
  const index_t ls = std::min(LC, nl);  // per-chunk levels [1, ls); shared levels [LC, nl)
  // shared levels: summary boff[l] + t of block t (blocks that start below len)
  auto& boff = w.idx;
  boff.assign(static_cast<std::size_t>(nl) + 1, 0);
  index_t nbig = 0;
  for (index_t l = 0; l < nl; ++l) {
    boff[static_cast<std::size_t>(l)] = nbig;
    if (l >= LC) nbig += (len + (index_t(1) << l) - 1) >> l;
  }
  boff[static_cast<std::size_t>(nl)] = nbig;
  w.pk.resize(static_cast<std::size_t>(nbig * dk));  // pooled queries
  w.ks.resize(static_cast<std::size_t>(nbig * dk));
  w.es.resize(static_cast<std::size_t>(nbig * dv));
  // scratch
  const index_t nlv = 2 + LC;  // entries that differ between the positions of a chunk (at most)
  const index_t ne_max = nlv + std::max<index_t>(nl - LC, 0);
  const index_t dm = std::max(dk, dv);
  const std::size_t nscr =
      static_cast<std::size_t>(C * dk * 2 + C * dv + dk * C * (2 + nlv) + dv * C * (1 + nlv) +
                               LC * C * (2 * dk + dv) + nl * dv + dm + ne_max * C * 2 + C * 3);
  w.pv.resize(nscr);
  T* sp = w.pv.data();
  auto carve = [&](index_t n) {
    T* p = sp;
    sp += n;
    return p;
  };
  T* QR = carve(C * dk);  // rows copied when their elements are strided
  T* KR = carve(C * dk);
  T* VR = carve(C * dv);
  T* QT = carve(dk * C);
  T* KT = carve(dk * C);
  T* KP = carve(dk * C * nlv);  // key panels of the entries that differ between positions
  T* VP = carve(dv * C * nlv);  // and their value panels
  T* OT = carve(dv * C);
  T* SQ = carve(LC * C * dk);  // per-chunk levels: pooled queries, keys, local expectations
  T* SK = carve(LC * C * dk);
  T* SE = carve(LC * C * dv);
  T* OS = carve(nl * dv);  // running weighted values of the shared levels
  T* zero = carve(dm);
  T* X = carve(ne_max * C);  // logits, then probabilities, per entry
  T* VM = carve(ne_max * C);
  T* xb = carve(C);
  T* sh = carve(C);
  T* pb = carve(C);
  std::fill(zero, zero + dm, T(0));
  std::vector<T> ms(static_cast<std::size_t>(nl)), ss(static_cast<std::size_t>(nl));
  std::vector<const T*> brow_k(static_cast<std::size_t>(ne_max)), brow_v(static_cast<std::size_t>(ne_max));
  const T* qp[C];
  const T* kp[C];
  const T* vp[C];
  const index_t qse = hd.qs(), kse = hd.k.stride(3), vse = hd.v.stride(3);
  // rows of a chunk: in place when contiguous, else copied; zero rows past n
  auto rows = [&](const T** dst, index_t n, index_t d, auto&& src, index_t se, T* buf) {
    for (index_t c = 0; c < C; ++c) {
      if (c >= n) {
        dst[c] = zero;
      } else if (se == 1) {
        dst[c] = src(c);
      } else {
        copy_strided(src(c), se, d, buf + c * d);
        dst[c] = buf + c * d;
      }
    }
  };
  auto qrow = [&](index_t i) { return hd.qrow(i); };
  auto krow = [&](index_t j) { return hd.k.ptr(hd.b, hd.hkv, j, 0); };
  auto vrow = [&](index_t j) { return hd.v.ptr(hd.b, hd.hkv, j, 0); };
  auto lane_lt = [&](int b, index_t n) {
    return Bt::iota() + Bt::broadcast(static_cast<T>(b * W)) < Bt::broadcast(static_cast<T>(n));
  };
  // x[0..C) = qs2 * (panel A . panel Bp) lane by lane, saturated; Bp == nullptr: the row brow broadcast
  auto logits = [&](const T* A, const T* Bp, const T* brow, T* x) {
    Bt a[NB];
    for (int b = 0; b < NB; ++b) a[b] = Bt::zero();
    if (Bp) {
      for (index_t p = 0; p < dk; ++p)
        for (int b = 0; b < NB; ++b)
          a[b] = fma(Bt::load(A + p * C + b * W), Bt::load(Bp + p * C + b * W), a[b]);
    } else {
      for (index_t p = 0; p < dk; ++p) {
        const Bt bq = Bt::broadcast(brow[p]);
        for (int b = 0; b < NB; ++b) a[b] = fma(Bt::load(A + p * C + b * W), bq, a[b]);
      }
    }
    const Bt s = Bt::broadcast(qs2);
    for (int b = 0; b < NB; ++b) saturate_logits(a[b] * s).store(x + b * W);
  };
  auto panel = [&](T* dst, index_t d, auto&& row) { rows_to_panel<Arch, T>(C, d, row, dst, C); };

  // 1. pooled queries and keys of the shared levels: chunks, then each block from its halves
  if (nl > LC) {
    for (index_t u = 0; u * C < len; ++u) {
      const index_t j0 = u * C, n = std::min(C, len - j0), g = boff[static_cast<std::size_t>(LC)] + u;
      T* qg = w.pk.data() + g * dk;
      T* kg = w.ks.data() + g * dk;
      rows(
          qp, n, dk, [&](index_t c) { return qrow(j0 + c); }, qse, QR);
      rows(
          kp, n, dk, [&](index_t c) { return krow(j0 + c); }, kse, KR);
      std::copy(qp[0], qp[0] + dk, qg);
      std::copy(kp[0], kp[0] + dk, kg);
      for (index_t t = 1; t < n; ++t) {
        const T* qr = qp[t];
        const T* kr = kp[t];
        if (mx) {
          for (index_t p = 0; p < dk; ++p) {
            qg[p] = std::max(qg[p], qr[p]);
            kg[p] = std::max(kg[p], kr[p]);
          }
        } else {
          for (index_t p = 0; p < dk; ++p) {
            qg[p] += qr[p];
            kg[p] += kr[p];
          }
        }
      }
      if (!mx) {
        const T r = T(1) / static_cast<T>(n);
        for (index_t p = 0; p < dk; ++p) {
          qg[p] *= r;
          kg[p] *= r;
        }
      }
    }
    for (index_t l = LC + 1; l < nl; ++l) {
      const index_t c = index_t(1) << l, half = c / 2;
      for (index_t t = 0; t * c < len; ++t) {
        const index_t n = std::min(len, t * c + c) - t * c, n0 = std::min(half, n);
        const index_t g = boff[static_cast<std::size_t>(l)] + t,
                      h0 = boff[static_cast<std::size_t>(l) - 1] + 2 * t;
        const T* q0 = w.pk.data() + h0 * dk;
        const T* k0 = w.ks.data() + h0 * dk;
        pool_halves(q0, q0 + dk, k0, k0 + dk, dk, n0, n - n0, mx, w.pk.data() + g * dk, w.ks.data() + g * dk);
      }
    }
  }
  // 2. local expectations of the shared levels, key chunk by key chunk (causal: even blocks only)
  if (nl > LC) {
    for (index_t j0 = 0; j0 < len; j0 += C) {
      const index_t n = std::min(C, len - j0);
      rows(
          kp, n, dk, [&](index_t c) { return krow(j0 + c); }, kse, KR);
      rows(
          vp, n, dv, [&](index_t c) { return vrow(j0 + c); }, vse, VR);
      panel(KT, dk, [&](index_t c) { return kp[c]; });
      for (index_t l = LC; l < nl; ++l) {
        const index_t t = j0 >> l;
        if (causal && t % 2 == 1) continue;
        const index_t start = t << l, end = std::min(len, start + (index_t(1) << l));
        T* O = OS + l * dv;
        T& m = ms[static_cast<std::size_t>(l)];
        T& s = ss[static_cast<std::size_t>(l)];
        if (j0 == start) {
          m = ninf;
          s = T(0);
          std::fill(O, O + dv, T(0));
        }
        logits(KT, nullptr, w.pk.data() + (boff[static_cast<std::size_t>(l)] + t) * dk, xb);
        Bt mv = Bt::broadcast(ninf);
        for (int b = 0; b < NB; ++b) {
          const Bt x = select(lane_lt(b, n), Bt::load(xb + b * W), Bt::broadcast(ninf));
          x.store(xb + b * W);
          mv = max(mv, x);
        }
        const T mnew = std::max(m, reduce_max(mv));
        const T alpha = exp2_nonpositive(S1{m - mnew}).v;
        Bt sum = Bt::zero();
        for (int b = 0; b < NB; ++b) {
          const Bt p = exp2_nonpositive(Bt::load(xb + b * W) - Bt::broadcast(mnew));
          p.store(pb + b * W);
          sum = sum + p;
        }
        s = s * alpha + reduce_add(sum);
        m = mnew;
        accumulate_rows<Arch>(
            n, dv, pb, [&](index_t c) { return vp[c]; }, alpha, O);
        if (j0 + C >= end) {
          T* es = w.es.data() + (boff[static_cast<std::size_t>(l)] + t) * dv;
          const T r = T(1) / s;
          for (index_t e = 0; e < dv; ++e) es[e] = O[e] * r;
        }
      }
    }
  }
  // 3. the queries, chunk by chunk
  auto sibling = [&](index_t f, index_t l, index_t lim) -> index_t {  // -1: none
    if (f % 2 == 1) return ((f - 1) << l) < lim ? f - 1 : -1;
    return !causal && ((f + 1) << l) < lim ? f + 1 : -1;
  };
  for (index_t i0 = 0; i0 < L; i0 += C) {
    const index_t nq = std::min(C, L - i0), nk = std::clamp<index_t>(len - i0, 0, C);
    rows(
        qp, nq, dk, [&](index_t c) { return qrow(i0 + c); }, qse, QR);
    rows(
        kp, nk, dk, [&](index_t c) { return krow(i0 + c); }, kse, KR);
    rows(
        vp, nk, dv, [&](index_t c) { return vrow(i0 + c); }, vse, VR);
    panel(QT, dk, [&](index_t c) { return qp[c]; });
    panel(KT, dk, [&](index_t c) { return kp[c]; });
    // per-chunk levels: pooled rows from the halves (level 0: the rows), local expectations
    for (index_t l = 1; l < ls; ++l) {
      const index_t c = index_t(1) << l, half = c / 2;
      T* sq = SQ + l * C * dk;
      T* sk = SK + l * C * dk;
      T* se = SE + l * C * dv;
      for (index_t bl = 0; bl * c < nk; ++bl) {
        const index_t nm = std::min(c, nk - bl * c), n0 = std::min(half, nm);
        const T *q0, *q1, *k0, *k1;
        if (l == 1) {
          q0 = qp[2 * bl], q1 = qp[2 * bl + 1], k0 = kp[2 * bl], k1 = kp[2 * bl + 1];
        } else {
          q0 = SQ + ((l - 1) * C + 2 * bl) * dk, k0 = SK + ((l - 1) * C + 2 * bl) * dk;
          q1 = q0 + dk, k1 = k0 + dk;
        }
        pool_halves(q0, q1, k0, k1, dk, n0, nm - n0, mx, sq + bl * dk, sk + bl * dk);
      }
      if (nk == 0) continue;
      panel(KP, dk, [&](index_t x) { return x < nk ? sq + (x >> l) * dk : zero; });
      logits(KP, KT, nullptr, xb);
      for (index_t bl = 0; bl * c < C; ++bl) {
        const index_t a0 = bl * c, a1 = std::min(a0 + c, nk);
        T m = ninf;
        for (index_t x = a0; x < a1; ++x) m = std::max(m, xb[x]);
        for (index_t x = a0; x < a0 + c; ++x) {
          sh[x] = a0 < nk ? m : T(0);
          if (x >= nk) xb[x] = ninf;
        }
      }
      for (int b = 0; b < NB; ++b)
        exp2_nonpositive(Bt::load(xb + b * W) - Bt::load(sh + b * W)).store(pb + b * W);
      for (index_t bl = 0; bl * c < nk; ++bl) {
        if (causal && bl % 2 == 1) continue;
        const index_t a0 = bl * c, a1 = std::min(a0 + c, nk);
        T s = 0;
        for (index_t x = a0; x < a1; ++x) s += pb[x];
        T* e = se + bl * dv;
        accumulate_rows<Arch>(
            a1 - a0, dv, pb + a0, [&](index_t x) { return vp[a0 + x]; }, T(0), e);
        const T r = T(1) / s;
        for (index_t q = 0; q < dv; ++q) e[q] *= r;
      }
    }
    // the entries that differ between positions (own key, level 0, per-chunk levels): key and
    // value panels, zero rows where hidden; then the shared levels' summaries, one row each
    index_t nv = 0, ne = 0;
    auto lane_entry = [&](auto&& krow_of, auto&& vrow_of) {  // row pointers, nullptr: hidden
      T* vm = VM + nv * C;
      bool any = false;
      for (index_t c = 0; c < C; ++c) {
        vm[c] = c < nq && vrow_of(c) ? T(1) : T(0);
        any = any || vm[c] > T(0);
      }
      if (!any) return;
      T* kpn = KP + nv * dk * C;
      T* vpn = VP + nv * dv * C;
      panel(kpn, dk, [&](index_t c) { return vm[c] > T(0) ? krow_of(c) : zero; });
      panel(vpn, dv, [&](index_t c) { return vm[c] > T(0) ? vrow_of(c) : zero; });
      logits(QT, kpn, nullptr, X + nv * C);
      ++nv;
    };
    lane_entry([&](index_t c) { return kp[c]; },
               [&](index_t c) -> const T* { return c < nk ? vp[c] : nullptr; });
    if (nl > 1)
      lane_entry([&](index_t c) { return kp[c ^ 1]; },
                 [&](index_t c) -> const T* { return sibling(c, 0, nk) >= 0 ? vp[c ^ 1] : nullptr; });
    for (index_t l = 1; l < ls; ++l) {
      const T* sk = SK + l * C * dk;
      const T* se = SE + l * C * dv;
      lane_entry([&](index_t c) { return sk + sibling(c >> l, l, nk) * dk; },
                 [&](index_t c) -> const T* {
                   const index_t sb = sibling(c >> l, l, nk);
                   return sb >= 0 ? se + sb * dv : nullptr;
                 });
    }
    for (index_t v = 0; v < nv; ++v)
      for (int b = 0; b < NB; ++b) {
        T* x = X + v * C + b * W;
        select(Bt::zero() < Bt::load(VM + v * C + b * W), Bt::load(x), Bt::broadcast(ninf)).store(x);
      }
    ne = nv;
    for (index_t l = LC; l < nl; ++l) {
      const index_t sb = sibling(i0 >> l, l, len);
      if (sb < 0) continue;
      const index_t g = boff[static_cast<std::size_t>(l)] + sb;
      brow_k[static_cast<std::size_t>(ne)] = w.ks.data() + g * dk;
      brow_v[static_cast<std::size_t>(ne)] = w.es.data() + g * dv;
      logits(QT, nullptr, w.ks.data() + g * dk, X + ne * C);
      ++ne;
    }
    // one softmax over the entries; O^T = sum_entries P V^T
    for (int b = 0; b < NB; ++b) {
      Bt m = Bt::broadcast(ninf);
      for (index_t e = 0; e < ne; ++e) m = max(m, Bt::load(X + e * C + b * W));
      const Bt shv = online_softmax_batch<Bt>::shift(m);
      Bt z = Bt::zero();
      for (index_t e = 0; e < ne; ++e) {
        const Bt p = exp2_nonpositive(Bt::load(X + e * C + b * W) - shv);
        p.store(X + e * C + b * W);
        z = z + p;
      }
      z.store(sh + b * W);
    }
    for (index_t c = 0; c < C; ++c) sh[c] = sh[c] > T(0) ? T(1) / sh[c] : T(0);  // 1 / Z, 0: nothing seen
    for (index_t e = 0; e < dv; ++e) {
      Bt a[NB];
      for (int b = 0; b < NB; ++b) a[b] = Bt::zero();
      for (index_t v = 0; v < nv; ++v)
        for (int b = 0; b < NB; ++b)
          a[b] = fma(Bt::load(X + v * C + b * W), Bt::load(VP + (v * dv + e) * C + b * W), a[b]);
      for (index_t v = nv; v < ne; ++v) {
        const Bt bv = Bt::broadcast(brow_v[static_cast<std::size_t>(v)][e]);
        for (int b = 0; b < NB; ++b) a[b] = fma(Bt::load(X + v * C + b * W), bv, a[b]);
      }
      for (int b = 0; b < NB; ++b) (a[b] * Bt::load(sh + b * W)).store(OT + e * C + b * W);
    }
    if (hd.out.se == 1) {
      panel_to_rows<Arch, T>(nq, dv, OT, C, [&](index_t c) { return hd.out.row(i0 + c); });
    } else {
      for (index_t c = 0; c < nq; ++c) {
        T* orow = hd.out.row(i0 + c);
        for (index_t e = 0; e < dv; ++e) orow[e * hd.out.se] = OT[e * C + c];
      }
    }
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// ---------------------------------------------------------------------------------------------
// axial(rows, cols, row_major | col_major)
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
  // keys and values of the positions pos[0, n) to the panel rows r0, r0 + 1, ...
  auto gather = [&](const index_t* pos, index_t n, index_t r0) {
    for (index_t t = 0; t < n; ++t) {
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
  auto combine = [&](T* d, const T* a, index_t sa, bool first) {
    if (first)
      copy_strided(a, sa, dk, d);
    else if (sa != 1)
      for (index_t p = 0; p < dk; ++p) d[p] = mx ? std::max(d[p], a[p * sa]) : d[p] + a[p * sa];
    else if (mx)
      for (index_t p = 0; p < dk; ++p) d[p] = std::max(d[p], a[p]);
    else
      for (index_t p = 0; p < dk; ++p) d[p] += a[p];
  };
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
      const std::size_t m0 = mi;  // the cluster's members in segment a: mc[m0, mi)
      while (mi < mc.size() && mc[mi] < (a + 1) * s) ++mi;
      gather(mc.data() + m0, static_cast<index_t>(mi - m0), r);
      r += static_cast<index_t>(mi - m0);
      seg_end[static_cast<std::size_t>(a) + 1] = r;
    }
    for (std::size_t t0 = 0; t0 < qc.size(); t0 += static_cast<std::size_t>(Br)) {
      const index_t n = std::min<index_t>(Br, static_cast<index_t>(qc.size() - t0));
      auto qi = [&](index_t x) { return qc[t0 + static_cast<std::size_t>(x)]; };
      hd.begin(blk, n, qi,
               [&](index_t x) { return seg_end[static_cast<std::size_t>(std::min(qi(x) / s, last))]; });
      hd.add_summaries(blk, w.pk.data(), w.pv.data(), 0, r);
      blk.run();
      hd.finish_merged(blk, n, st, qi, st.e.data(), qi);
    }
  }
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
