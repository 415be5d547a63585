// attnkit: the Combiner plan logsparse on the engine (engine.hpp; docs/design.md §4.3).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "workspace.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

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
  logsparse_scratch<T>& ws = w.logsparse;
  ws.size(C, dk, dv, nlv, LC, nl, ne_max);
  T* QR = ws.QR;
  T* KR = ws.KR;
  T* VR = ws.VR;
  T* QT = ws.QT;
  T* KT = ws.KT;
  T* KP = ws.KP;
  T* VP = ws.VP;
  T* OT = ws.OT;
  T* SQ = ws.SQ;
  T* SK = ws.SK;
  T* SE = ws.SE;
  T* OS = ws.OS;
  T* zero = ws.zero;
  T* X = ws.X;
  T* VM = ws.VM;
  T* xb = ws.xb;
  T* sh = ws.sh;
  T* pb = ws.pb;
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
      pool_rows(
          qg, n, [&](index_t t) { return qp[t]; }, index_t(1), dk, mx);
      pool_rows(
          kg, n, [&](index_t t) { return kp[t]; }, index_t(1), dk, mx);
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

}  // namespace detail
ATTNKIT_END_NAMESPACE
