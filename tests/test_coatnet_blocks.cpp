// attnkit tests: CoAtNet's blocks (coatnet/blocks.hpp) against the fp64 definitions of timm's
// MbConvBlock and TransformerBlock2d (reference/coatnet_ref.hpp: one loop per layer, no folding or
// fusion), over the config switches of both timm layouts and mixtures of them (stride in a pool or
// in the depthwise conv, SE before or after norm2, pre-norm with or without act, expansion from
// the input or the output width, biases on or off, attention width from in or out), downsampling
// with and without a channel change, odd and non-square grids, channel counts that are no multiple
// of a register, several heads. Float and double on every arch the build runs; strided x and out
// (same bits as contiguous, nothing written outside out); threads 1, 2 and 3 (same bits); invalid
// arguments. Parameters are float-representable, so one fp64 reference serves both types.
// Tolerance: |y - ref| <= tol (1 + |ref|) with tol = 1e-5 in float (a block is a few chained
// products of <= 400 terms of magnitude <= 1, each rounding at 2^-24 relative, times batch-norm
// gains <= 2; seen <= 3e-6) and 1e-11 in double.
#include <string>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include <attnkit/coatnet/blocks.hpp>

#include "reference/coatnet_ref.hpp"

namespace {

using namespace attnkit_test;
namespace co = attnkit::coatnet;
using co::activation;

template <class T>
constexpr double tol() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-11;
}

bool ends_with(const std::string& s, const std::string& t) {
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

/// Random float-representable parameters of a trained block's scale for every (name, shape).
block_params random_params(const std::vector<std::pair<std::string, std::vector<index_t>>>& list,
                           test_rng& g) {
  block_params p;
  for (const auto& [name, shape] : list) {
    std::array<index_t, 4> e{1, 1, 1, 1};
    for (std::size_t i = 0; i < shape.size(); ++i) e[i] = shape[i];
    index_t fan_in = 1;
    for (std::size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
    double lo = -0.1, hi = 0.1;
    if (ends_with(name, "running_var") ||
        ((ends_with(name, "norm.weight") || ends_with(name, "norm1.weight") ||
          ends_with(name, "norm2.weight")) &&
         shape.size() == 1)) {
      lo = 0.5;
      hi = 1.5;
    } else if (ends_with(name, "relative_position_bias_table")) {
      lo = -1;
      hi = 1;
    } else if (shape.size() == 4) {
      hi = std::sqrt(3.0 / static_cast<double>(fan_in));
      lo = -hi;
    }
    p.t.emplace(name, rnd<4>(e, g, lo, hi));
  }
  return p;
}

template <class T, class Block>
void load(Block& b, const block_params& p) {
  for (const auto& [name, shape] : b.parameters()) {
    const dtensor& t = p[name];
    const std::vector<T> v(t.data(), t.data() + t.size());
    b.set_parameter(name, v.data(), static_cast<index_t>(v.size()));
  }
}

/// Runs block (built by make<T, A>()) on x in float and double on every arch, contiguous and
/// strided, threads 1..3, against ref.
template <class Make>
void check_block(const dtensor& x, const dtensor& ref, const block_params& p, Make make,
                 const std::string& what) {
  for_each_arch([&](auto arch) {
    using A = decltype(arch);
    auto run = [&](auto tag) {
      using T = decltype(tag);
      auto block = make(T{}, A{});
      load<T>(block, p);
      const std::string w = what + " arch=" + A::name + " T=" + (sizeof(T) == 4 ? "float" : "double");
      auto xc = to_buffer<T>(x, layout::contiguous);
      auto oc = make_buffer<T>(ref.extents(), layout::contiguous, T(-7));
      block.forward(xc.cv(), oc.v, 1);
      require_close(oc.v, ref.cview(), tol<T>(), tol<T>(), w);
      for (int threads : {2, 3}) {
        auto o = make_buffer<T>(ref.extents(), layout::contiguous, T(-7));
        block.forward(xc.cv(), o.v, threads);
        require_same_bits(oc.v, o.v, w + " threads " + std::to_string(threads));
      }
      auto xs = to_buffer<T>(x, layout::bshd);
      auto os = make_buffer<T>(ref.extents(), layout::padded, T(-7));
      block.forward(xs.cv(), os.v, 2);
      require_same_bits(oc.v, os.v, w + " strided x / out");
      CHECK(os.touched_outside() == 0);
    };
    run(float{});
    run(double{});
  });
}

co::mbconv_config rw_conv() {
  co::mbconv_config c;
  c.stride = co::stride_placement::pool;
  c.pre_norm_act = true;
  c.expand_output = false;
  c.output_bias = false;
  c.se_early = true;
  c.se_act = activation::relu;
  c.act = activation::silu;
  return c;
}

}  // namespace

TEST_CASE("mbconv_block vs timm's MbConvBlock in fp64 (paper, rw and mixed configs)", "[coatnet][blocks]") {
  auto g = seeded_rng(901);
  co::mbconv_config mixed;  // stride in the depthwise conv, SE before norm2, pre-norm act, ReLU, 2x
  mixed.se_early = true;
  mixed.pre_norm_act = true;
  mixed.act = activation::relu;
  mixed.expand_ratio = 2;
  mixed.output_bias = false;
  struct cs {
    co::mbconv_config cfg;
    index_t B, H, W, in, out;
    bool down;
    const char* name;
  };
  const cs cases[] = {{co::mbconv_config{}, 2, 6, 10, 12, 20, true, "paper down 12->20"},
                      {co::mbconv_config{}, 1, 5, 7, 20, 20, false, "paper stride 1, 5x7"},
                      {rw_conv(), 2, 6, 4, 12, 20, true, "rw down 12->20"},
                      {rw_conv(), 1, 4, 6, 24, 24, true, "rw down 24->24 (pool-only shortcut)"},
                      {rw_conv(), 1, 3, 5, 9, 9, false, "rw stride 1, 3x5, 9 channels"},
                      {mixed, 1, 8, 6, 7, 9, true, "mixed down 7->9"}};
  for (const cs& c : cases) {
    co::mbconv_block<double> shape(c.in, c.out, c.down, c.cfg);
    const block_params p = random_params(shape.parameters(), g);
    const dtensor x = rnd<4>({c.B, c.H, c.W, c.in}, g, -2, 2);
    const dtensor ref = mbconv_ref(x, p, c.cfg, c.down);
    check_block(
        x, ref, p,
        [&](auto t, auto a) {
          return co::mbconv_block<decltype(t), decltype(a)>(c.in, c.out, c.down, c.cfg);
        },
        c.name);
  }
}

TEST_CASE("transformer_block vs timm's TransformerBlock2d in fp64 (paper and rw configs)",
          "[coatnet][blocks]") {
  auto g = seeded_rng(902);
  co::transformer_config paper;
  paper.dim_head = 4;
  co::transformer_config rw = paper;
  rw.expand_first = false;
  rw.shortcut_bias = false;
  co::transformer_config one_head;
  one_head.dim_head = 8;
  one_head.act = activation::gelu_tanh;
  struct cs {
    co::transformer_config cfg;
    index_t B, H, W, in, out;
    bool down;
    const char* name;
  };
  const cs cases[] = {{paper, 2, 6, 8, 12, 16, true, "paper down 12->16 on 6x8"},
                      {paper, 1, 3, 5, 16, 16, false, "paper stride 1 on 3x5"},
                      {rw, 2, 4, 6, 12, 20, true, "rw down 12->20 on 4x6"},
                      {rw, 1, 7, 2, 12, 12, false, "rw stride 1 on 7x2"},
                      {one_head, 1, 2, 2, 8, 8, true, "one head, down 8->8 on 2x2"}};
  for (const cs& c : cases) {
    co::transformer_block<double> shape(c.in, c.out, c.down, c.H, c.W, c.cfg);
    const block_params p = random_params(shape.parameters(), g);
    const dtensor x = rnd<4>({c.B, c.H, c.W, c.in}, g, -2, 2);
    const dtensor ref = transformer_ref(x, p, c.cfg, c.down);
    check_block(
        x, ref, p,
        [&](auto t, auto a) {
          return co::transformer_block<decltype(t), decltype(a)>(c.in, c.out, c.down, c.H, c.W, c.cfg);
        },
        c.name);
  }
}

TEST_CASE("coatnet blocks: names, shapes and invalid arguments", "[coatnet][blocks]") {
  // timm's names and shapes (coatnet_0_rw_224, stage 1 block 0 and stage 2 block 0)
  const co::mbconv_block<float> m(96, 192, true, rw_conv());
  CHECK(m.mid_channels() == 384);
  CHECK(m.se_channels() == 96);
  CHECK(*m.parameter_shape("shortcut.expand.weight") == std::vector<index_t>{192, 96, 1, 1});
  CHECK(m.parameter_shape("shortcut.expand.bias") == nullptr);
  CHECK(*m.parameter_shape("se_early.fc1.weight") == std::vector<index_t>{96, 384, 1, 1});
  co::transformer_config rw;
  rw.expand_first = false;
  rw.shortcut_bias = false;
  const co::transformer_block<float> t(192, 384, true, 28, 28, rw);
  CHECK(t.heads() == 6);
  CHECK(*t.parameter_shape("attn.qkv.weight") == std::vector<index_t>{576, 192, 1, 1});
  CHECK(*t.parameter_shape("attn.rel_pos.relative_position_bias_table") == std::vector<index_t>{27 * 27, 6});
  CHECK(*t.parameter_shape("norm1.norm.weight") == std::vector<index_t>{192});

  CHECK_THROWS_WITH(co::mbconv_block<float>(8, 16, false),
                    Catch::Contains("in == out unless the block downsamples"));
  CHECK_THROWS_WITH(co::transformer_block<float>(8, 8, true, 3, 4),
                    Catch::Contains("even when the block downsamples"));
  co::transformer_config bad;
  bad.dim_head = 5;
  CHECK_THROWS_WITH(co::transformer_block<float>(8, 8, false, 3, 4, bad),
                    Catch::Contains("multiple of dim_head"));

  co::mbconv_block<float> b(8, 8, true);
  attnkit::tensor<float, 4> x({1, 4, 4, 8}), out({1, 2, 2, 8});
  CHECK_THROWS_WITH(b.forward(x.cview(), out.view()), Catch::Contains("parameters are not loaded"));
  auto g = seeded_rng(903);
  load<float>(b, random_params(b.parameters(), g));
  std::fill(out.data(), out.data() + out.size(), -7.0f);
  attnkit::tensor<float, 4> odd({1, 5, 4, 8}), wrong_c({1, 4, 4, 9}), wrong_out({1, 4, 4, 8});
  CHECK_THROWS_WITH(b.forward(odd.cview(), out.view()), Catch::Contains("H and W even"));
  CHECK_THROWS_WITH(b.forward(wrong_c.cview(), out.view()), Catch::Contains("expected [B, H, W, 8]"));
  CHECK_THROWS_WITH(b.forward(x.cview(), wrong_out.view()), Catch::Contains("out has shape"));
  CHECK_THROWS_WITH(b.forward(x.cview(), out.view(), -1), Catch::Contains("threads"));
  for (index_t i = 0; i < out.size(); ++i) CHECK(out.data()[i] == -7.0f);
  const float v[2] = {1, 2};
  CHECK_THROWS_WITH(b.set_parameter("conv1_1x1.weight", v, 2), Catch::Contains("has shape [32, 8, 1, 1]"));
  CHECK_THROWS_WITH(b.set_parameter("conv9.weight", v, 2), Catch::Contains("no parameter named"));

  co::transformer_config small;
  small.dim_head = 4;
  co::transformer_block<float> tb(8, 8, false, 2, 3, small);
  load<float>(tb, random_params(tb.parameters(), g));
  attnkit::tensor<float, 4> y({1, 3, 2, 8}), yo({1, 3, 2, 8});
  CHECK_THROWS_WITH(tb.forward(y.cview(), yo.view()), Catch::Contains("the block's grid is 2 x 3"));
}
