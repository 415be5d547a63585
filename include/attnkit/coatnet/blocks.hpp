// attnkit: CoAtNet's blocks for inference on NHWC feature maps (docs/design.md §4.5), configured and named
// as timm's MaxxVit builds them so that their parameters load from timm's checkpoints:
//   mbconv_block       pre-norm inverted bottleneck: batch norm (+ act), 1x1 expand (4x) + batch
//                      norm + act, depthwise 3x3 + batch norm + act, squeeze-excitation (0.25),
//                      1x1 project, plus the shortcut (a 2x2 average pool and a 1x1 expand when it
//                      downsamples; the stride sits in a pool before the expand or in the depthwise conv)
//   transformer_block  x = shortcut(x) + proj(attn(pool(LN(x)))); x = x + fc2(act(fc1(LN(x))))
//                      with 2D relative attention (heads = width / dim_head, a learned table per head
//                      over the whole grid, pre-softmax) read in place from the qkv projection
// Each block holds its parameters under timm's names inside the block ("conv1_1x1.weight",
// "attn.qkv.bias", ...), packs them once for the block products (batch norms folded into the
// convolution before them; residual adds fused into the product's epilogue), and runs forward(x,
// out) on any strides. coatnet/network.hpp stacks them into the network.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "detail/blocks.hpp"
#include "ops.hpp"
#include "parameters.hpp"
#include "relative_attention.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace coatnet {

/// Where a downsampling MBConv block puts its stride 2: a 2x2 average pool before the first 1x1
/// convolution (timm's "_rw" models, stride_mode "pool") or the depthwise convolution (the paper).
enum class stride_placement { pool, depthwise };

/// MBConv blocks (timm MaxxVitConvCfg, block_type "mbconv", norm batchnorm2d).
struct mbconv_config {
  double expand_ratio = 4.0;
  bool expand_output = true;  ///< mid = make_divisible(ratio * (out if expand_output else in), 8)
  stride_placement stride = stride_placement::depthwise;
  bool pre_norm_act = false;  ///< activation after the pre-norm batch norm
  bool output_bias = true;    ///< bias of the shortcut's 1x1 expand and of the last 1x1 conv
  bool se_early = false;      ///< squeeze-excitation between the depthwise conv and norm2 (else after)
  activation act = activation::gelu;
  activation se_act = activation::silu;
  double se_ratio = 0.25;  ///< SE width int(ratio * (out if expand_output else mid))
  double norm_eps = 1e-5;  ///< batch norm eps (also the stem's)
};

/// Transformer blocks (timm MaxxVitTransformerCfg with TransformerBlock2d, relative position bias
/// "bias": a learned table per head over the block's whole grid, pre-softmax, query minus key).
struct transformer_config {
  std::int64_t dim_head = 32;  ///< heads = attention width / dim_head
  double expand_ratio = 4.0;   ///< MLP hidden width = ratio * out
  bool expand_first = true;    ///< attention width = out (true) or in (false) channels
  bool shortcut_bias = true;   ///< bias of the downsampling shortcut's 1x1 expand
  activation act = activation::gelu;
  double norm_eps = 1e-6;  ///< layer norm eps (also the final norm's / the head's)
};

/// What both blocks share: the parameter list, the checked forward on any strides, the workspace.
template <class T>
class block_base {
 public:
  /// The block's parameters (timm names inside the block, e.g. "conv1_1x1.weight") and shapes.
  typename parameter_set<T>::list parameters() const { return ps_.parameters(); }
  std::vector<std::string> missing_parameters() const { return ps_.missing(); }
  bool loaded() const { return ps_.complete(); }
  const std::vector<index_t>* parameter_shape(const std::string& name) const { return ps_.shape(name); }

 protected:
  void set(const std::string& name, const T* data, index_t count, const char* where) {
    ps_.set(name, data, count, where);
    prepared_ = false;
  }
  /// Checks threads and parameters, then runs block.run through contiguous buffers (x and out
  /// already checked by the caller).
  template <class Block>
  void checked_forward(Block& block, const tensor_view<const T, 4>& x, const tensor_view<T, 4>& out,
                       int threads, const char* where) {
    detail::check_threads(threads, where);
    ps_.require_loaded(where);
    if (out.empty()) return;
    detail::forward_views(block, x, out, ws_, xin_, yout_, threads);
  }

  parameter_set<T> ps_;
  bool prepared_ = false;

 private:
  detail::workspace<T> ws_;
  std::vector<T> xin_, yout_;
};

/// An MBConv block (timm MbConvBlock): in -> out channels, halving the grid when `downsample`.
template <class T = float, class Arch = simd::native>
class mbconv_block : public block_base<T> {
  using block_base<T>::ps_;
  using block_base<T>::prepared_;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "coatnet::mbconv_block: float or double");

 public:
  mbconv_block(std::int64_t in, std::int64_t out, bool downsample, const mbconv_config& cfg = {})
      : cfg_(cfg), in_(in), out_(out), down_(downsample) {
    constexpr const char* where = "attnkit::coatnet::mbconv_block";
    detail::require(in >= 1 && out >= 1 && (downsample || in == out), where, [&] {
      return "in = " + std::to_string(in) + ", out = " + std::to_string(out) +
             ": expected >= 1, and in == out unless the block downsamples (its shortcut is the identity)";
    });
    detail::require(cfg.expand_ratio > 0 && cfg.se_ratio > 0 && cfg.norm_eps > 0, where,
                    "expand_ratio, se_ratio and norm_eps must be > 0");
    detail::check_activation(cfg.act, where);
    detail::check_activation(cfg.se_act, where);
    mid_ = detail::make_divisible(static_cast<double>(cfg.expand_output ? out : in) * cfg.expand_ratio);
    rd_ = static_cast<std::int64_t>(cfg.se_ratio * static_cast<double>(cfg.expand_output ? out : mid_));
    detail::require(rd_ >= 1, where, "the squeeze-excitation width int(se_ratio * channels) must be >= 1");
    if (expand()) ps_.add_conv("shortcut.expand", out_, in_, 1, cfg.output_bias);
    ps_.add_batch_norm("pre_norm", in_);
    ps_.add_conv("conv1_1x1", mid_, in_, 1, false);
    ps_.add_batch_norm("norm1", mid_);
    ps_.add("conv2_kxk.weight", {mid_, 1, 3, 3});
    if (cfg.se_early) add_se();
    ps_.add_batch_norm("norm2", mid_);
    if (!cfg.se_early) add_se();
    ps_.add_conv("conv3_1x1", out_, mid_, 1, cfg.output_bias);
  }

  std::int64_t in_channels() const { return in_; }
  std::int64_t out_channels() const { return out_; }
  std::int64_t mid_channels() const { return mid_; }
  std::int64_t se_channels() const { return rd_; }
  bool downsample() const { return down_; }

  void set_parameter(const std::string& name, const T* data, index_t count) {
    this->set(name, data, count, "attnkit::coatnet::mbconv_block::set_parameter");
  }

  /// Multiply-adds x 2 of one call on B images of H x W (input grid).
  double flops(index_t B, index_t H, index_t W) const {
    const double in_px = static_cast<double>(H * W), out_px = down_ ? in_px / 4 : in_px;
    const double in = static_cast<double>(in_), out = static_cast<double>(out_),
                 mid = static_cast<double>(mid_);
    const bool dw_stride = down_ && cfg_.stride == stride_placement::depthwise;
    double f = (dw_stride ? in_px : out_px) * in * mid + out_px * mid * 9 + out_px * mid * out +
               2 * mid * static_cast<double>(rd_);
    if (expand()) f += out_px * in * out;
    return 2 * f * static_cast<double>(B);
  }

  /// out [B, H', W', out] = block(x [B, H, W, in]) (H' = H / 2 when downsampling, H even); any
  /// strides; out must not overlap x. Throws invalid_argument (nothing written) on wrong shapes or
  /// unloaded parameters. Same bits for any thread count.
  void forward(tensor_view<const T, 4> x, tensor_view<T, 4> out, int threads = 0) {
    constexpr const char* where = "attnkit::coatnet::mbconv_block::forward";
    detail::check_block_views(x, out, in_, out_, down_, where);
    this->checked_forward(*this, x, out, threads, where);
  }

  /// Internal: the forward pass on contiguous buffers (checked by the caller).
  void run(const detail::act_t<T>& x, const detail::act_t<T>& y, detail::workspace<T>& ws, int threads) {
    using wk = detail::workspace<T>;
    if (!prepared_) prepare();
    const mbconv_config& cc = cfg_;
    const index_t B = x.B;
    const T* residual = x.p;
    if (down_) {
      detail::pooled_shortcut<Arch>(x, expand() ? &shortcut_ : nullptr, y, ws, wk::a, threads);
      residual = y.p;
    }
    detail::act_t<T> t = ws.make(wk::a, B, x.H, x.W, in_);
    detail::scale_shift<Arch>(x.p, static_cast<const T*>(nullptr), pre_.scale, pre_.shift,
                              cc.pre_norm_act ? cc.act : activation::none, t.p, B, x.pixels(), in_, threads);
    const bool pool_stride = down_ && cc.stride == stride_placement::pool;
    if (pool_stride) {
      const detail::act_t<T> p = ws.make(wk::b, B, x.H / 2, x.W / 2, in_);
      avg_pool_2x2<T>(t.cv(), p.v(), threads);
      t = p;
    }
    const detail::act_t<T> m1 = ws.make(wk::c, B, t.H, t.W, mid_);
    detail::conv<Arch>(t, conv1_, 1, 1, cc.act, m1, static_cast<const T*>(nullptr), threads);
    const detail::act_t<T> m2 = ws.make(wk::d, B, y.H, y.W, mid_);
    depthwise_conv2d<Arch, T>(m1.cv(), dw_w_.cview(), dw_b_.cview(), m2.v(), down_ && !pool_stride ? 2 : 1, 1,
                              cc.se_early ? activation::none : cc.act, threads);
    const std::vector<T> gate = detail::se_gates<T>(m2.cv(), se_w1_.cview(), se_b1_.cview(), se_w2_.cview(),
                                                    se_b2_.cview(), cc.se_act, threads);
    // SE before norm2: act(norm2(x * gate)); after it (norm2 folded into the depthwise conv): x * gate
    detail::scale_shift<Arch>(m2.p, gate.data(), norm2_.scale, norm2_.shift,
                              cc.se_early ? cc.act : activation::none, m2.p, B, m2.pixels(), mid_, threads);
    detail::conv<Arch>(m2, conv3_, 1, 1, activation::none, y, residual, threads);
  }

 private:
  bool expand() const { return down_ && in_ != out_; }
  void add_se() {
    const std::string se = cfg_.se_early ? "se_early" : "se";
    ps_.add_conv(se + ".fc1", rd_, mid_, 1, true);
    ps_.add_conv(se + ".fc2", mid_, rd_, 1, true);
  }

  void prepare() {
    const double eps = cfg_.norm_eps;
    if (expand()) shortcut_ = detail::pack_plain<Arch>(ps_, "shortcut.expand");
    pre_ = detail::batch_norm_affine(ps_, "pre_norm", eps);
    conv1_ = detail::pack_folded<Arch>(ps_, "conv1_1x1", "norm1", eps);
    if (cfg_.se_early) {
      dw_w_ = ps_.template copy<4>("conv2_kxk.weight");
      dw_b_ = tensor<T, 1>();
      norm2_ = detail::batch_norm_affine(ps_, "norm2", eps);
    } else {
      folded_conv<T> f = fold_batch_norm<T>(
          ps_.template view<4>("conv2_kxk.weight"), tensor_view<const T, 1>{},
          ps_.template view<1>("norm2.weight"), ps_.template view<1>("norm2.bias"),
          ps_.template view<1>("norm2.running_mean"), ps_.template view<1>("norm2.running_var"), eps);
      dw_w_ = std::move(f.weight);
      dw_b_ = std::move(f.bias);
      norm2_ = detail::affine<T>{std::vector<T>(static_cast<std::size_t>(mid_), T(1)),
                                 std::vector<T>(static_cast<std::size_t>(mid_), T(0))};
    }
    const std::string se = cfg_.se_early ? "se_early" : "se";
    se_w1_ = ps_.template copy<4>(se + ".fc1.weight");
    se_b1_ = ps_.template copy<1>(se + ".fc1.bias");
    se_w2_ = ps_.template copy<4>(se + ".fc2.weight");
    se_b2_ = ps_.template copy<1>(se + ".fc2.bias");
    conv3_ = detail::pack_plain<Arch>(ps_, "conv3_1x1");
    prepared_ = true;
  }

  mbconv_config cfg_;
  std::int64_t in_, out_, mid_ = 0, rd_ = 0;
  bool down_;
  detail::packed_weights<T> shortcut_, conv1_, conv3_;
  detail::affine<T> pre_, norm2_;
  tensor<T, 4> dw_w_, se_w1_, se_w2_;
  tensor<T, 1> dw_b_, se_b1_, se_b2_;
};

/// A transformer block (timm TransformerBlock2d with RelPosBias): in -> out channels on an input
/// grid of rows x cols, halving it when `downsample`; the relative table covers the attention's
/// grid (the output grid).
template <class T = float, class Arch = simd::native>
class transformer_block : public block_base<T> {
  using block_base<T>::ps_;
  using block_base<T>::prepared_;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "coatnet::transformer_block: float or double");

 public:
  transformer_block(std::int64_t in, std::int64_t out, bool downsample, std::int64_t rows, std::int64_t cols,
                    const transformer_config& cfg = {})
      : cfg_(cfg), in_(in), out_(out), down_(downsample), rows_(rows), cols_(cols) {
    constexpr const char* where = "attnkit::coatnet::transformer_block";
    detail::require(in >= 1 && out >= 1 && (downsample || in == out), where, [&] {
      return "in = " + std::to_string(in) + ", out = " + std::to_string(out) +
             ": expected >= 1, and in == out unless the block downsamples (its shortcut is the identity)";
    });
    detail::require(rows >= 1 && cols >= 1 && (!downsample || (rows % 2 == 0 && cols % 2 == 0)), where, [&] {
      return "grid " + std::to_string(rows) + " x " + std::to_string(cols) +
             ": expected >= 1, and even when the block downsamples";
    });
    detail::require(cfg.dim_head >= 1 && cfg.expand_ratio > 0 && cfg.norm_eps > 0, where,
                    "dim_head, expand_ratio and norm_eps must be > 0");
    detail::check_activation(cfg.act, where);
    width_ = cfg.expand_first ? out : in;
    heads_ = width_ / cfg.dim_head;
    detail::require(heads_ >= 1 && heads_ * cfg.dim_head == width_, where, [&] {
      return "attention width " + std::to_string(width_) + " is not a positive multiple of dim_head " +
             std::to_string(cfg.dim_head);
    });
    hidden_ = static_cast<std::int64_t>(static_cast<double>(out) * cfg.expand_ratio);
    detail::require(hidden_ >= 1, where, "the MLP width out * expand_ratio must be >= 1");
    const std::int64_t gr = grid_rows(), gc = grid_cols();
    if (expand()) ps_.add_conv("shortcut.expand", out_, in_, 1, cfg.shortcut_bias);
    ps_.add(down_ ? "norm1.norm.weight" : "norm1.weight", {in_});
    ps_.add(down_ ? "norm1.norm.bias" : "norm1.bias", {in_});
    ps_.add_conv("attn.qkv", 3 * width_, in_, 1, true);
    ps_.add("attn.rel_pos.relative_position_bias_table", {(2 * gr - 1) * (2 * gc - 1), heads_});
    ps_.add_conv("attn.proj", out_, width_, 1, true);
    ps_.add("norm2.weight", {out_});
    ps_.add("norm2.bias", {out_});
    ps_.add_conv("mlp.fc1", hidden_, out_, 1, true);
    ps_.add_conv("mlp.fc2", out_, hidden_, 1, true);
  }

  std::int64_t in_channels() const { return in_; }
  std::int64_t out_channels() const { return out_; }
  std::int64_t attention_width() const { return width_; }
  std::int64_t heads() const { return heads_; }
  std::int64_t mlp_width() const { return hidden_; }
  bool downsample() const { return down_; }
  std::int64_t grid_rows() const { return down_ ? rows_ / 2 : rows_; }  ///< the attention's grid
  std::int64_t grid_cols() const { return down_ ? cols_ / 2 : cols_; }

  void set_parameter(const std::string& name, const T* data, index_t count) {
    this->set(name, data, count, "attnkit::coatnet::transformer_block::set_parameter");
  }

  /// Multiply-adds x 2 of one call on B images (of the block's grid).
  double flops(index_t B) const {
    const double px = static_cast<double>(grid_rows() * grid_cols());
    const double in = static_cast<double>(in_), out = static_cast<double>(out_),
                 w = static_cast<double>(width_);
    double f = px * (in * 3 * w + 2 * px * w + w * out + 2 * out * static_cast<double>(hidden_));
    if (expand()) f += px * in * out;
    return 2 * f * static_cast<double>(B);
  }

  /// out [B, H', W', out] = block(x [B, rows, cols, in]) (H' = rows / 2 when downsampling); any
  /// strides; out must not overlap x. Throws invalid_argument (nothing written) on wrong shapes or
  /// unloaded parameters. Same bits for any thread count.
  void forward(tensor_view<const T, 4> x, tensor_view<T, 4> out, int threads = 0) {
    constexpr const char* where = "attnkit::coatnet::transformer_block::forward";
    detail::check_block_views(x, out, in_, out_, down_, where);
    detail::require(x.extent(1) == rows_ && x.extent(2) == cols_, where, [&] {
      return "x has shape " + detail::shape_string(x.extents()) + ": the block's grid is " +
             std::to_string(rows_) + " x " + std::to_string(cols_) +
             " (its relative table is sized for it; see resize_relative_table)";
    });
    this->checked_forward(*this, x, out, threads, where);
  }

  /// Internal: the forward pass on contiguous buffers (checked by the caller).
  void run(const detail::act_t<T>& x, const detail::act_t<T>& y, detail::workspace<T>& ws, int threads) {
    using wk = detail::workspace<T>;
    if (!prepared_) prepare();
    const index_t B = x.B;
    const T* residual = x.p;
    detail::act_t<T> a = ws.make(wk::a, B, x.H, x.W, in_);
    layer_norm<T>(x.cv(), vec(ln1_g_), vec(ln1_b_), a.v(), cfg_.norm_eps, threads);
    if (down_) {
      detail::pooled_shortcut<Arch>(x, expand() ? &shortcut_ : nullptr, y, ws, wk::b, threads);
      residual = y.p;
      const detail::act_t<T> p = ws.make(wk::b, B, x.H / 2, x.W / 2, in_);
      avg_pool_2x2<T>(a.cv(), p.v(), threads);
      a = p;
    }
    const index_t L = y.pixels(), A = width_, dh = cfg_.dim_head;
    const detail::act_t<T> qkv = ws.make(wk::c, B, y.H, y.W, 3 * A);
    detail::conv<Arch>(a, qkv_, 1, 1, activation::none, qkv, static_cast<const T*>(nullptr), threads);
    const detail::act_t<T> ao = ws.make(wk::d, B, y.H, y.W, A);
    // timm's head-first channels: head h's q, k, v at h 3 dh + [0, dh), [dh, 2 dh), [2 dh, 3 dh)
    const std::array<index_t, 4> e{B, heads_, L, dh}, s{L * 3 * A, 3 * dh, 3 * A, 1};
    relative_options ro;
    ro.offset = relative_offset::query_minus_key;
    ro.threads = threads;
    relative_attention_2d<Arch, T>(
        tensor_view<const T, 4>(qkv.p, e, s), tensor_view<const T, 4>(qkv.p + dh, e, s),
        tensor_view<const T, 4>(qkv.p + 2 * dh, e, s), table_.cview(), relative_grid{y.H, y.W},
        tensor_view<T, 4>(ao.p, e, {L * A, dh, A, 1}), ro);
    detail::conv<Arch>(ao, proj_, 1, 1, activation::none, y, residual, threads);
    const detail::act_t<T> n = ws.make(wk::a, B, y.H, y.W, out_);
    layer_norm<T>(y.cv(), vec(ln2_g_), vec(ln2_b_), n.v(), cfg_.norm_eps, threads);
    const detail::act_t<T> h = ws.make(wk::c, B, y.H, y.W, hidden_);
    detail::conv<Arch>(n, fc1_, 1, 1, cfg_.act, h, static_cast<const T*>(nullptr), threads);
    detail::conv<Arch>(h, fc2_, 1, 1, activation::none, y, y.p, threads);
  }

 private:
  bool expand() const { return down_ && in_ != out_; }
  static tensor_view<const T, 1> vec(const std::vector<T>& v) {
    return tensor_view<const T, 1>::contiguous(v.data(), {static_cast<index_t>(v.size())});
  }

  void prepare() {
    if (expand()) shortcut_ = detail::pack_plain<Arch>(ps_, "shortcut.expand");
    const std::string n1 = down_ ? "norm1.norm" : "norm1";
    ln1_g_ = ps_.data(n1 + ".weight");
    ln1_b_ = ps_.data(n1 + ".bias");
    ln2_g_ = ps_.data("norm2.weight");
    ln2_b_ = ps_.data("norm2.bias");
    qkv_ = detail::pack_plain<Arch>(ps_, "attn.qkv");
    proj_ = detail::pack_plain<Arch>(ps_, "attn.proj");
    fc1_ = detail::pack_plain<Arch>(ps_, "mlp.fc1");
    fc2_ = detail::pack_plain<Arch>(ps_, "mlp.fc2");
    // timm's table [(2h - 1) (2w - 1), heads] -> [heads, 2h - 1, 2w - 1]
    const index_t th = 2 * grid_rows() - 1, tw = 2 * grid_cols() - 1;
    const std::vector<T>& t = ps_.data("attn.rel_pos.relative_position_bias_table");
    table_ = tensor<T, 3>({heads_, th, tw});
    for (index_t h = 0; h < heads_; ++h)
      for (index_t y = 0; y < th; ++y)
        for (index_t x = 0; x < tw; ++x)
          table_(h, y, x) = t[static_cast<std::size_t>((y * tw + x) * heads_ + h)];
    prepared_ = true;
  }

  transformer_config cfg_;
  std::int64_t in_, out_, width_ = 0, heads_ = 0, hidden_ = 0;
  bool down_;
  std::int64_t rows_, cols_;
  detail::packed_weights<T> shortcut_, qkv_, proj_, fc1_, fc2_;
  std::vector<T> ln1_g_, ln1_b_, ln2_g_, ln2_b_;
  tensor<T, 3> table_;
};

}  // namespace coatnet
ATTNKIT_END_NAMESPACE
