// attnkit tests: the lambda layer against the fp64 composition (projections, batch norm, then the
// lambda formulas of docs/design.md §4.4 on materialized position embeddings) and against lambda_attention
// on its own projections; batch-norm folding, strided inputs, invalid arguments, empty extents.
#include <attnkit/lambda/layer.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "reference/common.hpp"

namespace {

using namespace attnkit_test;
using attnkit::lambda_grid;
using attnkit::lambda_position_kind;

/// One layer configuration and call.
struct spec {
  std::string name;
  index_t B = 2, n = 0, m = 0, d = 0, h = 1, k = 1, u = 1, v = 1;
  lambda_position_kind pos = lambda_position_kind::none;
  index_t H = 0, W = 0;   ///< > 0: a feature map [B, H, W, d] (n = m = H * W)
  bool separate = false;  ///< a context [B, m, d] of its own
  index_t scope = 0;      ///< local
  bool causal = false;
  bool lengths = false;  ///< key_lengths {m, m - 3, 0, ...}
  bool map() const { return H > 0; }
};

const char* kind_name(lambda_position_kind k) {
  switch (k) {
    case lambda_position_kind::none:
      return "none";
    case lambda_position_kind::global:
      return "global";
    case lambda_position_kind::relative:
      return "relative";
    case lambda_position_kind::local:
      return "local";
  }
  return "?";
}

attnkit::lambda_layer_config config_of(const spec& s) {
  attnkit::lambda_layer_config c;
  c.d = s.d;
  c.heads = s.h;
  c.k = s.k;
  c.u = s.u;
  c.v = s.v;
  c.position = s.pos;
  c.grid = s.map() ? lambda_grid{s.H, s.W} : lambda_grid{1, s.n};
  c.context = s.pos == lambda_position_kind::global ? s.m : 0;
  c.scope = s.scope;
  c.spatial = s.map();
  return c;
}

/// Random parameters: init(seed), then biases and batch norms away from identity.
template <class L>
void randomize(L& layer, std::uint64_t salt) {
  layer.init(salt);
  test_rng g = seeded_rng(salt);
  auto fill = [&](auto view, double lo, double hi) {
    for (index_t i = 0; i < view.extent(0); ++i)
      view(i) = static_cast<typename decltype(view)::value_type>(g.uniform(lo, hi));
  };
  fill(layer.query_bias(), -0.3, 0.3);
  fill(layer.value_bias(), -0.3, 0.3);
  fill(layer.query_scale(), 0.5, 1.5);
  fill(layer.query_shift(), -0.5, 0.5);
  fill(layer.value_scale(), 0.5, 1.5);
  fill(layer.value_shift(), -0.5, 0.5);
}

/// fp64 forward of `layer` on x [B, n, d] and ctx [B, m, d] (row-major): projections with the
/// unfolded batch norms, softmax of the keys over the visible context, lambdas with the position
/// embeddings E[n, m, k, u] materialized from the layer's table. Returns [B, n, h * v].
template <class L>
std::vector<double> reference_forward(const L& layer, const spec& s, const std::vector<double>& x,
                                      const std::vector<double>& ctx, const std::vector<std::int64_t>& lens) {
  const auto& c = layer.config();
  const index_t B = s.B, n = s.n, m = s.m, d = c.d, h = c.heads, K = c.k, U = c.u, V = c.v;
  const index_t hk = h * K, ku = K * U, vu = V * U;
  auto wq = layer.query_weights();
  auto wk = layer.key_weights();
  auto wv = layer.value_weights();
  auto bq = layer.query_bias(), bv = layer.value_bias();
  auto sq = layer.query_scale(), tq = layer.query_shift(), sv = layer.value_scale(), tv = layer.value_shift();
  auto t = layer.position_table();
  std::vector<double> q(B * n * hk), kk(B * m * ku), vv(B * m * vu);
  for (index_t r = 0; r < B * n; ++r)
    for (index_t ch = 0; ch < hk; ++ch) {
      double a = bq(ch);
      for (index_t p = 0; p < d; ++p) a += x[r * d + p] * double(wq(p, ch));
      q[r * hk + ch] = a * double(sq(ch)) + double(tq(ch));
    }
  for (index_t r = 0; r < B * m; ++r) {
    for (index_t ch = 0; ch < ku; ++ch) {
      double a = 0;
      for (index_t p = 0; p < d; ++p) a += ctx[r * d + p] * double(wk(p, ch));
      kk[r * ku + ch] = a;
    }
    for (index_t ch = 0; ch < vu; ++ch) {
      double a = bv(ch);
      for (index_t p = 0; p < d; ++p) a += ctx[r * d + p] * double(wv(p, ch));
      vv[r * vu + ch] = a * double(sv(ch)) + double(tv(ch));
    }
  }
  // the grid of relative / local terms
  const index_t rows = s.map() ? s.H : 1, cols = s.map() ? s.W : n;
  auto embedding = [&](index_t i, index_t j, index_t a, index_t uu) -> double {
    switch (c.position) {
      case lambda_position_kind::global:
        return t(i, j, a, uu);
      case lambda_position_kind::relative: {
        const index_t dy = j / cols - i / cols, dx = j % cols - i % cols;
        return t(dy + rows - 1, dx + cols - 1, a, uu);
      }
      case lambda_position_kind::local: {
        const index_t dy = j / cols - i / cols, dx = j % cols - i % cols;
        const index_t ch = t.extent(0) / 2, cw = t.extent(1) / 2;
        if (dy < -ch || dy > ch || dx < -cw || dx > cw) return 0;
        return t(dy + ch, dx + cw, a, uu);
      }
      default:
        return 0;
    }
  };
  std::vector<double> out(B * n * h * V, 0.0), lam(K * V), kbar(m);
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < n; ++i) {
      index_t end = lens.empty() ? m : static_cast<index_t>(lens[b]);
      if (s.causal) end = std::min(end, i + 1);
      std::fill(lam.begin(), lam.end(), 0.0);
      for (index_t a = 0; a < K; ++a)
        for (index_t uu = 0; uu < U; ++uu) {
          double mx = -1e300, z = 0;
          for (index_t j = 0; j < end; ++j) mx = std::max(mx, kk[(b * m + j) * ku + a * U + uu]);
          for (index_t j = 0; j < end; ++j) z += kbar[j] = std::exp(kk[(b * m + j) * ku + a * U + uu] - mx);
          for (index_t j = 0; j < end; ++j) {
            const double w = kbar[j] / z + embedding(i, j, a, uu);
            for (index_t e = 0; e < V; ++e) lam[a * V + e] += w * vv[(b * m + j) * vu + e * U + uu];
          }
        }
      for (index_t hh = 0; hh < h; ++hh)
        for (index_t e = 0; e < V; ++e) {
          double y = 0;
          for (index_t a = 0; a < K; ++a) y += q[(b * n + i) * hk + hh * K + a] * lam[a * V + e];
          out[(b * n + i) * h * V + hh * V + e] = y;
        }
    }
  return out;
}

/// The inputs, the layer and its output of one spec.
template <class T, class Arch>
struct fixture {
  spec s;
  attnkit::lambda_layer<T, Arch> layer;
  std::vector<T> x, ctx, out;
  std::vector<double> xd, cd;
  std::vector<std::int64_t> lens;
  attnkit::lambda_options options;

  explicit fixture(const spec& sp, std::uint64_t salt = 1) : s(sp), layer(config_of(sp)) {
    randomize(layer, salt);
    test_rng g = seeded_rng(salt + 100);
    x.resize(s.B * s.n * s.d);
    ctx.resize(s.separate ? s.B * s.m * s.d : 0);
    for (T& e : x) e = static_cast<T>(g.uniform(-1, 1));
    for (T& e : ctx) e = static_cast<T>(g.uniform(-1, 1));
    xd.assign(x.begin(), x.end());
    cd = s.separate ? std::vector<double>(ctx.begin(), ctx.end()) : xd;
    out.assign(s.B * s.n * s.h * s.v, T(-7));
    if (s.lengths)
      for (index_t b = 0; b < s.B; ++b) lens.push_back(b == 0 ? s.m : b == 1 ? s.m - 3 : 0);
    options.causal = s.causal;
    if (s.lengths) options.mask.key_lengths = view<const std::int64_t, 1>::contiguous(lens.data(), {s.B});
  }
  view<const T, 3> xv() const { return view<const T, 3>::contiguous(x.data(), {s.B, s.n, s.d}); }
  view<T, 3> ov() { return view<T, 3>::contiguous(out.data(), {s.B, s.n, s.h * s.v}); }
  void forward() {
    if (s.map())
      layer.forward(view<const T, 4>::contiguous(x.data(), {s.B, s.H, s.W, s.d}),
                    view<T, 4>::contiguous(out.data(), {s.B, s.H, s.W, s.h * s.v}), options);
    else if (s.separate)
      layer.forward(xv(), view<const T, 3>::contiguous(ctx.data(), {s.B, s.m, s.d}), ov(), options);
    else
      layer.forward(xv(), ov(), options);
  }
  std::vector<double> reference() const { return reference_forward(layer, s, xd, cd, lens); }
};

std::vector<spec> composition_specs() {
  using K = lambda_position_kind;
  std::vector<spec> v;
  auto add = [&](spec s) {
    if (s.m == 0) s.m = s.map() ? s.H * s.W : s.n;
    if (s.map()) s.n = s.H * s.W;
    v.push_back(s);
  };
  // self-context sequences: every term, u = 1 and u > 1, h = 1 and h > 1, causal, key_lengths
  add({"seq none", 2, 29, 0, 37, 3, 5, 1, 7, K::none});
  add({"seq none causal u3", 2, 29, 0, 37, 3, 5, 3, 7, K::none, 0, 0, false, 0, true});
  add({"seq global u2", 2, 29, 0, 37, 2, 4, 2, 5, K::global});
  add({"seq global causal lengths", 3, 23, 0, 17, 3, 3, 1, 6, K::global, 0, 0, false, 0, true, true});
  add({"seq relative h1", 2, 29, 0, 37, 1, 6, 1, 9, K::relative});
  add({"seq relative causal u3", 2, 31, 0, 19, 4, 5, 3, 3, K::relative, 0, 0, false, 0, true});
  add({"seq local r5 u2", 2, 29, 0, 37, 3, 5, 2, 7, K::local, 0, 0, false, 5});
  add({"seq local r61 causal lengths", 3, 29, 0, 11, 2, 4, 1, 17, K::local, 0, 0, false, 61, true, true});
  add({"seq local r5 n137 (two row blocks)", 2, 137, 0, 33, 2, 4, 1, 5, K::local, 0, 0, false, 5});
  add({"seq d1 n1", 1, 1, 0, 1, 1, 1, 1, 1, K::relative});
  // separate contexts, m != n
  add({"context none lengths u2", 3, 13, 22, 37, 3, 5, 2, 7, K::none, 0, 0, true, 0, false, true});
  add({"context global u3", 2, 13, 22, 19, 2, 4, 3, 5, K::global, 0, 0, true});
  add({"context global m<n", 2, 22, 9, 19, 2, 4, 1, 5, K::global, 0, 0, true});
  add({"context relative m=n", 2, 17, 17, 21, 2, 3, 2, 4, K::relative, 0, 0, true});
  add({"context local m=n", 2, 17, 17, 21, 2, 3, 1, 4, K::local, 0, 0, true, 3});
  // feature maps on non-square grids
  add({"map none 5x7", 2, 0, 0, 19, 3, 4, 1, 5, K::none, 5, 7});
  add({"map global 5x7 u2", 2, 0, 0, 19, 2, 4, 2, 5, K::global, 5, 7});
  add({"map relative 5x7 u3", 2, 0, 0, 19, 3, 5, 3, 6, K::relative, 5, 7});
  add({"map relative 6x4 h1", 1, 0, 0, 33, 1, 8, 1, 16, K::relative, 6, 4});
  add({"map local r3 5x7", 2, 0, 0, 19, 3, 4, 1, 5, K::local, 5, 7, false, 3});
  add({"map local r5 6x4 u2", 2, 0, 0, 17, 4, 3, 2, 3, K::local, 6, 4, false, 5});
  add({"map local r7 11x13 u2 (two row blocks)", 2, 0, 0, 24, 2, 4, 2, 5, K::local, 11, 13, false, 7});
  add({"map local r9 3x8", 1, 0, 0, 20, 2, 5, 1, 6, K::local, 3, 8, false, 9});
  return v;
}

template <class T, class Arch>
void check_composition(const spec& s, double atol, double rtol) {
  fixture<T, Arch> f(s, 11);
  f.forward();
  const std::vector<double> ref = f.reference();
  double scale = 0;
  for (double r : ref) scale = std::max(scale, std::fabs(r));
  require_close(view<const T, 3>(f.ov()),
                view<const double, 3>::contiguous(ref.data(), {s.B, s.n, s.h * s.v}), atol * scale, rtol,
                s.name + " " + kind_name(s.pos));
}

}  // namespace

TEST_CASE("lambda_layer equals the fp64 composition", "[lambda_layer]") {
  for (const spec& s : composition_specs()) {
    for_each_arch([&](auto arch) {
      using A = decltype(arch);
      INFO(s.name << " float arch size " << (attnkit::simd::batch<float, A>::size));
      check_composition<float, A>(s, 5e-6, 1e-5);
    });
    INFO(s.name << " double native");
    check_composition<double, attnkit::simd::native>(s, 1e-13, 1e-12);
  }
}

TEST_CASE("lambda_layer equals lambda_attention on its projections", "[lambda_layer]") {
  using K = lambda_position_kind;
  const std::vector<spec> specs = {
      {"seq local causal", 2, 29, 29, 37, 3, 5, 2, 7, K::local, 0, 0, false, 7, true},
      {"context global lengths", 3, 13, 22, 19, 2, 4, 3, 5, K::global, 0, 0, true, 0, false, true},
      {"map relative 5x7", 2, 35, 35, 19, 3, 5, 1, 6, K::relative, 5, 7},
      {"map local 5x7", 2, 35, 35, 19, 3, 5, 2, 6, K::local, 5, 7, false, 3},
  };
  for (const spec& s : specs)
    for_each_arch([&](auto arch) {
      using A = decltype(arch);
      INFO(s.name << " arch size " << (attnkit::simd::batch<float, A>::size));
      fixture<float, A> f(s, 5);
      f.forward();
      std::vector<float> q(s.B * s.n * s.h * s.k), k(s.B * s.m * s.k * s.u), v(s.B * s.m * s.v * s.u),
          out(f.out.size(), -1.0f);
      const auto qv = view<float, 4>::contiguous(q.data(), {s.B, s.n, s.h, s.k});
      const auto kv = view<float, 4>::contiguous(k.data(), {s.B, s.m, s.k, s.u});
      const auto vv = view<float, 4>::contiguous(v.data(), {s.B, s.m, s.v, s.u});
      const auto ctx = s.separate ? view<const float, 3>::contiguous(f.ctx.data(), {s.B, s.m, s.d}) : f.xv();
      f.layer.project(f.xv(), ctx, qv, kv, vv);
      const auto ov = view<float, 3>::contiguous(out.data(), {s.B, s.n, s.h * s.v});
      attnkit::lambda_attention<A>(
          view<const float, 4>(qv), view<const float, 4>(kv), view<const float, 4>(vv),
          f.layer.position(lambda_grid{std::max<index_t>(s.H, 1), s.map() ? s.W : 0}), ov, f.options);
      require_same_bits(view<float, 3>(f.ov()), ov, s.name + ": forward vs lambda_attention on project()");

      // the projections themselves against fp64 (queries: x W_q + b_q, then the batch norm)
      auto wq = f.layer.query_weights();
      double worst = 0;
      for (index_t r = 0; r < s.B * s.n; ++r)
        for (index_t c = 0; c < s.h * s.k; ++c) {
          double a = f.layer.query_bias()(c);
          for (index_t p = 0; p < s.d; ++p) a += f.xd[r * s.d + p] * double(wq(p, c));
          a = a * double(f.layer.query_scale()(c)) + double(f.layer.query_shift()(c));
          worst = std::max(worst, std::fabs(a - double(q[r * s.h * s.k + c])));
        }
      INFO("max |queries - fp64| = " << worst);
      REQUIRE(worst < 1e-5);
    });
}

TEST_CASE("lambda_layer batch norm: statistics, folding", "[lambda_layer]") {
  using K = lambda_position_kind;
  for (const spec& s : {spec{"seq relative", 2, 29, 29, 37, 3, 5, 2, 7, K::relative},
                        spec{"map local", 2, 35, 35, 19, 2, 4, 1, 5, K::local, 5, 7, false, 3}})
    for_each_arch([&](auto arch) {
      using A = decltype(arch);
      fixture<float, A> f(s, 3);
      test_rng g = seeded_rng(77);
      const index_t hk = s.h * s.k, vu = s.v * s.u;
      std::vector<float> stats(4 * std::max(hk, vu));
      auto set = [&](index_t ch, bool query) {
        for (float& e : stats) e = static_cast<float>(g.uniform(0.2, 2.0));
        auto vw = [&](int i) { return view<const float, 1>::contiguous(stats.data() + i * ch, {ch}); };
        if (query)
          f.layer.set_query_batch_norm(vw(0), vw(1), vw(2), vw(3), 1e-3);
        else
          f.layer.set_value_batch_norm(vw(0), vw(1), vw(2), vw(3), 1e-3);
        const auto sc = query ? f.layer.query_scale() : f.layer.value_scale();
        const auto sh = query ? f.layer.query_shift() : f.layer.value_shift();
        double worst = 0;
        for (index_t c = 0; c < ch; ++c) {
          const double scale = stats[c] / std::sqrt(double(stats[3 * ch + c]) + 1e-3);
          worst = std::max({worst, std::fabs(sc(c) - scale) / scale,
                            std::fabs(sh(c) - (stats[ch + c] - stats[2 * ch + c] * scale))});
        }
        REQUIRE(worst < 1e-6);
      };
      set(hk, true);
      set(vu, false);
      f.forward();
      const std::vector<float> unfolded = f.out;
      const std::vector<double> ref = f.reference();
      f.layer.fold_batch_norm();
      for (index_t c = 0; c < hk; ++c)
        REQUIRE((f.layer.query_scale()(c) == 1 && f.layer.query_shift()(c) == 0));
      for (index_t c = 0; c < vu; ++c)
        REQUIRE((f.layer.value_scale()(c) == 1 && f.layer.value_shift()(c) == 0));
      f.forward();
      const auto folded = view<const float, 3>::contiguous(f.out.data(), {s.B, s.n, s.h * s.v});
      require_close(folded, view<const float, 3>::contiguous(unfolded.data(), {s.B, s.n, s.h * s.v}), 1e-6,
                    1e-5, s.name + ": folded vs unfolded");
      double scale = 0;
      for (double r : ref) scale = std::max(scale, std::fabs(r));
      require_close(folded, view<const double, 3>::contiguous(ref.data(), {s.B, s.n, s.h * s.v}),
                    2e-5 * (1 + scale), 1e-4, s.name + ": folded vs fp64 unfolded");
    });
}

TEST_CASE("lambda_layer strided inputs and outputs, threads, stale weights", "[lambda_layer]") {
  using A = attnkit::simd::native;
  const spec s{"map relative 5x7", 2, 35, 35, 19, 3, 5, 2, 6, lambda_position_kind::relative, 5, 7};
  fixture<float, A> f(s, 9);
  f.forward();
  const index_t hv = s.h * s.v;
  // x with padded channels, rows and image rows (no [b, H * W, d] view), out the same way
  const index_t xs2 = s.d + 3, xs1 = s.W * xs2 + 5, xs0 = s.H * xs1 + 2;
  std::vector<float> xb(s.B * xs0, 1e30f), ob(s.B * (s.H * (s.W * (hv + 2) + 3)), -3.0f);
  const view<float, 4> xv(xb.data(), {s.B, s.H, s.W, s.d}, {xs0, xs1, xs2, 1});
  for_each_index(xv.extents(), [&](const std::array<index_t, 4>& ix) {
    at(xv, ix) = f.x[((ix[0] * s.H + ix[1]) * s.W + ix[2]) * s.d + ix[3]];
  });
  const view<float, 4> ov(ob.data(), {s.B, s.H, s.W, hv},
                          {s.H * (s.W * (hv + 2) + 3), s.W * (hv + 2) + 3, hv + 2, 1});
  f.layer.forward(view<const float, 4>(xv), ov, f.options);
  const auto want = view<const float, 4>::contiguous(f.out.data(), {s.B, s.H, s.W, hv});
  require_same_bits(view<const float, 4>(ov), want, "padded x and out vs contiguous");
  index_t outside = 0;
  for_each_index(ov.extents(), [&](const std::array<index_t, 4>& ix) { at(ov, ix) = -3.0f; });
  for (float e : ob) outside += e != -3.0f;
  REQUIRE(outside == 0);  // nothing written between the rows of out

  // sequences: channel-major x (unit row stride), gapped channels, a context with padded rows
  {
    const spec q{"seq global context", 2, 29, 23, 21, 2, 4, 2, 3, lambda_position_kind::global, 0, 0, true};
    fixture<float, A> g(q, 4);
    g.forward();
    std::vector<float> xb(q.B * q.n * q.d * 2 + 1), cb(q.B * q.m * (q.d + 4)),
        obuf(q.B * q.n * q.h * q.v * 3);
    const view<float, 3> x_dmajor(xb.data(), {q.B, q.n, q.d}, {q.n * q.d, 1, q.n});
    const view<float, 3> x_gapped(xb.data() + 1, {q.B, q.n, q.d}, {q.n * q.d * 2, q.d * 2, 2});
    const view<float, 3> c_padded(cb.data(), {q.B, q.m, q.d}, {q.m * (q.d + 4), q.d + 4, 1});
    const view<float, 3> o_gapped(obuf.data(), {q.B, q.n, q.h * q.v},
                                  {q.n * q.h * q.v * 3, q.h * q.v * 3, 3});
    for_each_index(c_padded.extents(), [&](const std::array<index_t, 3>& ix) {
      at(c_padded, ix) = g.ctx[(ix[0] * q.m + ix[1]) * q.d + ix[2]];
    });
    for (const auto& xs : {x_dmajor, x_gapped}) {
      for_each_index(xs.extents(), [&](const std::array<index_t, 3>& ix) {
        at(xs, ix) = g.x[(ix[0] * q.n + ix[1]) * q.d + ix[2]];
      });
      g.layer.forward(view<const float, 3>(xs), view<const float, 3>(c_padded), o_gapped, g.options);
      require_same_bits(view<const float, 3>(o_gapped), view<const float, 3>(g.ov()), "strided sequences");
    }
  }

  // threads: the same bits
  std::vector<float> o1(f.out.size());
  attnkit::lambda_options one = f.options;
  one.threads = 1;
  f.layer.forward(view<const float, 4>::contiguous(f.x.data(), {s.B, s.H, s.W, s.d}),
                  view<float, 4>::contiguous(o1.data(), {s.B, s.H, s.W, hv}), one);
  REQUIRE(same_bits(o1, f.out));

  // a view kept across a call: weights_changed() makes the next call repack
  auto wq = f.layer.query_weights();
  f.forward();
  for (index_t c = 0; c < wq.extent(1); ++c) wq(0, c) += 0.5f;
  f.layer.weights_changed();
  f.forward();
  const std::vector<double> ref = f.reference();
  require_close(view<const float, 3>(f.ov()), view<const double, 3>::contiguous(ref.data(), {s.B, s.n, hv}),
                1e-4, 1e-4, "after weights_changed");
  REQUIRE(!same_bits(o1, f.out));

  // init is deterministic
  attnkit::lambda_layer<float> a(config_of(s)), b(config_of(s));
  a.init(42);
  b.init(42);
  const auto ta = a.position_table(), tb = b.position_table();
  REQUIRE(ta.extents() == std::array<index_t, 4>{2 * s.H - 1, 2 * s.W - 1, s.k, s.u});
  require_same_bits(view<const float, 4>(ta), view<const float, 4>(tb), "init(42) tables");
  REQUIRE(std::memcmp(a.value_weights().data(), b.value_weights().data(), sizeof(float) * s.d * s.v * s.u) ==
          0);
}

TEST_CASE("lambda_layer rejects invalid arguments and writes nothing", "[lambda_layer]") {
  using K = lambda_position_kind;
  using Catch::Matchers::Contains;
  const spec s{"seq global", 2, 13, 13, 19, 2, 4, 2, 5, K::global};
  fixture<float, attnkit::simd::native> f(s, 1);
  attnkit::lambda_layer<float>& L = f.layer;
  const index_t B = s.B, n = s.n, d = s.d, hv = s.h * s.v;
  std::vector<float> big(4 * B * 32 * 32 * 32, 0.5f);
  std::vector<float> out(4 * B * 32 * hv, 9.0f);
  auto x3 = [&](index_t b, index_t nn, index_t dd) {
    return view<const float, 3>::contiguous(big.data(), {b, nn, dd});
  };
  auto o3 = [&](index_t b, index_t nn, index_t c) {
    return view<float, 3>::contiguous(out.data(), {b, nn, c});
  };
  auto untouched = [&] {
    for (float e : out)
      if (e != 9.0f) return false;
    return true;
  };
  REQUIRE_THROWS_WITH(L.forward(x3(B, n, d + 1), o3(B, n, hv)), Contains("x has shape [2, 13, 20]"));
  REQUIRE_THROWS_WITH(L.forward(x3(B, n, d), o3(B, n, hv + 1)),
                      Contains("out has shape [2, 13, 11], expected [2, 13, 10]"));
  REQUIRE_THROWS_WITH(L.forward(x3(B, n, d), x3(B + 1, n, d), o3(B, n, hv)),
                      Contains("context has shape [3, 13, 19]"));
  REQUIRE_THROWS_WITH(L.forward(x3(B, n, d), x3(B, n, d - 1), o3(B, n, hv)), Contains("context has shape"));
  REQUIRE_THROWS_WITH(L.forward(x3(B, n + 1, d), o3(B, n + 1, hv)),
                      Contains("global position embeddings are [n=13, m=13"));
  REQUIRE_THROWS_WITH(L.forward(x3(B, n, d), x3(B, n + 2, d), o3(B, n, hv)), Contains("m = 15 context"));
  REQUIRE_THROWS_WITH(L.forward(view<const float, 3>(nullptr, {B, n, d}, {n * d, d, 1}), o3(B, n, hv)),
                      Contains("x has shape [2, 13, 19] but no data"));
  REQUIRE_THROWS_WITH(L.forward(x3(B, n, d), view<float, 3>(out.data(), {B, n, hv}, {0, hv, 1})),
                      Contains("elements overlap"));
  attnkit::lambda_options bad;
  std::vector<std::int64_t> lens{13, 14};
  bad.mask.key_lengths = view<const std::int64_t, 1>::contiguous(lens.data(), {2});
  REQUIRE_THROWS_WITH(L.forward(x3(B, n, d), o3(B, n, hv), bad), Contains("mask.key_lengths[1] = 14"));
  bad.mask.key_lengths = view<const std::int64_t, 1>::contiguous(lens.data(), {1});
  REQUIRE_THROWS_WITH(L.forward(x3(B, n, d), o3(B, n, hv), bad), Contains("mask.key_lengths has shape [1]"));
  bad = {};
  bad.mask.bias = view<const float, 4>(big.data(), {1, 1, n, n}, {0, 0, n, 1});
  REQUIRE_THROWS_WITH(L.forward(x3(B, n, d), o3(B, n, hv), bad), Contains("mask.bias"));
  bad = {};
  bad.threads = -1;
  REQUIRE_THROWS_WITH(L.forward(x3(B, n, d), o3(B, n, hv), bad), Contains("threads = -1"));
  REQUIRE(untouched());

  // position terms that do not fit the call
  auto layer_with = [&](K kind, index_t rows, index_t cols, index_t scope, bool spatial) {
    attnkit::lambda_layer_config c = config_of(s);
    c.position = kind;
    c.grid = {rows, cols};
    c.context = 0;
    c.scope = scope;
    c.spatial = spatial;
    return attnkit::lambda_layer<float>(c);
  };
  auto x4 = [&](index_t H, index_t W) { return view<const float, 4>::contiguous(big.data(), {B, H, W, d}); };
  auto o4 = [&](index_t H, index_t W) { return view<float, 4>::contiguous(out.data(), {B, H, W, hv}); };
  auto rel = layer_with(K::relative, 3, 5, 0, false);
  REQUIRE_THROWS_WITH(rel.forward(x4(5, 3), o4(5, 3)),
                      Contains("relative position table is for a 3 x 5 grid"));
  REQUIRE_THROWS_WITH(rel.forward(x3(B, 15, d), x3(B, 14, d), o3(B, 15, hv)), Contains("m = 14"));
  REQUIRE_NOTHROW(rel.forward(x3(B, 15, d), o3(B, 15, hv)));  // the 3 x 5 grid in raster order
  std::fill(out.begin(), out.end(), 9.0f);
  auto loc2 = layer_with(K::local, 1, 0, 3, true);
  REQUIRE_THROWS_WITH(loc2.forward(x3(B, n, d), o3(B, n, hv)), Contains("needs a feature map"));
  auto loc1 = layer_with(K::local, 1, 0, 3, false);
  REQUIRE_THROWS_WITH(loc1.forward(x4(3, 4), o4(3, 4)), Contains("needs sequences"));
  REQUIRE_THROWS_WITH(loc1.forward(x3(B, n, d), x3(B, n - 1, d), o3(B, n, hv)), Contains("needs sequences"));
  REQUIRE_THROWS_WITH(loc2.forward(x4(3, 4), o4(4, 3)),
                      Contains("out has shape [2, 4, 3, 10], expected [2, 3, 4, 10]"));
  REQUIRE(untouched());

  // project()
  std::vector<float> pq(B * n * s.h * s.k), pk(B * n * s.k * s.u), pv(B * n * s.v * s.u);
  REQUIRE_THROWS_WITH(
      L.project(x3(B, n, d), x3(B, n, d), view<float, 4>::contiguous(pq.data(), {B, n, s.k, s.h}),
                view<float, 4>::contiguous(pk.data(), {B, n, s.k, s.u}),
                view<float, 4>::contiguous(pv.data(), {B, n, s.v, s.u})),
      Contains("queries has shape [2, 13, 4, 2], expected [2, 13, 2, 4]"));

  // configurations and batch-norm statistics
  auto cfg = config_of(s);
  cfg.d = 0;
  REQUIRE_THROWS_WITH(attnkit::lambda_layer<float>(cfg), Contains("d = 0"));
  cfg = config_of(s);
  cfg.v = 0;
  cfg.heads = 4;
  REQUIRE_THROWS_WITH(attnkit::lambda_layer<float>(cfg),
                      Contains("d_out = 19 is not a multiple of heads = 4"));
  cfg.d_out = 24;
  REQUIRE(attnkit::lambda_layer<float>(cfg).out_channels() == 24);
  REQUIRE(attnkit::lambda_layer<float>(cfg).config().v == 6);
  cfg = config_of(s);
  cfg.grid = {};
  REQUIRE_THROWS_WITH(attnkit::lambda_layer<float>(cfg), Contains("config.grid"));
  cfg.position = K::local;
  cfg.scope = 4;
  REQUIRE_THROWS_WITH(attnkit::lambda_layer<float>(cfg), Contains("odd config.scope"));
  std::vector<float> st(64, 1.0f);
  const auto v8 = view<const float, 1>::contiguous(st.data(), {8});
  const auto v9 = view<const float, 1>::contiguous(st.data(), {9});
  REQUIRE_THROWS_WITH(L.set_query_batch_norm(v8, v9, v8, v8, 1e-5),
                      Contains("beta has shape [9], expected [8]"));
  st[3] = -2;
  REQUIRE_THROWS_WITH(L.set_query_batch_norm(v8, v8, v8, v8, 1e-5), Contains("var[3] + eps"));
  REQUIRE_THROWS_WITH(L.set_value_batch_norm(v8, v8, v8, v8, 1e-5), Contains("expected [10]"));
}

TEST_CASE("lambda_layer empty extents", "[lambda_layer]") {
  using K = lambda_position_kind;
  for_each_arch([&](auto arch) {
    using A = decltype(arch);
    for (K kind : {K::none, K::global, K::relative, K::local}) {
      INFO(kind_name(kind));
      attnkit::lambda_layer_config c;
      c.d = 9;
      c.heads = 2;
      c.k = 3;
      c.u = 2;
      c.v = 4;
      c.position = kind;
      c.grid = {3, 4};
      c.scope = 3;
      c.spatial = true;
      attnkit::lambda_layer<float, A> L(c);
      L.init(1);
      std::vector<float> x(2 * 12 * 9, 0.25f), out(2 * 12 * 8, 5.0f);
      // empty batch: a feature map and sequences
      L.forward(view<const float, 4>::contiguous(x.data(), {0, 3, 4, 9}),
                view<float, 4>::contiguous(out.data(), {0, 3, 4, 8}));
      if (kind == K::none || kind == K::local) {  // a map with no positions
        const std::array<index_t, 4> e0{2, 0, 4, 9}, o0{2, 0, 4, 8};
        L.forward(view<const float, 4>::contiguous(x.data(), e0), view<float, 4>::contiguous(out.data(), o0));
      }
      if (kind != K::local) {
        const index_t n = 12;
        L.forward(view<const float, 3>::contiguous(x.data(), {0, n, 9}),
                  view<float, 3>::contiguous(out.data(), {0, n, 8}));
        L.forward(view<const float, 3>::contiguous(x.data(), {0, n, 9}),
                  view<const float, 3>::contiguous(x.data(), {0, n, 9}),
                  view<float, 3>::contiguous(out.data(), {0, n, 8}));
      }
      REQUIRE(std::count(out.begin(), out.end(), 5.0f) == static_cast<std::ptrdiff_t>(out.size()));
      if (kind == K::none) {
        // no context positions: every output is 0 (the lambda is empty)
        L.forward(view<const float, 3>::contiguous(x.data(), {2, 5, 9}),
                  view<const float, 3>::contiguous(x.data(), {2, 0, 9}),
                  view<float, 3>::contiguous(out.data(), {2, 5, 8}));
        REQUIRE(std::count(out.begin(), out.begin() + 2 * 5 * 8, 0.0f) == 2 * 5 * 8);
      }
    }
  });
}
