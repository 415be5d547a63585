// attnkit tests: the core layer: tensor_view, tensor, parallel_for, the mask model's helpers and
// the SIMD batch primitives (scalar and native side by side).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include <attnkit/core/mask.hpp>
#include <attnkit/core/parallel.hpp>
#include <attnkit/core/simd.hpp>
#include <attnkit/core/tensor.hpp>
#include <attnkit/core/transpose.hpp>

#include "reference/attention_ref.hpp"
#include "reference/common.hpp"

namespace {
using attnkit::index_t;
using attnkit_test::seeded_rng;
}  // namespace

TEST_CASE("tensor_view: contiguous strides, element access, sub-views", "[core][tensor]") {
  std::vector<float> d(2 * 3 * 4 * 5);
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = static_cast<float>(i);
  const auto x = attnkit::tensor_view<float, 4>::contiguous(d.data(), {2, 3, 4, 5});
  CHECK(x.strides() == std::array<index_t, 4>{60, 20, 5, 1});
  CHECK(x.extents() == std::array<index_t, 4>{2, 3, 4, 5});
  CHECK(x.extent(2) == 4);
  CHECK(x.stride(1) == 20);
  CHECK(x.size() == 120);
  CHECK_FALSE(x.empty());
  CHECK(static_cast<bool>(x));
  CHECK(x.data() == d.data());
  CHECK(decltype(x)::rank == 4);
  index_t bad = 0;
  for (index_t a = 0; a < 2; ++a)
    for (index_t b = 0; b < 3; ++b)
      for (index_t c = 0; c < 4; ++c)
        for (index_t e = 0; e < 5; ++e) bad += &x(a, b, c, e) != d.data() + a * 60 + b * 20 + c * 5 + e;
  CHECK(bad == 0);
  // operator[] fixes the first index
  const auto y = x[1];
  STATIC_REQUIRE(std::is_same_v<std::remove_const_t<decltype(y)>, attnkit::tensor_view<float, 3>>);
  CHECK(y.data() == d.data() + 60);
  CHECK(y.extents() == std::array<index_t, 3>{3, 4, 5});
  CHECK(y.strides() == std::array<index_t, 3>{20, 5, 1});
  CHECK(x[1][2][3](4) == d[60 + 40 + 15 + 4]);
  // writes through the view land in memory
  x(1, 2, 3, 4) = -1.0f;
  CHECK(d[119] == -1.0f);
  // rank 1, and an empty view
  const auto r1 = attnkit::tensor_view<double, 1>::contiguous(nullptr, {0});
  CHECK(r1.empty());
  CHECK_FALSE(static_cast<bool>(r1));
  CHECK(r1.stride(0) == 1);
  const attnkit::tensor_view<float, 2> def;
  CHECK(def.data() == nullptr);
  CHECK_FALSE(static_cast<bool>(def));
}

TEST_CASE("tensor_view: arbitrary strides, broadcast stride 0, const conversion", "[core][tensor]") {
  std::vector<float> d(64);
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = static_cast<float>(i);
  // transposed 3 x 4 over row-major 4 x 3 memory
  const attnkit::tensor_view<float, 2> t(d.data(), {3, 4}, {1, 3});
  CHECK(t(2, 1) == d[1 * 3 + 2]);
  CHECK(t[2](3) == d[3 * 3 + 2]);
  // broadcast: stride 0 along the first axis repeats one row
  const attnkit::tensor_view<float, 2> bc(d.data() + 5, {7, 4}, {0, 2});
  index_t bad = 0;
  for (index_t i = 0; i < 7; ++i)
    for (index_t j = 0; j < 4; ++j) bad += &bc(i, j) != d.data() + 5 + 2 * j;
  CHECK(bad == 0);
  CHECK(bc.size() == 28);
  // negative stride: a reversed sequence
  const attnkit::tensor_view<float, 1> rev(d.data() + 9, {10}, {-1});
  CHECK(rev(0) == 9.0f);
  CHECK(rev(9) == 0.0f);
  // view<T> converts implicitly to view<const T>, never the other way
  const attnkit::tensor_view<const float, 2> ct = t;
  CHECK(ct.data() == t.data());
  CHECK(ct.extents() == t.extents());
  CHECK(ct.strides() == t.strides());
  STATIC_REQUIRE(std::is_convertible_v<attnkit::tensor_view<float, 3>, attnkit::tensor_view<const float, 3>>);
  STATIC_REQUIRE_FALSE(
      std::is_convertible_v<attnkit::tensor_view<const float, 3>, attnkit::tensor_view<float, 3>>);
  STATIC_REQUIRE_FALSE(
      std::is_convertible_v<attnkit::tensor_view<float, 3>, attnkit::tensor_view<const double, 3>>);
  STATIC_REQUIRE_FALSE(
      std::is_convertible_v<attnkit::tensor_view<float, 3>, attnkit::tensor_view<const float, 2>>);
}

TEST_CASE("tensor: 64-byte alignment, zero initialization, deep copies", "[core][tensor]") {
  for (index_t n : {1, 3, 17, 64, 1000, 4099}) {
    INFO("n = " << n);
    attnkit::tensor<float, 2> a({n, 3});
    attnkit::tensor<double, 1> b({n});
    attnkit::tensor<std::int64_t, 3> c({1, n, 2});
    CHECK(reinterpret_cast<std::uintptr_t>(a.data()) % 64 == 0);
    CHECK(reinterpret_cast<std::uintptr_t>(b.data()) % 64 == 0);
    CHECK(reinterpret_cast<std::uintptr_t>(c.data()) % 64 == 0);
    CHECK(a.size() == 3 * n);
    CHECK(std::all_of(a.data(), a.data() + a.size(), [](float x) { return x == 0.0f; }));
    CHECK(std::all_of(b.data(), b.data() + b.size(), [](double x) { return x == 0.0; }));
    CHECK(std::all_of(c.data(), c.data() + c.size(), [](std::int64_t x) { return x == 0; }));
    // view() is row-major over the storage
    const auto v = a.view();
    CHECK(v.data() == a.data());
    CHECK(v.strides() == std::array<index_t, 2>{3, 1});
    a(n - 1, 2) = 5.0f;
    CHECK(a.data()[a.size() - 1] == 5.0f);
    CHECK(a.cview()(n - 1, 2) == 5.0f);
    // copies are deep
    attnkit::tensor<float, 2> copy = a;
    CHECK(copy.data() != a.data());
    CHECK(copy.extents() == a.extents());
    CHECK(reinterpret_cast<std::uintptr_t>(copy.data()) % 64 == 0);
    CHECK(std::equal(a.data(), a.data() + a.size(), copy.data()));
    copy(0, 0) = 7.0f;
    CHECK(a(0, 0) == 0.0f);
    attnkit::tensor<float, 2> assigned({2, 2});
    assigned = copy;
    CHECK(assigned.extents() == copy.extents());
    CHECK(assigned(0, 0) == 7.0f);
    CHECK(assigned.data() != copy.data());
    const auto& self = assigned;
    assigned = self;  // self-assignment keeps the contents
    CHECK(assigned(0, 0) == 7.0f);
    // moves transfer the storage
    float* p = copy.data();
    attnkit::tensor<float, 2> moved = std::move(copy);
    CHECK(moved.data() == p);
    CHECK(moved(0, 0) == 7.0f);
  }
  attnkit::tensor<float, 2> empty({0, 5});
  CHECK(empty.size() == 0);
  CHECK(empty.view().empty());
  attnkit::tensor<float, 1> def;
  CHECK(def.size() == 0);
  CHECK_THROWS_AS((attnkit::tensor<float, 2>({-1, 3})), attnkit::invalid_argument);
}

TEST_CASE("parallel_for: every task runs exactly once, thread ids in range, results deterministic",
          "[core][parallel]") {
  for (int threads : {1, 2, 0, 3})
    for (index_t n : {0, 1, 2, 3, 17, 1000}) {
      INFO("threads = " << threads << " n = " << n);
      const int nt = attnkit::resolve_threads(threads, n);
      CHECK(nt >= 1);
      CHECK(nt <= std::max<index_t>(n, 1));
      if (threads > 0) CHECK(nt <= threads);
      std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
      for (auto& h : hits) h = 0;
      std::atomic<int> bad_thread{0};
      std::vector<double> result(static_cast<std::size_t>(n));
      attnkit::parallel_for(n, threads, [&](index_t t, int thread) {
        hits[static_cast<std::size_t>(t)]++;
        if (thread < 0 || thread >= nt) bad_thread++;
        double acc = 0;  // a task-local computation; the result must not depend on the schedule
        for (int i = 1; i <= 100; ++i) acc += std::sin(static_cast<double>(t * i));
        result[static_cast<std::size_t>(t)] = acc;
      });
      index_t not_once = 0;
      for (auto& h : hits) not_once += h.load() != 1;
      CHECK(not_once == 0);
      CHECK(bad_thread.load() == 0);
      std::vector<double> serial(static_cast<std::size_t>(n));
      attnkit::parallel_for(n, 1, [&](index_t t, int) {
        double acc = 0;
        for (int i = 1; i <= 100; ++i) acc += std::sin(static_cast<double>(t * i));
        serial[static_cast<std::size_t>(t)] = acc;
      });
      CHECK(attnkit_test::same_bits(serial, result));
    }
}

TEST_CASE("mask: visibility gives each query a prefix of keys for every causal mode", "[core][mask]") {
  using attnkit::causal_mode;
  const std::vector<std::int64_t> lens{0, 1, 3, 7, 12};
  for (causal_mode c : {causal_mode::none, causal_mode::top_left, causal_mode::bottom_right})
    for (auto [lq, lk] :
         {std::pair<index_t, index_t>{5, 12}, {12, 12}, {12, 5}, {1, 12}, {12, 1}, {0, 3}, {3, 0}})
      for (int use_lens = 0; use_lens < 2; ++use_lens) {
        attnkit::mask m;
        m.causal = c;
        std::vector<std::int64_t> l;
        for (std::int64_t x : lens) l.push_back(std::min<std::int64_t>(x, lk));
        if (use_lens) m.key_lengths = attnkit::tensor_view<const std::int64_t, 1>(l.data(), {5}, {1});
        REQUIRE_NOTHROW(attnkit::detail::check_mask(m, "test", 5, 2, lq, lk));
        index_t bad = 0;
        for (index_t b = 0; b < 5; ++b) {
          const auto vis = attnkit::detail::make_visibility(m, b, lq, lk);
          for (index_t i = 0; i < lq; ++i) {
            const index_t end = vis.key_end(i);
            if (end < 0 || end > lk) ++bad;
            for (index_t j = 0; j < lk; ++j) {
              const bool want =
                  attnkit_test::ref::visible(m, b, i, j, lq, lk);  // the spec: docs/design.md §3
              bad += vis.visible(i, j) != want;
              bad += (j < end) != want;
            }
          }
        }
        INFO("causal " << int(c) << " Lq " << lq << " Lk " << lk << " key_lengths " << use_lens);
        CHECK(bad == 0);
      }
  // Spot values: bottom_right with Lq > Lk leaves the first Lq - Lk queries without keys.
  attnkit::mask m;
  m.causal = causal_mode::bottom_right;
  const auto vis = attnkit::detail::make_visibility(m, 0, 7, 3);
  CHECK(vis.key_end(0) == 0);
  CHECK(vis.key_end(3) == 0);
  CHECK(vis.key_end(4) == 1);
  CHECK(vis.key_end(6) == 3);
  m.causal = causal_mode::top_left;
  CHECK(attnkit::detail::make_visibility(m, 0, 7, 3).key_end(6) == 3);
  CHECK(attnkit::detail::make_visibility(m, 0, 7, 3).key_end(0) == 1);
  m.causal = causal_mode::bottom_right;
  CHECK(attnkit::detail::make_visibility(m, 0, 2, 9).key_end(0) == 8);
}

TEST_CASE("mask: check_mask validates key_lengths and bias, broadcast_bias indexes [B, H, Lq, Lk]",
          "[core][mask]") {
  const index_t B = 2, H = 3, Lq = 4, Lk = 5;
  std::vector<float> bias(static_cast<std::size_t>(B * H * Lq * Lk));
  for (std::size_t i = 0; i < bias.size(); ++i) bias[i] = static_cast<float>(i);
  auto bview = [&](std::array<index_t, 4> e) {
    return attnkit::tensor_view<const float, 4>::contiguous(bias.data(), e);
  };
  const std::array<index_t, 4> ok_shapes[] = {{B, H, Lq, Lk}, {1, 1, Lq, Lk}, {B, 1, Lq, Lk}, {1, H, Lq, Lk},
                                              {B, 1, 1, Lk},  {1, 1, 1, 1},   {1, 1, Lq, 1},  {B, H, 1, 1}};
  for (const auto& e : ok_shapes) {
    INFO("bias shape " << attnkit_test::index_string(e));
    attnkit::mask m;
    m.bias = bview(e);
    CHECK_NOTHROW(attnkit::detail::check_mask(m, "test", B, H, Lq, Lk));
    CHECK_THROWS_AS(attnkit::detail::check_mask(m, "test", B, H, Lq, Lk, /*allow_bias=*/false),
                    attnkit::invalid_argument);
    const auto full = attnkit::detail::broadcast_bias(m.bias, B, H, Lq, Lk);
    CHECK(full.extents() == std::array<index_t, 4>{B, H, Lq, Lk});
    index_t bad = 0;
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < H; ++h)
        for (index_t i = 0; i < Lq; ++i)
          for (index_t j = 0; j < Lk; ++j)
            bad += static_cast<double>(full(b, h, i, j)) != attnkit_test::ref::bias_at(m.bias, b, h, i, j);
    CHECK(bad == 0);
  }
  const std::array<index_t, 4> bad_shapes[] = {
      {B, H, Lq, Lk + 1}, {3, 1, Lq, Lk}, {1, 2, 1, 1}, {1, 1, Lq - 1, Lk}, {B, H, Lq, 0}};
  for (const auto& e : bad_shapes) {
    INFO("bias shape " << attnkit_test::index_string(e));
    attnkit::mask m;
    m.bias = bview(e);
    CHECK_THROWS_AS(attnkit::detail::check_mask(m, "test", B, H, Lq, Lk), attnkit::invalid_argument);
  }
  const std::vector<std::int64_t> good{0, Lk}, high{Lk + 1, 0}, neg{-1, 2}, three{1, 2, 3};
  auto lv = [](const std::vector<std::int64_t>& l) {
    return attnkit::tensor_view<const std::int64_t, 1>(l.data(), {static_cast<index_t>(l.size())}, {1});
  };
  attnkit::mask m;
  m.key_lengths = lv(good);
  CHECK_NOTHROW(attnkit::detail::check_mask(m, "test", B, H, Lq, Lk));
  m.key_lengths = lv(high);
  CHECK_THROWS_WITH(attnkit::detail::check_mask(m, "where", B, H, Lq, Lk),
                    Catch::Matchers::Contains("key_lengths") && Catch::Matchers::StartsWith("where"));
  m.key_lengths = lv(neg);
  CHECK_THROWS_AS(attnkit::detail::check_mask(m, "test", B, H, Lq, Lk), attnkit::invalid_argument);
  m.key_lengths = lv(three);
  CHECK_THROWS_AS(attnkit::detail::check_mask(m, "test", B, H, Lq, Lk), attnkit::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// SIMD batch primitives

namespace {
template <class T, class Arch>
struct batch_case {
  using value_type = T;
  using arch = Arch;
};
}  // namespace

// scalar, native, and avx2 too when native is avx512 (its fallback).
#if ATTNKIT_HAS_AVX512
#define ATTNKIT_TEST_BATCHES                                                               \
  (batch_case<float, attnkit::simd::scalar>), (batch_case<double, attnkit::simd::scalar>), \
      (batch_case<float, attnkit::simd::avx2>), (batch_case<double, attnkit::simd::avx2>), \
      (batch_case<float, attnkit::simd::native>), (batch_case<double, attnkit::simd::native>)
#elif ATTNKIT_HAS_AVX2
#define ATTNKIT_TEST_BATCHES                                                               \
  (batch_case<float, attnkit::simd::scalar>), (batch_case<double, attnkit::simd::scalar>), \
      (batch_case<float, attnkit::simd::native>), (batch_case<double, attnkit::simd::native>)
#else
#define ATTNKIT_TEST_BATCHES \
  (batch_case<float, attnkit::simd::scalar>), (batch_case<double, attnkit::simd::scalar>)
#endif

TEMPLATE_TEST_CASE("batch: loads, stores and partial tails", "[core][simd]", ATTNKIT_TEST_BATCHES) {
  using T = typename TestType::value_type;
  using B = attnkit::simd::batch<T, typename TestType::arch>;
  constexpr int W = B::size;
  INFO("arch " << TestType::arch::name << " W = " << W);
  std::vector<T> src(static_cast<std::size_t>(3 * W + 1)), dst(src.size());
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<T>(i) + T(0.5);
  // full load / store at an unaligned address
  B::load(src.data() + 1).store(dst.data() + 1);
  for (int l = 0; l < W; ++l)
    CHECK(dst[static_cast<std::size_t>(1 + l)] == src[static_cast<std::size_t>(1 + l)]);
  // iota, broadcast, zero
  std::vector<T> lanes(static_cast<std::size_t>(W));
  B::iota().store(lanes.data());
  for (int l = 0; l < W; ++l) CHECK(lanes[static_cast<std::size_t>(l)] == T(l));
  B::broadcast(T(3.25)).store(lanes.data());
  CHECK(std::all_of(lanes.begin(), lanes.end(), [](T x) { return x == T(3.25); }));
  B::zero().store(lanes.data());
  CHECK(std::all_of(lanes.begin(), lanes.end(), [](T x) { return x == T(0) && !std::signbit(x); }));
  const T guard = T(-99);
  for (int n = 0; n <= W; ++n) {
    INFO("n = " << n);
    // load_partial: the first n lanes, zeros elsewhere; reading stops at n (a NaN after them is not loaded)
    std::vector<T> in(static_cast<std::size_t>(W), std::numeric_limits<T>::quiet_NaN());
    for (int l = 0; l < n; ++l) in[static_cast<std::size_t>(l)] = T(l + 1);
    B::load_partial(in.data(), n).store(lanes.data());
    int wrong = 0;
    for (int l = 0; l < W; ++l) wrong += lanes[static_cast<std::size_t>(l)] != (l < n ? T(l + 1) : T(0));
    CHECK(wrong == 0);
    // store_partial writes exactly the first n lanes
    std::vector<T> out(static_cast<std::size_t>(W + 2), guard);
    B::iota().store_partial(out.data() + 1, n);
    wrong = 0;
    for (int l = 0; l < W + 2; ++l) {
      const T want = (l >= 1 && l <= n) ? T(l - 1) : guard;
      wrong += out[static_cast<std::size_t>(l)] != want;
    }
    CHECK(wrong == 0);
  }
  // load_partial near the end of an allocation (ASan checks that no lane past n is read)
  std::vector<T> tail(static_cast<std::size_t>(std::max(W - 1, 1)), T(2));
  B::load_partial(tail.data(), static_cast<int>(tail.size()) >= W ? W : static_cast<int>(tail.size()))
      .store(lanes.data());
  CHECK(lanes[0] == T(2));
}

/// What batch fma computes: fused (one rounding), except on the scalar path of a target without FMA
/// instructions, where the product is rounded first (see simd/scalar.hpp).
template <class Arch, class T>
T expected_fma(T a, T b, T c) {
#if !defined(__FMA__)
  if (std::is_same_v<Arch, attnkit::simd::scalar>) {
    const T p = a * b;
    return p + c;
  }
#endif
  return std::fma(a, b, c);
}

TEMPLATE_TEST_CASE("batch: arithmetic, fma_masked, select, reductions, min/max with NaN", "[core][simd]",
                   ATTNKIT_TEST_BATCHES) {
  using T = typename TestType::value_type;
  using B = attnkit::simd::batch<T, typename TestType::arch>;
  constexpr int W = B::size;
  INFO("arch " << TestType::arch::name << " W = " << W);
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  std::vector<T> a(static_cast<std::size_t>(W)), b(a.size()), c(a.size()), r(a.size());
  auto gen = seeded_rng(41);
  for (int l = 0; l < W; ++l) {
    a[static_cast<std::size_t>(l)] = static_cast<T>(gen.uniform(-4, 4));
    b[static_cast<std::size_t>(l)] = static_cast<T>(gen.uniform(-4, 4));
    c[static_cast<std::size_t>(l)] = static_cast<T>(gen.uniform(-4, 4));
  }
  const B A = B::load(a.data()), Bb = B::load(b.data()), C = B::load(c.data());
  auto lane = [&](const B& x, int l) {
    x.store(r.data());
    return r[static_cast<std::size_t>(l)];
  };
  int wrong = 0;
  for (int l = 0; l < W; ++l) {
    const auto i = static_cast<std::size_t>(l);
    wrong += lane(A + Bb, l) != a[i] + b[i];
    wrong += lane(A - Bb, l) != a[i] - b[i];
    wrong += lane(A * Bb, l) != a[i] * b[i];
    wrong += lane(fma(A, Bb, C), l) != expected_fma<typename TestType::arch>(a[i], b[i], c[i]);
    wrong += lane(max(A, Bb), l) != std::max(a[i], b[i]);
    wrong += lane(min(A, Bb), l) != std::min(a[i], b[i]);
  }
  CHECK(wrong == 0);

  // reductions
  T mx = -inf, sum = 0;
  for (T x : a) mx = std::max(mx, x);
  CHECK(reduce_max(A) == mx);
  std::vector<T> ints(static_cast<std::size_t>(W));
  for (int l = 0; l < W; ++l) ints[static_cast<std::size_t>(l)] = T(l * l + 1);
  for (T x : ints) sum += x;
  CHECK(reduce_add(B::load(ints.data())) == sum);  // exact for small integers in any order
  {
    double s = 0;
    for (T x : a) s += x;
    CHECK(std::fabs(double(reduce_add(A)) - s) <= W * std::numeric_limits<T>::epsilon() * 16);
  }
  CHECK(reduce_max(B::broadcast(-inf)) == -inf);

  // comparisons, select, fma_masked: lanes l < k selected
  for (int k = 0; k <= W; ++k) {
    INFO("k = " << k);
    const auto m = B::iota() < B::broadcast(T(k));
    const auto mle = B::iota() <= B::broadcast(T(k) - T(1));
    std::vector<T> poison(static_cast<std::size_t>(W));
    for (int l = 0; l < W; ++l) poison[static_cast<std::size_t>(l)] = l % 2 ? nan : inf;
    const B P = B::load(poison.data());
    wrong = 0;
    for (int l = 0; l < W; ++l) {
      const auto i = static_cast<std::size_t>(l);
      wrong += lane(select(m, A, Bb), l) != (l < k ? a[i] : b[i]);
      wrong += lane(select(mle, A, Bb), l) != (l < k ? a[i] : b[i]);
      // masked-off lanes keep acc exactly, even when a or b hold NaN / Inf there
      const T got = lane(fma_masked(m, l < k ? A : P, P, C), l);
      if (l < k) {
        wrong += std::isfinite(got) ? 1 : 0;  // NaN / inf products do reach the selected lanes
      } else {
        wrong += std::memcmp(&got, &c[i], sizeof(T)) != 0;
      }
      const T got2 = lane(fma_masked(m, A, Bb, C), l);
      wrong += got2 != (l < k ? expected_fma<typename TestType::arch>(a[i], b[i], c[i]) : c[i]);
    }
    CHECK(wrong == 0);
  }
  // a NaN comparison is false (ordered, quiet)
  {
    const auto m = B::broadcast(nan) < B::broadcast(T(1));
    const auto m2 = B::broadcast(nan) <= B::broadcast(T(1));
    wrong = 0;
    for (int l = 0; l < W; ++l) {
      wrong += lane(select(m, A, Bb), l) != b[static_cast<std::size_t>(l)];
      wrong += lane(select(m2, A, Bb), l) != b[static_cast<std::size_t>(l)];
    }
    CHECK(wrong == 0);
  }
  // min / max return the second operand when either is NaN (the x86 rule exp relies on)
  {
    const B one = B::broadcast(T(1)), N = B::broadcast(nan);
    CHECK(std::isnan(lane(max(one, N), 0)));
    CHECK(lane(max(N, one), 0) == T(1));
    CHECK(std::isnan(lane(min(one, N), 0)));
    CHECK(lane(min(N, one), 0) == T(1));
  }
}

TEMPLATE_TEST_CASE("batch: round_nearest (ties to even) and ldexp", "[core][simd]", ATTNKIT_TEST_BATCHES) {
  using T = typename TestType::value_type;
  using B = attnkit::simd::batch<T, typename TestType::arch>;
  INFO("arch " << TestType::arch::name);
  auto one = [](T x, auto f) {
    T r;
    f(B::broadcast(x)).store_partial(&r, 1);
    return r;
  };
  const std::pair<T, T> rounds[] = {
      {T(0.5), T(0)},  {T(1.5), T(2)},    {T(2.5), T(2)},         {T(-0.5), T(-0)}, {T(-1.5), T(-2)},
      {T(0.49), T(0)}, {T(-2.51), T(-3)}, {T(1e6 + 0.5), T(1e6)}, {T(7), T(7)},     {T(-126.4), T(-126)}};
  for (auto [x, want] : rounds) {
    INFO("round_nearest(" << x << ")");
    CHECK(one(x, [](B v) { return round_nearest(v); }) == want);
  }
  for (int n : {-126, -100, -10, -1, 0, 1, 10, 100, 127}) {
    INFO("ldexp(1.5, " << n << ")");
    CHECK(one(T(1.5), [n](B v) { return ldexp(v, B::broadcast(T(n))); }) == std::ldexp(T(1.5), n));
  }
  // saturation: huge exponents give inf / 0, NaN exponent gives NaN
  CHECK(one(T(1), [](B v) { return ldexp(v, B::broadcast(T(5000))); }) == std::numeric_limits<T>::infinity());
  CHECK(one(T(1), [](B v) { return ldexp(v, B::broadcast(T(-5000))); }) == T(0));
  CHECK(
      std::isnan(one(T(1), [](B v) { return ldexp(v, B::broadcast(std::numeric_limits<T>::quiet_NaN())); })));
}

TEST_CASE("transpose: rows_to_panel and panel_to_rows on every arch, type and edge", "[core][simd]") {
  auto run = [](auto arch, auto zero) {
    using Arch = decltype(arch);
    using T = decltype(zero);
    const index_t ldr = 150, ldp = 70;  // rows of 150 elements, a panel of leading dimension 70
    for (index_t ni : {0, 1, 7, 8, 15, 16, 17, 33, 64})
      for (index_t nj : {0, 1, 5, 8, 16, 31, 64, 128}) {
        CAPTURE(Arch::name, sizeof(T), ni, nj);
        std::vector<T> rows(static_cast<std::size_t>(64 * ldr)),
            panel(static_cast<std::size_t>(128 * ldp), T(-1)), back(rows.size(), T(-2));
        for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<T>(i) + T(0.5);
        attnkit::detail::rows_to_panel<Arch, T>(
            ni, nj, [&](index_t i) { return rows.data() + i * ldr; }, panel.data(), ldp);
        attnkit::detail::panel_to_rows<Arch, T>(ni, nj, panel.data(), ldp,
                                                [&](index_t i) { return back.data() + i * ldr; });
        index_t wrong = 0, stray = 0;
        for (index_t j = 0; j < 128; ++j)
          for (index_t i = 0; i < ldp; ++i) {
            const T got = panel[static_cast<std::size_t>(j * ldp + i)];
            if (i < ni && j < nj)
              wrong += got != rows[static_cast<std::size_t>(i * ldr + j)];
            else
              stray += got != T(-1);
          }
        for (index_t i = 0; i < 64; ++i)
          for (index_t j = 0; j < ldr; ++j) {
            const T got = back[static_cast<std::size_t>(i * ldr + j)];
            if (i < ni && j < nj)
              wrong += got != rows[static_cast<std::size_t>(i * ldr + j)];
            else
              stray += got != T(-2);
          }
        CHECK(wrong == 0);
        CHECK(stray == 0);
      }
  };
  attnkit_test::for_each_arch([&](auto arch) {
    run(arch, 0.0f);
    run(arch, 0.0);
  });
}
