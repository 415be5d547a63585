// attnkit tests: naive fp64 2D relative attention (CoAtNet, docs/design.md §4.5), written from the formulas
// of relative_attention_2d's doc comment, independently of the kernel (it only reads attnkit's
// option structs and views). For every (b, h, i) the logits of the visible keys are materialized,
// the relative kernel w_h[dy, dx] of every (i, j) is looked up in the table by the positions
// (i / W, i % W) and (j / W, j % W), and the softmax and the sums are done in double. Only visible
// keys (j < key_lengths[b]) are ever read, so NaN / Inf stored in padding keys or values cannot
// reach a reference output.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <attnkit/coatnet/options.hpp>
#include <attnkit/core/tensor.hpp>

#include "common.hpp"

namespace attnkit_test {
namespace ref {

/// Facts about one reference row (b, h, i), for tolerance budgets.
struct relative_row {
  index_t visible = 0;  ///< number of visible keys
  double max_dot = 0;   ///< max over visible j of |scale| sum_p |q_ip k_jp|
  double max_w = 0;     ///< max over visible j of |w_h[dy, dx]|
  double max_z = 0;     ///< max over visible j of |softmax argument| (s_ij + w pre, s_ij post)
};

/// The reference output and, per element, mag = sum_j p_ij |v_je| (+ sum_j |w_ij| |v_je| for
/// post_softmax): the sum of absolute terms that an error budget relative to the output scales with.
struct relative_result {
  attnkit::tensor<double, 4> out;  ///< [B, heads, L, dv]
  attnkit::tensor<double, 4> mag;  ///< [B, heads, L, dv]
  std::vector<relative_row> rows;  ///< B * heads * L, row-major
};

/// The table entry w_h[dy, dx] between query i and key j of a rows x cols grid (raster order).
template <class U>
double relative_weight(const view<const U, 3>& table, index_t h, attnkit::relative_grid grid,
                       attnkit::relative_offset offset, index_t i, index_t j) {
  const index_t H = grid.rows, W = grid.cols;
  const index_t yi = i / W, xi = i % W, yj = j / W, xj = j % W;
  const bool kmq = offset == attnkit::relative_offset::key_minus_query;
  const index_t dy = kmq ? yj - yi : yi - yj, dx = kmq ? xj - xi : xi - xj;
  // (a plain check, not one assertion per lookup: a sweep makes millions of them)
  if (!(dy + H - 1 >= 0 && dy + H - 1 < table.extent(1) && dx + W - 1 >= 0 && dx + W - 1 < table.extent(2)))
    FAIL("relative_weight: offset (" << dy << ", " << dx << ") is outside the table");
  return static_cast<double>(at(table, {h, dy + H - 1, dx + W - 1}));
}

/// out[b, h, i, :] = sum_{j < len_b} a_ij v_j with a_ij = softmax_j(scale q_i.k_j + w_ij)
/// (pre_softmax) or softmax_j(scale q_i.k_j) + w_ij (post_softmax), in fp64; q [B, heads, L, dk],
/// k [B, Hkv, L, dk], v [B, Hkv, L, dv], table [heads, 2H - 1, 2W - 1]; head h reads kv head
/// h / (heads / Hkv). A row without visible keys is zero. options.mask.causal / bias are ignored
/// (the operator rejects them; the reference is only called with valid arguments).
template <class T, class U>
relative_result relative_attention_2d(const view<const T, 4>& q, const view<const T, 4>& k,
                                      const view<const T, 4>& v, const view<const U, 3>& table,
                                      attnkit::relative_grid grid, const attnkit::relative_options& opt) {
  const index_t B = q.extent(0), H = q.extent(1), L = q.extent(2), dk = q.extent(3);
  const index_t Hkv = k.extent(1), dv = v.extent(3);
  REQUIRE(k.extent(0) == B);
  REQUIRE(k.extent(2) == L);
  REQUIRE(k.extent(3) == dk);
  REQUIRE(v.extent(0) == B);
  REQUIRE(v.extent(1) == Hkv);
  REQUIRE(v.extent(2) == L);
  REQUIRE(grid.rows * grid.cols == L);
  REQUIRE((H == 0 || (Hkv > 0 && H % Hkv == 0)));
  const index_t group = Hkv > 0 ? H / Hkv : 1;
  const double scale =
      opt.scale != 0.0 ? opt.scale : 1.0 / std::sqrt(static_cast<double>(std::max<index_t>(dk, 1)));
  const bool post = opt.mode == attnkit::relative_mode::post_softmax;
  relative_result r;
  r.out = attnkit::tensor<double, 4>({B, H, L, dv});
  r.mag = attnkit::tensor<double, 4>({B, H, L, dv});
  r.rows.assign(static_cast<std::size_t>(B * H * L), relative_row{});
  std::vector<double> s, w, acc(static_cast<std::size_t>(dv)), mag(static_cast<std::size_t>(dv));
  for (index_t b = 0; b < B; ++b) {
    const index_t len = opt.mask.key_lengths.data() ? static_cast<index_t>(opt.mask.key_lengths(b)) : L;
    REQUIRE((len >= 0 && len <= L));
    for (index_t h = 0; h < H; ++h) {
      const index_t hk = h / group;
      for (index_t i = 0; i < L; ++i) {
        relative_row& row = r.rows[static_cast<std::size_t>((b * H + h) * L + i)];
        row.visible = len;
        s.assign(static_cast<std::size_t>(len), 0.0);
        w.assign(static_cast<std::size_t>(len), 0.0);
        for (index_t j = 0; j < len; ++j) {
          double dot = 0, dabs = 0;
          for (index_t p = 0; p < dk; ++p) {
            const double t =
                static_cast<double>(at(q, {b, h, i, p})) * static_cast<double>(at(k, {b, hk, j, p}));
            dot += t;
            dabs += std::fabs(t);
          }
          const double wij = relative_weight(table, h, grid, opt.offset, i, j);
          const std::size_t t = static_cast<std::size_t>(j);
          w[t] = wij;
          s[t] = scale * dot + (post ? 0.0 : wij);
          row.max_dot = std::max(row.max_dot, std::fabs(scale) * dabs);
          row.max_w = std::max(row.max_w, std::fabs(wij));
          row.max_z = std::max(row.max_z, std::fabs(s[t]));
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        std::fill(mag.begin(), mag.end(), 0.0);
        if (len > 0) {
          const double mx = *std::max_element(s.begin(), s.end());
          double sum = 0;
          for (double& x : s) {
            x = std::exp(x - mx);
            sum += x;
          }
          for (index_t j = 0; j < len; ++j) {
            const double p = s[static_cast<std::size_t>(j)] / sum;
            const double a = post ? p + w[static_cast<std::size_t>(j)] : p;
            const double m = post ? p + std::fabs(w[static_cast<std::size_t>(j)]) : p;
            for (index_t e = 0; e < dv; ++e) {
              const double x = static_cast<double>(at(v, {b, hk, j, e}));
              acc[static_cast<std::size_t>(e)] += a * x;
              mag[static_cast<std::size_t>(e)] += m * std::fabs(x);
            }
          }
        }
        for (index_t e = 0; e < dv; ++e) {
          r.out(b, h, i, e) = acc[static_cast<std::size_t>(e)];
          r.mag(b, h, i, e) = mag[static_cast<std::size_t>(e)];
        }
      }
    }
  }
  return r;
}

}  // namespace ref
}  // namespace attnkit_test
