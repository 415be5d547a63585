// attnkit benchmarks (bench/measure.hpp): lambda layers, CoAtNet relative attention and the CoAtNet network.
#pragma once

#include "attention.hpp"

namespace attnkit_bench {
// ----------------------------------------------------------------------------------------------
// Lambda layers (lambda_attention on projected inputs)

/// The position term of a lambda benchmark: local (lambda convolution of scope r x r) or global
/// relative (a [2H-1, 2W-1, k, u] table on the side x side grid).
enum class lambda_term { local, relative };

inline const char* lambda_term_name(lambda_term t) { return t == lambda_term::local ? "local" : "relative"; }

/// One lambda_attention problem on a rows x cols feature map of d channels, as a lambda layer of
/// LambdaResNet would run it: h queries (default 4) of k = 16 per position, intra-depth u, v = d / h,
/// so the output has d channels like h-head attention with head dimension d / h. Inputs uniform in
/// [-1, 1), built once.
struct lambda_case {
  lambda_term term = lambda_term::local;
  index_t B = 1, rows = 0, cols = 0, d = 0, h = 4, k = 16, u = 1, v = 0, rh = 0, rw = 0;
  attnkit::tensor<float, 4> q, keys, values, table;
  attnkit::tensor<float, 3> out;

  /// Square side x side maps; local terms of scope r x r, relative tables [2 side - 1, 2 side - 1].
  lambda_case(lambda_term t, index_t side, index_t d_, index_t u_, index_t r, index_t batch = 1)
      : lambda_case(t, side, side, d_, u_, r, batch) {}
  lambda_case(lambda_term t, index_t rows_, index_t cols_, index_t d_, index_t u_, index_t r, index_t batch,
              index_t heads = 4)
      : term(t),
        B(batch),
        rows(rows_),
        cols(cols_),
        d(d_),
        h(heads),
        u(u_),
        v(d_ / heads),
        rh(t == lambda_term::local ? r : 2 * rows_ - 1),
        rw(t == lambda_term::local ? r : 2 * cols_ - 1),
        q({B, rows * cols, h, k}),
        keys({B, rows * cols, k, u}),
        values({B, rows * cols, v, u}),
        table({rh, rw, k, u}),
        out({B, rows * cols, h * v}) {
    fill_uniform(q, 11);
    fill_uniform(keys, 12);
    fill_uniform(values, 13);
    fill_uniform(table, 14, -0.1f, 0.1f);
  }
  index_t n() const { return rows * cols; }
  attnkit::lambda_position<float> position() const {
    const attnkit::lambda_grid g{rows, cols};
    return term == lambda_term::local ? attnkit::lambda_position<float>::local(table.view(), g)
                                      : attnkit::lambda_position<float>::relative(table.view(), g);
  }
  void run(int threads) {
    attnkit::lambda_options o;
    o.threads = threads;
    attnkit::lambda_attention(q.view(), keys.view(), values.view(), position(), out.view(), o);
  }
  /// FLOPs of the position lambdas: 2 k u v per (query, context position) pair of its window
  /// (border windows clipped: zero padding costs nothing).
  double position_flops() const {
    auto span = [](index_t extent, index_t r, index_t i) {
      const index_t c = r / 2;
      return static_cast<double>(std::min(extent, i - c + r) - std::max<index_t>(0, i - c));
    };
    double ys = 0.0, xs = 0.0;
    for (index_t y = 0; y < rows; ++y) ys += span(rows, rh, y);
    for (index_t x = 0; x < cols; ++x) xs += span(cols, rw, x);
    return 2.0 * static_cast<double>(k * u * v * B) * ys * xs;
  }
  /// All products: content lambda (2 m u k v), position lambdas, and Y = Q lambda (2 n h k v).
  double flops() const {
    const double nb = static_cast<double>(n() * B);
    return position_flops() + 2.0 * nb * static_cast<double>(u * k * v) +
           2.0 * nb * static_cast<double>(h * k * v);
  }
  /// "local r=23 u=4 k=16 h=4 v=64, B1 56x56x256"
  std::string describe() const {
    std::string s = std::string(lambda_term_name(term));
    if (term == lambda_term::local) s += " r=" + std::to_string(rh);
    return s + " u=" + std::to_string(u) + " k=" + std::to_string(k) + " h=" + std::to_string(h) +
           " v=" + std::to_string(v) + ", B" + std::to_string(B) + " " + std::to_string(rows) + "x" +
           std::to_string(cols) + "x" + std::to_string(d);
  }
};

// ----------------------------------------------------------------------------------------------
// CoAtNet's relative attention

/// relative_attention_2d as an attention_fn on a rows x cols grid, with a table [heads, 2 rows - 1,
/// 2 cols - 1] uniform in [-1, 1) built once; a call on a slice of heads uses the table's first
/// rows (samples are slices of heads: their cost does not depend on which).
inline attention_fn relative_attention_fn(index_t rows, index_t cols, index_t heads,
                                          attnkit::relative_mode mode) {
  auto table =
      std::make_shared<attnkit::tensor<float, 3>>(std::array<index_t, 3>{heads, 2 * rows - 1, 2 * cols - 1});
  fill_uniform(table->data(), table->size(), 77);
  return [=](const f4_cview& q, const f4_cview& k, const f4_cview& v, const f4_view& out,
             const attnkit::attention_options& o) {
    attnkit::relative_options ro;
    ro.mode = mode;
    ro.threads = o.threads;
    const attnkit::tensor_view<const float, 3> t(table->data(), {q.extent(1), 2 * rows - 1, 2 * cols - 1},
                                                 table->view().strides());
    attnkit::relative_attention_2d(q, k, v, t, attnkit::relative_grid{rows, cols}, out, ro);
  };
}

/// relative_attention_2d with lse and relative_attention_2d_backward (its dtable a buffer of the
/// whole table's shape, a slice of heads writing its first rows) as training_ops.
inline training_ops relative_training_ops(index_t rows, index_t cols, index_t heads,
                                          attnkit::relative_mode mode) {
  const std::array<index_t, 3> shape{heads, 2 * rows - 1, 2 * cols - 1};
  auto table = std::make_shared<attnkit::tensor<float, 3>>(shape);
  auto dtable = std::make_shared<attnkit::tensor<float, 3>>(shape);
  fill_uniform(table->data(), table->size(), 77);
  auto options = [=](const attnkit::attention_options& o) {
    attnkit::relative_options ro;
    ro.mode = mode;
    ro.threads = o.threads;
    return ro;
  };
  auto slice = [=](auto& t, index_t h) {
    return attnkit::tensor_view<std::remove_reference_t<decltype(*t->data())>, 3>(
        t->data(), {h, 2 * rows - 1, 2 * cols - 1}, t->view().strides());
  };
  training_ops ops;
  ops.forward = [=](const f4_cview& q, const f4_cview& k, const f4_cview& v, const f4_view& out,
                    const attnkit::tensor_view<float, 3>& lse, const attnkit::attention_options& o) {
    const auto t = slice(table, q.extent(1));
    attnkit::relative_attention_2d(q, k, v,
                                   attnkit::tensor_view<const float, 3>(t.data(), t.extents(), t.strides()),
                                   attnkit::relative_grid{rows, cols}, out, lse, options(o));
  };
  ops.backward = [=](const f4_cview& q, const f4_cview& k, const f4_cview& v, const f4_cview& out,
                     const attnkit::tensor_view<const float, 3>& lse, const f4_cview& dout, const f4_view& dq,
                     const f4_view& dk, const f4_view& dv, const attnkit::attention_options& o) {
    const auto t = slice(table, q.extent(1));
    attnkit::relative_attention_2d_backward(
        q, k, v, attnkit::tensor_view<const float, 3>(t.data(), t.extents(), t.strides()),
        attnkit::relative_grid{rows, cols}, out, lse, dout, dq, dk, dv, slice(dtable, q.extent(1)),
        options(o));
  };
  return ops;
}

// ----------------------------------------------------------------------------------------------
// The CoAtNet network

/// A CoAtNet forward pass on `batch` random images with random parameters of a trained network's
/// scale (convolution and linear weights uniform with the variance of He initialization, biases
/// and norm shifts small, norm scales ~1, batch-norm variances 1, relative tables in [-1, 1)), so
/// activations stay O(1) through the network like a checkpoint's: the cost of a real model.
struct coatnet_case {
  attnkit::coatnet::network<float> net;
  index_t batch;
  attnkit::tensor<float, 4> images;
  attnkit::tensor<float, 2> logits;

  coatnet_case(const attnkit::coatnet::network_config& cfg, index_t batch_)
      : net(cfg),
        batch(batch_),
        images({batch_, cfg.image_rows, cfg.image_cols, cfg.in_channels}),
        logits({batch_, cfg.num_classes}) {
    fill_uniform(images.data(), images.size(), 5, -2.0f, 2.0f);
    std::uint64_t seed = 100;
    for (const auto& param : net.parameters()) {
      const std::string& name = param.first;  // not a structured binding: the lambda below captures it
      const auto& shape = param.second;
      index_t n = 1;
      for (index_t e : shape) n *= e;
      std::vector<float> v(static_cast<std::size_t>(n));
      auto ends = [&](const char* tail) {
        const std::string t(tail);
        return name.size() >= t.size() && name.compare(name.size() - t.size(), t.size(), t) == 0;
      };
      if (ends("running_var")) {
        std::fill(v.begin(), v.end(), 1.0f);
      } else if (shape.size() >= 2 && !ends("relative_position_bias_table")) {
        const float a = std::sqrt(6.0f / static_cast<float>(n / shape[0]));  // He: var 2 / fan_in
        fill_uniform(v.data(), n, ++seed, -a, a);
      } else if (ends("norm.weight") || ends("norm1.weight") || ends("norm2.weight") ||
                 ends("pre_norm.weight")) {
        fill_uniform(v.data(), n, ++seed, 0.8f, 1.2f);
      } else {
        fill_uniform(v.data(), n, ++seed, -0.1f, 0.1f);
      }
      net.set_parameter(name, v.data(), n);
    }
    run(1);  // packs the weights and sizes the buffers
  }
  void run(int threads) { net.forward(images.cview(), logits.view(), threads); }
  double flops() const { return net.flops(batch); }
};

/// ||a - b||_F / ||b||_F over two equally shaped views: the relative error of an approximation `a`
/// of `b` (NaN when any difference is NaN).
inline double relative_error(const attnkit::tensor_view<const float, 4>& a,
                             const attnkit::tensor_view<const float, 4>& b) {
  double num = 0.0, den = 0.0;
  for (index_t i0 = 0; i0 < a.extent(0); ++i0)
    for (index_t i1 = 0; i1 < a.extent(1); ++i1)
      for (index_t i2 = 0; i2 < a.extent(2); ++i2)
        for (index_t i3 = 0; i3 < a.extent(3); ++i3) {
          const double y = b(i0, i1, i2, i3), d = static_cast<double>(a(i0, i1, i2, i3)) - y;
          num += d * d;
          den += y * y;
        }
  return std::sqrt(num) / std::sqrt(den);
}

/// Returns max |a - b| over two equally shaped views (NaN when any difference is NaN).
inline double max_abs_diff(const attnkit::tensor_view<const float, 4>& a,
                           const attnkit::tensor_view<const float, 4>& b) {
  double m = 0.0;
  for (index_t i0 = 0; i0 < a.extent(0); ++i0)
    for (index_t i1 = 0; i1 < a.extent(1); ++i1)
      for (index_t i2 = 0; i2 < a.extent(2); ++i2)
        for (index_t i3 = 0; i3 < a.extent(3); ++i3) {
          const double d = std::fabs(static_cast<double>(a(i0, i1, i2, i3)) - b(i0, i1, i2, i3));
          if (std::isnan(d)) return d;
          m = std::max(m, d);
        }
  return m;
}

}  // namespace attnkit_bench
