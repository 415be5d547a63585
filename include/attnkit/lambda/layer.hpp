// attnkit: the lambda layer (Bello 2021, "LambdaNetworks"; docs/design.md §4.4): projections of the inputs
// to queries, keys and values, inference batch norm on queries and values, the position
// parameters, and lambda_attention over the projections.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../core/random.hpp"
#include "attention.hpp"

ATTNKIT_BEGIN_NAMESPACE

/// The sizes and the position term of a lambda_layer.
struct lambda_layer_config {
  index_t d = 0;      ///< channels of the inputs and of the context
  index_t heads = 4;  ///< h: queries per position (they share its lambda)
  index_t k = 16;     ///< query / key depth
  index_t u = 1;      ///< intra-depth
  index_t v = 0;      ///< value depth (0: d_out / heads); the output has heads * v channels
  index_t d_out = 0;  ///< read only when v = 0 (0: d); must be a multiple of heads then
  lambda_position_kind position = lambda_position_kind::none;
  /// global and relative: the query positions of every call in raster order, a sequence of n as
  /// {1, n} or an H x W feature map as {H, W}. Other terms ignore it.
  lambda_grid grid{};
  index_t context = 0;   ///< global: m context positions (0: rows * cols, a self-context)
  index_t scope = 0;     ///< local: r (odd), the context positions a query sees on each axis
  bool spatial = false;  ///< local: r x r on feature maps [b, H, W, d] instead of r on sequences
};

/// The multi-query lambda layer of the paper, for inference. With x [b, n, d] and a context
/// c [b, m, d] (c = x for a self-context):
///   queries [b, n, h, k] = BN_q(x W_q + b_q)     keys   [b, m, k, u] = c W_k
///   values  [b, m, v, u] = BN_v(c W_v + b_v)     out    [b, n, h * v] = lambda_attention(queries,
///   keys, values, position term) (keys are softmax-normalized over m in the kernel).
/// Channel c of a projection is (hh, kk) = c / k, c % k for queries, (kk, uu) = c / u, c % u for
/// keys, (vv, uu) = c / u, c % u for values; BN(y)[c] = y[c] * scale[c] + shift[c].
/// Parameters live in the layer and are exposed as mutable views (load them there). The mutable
/// accessors mark the packed weights stale, and the next call repacks them once: W_q, W_k, W_v side
/// by side in one [d, Pq + Pk + Pv] panel (each part padded to whole SIMD registers), with the
/// batch norm folded into its columns and a bias row, so a forward pass costs the products only.
/// After writing through a view kept across calls, call weights_changed().
/// Memory: the panel (d + 1) * (Pq + Pk + Pv) elements; per call a scratch owned by the layer that
/// grows to the largest call (release_scratch() frees it): b * n * (Pq + Pk + Pv) elements for a
/// self-context, b * (n * Pq + m * (Pk + Pv)) for a separate one, plus b * n * h * v for a feature
/// map whose `out` cannot be viewed as [b, H * W, h * v]; lambda_attention allocates its own
/// (about b * m * u * v). One call at a time per layer (forward is not const). Arch picks the
/// SIMD code of the projections and of lambda_attention, as for the kernels.
template <class T, class Arch = simd::native>
class lambda_layer {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "lambda_layer: float or double");
  static constexpr index_t lanes = simd::batch<T, Arch>::size;
  static constexpr index_t row_block = 96;  ///< input rows per projection task (fixed: same bits)

 public:
  /// Builds a layer with identity batch norms and zero weights, biases and position table (see
  /// init()). Throws invalid_argument on sizes < 1, d_out not a multiple of heads, a global or
  /// relative term without a grid, or a local term without an odd scope.
  explicit lambda_layer(const lambda_layer_config& config)
      : c_(resolve(config)),
        wq_({c_.d, c_.heads * c_.k}),
        wk_({c_.d, c_.k * c_.u}),
        wv_({c_.d, c_.v * c_.u}),
        bq_({c_.heads * c_.k}),
        sq_({c_.heads * c_.k}),
        tq_({c_.heads * c_.k}),
        bv_({c_.v * c_.u}),
        sv_({c_.v * c_.u}),
        tv_({c_.v * c_.u}),
        table_(table_extents(c_)),
        pq_(pad(c_.heads * c_.k)),
        pk_(pad(c_.k * c_.u)),
        pv_(pad(c_.v * c_.u)) {
    std::fill(sq_.data(), sq_.data() + sq_.size(), T(1));
    std::fill(sv_.data(), sv_.data() + sv_.size(), T(1));
  }

  /// The configuration with v and d_out (= heads * v) and a global term's context resolved.
  const lambda_layer_config& config() const { return c_; }
  /// Output channels h * v.
  index_t out_channels() const { return c_.heads * c_.v; }

  /// W_q [d, h * k], W_k [d, k * u], W_v [d, v * u] (row-major, owned).
  tensor_view<T, 2> query_weights() { return touch(wq_); }
  tensor_view<T, 2> key_weights() { return touch(wk_); }
  tensor_view<T, 2> value_weights() { return touch(wv_); }
  /// Biases of the query [h * k] and value [v * u] projections (zero unless loaded or folded).
  tensor_view<T, 1> query_bias() { return touch(bq_); }
  tensor_view<T, 1> value_bias() { return touch(bv_); }
  /// Inference batch norm as per-channel scale and shift (identity: 1 and 0).
  tensor_view<T, 1> query_scale() { return touch(sq_); }
  tensor_view<T, 1> query_shift() { return touch(tq_); }
  tensor_view<T, 1> value_scale() { return touch(sv_); }
  tensor_view<T, 1> value_shift() { return touch(tv_); }
  /// The position parameters: global E [n, m, k, u]; relative [2H - 1, 2W - 1, k, u] (sequences:
  /// H = 1); local [r, r, k, u] (sequences: [1, r, k, u]); none: [0, 0, 0, 0]. See lambda_position.
  tensor_view<T, 4> position_table() { return table_.view(); }

  tensor_view<const T, 2> query_weights() const { return wq_.view(); }
  tensor_view<const T, 2> key_weights() const { return wk_.view(); }
  tensor_view<const T, 2> value_weights() const { return wv_.view(); }
  tensor_view<const T, 1> query_bias() const { return bq_.view(); }
  tensor_view<const T, 1> value_bias() const { return bv_.view(); }
  tensor_view<const T, 1> query_scale() const { return sq_.view(); }
  tensor_view<const T, 1> query_shift() const { return tq_.view(); }
  tensor_view<const T, 1> value_scale() const { return sv_.view(); }
  tensor_view<const T, 1> value_shift() const { return tv_.view(); }
  tensor_view<const T, 4> position_table() const { return table_.view(); }

  /// Marks the packed weights stale after writes through a view obtained before the last call.
  void weights_changed() { stale_ = true; }

  /// Fills the parameters from `seed` (same values everywhere): W_q ~ N(0, 1 / (d k)), W_k and W_v
  /// ~ N(0, 1 / d), the position table ~ N(0, 1 / (u w)) with w the context positions a term spans
  /// (m; local: r or r^2); zero biases, identity batch norms.
  void init(std::uint64_t seed) {
    random_generator g(seed);
    auto normal = [&](auto& t, double sd) {
      for (index_t i = 0; i < t.size(); ++i) t.data()[i] = static_cast<T>(sd * g.normal());
    };
    const double d = static_cast<double>(c_.d);
    normal(wq_, 1.0 / std::sqrt(d * static_cast<double>(c_.k)));
    normal(wk_, 1.0 / std::sqrt(d));
    normal(wv_, 1.0 / std::sqrt(d));
    index_t w = 1;
    if (c_.position == lambda_position_kind::global) w = c_.context;
    if (c_.position == lambda_position_kind::relative) w = c_.grid.rows * c_.grid.cols;
    if (c_.position == lambda_position_kind::local) w = c_.scope * (c_.spatial ? c_.scope : 1);
    normal(table_, 1.0 / std::sqrt(static_cast<double>(c_.u * w)));
    for (auto* t : {&bq_, &tq_, &bv_, &tv_}) std::fill(t->data(), t->data() + t->size(), T(0));
    std::fill(sq_.data(), sq_.data() + sq_.size(), T(1));
    std::fill(sv_.data(), sv_.data() + sv_.size(), T(1));
    stale_ = true;
  }

  /// Sets the query batch norm from its statistics ([h * k] each): scale = gamma / sqrt(var + eps),
  /// shift = beta - mean * scale. Throws invalid_argument on other shapes or var + eps <= 0.
  void set_query_batch_norm(tensor_view<const T, 1> gamma, tensor_view<const T, 1> beta,
                            tensor_view<const T, 1> mean, tensor_view<const T, 1> var, double eps) {
    set_norm("attnkit::lambda_layer::set_query_batch_norm", sq_, tq_, gamma, beta, mean, var, eps);
  }
  /// The same for the value batch norm ([v * u] each).
  void set_value_batch_norm(tensor_view<const T, 1> gamma, tensor_view<const T, 1> beta,
                            tensor_view<const T, 1> mean, tensor_view<const T, 1> var, double eps) {
    set_norm("attnkit::lambda_layer::set_value_batch_norm", sv_, tv_, gamma, beta, mean, var, eps);
  }
  /// Folds both batch norms into the weights and biases (W[:, c] *= scale[c], b[c] = b[c] * scale[c]
  /// + shift[c]) and resets them to identity. The outputs do not change (forward folds them into
  /// its packed panel the same way, so they keep the same bits).
  void fold_batch_norm() {
    fold(wq_, bq_, sq_, tq_);
    fold(wv_, bv_, sv_, tv_);
    stale_ = true;
  }

  /// Self-context on sequences: x [b, n, d] -> out [b, n, h * v]. options as lambda_attention's
  /// (causal, key_lengths of the n positions, threads). Throws invalid_argument naming the argument,
  /// its shape and the expected one (nothing written) on bad shapes or options.
  void forward(tensor_view<const T, 3> x, tensor_view<T, 3> out, const lambda_options& options = {}) {
    constexpr const char* where = "attnkit::lambda_layer::forward";
    check_input(where, "x", x, "[b, n, d=");
    const index_t B = x.extent(0), n = x.extent(1);
    check_out(where, "out", out, std::array<index_t, 3>{B, n, out_channels()}, "[b, n, h * v]",
              detail::arg("x", x));
    check_position(where, n, n, nullptr);
    const rows x_rows = rows_of(x);
    run(where, x_rows, nullptr, B, n, n, lambda_grid{1, 0}, out, options);
  }

  /// Separate context: x [b, n, d], context [b, m, d] -> out [b, n, h * v]; key_lengths count the
  /// m context positions. Relative and local terms need m = n.
  void forward(tensor_view<const T, 3> x, tensor_view<const T, 3> context, tensor_view<T, 3> out,
               const lambda_options& options = {}) {
    constexpr const char* where = "attnkit::lambda_layer::forward";
    check_input(where, "x", x, "[b, n, d=");
    check_input(where, "context", context, "[b, m, d=");
    const index_t B = x.extent(0), n = x.extent(1), m = context.extent(1);
    detail::require(context.extent(0) == B, where, [&] {
      return std::string("context has shape " + detail::shape_string(context.extents()) +
                         ", expected [b=" + std::to_string(B) + ", m, d=" + std::to_string(c_.d) +
                         "] for x " + detail::shape_string(x.extents()));
    });
    check_out(where, "out", out, std::array<index_t, 3>{B, n, out_channels()}, "[b, n, h * v]",
              detail::arg("x", x), detail::arg("context", context));
    check_position(where, n, m, nullptr);
    const rows x_rows = rows_of(x), c_rows = rows_of(context);
    run(where, x_rows, &c_rows, B, n, m, lambda_grid{1, 0}, out, options);
  }

  /// Feature maps, self-context: x [b, H, W, d] -> out [b, H, W, h * v], positions in raster order.
  void forward(tensor_view<const T, 4> x, tensor_view<T, 4> out, const lambda_options& options = {}) {
    constexpr const char* where = "attnkit::lambda_layer::forward";
    check_input(where, "x", x, "[b, H, W, d=");
    const index_t B = x.extent(0), H = x.extent(1), Wd = x.extent(2), n = H * Wd;
    check_out(where, "out", out, std::array<index_t, 4>{B, H, Wd, out_channels()}, "[b, H, W, h * v]",
              detail::arg("x", x));
    const lambda_grid map{H, Wd}, grid = n > 0 ? map : lambda_grid{};  // an empty map: no positions
    check_position(where, n, n, &map);
    rows x_rows{x.data(), B, 1, n, x.stride(0), 0, x.stride(2), x.stride(3)};
    if (H > 1 && x.stride(1) != Wd * x.stride(2))
      x_rows = {x.data(), B, H, Wd, x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
    const index_t hv = out_channels();
    if (H <= 1 || out.stride(1) == Wd * out.stride(2)) {
      const tensor_view<T, 3> o3(out.data(), {B, n, hv}, {out.stride(0), out.stride(2), out.stride(3)});
      run(where, x_rows, nullptr, B, n, n, grid, o3, options);
      return;
    }
    // `out` has no [b, H * W, h * v] view: the kernel writes a scratch, copied afterwards.
    out_scratch_.resize(static_cast<std::size_t>(std::max<index_t>(B * n * hv, 0)));
    const auto o3 = tensor_view<T, 3>::contiguous(out_scratch_.data(), {B, n, hv});
    run(where, x_rows, nullptr, B, n, n, grid, o3, options);
    for (index_t b = 0; b < B; ++b)
      for (index_t y = 0; y < H; ++y)
        for (index_t xx = 0; xx < Wd; ++xx)
          for (index_t e = 0; e < hv; ++e) out(b, y, xx, e) = o3(b, y * Wd + xx, e);
  }

  /// Writes the projections a forward pass feeds lambda_attention: queries [b, n, h, k] of x,
  /// keys [b, m, k, u] and values [b, m, v, u] of the context (pass x for a self-context).
  void project(tensor_view<const T, 3> x, tensor_view<const T, 3> context, tensor_view<T, 4> queries,
               tensor_view<T, 4> keys, tensor_view<T, 4> values, int threads = 0) {
    constexpr const char* where = "attnkit::lambda_layer::project";
    check_input(where, "x", x, "[b, n, d=");
    check_input(where, "context", context, "[b, m, d=");
    const index_t B = x.extent(0), n = x.extent(1), m = context.extent(1);
    detail::require(context.extent(0) == B, where, [&] {
      return std::string("context has shape " + detail::shape_string(context.extents()) +
                         ", expected [b=" + std::to_string(B) + ", m, d]");
    });
    const auto in_x = detail::arg("x", x), in_context = detail::arg("context", context);
    check_out(where, "queries", queries, std::array<index_t, 4>{B, n, c_.heads, c_.k}, "[b, n, h, k]", in_x,
              in_context, detail::arg("keys", keys), detail::arg("values", values));
    check_out(where, "keys", keys, std::array<index_t, 4>{B, m, c_.k, c_.u}, "[b, m, k, u]", in_x, in_context,
              detail::arg("values", values));
    check_out(where, "values", values, std::array<index_t, 4>{B, m, c_.v, c_.u}, "[b, m, v, u]", in_x,
              in_context);
    detail::check_threads(threads, where);
    const rows x_rows = rows_of(x), c_rows = rows_of(context);
    const auto p = project_all(x_rows, &c_rows, B, n, m, threads);
    auto copy = [](const auto& from, const tensor_view<T, 4>& to) {
      for (index_t a = 0; a < to.extent(0); ++a)
        for (index_t b = 0; b < to.extent(1); ++b)
          for (index_t c = 0; c < to.extent(2); ++c)
            for (index_t e = 0; e < to.extent(3); ++e) to(a, b, c, e) = from(a, b, c, e);
    };
    copy(p.q, queries);
    copy(p.k, keys);
    copy(p.v, values);
  }

  /// The position term forward() passes to lambda_attention (views of the owned table); `grid` is
  /// the feature map of a spatial local term (the other terms know their positions).
  lambda_position<T> position(lambda_grid grid = {}) const {
    const tensor_view<const T, 4> t = table_.view();
    switch (c_.position) {
      case lambda_position_kind::global:
        return lambda_position<T>::global(t);
      case lambda_position_kind::relative:
        return lambda_position<T>::relative(t, c_.grid);
      case lambda_position_kind::local:
        return lambda_position<T>::local(t, c_.spatial ? grid : lambda_grid{});
      default:
        return lambda_position<T>::none();
    }
  }

  /// Bytes of the per-call scratch the layer holds now; release_scratch() frees it.
  std::size_t scratch_bytes() const { return (scratch_.capacity() + out_scratch_.capacity()) * sizeof(T); }
  void release_scratch() {
    std::vector<T>().swap(scratch_);
    std::vector<T>().swap(out_scratch_);
  }

 private:
  /// Input rows (b, o, r) at base + b * sb + o * so + r * sr, channels with stride sc; projected
  /// row (b * outer + o) * count + r.
  struct rows {
    const T* base;
    index_t B, outer, count, sb, so, sr, sc;
  };
  struct projections {
    tensor_view<const T, 4> q, k, v;
  };

  static index_t pad(index_t x) { return (x + lanes - 1) / lanes * lanes; }

  template <class U, std::size_t R>
  tensor_view<U, R> touch(tensor<U, R>& t) {
    stale_ = true;
    return t.view();
  }

  static lambda_layer_config resolve(lambda_layer_config c) {
    constexpr const char* where = "attnkit::lambda_layer";
    detail::require(c.d >= 1 && c.heads >= 1 && c.k >= 1 && c.u >= 1 && c.v >= 0 && c.d_out >= 0, where, [&] {
      return std::string("config has d = " + std::to_string(c.d) + ", heads = " + std::to_string(c.heads) +
                         ", k = " + std::to_string(c.k) + ", u = " + std::to_string(c.u) +
                         ", v = " + std::to_string(c.v) + ": need d, heads, k, u >= 1 and v >= 0");
    });
    if (c.v == 0) {
      const index_t dout = c.d_out > 0 ? c.d_out : c.d;
      detail::require(dout % c.heads == 0, where, [&] {
        return std::string("config.v = 0 asks for v = d_out / heads, but d_out = " + std::to_string(dout) +
                           " is not a multiple of heads = " + std::to_string(c.heads));
      });
      c.v = dout / c.heads;
    }
    c.d_out = c.heads * c.v;
    const auto& g = c.grid;
    switch (c.position) {
      case lambda_position_kind::none:
        break;
      case lambda_position_kind::global:
      case lambda_position_kind::relative: {
        detail::require(g.rows >= 1 && g.cols >= 1 && c.context >= 0, where, [&] {
          return std::string(
              "a global or relative term needs config.grid = {rows, cols >= 1} (the query "
              "positions: {1, n} for sequences) and context >= 0, got rows = " +
              std::to_string(g.rows) + ", cols = " + std::to_string(g.cols) +
              ", context = " + std::to_string(c.context));
        });
        if (c.position == lambda_position_kind::global && c.context == 0) c.context = g.rows * g.cols;
        break;
      }
      case lambda_position_kind::local:
        detail::require(c.scope >= 1 && c.scope % 2 == 1, where, [&] {
          return std::string("a local term needs an odd config.scope >= 1, got " + std::to_string(c.scope));
        });
        break;
      default:
        detail::require(false, where, "config.position is not a lambda_position_kind value");
    }
    return c;
  }

  static std::array<index_t, 4> table_extents(const lambda_layer_config& c) {
    const auto& g = c.grid;
    switch (c.position) {
      case lambda_position_kind::global:
        return {g.rows * g.cols, c.context, c.k, c.u};
      case lambda_position_kind::relative:
        return {2 * g.rows - 1, 2 * g.cols - 1, c.k, c.u};
      case lambda_position_kind::local:
        return {c.spatial ? c.scope : 1, c.scope, c.k, c.u};
      default:
        return {0, 0, 0, 0};
    }
  }

  void set_norm(const char* where, tensor<T, 1>& scale, tensor<T, 1>& shift,
                const tensor_view<const T, 1>& gamma, const tensor_view<const T, 1>& beta,
                const tensor_view<const T, 1>& mean, const tensor_view<const T, 1>& var, double eps) {
    const index_t ch = scale.size();
    const char* names[] = {"gamma", "beta", "mean", "var"};
    const tensor_view<const T, 1>* views[] = {&gamma, &beta, &mean, &var};
    for (int i = 0; i < 4; ++i) {
      detail::require(views[i]->extent(0) == ch, where, [&] {
        return std::string(names[i]) + " has shape " + detail::shape_string(views[i]->extents()) +
               ", expected [" + std::to_string(ch) + "] (one per channel)";
      });
      detail::require_view(*views[i], where, names[i]);
    }
    for (index_t c = 0; c < ch; ++c)
      detail::require(static_cast<double>(var(c)) + eps > 0, where, [&] {
        return std::string("var[" + std::to_string(c) + "] + eps = " +
                           std::to_string(static_cast<double>(var(c)) + eps) + " is not positive");
      });
    for (index_t c = 0; c < ch; ++c) {
      const double s = static_cast<double>(gamma(c)) / std::sqrt(static_cast<double>(var(c)) + eps);
      scale(c) = static_cast<T>(s);
      shift(c) = static_cast<T>(static_cast<double>(beta(c)) - static_cast<double>(mean(c)) * s);
    }
    stale_ = true;
  }

  static void fold(tensor<T, 2>& w, tensor<T, 1>& bias, tensor<T, 1>& scale, tensor<T, 1>& shift) {
    for (index_t p = 0; p < w.extent(0); ++p)
      for (index_t c = 0; c < w.extent(1); ++c) w(p, c) *= scale(c);
    for (index_t c = 0; c < bias.size(); ++c) {
      bias(c) = bias(c) * scale(c) + shift(c);
      scale(c) = T(1);
      shift(c) = T(0);
    }
  }

  /// The panel [d, Pq + Pk + Pv] = [W_q diag(s_q) | W_k | W_v diag(s_v)] (zero-padded columns) and
  /// its bias row [b_q s_q + t_q | 0 | b_v s_v + t_v].
  void repack() {
    if (!stale_) return;
    const index_t ld = pq_ + pk_ + pv_, hk = c_.heads * c_.k, ku = c_.k * c_.u, vu = c_.v * c_.u;
    panel_.assign(static_cast<std::size_t>(c_.d * ld), T(0));
    bias_.assign(static_cast<std::size_t>(ld), T(0));
    for (index_t p = 0; p < c_.d; ++p) {
      T* row = panel_.data() + p * ld;
      for (index_t c = 0; c < hk; ++c) row[c] = wq_(p, c) * sq_(c);
      for (index_t c = 0; c < ku; ++c) row[pq_ + c] = wk_(p, c);
      for (index_t c = 0; c < vu; ++c) row[pq_ + pk_ + c] = wv_(p, c) * sv_(c);
    }
    for (index_t c = 0; c < hk; ++c) bias_[static_cast<std::size_t>(c)] = bq_(c) * sq_(c) + tq_(c);
    for (index_t c = 0; c < vu; ++c)
      bias_[static_cast<std::size_t>(pq_ + pk_ + c)] = bv_(c) * sv_(c) + tv_(c);
    has_bias_ = std::any_of(bias_.begin(), bias_.end(), [](T b) { return b != T(0); });
    stale_ = false;
  }

  static rows rows_of(const tensor_view<const T, 3>& x) {
    return {x.data(), x.extent(0), 1, x.extent(1), x.stride(0), 0, x.stride(1), x.stride(2)};
  }

  /// c[row, 0 .. ncols) = in[row] * panel[:, col0 .. col0 + ncols) + bias, in fixed blocks of rows.
  void project_rows(const rows& in, index_t col0, index_t ncols, T* c, index_t ldc, int threads) const {
    const index_t blocks = (in.count + row_block - 1) / row_block, tasks = in.B * in.outer * blocks;
    const T* bp = panel_.data() + col0;
    const T* bias = bias_.data() + col0;
    const index_t ldb = pq_ + pk_ + pv_;
    parallel_for(tasks, threads, [&](index_t t, int) {
      const index_t bo = t / blocks, r0 = (t % blocks) * row_block;
      const index_t nr = std::min(row_block, in.count - r0);
      const T* a = in.base + (bo / in.outer) * in.sb + (bo % in.outer) * in.so + r0 * in.sr;
      T* cr = c + (bo * in.count + r0) * ldc;
      if (has_bias_) {
        for (index_t r = 0; r < nr; ++r) std::copy(bias, bias + ncols, cr + r * ldc);
        detail::panel_product<Arch, true>(nr, c_.d, a, in.sr, in.sc, bp, ldb, cr, ldc, ncols);
      } else {
        detail::panel_product<Arch, false>(nr, c_.d, a, in.sr, in.sc, bp, ldb, cr, ldc, ncols);
      }
    });
  }

  /// Sizes the scratch and returns the views of the projections in it (nothing computed).
  projections layout(bool self, index_t B, index_t n, index_t m) {
    const index_t ldq = self ? pq_ + pk_ + pv_ : pq_, ldkv = self ? ldq : pk_ + pv_;
    const index_t need = B * n * ldq + (self ? 0 : B * m * ldkv);
    if (static_cast<index_t>(scratch_.size()) < need) scratch_.resize(static_cast<std::size_t>(need));
    const T* q = scratch_.data();
    const T* kv = self ? q + pq_ : q + B * n * ldq;
    return {tensor_view<const T, 4>(q, {B, n, c_.heads, c_.k}, {n * ldq, ldq, c_.k, 1}),
            tensor_view<const T, 4>(kv, {B, m, c_.k, c_.u}, {m * ldkv, ldkv, c_.u, 1}),
            tensor_view<const T, 4>(kv + pk_, {B, m, c_.v, c_.u}, {m * ldkv, ldkv, c_.u, 1})};
  }

  /// Projects x (and the context, or x itself when ctx is null) into the scratch.
  projections project_all(const rows& x, const rows* ctx, index_t B, index_t n, index_t m, int threads) {
    const projections p = layout(ctx == nullptr, B, n, m);
    repack();
    T* base = scratch_.data();
    if (ctx == nullptr) {
      project_rows(x, 0, pq_ + pk_ + pv_, base, pq_ + pk_ + pv_, threads);
    } else {
      project_rows(x, 0, pq_, base, pq_, threads);
      project_rows(*ctx, pq_, pk_ + pv_, base + B * n * pq_, pk_ + pv_, threads);
    }
    return p;
  }

  void run(const char* where, const rows& x, const rows* ctx, index_t B, index_t n, index_t m,
           lambda_grid grid, const tensor_view<T, 3>& out, const lambda_options& options) {
    const lambda_position<T> pos = position(grid);
    {  // the kernel's checks of the options (mask, causal, threads) before any work
      const projections p = layout(ctx == nullptr, B, n, m);
      detail::check_lambda(where, p.q, p.k, p.v, pos, out, options);
    }
    if (out.empty()) return;
    const projections p = project_all(x, ctx, B, n, m, options.threads);
    lambda_attention<Arch>(p.q, p.k, p.v, pos, out, options);
  }

  template <std::size_t R>
  void check_input(const char* where, const char* name, const tensor_view<const T, R>& x,
                   const char* want) const {
    bool ok = x.extent(R - 1) == c_.d;
    for (std::size_t i = 0; i < R; ++i) ok = ok && x.extent(i) >= 0;
    detail::require(ok, where, [&] {
      return std::string(name) + " has shape " + detail::shape_string(x.extents()) + ", expected " + want +
             std::to_string(c_.d) + "]";
    });
    detail::require_view(x, where, name);
  }

  /// Checks the output `name` (extents `want`) and that it overlaps none of `inputs`.
  template <std::size_t R, class... I>
  static void check_out(const char* where, const char* name, const tensor_view<T, R>& out,
                        const std::array<index_t, R>& want, const char* layout_name,
                        const detail::named_view<I>&... inputs) {
    detail::require(out.extents() == want, where, [&] {
      return std::string(name) + " has shape " + detail::shape_string(out.extents()) + ", expected " +
             detail::shape_string(want) + " " + layout_name;
    });
    detail::require_output(where, detail::arg(name, out), inputs...);
  }

  /// The position term fits n queries over m context positions (grid: a feature map call).
  void check_position(const char* where, index_t n, index_t m, const lambda_grid* map) const {
    const auto& g = c_.grid;
    const std::string got =
        map ? "a " + std::to_string(map->rows) + " x " + std::to_string(map->cols) + " feature map"
            : "n = " + std::to_string(n) + " queries over m = " + std::to_string(m) + " context positions";
    switch (c_.position) {
      case lambda_position_kind::global:
        detail::require(n == g.rows * g.cols && m == c_.context, where, [&] {
          return "the global position embeddings are [n=" + std::to_string(g.rows * g.cols) +
                 ", m=" + std::to_string(c_.context) + ", k, u], got " + got;
        });
        break;
      case lambda_position_kind::relative:
        detail::require(map ? map->rows == g.rows && map->cols == g.cols : n == g.rows * g.cols && m == n,
                        where, [&] {
                          return "the relative position table is for a " + std::to_string(g.rows) + " x " +
                                 std::to_string(g.cols) + " grid of queries and context, got " + got;
                        });
        break;
      case lambda_position_kind::local:
        detail::require((map != nullptr) == c_.spatial && m == n, where, [&] {
          return std::string("the local position term (scope ") + std::to_string(c_.scope) +
                 (c_.spatial ? " x " + std::to_string(c_.scope) + ") needs a feature map [b, H, W, d]"
                             : ") needs sequences [b, n, d] with m = n") +
                 ", got " + got;
        });
        break;
      default:
        break;
    }
  }

  lambda_layer_config c_;
  tensor<T, 2> wq_, wk_, wv_;
  tensor<T, 1> bq_, sq_, tq_, bv_, sv_, tv_;
  tensor<T, 4> table_;
  index_t pq_, pk_, pv_;  ///< the panel's column blocks (padded to whole registers)
  std::vector<T> panel_, bias_, scratch_, out_scratch_;
  bool stale_ = true, has_bias_ = false;
};

ATTNKIT_END_NAMESPACE
