// attnkit: kernels behind coatnet/ops.hpp: vectorized activations over contiguous rows, the
// packed-weight block product every dense convolution and linear layer runs on (im2col of a fixed
// chunk of output pixels times the repacked weights [K, Cout padded to whole registers]), and the
// argument checks the ops share.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "../../core/attention_args.hpp"
#include "../../core/gemm.hpp"
#include "../../core/math.hpp"
#include "../../core/parallel.hpp"
#include "../../core/simd.hpp"
#include "../../core/tensor.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace coatnet {

/// Pointwise activations of the ops (PyTorch definitions): relu max(x, 0); silu x sigmoid(x);
/// gelu x Phi(x) with the exact erf (nn.GELU()); gelu_tanh nn.GELU(approximate="tanh");
/// sigmoid 1 / (1 + e^-x); tanh (the pre-logits of timm's NormMlpClassifierHead).
enum class activation { none, relu, silu, gelu, gelu_tanh, sigmoid, tanh };

}  // namespace coatnet

namespace detail {

constexpr index_t ops_block = 64;  ///< elements per activation block (stack scratch)

/// x[0..n) = act(x[0..n)) in place. float gelu: erfc from the rational Chebyshev fit of Numerical
/// Recipes (relative error < 1.2e-7 everywhere, also in the far tail); double gelu: std::erfc.
template <class Arch, class T>
void activate_row(coatnet::activation act, T* x, index_t n) {
  using B = simd::batch<T, Arch>;
  constexpr index_t W = B::size;
  using coatnet::activation;
  if (act == activation::none) return;
  if (act == activation::relu) {
    for (index_t i = 0; i < n; ++i) x[i] = x[i] > T(0) ? x[i] : T(0);
    return;
  }
  if (act == activation::tanh) {  // only on head vectors: the library's std::tanh
    for (index_t i = 0; i < n; ++i) x[i] = std::tanh(x[i]);
    return;
  }
  if (act == activation::gelu && std::is_same_v<T, double>) {
    for (index_t i = 0; i < n; ++i) x[i] = T(0.5) * x[i] * std::erfc(-x[i] * T(0.70710678118654752440));
    return;
  }
  alignas(64) T e[ops_block], t[ops_block];
  for (index_t i0 = 0; i0 < n; i0 += ops_block) {
    const index_t m = std::min(ops_block, n - i0);
    T* xs = x + i0;
    // e = the exponent's argument, then its exp (vectorized; the tail lane-wise by the scalar batch)
    if (act == activation::silu || act == activation::sigmoid) {
      for (index_t i = 0; i < m; ++i) e[i] = -xs[i];
    } else if (act == activation::gelu_tanh) {
      for (index_t i = 0; i < m; ++i) {
        const T v = xs[i];
        e[i] = T(-2) * T(0.79788456080286535588) * (v + T(0.044715) * v * v * v);
      }
    } else {  // gelu (float): erfc(z), z = |x| / sqrt(2) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2)
      for (index_t i = 0; i < m; ++i) {
        const T z = std::fabs(xs[i]) * T(0.70710678118654752440);
        const T tt = T(1) / (T(1) + T(0.5) * z);
        t[i] = tt;
        e[i] = -z * z - T(1.26551223) +
               tt * (T(1.00002368) +
                     tt * (T(0.37409196) +
                           tt * (T(0.09678418) +
                                 tt * (T(-0.18628806) +
                                       tt * (T(0.27886807) +
                                             tt * (T(-1.13520398) +
                                                   tt * (T(1.48851587) +
                                                         tt * (T(-0.82215223) + tt * T(0.17087277)))))))));
      }
    }
    index_t i = 0;
    for (; i + W <= m; i += W) exp(B::load(e + i)).store(e + i);
    for (; i < m; ++i) e[i] = exp_scalar(e[i]);
    if (act == activation::silu || act == activation::gelu_tanh) {
      for (index_t j = 0; j < m; ++j) xs[j] = xs[j] / (T(1) + e[j]);  // exp overflow: x / inf = 0
    } else if (act == activation::sigmoid) {
      for (index_t j = 0; j < m; ++j) xs[j] = T(1) / (T(1) + e[j]);
    } else {
      for (index_t j = 0; j < m; ++j) {
        const T c = t[j] * e[j];  // erfc(|x| / sqrt 2)
        xs[j] = xs[j] * T(0.5) * (xs[j] > T(0) ? T(2) - c : c);
      }
    }
  }
}

/// Scalar activation in double (the SE's small vectors).
inline double activate_scalar(coatnet::activation act, double x) {
  using coatnet::activation;
  switch (act) {
    case activation::none:
      return x;
    case activation::relu:
      return x > 0 ? x : 0;
    case activation::silu:
      return x / (1 + std::exp(-x));
    case activation::gelu:
      return 0.5 * x * std::erfc(-x * 0.70710678118654752440);
    case activation::gelu_tanh:
      return 0.5 * x * (1 + std::tanh(0.79788456080286535588 * (x + 0.044715 * x * x * x)));
    case activation::sigmoid:
      return 1 / (1 + std::exp(-x));
    case activation::tanh:
      return std::tanh(x);
  }
  return x;
}

inline void check_activation(coatnet::activation act, const char* where) {
  require(act >= coatnet::activation::none && act <= coatnet::activation::tanh, where,
          "act is not an activation value");
}

/// Throws unless x has exactly the extents `want`.
template <class V, std::size_t N>
void check_shape(const V& x, const std::array<index_t, N>& want, const char* where, const char* name) {
  require(x.extents() == want, where, [&] {
    return std::string(name) + " has shape " + shape_string(x.extents()) + ", expected " + shape_string(want);
  });
  require_view(x, where, name);
}

/// Throws when out writes one element twice, has no data, or overlaps one of `inputs` in memory.
template <class V, class... I>
void check_output(const V& out, const char* where, const named_view<I>&... inputs) {
  require_output(where, arg("out", out), inputs...);
}

/// Weights repacked for the block product: wp[k][co] (k < K, co < np, zero padded to whole
/// registers), bias[co] (zero padded).
template <class T>
struct packed_weights {
  std::vector<T> w, bias;
  index_t k = 0, n = 0, np = 0;
};

/// Packs weight(o, p) (o < n output channels, p < k inputs in the product's order) and bias(o)
/// (absent: 0) as packed_weights with n padded to whole registers of Arch.
template <class Arch, class T, class Weight, class Bias>
packed_weights<T> pack_weights(index_t n, index_t k, Weight weight, Bias bias) {
  constexpr index_t W = simd::batch<T, Arch>::size;
  packed_weights<T> p;
  p.n = n;
  p.k = k;
  p.np = (n + W - 1) / W * W;
  p.w.assign(static_cast<std::size_t>(k * p.np), T(0));
  p.bias.assign(static_cast<std::size_t>(p.np), T(0));
  for (index_t o = 0; o < n; ++o) {
    p.bias[static_cast<std::size_t>(o)] = bias(o);
    for (index_t i = 0; i < k; ++i) p.w[static_cast<std::size_t>(i * p.np + o)] = weight(o, i);
  }
  return p;
}

/// No residual term in packed_product.
template <class T>
struct no_residual {
  const T* operator()(index_t) const { return nullptr; }
};

/// Columns [j0, j1) (multiples of the register width, j1 <= np) of C = A [rows, K] * Wp
/// (A(r, p) = a[r * a_rs + p * a_cs]) in blocks of K, then bias, act and (when residual(r) is not
/// null) + residual row r (contiguous, indexed by output channel), then out row r's channels
/// [j0, min(j1, n)) through row_ptr(r) with column stride os (out may be the residual row itself).
/// Every element's sum runs in the same order whatever the column range, so splitting the columns
/// into tasks changes no bit.
template <class Arch, class T, class RowPtr, class Residual = no_residual<T>>
void packed_product(index_t rows, const T* a, index_t a_rs, index_t a_cs, const packed_weights<T>& pw,
                    coatnet::activation act, std::vector<T>& c, RowPtr row_ptr, index_t os,
                    Residual residual = {}, index_t j0 = 0, index_t j1 = -1) {
  constexpr index_t kb = 256;  // depth block: the panel of A and Bp stays in L2
  if (j1 < 0) j1 = pw.np;
  const index_t nc = j1 - j0, n = std::min(j1, pw.n) - j0;
  c.resize(static_cast<std::size_t>(rows * nc));
  for (index_t k0 = 0; k0 < pw.k; k0 += kb) {
    const index_t kc = std::min(kb, pw.k - k0);
    const T* bp = pw.w.data() + k0 * pw.np + j0;
    if (k0 == 0)
      panel_product<Arch, false>(rows, kc, a, a_rs, a_cs, bp, pw.np, c.data(), nc, nc);
    else
      panel_product<Arch, true>(rows, kc, a + k0 * a_cs, a_rs, a_cs, bp, pw.np, c.data(), nc, nc);
  }
  if (pw.k == 0) std::fill(c.begin(), c.end(), T(0));
  using B = simd::batch<T, Arch>;
  for (index_t r = 0; r < rows; ++r) {
    T* cr = c.data() + r * nc;
    for (index_t j = 0; j < nc; j += B::size)
      (B::load(cr + j) + B::load(pw.bias.data() + j0 + j)).store(cr + j);
    activate_row<Arch>(act, cr, n);
    if (const T* res = residual(r))
      for (index_t j = 0; j < n; ++j) cr[j] += res[j0 + j];
    T* o = row_ptr(r) + j0 * os;
    if (os == 1)
      std::copy(cr, cr + n, o);
    else
      for (index_t j = 0; j < n; ++j) o[j * os] = cr[j];
  }
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
