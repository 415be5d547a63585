// attnkit tests: CoAtNet's relative attention and table resizing against golden data computed by
// PyTorch (tools/relative_golden.py -> tests/data/relative_golden.txt): the bicubic resize of
// timm's resize_rel_pos_bias_table_simple, and attention with the bias gathered the way timm's
// RelPosBias gathers it, pre- and post-softmax, for both offset conventions.
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <attnkit/coatnet/relative_attention.hpp>

#include "reference/common.hpp"

#ifndef ATTNKIT_TEST_DATA_DIR
#error "ATTNKIT_TEST_DATA_DIR: the directory of tests/data (set by tests/CMakeLists.txt)"
#endif

namespace {
using namespace attnkit_test;
using attnkit::index_t;

/// One case of the golden file: its header words and its value lines.
struct golden_case {
  std::vector<std::string> head;
  std::vector<std::vector<double>> data;
};

std::vector<golden_case> read_golden() {
  std::ifstream f(std::string(ATTNKIT_TEST_DATA_DIR) + "/relative_golden.txt");
  REQUIRE(f.good());
  std::vector<golden_case> cases;
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream is(line);
    std::string first;
    is >> first;
    if (first == "resize" || first == "attn") {
      cases.emplace_back();
      cases.back().head.push_back(first);
      for (std::string w; is >> w;) cases.back().head.push_back(w);
    } else {
      REQUIRE(!cases.empty());
      std::vector<double> v;
      std::istringstream vs(line);
      for (double x; vs >> x;) v.push_back(x);
      cases.back().data.push_back(std::move(v));
    }
  }
  return cases;
}

template <class T, std::size_t R>
attnkit::tensor<T, R> tensor_of(const std::vector<double>& v, const std::array<index_t, R>& ext) {
  attnkit::tensor<T, R> t(ext);
  REQUIRE(static_cast<index_t>(v.size()) == t.size());
  for (std::size_t i = 0; i < v.size(); ++i) t.data()[i] = static_cast<T>(v[i]);
  return t;
}

index_t word(const golden_case& c, std::size_t i) { return std::stol(c.head[i]); }
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
