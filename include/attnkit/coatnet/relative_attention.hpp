// attnkit: CoAtNet's 2D relative attention (Dai et al. 2021; docs/design.md §4.5): exact attention with a
// static, translation-equivariant kernel w_h[dy, dx] on the logits or on the attention weights.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "../core/attention_args.hpp"
#include "../core/parallel.hpp"
#include "../core/simd.hpp"
#include "detail/relative.hpp"
#include "options.hpp"

ATTNKIT_BEGIN_NAMESPACE

namespace detail {

/// A checked relative-attention call: its shape, scale and grid.
struct relative_call {
  attention_shape s;
  double scale;
  index_t H, W;
};

/// The checks every relative-attention entry makes on its inputs (out: the forward's output, or
/// the out a backward is given).
template <class T, class O>
relative_call check_relative(const char* where, const tensor_view<const T, 4>& q,
                             const tensor_view<const T, 4>& k, const tensor_view<const T, 4>& v,
                             const tensor_view<const T, 3>& table, relative_grid grid,
                             const tensor_view<O, 4>& out, const relative_options& options) {
  const attention_shape s = check_attention_views(where, q, k, v, out, options.mask, /*allow_bias=*/false);
  require(options.mask.causal == causal_mode::none, where,
          "mask.causal must be none: relative attention is bidirectional (the table is the bias)");
  check_threads(options.threads, where);
  const double scale = resolve_scale<T>(options.scale, s.dk, where);
  require(options.mode == relative_mode::pre_softmax || options.mode == relative_mode::post_softmax, where,
          "options.mode is not a relative_mode value");
  require(options.offset == relative_offset::key_minus_query ||
              options.offset == relative_offset::query_minus_key,
          where, "options.offset is not a relative_offset value");
  const index_t H = grid.rows, W = grid.cols;
  // (2H - 1 and 2W - 1 below must not overflow: an empty sequence admits a grid of 0 x huge)
  constexpr index_t half = std::numeric_limits<index_t>::max() / 2;
  require(grid_covers(H, W, s.Lq) && s.Lq == s.Lk && H <= half && W <= half, where, [&] {
    return std::string("grid is " + std::to_string(H) + " x " + std::to_string(W) +
                       ": rows * cols must equal the sequence length (Lq = " + std::to_string(s.Lq) +
                       ", Lk = " + std::to_string(s.Lk) + ", self-attention on the grid)");
  });
  const std::array<index_t, 3> want_t{s.H, std::max<index_t>(2 * H - 1, 0), std::max<index_t>(2 * W - 1, 0)};
  require(table.extents() == want_t, where, [&] {
    return std::string("table has shape " + shape_string(table.extents()) + ", expected " +
                       shape_string(want_t) + " [heads, 2H - 1, 2W - 1] for a " + std::to_string(H) + " x " +
                       std::to_string(W) + " grid");
  });
  require_view(table, where, "table");
  return {s, scale, H, W};
}

template <class Arch, class T>
void relative_attention_impl(tensor_view<const T, 4> q, tensor_view<const T, 4> k, tensor_view<const T, 4> v,
                             tensor_view<const T, 3> table, relative_grid grid, tensor_view<T, 4> out,
                             const tensor_view<T, 3>* lse, const relative_options& options) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "relative_attention_2d: float or double");
  constexpr const char* where = "attnkit::relative_attention_2d";
  const relative_call rc = check_relative(where, q, k, v, table, grid, out, options);
  const attention_shape& s = rc.s;
  require_disjoint(where, arg("out", out), arg("table", table));
  if (lse) {
    check_lse(where, s, *lse, out, q, k, v, options.mask);
    require_disjoint(where, arg("lse", *lse), arg("table", table));
  }
  if (out.empty() && !(lse && !lse->empty())) return;
  q = addressable(q);
  k = addressable(k);
  v = addressable(v);
  out = addressable_output(out);
  const tensor_view<T, 3> no_lse{};
  const bool post = options.mode == relative_mode::post_softmax;
  const std::vector<T> windows =
      relative_windows<T>(table, rc.H, rc.W, options.offset, post ? T(1) : T(1.4426950408889634074));
  using task_t = relative_task<Arch, T>;
  constexpr index_t Br = task_t::Br;
  const index_t nblk = (s.Lq + Br - 1) / Br, ntasks = s.B * s.H * nblk;
  const int nt = resolve_threads(options.threads, ntasks);
  std::vector<relative_workspace<T>> ws;
  ws.reserve(static_cast<std::size_t>(nt));
  for (int t = 0; t < nt; ++t) ws.emplace_back(s.dk, s.dv, Br, task_t::Bc);
  const task_t task(s, q, k, v, out, lse ? *lse : no_lse, windows, rc.H, rc.W, post, options.mask,
                    static_cast<T>(rc.scale * 1.4426950408889634074));
  parallel_for(ntasks, nt, [&](index_t t, int thread) {
    const index_t bh = t / nblk;
    task.run(bh / s.H, bh % s.H, (t % nblk) * Br, ws[static_cast<std::size_t>(thread)]);
  });
}

}  // namespace detail

/// 2D relative attention on an H x W grid (L = H * W positions in raster order):
///   pre_softmax:  out_i = sum_j softmax_j(scale q_i . k_j + w_h[dy, dx]) v_j
///   post_softmax: out_i = sum_j (softmax_j(scale q_i . k_j) + w_h[dy, dx]) v_j
/// with (dy, dx) = pos_j - pos_i (key_minus_query) or pos_i - pos_j (query_minus_key), indexing
/// table [heads, 2H - 1, 2W - 1] at [h, dy + H - 1, dx + W - 1]. q [B, heads, L, dk],
/// k [B, Hkv, L, dk], v [B, Hkv, L, dv], out [B, heads, L, dv]; any strides; heads a multiple of
/// Hkv. mask.key_lengths drops padding keys (the sums run over the visible keys only). Runs on the
/// tiled exact-attention kernel: the bias of a tile is read from a per-head window of the table
/// (heads x W x (2H - 1) x W values), never from an [L, L] matrix. Throws invalid_argument (and
/// writes nothing) on inconsistent shapes, tables, grids or masks. Same bits for any thread count.
template <class Arch = simd::native, class T>
void relative_attention_2d(tensor_view<const detail::identity_t<T>, 4> q,
                           tensor_view<const detail::identity_t<T>, 4> k,
                           tensor_view<const detail::identity_t<T>, 4> v,
                           tensor_view<const detail::identity_t<T>, 3> table, relative_grid grid,
                           tensor_view<T, 4> out, const relative_options& options = {}) {
  detail::relative_attention_impl<Arch, T>(q, k, v, table, grid, out, nullptr, options);
}

/// The same, and lse [B, heads, L] = ln sum_{j visible} exp(logit_ij) of every query row, the
/// state relative_attention_2d_backward takes: logit = scale q_i . k_j + w_h[dy, dx] (pre_softmax)
/// or scale q_i . k_j (post_softmax: the softmax's own). -inf for a row that sees no key. The out
/// bits are those of the call without lse; lse must overlap neither out nor the inputs.
template <class Arch = simd::native, class T>
void relative_attention_2d(tensor_view<const detail::identity_t<T>, 4> q,
                           tensor_view<const detail::identity_t<T>, 4> k,
                           tensor_view<const detail::identity_t<T>, 4> v,
                           tensor_view<const detail::identity_t<T>, 3> table, relative_grid grid,
                           tensor_view<T, 4> out, tensor_view<T, 3> lse,
                           const relative_options& options = {}) {
  detail::relative_attention_impl<Arch, T>(q, k, v, table, grid, out, &lse, options);
}

/// Resizes a relative table [heads, 2H - 1, 2W - 1] to another grid (rows x cols): the table
/// [heads, 2 rows - 1, 2 cols - 1] that timm's resize_rel_pos_bias_table_simple computes for
/// (heads, H, W) tables, i.e. torch.nn.functional.interpolate(mode="bicubic",
/// align_corners=False): output index o samples the input at (o + 0.5) * in / out - 0.5 with the
/// cubic convolution kernel of A = -0.75 over 4 neighbours per axis, clamped at the borders.
/// Computed in double, returned as T. Throws invalid_argument on an empty table or grid.
template <class T>
tensor<T, 3> resize_relative_table(tensor_view<const T, 3> table, relative_grid grid) {
  constexpr const char* where = "attnkit::resize_relative_table";
  detail::require(table.extent(0) >= 0 && table.extent(1) >= 1 && table.extent(2) >= 1, where, [&] {
    return std::string("table has shape " + detail::shape_string(table.extents()) +
                       ", expected [heads, 2H - 1 >= 1, 2W - 1 >= 1]");
  });
  detail::require(grid.rows >= 1 && grid.cols >= 1, where, [&] {
    return std::string("grid is " + std::to_string(grid.rows) + " x " + std::to_string(grid.cols) +
                       ", expected rows, cols >= 1");
  });
  detail::require_view(table, where, "table");
  const index_t heads = table.extent(0), ih = table.extent(1), iw = table.extent(2);
  const index_t oh = 2 * grid.rows - 1, ow = 2 * grid.cols - 1;
  // per output index along one axis: the 4 input indices (clamped) and their weights
  struct taps {
    index_t i[4];
    double w[4];
  };
  auto axis = [](index_t in, index_t out) {
    constexpr double A = -0.75;
    auto near = [&](double x) { return ((A + 2) * x - (A + 3)) * x * x + 1; };       // |x| <= 1
    auto far = [&](double x) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; };  // 1 < |x| < 2
    const double scale = static_cast<double>(in) / static_cast<double>(out);
    std::vector<taps> t(static_cast<std::size_t>(out));
    for (index_t o = 0; o < out; ++o) {
      const double src = scale * (static_cast<double>(o) + 0.5) - 0.5;
      const double f = std::floor(src), x = src - f;
      taps& tp = t[static_cast<std::size_t>(o)];
      const double w[4] = {far(x + 1), near(x), near(1 - x), far(2 - x)};
      for (int k = 0; k < 4; ++k) {
        tp.i[k] = std::clamp<index_t>(static_cast<index_t>(f) - 1 + k, 0, in - 1);
        tp.w[k] = w[k];
      }
    }
    return t;
  };
  const std::vector<taps> ty = axis(ih, oh), tx = axis(iw, ow);
  tensor<T, 3> out({heads, oh, ow});
  for (index_t h = 0; h < heads; ++h)
    for (index_t y = 0; y < oh; ++y)
      for (index_t x = 0; x < ow; ++x) {
        const taps& a = ty[static_cast<std::size_t>(y)];
        const taps& b = tx[static_cast<std::size_t>(x)];
        double acc = 0.0;
        for (int r = 0; r < 4; ++r) {
          double row = 0.0;
          for (int c = 0; c < 4; ++c) row += b.w[c] * static_cast<double>(table(h, a.i[r], b.i[c]));
          acc += a.w[r] * row;
        }
        out(h, y, x) = static_cast<T>(acc);
      }
  return out;
}

ATTNKIT_END_NAMESPACE
