// attnkit tests: the validation contract of docs/design.md (section "Validation") across the
// operators: extents whose element count or reach overflows, outputs whose elements overlap or
// whose memory overlaps an input, out-of-range enum values, Combiner spans of any size, exceptions
// inside parallel regions, and finite outputs for huge finite inputs (saturated logits). Each hole
// found by the adversarial review of the safetensors reader and the API has a case here; the
// reader's own cases are in test_safetensors.cpp.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <attnkit/attnkit.hpp>

#include "reference/attention_ref.hpp"
#include "reference/common.hpp"
#include "reference/kernel_instances.hpp"

namespace {

using namespace attnkit_test;
using attnkit::causal_mode;
using attnkit::invalid_argument;
using Catch::Contains;

constexpr float kSentinel = -7777.25f;

/// A buffer of n floats filled with a ramp in [-1, 1) (inputs) or the sentinel (outputs).
std::vector<float> ramp(std::size_t n, std::uint64_t salt) {
  test_rng rng{salt * 0x9E3779B97F4A7C15ull + 7};
  std::vector<float> x(n);
  for (auto& e : x) e = static_cast<float>(rng.uniform(-1, 1));
  return x;
}

bool untouched(const std::vector<float>& x) {
  return std::all_of(x.begin(), x.end(), [](float e) { return e == kSentinel; });
}

bool all_finite(const float* x, std::size_t n) {
  return std::all_of(x, x + n, [](float e) { return std::isfinite(e); });
}

/// Contiguous q, k, v of extents [B, H, L, d] holding ramps (salts salt, salt + 1, salt + 2).
struct qkv_inputs {
  std::vector<float> qd, kd, vd;
  view<const float, 4> q, k, v;
  qkv_inputs(index_t B, index_t H, index_t L, index_t d, std::uint64_t salt)
      : qd(ramp(B * H * L * d, salt)),
        kd(ramp(B * H * L * d, salt + 1)),
        vd(ramp(B * H * L * d, salt + 2)),
        q(view<const float, 4>::contiguous(qd.data(), {B, H, L, d})),
        k(view<const float, 4>::contiguous(kd.data(), {B, H, L, d})),
        v(view<const float, 4>::contiguous(vd.data(), {B, H, L, d})) {}
};

/// Every attention-shaped operator called on (q, k, v, out) with its default options but for the
/// given mask and scale: exact, FAVOR+, each Combiner plan, relative attention on an H x W grid.
struct attention_ops {
  index_t H = 0, W = 0;  // the grid of relative attention (H * W == Lq == Lk), 0: skipped
  attnkit::mask mask{};
  double scale = 0.0;

  template <class F>
  void each(F&& f) const {
    using q_t = view<const float, 4>;
    using o_t = view<float, 4>;
    f("full_attention", [&](q_t q, q_t k, q_t v, o_t o) {
      attnkit::attention_options opt;
      opt.mask = mask;
      opt.scale = scale;
      attnkit::full_attention(q, k, v, o, opt);
    });
    f("favor_attention", [&](q_t q, q_t k, q_t v, o_t o) {
      const auto feats = attnkit::random_features<float>::orthogonal(16, q.extent(3), 3);
      attnkit::favor_options opt;
      opt.mask = mask;
      opt.scale = scale;
      attnkit::favor_attention(q, k, v, o, feats, opt);
    });
    auto combiner = [&](const char* name, const auto& plan) {
      f(name, [&](q_t q, q_t k, q_t v, o_t o) {
        attnkit::combiner_options opt;
        opt.mask = mask;
        opt.scale = scale;
        attnkit::combiner_attention(q, k, v, o, plan, opt);
      });
    };
    combiner("combiner fixed", attnkit::combiner::fixed{});
    combiner("combiner logsparse", attnkit::combiner::logsparse{});
    if (H > 0) {
      combiner("combiner axial row_major",
               attnkit::combiner::axial{H, W, attnkit::combiner::axial_order::row_major});
      combiner("combiner axial mixture",
               attnkit::combiner::axial{H, W, attnkit::combiner::axial_order::mixture});
      f("relative_attention_2d", [&](q_t q, q_t k, q_t v, o_t o) {
        const attnkit::tensor<float, 3> table({q.extent(1), 2 * H - 1, 2 * W - 1});
        attnkit::relative_options opt;
        opt.mask = mask;
        opt.scale = scale;
        attnkit::relative_attention_2d(q, k, v, table.cview(), attnkit::relative_grid{H, W}, o, opt);
      });
    }
  }
};

}  // namespace

TEST_CASE("validation: extents whose element count or reach overflows are rejected, nothing written",
          "[validation]") {
  // size() saturates instead of overflowing; every operator rejects such views.
  const index_t big = index_t(1) << 32;
  const view<const float, 4> huge(nullptr, {big, big, 1, 1}, {0, 0, 0, 0});
  CHECK(huge.size() == std::numeric_limits<index_t>::max());
  CHECK(view<const float, 4>(nullptr, {big, big, 0, 1}, {0, 0, 0, 0}).size() == 0);
  CHECK(attnkit::detail::checked_count(std::array<index_t, 3>{big, big, 2}) == -1);
  CHECK(attnkit::detail::checked_count(std::array<index_t, 3>{big, 0, big}) == 0);
  CHECK_THROWS_AS((attnkit::tensor<float, 2>({index_t(1) << 62, 4})), invalid_argument);

  std::vector<float> qd = ramp(64, 1), kd = ramp(64, 2), vd = ramp(64, 3);
  std::vector<float> od(64, kSentinel);
  // The reviewer's case: {2^32, 2^32, 1, 1} views (contiguous strides) over small buffers.
  const std::array<index_t, 4> e{big, big, 1, 1}, s{big, 1, 1, 1};
  const view<const float, 4> q(qd.data(), e, s), k(kd.data(), e, s), v(vd.data(), e, s);
  const view<float, 4> out(od.data(), e, s);
  attention_ops ops;
  ops.each([&](const char* name, auto&& op) {
    INFO(name);
    CHECK_THROWS_WITH(op(q, k, v, out), Contains("overflows"));
    CHECK(untouched(od));
  });
  // A reach (extents x strides) beyond the address space: strides of 2^61 elements on a dim of 4.
  const view<const float, 4> far(qd.data(), {1, 1, 4, 4}, {16, 16, index_t(1) << 61, 1});
  ops.each([&](const char* name, auto&& op) {
    INFO(name);
    CHECK_THROWS_WITH(op(far, far, far, view<float, 4>::contiguous(od.data(), {1, 1, 4, 4})),
                      Contains("the memory it spans overflows"));
    CHECK(untouched(od));
  });
  // lambda and the CoAtNet ops go through the same checks
  const view<const float, 4> lq(qd.data(), {big, big, 1, 1}, s);
  const view<float, 3> lo(od.data(), {big, big, 1}, {big, 1, 1});
  CHECK_THROWS_WITH(attnkit::lambda_attention(lq, lq, lq, attnkit::lambda_position<float>::none(), lo),
                    Contains("overflows"));
  CHECK_THROWS_WITH(
      attnkit::coatnet::activate(lq, view<float, 4>(od.data(), e, s), attnkit::coatnet::activation::relu),
      Contains("overflows"));
  CHECK(untouched(od));
}

TEST_CASE("validation: an out whose elements overlap, or which overlaps an input, is rejected",
          "[validation]") {
  const index_t B = 1, H = 2, L = 8, d = 4;
  const qkv_inputs in(B, H, L, d, 11);
  const auto &q = in.q, &k = in.k, &v = in.v;
  std::vector<float> od(64, kSentinel);
  attention_ops ops;
  ops.H = 2;
  ops.W = 4;
  SECTION("rows that overlap: strides {64, 32, 1, 1} on [1, 2, 8, 4] (the reviewer's case)") {
    const view<float, 4> out(od.data(), {B, H, L, d}, {64, 32, 1, 1});
    ops.each([&](const char* name, auto&& op) {
      INFO(name);
      CHECK_THROWS_WITH(op(q, k, v, out), Contains("out has shape [1, 2, 8, 4] and strides [64, 32, 1, 1]") &&
                                              Contains("elements overlap"));
      CHECK(untouched(od));
    });
    // stride 0 over an extent > 1, and two axes that interleave
    for (const auto& st : {std::array<index_t, 4>{64, 32, 0, 1}, std::array<index_t, 4>{64, 1, 4, 2}}) {
      const view<float, 4> o2(od.data(), {B, H, L, d}, st);
      CHECK_THROWS_WITH(attnkit::full_attention(q, k, v, o2), Contains("elements overlap"));
    }
    CHECK(untouched(od));
  }
  SECTION("out that shares memory with q, k, v, key_lengths or bias") {
    std::vector<float> shared = in.qd;  // q and out in one buffer, out starting half-way into q
    shared.resize(96, kSentinel);
    const auto qs = view<const float, 4>::contiguous(shared.data(), {B, H, L, d});
    const auto over = view<float, 4>::contiguous(shared.data() + 32, {B, H, L, d});
    ops.each([&](const char* name, auto&& op) {
      INFO(name);
      CHECK_THROWS_WITH(op(qs, k, v, over), Contains("out overlaps q in memory"));
      CHECK_THROWS_WITH(op(k, qs, v, over), Contains("out overlaps k in memory"));
      CHECK_THROWS_WITH(op(k, v, qs, over), Contains("out overlaps v in memory"));
      CHECK(attnkit_test::same_bits(std::vector<float>(shared.begin(), shared.begin() + 64), in.qd));
    });
    // out == q exactly (an in-place attention) is an overlap too: Combiner axial reads q after writing out
    std::vector<float> inplace = in.qd;
    const auto qi = view<const float, 4>::contiguous(inplace.data(), {B, H, L, d});
    const auto oi = view<float, 4>::contiguous(inplace.data(), {B, H, L, d});
    CHECK_THROWS_WITH(attnkit::combiner_attention(qi, k, v, oi, attnkit::combiner::axial{2, 4}),
                      Contains("out overlaps q"));
    // a bias read from the output's memory
    attnkit::attention_options opt;
    std::vector<float> ob(128, kSentinel);  // out: [32, 96), bias: [64, 128)
    opt.mask.bias = view<const float, 4>(ob.data() + 64, {1, 1, L, L}, {0, 0, L, 1});
    CHECK_THROWS_WITH(
        attnkit::full_attention(q, k, v, view<float, 4>::contiguous(ob.data() + 32, {B, H, L, d}), opt),
        Contains("out overlaps mask.bias"));
    CHECK(untouched(ob));
    // key_lengths inside the output's memory (out is never written, so its type does not matter)
    std::vector<std::int64_t> lens(32, 0);
    attnkit::attention_options kl;
    kl.mask.key_lengths = view<const std::int64_t, 1>(lens.data(), {1}, {1});
    CHECK_THROWS_WITH(
        attnkit::full_attention(
            q, k, v, view<float, 4>::contiguous(reinterpret_cast<float*>(lens.data()), {B, H, L, d}), kl),
        Contains("out overlaps mask.key_lengths"));
    CHECK(std::all_of(lens.begin(), lens.end(), [](std::int64_t x) { return x == 0; }));
    // the relative table, the lambda position table, Combiner centroids
    std::vector<float> tab(2 * 3 * 7 + 64, 0.f);
    CHECK_THROWS_WITH(
        attnkit::relative_attention_2d(q, k, v, view<const float, 3>::contiguous(tab.data(), {2, 3, 7}),
                                       attnkit::relative_grid{2, 4},
                                       view<float, 4>::contiguous(tab.data() + 10, {B, H, L, d})),
        Contains("out overlaps table"));
    std::vector<float> mu(64 + 3 * d, 0.5f);
    attnkit::combiner::learnable lp;
    lp.centroids = view<const float, 3>::contiguous(mu.data() + 60, {1, 3, d});
    CHECK_THROWS_WITH(
        attnkit::combiner_attention(q, k, v, view<float, 4>::contiguous(mu.data(), {B, H, L, d}), lp),
        Contains("out overlaps plan.centroids"));
  }
  SECTION("layouts that do not overlap are accepted: permuted, padded, reversed, broadcast extents of 1") {
    attnkit::tensor<float, 4> want({B, H, L, d});
    attnkit::full_attention(q, k, v, want.view());
    std::vector<float> big(4 * 128, kSentinel);
    const std::array<std::array<index_t, 4>, 3> strides{{
        {L * H * d, d, H * d, 1},  // [B, L, H, d] memory viewed as [B, H, L, d]
        {4 * 128, 128, 16, 2},     // padded rows, every second element
        {64, -32, -4, -1},         // every axis reversed (the view points at the last element)
    }};
    for (const auto& st : strides) {
      std::fill(big.begin(), big.end(), kSentinel);
      index_t off = 0;
      for (int a = 0; a < 4; ++a)
        if (st[static_cast<std::size_t>(a)] < 0)
          off -= st[static_cast<std::size_t>(a)] *
                 (std::array<index_t, 4>{B, H, L, d}[static_cast<std::size_t>(a)] - 1);
      const view<float, 4> o(big.data() + off, {B, H, L, d}, st);
      REQUIRE_NOTHROW(attnkit::full_attention(q, k, v, o));
      for_each_index(std::array<index_t, 4>{B, H, L, d}, [&](const auto& ix) {
        REQUIRE(o(ix[0], ix[1], ix[2], ix[3]) == want(ix[0], ix[1], ix[2], ix[3]));
      });
    }
    // an extent-1 axis may have any stride, 0 included
    const view<float, 4> o1(od.data(), {1, H, L, d}, {0, L * d, d, 1});
    CHECK_NOTHROW(attnkit::full_attention(q, k, v, o1));
  }
  SECTION("the CoAtNet ops: in place where documented, any other overlap rejected") {
    using attnkit::coatnet::activation;
    std::vector<float> x = ramp(2 * 3 * 5 * 4, 21);
    const auto xv = view<const float, 4>::contiguous(x.data(), {2, 3, 5, 4});
    attnkit::tensor<float, 4> ref({2, 3, 5, 4});
    attnkit::coatnet::activate(xv, ref.view(), activation::silu);
    attnkit::coatnet::activate(xv, view<float, 4>::contiguous(x.data(), {2, 3, 5, 4}), activation::silu);
    CHECK(attnkit_test::same_bits(x, std::vector<float>(ref.data(), ref.data() + ref.size())));
    // shifted by one element: neither in place nor disjoint
    std::vector<float> y = ramp(2 * 3 * 5 * 4 + 1, 22);
    const std::vector<float> y0 = y;
    CHECK_THROWS_WITH(
        attnkit::coatnet::activate(view<const float, 4>::contiguous(y.data(), {2, 3, 5, 4}),
                                   view<float, 4>::contiguous(y.data() + 1, {2, 3, 5, 4}), activation::relu),
        Contains("out overlaps x"));
    CHECK(attnkit_test::same_bits(y, y0));
    // a convolution never runs in place; its output must not overlap the weights either
    std::vector<float> w = ramp(16 + 120, 23);
    const auto wv = view<const float, 4>::contiguous(w.data(), {4, 4, 1, 1});
    CHECK_THROWS_WITH(attnkit::coatnet::conv2d(xv, wv, view<const float, 1>{},
                                               view<float, 4>::contiguous(x.data(), {2, 3, 5, 4}), 1, 0),
                      Contains("out overlaps x"));
    CHECK_THROWS_WITH(attnkit::coatnet::conv2d(xv, wv, view<const float, 1>{},
                                               view<float, 4>::contiguous(w.data() + 8, {2, 3, 5, 4}), 1, 0),
                      Contains("out overlaps weight"));
  }
}

TEST_CASE("validation: an out-of-range causal_mode is rejected by every operator with a mask",
          "[validation]") {
  const index_t B = 1, H = 2, L = 8, d = 4;
  std::vector<float> qd = ramp(B * H * L * d, 31);
  const auto q = view<const float, 4>::contiguous(qd.data(), {B, H, L, d});
  std::vector<float> od(64, kSentinel);
  const auto out = view<float, 4>::contiguous(od.data(), {B, H, L, d});
  attention_ops ops;
  ops.H = 2;
  ops.W = 4;
  ops.mask.causal = static_cast<causal_mode>(7);
  ops.each([&](const char* name, auto&& op) {
    INFO(name);
    CHECK_THROWS_WITH(op(q, q, q, out), Contains("mask.causal = 7 is not a causal_mode value"));
    CHECK(untouched(od));
  });
  attnkit::lambda_options lo;
  lo.mask.causal = static_cast<causal_mode>(-1);
  const view<const float, 4> lq(qd.data(), {B, L, 2, 4}, {L * 8, 8, 4, 1});
  CHECK_THROWS_WITH(
      attnkit::lambda_attention(lq, view<const float, 4>(qd.data(), {B, L, 4, 1}, {L * 4, 4, 1, 1}),
                                view<const float, 4>(qd.data(), {B, L, 4, 1}, {L * 4, 4, 1, 1}),
                                attnkit::lambda_position<float>::none(),
                                view<float, 3>::contiguous(od.data(), {B, L, 8}), lo),
      Contains("is not a causal_mode value"));
  CHECK(untouched(od));
  attnkit::mask m;
  m.causal = static_cast<causal_mode>(3);
  CHECK_THROWS_AS(
      attnkit::combiner::assign_clusters(q, view<const float, 3>(qd.data(), {1, 2, d}, {0, d, 1}), m),
      invalid_argument);
}

TEST_CASE("validation: a Combiner span of L or more is one segment: exact attention, causal or not",
          "[validation][combiner]") {
  const index_t B = 2, H = 2, L = 37, d = 8;
  const qkv_inputs in(B, H, L, d, 41);
  const auto &q = in.q, &k = in.k, &v = in.v;
  const std::int64_t spans[] = {L, L + 1, std::int64_t(1) << 40, std::numeric_limits<std::int64_t>::max()};
  std::vector<std::int32_t> ids(static_cast<std::size_t>(L));
  for (index_t j = 0; j < L; ++j) ids[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(j % 5);
  for (bool causal : {false, true}) {
    attnkit::attention_options eo;
    eo.mask.causal = causal ? causal_mode::top_left : causal_mode::none;
    attnkit::tensor<float, 4> exact({B, H, L, d});
    attnkit::full_attention(q, k, v, exact.view(), eo);
    for (std::int64_t span : spans) {
      INFO("causal = " << causal << ", span = " << span);
      attnkit::combiner_options co;
      co.causal = causal;
      attnkit::tensor<float, 4> got({B, H, L, d});
      REQUIRE_NOTHROW(attnkit::combiner_attention(q, k, v, got.view(), attnkit::combiner::fixed{span}, co));
      require_close(got.cview(), exact.cview(), 1e-5, 1e-5);
      if (causal) {  // causal learnable: one segment up to i is every key j <= i
        attnkit::combiner::learnable lp;
        lp.cluster_ids = view<const std::int32_t, 3>(ids.data(), {1, 1, L}, {0, 0, 1});
        lp.span = span;
        attnkit::tensor<float, 4> lg({B, H, L, d});
        REQUIRE_NOTHROW(attnkit::combiner_attention(q, k, v, lg.view(), lp, co));
        require_close(lg.cview(), exact.cview(), 1e-5, 1e-5);
      }
      // the explicit distribution agrees (the span resolves the same way)
      const auto p = attnkit::combiner_probabilities(q, k, attnkit::combiner::fixed{span}, co);
      attnkit::tensor<float, 4> from_p({B, H, L, d});
      for_each_index(std::array<index_t, 4>{B, H, L, d}, [&](const auto& ix) {
        double acc = 0;
        for (index_t j = 0; j < L; ++j)
          acc += double(p(ix[0], ix[1], ix[2], j)) * double(v(ix[0], ix[1], j, ix[3]));
        from_p(ix[0], ix[1], ix[2], ix[3]) = static_cast<float>(acc);
      });
      require_close(from_p.cview(), exact.cview(), 1e-5, 1e-5);
    }
  }
}

TEST_CASE("validation: an empty input may have any strides; the output does not depend on them",
          "[validation]") {
  // dk = 0 (fuzz finding): q and k hold no elements, so no stride of theirs is bounded by a check;
  // the kernels must not form addresses from them (UBSan: pointer overflow).
  const index_t B = 1, H = 2, L = 12, dv = 3, huge = index_t(1) << 50;
  std::vector<float> vd = ramp(B * H * L * dv, 51), dummy(8, 0.5f);
  const auto v = view<const float, 4>::contiguous(vd.data(), {B, H, L, dv});
  const view<const float, 4> tidy(dummy.data(), {B, H, L, 0}, {H * L, L, 1, 1});
  const view<const float, 4> wild(dummy.data(), {B, H, L, 0}, {huge, -huge, huge, huge});
  attention_ops ops;
  ops.H = 3;
  ops.W = 4;
  ops.each([&](const std::string& name, auto&& op) {
    if (name == "favor_attention") return;  // random features of d = 0 do not exist
    INFO(name);
    attnkit::tensor<float, 4> want({B, H, L, dv}), got({B, H, L, dv});
    REQUIRE_NOTHROW(op(tidy, tidy, v, want.view()));
    REQUIRE_NOTHROW(op(wild, wild, v, got.view()));
    REQUIRE(all_finite(got.data(), got.size()));
    REQUIRE(std::equal(got.data(), got.data() + got.size(), want.data()));
  });
  // lambda with k = 0 query/key depth: C has no rows, Y = Q C = 0, for every position kind
  const index_t m = 6, u = 2;
  std::vector<float> lv = ramp(B * m * dv * u, 52);
  const auto lvv = view<const float, 4>::contiguous(lv.data(), {B, m, dv, u});
  const view<const float, 4> lq(dummy.data(), {B, m, 2, 0}, {huge, huge, huge, huge});
  const view<const float, 4> lk(dummy.data(), {B, m, 0, u}, {huge, huge, huge, huge});
  const view<const float, 4> lt(dummy.data(), {3, 3, 0, u}, {huge, huge, huge, huge});
  const view<const float, 4> le(dummy.data(), {m, m, 0, u}, {huge, huge, huge, huge});
  const attnkit::lambda_grid grid{2, 3};
  for (const auto& pos :
       {attnkit::lambda_position<float>::none(), attnkit::lambda_position<float>::global(le),
        attnkit::lambda_position<float>::local(lt, grid)}) {
    INFO("position kind " << static_cast<int>(pos.kind));
    std::vector<float> od(static_cast<std::size_t>(B * m * 2 * dv), kSentinel);
    const auto o = view<float, 3>::contiguous(od.data(), {B, m, 2 * dv});
    REQUIRE_NOTHROW(attnkit::lambda_attention(lq, lk, lvv, pos, o));
    REQUIRE(std::all_of(od.begin(), od.end(), [](float e) { return e == 0.0f; }));
  }
}

TEST_CASE("parallel_for: an exception in a task reaches the caller, never std::terminate",
          "[core][parallel]") {
  for (int threads : {1, 2, 3}) {
    INFO("threads = " << threads);
    try {
      attnkit::parallel_for(100, threads, [&](index_t t, int) {
        if (t == 37 || t == 80) throw std::runtime_error("task " + std::to_string(t));
      });
      FAIL("no exception");
    } catch (const std::runtime_error& e) {
      CHECK(std::string(e.what()) == "task 37");  // the lowest-numbered failing task, any schedule
    }
    // std::bad_alloc too (what a huge allocation inside a worker throws)
    CHECK_THROWS_AS(attnkit::parallel_for(8, threads,
                                          [](index_t t, int) {
                                            if (t == 3) throw std::bad_alloc();
                                          }),
                    std::bad_alloc);
  }
}

TEST_CASE("validation: huge finite inputs give finite outputs (logits saturate), huge scales are rejected",
          "[validation]") {
  const index_t B = 1, H = 2, L = 48, d = 16;  // L = 6 x 8 for the grid operators
  const std::size_t n = static_cast<std::size_t>(B * H * L * d);
  std::vector<float> vd = ramp(n, 51);
  const auto v = view<const float, 4>::contiguous(vd.data(), {B, H, L, d});
  // the mean of v over the keys: what attention with equal logits returns
  attnkit::tensor<float, 4> mean({B, H, L, d});
  for_each_index(std::array<index_t, 4>{B, H, L, d}, [&](const auto& ix) {
    double acc = 0;
    for (index_t j = 0; j < L; ++j) acc += double(v(ix[0], ix[1], j, ix[3]));
    mean(ix[0], ix[1], ix[2], ix[3]) = static_cast<float>(acc / double(L));
  });
  struct input {
    const char* name;
    float q, k;  // every element of q and k (signs alternate where noted)
    bool alternate;
    double scale;
    bool uniform;  // every logit equal: exact attention returns mean(v)
  };
  const input inputs[] = {
      {"scale 1e38, unit q and k (logits +inf before saturation)", 1.f, 1.f, false, 1e38, true},
      {"scale 1e38, k = -q (logits -inf before saturation)", 1.f, -1.f, false, 1e38, true},
      {"|q|, |k| = 1e20 (q.k overflows)", 1e20f, 1e20f, false, 0.0, true},
      {"q, k = +-1e30 (inf - inf inside the dot products)", 1e30f, 1e30f, true, 0.0, false},
  };
  for (const input& in : inputs) {
    INFO(in.name);
    std::vector<float> qd(n), kd(n);
    for (std::size_t i = 0; i < n; ++i) {
      qd[i] = in.alternate && i % 2 ? -in.q : in.q;
      kd[i] = in.k;
    }
    const auto q = view<const float, 4>::contiguous(qd.data(), {B, H, L, d});
    const auto k = view<const float, 4>::contiguous(kd.data(), {B, H, L, d});
    for (bool causal : {false, true}) {
      attention_ops ops;
      ops.H = 6;
      ops.W = 8;
      ops.scale = in.scale;
      ops.mask.causal = causal ? causal_mode::top_left : causal_mode::none;
      ops.each([&](const char* name, auto&& op) {
        if (causal && std::string(name) == "relative_attention_2d") return;  // bidirectional only
        INFO(name << (causal ? " (causal)" : ""));
        attnkit::tensor<float, 4> out({B, H, L, d});
        op(q, k, v, out.view());
        CHECK(all_finite(out.data(), n));
        if (in.uniform && !causal && std::string(name) == "full_attention")
          require_close(out.cview(), mean.cview(), 1e-5, 1e-5);
      });
      // the decode path of exact attention (one query row per head)
      attnkit::attention_options opt;
      opt.scale = in.scale;
      attnkit::tensor<float, 4> o1({B, H, 1, d});
      attnkit::full_attention(view<const float, 4>(qd.data(), {B, H, 1, d}, {H * L * d, L * d, d, 1}), k, v,
                              o1.view(), opt);
      CHECK(all_finite(o1.data(), static_cast<std::size_t>(o1.size())));
    }
  }
  // Values at the documented bound |v| <= max / Lk stay finite (the unnormalized sums are <= Lk max|v|).
  std::vector<float> vbig(n);
  for (std::size_t i = 0; i < n; ++i)
    vbig[i] = (i % 3 ? 1.f : -1.f) * std::numeric_limits<float>::max() / float(L);
  std::vector<float> qd = ramp(n, 52), kd = ramp(n, 53);
  attention_ops ops;
  ops.H = 6;
  ops.W = 8;
  ops.each([&](const char* name, auto&& op) {
    if (std::string(name) == "favor_attention") return;  // its bound has the feature count too (docs)
    INFO(name << " with |v| = max / Lk");
    attnkit::tensor<float, 4> out({B, H, L, d});
    op(view<const float, 4>::contiguous(qd.data(), {B, H, L, d}),
       view<const float, 4>::contiguous(kd.data(), {B, H, L, d}),
       view<const float, 4>::contiguous(vbig.data(), {B, H, L, d}), out.view());
    CHECK(all_finite(out.data(), n));
  });
  // A scale whose scale * log2(e) is not a finite T is rejected (float: > max / 2; double accepts it).
  std::vector<float> od(n, kSentinel);
  const auto q = view<const float, 4>::contiguous(qd.data(), {B, H, L, d});
  attention_ops bad;
  bad.H = 6;
  bad.W = 8;
  bad.scale = 3e38;
  bad.each([&](const char* name, auto&& op) {
    INFO(name);
    CHECK_THROWS_WITH(op(q, q, q, view<float, 4>::contiguous(od.data(), {B, H, L, d})), Contains("scale = "));
    CHECK(untouched(od));
  });
  std::vector<double> qdd(n, 1.0), odd(n);
  attnkit::attention_options dopt;
  dopt.scale = 3e38;
  attnkit::full_attention(view<const double, 4>::contiguous(qdd.data(), {B, H, L, d}),
                          view<const double, 4>::contiguous(qdd.data(), {B, H, L, d}),
                          view<const double, 4>::contiguous(qdd.data(), {B, H, L, d}),
                          view<double, 4>::contiguous(odd.data(), {B, H, L, d}), dopt);
  CHECK(std::all_of(odd.begin(), odd.end(), [](double x) { return x == 1.0; }));
}

TEST_CASE("validation: tensor_view::contiguous of negative or overflowing extents is defined and rejected",
          "[validation][core]") {
  // fuzz finding: the stride product overflowed (UBSan) before any operator could reject the view
  std::vector<float> d(8, 0.5f);
  const index_t huge = std::numeric_limits<index_t>::max();
  const auto v = view<const float, 4>::contiguous(d.data(), {huge, -2, 3, 2});
  CHECK(v.stride(3) == 1);
  CHECK(v.stride(2) == 2);
  CHECK(v.stride(1) == 6);
  std::vector<float> od(64, kSentinel);
  CHECK_THROWS_AS(attnkit::full_attention(v, v, v, view<float, 4>::contiguous(od.data(), {1, 1, 3, 2})),
                  invalid_argument);
  CHECK(untouched(od));
}
