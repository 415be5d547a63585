// attnkit tests: the CoAtNet network against timm. tools/coatnet_golden.py builds two reduced-width
// CoAtNets with timm's own MaxxVit code and random weights (the coatnet_0_rw_224 layout and the
// paper's coatnet_0 layout, 64 x 96 images, so the transformer grids are the non-square 4 x 6 and
// 2 x 3) and exports the weights under timm's names plus an input, the stem's and every stage's
// output, the final features and the logits, computed in float64. The network must reproduce every
// one of them to 1e-5 of the tensor's largest magnitude in float (the issue asks for 1e-4; seen:
// <= 7e-7) and to 2e-7 in double (the golden values are stored as float32: 6e-8 relative). Also: loading
// errors (missing, unexpected, mis-shaped tensors leave the network unchanged), config errors, bits
// independent of the thread count and of the batch, and strided (NCHW) input views.
#if ATTNKIT_HAVE_NLOHMANN_JSON

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

#include <catch2/catch.hpp>

#include <attnkit/coatnet/safetensors.hpp>

#include "reference/coatnet_ref.hpp"
#include "reference/common.hpp"

#ifndef ATTNKIT_TEST_DATA_DIR
#error "ATTNKIT_TEST_DATA_DIR: the directory of tests/data (set by tests/CMakeLists.txt)"
#endif

namespace {
using attnkit::index_t;
using attnkit::tensor;
using attnkit::tensor_view;
namespace cn = attnkit::coatnet;
namespace io = attnkit::io;

std::string data_path(const std::string& name) { return std::string(ATTNKIT_TEST_DATA_DIR) + "/" + name; }

using attnkit_test::tiny_config;

/// NCHW [B, C, H, W] as a strided NHWC view (no copy).
template <class T>
tensor_view<const T, 4> nchw_as_nhwc(const tensor<T, 4>& t) {
  const index_t B = t.extent(0), C = t.extent(1), H = t.extent(2), W = t.extent(3);
  return tensor_view<const T, 4>(t.data(), {B, H, W, C}, {C * H * W, W, 1, H * W});
}

/// NCHW -> contiguous NHWC.
template <class T>
tensor<T, 4> to_nhwc(const tensor<T, 4>& t) {
  const tensor_view<const T, 4> v = nchw_as_nhwc(t);
  tensor<T, 4> o(v.extents());
  for (index_t b = 0; b < o.extent(0); ++b)
    for (index_t y = 0; y < o.extent(1); ++y)
      for (index_t x = 0; x < o.extent(2); ++x)
        for (index_t c = 0; c < o.extent(3); ++c) o(b, y, x, c) = v(b, y, x, c);
  return o;
}

/// max |a - ref| / max |ref| over two tensors of the same extents.
template <class T, class U, std::size_t R>
double relative_error(const tensor<T, R>& a, const tensor<U, R>& ref) {
  REQUIRE(a.extents() == ref.extents());
  double num = 0, den = 0;
  bool finite = true;
  for (index_t i = 0; i < a.size(); ++i) {
    const double r = static_cast<double>(ref.data()[i]), x = static_cast<double>(a.data()[i]);
    finite = finite && std::isfinite(x);
    num = std::max(num, std::fabs(x - r));
    den = std::max(den, std::fabs(r));
  }
  REQUIRE(finite);
  REQUIRE(den > 0);
  return num / den;
}

template <class T>
void check_golden(bool rw, double tol) {
  const std::string name = rw ? "rw_tiny" : "paper_tiny";
  CAPTURE(name);
  cn::network<T> net(tiny_config(rw));
  REQUIRE(net.missing_parameters().size() == net.parameters().size());
  cn::load_safetensors(net, data_path("coatnet_" + name + ".safetensors"));
  REQUIRE(net.missing_parameters().empty());
  const io::safetensors_file gold(data_path("coatnet_" + name + "_io.safetensors"));
  const tensor<T, 4> input = gold.read_tensor<T, 4>("input");
  const tensor<T, 4> x = to_nhwc(input);
  std::vector<tensor<T, 4>> taps;
  tensor<T, 2> logits({x.extent(0), 10});
  net.forward(x.cview(), logits.view(), 0, &taps);
  const char* names[] = {"stem", "stages.0", "stages.1", "stages.2", "stages.3", "features"};
  REQUIRE(taps.size() == 6);
  for (std::size_t i = 0; i < taps.size(); ++i) {
    const tensor<double, 4> ref = to_nhwc(gold.read_tensor<double, 4>(names[i]));
    const double err = relative_error(taps[i], ref);
    CAPTURE(names[i], err);
    CHECK(err <= tol);
  }
  const tensor<double, 2> ref_logits = gold.read_tensor<double, 2>("logits");
  const double err = relative_error(logits, ref_logits);
  CAPTURE(err);
  CHECK(err <= tol);

  // the same network on the NCHW input read in place through strides: the same bits
  const tensor<T, 2> strided = net.forward(nchw_as_nhwc(input), 1);
  CHECK(std::equal(strided.data(), strided.data() + strided.size(), logits.data()));
}

}  // namespace

TEST_CASE("coatnet network reproduces timm's stages and logits (rw and paper layouts)", "[coatnet][golden]") {
  SECTION("float") {
    check_golden<float>(true, 1e-5);
    check_golden<float>(false, 1e-5);
  }
  SECTION("double") {
    check_golden<double>(true, 2e-7);
    check_golden<double>(false, 2e-7);
  }
}

TEST_CASE("coatnet network: same bits for any thread count and batch split", "[coatnet]") {
  cn::network<float> net(tiny_config(true));
  cn::load_safetensors(net, data_path("coatnet_rw_tiny.safetensors"));
  const io::safetensors_file gold(data_path("coatnet_rw_tiny_io.safetensors"));
  const tensor<float, 4> x = to_nhwc(gold.read_tensor<float, 4>("input"));
  const tensor<float, 2> base = net.forward(x.cview(), 1);
  for (int threads : {2, 3, 0}) {
    const tensor<float, 2> t = net.forward(x.cview(), threads);
    CAPTURE(threads);
    CHECK(std::equal(t.data(), t.data() + t.size(), base.data()));
  }
  const index_t H = x.extent(1), W = x.extent(2);
  for (index_t b = 0; b < x.extent(0); ++b) {  // each image alone (a view of one image)
    const tensor_view<const float, 4> img(x.data() + b * H * W * 3, {1, H, W, 3}, {H * W * 3, W * 3, 3, 1});
    const tensor<float, 2> one = net.forward(img, 2);
    CAPTURE(b);
    CHECK(std::equal(one.data(), one.data() + 10, base.data() + b * 10));
  }
  // an empty batch writes nothing and throws nothing
  tensor<float, 2> none({0, 10});
  net.forward(tensor_view<const float, 4>(x.data(), {0, 64, 96, 3}, {64 * 96 * 3, 96 * 3, 3, 1}),
              none.view());
}

TEST_CASE("coatnet network: parameter list and checkpoint errors", "[coatnet]") {
  const cn::network_config cfg = tiny_config(true);
  cn::network<float> net(cfg);
  const io::safetensors_file file(data_path("coatnet_rw_tiny.safetensors"));
  // the parameter list is exactly the checkpoint's (minus the batch norms' counters)
  std::vector<std::string> want;
  for (const io::safetensors_entry& e : file.entries())
    if (e.name.find("num_batches_tracked") == std::string::npos) want.push_back(e.name);
  std::vector<std::string> have;
  for (const auto& p : net.parameters()) have.push_back(p.first);
  std::sort(have.begin(), have.end());
  CHECK(have == want);

  // rewrite the checkpoint with one tensor dropped, one added and one reshaped
  std::vector<std::vector<float>> store;
  std::vector<std::pair<std::string, std::pair<std::vector<index_t>, const float*>>> ts;
  for (const io::safetensors_entry& e : file.entries()) {
    if (e.name.find("num_batches_tracked") != std::string::npos) continue;
    store.emplace_back(static_cast<std::size_t>(e.numel()));
    file.read(e.name, store.back().data(), e.numel());
  }
  std::size_t i = 0;
  for (const io::safetensors_entry& e : file.entries()) {
    if (e.name.find("num_batches_tracked") != std::string::npos) continue;
    ts.push_back({e.name, {e.shape, store[i++].data()}});
  }
  const std::string dir = std::filesystem::temp_directory_path().string();
  auto expect_error = [&](decltype(ts) tensors, const std::string& what) {
    const std::string path = dir + "/attnkit_coatnet_broken_" + std::to_string(::getpid()) + ".safetensors";
    io::write_safetensors<float>(path, tensors);
    cn::network<float> n(cfg);
    CHECK_THROWS_WITH(cn::load_safetensors(n, path), Catch::Contains(what));
    CHECK_THROWS_AS(cn::load_safetensors(n, path), attnkit::invalid_argument);
    CHECK(n.missing_parameters().size() == n.parameters().size());  // nothing set
    std::filesystem::remove(path);
  };
  {
    auto t = ts;
    t.erase(std::find_if(t.begin(), t.end(),
                         [](const auto& p) { return p.first == "stages.2.blocks.1.mlp.fc1.bias"; }));
    expect_error(t, "1 missing: stages.2.blocks.1.mlp.fc1.bias");
  }
  {
    auto t = ts;
    t.push_back({"stages.9.extra", {{2}, store[0].data()}});
    expect_error(t, "1 unexpected: stages.9.extra");
  }
  {
    auto t = ts;
    for (auto& p : t)
      if (p.first == "head.fc.bias") p.second.first = {5, 2};
    expect_error(t, "1 mis-shaped: head.fc.bias [5, 2] (expected [10])");
  }
  CHECK_THROWS_WITH(cn::load_safetensors(net, dir + "/does_not_exist.safetensors"),
                    Catch::Contains("does_not_exist"));

  // set_parameter errors, and forward before everything is loaded
  const float v[3] = {1, 2, 3};
  CHECK_THROWS_WITH(net.set_parameter("head.fc.bias", v, 3), Catch::Contains("has shape [10]"));
  CHECK_THROWS_WITH(net.set_parameter("nope", v, 3), Catch::Contains("no parameter named \"nope\""));
  tensor<float, 4> x({1, 64, 96, 3});
  CHECK_THROWS_WITH(net.forward(x.cview()), Catch::Contains("parameters are not loaded"));
  cn::load_safetensors(net, file);
  tensor<float, 4> wrong({1, 64, 64, 3});
  CHECK_THROWS_WITH(net.forward(wrong.cview()),
                    Catch::Contains("images has shape [1, 64, 64, 3], expected [1, 64, 96, 3]"));
  tensor<float, 2> logits({1, 9});
  CHECK_THROWS_WITH(net.forward(x.cview(), logits.view()), Catch::Contains("logits has shape"));
}

TEST_CASE("coatnet network: config checks and presets", "[coatnet]") {
  cn::network_config c = cn::network_config::coatnet_0();
  c.image_rows = 200;  // not a multiple of 32
  CHECK_THROWS_WITH(cn::network<float>(c), Catch::Contains("multiples of 32"));
  c = cn::network_config::coatnet_0();
  c.widths.pop_back();
  CHECK_THROWS_WITH(cn::network<float>(c), Catch::Contains("same number"));
  c = cn::network_config::coatnet_0();
  c.transformer.dim_head = 100;
  CHECK_THROWS_WITH(cn::network<float>(c), Catch::Contains("multiple of dim_head"));
  // the presets' sizes: the values in timm's state_dict() of coatnet_0_rw_224 and coatnet_0_224
  // (parameters and batch-norm statistics, without the counters), counted with timm 1.0.31
  for (const bool rw : {true, false}) {
    const cn::network<float> n(rw ? cn::network_config::coatnet_0_rw_224() : cn::network_config::coatnet_0());
    index_t count = 0;
    for (const auto& p : n.parameters()) {
      index_t k = 1;
      for (index_t e : p.second) k *= e;
      count += k;
    }
    CAPTURE(rw, count);
    CHECK(count == (rw ? 27447146 : 25050516));
  }
}

#endif  // ATTNKIT_HAVE_NLOHMANN_JSON
