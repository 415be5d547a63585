// attnkit: options and position terms of lambda attention (Bello 2021; docs/design.md §4.4).
#pragma once

#include <cstdint>

#include "../core/mask.hpp"
#include "../core/tensor.hpp"

ATTNKIT_BEGIN_NAMESPACE

/// Which position lambdas a lambda call adds to its content lambda.
///   none:     Y[n] = Q[n] lc
///   global:   lp_n = sum_{m,u} E[n, m, :, u] V[m, :, u]            (E given for every (n, m))
///   relative: E[n, m] = R[pos_m - pos_n]                             (translation-equivariant)
///   local:    lp_n = sum_{|delta| <= r/2} R[delta] V[n + delta]      (lambda convolution, zero padding)
enum class lambda_position_kind { none, global, relative, local };

/// The n == m positions of a relative or local term as a rows x cols grid in raster order
/// (pos = (row, col) of index row * cols + col). A 1D sequence is rows = 1; cols = 0 means
/// "one row of all the positions of the call".
struct lambda_grid {
  std::int64_t rows = 1;
  std::int64_t cols = 0;
};

/// A position term of lambda_attention. Build it with the factories; the views are not owned.
/// Tables are indexed [row offset, col offset, k, u]: relative R[dy + H - 1, dx + W - 1] for the
/// offset (dy, dx) = pos_m - pos_n on an H x W grid; local R[dy + rh/2, dx + rw/2] for
/// |dy| <= rh/2, |dx| <= rw/2 (rh, rw odd). 1D tables [2n - 1 | r, k, u] are viewed with a
/// leading extent 1.
template <class T>
struct lambda_position {
  lambda_position_kind kind = lambda_position_kind::none;
  tensor_view<const T, 4> embeddings{};  ///< global: E [n, m, k, u]
  tensor_view<const T, 4> table{};       ///< relative: [2H - 1, 2W - 1, k, u]; local: [rh, rw, k, u]
  lambda_grid grid{};                    ///< relative / local

  static lambda_position none() { return {}; }
  /// Global embeddings E [n, m, k, u].
  static lambda_position global(tensor_view<const T, 4> e) {
    lambda_position p;
    p.kind = lambda_position_kind::global;
    p.embeddings = e;
    return p;
  }
  /// Relative 1D: R [2n - 1, k, u], E[n, m] = R[m - n + n_len - 1].
  static lambda_position relative(tensor_view<const T, 3> r) {
    return make(lambda_position_kind::relative, r);
  }
  /// Relative 2D on `grid`: R [2H - 1, 2W - 1, k, u].
  static lambda_position relative(tensor_view<const T, 4> r, lambda_grid grid) {
    return make(lambda_position_kind::relative, r, grid);
  }
  /// Local 1D (lambda convolution) of scope r: R [r, k, u], r odd.
  static lambda_position local(tensor_view<const T, 3> r) { return make(lambda_position_kind::local, r); }
  /// Local 2D of scope rh x rw on `grid`: R [rh, rw, k, u], both odd.
  static lambda_position local(tensor_view<const T, 4> r, lambda_grid grid) {
    return make(lambda_position_kind::local, r, grid);
  }

 private:
  static lambda_position make(lambda_position_kind kind, tensor_view<const T, 4> r, lambda_grid grid) {
    lambda_position p;
    p.kind = kind;
    p.table = r;
    p.grid = grid;
    return p;
  }
  static lambda_position make(lambda_position_kind kind, tensor_view<const T, 3> r) {
    const tensor_view<const T, 4> t(r.data(), {1, r.extent(0), r.extent(1), r.extent(2)},
                                    {0, r.stride(0), r.stride(1), r.stride(2)});
    return make(kind, t, lambda_grid{1, 0});
  }
};

/// Options of lambda_attention and lambda_layer.
struct lambda_options {
  /// Causal (1D sequences): query n sees the context positions m <= n (same as mask.causal =
  /// top_left): the content lambda is normalized over that prefix and the position terms are
  /// restricted to it.
  bool causal = false;
  /// key_lengths: context positions m >= key_lengths[b] are padding and take no part; causal
  /// top_left or bottom_right; no bias (a lambda has no attention logits to add it to).
  attnkit::mask mask{};
  int threads = 0;  ///< 0: all available threads
};

ATTNKIT_END_NAMESPACE
