// attnkit: the CoAtNet network (Dai et al. 2021; DESIGN 4.5) for inference on NHWC images: a
// convolutional stem, MBConv stages, transformer stages with 2D relative attention, and a
// classifier head, configured as timm's MaxxVit builds CoAtNets so that timm's checkpoints load
// under their own parameter names (coatnet/safetensors.hpp reads them from .safetensors files).
//
// Presets: network_config::coatnet_0() is the paper's CoAtNet-0 (timm "coatnet_0_224": S0 stem 64,
// S1 MBConv x2 96, S2 MBConv x3 192, S3 transformer x5 384, S4 transformer x2 768, GELU, SE after
// the depthwise conv's norm, stride in the depthwise conv, pre-logits head); coatnet_0_rw_224() is
// timm's coatnet_0_rw_224 (the layout with public ImageNet weights: depths 2-3-7-2, stem 32-64,
// SiLU, pooled stride, SE before norm2 with ReLU, attention width = input width).
//
// The forward pass runs on the library's kernels: every dense convolution and linear layer is a
// block product on weights packed once after loading (batch norms folded into the convolution
// before them, residual adds fused into the product's epilogue), depthwise convolutions are
// vectorized over channels, and attention is relative_attention_2d read in place from the qkv
// projection (timm's head-first channel order).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "ops.hpp"
#include "relative_attention.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace coatnet {

/// The kind of the blocks of a stage.
enum class block_type { mbconv, transformer };

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
/// "bias": a learned table per head over the stage's whole grid, pre-softmax, query minus key).
struct transformer_config {
  std::int64_t dim_head = 32;  ///< heads = attention width / dim_head
  double expand_ratio = 4.0;   ///< MLP hidden width = ratio * out
  bool expand_first = true;    ///< attention width = out (true) or in (false) channels
  bool shortcut_bias = true;   ///< bias of the downsampling shortcut's 1x1 expand
  activation act = activation::gelu;
  double norm_eps = 1e-6;  ///< layer norm eps (also the final norm's / the head's)
};

/// A CoAtNet: stem (3x3 stride 2 conv, batch norm + act, 3x3 conv), stages that each halve the
/// grid in their first block, and the head. image_rows and image_cols must be multiples of
/// 2^(1 + stages) (the relative tables are sized by the grid of each transformer stage).
struct network_config {
  std::int64_t image_rows = 224, image_cols = 224, in_channels = 3, num_classes = 1000;
  std::array<std::int64_t, 2> stem_width{64, 64};
  bool stem_bias = false;
  std::vector<std::int64_t> depths{2, 3, 5, 2};
  std::vector<std::int64_t> widths{96, 192, 384, 768};
  std::vector<block_type> blocks{block_type::mbconv, block_type::mbconv, block_type::transformer,
                                 block_type::transformer};
  mbconv_config conv{};
  transformer_config transformer{};
  /// 0: final layer norm on the feature map, global average pool, linear (timm ClassifierHead);
  /// > 0: global average pool, layer norm, linear to head_hidden + tanh, linear (NormMlpClassifierHead).
  std::int64_t head_hidden = 0;

  /// The paper's CoAtNet-0 (timm coatnet_0_224).
  static network_config coatnet_0() {
    network_config c;
    c.stem_width = {64, 64};
    c.depths = {2, 3, 5, 2};
    c.widths = {96, 192, 384, 768};
    c.head_hidden = 768;
    return c;
  }

  /// timm's coatnet_0_rw_224 (public ImageNet-1k weights "coatnet_0_rw_224.sw_in1k").
  static network_config coatnet_0_rw_224() {
    network_config c;
    c.stem_width = {32, 64};
    c.depths = {2, 3, 7, 2};
    c.widths = {96, 192, 384, 768};
    c.conv.stride = stride_placement::pool;
    c.conv.pre_norm_act = true;
    c.conv.expand_output = false;
    c.conv.output_bias = false;
    c.conv.se_early = true;
    c.conv.se_act = activation::relu;
    c.conv.act = activation::silu;
    c.transformer.expand_first = false;
    c.transformer.shortcut_bias = false;
    return c;
  }
};

namespace detail_net {
using namespace attnkit::detail;

/// timm's make_divisible(v, 8): round to the nearest multiple of 8, at least 8, and not below 0.9 v.
inline std::int64_t make_divisible(double v, std::int64_t divisor = 8) {
  std::int64_t n =
      std::max<std::int64_t>(divisor, static_cast<std::int64_t>(v + divisor / 2.0) / divisor * divisor);
  if (static_cast<double>(n) < 0.9 * v) n += divisor;
  return n;
}

/// One block's shape: channels in / mid (MBConv) or attention width (transformer) / out, heads,
/// the SE width, the input grid and whether it downsamples.
struct block_shape {
  block_type type = block_type::mbconv;
  std::string prefix;
  std::int64_t in = 0, mid = 0, out = 0, rd = 0, heads = 0, hidden = 0;
  std::int64_t rows = 0, cols = 0;  ///< input grid
  bool down = false;
  bool expand() const { return down && in != out; }
};

/// out = act(x * gate[b, c] * scale[c] + shift[c]) on contiguous NHWC [B, pixels, C] (gate may be
/// null: 1; out may be x). One task per image row of pixels.
template <class Arch, class T>
void scale_shift(const T* x, const T* gate, const std::vector<T>& scale, const std::vector<T>& shift,
                 activation act, T* out, index_t B, index_t pixels, index_t C, int threads) {
  constexpr index_t chunk = 64;
  const index_t per_b = (pixels + chunk - 1) / chunk;
  parallel_for(B * per_b, resolve_threads(threads, B * per_b), [&](index_t task, int) {
    const index_t b = task / per_b, p0 = task % per_b * chunk, p1 = std::min(pixels, p0 + chunk);
    const T* g = gate ? gate + b * C : nullptr;
    for (index_t p = p0; p < p1; ++p) {
      const T* xr = x + (b * pixels + p) * C;
      T* o = out + (b * pixels + p) * C;
      if (g)
        for (index_t c = 0; c < C; ++c)
          o[c] = xr[c] * g[c] * scale[static_cast<std::size_t>(c)] + shift[static_cast<std::size_t>(c)];
      else
        for (index_t c = 0; c < C; ++c)
          o[c] = xr[c] * scale[static_cast<std::size_t>(c)] + shift[static_cast<std::size_t>(c)];
      activate_row<Arch>(act, o, C);
    }
  });
}

}  // namespace detail_net

/// A CoAtNet for inference. Construct from a config, load every parameter (set_parameter under
/// timm's names, or load_safetensors), then call forward on NHWC images. forward is not
/// reentrant (it reuses the network's activation buffers); distinct networks are independent.
template <class T = float, class Arch = simd::native>
class network {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "coatnet::network: float or double");

 public:
  explicit network(const network_config& cfg) : cfg_(cfg) {
    check_config();
    build();
  }

  const network_config& config() const { return cfg_; }

  /// Every parameter the network needs: timm's name and PyTorch shape, in module order.
  std::vector<std::pair<std::string, std::vector<index_t>>> parameters() const {
    std::vector<std::pair<std::string, std::vector<index_t>>> out;
    for (const std::string& n : order_) out.emplace_back(n, params_.at(n).shape);
    return out;
  }

  /// Names of the parameters not yet set.
  std::vector<std::string> missing_parameters() const {
    std::vector<std::string> out;
    for (const std::string& n : order_)
      if (!params_.at(n).loaded) out.push_back(n);
    return out;
  }

  /// The shape of parameter `name`, or null when the network has no such parameter.
  const std::vector<index_t>* parameter_shape(const std::string& name) const {
    const auto it = params_.find(name);
    return it == params_.end() ? nullptr : &it->second.shape;
  }

  /// Sets parameter `name` from count values in PyTorch's row-major order. Throws
  /// invalid_argument (and changes nothing) for an unknown name or a wrong count.
  void set_parameter(const std::string& name, const T* data, index_t count) {
    constexpr const char* where = "attnkit::coatnet::network::set_parameter";
    const auto it = params_.find(name);
    detail::require(it != params_.end(), where, [&] { return "no parameter named \"" + name + "\""; });
    param& p = it->second;
    detail::require(count == p.numel(), where, [&] {
      return "parameter \"" + name + "\" has shape " + shape_text(p.shape) + " (" +
             std::to_string(p.numel()) + " values), got " + std::to_string(count) + " values";
    });
    detail::require(data != nullptr || count == 0, where, "data is null");
    p.data.assign(data, data + count);
    p.loaded = true;
    prepared_ = false;
  }

  /// Floating-point operations of one forward pass over `batch` images (2 per multiply-add of
  /// every convolution, linear layer and attention product).
  double flops(index_t batch = 1) const {
    double f = 0;
    const double s0 = static_cast<double>(cfg_.stem_width[0]), s1 = static_cast<double>(cfg_.stem_width[1]);
    const double stem_px = static_cast<double>(cfg_.image_rows / 2 * (cfg_.image_cols / 2));
    f += stem_px * 9 * (static_cast<double>(cfg_.in_channels) * s0 + s0 * s1);
    for (const detail_net::block_shape& b : blocks_) {
      const double in_px = static_cast<double>(b.rows * b.cols), out_px = b.down ? in_px / 4 : in_px;
      const double in = static_cast<double>(b.in), out = static_cast<double>(b.out),
                   mid = static_cast<double>(b.mid);
      if (b.expand()) f += out_px * in * out;
      if (b.type == block_type::mbconv) {
        const bool dw_stride = b.down && cfg_.conv.stride == stride_placement::depthwise;
        f += (dw_stride ? in_px : out_px) * in * mid + out_px * mid * 9 + out_px * mid * out +
             2 * mid * static_cast<double>(b.rd);
      } else {
        f += out_px * (in * 3 * mid + 2 * out_px * mid + mid * out + 2 * out * static_cast<double>(b.hidden));
      }
    }
    const double c = static_cast<double>(cfg_.widths.back());
    if (cfg_.head_hidden > 0)
      f += c * static_cast<double>(cfg_.head_hidden) +
           static_cast<double>(cfg_.head_hidden * cfg_.num_classes);
    else
      f += c * static_cast<double>(cfg_.num_classes);
    return 2 * f * static_cast<double>(batch);
  }

  /// logits [B, num_classes] of images [B, image_rows, image_cols, in_channels] (NHWC, normalized
  /// as the checkpoint expects; any strides). taps, when given, receives the stem's output, each
  /// stage's output and the final feature map (after the final norm when the head has none), as
  /// NHWC tensors. Throws invalid_argument on wrong shapes or unloaded parameters (nothing written).
  void forward(tensor_view<const T, 4> images, tensor_view<T, 2> logits, int threads = 0,
               std::vector<tensor<T, 4>>* taps = nullptr) {
    constexpr const char* where = "attnkit::coatnet::network::forward";
    const index_t B = images.extent(0);
    detail::check_shape(images, std::array<index_t, 4>{B, cfg_.image_rows, cfg_.image_cols, cfg_.in_channels},
                        where, "images");
    detail::check_shape(logits, std::array<index_t, 2>{B, cfg_.num_classes}, where, "logits");
    detail::check_output(logits, where);
    detail::check_threads(threads, where);
    const std::vector<std::string> missing = missing_parameters();
    detail::require(missing.empty(), where, [&] {
      return std::to_string(missing.size()) + " parameters are not loaded, e.g. \"" + missing.front() + "\"";
    });
    if (!prepared_) prepare();
    if (taps) taps->clear();
    if (B == 0) return;
    run(images, logits, threads, taps);
  }

  /// Allocating form: returns logits [B, num_classes].
  tensor<T, 2> forward(tensor_view<const T, 4> images, int threads = 0) {
    tensor<T, 2> logits({images.extent(0), cfg_.num_classes});
    forward(images, logits.view(), threads);
    return logits;
  }

 private:
  using packed = detail::packed_weights<T>;

  struct param {
    std::vector<index_t> shape;
    std::vector<T> data;
    bool loaded = false;
    index_t numel() const {
      index_t n = 1;
      for (index_t e : shape) n *= e;
      return n;
    }
  };

  /// A batch norm as a per-channel affine map.
  struct affine {
    std::vector<T> scale, shift;
  };

  struct block_weights {
    packed shortcut;  // pooled 1x1 expand (downsampling blocks with in != out)
    // MBConv
    affine pre, norm2;          // pre-norm; norm2 when the SE sits before it
    packed conv1, conv3;        // norm1 folded into conv1
    tensor<T, 4> dw_w;          // depthwise [mid, 1, 3, 3] (norm2 folded in when the SE is after it)
    tensor<T, 1> dw_b;          // empty when norm2 is applied after the SE
    tensor<T, 4> se_w1, se_w2;  // [rd, mid, 1, 1], [mid, rd, 1, 1]
    tensor<T, 1> se_b1, se_b2;
    // transformer
    std::vector<T> ln1_g, ln1_b, ln2_g, ln2_b;
    packed qkv, proj, fc1, fc2;
    tensor<T, 3> table;  // [heads, 2h - 1, 2w - 1], query minus key
  };

  static std::string shape_text(const std::vector<index_t>& s) {
    std::string t = "[";
    for (std::size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
    return t + "]";
  }

  void check_config() const {
    constexpr const char* where = "attnkit::coatnet::network";
    const std::size_t n = cfg_.depths.size();
    detail::require(n >= 1 && cfg_.widths.size() == n && cfg_.blocks.size() == n, where, [&] {
      return "depths, widths and blocks must have the same number (>= 1) of stages, got " +
             std::to_string(cfg_.depths.size()) + ", " + std::to_string(cfg_.widths.size()) + ", " +
             std::to_string(cfg_.blocks.size());
    });
    for (std::size_t s = 0; s < n; ++s)
      detail::require(cfg_.depths[s] >= 1 && cfg_.widths[s] >= 1, where, [&] {
        return "stage " + std::to_string(s) + " has depth " + std::to_string(cfg_.depths[s]) + " and width " +
               std::to_string(cfg_.widths[s]) + " (expected >= 1)";
      });
    const std::int64_t m = std::int64_t(1) << (n + 1);
    detail::require(
        cfg_.image_rows >= m && cfg_.image_cols >= m && cfg_.image_rows % m == 0 && cfg_.image_cols % m == 0,
        where, [&] {
          return "image " + std::to_string(cfg_.image_rows) + " x " + std::to_string(cfg_.image_cols) +
                 ": rows and cols must be positive multiples of " + std::to_string(m) +
                 " (the stem and each of the " + std::to_string(n) + " stages halve the grid)";
        });
    detail::require(cfg_.in_channels >= 1 && cfg_.num_classes >= 1 && cfg_.stem_width[0] >= 1 &&
                        cfg_.stem_width[1] >= 1 && cfg_.head_hidden >= 0,
                    where, "in_channels, num_classes and stem widths must be >= 1, head_hidden >= 0");
    detail::require(cfg_.conv.expand_ratio > 0 && cfg_.conv.se_ratio > 0 &&
                        cfg_.transformer.expand_ratio > 0 && cfg_.transformer.dim_head >= 1 &&
                        cfg_.conv.norm_eps > 0 && cfg_.transformer.norm_eps > 0,
                    where, "expand ratios, se_ratio, dim_head and norm eps must be > 0");
    detail::check_activation(cfg_.conv.act, where);
    detail::check_activation(cfg_.conv.se_act, where);
    detail::check_activation(cfg_.transformer.act, where);
  }

  void add(const std::string& name, std::vector<index_t> shape) {
    order_.push_back(name);
    params_[name].shape = std::move(shape);
  }
  void add_bn(const std::string& p, index_t c) {
    for (const char* s : {"weight", "bias", "running_mean", "running_var"}) add(p + "." + s, {c});
  }
  void add_conv(const std::string& p, index_t out, index_t in, index_t k, bool bias) {
    add(p + ".weight", {out, in, k, k});
    if (bias) add(p + ".bias", {out});
  }

  /// The blocks' shapes and the parameter list (timm's module order and names).
  void build() {
    const mbconv_config& cc = cfg_.conv;
    const transformer_config& tc = cfg_.transformer;
    add_conv("stem.conv1", cfg_.stem_width[0], cfg_.in_channels, 3, cfg_.stem_bias);
    add_bn("stem.norm1", cfg_.stem_width[0]);
    add_conv("stem.conv2", cfg_.stem_width[1], cfg_.stem_width[0], 3, cfg_.stem_bias);
    std::int64_t in = cfg_.stem_width[1], rows = cfg_.image_rows / 2, cols = cfg_.image_cols / 2;
    for (std::size_t s = 0; s < cfg_.depths.size(); ++s) {
      for (std::int64_t i = 0; i < cfg_.depths[s]; ++i) {
        detail_net::block_shape b;
        b.type = cfg_.blocks[s];
        b.prefix = "stages." + std::to_string(s) + ".blocks." + std::to_string(i) + ".";
        b.in = in;
        b.out = cfg_.widths[s];
        b.down = i == 0;
        b.rows = rows;
        b.cols = cols;
        const std::string& p = b.prefix;
        if (b.type == block_type::mbconv) {
          b.mid = detail_net::make_divisible(static_cast<double>(cc.expand_output ? b.out : b.in) *
                                             cc.expand_ratio);
          b.rd =
              static_cast<std::int64_t>(cc.se_ratio * static_cast<double>(cc.expand_output ? b.out : b.mid));
          if (b.expand()) add_conv(p + "shortcut.expand", b.out, b.in, 1, cc.output_bias);
          add_bn(p + "pre_norm", b.in);
          add_conv(p + "conv1_1x1", b.mid, b.in, 1, false);
          add_bn(p + "norm1", b.mid);
          add(p + "conv2_kxk.weight", {b.mid, 1, 3, 3});
          const std::string se = p + (cc.se_early ? "se_early" : "se");
          auto add_se = [&] {
            add_conv(se + ".fc1", b.rd, b.mid, 1, true);
            add_conv(se + ".fc2", b.mid, b.rd, 1, true);
          };
          if (cc.se_early) add_se();
          add_bn(p + "norm2", b.mid);
          if (!cc.se_early) add_se();
          add_conv(p + "conv3_1x1", b.out, b.mid, 1, cc.output_bias);
        } else {
          b.mid = tc.expand_first ? b.out : b.in;  // attention width
          b.heads = b.mid / tc.dim_head;
          b.hidden = static_cast<std::int64_t>(static_cast<double>(b.out) * tc.expand_ratio);
          detail::require(b.heads >= 1 && b.heads * tc.dim_head == b.mid, "attnkit::coatnet::network", [&] {
            return "stage " + std::to_string(s) + ": attention width " + std::to_string(b.mid) +
                   " is not a positive multiple of dim_head " + std::to_string(tc.dim_head);
          });
          const std::int64_t gr = b.down ? rows / 2 : rows, gc = b.down ? cols / 2 : cols;
          if (b.expand()) add_conv(p + "shortcut.expand", b.out, b.in, 1, tc.shortcut_bias);
          add(p + (b.down ? "norm1.norm.weight" : "norm1.weight"), {b.in});
          add(p + (b.down ? "norm1.norm.bias" : "norm1.bias"), {b.in});
          add_conv(p + "attn.qkv", 3 * b.mid, b.in, 1, true);
          add(p + "attn.rel_pos.relative_position_bias_table", {(2 * gr - 1) * (2 * gc - 1), b.heads});
          add_conv(p + "attn.proj", b.out, b.mid, 1, true);
          add(p + "norm2.weight", {b.out});
          add(p + "norm2.bias", {b.out});
          add_conv(p + "mlp.fc1", b.hidden, b.out, 1, true);
          add_conv(p + "mlp.fc2", b.out, b.hidden, 1, true);
        }
        blocks_.push_back(b);
        in = b.out;
        if (b.down) {
          rows /= 2;
          cols /= 2;
        }
      }
    }
    if (cfg_.head_hidden > 0) {
      add("head.norm.weight", {in});
      add("head.norm.bias", {in});
      add("head.pre_logits.fc.weight", {cfg_.head_hidden, in});
      add("head.pre_logits.fc.bias", {cfg_.head_hidden});
      add("head.fc.weight", {cfg_.num_classes, cfg_.head_hidden});
    } else {
      add("norm.weight", {in});
      add("norm.bias", {in});
      add("head.fc.weight", {cfg_.num_classes, in});
    }
    add("head.fc.bias", {cfg_.num_classes});
  }

  // ---- views of the loaded parameters ----
  template <std::size_t N>
  tensor_view<const T, N> view(const std::string& name) const {
    const param& p = params_.at(name);
    std::array<index_t, N> e{};
    for (std::size_t i = 0; i < N; ++i) e[i] = p.shape[i];
    return tensor_view<const T, N>::contiguous(p.data.data(), e);
  }
  tensor_view<const T, 1> bias_or_empty(const std::string& name) const {
    return params_.count(name) ? view<1>(name) : tensor_view<const T, 1>{};
  }
  const std::vector<T>& data(const std::string& name) const { return params_.at(name).data; }
  template <std::size_t N>
  tensor<T, N> copy(const std::string& name) const {
    tensor<T, N> t(view<N>(name).extents());
    std::copy(data(name).begin(), data(name).end(), t.data());
    return t;
  }

  affine batch_norm(const std::string& p) const {
    const std::vector<T>&g = data(p + ".weight"), &b = data(p + ".bias"), &m = data(p + ".running_mean"),
          &v = data(p + ".running_var");
    affine a{std::vector<T>(g.size()), std::vector<T>(g.size())};
    for (std::size_t c = 0; c < g.size(); ++c) {
      const double s = static_cast<double>(g[c]) / std::sqrt(static_cast<double>(v[c]) + cfg_.conv.norm_eps);
      a.scale[c] = static_cast<T>(s);
      a.shift[c] = static_cast<T>(static_cast<double>(b[c]) - static_cast<double>(m[c]) * s);
    }
    return a;
  }
  folded_conv<T> fold(const std::string& conv, const std::string& bn) const {
    return fold_batch_norm<T>(view<4>(conv + ".weight"), bias_or_empty(conv + ".bias"),
                              view<1>(bn + ".weight"), view<1>(bn + ".bias"), view<1>(bn + ".running_mean"),
                              view<1>(bn + ".running_var"), cfg_.conv.norm_eps);
  }
  packed pack(const std::string& conv) const {
    return detail_ops::pack_conv<Arch, T>(view<4>(conv + ".weight"), bias_or_empty(conv + ".bias"));
  }
  static packed pack(const folded_conv<T>& f) {
    return detail_ops::pack_conv<Arch, T>(f.weight.cview(), f.bias.cview());
  }
  packed pack_linear(const std::string& p) const {
    const tensor_view<const T, 2> w = view<2>(p + ".weight");
    const tensor_view<const T, 1> b = view<1>(p + ".bias");
    return detail::pack_weights<Arch, T>(
        w.extent(0), w.extent(1), [&](index_t o, index_t i) { return w(o, i); },
        [&](index_t o) { return b(o); });
  }

  /// Folds the batch norms and packs every weight for the forward pass.
  void prepare() {
    stem1_ = pack(fold("stem.conv1", "stem.norm1"));
    stem2_ = pack("stem.conv2");
    weights_.assign(blocks_.size(), block_weights{});
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      const detail_net::block_shape& b = blocks_[i];
      block_weights& w = weights_[i];
      const std::string& p = b.prefix;
      if (b.expand()) w.shortcut = pack(p + "shortcut.expand");
      if (b.type == block_type::mbconv) {
        w.pre = batch_norm(p + "pre_norm");
        w.conv1 = pack(fold(p + "conv1_1x1", p + "norm1"));
        if (cfg_.conv.se_early) {
          w.dw_w = copy<4>(p + "conv2_kxk.weight");
          w.norm2 = batch_norm(p + "norm2");
        } else {
          folded_conv<T> f = fold(p + "conv2_kxk", p + "norm2");
          w.dw_w = std::move(f.weight);
          w.dw_b = std::move(f.bias);
        }
        const std::string se = p + (cfg_.conv.se_early ? "se_early" : "se");
        w.se_w1 = copy<4>(se + ".fc1.weight");
        w.se_b1 = copy<1>(se + ".fc1.bias");
        w.se_w2 = copy<4>(se + ".fc2.weight");
        w.se_b2 = copy<1>(se + ".fc2.bias");
        w.conv3 = pack(p + "conv3_1x1");
      } else {
        const std::string n1 = p + (b.down ? "norm1.norm" : "norm1");
        w.ln1_g = data(n1 + ".weight");
        w.ln1_b = data(n1 + ".bias");
        w.ln2_g = data(p + "norm2.weight");
        w.ln2_b = data(p + "norm2.bias");
        w.qkv = pack(p + "attn.qkv");
        w.proj = pack(p + "attn.proj");
        w.fc1 = pack(p + "mlp.fc1");
        w.fc2 = pack(p + "mlp.fc2");
        // timm's table [(2h - 1) (2w - 1), heads] -> [heads, 2h - 1, 2w - 1]
        const index_t gr = b.down ? b.rows / 2 : b.rows, gc = b.down ? b.cols / 2 : b.cols;
        const index_t th = 2 * gr - 1, tw = 2 * gc - 1;
        const std::vector<T>& t = data(p + "attn.rel_pos.relative_position_bias_table");
        w.table = tensor<T, 3>({b.heads, th, tw});
        for (index_t h = 0; h < b.heads; ++h)
          for (index_t y = 0; y < th; ++y)
            for (index_t x = 0; x < tw; ++x)
              w.table(h, y, x) = t[static_cast<std::size_t>((y * tw + x) * b.heads + h)];
      }
    }
    if (cfg_.head_hidden > 0) {
      head_norm_g_ = data("head.norm.weight");
      head_norm_b_ = data("head.norm.bias");
      head_hidden_ = pack_linear("head.pre_logits.fc");
    } else {
      head_norm_g_ = data("norm.weight");
      head_norm_b_ = data("norm.bias");
    }
    head_fc_ = pack_linear("head.fc");
    prepared_ = true;
  }

  // ---- the forward pass on contiguous NHWC buffers ----
  struct act_t {
    T* p = nullptr;
    index_t B = 0, H = 0, W = 0, C = 0;
    tensor_view<T, 4> v() const { return tensor_view<T, 4>::contiguous(p, {B, H, W, C}); }
    tensor_view<const T, 4> cv() const { return tensor_view<const T, 4>::contiguous(p, {B, H, W, C}); }
    index_t pixels() const { return H * W; }
  };
  /// Buffer `role`, at least n values (grown, never shrunk: no re-zeroing across calls).
  T* buffer(int role, index_t n) {
    std::vector<T>& v = buffers_[static_cast<std::size_t>(role)];
    if (v.size() < static_cast<std::size_t>(n)) v.resize(static_cast<std::size_t>(n));
    return v.data();
  }
  act_t make(int role, index_t B, index_t H, index_t W, index_t C) {
    return act_t{buffer(role, B * H * W * C), B, H, W, C};
  }
  enum role : int { r_x0, r_x1, r_a, r_b, r_c, r_d, r_count };

  void conv(const act_t& x, const packed& w, index_t k, int stride, activation act, const act_t& out,
            const T* residual, int threads) {
    detail_ops::conv2d_packed<Arch, T>(x.cv(), w, k, k, stride, k / 2, act, out.v(), residual, threads);
  }
  void pool(const act_t& x, const act_t& out, int threads) { avg_pool_2x2<T>(x.cv(), out.v(), threads); }
  void tap(std::vector<tensor<T, 4>>* taps, const act_t& a) {
    if (!taps) return;
    tensor<T, 4> t({a.B, a.H, a.W, a.C});
    std::copy(a.p, a.p + a.B * a.H * a.W * a.C, t.data());
    taps->push_back(std::move(t));
  }

  /// MBConv: y = conv3(norm2/SE(dw(conv1(down(pre_norm(x)))))) + shortcut(x).
  void mbconv(const detail_net::block_shape& b, const block_weights& w, const act_t& x, const act_t& y,
              int threads) {
    const mbconv_config& cc = cfg_.conv;
    const index_t B = x.B;
    const T* residual = x.p;
    if (b.down) {
      const act_t p = make(r_a, B, x.H / 2, x.W / 2, b.in);
      pool(x, p, threads);
      if (b.expand())
        conv(p, w.shortcut, 1, 1, activation::none, y, nullptr, threads);
      else
        std::copy(p.p, p.p + B * p.pixels() * b.in, y.p);
      residual = y.p;
    }
    act_t t = make(r_a, B, x.H, x.W, b.in);
    detail_net::scale_shift<Arch>(x.p, static_cast<const T*>(nullptr), w.pre.scale, w.pre.shift,
                                  cc.pre_norm_act ? cc.act : activation::none, t.p, B, x.pixels(), b.in,
                                  threads);
    const bool pool_stride = b.down && cc.stride == stride_placement::pool;
    if (pool_stride) {
      const act_t p = make(r_b, B, x.H / 2, x.W / 2, b.in);
      pool(t, p, threads);
      t = p;
    }
    const act_t m1 = make(r_c, B, t.H, t.W, b.mid);
    conv(t, w.conv1, 1, 1, cc.act, m1, nullptr, threads);
    const int dw_stride = b.down && !pool_stride ? 2 : 1;
    const act_t m2 = make(r_d, B, y.H, y.W, b.mid);
    depthwise_conv2d<Arch, T>(m1.cv(), w.dw_w.cview(), w.dw_b.cview(), m2.v(), dw_stride, 1,
                              cc.se_early ? activation::none : cc.act, threads);
    const std::vector<T> gate = detail_ops::se_gates<T>(m2.cv(), w.se_w1.cview(), w.se_b1.cview(),
                                                        w.se_w2.cview(), w.se_b2.cview(), cc.se_act, threads);
    if (cc.se_early) {
      detail_net::scale_shift<Arch>(m2.p, gate.data(), w.norm2.scale, w.norm2.shift, cc.act, m2.p, B,
                                    m2.pixels(), b.mid, threads);
    } else {
      if (ones_.size() < static_cast<std::size_t>(b.mid)) {
        ones_.assign(static_cast<std::size_t>(b.mid), T(1));
        zeros_.assign(static_cast<std::size_t>(b.mid), T(0));
      }
      detail_net::scale_shift<Arch>(m2.p, gate.data(), ones_, zeros_, activation::none, m2.p, B, m2.pixels(),
                                    b.mid, threads);
    }
    conv(m2, w.conv3, 1, 1, activation::none, y, residual, threads);
  }

  /// Transformer: y = shortcut(x) + proj(attn(pool(LN(x)))); y = y + fc2(act(fc1(LN(y)))).
  void transformer(const detail_net::block_shape& b, const block_weights& w, const act_t& x, const act_t& y,
                   int threads) {
    const transformer_config& tc = cfg_.transformer;
    const index_t B = x.B;
    const T* residual = x.p;
    act_t a = make(r_a, B, x.H, x.W, b.in);
    layer_norm<T>(x.cv(), tensor_view<const T, 1>::contiguous(w.ln1_g.data(), {b.in}),
                  tensor_view<const T, 1>::contiguous(w.ln1_b.data(), {b.in}), a.v(), tc.norm_eps, threads);
    if (b.down) {
      const act_t p = make(r_b, B, x.H / 2, x.W / 2, b.in);
      pool(x, p, threads);
      if (b.expand())
        conv(p, w.shortcut, 1, 1, activation::none, y, nullptr, threads);
      else
        std::copy(p.p, p.p + B * p.pixels() * b.in, y.p);
      residual = y.p;
      pool(a, p, threads);
      a = p;
    }
    const index_t L = y.pixels(), A = b.mid, dh = tc.dim_head, heads = b.heads;
    const act_t qkv = make(r_c, B, y.H, y.W, 3 * A);
    conv(a, w.qkv, 1, 1, activation::none, qkv, nullptr, threads);
    const act_t ao = make(r_d, B, y.H, y.W, A);
    const std::array<index_t, 4> e{B, heads, L, dh}, s_in{L * 3 * A, 3 * dh, 3 * A, 1};
    relative_options ro;
    ro.offset = relative_offset::query_minus_key;
    ro.threads = threads;
    relative_attention_2d<Arch, T>(
        tensor_view<const T, 4>(qkv.p, e, s_in), tensor_view<const T, 4>(qkv.p + dh, e, s_in),
        tensor_view<const T, 4>(qkv.p + 2 * dh, e, s_in), w.table.cview(), relative_grid{y.H, y.W},
        tensor_view<T, 4>(ao.p, e, {L * A, dh, A, 1}), ro);
    conv(ao, w.proj, 1, 1, activation::none, y, residual, threads);
    const act_t n = make(r_a, B, y.H, y.W, b.out);
    layer_norm<T>(y.cv(), tensor_view<const T, 1>::contiguous(w.ln2_g.data(), {b.out}),
                  tensor_view<const T, 1>::contiguous(w.ln2_b.data(), {b.out}), n.v(), tc.norm_eps, threads);
    const act_t h = make(r_c, B, y.H, y.W, b.hidden);
    conv(n, w.fc1, 1, 1, tc.act, h, nullptr, threads);
    conv(h, w.fc2, 1, 1, activation::none, y, y.p, threads);
  }

  void run(const tensor_view<const T, 4>& images, const tensor_view<T, 2>& logits, int threads,
           std::vector<tensor<T, 4>>* taps) {
    const index_t B = images.extent(0);
    const index_t H = cfg_.image_rows / 2, W = cfg_.image_cols / 2;
    const act_t s1 = make(r_a, B, H, W, cfg_.stem_width[0]);
    detail_ops::conv2d_packed<Arch, T>(images, stem1_, 3, 3, 2, 1, cfg_.conv.act, s1.v(), nullptr, threads);
    act_t x = make(r_x0, B, H, W, cfg_.stem_width[1]);
    conv(s1, stem2_, 3, 1, activation::none, x, nullptr, threads);
    tap(taps, x);
    int cur = r_x0;
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      const detail_net::block_shape& b = blocks_[i];
      const int next = cur == r_x0 ? r_x1 : r_x0;
      const act_t y = make(next, B, b.down ? x.H / 2 : x.H, b.down ? x.W / 2 : x.W, b.out);
      if (b.type == block_type::mbconv)
        mbconv(b, weights_[i], x, y, threads);
      else
        transformer(b, weights_[i], x, y, threads);
      x = y;
      cur = next;
      if (i + 1 == blocks_.size() || blocks_[i + 1].down) tap(taps, x);
    }
    const index_t C = x.C;
    const tensor_view<const T, 1> g = tensor_view<const T, 1>::contiguous(head_norm_g_.data(), {C});
    const tensor_view<const T, 1> bt = tensor_view<const T, 1>::contiguous(head_norm_b_.data(), {C});
    const act_t pooled = make(r_a, B, 1, 1, C);
    if (cfg_.head_hidden > 0) {
      tap(taps, x);
      global_avg_pool<T>(x.cv(), tensor_view<T, 2>::contiguous(pooled.p, {B, C}), threads);
      layer_norm<T>(pooled.cv(), g, bt, pooled.v(), cfg_.transformer.norm_eps, threads);
      const act_t hid = make(r_b, B, 1, 1, cfg_.head_hidden);
      conv(pooled, head_hidden_, 1, 1, activation::tanh, hid, nullptr, threads);
      head(hid, logits, threads);
    } else {
      layer_norm<T>(x.cv(), g, bt, x.v(), cfg_.transformer.norm_eps, threads);
      tap(taps, x);
      global_avg_pool<T>(x.cv(), tensor_view<T, 2>::contiguous(pooled.p, {B, C}), threads);
      head(pooled, logits, threads);
    }
  }

  void head(const act_t& x, const tensor_view<T, 2>& logits, int threads) {
    const act_t out = make(r_c, x.B, 1, 1, cfg_.num_classes);
    conv(x, head_fc_, 1, 1, activation::none, out, nullptr, threads);
    for (index_t b = 0; b < x.B; ++b)
      for (index_t c = 0; c < cfg_.num_classes; ++c) logits(b, c) = out.p[b * cfg_.num_classes + c];
  }

  network_config cfg_;
  std::vector<detail_net::block_shape> blocks_;
  std::vector<std::string> order_;
  std::map<std::string, param> params_;
  bool prepared_ = false;
  packed stem1_, stem2_, head_hidden_, head_fc_;
  std::vector<T> head_norm_g_, head_norm_b_, ones_, zeros_;
  std::vector<block_weights> weights_;
  std::array<std::vector<T>, r_count> buffers_;
};

}  // namespace coatnet
ATTNKIT_END_NAMESPACE
