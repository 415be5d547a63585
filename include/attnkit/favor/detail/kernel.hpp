// attnkit: the FAVOR+ kernels: feature maps, the (S, z) state and its chunk-wise products.
//
// All work is block products on the register-blocked micro-kernel of core/gemm.hpp. With F the
// prepared feature matrix [mf, dk] (mf = m, or 2m for hyperbolic features; scales folded in):
//   keys    U   [n, mf]  = K_blk [n, dk] * F^T      -> Phi_K = phi(U) (rows: tokens)
//   state   S^T [dv, mf] += V_blk^T [dv, n] * Phi_K, z += colsum(Phi_K)   (z is row dv of the state)
//   queries U^T [mf, n]  = F * Q_blk^T [dk, n]      -> Phi_Q^T (columns: tokens)
//   output  O   [dv+1, n] = [S^T; z^T] * Phi_Q^T;  out_i = O[0..dv)(i) / O[dv](i)
// Causal attention runs chunk by chunk: the state before the chunk (inter) plus the masked
// intra-chunk block A^T = Phi_K * Phi_Q^T (keys j <= query i), O += [V^T; 1] * A^T.
//
// Stabilizers (log2 units; every constant cancels between numerator and denominator):
// a query's features are exp(u_f - max_f u_f); a key's are exp(u_f - |x'|^2/2 - c) with c the
// running maximum of that exponent over the keys consumed so far (when it grows, the state is
// rescaled), so the largest feature is exactly 1 and nothing overflows.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../../core/gemm.hpp"
#include "../../core/math.hpp"
#include "../../core/tensor.hpp"
#include "../features.hpp"
#include "../options.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// Block shape of the FAVOR+ products: Br = NV * W columns per panel; a chunk is a multiple of Br.
template <class T, class Arch>
struct favor_tiling {
  using B = simd::batch<T, Arch>;
  static constexpr int NV = gemm_tiling<T, Arch>::NV;
  static constexpr int MR = gemm_tiling<T, Arch>::MR;
  static constexpr index_t Br = NV * B::size;
  /// Tokens per chunk: the smallest multiple of Br >= 64 (a causal chunk; a query block).
  static constexpr index_t chunk = ((64 + Br - 1) / Br) * Br;
  static constexpr index_t round_up(index_t n) { return (n + Br - 1) / Br * Br; }
};

/// The feature matrix prepared for one kernel and ISA (scales and log2(e) folded in).
template <class T>
struct favor_weights {
  favor_kernel kernel = favor_kernel::softmax_positive;
  index_t dk = 0, mf = 0, mpad = 0;
  tensor<T, 1> f;       ///< [mf, dk] row-major: the A operand of the query features
  tensor<T, 1> ft;      ///< [dk, mpad]: the B operand of the key features (padding columns zero)
  T norm_scale = T(0);  ///< exponent -= norm_scale * |x|^2 (softmax kernels)
  T eps = T(0);         ///< relu: phi = relu(u) + eps

  bool softmax() const { return kernel != favor_kernel::relu; }
};

template <class Arch, class T>
favor_weights<T> prepare_weights(const random_features<T>& rf, favor_kernel kernel, double scale,
                                 double eps) {
  using tl = favor_tiling<T, Arch>;
  favor_weights<T> w;
  const index_t m = rf.features(), dk = rf.dim();
  w.kernel = kernel;
  w.dk = dk;
  w.mf = kernel == favor_kernel::softmax_hyperbolic ? 2 * m : m;
  w.mpad = tl::round_up(w.mf);
  w.f = tensor<T, 1>({w.mf * dk});
  w.ft = tensor<T, 1>({dk * w.mpad});
  const double log2e = 1.4426950408889634074;
  double s =
      kernel == favor_kernel::relu ? 1.0 / std::sqrt(static_cast<double>(m)) : std::sqrt(scale) * log2e;
  w.norm_scale = static_cast<T>(0.5 * scale * log2e);
  w.eps = static_cast<T>(eps);
  const auto wm = rf.matrix();
  for (index_t r = 0; r < w.mf; ++r) {
    const double sign = r < m ? 1.0 : -1.0;
    for (index_t p = 0; p < dk; ++p) {
      const T x = static_cast<T>(sign * s * static_cast<double>(wm(r % m, p)));
      w.f.data()[r * dk + p] = x;
      w.ft.data()[p * w.mpad + r] = x;
    }
  }
  return w;
}

/// The FAVOR+ state of one (batch, kv head): rows 0..dv-1 hold S^T = sum phi(k) v^T transposed,
/// row dv holds z = sum phi(k); c is the key stabilizer (log2 units) the sums are scaled by.
template <class T>
struct favor_state {
  tensor<T, 1> s;  ///< [(dv + 1) * mpad]
  T c = -std::numeric_limits<T>::infinity();
  index_t dv = 0, mpad = 0;
  favor_state() = default;
  favor_state(index_t dv_, index_t mpad_) : s({(dv_ + 1) * mpad_}), dv(dv_), mpad(mpad_) {}
  void reset() {
    std::fill(s.data(), s.data() + s.size(), T(0));
    c = -std::numeric_limits<T>::infinity();
  }
  /// Multiplies the sums by 2^(c - c_new) and makes c_new the stabilizer.
  void rebase(T c_new) {
    if (c != -std::numeric_limits<T>::infinity()) {
      const T a = std::exp2(c - c_new);
      for (index_t i = 0; i < s.size(); ++i) s.data()[i] *= a;
    }
    c = c_new;
  }
  /// this += o (both sums brought to the larger stabilizer).
  void merge(const favor_state& o) {
    if (o.c == -std::numeric_limits<T>::infinity()) return;
    if (o.c > c) rebase(o.c);
    const T a = std::exp2(o.c - c);
    for (index_t i = 0; i < s.size(); ++i) s.data()[i] += a * o.s.data()[i];
  }
};

/// Scratch of one thread: features of a chunk, packed queries, products.
template <class T>
struct favor_workspace {
  tensor<T, 1> phik, qt, phiq, qmax, o, at, crow, cq, climit;
  favor_workspace(index_t chunk, index_t dk, index_t dv, index_t mf, index_t mpad)
      : phik({chunk * mpad}),
        qt({dk * chunk}),
        phiq({mf * chunk}),
        qmax({chunk}),
        o({(dv + 1) * chunk}),
        at({chunk * chunk}),
        crow({chunk}),
        cq({chunk}),
        climit({chunk}) {}
};

/// sum_p x[p*stride]^2 over dk elements.
template <class Arch, class T>
inline T squared_norm(const T* x, index_t stride, index_t dk) {
  if (stride == 1) return dot<Arch>(x, x, dk);
  T s = T(0);
  for (index_t p = 0; p < dk; ++p) s += x[p * stride] * x[p * stride];
  return s;
}

/// The key features of the n keys at k (row stride sk_j, element stride sk_d) into ws.phik
/// [n, mpad]. Softmax kernels: row r is exp2(e_r - crow[r]) with e_r the exponents of key r and
/// crow[r] = max(st.c, max_{r' <= r} max e_r') (prefix stabilizers: a key's features never depend
/// on later keys), or with `common` one stabilizer for the chunk (then st is rebased to it).
template <class Arch, class T>
void favor_key_features(const favor_weights<T>& w, const T* k, index_t sk_j, index_t sk_d, index_t n,
                        favor_state<T>& st, favor_workspace<T>& ws, bool common) {
  using B = simd::batch<T, Arch>;
  constexpr int W = B::size;
  const index_t mp = w.mpad;
  T* phi = ws.phik.data();
  T* crow = ws.crow.data();
  panel_product<Arch, false>(n, w.dk, k, sk_j, sk_d, w.ft.data(), mp, phi, mp, mp);
  if (!w.softmax()) {
    // No stabilizer: c = 0 marks the state as holding keys (merge skips empty states).
    st.c = std::max(st.c, T(0));
    const B zero = B::zero(), eps = B::broadcast(w.eps);
    for (index_t r = 0; r < n; ++r) {
      T* row = phi + r * mp;
      for (index_t f = 0; f < mp; f += W) (max(B::load(row + f), zero) + eps).store(row + f);
      std::fill(row + w.mf, row + mp, T(0));
      crow[r] = st.c;
    }
    return;
  }
  // Exponents u - norm_scale |k|^2 and their running maximum over the real features.
  T c = st.c;
  for (index_t r = 0; r < n; ++r) {
    const T nrm_s = w.norm_scale * squared_norm<Arch>(k + r * sk_j, sk_d, w.dk);
    const B nrm = B::broadcast(nrm_s);
    T* row = phi + r * mp;
    B mx = B::broadcast(-std::numeric_limits<T>::infinity());
    index_t f = 0;
    for (; f + W <= w.mf; f += W) {
      const B e = B::load(row + f) - nrm;
      e.store(row + f);
      mx = max(mx, e);
    }
    T m = reduce_max(mx);
    for (; f < w.mf; ++f) {
      row[f] -= nrm_s;
      m = std::max(m, row[f]);
    }
    c = std::max(c, m);
    crow[r] = c;
  }
  if (common) {
    if (c > st.c) st.rebase(c);
    std::fill(crow, crow + n, st.c);
  }
  for (index_t r = 0; r < n; ++r) {
    T* row = phi + r * mp;
    const B cr = B::broadcast(crow[r]);
    for (index_t f = 0; f < mp; f += W) exp2_nonpositive(B::load(row + f) - cr).store(row + f);
    std::fill(row + w.mf, row + mp, T(0));
  }
}

/// st += the n keys' features (ws.phik, brought to one stabilizer first) and values v (row
/// stride sv_j, element stride sv_d).
template <class Arch, class T>
void favor_accumulate(const favor_weights<T>& w, const T* v, index_t sv_j, index_t sv_d, index_t n,
                      favor_state<T>& st, favor_workspace<T>& ws) {
  using B = simd::batch<T, Arch>;
  constexpr int W = B::size;
  const index_t mp = w.mpad;
  T* phi = ws.phik.data();
  const T* crow = ws.crow.data();
  if (crow[n - 1] > st.c) st.rebase(crow[n - 1]);
  for (index_t r = 0; r < n; ++r)
    if (crow[r] != st.c) {
      const B a = B::broadcast(std::exp2(crow[r] - st.c));
      for (index_t f = 0; f < mp; f += W) (B::load(phi + r * mp + f) * a).store(phi + r * mp + f);
    }
  if (st.dv > 0) panel_product<Arch, true>(st.dv, n, v, sv_d, sv_j, phi, mp, st.s.data(), mp, mp);
  T* z = st.s.data() + st.dv * mp;
  for (index_t f = 0; f < mp; f += W) {
    B acc = B::load(z + f);
    for (index_t r = 0; r < n; ++r) acc = acc + B::load(phi + r * mp + f);
    acc.store(z + f);
  }
}

/// The query features of n (<= chunk) queries at q into ws.phiq [mf, chunk] (columns: queries;
/// columns >= n are padding).
template <class Arch, class T>
void favor_query_features(const favor_weights<T>& w, const T* q, index_t sq_i, index_t sq_d, index_t n,
                          index_t chunk, favor_workspace<T>& ws) {
  using B = simd::batch<T, Arch>;
  constexpr int W = B::size;
  T* qt = ws.qt.data();
  for (index_t c = 0; c < chunk; ++c)
    for (index_t p = 0; p < w.dk; ++p) qt[p * chunk + c] = c < n ? q[c * sq_i + p * sq_d] : T(0);
  T* qmax = ws.qmax.data();
  std::fill(qmax, qmax + chunk, -std::numeric_limits<T>::infinity());
  T* phi = ws.phiq.data();
  panel_product<Arch, false>(w.mf, w.dk, w.f.data(), w.dk, index_t(1), qt, chunk, phi, chunk, chunk,
                             w.softmax() ? qmax : nullptr);
  if (w.softmax()) {
    for (index_t f = 0; f < w.mf; ++f)
      for (index_t c = 0; c < chunk; c += W)
        exp2_nonpositive(B::load(phi + f * chunk + c) - B::load(qmax + c)).store(phi + f * chunk + c);
  } else {
    const B zero = B::zero(), eps = B::broadcast(w.eps);
    for (index_t f = 0; f < w.mf; ++f)
      for (index_t c = 0; c < chunk; c += W)
        (max(B::load(phi + f * chunk + c), zero) + eps).store(phi + f * chunk + c);
  }
}

/// ws.o [dv+1, chunk] = [S^T; z^T] * Phi_Q^T: numerators (rows < dv) and denominators (row dv).
template <class Arch, class T>
void favor_apply_state(const favor_weights<T>& w, const favor_state<T>& st, index_t chunk,
                       favor_workspace<T>& ws) {
  panel_product<Arch, false>(st.dv + 1, w.mf, st.s.data(), st.mpad, index_t(1), ws.phiq.data(), chunk,
                             ws.o.data(), chunk, chunk);
}

/// Causal chunk: brings ws.o (the state's contribution, at stabilizer st.c) to each query's
/// stabilizer and adds the chunk's own keys: query c (column) sees the keys r < min(c + 1, nk) of
/// ws.phik (nk keys, values at v), each at its stabilizer crow[r] <= crow[c]. Invisible keys reach
/// no column, not even through NaN or Inf in their values (masked product).
template <class Arch, class T>
void favor_intra_chunk(const favor_weights<T>& w, const favor_state<T>& st, const T* v, index_t sv_j,
                       index_t sv_d, index_t nk, index_t chunk, favor_workspace<T>& ws) {
  using B = simd::batch<T, Arch>;
  constexpr int W = B::size;
  using tl = favor_tiling<T, Arch>;
  if (nk <= 0) return;
  const index_t dv = st.dv;
  T* o = ws.o.data();
  const T* crow = ws.crow.data();
  T* cq = ws.cq.data();  // stabilizer of each query column
  for (index_t c = 0; c < chunk; ++c) cq[c] = crow[std::min(c, nk - 1)];
  const bool rescale = w.softmax() && !(crow[0] == crow[nk - 1] && crow[0] == st.c);
  if (rescale && st.c != -std::numeric_limits<T>::infinity()) {
    T* a = ws.qmax.data();
    for (index_t c = 0; c < chunk; c += W)
      exp2_nonpositive(B::broadcast(st.c) - B::load(cq + c)).store(a + c);
    for (index_t e = 0; e <= dv; ++e)
      for (index_t c = 0; c < chunk; c += W)
        (B::load(o + e * chunk + c) * B::load(a + c)).store(o + e * chunk + c);
  }
  T* at = ws.at.data();
  panel_product<Arch, false>(nk, w.mf, ws.phik.data(), w.mpad, index_t(1), ws.phiq.data(), chunk, at, chunk,
                             chunk);
  T* den = o + dv * chunk;
  for (index_t r = 0; r < nk; ++r) {
    T* row = at + r * chunk;
    std::fill(row, row + std::min(r, chunk), T(0));  // key r is invisible to queries c < r
    if (rescale)
      for (index_t c = r / W * W; c < chunk; c += W)
        (B::load(row + c) * exp2_nonpositive(min(B::zero(), B::broadcast(crow[r]) - B::load(cq + c))))
            .store(row + c);
    for (index_t c = r; c < chunk; ++c) den[c] += row[c];
  }
  if (dv > 0) {
    T* lim = ws.climit.data();
    for (index_t c = 0; c < chunk; ++c) lim[c] = static_cast<T>(std::min(c + 1, nk));
    tile_args<T> args;
    args.col_limit = lim;
    for (index_t j0 = 0; j0 < chunk; j0 += tl::Br) {
      args.col_limit = lim + j0;
      block_product<B, tl::MR, tl::NV, true, true, a_layout::unit_row>(dv, nk, v, sv_d, sv_j, at + j0, chunk,
                                                                       o + j0, chunk, args);
    }
  }
}

/// out row i (i < n) = O[0..dv)(i) / O[dv](i); zeros where the denominator is not positive.
template <class T>
void favor_finish(const favor_workspace<T>& ws, index_t dv, index_t n, index_t chunk, T* out, index_t so_i,
                  index_t so_d) {
  const T* o = ws.o.data();
  for (index_t c = 0; c < n; ++c) {
    // Divide (no reciprocal): 1/den overflows when every weight is tiny, num/den does not.
    const T den = o[dv * chunk + c];
    for (index_t e = 0; e < dv; ++e) out[c * so_i + e * so_d] = den > T(0) ? o[e * chunk + c] / den : T(0);
  }
}

/// One token through the state without block products (decoding): the key k and value v join
/// the state, then the G queries (q + g * sq_h) read it. Row vectors are strided.
template <class Arch, class T>
void favor_token(const favor_weights<T>& w, favor_state<T>& st, index_t G, const T* q, index_t sq_h,
                 index_t sq_d, const T* k, index_t sk_d, const T* v, index_t sv_d, T* out, index_t so_h,
                 index_t so_d, favor_workspace<T>& ws) {
  using B = simd::batch<T, Arch>;
  using S1 = simd::batch<T, simd::scalar>;
  constexpr int W = B::size;
  const index_t mf = w.mf, mp = w.mpad, dv = st.dv;
  T* phi = ws.phik.data();  // [mpad]
  // phi = the features of x: u = F x accumulated as dk rows of F^T (no reductions), then the map.
  auto features = [&](const T* src, index_t sd, bool key) {
    std::fill(phi, phi + mp, T(0));
    for (index_t p = 0; p < w.dk; ++p) axpy<Arch>(mp, src[p * sd], w.ft.data() + p * mp, phi);
    if (!w.softmax()) {
      for (index_t f = 0; f < mf; ++f) phi[f] = std::max(phi[f], T(0)) + w.eps;
      std::fill(phi + mf, phi + mp, T(0));
      return;
    }
    B mxv = B::broadcast(-std::numeric_limits<T>::infinity());
    index_t f = 0;
    for (; f + W <= mf; f += W) mxv = max(mxv, B::load(phi + f));
    T mx = reduce_max(mxv);
    for (; f < mf; ++f) mx = std::max(mx, phi[f]);
    T shift = mx;
    if (key) {
      const T nrm = w.norm_scale * squared_norm<Arch>(src, sd, w.dk);
      if (mx - nrm > st.c) st.rebase(mx - nrm);
      shift = st.c + nrm;
    }
    const B sh = B::broadcast(shift);
    for (f = 0; f + W <= mf; f += W) exp2_nonpositive(B::load(phi + f) - sh).store(phi + f);
    for (; f < mf; ++f) phi[f] = exp2_nonpositive(S1{phi[f] - shift}).v;
    std::fill(phi + mf, phi + mp, T(0));
  };
  features(k, sk_d, true);
  T* s = st.s.data();
  for (index_t e = 0; e < dv; ++e) axpy<Arch>(mf, v[e * sv_d], phi, s + e * mp);
  axpy<Arch>(mf, T(1), phi, s + dv * mp);
  for (index_t g = 0; g < G; ++g) {
    features(q + g * sq_h, sq_d, false);
    const T den = dot<Arch>(s + dv * mp, phi, mf);
    T* o = out + g * so_h;
    for (index_t e = 0; e < dv; ++e) o[e * so_d] = den > T(0) ? dot<Arch>(s + e * mp, phi, mf) / den : T(0);
  }
}

/// Causal FAVOR+ over n tokens of (b, hkv) appended to `st`: query i sees the state plus the
/// tokens j <= i of the call, of which only j < klen are keys (later ones are padding). Runs chunk
/// by chunk with block products, or token by token when `by_token` (short decoder calls).
template <class Arch, class T>
void favor_causal(const favor_weights<T>& w, favor_state<T>& st, favor_workspace<T>& ws, index_t G,
                  const tensor_view<const T, 4>& q, const tensor_view<const T, 4>& k,
                  const tensor_view<const T, 4>& v, const tensor_view<T, 4>& out, index_t b, index_t hkv,
                  index_t n, index_t klen, bool by_token) {
  constexpr index_t C = favor_tiling<T, Arch>::chunk;
  const index_t dv = st.dv;
  if (by_token) {
    for (index_t t = 0; t < n; ++t) {
      if (t < klen) {
        favor_token<Arch>(w, st, G, q.ptr(b, hkv * G, t, 0), q.stride(1), q.stride(3), k.ptr(b, hkv, t, 0),
                          k.stride(3), v.ptr(b, hkv, t, 0), v.stride(3), out.ptr(b, hkv * G, t, 0),
                          out.stride(1), out.stride(3), ws);
      } else {  // padding key: the queries read the state only
        for (index_t g = 0; g < G; ++g) {
          const index_t h = hkv * G + g;
          favor_query_features<Arch>(w, q.ptr(b, h, t, 0), q.stride(2), q.stride(3), 1, C, ws);
          favor_apply_state<Arch>(w, st, C, ws);
          favor_finish(ws, dv, 1, C, out.ptr(b, h, t, 0), out.stride(2), out.stride(3));
        }
      }
    }
    return;
  }
  for (index_t t0 = 0; t0 < n; t0 += C) {
    const index_t nq = std::min(C, n - t0);
    const index_t nk = std::clamp<index_t>(klen - t0, 0, nq);
    if (nk > 0)
      favor_key_features<Arch>(w, k.ptr(b, hkv, t0, 0), k.stride(2), k.stride(3), nk, st, ws, false);
    for (index_t g = 0; g < G; ++g) {
      const index_t h = hkv * G + g;
      favor_query_features<Arch>(w, q.ptr(b, h, t0, 0), q.stride(2), q.stride(3), nq, C, ws);
      favor_apply_state<Arch>(w, st, C, ws);
      favor_intra_chunk<Arch>(w, st, v.ptr(b, hkv, t0, 0), v.stride(2), v.stride(3), nk, C, ws);
      favor_finish(ws, dv, nq, C, out.ptr(b, h, t0, 0), out.stride(2), out.stride(3));
    }
    if (nk > 0) favor_accumulate<Arch>(w, v.ptr(b, hkv, t0, 0), v.stride(2), v.stride(3), nk, st, ws);
  }
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
