// attnkit tests: naive fp64 lambda attention, written from the einsum formulas of docs/design.md §4.4 (Bello
// 2021) and the mask model of section 3, independently of the library's kernel (it reads only the
// option structs, the position term's fields and the views, through attnkit_test::at). The position
// term is expanded into an explicit E [n, m, k, u] first (zeros for none), then per query position
// n and its visible context (a prefix [0, end_n) of the m positions):
//   Kbar_n[m, k, u] = exp(K[m, k, u]) / sum_{m' visible} exp(K[m', k, u])   (softmax over the context)
//   lc_n[k, v]      = sum_{m visible, u} Kbar_n[m, k, u] V[m, v, u]
//   lp_n[k, v]      = sum_{m visible, u} E[n, m, k, u] V[m, v, u]
//   Y[n, h, v]      = sum_k Q[n, h, k] (lc_n + lp_n)[k, v]
// A query with no visible context gets zeros. Only visible keys, values and E entries are read, so
// NaN or Inf elsewhere cannot reach an output.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <attnkit/core/tensor.hpp>
#include <attnkit/lambda/options.hpp>

#include "common.hpp"

namespace attnkit_test {
namespace ref {

/// The explicit position embeddings E [n, m, k, u] of a lambda position term, in fp64:
///   none:     0
///   global:   the given E
///   relative: E[n, m] = R[(ym - yn) + H - 1, (xm - xn) + W - 1] on the H x W grid (1D: H = 1)
///   local:    E[n, m] = R[dy + rh/2, dx + rw/2] when |dy| <= rh/2 and |dx| <= rw/2, else 0
/// with (y, x) = (i / W, i % W) the raster position of index i; grid.cols = 0 with grid.rows = 1 is
/// one row of all n positions.
template <class T>
attnkit::tensor<double, 4> lambda_embeddings(const attnkit::lambda_position<T>& pos, index_t n, index_t m,
                                             index_t k, index_t u) {
  using kind = attnkit::lambda_position_kind;
  attnkit::tensor<double, 4> e({n, m, k, u});
  if (pos.kind == kind::none) return e;
  if (pos.kind == kind::global) {
    for_each_index(e.extents(), [&](const std::array<index_t, 4>& ix) {
      e(ix[0], ix[1], ix[2], ix[3]) = static_cast<double>(at(pos.embeddings, ix));
    });
    return e;
  }
  const index_t W = pos.grid.rows == 1 && pos.grid.cols == 0 ? n : pos.grid.cols;
  const index_t H = pos.grid.rows;
  const bool rel = pos.kind == kind::relative;
  const index_t rh = pos.table.extent(0), rw = pos.table.extent(1);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < m; ++j) {
      const index_t dy = j / W - i / W, dx = j % W - i % W;
      index_t ty = 0, tx = 0;
      if (rel) {
        ty = dy + H - 1;
        tx = dx + W - 1;
      } else {
        if (std::abs(dy) > rh / 2 || std::abs(dx) > rw / 2) continue;
        ty = dy + rh / 2;
        tx = dx + rw / 2;
      }
      for (index_t kk = 0; kk < k; ++kk)
        for (index_t uu = 0; uu < u; ++uu)
          e(i, j, kk, uu) = static_cast<double>(at(pos.table, {ty, tx, kk, uu}));
    }
  return e;
}

/// The reference output Y [B, n, h * v] and, for error budgets, the same sums over absolute values
///   mag[n, h, v] = sum_k |Q[n, h, k]| sum_{m visible, u} (Kbar_n[m, k, u] + |E[n, m, k, u]|) |V[m, v, u]|
/// (the condition of every output: a rounding error eps per operation moves it by <= N eps mag).
struct lambda_result {
  attnkit::tensor<double, 3> out, mag;
};

/// One past the last context position query i of batch entry b sees (docs/design.md §3; lambda causal is
/// options.causal or mask.causal; bottom_right offsets by m - n).
inline index_t lambda_visible_end(const attnkit::lambda_options& opt, index_t b, index_t i, index_t n,
                                  index_t m) {
  const index_t len = opt.mask.key_lengths.data() ? static_cast<index_t>(opt.mask.key_lengths(b)) : m;
  const bool causal = opt.causal || opt.mask.causal != attnkit::causal_mode::none;
  if (!causal) return len;
  const index_t off = opt.mask.causal == attnkit::causal_mode::bottom_right ? m - n : 0;
  return std::clamp<index_t>(i + off + 1, 0, len);
}

/// Lambda attention in fp64: queries [B, n, h, k], keys [B, m, k, u], values [B, m, v, u].
template <class T>
lambda_result lambda(const view<const T, 4>& q, const view<const T, 4>& keys, const view<const T, 4>& values,
                     const attnkit::lambda_position<T>& pos, const attnkit::lambda_options& opt) {
  const index_t B = q.extent(0), n = q.extent(1), h = q.extent(2), k = q.extent(3);
  const index_t m = keys.extent(1), u = keys.extent(3), v = values.extent(2);
  const auto E = lambda_embeddings(pos, n, m, k, u);
  lambda_result r{attnkit::tensor<double, 3>({B, n, h * v}), attnkit::tensor<double, 3>({B, n, h * v})};
  std::vector<double> kbar, lam, lam_abs;
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < n; ++i) {
      const index_t end = lambda_visible_end(opt, b, i, n, m);
      if (end <= 0) continue;  // no context: zeros
      // Kbar over the visible context [0, end), per (k, u)
      kbar.assign(static_cast<std::size_t>(end * k * u), 0.0);
      auto kb = [&](index_t j, index_t kk, index_t uu) -> double& {
        return kbar[static_cast<std::size_t>((j * k + kk) * u + uu)];
      };
      for (index_t kk = 0; kk < k; ++kk)
        for (index_t uu = 0; uu < u; ++uu) {
          double mx = -INFINITY, z = 0;
          for (index_t j = 0; j < end; ++j) mx = std::max(mx, static_cast<double>(at(keys, {b, j, kk, uu})));
          for (index_t j = 0; j < end; ++j) z += std::exp(static_cast<double>(at(keys, {b, j, kk, uu})) - mx);
          for (index_t j = 0; j < end; ++j)
            kb(j, kk, uu) = std::exp(static_cast<double>(at(keys, {b, j, kk, uu})) - mx) / z;
        }
      // lambda_n = lc_n + lp_n [k, v], and its absolute counterpart
      lam.assign(static_cast<std::size_t>(k * v), 0.0);
      lam_abs.assign(static_cast<std::size_t>(k * v), 0.0);
      for (index_t kk = 0; kk < k; ++kk)
        for (index_t e = 0; e < v; ++e) {
          double lc = 0, lp = 0, a = 0;
          for (index_t j = 0; j < end; ++j)
            for (index_t uu = 0; uu < u; ++uu) {
              const double val = static_cast<double>(at(values, {b, j, e, uu}));
              const double emb = E(i, j, kk, uu);
              lc += kb(j, kk, uu) * val;
              lp += emb * val;
              a += (kb(j, kk, uu) + std::fabs(emb)) * std::fabs(val);
            }
          lam[static_cast<std::size_t>(kk * v + e)] = lc + lp;
          lam_abs[static_cast<std::size_t>(kk * v + e)] = a;
        }
      for (index_t hh = 0; hh < h; ++hh)
        for (index_t e = 0; e < v; ++e) {
          double y = 0, a = 0;
          for (index_t kk = 0; kk < k; ++kk) {
            const double qv = static_cast<double>(at(q, {b, i, hh, kk}));
            y += qv * lam[static_cast<std::size_t>(kk * v + e)];
            a += std::fabs(qv) * lam_abs[static_cast<std::size_t>(kk * v + e)];
          }
          r.out(b, i, hh * v + e) = y;
          r.mag(b, i, hh * v + e) = a;
        }
    }
  return r;
}

}  // namespace ref
}  // namespace attnkit_test
