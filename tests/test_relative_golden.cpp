// attnkit tests: CoAtNet's relative attention and table resizing against golden data computed by
// PyTorch (tools/relative_golden.py -> tests/data/relative_golden.txt): the bicubic resize of
// timm's resize_rel_pos_bias_table_simple, and attention with the bias gathered the way timm's
// RelPosBias gathers it, pre- and post-softmax, for both offset conventions; timm's own
// Attention2d module with RelPosBias (tools/relative_timm_golden.py); and the backward against
// PyTorch autograd (tools/relative_grad_golden.py -> tests/data/relative_grad_golden.txt).
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include <attnkit/coatnet/relative_attention.hpp>
#include <attnkit/coatnet/relative_backward.hpp>

#include "reference/common.hpp"
#include "reference/golden_text.hpp"
#include "reference/kernel_instances.hpp"

namespace {
using namespace attnkit_test;
using attnkit::index_t;

std::vector<golden_case> read_golden() { return attnkit_test::read_golden("relative_golden.txt"); }
index_t word(const golden_case& c, std::size_t i) { return c.word(i); }
}  // namespace

TEST_CASE("relative golden: resize_relative_table equals torch bicubic (timm's table resize)",
          "[relative][golden]") {
  int n = 0;
  for (const golden_case& c : read_golden()) {
    if (c.head[0] != "resize") continue;
    ++n;
    const index_t heads = word(c, 1), ih = word(c, 2), iw = word(c, 3), oh = word(c, 4), ow = word(c, 5);
    INFO("resize " << heads << " x " << ih << " x " << iw << " -> " << oh << " x " << ow);
    REQUIRE(c.data.size() == 2);
    const auto want = tensor_of<double, 3>(c.data[1], {heads, oh, ow});
    const auto in = tensor_of<double, 3>(c.data[0], {heads, ih, iw});
    const auto got = attnkit::resize_relative_table<double>(in.view(), {(oh + 1) / 2, (ow + 1) / 2});
    require_close(got.view(), want.view(), 1e-13, 1e-13, "double");
    const auto inf = tensor_of<float, 3>(c.data[0], {heads, ih, iw});
    const auto gotf = attnkit::resize_relative_table<float>(inf.view(), {(oh + 1) / 2, (ow + 1) / 2});
    // float: the inputs rounded to float (|x| < 5, 2^-24 relative) through 16 weights summing to 1
    // whose absolute values sum to < 1.6, then one rounding of the result
    require_close(gotf.view(), want.view(), 2e-6, 1e-6, "float");
  }
  CHECK(n == 4);
}

TEST_CASE("relative golden: relative_attention_2d equals torch with timm's bias gather",
          "[relative][golden]") {
  int n = 0;
  for (const golden_case& c : read_golden()) {
    if (c.head[0] != "attn") continue;
    ++n;
    const bool pre = c.head[1] == "pre", qmk = c.head[2] == "qmk";
    const index_t B = word(c, 3), heads = word(c, 4), H = word(c, 5), W = word(c, 6), dk = word(c, 7),
                  dv = word(c, 8), L = H * W;
    INFO(c.head[1] << " " << c.head[2] << " B " << B << " heads " << heads << " grid " << H << " x " << W);
    REQUIRE(c.data.size() == 5);
    attnkit::relative_options o;
    o.mode = pre ? attnkit::relative_mode::pre_softmax : attnkit::relative_mode::post_softmax;
    o.offset = qmk ? attnkit::relative_offset::query_minus_key : attnkit::relative_offset::key_minus_query;
    const auto want = tensor_of<double, 4>(c.data[4], {B, heads, L, dv});
    auto run = [&](auto t, double atol, double rtol) {
      using T = decltype(t);
      const auto q = tensor_of<T, 4>(c.data[0], {B, heads, L, dk});
      const auto k = tensor_of<T, 4>(c.data[1], {B, heads, L, dk});
      const auto v = tensor_of<T, 4>(c.data[2], {B, heads, L, dv});
      const auto table = tensor_of<T, 3>(c.data[3], {heads, 2 * H - 1, 2 * W - 1});
      for_each_arch([&](auto arch) {
        using Arch = decltype(arch);
        INFO("arch " << Arch::name << " " << (sizeof(T) == 4 ? "float" : "double"));
        attnkit::tensor<T, 4> out({B, heads, L, dv});
        attnkit::relative_attention_2d<Arch, T>(q.view(), k.view(), v.view(), table.view(), {H, W},
                                                out.view(), o);
        require_close(out.view(), want.view(), atol, rtol);
      });
    };
    run(0.0, 1e-12, 1e-12);
    // float: at most 49 keys, |softmax + bias| < 3 and |v| < 5 per term: 49 * 15 * 2^-24 * ~8 roundings
    run(0.0f, 4e-4, 1e-5);
  }
  CHECK(n == 8);
}

TEMPLATE_TEST_CASE("relative_attention_2d_backward equals PyTorch autograd (tools/relative_grad_golden.py)",
                   "[relative][backward][golden]", float, double) {
  // Golden values in float64 from torch autograd of relative attention on H x W grids (pre and
  // post softmax, both offsets, GQA by repeat_interleave, dk != dv, key_lengths with an empty
  // batch entry, a custom scale), the loss sum(out * dout). Every case has <= 16 keys, inputs in
  // [-1, 1] (table in [-0.5, 0.5]) and results below 6 in magnitude. The tolerance is the
  // attention golden test's, atol = rtol: double: a few ulp of O(10) sums: 1e-12 (1 + |ref|).
  // float: the inputs rounded to float (2^-24 relative) move the logits by ~dk 2^-24 and each
  // gradient by as much relative to its O(10) terms, plus the fp32 sums; the largest sums are
  // post_softmax's dtable entries, <= B L = 32 dot products dout_i . v_j of dv <= 5 terms each
  // (|terms| summed <= 80: ~80 * 2 * 2^-24 = 1e-5 in the worst case, ~1e-6 as rounding errors
  // add like a random walk), and D = dout . (out - W v) where out's table terms cancel (<= 5 * 8
  // * 2^-24 = 2.4e-6). 2e-5 (1 + |ref|) is ~20x the typical error.
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;
  int n = 0;
  for (const golden_case& c : attnkit_test::read_golden("relative_grad_golden.txt")) {
    REQUIRE(c.head.size() >= 12);
    const std::string mode = c.head[1], offset = c.head[2];
    const index_t B = c.word(3), heads = c.word(4), Hkv = c.word(5), H = c.word(6), W = c.word(7),
                  dk = c.word(8), dv = c.word(9), L = H * W;
    INFO("case " << n << ": " << mode << " " << offset << " B=" << B << " heads=" << heads << " Hkv=" << Hkv
                 << " grid " << H << " x " << W << " dk=" << dk << " dv=" << dv << " scale " << c.head[10]);
    ++n;
    REQUIRE((mode == "pre" || mode == "post"));
    REQUIRE((offset == "kmq" || offset == "qmk"));
    attnkit::relative_options opt;
    opt.mode = mode == "pre" ? attnkit::relative_mode::pre_softmax : attnkit::relative_mode::post_softmax;
    opt.offset = offset == "qmk" ? attnkit::relative_offset::query_minus_key
                                 : attnkit::relative_offset::key_minus_query;
    opt.scale = std::stod(c.head[10]);
    std::vector<std::int64_t> lens;
    for (index_t b = 0; b < c.word(11); ++b) lens.push_back(c.word(12 + static_cast<std::size_t>(b)));
    REQUIRE(c.head.size() == 12 + lens.size());
    if (!lens.empty()) opt.mask.key_lengths = view<const std::int64_t, 1>(lens.data(), {B}, {1});
    REQUIRE(c.data.size() == 11);
    const std::array<index_t, 3> te{heads, 2 * H - 1, 2 * W - 1};
    const auto q = tensor_of<T, 4>(c.data[0], {B, heads, L, dk});
    const auto k = tensor_of<T, 4>(c.data[1], {B, Hkv, L, dk});
    const auto v = tensor_of<T, 4>(c.data[2], {B, Hkv, L, dv});
    const auto table = tensor_of<T, 3>(c.data[3], te);
    const auto dout = tensor_of<T, 4>(c.data[4], {B, heads, L, dv});
    const auto want_out = tensor_of<double, 4>(c.data[5], {B, heads, L, dv});
    const auto want_lse = tensor_of<double, 3>(c.data[6], {B, heads, L});
    const auto want_dq = tensor_of<double, 4>(c.data[7], {B, heads, L, dk});
    const auto want_dk = tensor_of<double, 4>(c.data[8], {B, Hkv, L, dk});
    const auto want_dv = tensor_of<double, 4>(c.data[9], {B, Hkv, L, dv});
    const auto want_dtable = tensor_of<double, 3>(c.data[10], te);
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO("arch " << Arch::name);
      attnkit::tensor<T, 4> out({B, heads, L, dv}), dq(q.extents()), dK(k.extents()), dV(v.extents());
      attnkit::tensor<T, 3> lse({B, heads, L}), dtable(te);
      attnkit::relative_attention_2d<Arch, T>(q.cview(), k.cview(), v.cview(), table.cview(), {H, W},
                                              out.view(), lse.view(), opt);
      attnkit::relative_attention_2d_backward<Arch, T>(q.cview(), k.cview(), v.cview(), table.cview(), {H, W},
                                                       out.cview(), lse.cview(), dout.cview(), dq.view(),
                                                       dK.view(), dV.view(), dtable.view(), opt);
      require_close(out.cview(), want_out.cview(), tol, tol, "out");
      require_close(lse.cview(), want_lse.cview(), tol, tol, "lse");
      require_close(dq.cview(), want_dq.cview(), tol, tol, "dq");
      require_close(dK.cview(), want_dk.cview(), tol, tol, "dk");
      require_close(dV.cview(), want_dv.cview(), tol, tol, "dv");
      require_close(dtable.cview(), want_dtable.cview(), tol, tol, "dtable");
    });
  }
  CHECK(n == 4);
}

#if ATTNKIT_HAVE_NLOHMANN_JSON
#include <attnkit/coatnet/ops.hpp>
#include <attnkit/io/safetensors.hpp>

// timm's own Attention2d + RelPosBias (tools/relative_timm_golden.py, float64, non-square grids,
// several heads): qkv 1x1 conv, relative_attention_2d on q, k, v read in place from the head-first
// channels with timm's table transposed to [heads, 2H - 1, 2W - 1] (query minus key, pre-softmax),
// proj 1x1 conv. Float within 1e-5 of the output's largest magnitude, double within 2e-7 (the
// golden values are stored as float32).
TEST_CASE("relative attention reproduces timm's Attention2d with RelPosBias", "[relative][golden]") {
  namespace co = attnkit::coatnet;
  const attnkit::io::safetensors_file f(std::string(ATTNKIT_TEST_DATA_DIR) +
                                        "/relative_timm_golden.safetensors");
  struct cs {
    const char* name;
    index_t B, cin, cout, dh, H, W;
  };
  const cs cases[] = {{"a", 2, 24, 24, 8, 5, 7}, {"b", 1, 16, 32, 4, 3, 9}, {"c", 1, 32, 32, 32, 7, 7}};
  auto run = [&](auto tag, double tol) {
    using T = decltype(tag);
    for (const cs& c : cases) {
      const std::string n = c.name;
      const auto x = f.read_tensor<T, 4>(n + ".x");  // NCHW
      const auto wq = f.read_tensor<T, 4>(n + ".qkv.weight");
      const auto bq = f.read_tensor<T, 1>(n + ".qkv.bias");
      const auto wp = f.read_tensor<T, 4>(n + ".proj.weight");
      const auto bp = f.read_tensor<T, 1>(n + ".proj.bias");
      const auto t = f.read_tensor<T, 2>(n + ".table");  // [(2H - 1)(2W - 1), heads]
      const auto ref = f.read_tensor<double, 4>(n + ".out");
      const index_t B = c.B, H = c.H, W = c.W, L = H * W, A = c.cin, heads = A / c.dh, dh = c.dh;
      REQUIRE(t.extent(1) == heads);
      const view<const T, 4> xv(x.data(), {B, H, W, c.cin}, {c.cin * L, W, 1, L});
      attnkit::tensor<T, 4> qkv({B, H, W, 3 * A}), ao({B, H, W, A}), out({B, H, W, c.cout});
      co::conv2d(xv, wq.cview(), bq.cview(), qkv.view(), 1, 0);
      attnkit::tensor<T, 3> table({heads, 2 * H - 1, 2 * W - 1});
      for (index_t h = 0; h < heads; ++h)
        for (index_t y = 0; y < 2 * H - 1; ++y)
          for (index_t z = 0; z < 2 * W - 1; ++z) table(h, y, z) = t(y * (2 * W - 1) + z, h);
      const std::array<index_t, 4> e{B, heads, L, dh}, s{L * 3 * A, 3 * dh, 3 * A, 1};
      attnkit::relative_options ro;
      ro.offset = attnkit::relative_offset::query_minus_key;
      attnkit::relative_attention_2d(
          view<const T, 4>(qkv.data(), e, s), view<const T, 4>(qkv.data() + dh, e, s),
          view<const T, 4>(qkv.data() + 2 * dh, e, s), table.cview(), attnkit::relative_grid{H, W},
          view<T, 4>(ao.data(), e, {L * A, dh, A, 1}), ro);
      co::conv2d(ao.cview(), wp.cview(), bp.cview(), out.view(), 1, 0);
      double num = 0, den = 0;
      for (index_t b = 0; b < B; ++b)
        for (index_t o = 0; o < c.cout; ++o)
          for (index_t y = 0; y < H; ++y)
            for (index_t z = 0; z < W; ++z) {
              num = std::max(num, std::fabs(static_cast<double>(out(b, y, z, o)) - ref(b, o, y, z)));
              den = std::max(den, std::fabs(ref(b, o, y, z)));
            }
      CAPTURE(n, num / den);
      CHECK(num <= tol * den);
    }
  };
  run(float{}, 1e-5);
  run(double{}, 2e-7);
}
#endif  // ATTNKIT_HAVE_NLOHMANN_JSON
