// attnkit: the CoAtNet network (Dai et al. 2021; docs/design.md §4.5) for inference on NHWC images: a
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
// The stages are coatnet/blocks.hpp's mbconv_block and transformer_block, sharing one set of
// activation buffers: every dense convolution and linear layer is a block product on weights packed
// once after loading (batch norms folded into the convolution before them, residual adds fused into
// the product's epilogue), depthwise convolutions are vectorized over channels, and attention is
// relative_attention_2d read in place from the qkv projection (timm's head-first channel order).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "blocks.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace coatnet {

/// The kind of the blocks of a stage.
enum class block_type { mbconv, transformer };

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

/// A CoAtNet for inference. Construct from a config, load every parameter (set_parameter under
/// timm's names, or load_safetensors), then call forward on NHWC images. forward is not
/// reentrant (it reuses the network's activation buffers); distinct networks are independent.
template <class T = float, class Arch = simd::native>
class network {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "coatnet::network: float or double");

 public:
  using mbconv = mbconv_block<T, Arch>;
  using transformer = transformer_block<T, Arch>;

  explicit network(const network_config& cfg) : cfg_(cfg) {
    check_config();
    build();
  }

  const network_config& config() const { return cfg_; }

  /// Every parameter the network needs: timm's name and PyTorch shape, in module order.
  typename parameter_set<T>::list parameters() const {
    typename parameter_set<T>::list out = stem_.parameters();
    for (const stage_block& b : blocks_)
      for (auto& [n, shape] :
           b.type == block_type::mbconv ? mb_[b.index].parameters() : tb_[b.index].parameters())
        out.emplace_back(b.prefix + n, shape);
    for (auto& p : head_.parameters()) out.push_back(p);
    return out;
  }

  /// Names of the parameters not yet set.
  std::vector<std::string> missing_parameters() const {
    std::vector<std::string> out = stem_.missing();
    for (const stage_block& b : blocks_)
      for (const std::string& n : b.type == block_type::mbconv ? mb_[b.index].missing_parameters()
                                                               : tb_[b.index].missing_parameters())
        out.push_back(b.prefix + n);
    for (const std::string& n : head_.missing()) out.push_back(n);
    return out;
  }

  /// True when every parameter is set.
  bool loaded() const {
    if (!stem_.complete() || !head_.complete()) return false;
    for (const stage_block& b : blocks_)
      if (!(b.type == block_type::mbconv ? mb_[b.index].loaded() : tb_[b.index].loaded())) return false;
    return true;
  }

  /// The shape of parameter `name`, or null when the network has no such parameter.
  const std::vector<index_t>* parameter_shape(const std::string& name) const {
    if (const std::vector<index_t>* s = stem_.shape(name)) return s;
    if (const std::vector<index_t>* s = head_.shape(name)) return s;
    const stage_block* b = find_block(name);
    if (!b) return nullptr;
    const std::string local = name.substr(b->prefix.size());
    return b->type == block_type::mbconv ? mb_[b->index].parameter_shape(local)
                                         : tb_[b->index].parameter_shape(local);
  }

  /// Sets parameter `name` from count values in PyTorch's row-major order. Throws
  /// invalid_argument (and changes nothing) for an unknown name or a wrong count.
  void set_parameter(const std::string& name, const T* data, index_t count) {
    constexpr const char* where = "attnkit::coatnet::network::set_parameter";
    const std::vector<index_t>* shape = parameter_shape(name);
    detail::require(shape != nullptr, where, [&] { return "no parameter named \"" + name + "\""; });
    if (stem_.has(name)) {
      stem_.set(name, data, count, where);
    } else if (head_.has(name)) {
      head_.set(name, data, count, where);
    } else {
      const stage_block* b = find_block(name);
      detail::require(count == numel(*shape), where, [&] {
        return "parameter \"" + name + "\" has shape " + parameter_set<T>::text(*shape) + " (" +
               std::to_string(numel(*shape)) + " values), got " + std::to_string(count) + " values";
      });
      const std::string local = name.substr(b->prefix.size());
      if (b->type == block_type::mbconv)
        mb_[b->index].set_parameter(local, data, count);
      else
        tb_[b->index].set_parameter(local, data, count);
    }
    prepared_ = false;
  }

  /// The blocks of the stages, in order (their parameters are set through the network).
  const std::vector<mbconv>& mbconv_blocks() const { return mb_; }
  const std::vector<transformer>& transformer_blocks() const { return tb_; }

  /// Floating-point operations of one forward pass over `batch` images (2 per multiply-add of
  /// every convolution, linear layer and attention product).
  double flops(index_t batch = 1) const {
    const double s0 = static_cast<double>(cfg_.stem_width[0]), s1 = static_cast<double>(cfg_.stem_width[1]);
    const double stem_px = static_cast<double>(cfg_.image_rows / 2 * (cfg_.image_cols / 2));
    double f =
        2 * stem_px * 9 * (static_cast<double>(cfg_.in_channels) * s0 + s0 * s1) * static_cast<double>(batch);
    for (const stage_block& b : blocks_)
      f += b.type == block_type::mbconv ? mb_[b.index].flops(batch, b.rows, b.cols)
                                        : tb_[b.index].flops(batch);
    const double c = static_cast<double>(cfg_.widths.back());
    const double head = cfg_.head_hidden > 0 ? c * static_cast<double>(cfg_.head_hidden) +
                                                   static_cast<double>(cfg_.head_hidden * cfg_.num_classes)
                                             : c * static_cast<double>(cfg_.num_classes);
    return f + 2 * head * static_cast<double>(batch);
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
    detail::require_output(where, detail::arg("logits", logits), detail::arg("images", images));
    detail::check_threads(threads, where);
    detail::require(loaded(), where, [&] {  // the list only when something is missing
      const std::vector<std::string> missing = missing_parameters();
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
  using act = detail::act_t<T>;
  using wk = detail::workspace<T>;

  struct stage_block {
    block_type type;
    std::size_t index;   // into mb_ or tb_
    std::string prefix;  // "stages.<s>.blocks.<i>."
    index_t rows, cols;  // input grid
    bool last_of_stage;
  };

  static index_t numel(const std::vector<index_t>& s) {
    index_t n = 1;
    for (index_t e : s) n *= e;
    return n;
  }
  const stage_block* find_block(const std::string& name) const {
    for (const stage_block& b : blocks_)
      if (name.compare(0, b.prefix.size(), b.prefix) == 0) return &b;
    return nullptr;
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
      detail::require(cfg_.depths[s] >= 1 && cfg_.widths[s] >= 1 &&
                          (cfg_.blocks[s] == block_type::mbconv || cfg_.blocks[s] == block_type::transformer),
                      where, [&] {
                        return "stage " + std::to_string(s) + " has depth " + std::to_string(cfg_.depths[s]) +
                               " and width " + std::to_string(cfg_.widths[s]) +
                               " (expected >= 1) or an invalid block type";
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
    detail::require(cfg_.conv.norm_eps > 0 && cfg_.transformer.norm_eps > 0, where, "norm eps must be > 0");
    detail::check_activation(cfg_.conv.act, where);
  }

  /// The blocks (timm's module order and names) and the stem's and head's parameters.
  void build() {
    stem_.add_conv("stem.conv1", cfg_.stem_width[0], cfg_.in_channels, 3, cfg_.stem_bias);
    stem_.add_batch_norm("stem.norm1", cfg_.stem_width[0]);
    stem_.add_conv("stem.conv2", cfg_.stem_width[1], cfg_.stem_width[0], 3, cfg_.stem_bias);
    std::int64_t in = cfg_.stem_width[1], rows = cfg_.image_rows / 2, cols = cfg_.image_cols / 2;
    for (std::size_t s = 0; s < cfg_.depths.size(); ++s)
      for (std::int64_t i = 0; i < cfg_.depths[s]; ++i) {
        const bool down = i == 0;
        const std::string prefix = "stages." + std::to_string(s) + ".blocks." + std::to_string(i) + ".";
        const bool last = i + 1 == cfg_.depths[s];
        if (cfg_.blocks[s] == block_type::mbconv) {
          blocks_.push_back({block_type::mbconv, mb_.size(), prefix, rows, cols, last});
          mb_.emplace_back(in, cfg_.widths[s], down, cfg_.conv);
        } else {
          blocks_.push_back({block_type::transformer, tb_.size(), prefix, rows, cols, last});
          tb_.emplace_back(in, cfg_.widths[s], down, rows, cols, cfg_.transformer);
        }
        in = cfg_.widths[s];
        if (down) {
          rows /= 2;
          cols /= 2;
        }
      }
    if (cfg_.head_hidden > 0) {
      head_.add("head.norm.weight", {in});
      head_.add("head.norm.bias", {in});
      head_.add("head.pre_logits.fc.weight", {cfg_.head_hidden, in});
      head_.add("head.pre_logits.fc.bias", {cfg_.head_hidden});
      head_.add("head.fc.weight", {cfg_.num_classes, cfg_.head_hidden});
    } else {
      head_.add("norm.weight", {in});
      head_.add("norm.bias", {in});
      head_.add("head.fc.weight", {cfg_.num_classes, in});
    }
    head_.add("head.fc.bias", {cfg_.num_classes});
  }

  packed pack_linear(const std::string& p) const {
    return detail::pack_linear<Arch, T>(head_.template view<2>(p + ".weight"), head_.optional(p + ".bias"));
  }

  /// Folds the stem's batch norm and packs the stem's and head's weights (the blocks pack their
  /// own on their first run).
  void prepare() {
    stem1_ = detail::pack_folded<Arch>(stem_, "stem.conv1", "stem.norm1", cfg_.conv.norm_eps);
    stem2_ = detail::pack_plain<Arch>(stem_, "stem.conv2");
    const std::string norm = cfg_.head_hidden > 0 ? "head.norm" : "norm";
    head_norm_g_ = head_.data(norm + ".weight");
    head_norm_b_ = head_.data(norm + ".bias");
    if (cfg_.head_hidden > 0) head_hidden_ = pack_linear("head.pre_logits.fc");
    head_fc_ = pack_linear("head.fc");
    prepared_ = true;
  }

  static void tap(std::vector<tensor<T, 4>>* taps, const act& a) {
    if (!taps) return;
    tensor<T, 4> t({a.B, a.H, a.W, a.C});
    std::copy(a.p, a.p + a.size(), t.data());
    taps->push_back(std::move(t));
  }

  void run(const tensor_view<const T, 4>& images, const tensor_view<T, 2>& logits, int threads,
           std::vector<tensor<T, 4>>* taps) {
    const index_t B = images.extent(0);
    const index_t H = cfg_.image_rows / 2, W = cfg_.image_cols / 2;
    const act s1 = ws_.make(wk::a, B, H, W, cfg_.stem_width[0]);
    detail::conv2d_packed<Arch, T>(images, stem1_, 3, 3, 2, 1, cfg_.conv.act, s1.v(), nullptr, threads);
    act x = ws_.make(wk::x0, B, H, W, cfg_.stem_width[1]);
    detail::conv<Arch>(s1, stem2_, 3, 1, activation::none, x, static_cast<const T*>(nullptr), threads);
    tap(taps, x);
    int cur = wk::x0;
    for (const stage_block& b : blocks_) {
      const int next = cur == wk::x0 ? wk::x1 : wk::x0;
      const bool mb = b.type == block_type::mbconv;
      const bool down = mb ? mb_[b.index].downsample() : tb_[b.index].downsample();
      const index_t out = mb ? mb_[b.index].out_channels() : tb_[b.index].out_channels();
      const act y = ws_.make(next, B, down ? x.H / 2 : x.H, down ? x.W / 2 : x.W, out);
      if (mb)
        mb_[b.index].run(x, y, ws_, threads);
      else
        tb_[b.index].run(x, y, ws_, threads);
      x = y;
      cur = next;
      if (b.last_of_stage) tap(taps, x);
    }
    const index_t C = x.C;
    const tensor_view<const T, 1> g = tensor_view<const T, 1>::contiguous(head_norm_g_.data(), {C});
    const tensor_view<const T, 1> bt = tensor_view<const T, 1>::contiguous(head_norm_b_.data(), {C});
    const act pooled = ws_.make(wk::a, B, 1, 1, C);
    const act out = ws_.make(wk::c, B, 1, 1, cfg_.num_classes);
    if (cfg_.head_hidden > 0) {
      tap(taps, x);
      global_avg_pool<T>(x.cv(), tensor_view<T, 2>::contiguous(pooled.p, {B, C}), threads);
      layer_norm<T>(pooled.cv(), g, bt, pooled.v(), cfg_.transformer.norm_eps, threads);
      const act hid = ws_.make(wk::b, B, 1, 1, cfg_.head_hidden);
      detail::conv<Arch>(pooled, head_hidden_, 1, 1, activation::tanh, hid, static_cast<const T*>(nullptr),
                         threads);
      detail::conv<Arch>(hid, head_fc_, 1, 1, activation::none, out, static_cast<const T*>(nullptr), threads);
    } else {
      layer_norm<T>(x.cv(), g, bt, x.v(), cfg_.transformer.norm_eps, threads);
      tap(taps, x);
      global_avg_pool<T>(x.cv(), tensor_view<T, 2>::contiguous(pooled.p, {B, C}), threads);
      detail::conv<Arch>(pooled, head_fc_, 1, 1, activation::none, out, static_cast<const T*>(nullptr),
                         threads);
    }
    for (index_t b = 0; b < B; ++b)
      for (index_t c = 0; c < cfg_.num_classes; ++c) logits(b, c) = out.p[b * cfg_.num_classes + c];
  }

  network_config cfg_;
  parameter_set<T> stem_, head_;
  std::vector<stage_block> blocks_;
  std::vector<mbconv> mb_;
  std::vector<transformer> tb_;
  bool prepared_ = false;
  packed stem1_, stem2_, head_hidden_, head_fc_;
  std::vector<T> head_norm_g_, head_norm_b_;
  wk ws_;
};

}  // namespace coatnet
ATTNKIT_END_NAMESPACE
