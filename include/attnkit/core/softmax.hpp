// attnkit: stable softmax, log-sum-exp and the online-softmax state of the tiled kernels.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "config.hpp"
#include "math.hpp"
#include "simd.hpp"

ATTNKIT_BEGIN_NAMESPACE

/// Returns log(sum_i exp(x[i])) over n contiguous elements without overflow (-inf when n == 0
/// or every x is -inf).
template <class Arch = simd::native, class T>
T log_sum_exp(const T* x, index_t n) {
  using B = simd::batch<T, Arch>;
  constexpr int W = B::size;
  T m = -std::numeric_limits<T>::infinity();
  for (index_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  if (!(m > -std::numeric_limits<T>::infinity())) return m;  // empty, all -inf, or NaN
  const B mb = B::broadcast(m);
  B acc = B::zero();
  index_t i = 0;
  for (; i + W <= n; i += W) acc = acc + exp(B::load(x + i) - mb);
  if (i < n)
    acc = acc +
          select(B::iota() < B::broadcast(T(n - i)), exp(B::load_partial(x + i, int(n - i)) - mb), B::zero());
  return m + std::log(reduce_add(acc));
}

/// Replaces x[0..n) by softmax(x) (max-subtracted). A row of all -inf becomes all zeros.
template <class Arch = simd::native, class T>
void softmax_inplace(T* x, index_t n) {
  using B = simd::batch<T, Arch>;
  constexpr int W = B::size;
  T m = -std::numeric_limits<T>::infinity();
  for (index_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  if (m == -std::numeric_limits<T>::infinity()) {
    for (index_t i = 0; i < n; ++i) x[i] = T(0);
    return;
  }
  const B mb = B::broadcast(m);
  B acc = B::zero();
  index_t i = 0;
  for (; i + W <= n; i += W) {
    const B e = exp(B::load(x + i) - mb);
    e.store(x + i);
    acc = acc + e;
  }
  T s = reduce_add(acc);
  for (; i < n; ++i) {
    x[i] = exp_scalar(x[i] - m);
    s += x[i];
  }
  const T inv = T(1) / s;
  for (i = 0; i < n; ++i) x[i] *= inv;
}

/// The largest magnitude of a logit, in the units the softmax exponentiates. Logits are saturated to
/// [-logit_bound, logit_bound] where they are computed, so the difference of two is finite and a
/// product that overflows (q.k beyond the range of T, or inf - inf inside a dot product) becomes
/// a finite logit instead of +-inf or NaN: outputs stay finite for any finite q, k and scale.
template <class T>
inline constexpr T logit_bound = std::numeric_limits<T>::max() / 4;

/// Saturates logits to [-logit_bound, logit_bound]; NaN becomes -logit_bound (no weight).
template <class B>
ATTNKIT_ALWAYS_INLINE B saturate_logits(B x) {
  using T = typename B::value_type;
  // max returns its second operand when the first is NaN
  return min(max(x, B::broadcast(-logit_bound<T>)), B::broadcast(logit_bound<T>));
}
template <class T>
ATTNKIT_ALWAYS_INLINE T saturate_logit(T x) {
  return saturate_logits(simd::batch<T, simd::scalar>{x}).v;
}

/// Running state of a softmax computed block by block: max m and sum l of exp(x - m).
/// Scores may be in natural units (use exp) or pre-multiplied by log2(e) (use exp2); the state
/// only needs the matching exponential.
template <class T>
struct online_softmax_state {
  T m = -std::numeric_limits<T>::infinity();
  T l = T(0);

  /// The shift to subtract from scores so that exponentials stay finite (0 while nothing is seen).
  static T shift(T max_value) { return max_value == -std::numeric_limits<T>::infinity() ? T(0) : max_value; }
};

/// Vector form of online_softmax_state for one column batch of queries.
template <class B>
struct online_softmax_batch {
  B m = B::broadcast(-std::numeric_limits<typename B::value_type>::infinity());
  B l = B::zero();

  /// A max of -inf (no key seen) shifts by 0 instead, so exp2(-inf - 0) = 0 and never NaN.
  static B shift(B max_value) {
    using T = typename B::value_type;
    const B ninf = B::broadcast(-std::numeric_limits<T>::infinity());
    return select(ninf < max_value, max_value, B::zero());
  }
};

/// The merge of partial softmax states (docs/design.md §1.3, §6). A state over a set of keys is
/// (m, l, o): the max m of its logits (in exp2 units), l = sum_j exp2(s_j - m) and the output o,
/// unnormalized (sum_j exp2(s_j - m) v_j) or normalized (divided by l). States over disjoint keys
/// merge exactly: with M the largest max of the states that saw a key (l > 0), state c weighs
/// w_c = exp2(m_c - M) (0 when l_c == 0, whatever m_c is), l = sum_c w_c l_c, and the merged
/// output is sum_c w_c o_c / l (unnormalized states) or sum_c w_c l_c o_c / l (normalized).
/// merged_max is the M of two states; merge_weight the w of one against M.
template <class B>
ATTNKIT_ALWAYS_INLINE B merged_max(B m0, B l0, B m1, B l1) {
  const B zero = B::zero();
  return select(zero < l0, select(zero < l1, max(m0, m1), m0), m1);
}
template <class B>
ATTNKIT_ALWAYS_INLINE B merge_weight(B m, B l, B M) {
  return select(B::zero() < l, detail::exp2_nonpositive(m - M), B::zero());
}
/// Scalar forms (a state with no key is not exponentiated at all).
template <class T>
ATTNKIT_ALWAYS_INLINE T merged_max_scalar(T m0, T l0, T m1, T l1) {
  return l0 > T(0) ? (l1 > T(0) ? std::max(m0, m1) : m0) : m1;
}
template <class T>
ATTNKIT_ALWAYS_INLINE T merge_weight_scalar(T m, T l, T M) {
  return l > T(0) ? detail::exp2_nonpositive(simd::batch<T, simd::scalar>{m - M}).v : T(0);
}

/// The natural-log log-sum-exp of a state in exp2 units (max m2, l = sum_j exp2(s_j - m2)):
/// ln(sum_j 2^s_j) = (m2 + log2 l) ln 2; -inf for a state that saw no key (l == 0).
template <class T>
inline T state_log_sum_exp(T m2, T l) {
  constexpr T ln2 = T(0.6931471805599453094);
  return l > T(0) ? (m2 + std::log2(l)) * ln2 : -std::numeric_limits<T>::infinity();
}

/// The merge of two normalized attention states over disjoint key sets (docs/design.md §1.3): the
/// outputs oa, ob (n elements each) with natural-log log-sum-exps la, lb become the state of the
/// union, written to o (which may be oa or ob) with its log-sum-exp returned. A state with
/// lse == -inf saw no key and is neutral: its output is not read (it may hold anything); two such
/// states give zeros and -inf.
template <class Arch, class T>
T merge_state_row(const T* oa, T la, const T* ob, T lb, T* o, index_t n) {
  using B = simd::batch<T, Arch>;
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  const bool ha = la > ninf, hb = lb > ninf;  // NaN: not a state that saw a key either
  if (!ha && !hb) {
    std::fill(o, o + n, T(0));
    return ninf;
  }
  if (!hb || !ha) {
    const T* src = ha ? oa : ob;
    if (src != o) std::copy(src, src + n, o);
    return ha ? la : lb;
  }
  const T M = std::max(la, lb);
  const T wa = exp_scalar(la - M), wb = exp_scalar(lb - M);  // one of them is 1
  const T sum = wa + wb, ca = wa / sum, cb = wb / sum;
  index_t e = 0;
  for (; e + B::size <= n; e += B::size)
    fma(B::broadcast(ca), B::load(oa + e), B::load(ob + e) * B::broadcast(cb)).store(o + e);
  for (; e < n; ++e) o[e] = ca * oa[e] + cb * ob[e];
  return M + std::log(sum);
}

ATTNKIT_END_NAMESPACE
