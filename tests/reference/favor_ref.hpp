// attnkit tests: naive fp64 FAVOR+, written from the formulas of docs/design.md §4.2 independently of the
// library's kernels (it reads only the feature matrix, the option structs and the views).
// Everything is materialized: the feature vectors of every query and key, then the ratio
//   out_i = sum_{j visible} (phi(q_i).phi(k_j)) v_j / sum_{j visible} phi(q_i).phi(k_j).
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include <attnkit/favor/features.hpp>
#include <attnkit/favor/options.hpp>

#include "attention_ref.hpp"
#include "common.hpp"

namespace attnkit_test {
namespace ref {

/// phi(x) of docs/design.md §4.2 for the rows x [n, d] (row-major, fp64) and W [m, d]:
///   softmax_positive:   m^(-1/2) exp(W x' - |x'|^2/2 - c)
///   softmax_hyperbolic: (2m)^(-1/2) exp(-|x'|^2/2 - c) [exp(W x'), exp(-W x')]
///   relu:               m^(-1/2) relu(W x) + eps
/// with x' = sqrt(scale) x. c = 0 when `stabilize` is false (then phi(q).phi(k) is the unbiased
/// estimate of exp(scale q.k)); otherwise c is, for queries, the max over the row's own features of
/// the exponent W x' and, for keys, one max over all rows and features.
inline std::vector<std::vector<double>> favor_features(const std::vector<std::vector<double>>& x,
                                                       const std::vector<std::vector<double>>& w,
                                                       attnkit::favor_kernel kernel, double scale, double eps,
                                                       bool stabilize, bool is_query) {
  const std::size_t m = w.size();
  const double rs = std::sqrt(scale);
  std::vector<std::vector<double>> u(x.size(), std::vector<double>(m)), phi(x.size());
  double cmax = -INFINITY;
  for (std::size_t r = 0; r < x.size(); ++r)
    for (std::size_t f = 0; f < m; ++f) {
      double s = 0;
      for (std::size_t p = 0; p < x[r].size(); ++p) s += w[f][p] * x[r][p];
      u[r][f] = kernel == attnkit::favor_kernel::relu ? s : rs * s;
      const double e = kernel == attnkit::favor_kernel::softmax_hyperbolic ? std::fabs(u[r][f]) : u[r][f];
      cmax = std::max(cmax, e);
    }
  for (std::size_t r = 0; r < x.size(); ++r) {
    double n2 = 0;
    for (double xi : x[r]) n2 += scale * xi * xi;
    double c = 0;
    if (stabilize && kernel != attnkit::favor_kernel::relu) {
      if (is_query) {
        c = -INFINITY;
        for (double uf : u[r])
          c = std::max(c, kernel == attnkit::favor_kernel::softmax_hyperbolic ? std::fabs(uf) : uf);
      } else {
        c = cmax;
      }
    }
    switch (kernel) {
      case attnkit::favor_kernel::softmax_positive:
        for (double uf : u[r]) phi[r].push_back(std::exp(uf - n2 / 2 - c) / std::sqrt(double(m)));
        break;
      case attnkit::favor_kernel::softmax_hyperbolic:
        for (double uf : u[r]) phi[r].push_back(std::exp(uf - n2 / 2 - c) / std::sqrt(2.0 * m));
        for (double uf : u[r]) phi[r].push_back(std::exp(-uf - n2 / 2 - c) / std::sqrt(2.0 * m));
        break;
      case attnkit::favor_kernel::relu:
        for (double uf : u[r]) phi[r].push_back(std::max(uf, 0.0) / std::sqrt(double(m)) + eps);
        break;
    }
  }
  return phi;
}

/// The rows [n, d] of x[b, h] widened to fp64 (only rows < n are read).
template <class T>
std::vector<std::vector<double>> rows_of(const view<const T, 4>& x, index_t b, index_t h, index_t n) {
  std::vector<std::vector<double>> r(static_cast<std::size_t>(n),
                                     std::vector<double>(static_cast<std::size_t>(x.extent(3))));
  for (index_t i = 0; i < n; ++i)
    for (index_t p = 0; p < x.extent(3); ++p) r[i][p] = static_cast<double>(at(x, {b, h, i, p}));
  return r;
}

/// FAVOR+ attention in fp64 with the feature matrix w [m, dk] (docs/design.md §4.2; the mask model of
/// section 3: causal when opt.causal or opt.mask.causal is set, key_lengths drop padding keys).
template <class T>
attnkit::tensor<double, 4> favor(const view<const T, 4>& q, const view<const T, 4>& k,
                                 const view<const T, 4>& v, const view<const T, 2>& wm,
                                 const attnkit::favor_options& opt) {
  const index_t B = q.extent(0), H = q.extent(1), Lq = q.extent(2), dk = q.extent(3);
  const index_t Hkv = k.extent(1), Lk = k.extent(2), dv = v.extent(3);
  const index_t G = H / Hkv;
  const double scale = resolve_scale(opt.scale, dk);
  std::vector<std::vector<double>> w(static_cast<std::size_t>(wm.extent(0)));
  for (index_t f = 0; f < wm.extent(0); ++f)
    for (index_t p = 0; p < dk; ++p) w[f].push_back(static_cast<double>(wm(f, p)));
  attnkit::mask m = opt.mask;
  if (opt.causal && m.causal == attnkit::causal_mode::none) m.causal = attnkit::causal_mode::top_left;
  attnkit::tensor<double, 4> out({B, H, Lq, dv});
  for (index_t b = 0; b < B; ++b) {
    const index_t len = m.key_lengths.data() ? static_cast<index_t>(m.key_lengths(b)) : Lk;
    for (index_t hk = 0; hk < Hkv; ++hk) {
      const auto pk =
          favor_features(rows_of(k, b, hk, len), w, opt.kernel, scale, opt.relu_epsilon, true, false);
      for (index_t g = 0; g < G; ++g) {
        const index_t h = hk * G + g;
        const auto pq =
            favor_features(rows_of(q, b, h, Lq), w, opt.kernel, scale, opt.relu_epsilon, true, true);
        for (index_t i = 0; i < Lq; ++i) {
          std::vector<double> num(static_cast<std::size_t>(dv), 0.0);
          double den = 0;
          for (index_t j = 0; j < len; ++j) {
            if (!visible(m, b, i, j, Lq, Lk)) continue;
            double a = 0;
            for (std::size_t f = 0; f < pq[i].size(); ++f) a += pq[i][f] * pk[j][f];
            den += a;
            for (index_t e = 0; e < dv; ++e) num[e] += a * static_cast<double>(at(v, {b, hk, j, e}));
          }
          for (index_t e = 0; e < dv; ++e) out(b, h, i, e) = den > 0 ? num[e] / den : 0.0;
        }
      }
    }
  }
  return out;
}

}  // namespace ref
}  // namespace attnkit_test
