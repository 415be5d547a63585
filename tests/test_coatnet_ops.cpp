// attnkit tests: CoAtNet's inference blocks (coatnet/ops.hpp) against naive fp64 loops written from
// the PyTorch definitions (nn.Conv2d with zero padding, groups 1 and C; nn.Linear; inference
// BatchNorm2d; nn.GELU exact and tanh; SiLU; timm's SEModule; nn.LayerNorm; nn.AvgPool2d(2, 2);
// global mean), float and double on every arch the build runs, odd and even H and W, channel counts
// that are no multiple of any register width, stride 2 on odd sizes, strided views, thread counts
// 1 and 2 (same bits), and invalid arguments (throw, out untouched). The inputs are
// float-representable, so one fp64 reference serves both types. Tolerances: |y - ref| <= tol (1 +
// |ref|) with tol = 2e-5 in float (the longest sum has 360 terms of magnitude <= 1, accumulated
// in float with FMA: <= 360 2^-24 |terms| ~ 2e-5 worst case, typically far less) and 1e-12 in
// double.
#include <algorithm>
#include <array>
#include <cmath>
#include <iterator>
#include <string>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include <attnkit/coatnet/ops.hpp>

#include "reference/coatnet_ref.hpp"

namespace {

using namespace attnkit_test;
namespace co = attnkit::coatnet;
using co::activation;

template <class T>
constexpr double tol() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-12;
}

template <class T, std::size_t R>
std::vector<T> to_vec(const attnkit::tensor<double, R>& t) {
  return std::vector<T>(t.data(), t.data() + t.size());
}

template <class T>
view<const T, 1> v1(const std::vector<T>& v) {
  return view<const T, 1>(v.data(), {static_cast<index_t>(v.size())}, {1});
}

const activation kActs[] = {activation::none,      activation::relu,    activation::silu, activation::gelu,
                            activation::gelu_tanh, activation::sigmoid, activation::tanh};

const layout kLayouts[] = {layout::contiguous, layout::padded, layout::gapped, layout::bshd};

template <class T>
void check_conv_case(const dtensor& x, const dtensor& w, const dvec* bias, int stride, int pad,
                     bool depthwise, activation act, layout lx, layout lw, layout lo,
                     const std::string& what) {
  const dtensor ref = conv_ref(x, w, bias, stride, pad, depthwise ? static_cast<int>(x.extent(3)) : 1, act);
  for_each_arch([&](auto arch) {
    using A = decltype(arch);
    auto xb = to_buffer<T>(x, lx);
    auto wb = to_buffer<T>(w, lw);
    const std::vector<T> bv = bias ? to_vec<T>(*bias) : std::vector<T>{};
    const view<const T, 1> bview = bias ? v1(bv) : view<const T, 1>();
    std::vector<strided_buffer<T>> outs;
    for (int threads : {1, 2}) {
      outs.push_back(make_buffer<T>(ref.extents(), lo, T(-7)));
      if (depthwise)
        co::depthwise_conv2d<A>(xb.cv(), wb.cv(), bview, outs.back().v, stride, pad, act, threads);
      else
        co::conv2d<A>(xb.cv(), wb.cv(), bview, outs.back().v, stride, pad, act, threads);
      CHECK(outs.back().touched_outside() == 0);
    }
    const std::string w2 = what + " arch=" + A::name + " T=" + (sizeof(T) == 4 ? "float" : "double") +
                           " layouts x/w/out=" + layout_name(lx) + "/" + layout_name(lw) + "/" +
                           layout_name(lo);
    require_close(outs[0].v, ref.cview(), tol<T>(), tol<T>(), w2);
    require_same_bits(outs[0].v, outs[1].v, w2 + " threads 1 vs 2");
  });
}

}  // namespace

TEST_CASE("conv2d: dense convolutions (stem 3x3, 1x1, strides, padding) vs fp64 loops", "[coatnet_ops]") {
  // the last two: fewer than 8 chunks of 64 pixels and more than 256 channels, so the tasks split
  // the output channels too
  auto g = seeded_rng(101);
  struct cs {
    index_t B, H, W, Cin, Cout, k;
    int stride, pad;
  };
  const cs cases[] = {{2, 9, 8, 3, 13, 3, 2, 1}, {1, 7, 7, 3, 17, 3, 1, 1},   {2, 5, 7, 37, 19, 1, 1, 0},
                      {1, 6, 5, 40, 9, 3, 1, 1}, {1, 5, 6, 11, 5, 1, 2, 0},   {1, 8, 9, 5, 33, 3, 2, 1},
                      {3, 1, 1, 2, 4, 3, 1, 1},  {1, 3, 4, 20, 300, 1, 1, 0}, {1, 4, 5, 7, 270, 3, 1, 1}};
  int n = 0;
  for (const cs& c : cases) {
    const dtensor x = rnd<4>({c.B, c.H, c.W, c.Cin}, g);
    const dtensor w = rnd<4>({c.Cout, c.Cin, c.k, c.k}, g, -0.5, 0.5);
    const dvec bias = rnd<1>({c.Cout}, g);
    const activation act = kActs[n % 7];
    const layout lx = kLayouts[n % 4], lw = kLayouts[(n + 1) % 4], lo = kLayouts[(n + 2) % 4];
    const std::string what = "conv " + std::to_string(n) + " act=" + std::to_string(static_cast<int>(act));
    check_conv_case<float>(x, w, n % 2 ? &bias : nullptr, c.stride, c.pad, false, act, lx, lw, lo, what);
    check_conv_case<double>(x, w, &bias, c.stride, c.pad, false, act, lo, lx, lw, what);
    ++n;
  }
}

TEST_CASE("depthwise_conv2d: 3x3 stride 1 and 2 on odd and even sizes vs fp64 loops", "[coatnet_ops]") {
  auto g = seeded_rng(202);
  struct cs {
    index_t B, H, W, C, k;
    int stride, pad;
  };
  const cs cases[] = {{2, 7, 6, 21, 3, 1, 1}, {1, 7, 9, 21, 3, 2, 1}, {1, 8, 8, 16, 3, 2, 1},
                      {2, 5, 4, 35, 3, 1, 1}, {1, 9, 7, 3, 5, 2, 2},  {1, 2, 3, 1, 3, 1, 1}};
  int n = 0;
  for (const cs& c : cases) {
    const dtensor x = rnd<4>({c.B, c.H, c.W, c.C}, g);
    const dtensor w = rnd<4>({c.C, 1, c.k, c.k}, g);
    const dvec bias = rnd<1>({c.C}, g);
    const activation act = kActs[(n + 2) % 7];
    const layout lx = kLayouts[n % 4], lw = kLayouts[(n + 3) % 4], lo = kLayouts[(n + 1) % 4];
    const std::string what = "dw " + std::to_string(n);
    check_conv_case<float>(x, w, n % 2 ? nullptr : &bias, c.stride, c.pad, true, act, lx, lw, lo, what);
    check_conv_case<double>(x, w, &bias, c.stride, c.pad, true, act, lo, lw, lx, what);
    ++n;
  }
}

TEST_CASE("fold_batch_norm: folded conv equals conv then batch norm", "[coatnet_ops]") {
  auto g = seeded_rng(303);
  const dtensor x = rnd<4>({2, 7, 6, 5}, g);
  const dtensor w = rnd<4>({11, 5, 3, 3}, g);
  const dvec bias = rnd<1>({11}, g), gamma = rnd<1>({11}, g, 0.5, 1.5), beta = rnd<1>({11}, g),
             mean = rnd<1>({11}, g), var = rnd<1>({11}, g, 0.1, 2);
  const double eps = 1e-3;
  for (bool with_bias : {false, true}) {
    dtensor ref = conv_ref(x, w, with_bias ? &bias : nullptr, 1, 1, 1);
    for_each_index(ref.extents(), [&](const std::array<index_t, 4>& ix) {
      const index_t c = ix[3];
      double& y = at(ref.view(), ix);
      y = (y - mean(c)) / std::sqrt(var(c) + eps) * gamma(c) + beta(c);
    });
    auto run = [&](auto tag) {
      using T = decltype(tag);
      const std::vector<T> wv = to_vec<T>(w), bv = to_vec<T>(bias), gv = to_vec<T>(gamma),
                           tv = to_vec<T>(beta), mv = to_vec<T>(mean), vv = to_vec<T>(var);
      const auto f = co::fold_batch_norm<T>(view<const T, 4>::contiguous(wv.data(), w.extents()),
                                            with_bias ? v1(bv) : view<const T, 1>(), v1(gv), v1(tv), v1(mv),
                                            v1(vv), eps);
      const std::vector<T> xv = to_vec<T>(x);
      attnkit::tensor<T, 4> out(ref.extents());
      co::conv2d(view<const T, 4>::contiguous(xv.data(), x.extents()), f.weight.cview(),
                 view<const T, 1>(f.bias.data(), {11}, {1}), out.view(), 1, 1);
      require_close(out.view(), ref.cview(), 4 * tol<T>(), 4 * tol<T>(), "fold_batch_norm");
    };
    run(float{});
    run(double{});
  }
}

TEST_CASE("linear: [N, in] x [out, in]^T + bias vs fp64 loops, strided", "[coatnet_ops]") {
  auto g = seeded_rng(404);
  struct cs {
    index_t n, in, out;
  };
  const cs cases[] = {{1, 768, 10}, {67, 29, 41}, {5, 300, 17}, {130, 8, 1}};
  int k = 0;
  for (const cs& c : cases) {
    auto x = rnd<2>({c.n, c.in}, g), w = rnd<2>({c.out, c.in}, g, -0.3, 0.3);
    auto bias = rnd<1>({c.out}, g);
    const activation act = kActs[(k + 3) % 7];
    attnkit::tensor<double, 2> ref({c.n, c.out});
    for (index_t i = 0; i < c.n; ++i)
      for (index_t o = 0; o < c.out; ++o) {
        double s = bias(o);
        for (index_t j = 0; j < c.in; ++j) s += w(o, j) * x(i, j);
        ref(i, o) = act_ref(act, s);
      }
    auto run = [&](auto arch, auto tag) {
      using A = decltype(arch);
      using T = decltype(tag);
      // x column-major with a padded leading dimension on odd cases; out with stride 2 columns
      const bool tr = k % 2 == 1;
      std::vector<T> xs(static_cast<std::size_t>((c.n + 1) * (c.in + 1)), T(0));
      const view<T, 2> xv(xs.data(), {c.n, c.in},
                          tr ? std::array<index_t, 2>{1, c.n + 1} : std::array<index_t, 2>{c.in + 1, 1});
      for (index_t i = 0; i < c.n; ++i)
        for (index_t j = 0; j < c.in; ++j) xv(i, j) = static_cast<T>(x(i, j));
      const std::vector<T> wv = to_vec<T>(w), bv = to_vec<T>(bias);
      std::vector<std::vector<T>> outs;
      for (int threads : {1, 2}) {
        outs.emplace_back(static_cast<std::size_t>(c.n * c.out * 2), T(-3));
        co::linear<A>(xv, view<const T, 2>::contiguous(wv.data(), {c.out, c.in}), v1(bv),
                      view<T, 2>(outs.back().data(), {c.n, c.out}, {2 * c.out, 2}), act, threads);
      }
      const view<T, 2> o0(outs[0].data(), {c.n, c.out}, {2 * c.out, 2});
      require_close(o0, ref.cview(), tol<T>(), tol<T>(),
                    std::string("linear ") + A::name + std::to_string(k));
      CHECK(same_bits(outs[0], outs[1]));
      std::size_t touched = 0;  // the gaps between the output columns
      for (std::size_t i = 1; i < outs[0].size(); i += 2) touched += outs[0][i] != T(-3);
      CHECK(touched == 0);
    };
    for_each_arch([&](auto arch) {
      run(arch, float{});
      run(arch, double{});
    });
    ++k;
  }
}

TEST_CASE("activate: relu, silu, gelu (erf), gelu_tanh, sigmoid vs fp64", "[coatnet_ops]") {
  auto g = seeded_rng(505);
  dtensor x = rnd<4>({2, 3, 5, 37}, g, -12, 12);
  // the far tails: exp over- and underflow must give the limits, never NaN or Inf
  const double tails[] = {20, -20, 90, -90, 1e4, -1e4, 1e13, -1e13, 0, -0.0};
  for (std::size_t i = 0; i < std::size(tails); ++i) x.data()[i * 7] = tails[i];
  for (activation a : kActs) {
    dtensor ref(x.extents());
    for (index_t i = 0; i < x.size(); ++i) ref.data()[i] = act_ref(a, x.data()[i]);
    for_each_arch([&](auto arch) {
      using A = decltype(arch);
      auto run = [&](auto tag) {
        using T = decltype(tag);
        auto xb = to_buffer<T>(x, layout::gapped);
        auto ob = make_buffer<T>(x.extents(), layout::padded, T(-7));
        co::activate<A>(xb.cv(), ob.v, a, 2);
        // float: erfc / exp are good to a few ulp (relative), plus 1e-7 absolute near 0
        require_close(ob.v, ref.cview(), std::is_same_v<T, float> ? 1e-7 : 1e-15,
                      std::is_same_v<T, float> ? 1e-6 : 1e-13,
                      std::string("activate ") + A::name + " " + std::to_string(static_cast<int>(a)));
        CHECK(ob.touched_outside() == 0);
        co::activate<A>(xb.cv(), xb.v, a, 1);  // in place
        require_same_bits(xb.v, ob.v, "in place");
      };
      run(float{});
      run(double{});
    });
  }
}

TEST_CASE("squeeze_excitation, layer_norm, pooling vs fp64 loops", "[coatnet_ops]") {
  auto g = seeded_rng(606);
  for (auto ext : {std::array<index_t, 4>{2, 7, 5, 21}, std::array<index_t, 4>{1, 4, 6, 8},
                   std::array<index_t, 4>{3, 1, 3, 5}}) {
    const index_t B = ext[0], C = ext[3], R = std::max<index_t>(1, C / 4);
    const dtensor x = rnd<4>(ext, g, -2, 2);
    const dtensor w1 = rnd<4>({R, C, 1, 1}, g), w2 = rnd<4>({C, R, 1, 1}, g);
    const dvec b1 = rnd<1>({R}, g), b2 = rnd<1>({C}, g), gamma = rnd<1>({C}, g), beta = rnd<1>({C}, g);
    const attnkit::tensor<double, 2> gp = global_pool_ref(x);
    const dtensor se = se_ref(x, w1, b1, w2, b2, activation::silu), ln = ln_ref(x, gamma, beta, 1e-6),
                  pool = pool_ref(x);
    for_each_arch([&](auto arch) {
      using A = decltype(arch);
      auto run = [&](auto tag) {
        using T = decltype(tag);
        const double t = tol<T>();
        auto xb = to_buffer<T>(x, layout::bshd);
        const std::vector<T> w1v = to_vec<T>(w1), w2v = to_vec<T>(w2), b1v = to_vec<T>(b1),
                             b2v = to_vec<T>(b2), gv = to_vec<T>(gamma), bv = to_vec<T>(beta);
        std::vector<strided_buffer<T>> o;
        for (int threads : {1, 2}) {
          o.push_back(make_buffer<T>(ext, layout::padded, T(-7)));
          co::squeeze_excitation<A>(xb.cv(), view<const T, 4>::contiguous(w1v.data(), w1.extents()), v1(b1v),
                                    view<const T, 4>::contiguous(w2v.data(), w2.extents()), v1(b2v),
                                    o.back().v, activation::silu, threads);
          CHECK(o.back().touched_outside() == 0);
        }
        require_close(o[0].v, se.cview(), t, t, std::string("se ") + A::name);
        require_same_bits(o[0].v, o[1].v, "se threads");
        auto lb = make_buffer<T>(ext, layout::gapped, T(-7));
        co::layer_norm<T>(xb.cv(), v1(gv), v1(bv), lb.v, 1e-6, 2);
        require_close(lb.v, ln.cview(), t, t, "layer_norm");
        CHECK(lb.touched_outside() == 0);
        auto pb = make_buffer<T>(pool.extents(), layout::padded, T(-7));
        co::avg_pool_2x2<T>(xb.cv(), pb.v, 2);
        require_close(pb.v, pool.cview(), t, t, "avg_pool_2x2");
        CHECK(pb.touched_outside() == 0);
        std::vector<T> gpo(static_cast<std::size_t>(B * C * 3), T(-7));
        co::global_avg_pool<T>(xb.cv(), view<T, 2>(gpo.data(), {B, C}, {3 * C, 3}), 2);
        require_close(view<T, 2>(gpo.data(), {B, C}, {3 * C, 3}), gp.cview(), t, t, "global_avg_pool");
      };
      run(float{});
      run(double{});
    });
  }
}

TEST_CASE("coatnet ops reject invalid arguments and write nothing", "[coatnet_ops]") {
  using T = float;
  std::vector<T> xs(2 * 5 * 6 * 4, 1.0f), ws(8 * 4 * 3 * 3, 1.0f), bs(8, 1.0f), os(1000, -7.0f);
  const view<const T, 4> x = view<const T, 4>::contiguous(xs.data(), {2, 5, 6, 4});
  const view<const T, 4> w = view<const T, 4>::contiguous(ws.data(), {8, 4, 3, 3});
  const view<const T, 1> b(bs.data(), {8}, {1});
  auto out = [&](std::array<index_t, 4> e) { return view<T, 4>::contiguous(os.data(), e); };
  auto untouched = [&] {
    for (T v : os)
      if (v != -7.0f) return false;
    return true;
  };
  using attnkit::invalid_argument;
  CHECK_THROWS_AS(co::conv2d(x, w, b, out({2, 5, 6, 7}), 1, 1), invalid_argument);  // out channels
  CHECK_THROWS_AS(co::conv2d(x, w, b, out({2, 3, 3, 8}), 1, 1), invalid_argument);  // out extent
  CHECK_THROWS_AS(co::conv2d(x, w, b, out({2, 3, 3, 8}), 0, 1), invalid_argument);  // stride
  CHECK_THROWS_AS(co::conv2d(x, w, view<const T, 1>(bs.data(), {7}, {1}), out({2, 5, 6, 8}), 1, 1),
                  invalid_argument);  // bias
  CHECK_THROWS_AS(
      co::conv2d(x, view<const T, 4>::contiguous(ws.data(), {8, 3, 3, 3}), b, out({2, 5, 6, 8}), 1, 1),
      invalid_argument);  // Cin
  CHECK_THROWS_AS(co::conv2d(x, w, b, out({2, 5, 6, 8}), 1, 1, activation::none, -1), invalid_argument);
  CHECK_THROWS_AS(co::conv2d(x, w, b, out({2, 5, 6, 8}), 1, 1, static_cast<activation>(99)),
                  invalid_argument);
  CHECK_THROWS_AS(co::depthwise_conv2d(x, w, b, out({2, 5, 6, 4}), 1, 1),
                  invalid_argument);  // not [C, 1, ..]
  const view<const T, 4> dw = view<const T, 4>::contiguous(ws.data(), {4, 1, 3, 3});
  CHECK_THROWS_AS(co::depthwise_conv2d(x, dw, view<const T, 1>(), out({2, 5, 6, 4}), 2, 1), invalid_argument);
  CHECK_THROWS_AS(co::linear(view<const T, 2>::contiguous(xs.data(), {3, 4}),
                             view<const T, 2>::contiguous(ws.data(), {5, 3}), view<const T, 1>(),
                             view<T, 2>::contiguous(os.data(), {3, 5}), activation::none, 1),
                  invalid_argument);
  CHECK_THROWS_AS(co::activate(x, out({2, 5, 6, 5}), activation::gelu), invalid_argument);
  CHECK_THROWS_AS(co::layer_norm(x, b, b, out({2, 5, 6, 4}), 1e-5), invalid_argument);  // gamma [8] != [4]
  CHECK_THROWS_AS(co::avg_pool_2x2(x, out({2, 3, 3, 4})), invalid_argument);
  CHECK_THROWS_AS(co::global_avg_pool(x, view<T, 2>::contiguous(os.data(), {2, 5})), invalid_argument);
  const view<const T, 4> w1 = view<const T, 4>::contiguous(ws.data(), {2, 4, 1, 1});
  const view<const T, 1> b2(bs.data(), {2}, {1});
  CHECK_THROWS_AS(co::squeeze_excitation(x, w1, b2, w1, b, out({2, 5, 6, 4})), invalid_argument);  // w_expand
  CHECK_THROWS_AS(co::conv2d(x, w, b, view<T, 4>(os.data(), {2, 5, 6, 8}, {0, 48, 8, 1}), 1, 1),
                  invalid_argument);  // stride 0 output
  CHECK_THROWS_AS(
      co::conv2d(view<const T, 4>::contiguous(xs.data(), {1, 1, 2, 4}), w, b, out({1, 1, 1, 8}), 1, 0),
      invalid_argument);  // input smaller than the kernel
  CHECK_THROWS_AS(co::layer_norm(x, view<const T, 1>(bs.data(), {4}, {1}),
                                 view<const T, 1>(bs.data(), {4}, {1}), out({2, 5, 6, 4}), -1.0),
                  invalid_argument);  // eps
  CHECK_THROWS_AS(co::fold_batch_norm(w, b, b, b, b, view<const T, 1>(bs.data(), {4}, {1})),
                  invalid_argument);
  CHECK(untouched());
  // empty extents: nothing to do, nothing written
  co::conv2d(view<const T, 4>::contiguous(xs.data(), {0, 5, 6, 4}), w, b, out({0, 5, 6, 8}), 1, 1);
  co::depthwise_conv2d(view<const T, 4>::contiguous(xs.data(), {2, 5, 6, 0}),
                       view<const T, 4>::contiguous(ws.data(), {0, 1, 3, 3}), view<const T, 1>(),
                       out({2, 5, 6, 0}), 1, 1);
  co::linear(view<const T, 2>::contiguous(xs.data(), {0, 4}), view<const T, 2>::contiguous(ws.data(), {3, 4}),
             view<const T, 1>(), view<T, 2>::contiguous(os.data(), {0, 3}));
  CHECK(untouched());
  // the error names the argument
  try {
    co::conv2d(x, w, b, out({2, 5, 6, 7}), 1, 1);
  } catch (const attnkit::invalid_argument& e) {
    CHECK(std::string(e.what()).find("out has shape [2, 5, 6, 7]") != std::string::npos);
  }
}
