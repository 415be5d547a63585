// attnkit tests: full_attention (tiled prefill kernel and split-key decode kernel) against the fp64
// reference of tests/reference/attention_ref.hpp, for every SIMD architecture the build can run.
//
// Tolerances. float: |y - ref| <= 2e-5 + 1e-4 |ref|. With q, k, v uniform in [-1, 1) and
// scale = 1/sqrt(dk), every logit is a dk-term fp32 dot product whose rounding error is at most
// gamma_dk * scale * sum_p |q_p k_p| <= (dk u) * sqrt(dk) / 4 (u = 2^-24), i.e. <= 5.3e-6 for
// dk = 128 (about 1e-6 in practice, the errors being random); a logit error d changes every softmax
// weight by a factor exp(+-d), so the normalized output moves by at most ~2d relative. exp2 adds
// <= 3 ulp (3.6e-7, see test_math.cpp). Summing p_j v_j and l = sum p_j in fp32 over up to Lk = 5000
// keys adds ~sqrt(Lk) u relative in practice (4e-6). Together well below 1e-4 relative; the absolute
// 2e-5 covers outputs that are small because positive and negative v_j cancel (their error is
// relative to sum p_j |v_j| <= 1, not to |out|).
// double: 1e-12 + 1e-12 |ref|: the same budget with u = 2^-53 is below 1e-13.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include <attnkit/attnkit.hpp>

#include "reference/attention_problem.hpp"
#include "reference/attention_ref.hpp"
#include "reference/common.hpp"
#include "reference/kernel_instances.hpp"

namespace {

using namespace attnkit_test;
using attnkit::causal_mode;

template <class T>
struct tolerance;
template <>
struct tolerance<float> {
  static constexpr double atol = 2e-5, rtol = 1e-4, unit = 0x1p-24;
};
template <>
struct tolerance<double> {
  static constexpr double atol = 1e-12, rtol = 1e-12, unit = 0x1p-53;
};

template <class T>
T sentinel() {
  return T(-7777.25);
}

template <class Arch, class T>
strided_buffer<T> run_kernel(const problem<T>& p, int threads) {
  auto out = make_buffer<T>({p.sp.B, p.sp.H, p.sp.Lq, p.sp.dv}, p.sp.lo, sentinel<T>());
  attnkit::attention_options opt = p.opt;
  opt.threads = threads;
  attnkit::full_attention<Arch>(p.q.cv(), p.k.cv(), p.v.cv(), out.v, opt);
  return out;
}

/// Rows whose reference sees no key must be exactly zero (ONE assertion).
template <class T>
void require_zero_rows(const view<const T, 4>& out, const std::vector<ref::row_info>& info) {
  const index_t B = out.extent(0), H = out.extent(1), Lq = out.extent(2), dv = out.extent(3);
  index_t bad = 0, rows = 0;
  std::string first;
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < Lq; ++i) {
        if (info[static_cast<std::size_t>((b * H + h) * Lq + i)].visible != 0) continue;
        ++rows;
        for (index_t e = 0; e < dv; ++e)
          if (!(at(out, {b, h, i, e}) == T(0))) {
            if (bad++ == 0)
              first = index_string<4>({b, h, i, e}) + " = " +
                      std::to_string(static_cast<double>(at(out, {b, h, i, e})));
          }
      }
  INFO(bad << " elements of " << rows << " rows without a visible key are not exactly 0; first " << first);
  REQUIRE(bad == 0);
}

/// Runs full_attention<scalar> and full_attention<native> on `p` and compares the first `rows`
/// query rows (all when negative) with the fp64 reference; also checks that nothing outside the
/// output view was written and that rows without a visible key are exactly zero.
template <class T>
void check_problem(const problem<T>& p, index_t rows = -1, double extra_atol = 0) {
  INFO(describe(p.sp));
  std::vector<ref::row_info> info;
  const auto want = ref::attention<T>(p.q.cv(), p.k.cv(), p.v.cv(), p.opt, &info);
  if (rows < 0) rows = p.sp.Lq;
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    INFO("arch " << Arch::name);
    // One thread: the comparisons stay fast on a loaded machine (OpenMP spin-waits); the thread
    // count test below shows that every thread count gives these same bits.
    const auto out = run_kernel<Arch>(p, 1);
    INFO("storage around the output view must keep its fill value");
    REQUIRE(out.touched_outside() == 0);
    require_close(prefix_rows(out.cv(), rows), prefix_rows(want.view(), rows),
                  tolerance<T>::atol + extra_atol, tolerance<T>::rtol, "full_attention vs fp64 reference");
    if (rows == p.sp.Lq) require_zero_rows(out.cv(), info);
  });
}

template <class T>
void check_spec(const spec& sp, std::uint64_t salt) {
  check_problem(make_problem<T>(sp, salt));
}

const index_t kLengths[] = {0, 1, 2, 15, 16, 17, 29, 41, 47, 48, 49, 137};
const index_t kDims[] = {1, 3, 16, 64, 80, 128};

}  // namespace

TEMPLATE_TEST_CASE("full_attention: self-attention over sequence lengths and head dims",
                   "[attention][shapes]", float, double) {
  std::uint64_t salt = 100;
  for (index_t L : kLengths)
    for (index_t d : kDims)
      for (causal_mode c : {causal_mode::none, causal_mode::top_left}) {
        spec s;
        s.B = 1;
        s.H = 2;
        s.Hkv = 1;
        s.Lq = s.Lk = L;
        s.dk = s.dv = d;
        s.causal = c;
        check_spec<TestType>(s, ++salt);
      }
}

TEMPLATE_TEST_CASE("full_attention: dv != dk, batches, cross-attention Lq != Lk", "[attention][shapes]",
                   float, double) {
  const std::pair<index_t, index_t> lens[] = {{1, 137}, {137, 1}, {17, 49}, {49, 17}, {29, 41}, {41, 29},
                                              {0, 5},   {5, 0},   {48, 16}, {16, 48}, {2, 47},  {47, 2}};
  const std::pair<index_t, index_t> dims[] = {{16, 3}, {3, 80}, {64, 128}, {80, 1}};
  std::uint64_t salt = 200;
  for (auto [lq, lk] : lens)
    for (auto [dk, dv] : dims)
      for (causal_mode c : {causal_mode::none, causal_mode::top_left, causal_mode::bottom_right}) {
        spec s;
        s.B = 2;
        s.H = 4;
        s.Hkv = 2;
        s.Lq = lq;
        s.Lk = lk;
        s.dk = dk;
        s.dv = dv;
        s.causal = c;
        check_spec<TestType>(s, ++salt);
      }
}

TEMPLATE_TEST_CASE("full_attention: grouped-query and multi-query heads", "[attention][shapes]", float,
                   double) {
  struct heads {
    index_t B, H, Hkv;
  };
  const heads hs[] = {{1, 1, 1}, {2, 3, 3}, {3, 6, 3}, {2, 8, 2}, {2, 8, 1},
                      {1, 8, 8}, {1, 5, 1}, {2, 4, 4}, {1, 7, 1}, {2, 2, 2}};
  const std::pair<index_t, index_t> lens[] = {{17, 29}, {49, 49}, {29, 17}};
  std::uint64_t salt = 300;
  for (const heads& h : hs)
    for (auto [lq, lk] : lens)
      for (auto [dk, dv] : {std::pair<index_t, index_t>{16, 16}, {16, 80}}) {
        spec s;
        s.B = h.B;
        s.H = h.H;
        s.Hkv = h.Hkv;
        s.Lq = lq;
        s.Lk = lk;
        s.dk = dk;
        s.dv = dv;
        s.causal = causal_mode::bottom_right;
        check_spec<TestType>(s, ++salt);
      }
}

TEMPLATE_TEST_CASE("full_attention: long sequence (1543 keys, small head dims)", "[attention][shapes][long]",
                   float, double) {
  std::uint64_t salt = 400;
  for (causal_mode c : {causal_mode::none, causal_mode::bottom_right}) {
    spec s;
    s.Lq = s.Lk = 1543;
    s.dk = 3;
    s.dv = 5;
    s.causal = c;
    check_spec<TestType>(s, ++salt);
  }
  spec s;
  s.B = 2;
  s.Lq = 300;
  s.Lk = 1543;
  s.dk = 4;
  s.dv = 2;
  s.causal = causal_mode::bottom_right;
  s.key_lengths = {1543, 1000};
  check_spec<TestType>(s, ++salt);
}

// Few query rows per kv head (Lq * H/Hkv small) take the split-key decode kernel
// (full/detail/decode.hpp); the sweep over Lq * group = 1..64 crosses the dispatch boundary of
// every ISA and element type, and Lk crosses the key chunk boundaries.
TEMPLATE_TEST_CASE("full_attention: decode shapes (few query rows, many keys)", "[attention][decode]", float,
                   double) {
  struct heads {
    index_t H, Hkv;
  };
  const heads hs[] = {{1, 1}, {2, 1}, {4, 2}, {8, 2}, {8, 1}, {8, 8}};
  std::uint64_t salt = 500;
  for (index_t lq : {1, 2, 3, 4, 6, 8})
    for (const heads& h : hs)
      for (index_t lk : {1, 7, 511, 513, 1030}) {
        spec s;
        s.B = 2;
        s.H = h.H;
        s.Hkv = h.Hkv;
        s.Lq = lq;
        s.Lk = lk;
        s.dk = 32;
        s.dv = 24;
        s.causal = (salt % 2) ? causal_mode::bottom_right : causal_mode::none;
        if (salt % 3 == 0) s.key_lengths = {lk, std::max<std::int64_t>(0, lk / 2 - 1)};
        check_spec<TestType>(s, ++salt);
      }
  // Long caches: bottom_right causal with key_lengths, Lk = 5000.
  for (index_t lq : {1, 4})
    for (const heads& h : {heads{8, 2}, heads{8, 1}, heads{1, 1}}) {
      spec s;
      s.B = 2;
      s.H = h.H;
      s.Hkv = h.Hkv;
      s.Lq = lq;
      s.Lk = 5000;
      s.dk = 64;
      s.dv = 64;
      s.causal = causal_mode::bottom_right;
      s.key_lengths = {5000, 2049};
      check_spec<TestType>(s, ++salt);
      s.key_lengths = {512, 0};
      check_spec<TestType>(s, ++salt);
    }
}

TEMPLATE_TEST_CASE("full_attention: every mask kind and their combinations", "[attention][mask]", float,
                   double) {
  struct lens {
    index_t Lq, Lk;
  };
  // prefill square, Lq < Lk, Lq > Lk (rows without keys under bottom_right), decode
  const lens ls[] = {{41, 41}, {17, 49}, {49, 17}, {2, 137}};
  const bias_kind biases[] = {bias_kind::none,     bias_kind::b1_1_q_k, bias_kind::b_1_q_k,
                              bias_kind::b1_h_q_k, bias_kind::b_h_q_k,  bias_kind::b_1_1_k,
                              bias_kind::b1_1_1_1, bias_kind::b1_1_q_1};
  std::uint64_t salt = 600;
  for (const lens& l : ls)
    for (causal_mode c : {causal_mode::none, causal_mode::top_left, causal_mode::bottom_right})
      for (int kl = 0; kl < 4; ++kl)
        for (bias_kind bk : biases) {
          spec s;
          s.B = 3;
          s.H = 4;
          s.Hkv = 2;
          s.Lq = l.Lq;
          s.Lk = l.Lk;
          s.dk = 16;
          s.dv = 8;
          s.causal = c;
          s.bias = bk;
          const auto lk = static_cast<std::int64_t>(l.Lk);
          switch (kl) {
            case 0:
              break;  // no key_lengths
            case 1:
              s.key_lengths = {lk, lk, lk};
              break;  // full
            case 2:
              s.key_lengths = {0, lk, 0};
              break;  // empty entries
            case 3:
              s.key_lengths = {1, lk / 2 + 1, lk - 1};
              break;  // partial
          }
          if (kl == 3 && lk == 0) continue;
          check_spec<TestType>(s, ++salt);
        }
}

TEMPLATE_TEST_CASE("full_attention: strided, padded, transposed and [B,S,H,D] views", "[attention][layout]",
                   float, double) {
  const layout in_layouts[] = {layout::contiguous, layout::padded, layout::bshd,     layout::bshd_padded,
                               layout::dim_major,  layout::gapped, layout::reversed, layout::broadcast_b};
  const layout out_layouts[] = {layout::contiguous, layout::padded, layout::bshd,    layout::bshd_padded,
                                layout::dim_major,  layout::gapped, layout::reversed};
  std::uint64_t salt = 700;
  // Every layout for every argument (the others contiguous), then everything non-contiguous at once.
  for (int shape = 0; shape < 2; ++shape) {
    spec base;
    base.B = 2;
    base.H = 4;
    base.Hkv = 2;
    base.dk = 16;
    base.dv = 24;
    if (shape == 0) {  // tiled kernel
      base.Lq = 41;
      base.Lk = 49;
    } else {  // decode kernel
      base.Lq = 1;
      base.Lk = 600;
    }
    base.causal = causal_mode::bottom_right;
    base.key_lengths = {base.Lk, base.Lk - 9};
    base.bias = bias_kind::b_1_1_k;
    for (int arg = 0; arg < 4; ++arg)
      for (layout l : (arg == 3 ? std::vector<layout>(std::begin(out_layouts), std::end(out_layouts))
                                : std::vector<layout>(std::begin(in_layouts), std::end(in_layouts)))) {
        spec s = base;
        (arg == 0 ? s.lq : arg == 1 ? s.lk : arg == 2 ? s.lv : s.lo) = l;
        check_spec<TestType>(s, ++salt);
      }
    for (int mix = 0; mix < 4; ++mix) {
      spec s = base;
      s.lq = in_layouts[1 + mix];
      s.lk = in_layouts[1 + (mix + 1) % 7];
      s.lv = in_layouts[1 + (mix + 2) % 7];
      s.lo = out_layouts[1 + (mix + 3) % 6];
      s.bias = bias_kind::b_h_q_k;
      s.bias_layout = mix % 2 ? layout::padded : layout::dim_major;
      s.strided_lengths = true;
      check_spec<TestType>(s, ++salt);
    }
  }
}

// q, k and v as slices of one packed buffer [B, S, H + 2 Hkv, D] (the layout of a fused QKV
// projection), expressed with strides only.
TEMPLATE_TEST_CASE("full_attention: q, k, v slices of a packed QKV buffer", "[attention][layout]", float,
                   double) {
  using T = TestType;
  for (const auto& shape :
       {std::tuple<index_t, index_t, index_t>{4, 4, 37}, {8, 2, 37}, {8, 1, 3}, {2, 1, 1}}) {
    // named copies, not structured bindings: C++17 lambdas cannot capture those (clang)
    const index_t H = std::get<0>(shape), Hkv = std::get<1>(shape), S = std::get<2>(shape);
    const index_t B = 2, D = 16, P = H + 2 * Hkv;
    std::vector<T> packed(static_cast<std::size_t>(B * S * P * D));
    auto gen = seeded_rng(800 + static_cast<std::uint64_t>(H * 100 + S));
    std::uniform_real_distribution<double> dist(-1, 1);
    for (T& x : packed) x = static_cast<T>(dist(gen));
    const std::array<index_t, 4> st{S * P * D, D, P * D, 1};  // [b, head, s, d]
    const view<const T, 4> q(packed.data(), {B, H, S, D}, st);
    const view<const T, 4> k(packed.data() + H * D, {B, Hkv, S, D}, st);
    const view<const T, 4> v(packed.data() + (H + Hkv) * D, {B, Hkv, S, D}, st);
    attnkit::attention_options opt;
    opt.mask.causal = causal_mode::top_left;
    INFO("H=" << H << " Hkv=" << Hkv << " S=" << S);
    const auto want = ref::attention<T>(q, k, v, opt);
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO("arch " << Arch::name);
      // out in [B, S, H, D] memory
      std::vector<T> out_bshd(static_cast<std::size_t>(B * S * H * D), sentinel<T>());
      const view<T, 4> ov(out_bshd.data(), {B, H, S, D}, {S * H * D, D, H * D, 1});
      attnkit::full_attention<Arch>(q, k, v, ov, opt);
      require_close(ov, want.view(), tolerance<T>::atol, tolerance<T>::rtol, "packed QKV");
    });
  }
}

TEMPLATE_TEST_CASE("full_attention: rows that see no key are exactly zero", "[attention][mask]", float,
                   double) {
  using T = TestType;
  std::uint64_t salt = 900;
  struct lens {
    index_t Lq, Lk;
  };
  for (const lens& l : {lens{49, 17}, lens{137, 41}, lens{3, 1}, lens{8, 0}, lens{17, 0}, lens{4, 2}})
    for (int kl = 0; kl < 2; ++kl) {
      spec s;
      s.B = 2;
      s.H = 4;
      s.Hkv = 2;
      s.Lq = l.Lq;
      s.Lk = l.Lk;
      s.dk = 16;
      s.dv = 16;
      s.causal = causal_mode::bottom_right;  // rows i < Lq - Lk see nothing
      if (kl == 1) s.key_lengths = {0, std::max<std::int64_t>(0, l.Lk - 1)};
      auto p = make_problem<T>(s, ++salt);
      // Poison everything no row can see (keys at or past key_lengths) with NaN / Inf.
      for (index_t b = 0; b < s.B; ++b) {
        const index_t len = s.key_lengths.empty() ? s.Lk : s.key_lengths[static_cast<std::size_t>(b)];
        for (index_t h = 0; h < s.Hkv; ++h)
          for (index_t j = len; j < s.Lk; ++j) {
            for (index_t e = 0; e < s.dk; ++e) at(p.k.v, {b, h, j, e}) = std::numeric_limits<T>::quiet_NaN();
            for (index_t e = 0; e < s.dv; ++e) at(p.v.v, {b, h, j, e}) = std::numeric_limits<T>::infinity();
          }
      }
      std::vector<ref::row_info> info;
      (void)ref::attention<T>(p.q.cv(), p.k.cv(), p.v.cv(), p.opt, &info);
      index_t empty_rows = 0;
      for (const auto& r : info) empty_rows += r.visible == 0;
      INFO(describe(s));
      REQUIRE(empty_rows > 0);  // the case really has rows without keys
      check_problem(p);         // includes the exact-zero check of those rows
    }
}

// A key that is not visible never influences any output, even when its k, v or bias hold NaN / Inf.
TEMPLATE_TEST_CASE("full_attention: NaN and Inf in invisible keys, values and bias do not leak",
                   "[attention][mask][nan]", float, double) {
  using T = TestType;
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  std::uint64_t salt = 1000;

  SECTION("padding beyond key_lengths") {
    struct lens {
      index_t Lq, Lk, H, Hkv;
    };
    for (const lens& l : {lens{41, 137, 4, 2}, lens{137, 137, 2, 2}, lens{1, 1100, 8, 2}, lens{4, 700, 8, 1},
                          lens{17, 17, 1, 1}, lens{64, 200, 1, 1}})
      for (causal_mode c : {causal_mode::none, causal_mode::bottom_right}) {
        spec s;
        s.B = 3;
        s.H = l.H;
        s.Hkv = l.Hkv;
        s.Lq = l.Lq;
        s.Lk = l.Lk;
        s.dk = 16;
        s.dv = 8;
        s.causal = c;
        const auto lk = static_cast<std::int64_t>(l.Lk);
        s.key_lengths = {lk / 2 + 1, std::min<std::int64_t>(lk, 64), 1};
        s.bias = bias_kind::b_h_q_k;
        auto p = make_problem<T>(s, ++salt);
        for (index_t b = 0; b < s.B; ++b)
          for (index_t j = s.key_lengths[static_cast<std::size_t>(b)]; j < s.Lk; ++j) {
            for (index_t h = 0; h < s.Hkv; ++h) {
              for (index_t e = 0; e < s.dk; ++e)
                at(p.k.v, {b, h, j, e}) = (j + e) % 3 == 0 ? nan : (j % 2 ? inf : -inf);
              for (index_t e = 0; e < s.dv; ++e) at(p.v.v, {b, h, j, e}) = (j + e) % 2 ? nan : inf;
            }
            for (index_t h = 0; h < s.H; ++h)
              for (index_t i = 0; i < s.Lq; ++i) at(p.bias.v, {b, h, i, j}) = (i + j) % 2 ? NAN : INFINITY;
          }
        check_problem(p);
      }
  }

  SECTION("keys after the causal diagonal") {
    // Poison every key j >= t: the queries that see only keys < t must be finite and exact. For
    // top_left those are the queries i < t, for bottom_right i < t - (Lk - Lq).
    struct lens {
      index_t Lq, Lk, H, Hkv;
    };
    for (const lens& l : {lens{137, 137, 2, 1}, lens{49, 137, 4, 2}, lens{137, 49, 2, 2}, lens{8, 300, 8, 8},
                          lens{2, 1030, 8, 2}, lens{1, 700, 1, 1}})
      for (causal_mode c : {causal_mode::top_left, causal_mode::bottom_right})
        for (index_t t : {1, 15, 16, 17, 47, 48, 63, 64, 65, 100, 128, 129, 136, 511, 512, 513, 700, 1029}) {
          if (t >= l.Lk) continue;
          const index_t rows = c == causal_mode::top_left ? std::min(t, l.Lq)
                                                          : std::clamp<index_t>(t - (l.Lk - l.Lq), 0, l.Lq);
          if (rows == 0) continue;
          spec s;
          s.B = 2;
          s.H = l.H;
          s.Hkv = l.Hkv;
          s.Lq = l.Lq;
          s.Lk = l.Lk;
          s.dk = 16;
          s.dv = 16;
          s.causal = c;
          s.bias = bias_kind::b1_1_q_k;
          auto p = make_problem<T>(s, ++salt);
          for (index_t b = 0; b < s.B; ++b)
            for (index_t h = 0; h < s.Hkv; ++h)
              for (index_t j = t; j < s.Lk; ++j) {
                for (index_t e = 0; e < s.dk; ++e) at(p.k.v, {b, h, j, e}) = e % 2 ? nan : inf;
                for (index_t e = 0; e < s.dv; ++e) at(p.v.v, {b, h, j, e}) = e % 2 ? -inf : nan;
              }
          for (index_t i = 0; i < s.Lq; ++i)
            for (index_t j = t; j < s.Lk; ++j) at(p.bias.v, {0, 0, i, j}) = NAN;
          INFO("keys >= " << t << " poisoned; comparing the first " << rows << " query rows");
          check_problem(p, rows);
        }
  }

  SECTION("bias NaN exactly where the mask hides the key") {
    for (causal_mode c : {causal_mode::top_left, causal_mode::bottom_right})
      for (auto [lq, lk] : {std::pair<index_t, index_t>{137, 137}, {41, 90}, {90, 41}, {3, 600}}) {
        spec s;
        s.B = 2;
        s.H = 2;
        s.Hkv = 1;
        s.Lq = lq;
        s.Lk = lk;
        s.dk = 8;
        s.dv = 8;
        s.causal = c;
        s.key_lengths = {lk, lk - lk / 3};
        s.bias = bias_kind::b_h_q_k;
        auto p = make_problem<T>(s, ++salt);
        for (index_t b = 0; b < s.B; ++b)
          for (index_t h = 0; h < s.H; ++h)
            for (index_t i = 0; i < lq; ++i)
              for (index_t j = 0; j < lk; ++j)
                if (!ref::visible(p.opt.mask, b, i, j, lq, lk))
                  at(p.bias.v, {b, h, i, j}) = (i + j) % 2 ? NAN : -INFINITY;
        check_problem(p);
      }
  }
}

// |s_ij| up to ~1e4 with scale 1: exp without max subtraction overflows (float: e^89 = inf).
TEMPLATE_TEST_CASE("full_attention: large logits do not overflow", "[attention][logits]", float, double) {
  using T = TestType;
  std::uint64_t salt = 1100;

  SECTION("one dominant key per query: output equals the reference within the normal tolerance") {
    // Keys are 100 * random directions; query i is a key chosen for it plus noise, so the logit of
    // that key is ~1e4 and every other key trails it by hundreds: the softmax is one-hot up to
    // exp(-30) and a logit error of ~1e-3 (fp32 resolution at 1e4) does not move the output.
    for (auto [lq, lk, H, Hkv] : {std::tuple<index_t, index_t, index_t, index_t>{137, 137, 2, 1},
                                  {49, 300, 4, 2},
                                  {1, 2000, 8, 2},
                                  {4, 700, 2, 2}})
      for (causal_mode c : {causal_mode::none, causal_mode::bottom_right}) {
        spec s;
        s.B = 1;
        s.H = H;
        s.Hkv = Hkv;
        s.Lq = lq;
        s.Lk = lk;
        s.dk = 16;
        s.dv = 16;
        s.causal = c;
        s.scale = 1.0;
        auto p = make_problem<T>(s, ++salt);
        auto gen = seeded_rng(salt);
        std::uniform_real_distribution<double> dist(-1, 1);
        for (index_t h = 0; h < Hkv; ++h)
          for (index_t j = 0; j < lk; ++j) {
            double nrm = 0;
            std::vector<double> x(16);
            for (double& e : x) {
              e = dist(gen);
              nrm += e * e;
            }
            for (index_t e = 0; e < 16; ++e)
              at(p.k.v, {0, h, j, e}) = static_cast<T>(100 * x[static_cast<std::size_t>(e)] / std::sqrt(nrm));
          }
        double min_gap = 1e300, max_logit = 0;
        for (index_t h = 0; h < H; ++h)
          for (index_t i = 0; i < lq; ++i) {
            const index_t hk = h / (H / Hkv);
            const index_t end = c == causal_mode::none ? lk : i + lk - lq + 1;
            const index_t w = std::uniform_int_distribution<index_t>(0, end - 1)(gen);
            for (index_t e = 0; e < 16; ++e)
              at(p.q.v, {0, h, i, e}) = static_cast<T>(at(p.k.v, {0, hk, w, e}) + 0.5 * dist(gen));
            double best = -1e300, second = -1e300;
            for (index_t j = 0; j < end; ++j) {
              double sij = 0;
              for (index_t e = 0; e < 16; ++e)
                sij += double(at(p.q.v, {0, h, i, e})) * double(at(p.k.v, {0, hk, j, e}));
              max_logit = std::max(max_logit, std::fabs(sij));
              if (sij > best) {
                second = best;
                best = sij;
              } else if (sij > second) {
                second = sij;
              }
            }
            if (end > 1) min_gap = std::min(min_gap, best - second);
          }
        INFO("smallest top-2 logit gap " << min_gap << ", largest |logit| " << max_logit);
        REQUIRE(min_gap > 30);
        REQUIRE(max_logit > 9000);
        check_problem(p);
      }
  }

  SECTION("a shared offset of +-1e4 on every logit (spread-out softmax)") {
    // s_ij = +-1e4 + O(10). The logits themselves cannot be computed better than their fp32
    // forward error bound, gamma_{dk+2} * sum_p |q_p k_p| ~ (dk + 2) u * 1e4 (Higham 3.1; dk fmas
    // plus the scaling of q), and an error d in the logits moves a normalized output by <= 2 d max|v|;
    // that budget is added to the absolute tolerance. Overflow (exp(1e4) = inf) or a missing max
    // subtraction would give inf / NaN / 0, far outside it.
    for (double sign : {1.0, -1.0})
      for (auto [lq, lk] : {std::pair<index_t, index_t>{137, 137}, {1, 1500}, {41, 300}}) {
        spec s;
        s.B = 1;
        s.H = 2;
        s.Hkv = 1;
        s.Lq = lq;
        s.Lk = lk;
        s.dk = 16;
        s.dv = 16;
        s.scale = 1.0;
        s.causal = causal_mode::bottom_right;
        auto p = make_problem<T>(s, ++salt);
        for (index_t h = 0; h < 2; ++h)
          for (index_t i = 0; i < lq; ++i) at(p.q.v, {0, h, i, 0}) = T(100);
        for (index_t j = 0; j < lk; ++j) at(p.k.v, {0, 0, j, 0}) = static_cast<T>(100 * sign);
        const double budget = 2 * (s.dk + 2) * tolerance<T>::unit * (1e4 + 16) * 1.0;
        INFO("logit error budget " << budget);
        check_problem(p, -1, budget);
      }
  }
}

TEMPLATE_TEST_CASE("full_attention: custom scale", "[attention][scale]", float, double) {
  std::uint64_t salt = 1200;
  for (double scale : {0.37, 1.0, -0.5, 2.5, 1e-3})
    for (auto [lq, lk] : {std::pair<index_t, index_t>{41, 49}, {1, 700}, {3, 5}}) {
      spec s;
      s.B = 2;
      s.H = 4;
      s.Hkv = 2;
      s.Lq = lq;
      s.Lk = lk;
      s.dk = 16;
      s.dv = 8;
      s.scale = scale;
      s.causal = causal_mode::bottom_right;
      check_spec<TestType>(s, ++salt);
    }
}

TEMPLATE_TEST_CASE("full_attention: empty extents write nothing and do not throw", "[attention][shapes]",
                   float, double) {
  std::uint64_t salt = 1300;
  for (int which = 0; which < 5; ++which) {
    spec e;
    e.B = 2;
    e.H = 2;
    e.Hkv = 1;
    e.Lq = 5;
    e.Lk = 7;
    e.dk = 4;
    e.dv = 4;
    (which == 0 ? e.B : which == 1 ? e.Lq : which == 2 ? e.Lk : which == 3 ? e.dv : e.H) = 0;
    if (which == 4) e.Hkv = 0;
    check_spec<TestType>(e, ++salt);
  }
}

// dk = 0: every logit is 0, so each output is the plain average of the visible values.
TEMPLATE_TEST_CASE("full_attention: head dim dk = 0", "[attention][shapes]", float, double) {
  std::uint64_t salt = 1350;
  spec s;
  s.B = 2;
  s.H = 2;
  s.Hkv = 1;
  s.Lq = 17;
  s.Lk = 29;
  s.dk = 0;
  s.dv = 5;
  s.causal = causal_mode::top_left;
  check_spec<TestType>(s, ++salt);  // tiled kernel
  s.Lq = 1;
  s.H = 1;
  check_spec<TestType>(s, ++salt);  // decode kernel
}

TEMPLATE_TEST_CASE("full_attention: output bits do not depend on the thread count", "[attention][threads]",
                   float, double) {
  using T = TestType;
  std::uint64_t salt = 1400;
  std::vector<spec> specs;
  {
    spec s;  // tiled kernel, many tasks
    s.B = 2;
    s.H = 4;
    s.Hkv = 2;
    s.Lq = 137;
    s.Lk = 137;
    s.dk = 64;
    s.dv = 64;
    s.causal = causal_mode::bottom_right;
    s.key_lengths = {137, 100};
    s.bias = bias_kind::b_1_1_k;
    specs.push_back(s);
    s.causal = causal_mode::none;
    s.key_lengths.clear();
    s.Lq = 49;
    s.Lk = 1100;
    specs.push_back(s);
  }
  {
    spec s;  // decode kernel, several key chunks
    s.B = 2;
    s.H = 8;
    s.Hkv = 2;
    s.Lq = 1;
    s.Lk = 3000;
    s.dk = 64;
    s.dv = 64;
    s.causal = causal_mode::bottom_right;
    s.key_lengths = {3000, 1700};
    specs.push_back(s);
    s.Lq = 2;
    s.Hkv = 8;
    specs.push_back(s);
    s.Lq = 1;
    s.Hkv = 1;
    s.Lk = 5000;
    s.key_lengths = {4999, 2500};
    s.bias = bias_kind::b_1_1_k;
    specs.push_back(s);
  }
  {
    spec s;  // grouped heads, rows without keys, full bias, strided views
    s.B = 3;
    s.H = 6;
    s.Hkv = 3;
    s.Lq = 49;
    s.Lk = 17;
    s.dk = 16;
    s.dv = 24;
    s.causal = causal_mode::bottom_right;
    s.key_lengths = {17, 0, 5};
    s.bias = bias_kind::b_h_q_k;
    s.lq = layout::padded;
    s.lk = layout::bshd;
    s.lv = layout::dim_major;
    s.lo = layout::bshd_padded;
    specs.push_back(s);
  }
  for (const spec& s : specs) {
    INFO(describe(s));
    const auto p = make_problem<T>(s, ++salt);
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO("arch " << Arch::name);
      const auto one = run_kernel<Arch>(p, 1);
      for (int threads : {2, 0, 3}) {
        INFO("threads = " << threads << " vs threads = 1");
        const auto many = run_kernel<Arch>(p, threads);
        REQUIRE(one.storage.size() == many.storage.size());
        REQUIRE(same_bits(one.storage, many.storage));
      }
    });
  }
}

TEMPLATE_TEST_CASE("reference::attention agrees with the fp64 reference", "[attention][reference]", float,
                   double) {
  using T = TestType;
  std::uint64_t salt = 1500;
  struct lens {
    index_t Lq, Lk;
  };
  for (const lens& l : {lens{17, 29}, lens{49, 17}, lens{1, 137}, lens{0, 3}, lens{3, 0}})
    for (causal_mode c : {causal_mode::none, causal_mode::top_left, causal_mode::bottom_right}) {
      spec s;
      s.B = 2;
      s.H = 4;
      s.Hkv = 2;
      s.Lq = l.Lq;
      s.Lk = l.Lk;
      s.dk = 16;
      s.dv = 8;
      s.causal = c;
      s.key_lengths = {l.Lk, l.Lk / 2};
      s.bias = bias_kind::b_1_q_k;
      s.lk = layout::bshd;
      s.lo = layout::padded;
      auto p = make_problem<T>(s, ++salt);
      // NaN in the padding must not leak into the naive kernel either.
      for (index_t h = 0; h < s.Hkv; ++h)
        for (index_t j = l.Lk / 2; j < l.Lk; ++j)
          at(p.v.v, {1, h, j, 0}) = std::numeric_limits<T>::quiet_NaN();
      INFO(describe(s));
      std::vector<ref::row_info> info;
      const auto want = ref::attention<T>(p.q.cv(), p.k.cv(), p.v.cv(), p.opt, &info);
      auto out = make_buffer<T>({s.B, s.H, s.Lq, s.dv}, s.lo, sentinel<T>());
      attnkit::reference::attention(p.q.cv(), p.k.cv(), p.v.cv(), out.v, p.opt);
      REQUIRE(out.touched_outside() == 0);
      require_close(out.cv(), want.view(), tolerance<T>::atol, tolerance<T>::rtol, "reference::attention");
      require_zero_rows(out.cv(), info);
    }
}

// Every validation failure throws attnkit::invalid_argument before anything is written to `out`.
TEST_CASE("full_attention: invalid arguments throw attnkit::invalid_argument and leave out untouched",
          "[attention][errors]") {
  using Catch::Matchers::Contains;
  const index_t B = 2, H = 4, Hkv = 2, Lq = 5, Lk = 7, dk = 8, dv = 6;
  // Storage large enough for every (wrong) shape below.
  const std::vector<float> qd(static_cast<std::size_t>((B + 1) * (H + 1) * (Lq + 1) * (dk + 1)), 0.25f);
  const std::vector<float> kd(static_cast<std::size_t>((B + 1) * (Hkv + 1) * (Lk + 1) * (dk + 1)), 0.5f);
  const std::vector<float> vd(static_cast<std::size_t>((B + 1) * (Hkv + 1) * (Lk + 1) * (dv + 1)), 0.75f);
  const std::vector<float> bd(static_cast<std::size_t>((B + 1) * (H + 1) * (Lq + 1) * (Lk + 1)), 0.125f);
  std::vector<float> od(static_cast<std::size_t>((B + 1) * (H + 1) * (Lq + 1) * (dv + 1)), sentinel<float>());
  const std::vector<float> od_before = od;
  using cview = view<const float, 4>;
  const auto in = [](const std::vector<float>& d, std::array<index_t, 4> e) {
    return cview::contiguous(d.data(), e);
  };
  const auto outv = [&](std::array<index_t, 4> e) { return view<float, 4>::contiguous(od.data(), e); };
  const cview q = in(qd, {B, H, Lq, dk}), k = in(kd, {B, Hkv, Lk, dk}), v = in(vd, {B, Hkv, Lk, dv});
  const view<float, 4> out = outv({B, H, Lq, dv});
  const std::vector<std::int64_t> lens{Lk, 3, Lk}, lens_long{Lk + 1, 3}, lens_neg{2, -1};
  const auto lensv = [](const std::vector<std::int64_t>& l, index_t n) {
    return view<const std::int64_t, 1>(l.data(), {n}, {1});
  };

  // The valid call works (and is then undone), so every failure below is caused by its one change.
  {
    attnkit::attention_options opt;
    opt.mask.causal = causal_mode::bottom_right;
    opt.mask.key_lengths = lensv(lens, B);
    opt.mask.bias = in(bd, {B, 1, 1, Lk});
    REQUIRE_NOTHROW(attnkit::full_attention(q, k, v, out, opt));
    REQUIRE(!same_bits(od, od_before));
    od = od_before;
  }

  struct bad {
    std::string name;
    cview q, k, v;
    view<float, 4> out;
    attnkit::attention_options opt;
    const char* needle;  // a word the message must contain (the argument's name), or null
  };
  std::vector<bad> cases;
  const attnkit::attention_options none;
  auto with = [&](auto f) {
    attnkit::attention_options o;
    f(o);
    return o;
  };
  cases.push_back({"k batch != q batch", q, in(kd, {B + 1, Hkv, Lk, dk}), in(vd, {B + 1, Hkv, Lk, dv}), out,
                   none, nullptr});
  cases.push_back({"k dk != q dk", q, in(kd, {B, Hkv, Lk, dk + 1}), v, out, none, nullptr});
  cases.push_back({"v Lk != k Lk", q, k, in(vd, {B, Hkv, Lk + 1, dv}), out, none, nullptr});
  cases.push_back({"v Lk < k Lk", q, k, in(vd, {B, Hkv, Lk - 1, dv}), out, none, nullptr});
  cases.push_back({"v batch != k batch", q, k, in(vd, {B + 1, Hkv, Lk, dv}), out, none, nullptr});
  cases.push_back({"v heads != k heads", q, k, in(vd, {B, 1, Lk, dv}), out, none, nullptr});
  cases.push_back(
      {"H not a multiple of Hkv", in(qd, {B, 3, Lq, dk}), k, v, outv({B, 3, Lq, dv}), none, nullptr});
  cases.push_back({"Hkv > H", in(qd, {B, 1, Lq, dk}), k, v, outv({B, 1, Lq, dv}), none, nullptr});
  cases.push_back({"out dv wrong", q, k, v, outv({B, H, Lq, dv + 1}), none, "out"});
  cases.push_back({"out Lq wrong", q, k, v, outv({B, H, Lq + 1, dv}), none, "out"});
  cases.push_back({"out heads wrong", q, k, v, outv({B, H + 1, Lq, dv}), none, "out"});
  cases.push_back({"out batch wrong", q, k, v, outv({B + 1, H, Lq, dv}), none, "out"});
  cases.push_back({"out with stride 0", q, k, v,
                   view<float, 4>(od.data(), {B, H, Lq, dv}, {H * Lq * dv, Lq * dv, 0, 1}), none, "out"});
  cases.push_back({"bias Lk wrong", q, k, v, out, with([&](auto& o) {
                     o.mask.bias = in(bd, {B, H, Lq, Lk + 1});
                   }),
                   "bias"});
  cases.push_back({"bias Lq wrong", q, k, v, out, with([&](auto& o) {
                     o.mask.bias = in(bd, {1, 1, Lq - 1, Lk});
                   }),
                   "bias"});
  cases.push_back({"bias batch 3 for B = 2", q, k, v, out, with([&](auto& o) {
                     o.mask.bias = in(bd, {3, 1, Lq, Lk});
                   }),
                   "bias"});
  cases.push_back({"bias heads 2 for H = 4", q, k, v, out, with([&](auto& o) {
                     o.mask.bias = in(bd, {1, 2, 1, Lk});
                   }),
                   "bias"});
  cases.push_back({"bias extents without data", q, k, v, out, with([&](auto& o) {
                     o.mask.bias = cview(nullptr, {1, 1, Lq, Lk}, {0, 0, Lk, 1});
                   }),
                   "bias"});
  cases.push_back({"key_lengths extent B + 1", q, k, v, out,
                   with([&](auto& o) { o.mask.key_lengths = lensv(lens, B + 1); }), "key_lengths"});
  cases.push_back({"key_lengths extent B - 1", q, k, v, out,
                   with([&](auto& o) { o.mask.key_lengths = lensv(lens, B - 1); }), "key_lengths"});
  cases.push_back({"key_lengths > Lk", q, k, v, out,
                   with([&](auto& o) { o.mask.key_lengths = lensv(lens_long, B); }), "key_lengths"});
  cases.push_back({"key_lengths < 0", q, k, v, out,
                   with([&](auto& o) { o.mask.key_lengths = lensv(lens_neg, B); }), "key_lengths"});
  cases.push_back({"threads = -1", q, k, v, out, with([](auto& o) { o.threads = -1; }), "threads"});
  cases.push_back({"scale NaN", q, k, v, out, with([](auto& o) { o.scale = std::nan(""); }), "scale"});
  cases.push_back({"scale +inf", q, k, v, out, with([](auto& o) { o.scale = HUGE_VAL; }), "scale"});
  cases.push_back(
      {"null q with nonzero size", cview(nullptr, q.extents(), q.strides()), k, v, out, none, nullptr});
  cases.push_back(
      {"null k with nonzero size", q, cview(nullptr, k.extents(), k.strides()), v, out, none, nullptr});
  cases.push_back(
      {"null v with nonzero size", q, k, cview(nullptr, v.extents(), v.strides()), out, none, nullptr});
  cases.push_back({"null out with nonzero size", q, k, v,
                   view<float, 4>(nullptr, out.extents(), out.strides()), none, nullptr});
  cases.push_back({"negative extent", in(qd, {B, H, -1, dk}), k, v, outv({B, H, -1, dv}), none, nullptr});

  for (const bad& c : cases) {
    INFO("case: " << c.name);
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO("arch " << Arch::name);
      REQUIRE_THROWS_AS(attnkit::full_attention<Arch>(c.q, c.k, c.v, c.out, c.opt),
                        attnkit::invalid_argument);
      if (c.needle)
        REQUIRE_THROWS_WITH(attnkit::full_attention<Arch>(c.q, c.k, c.v, c.out, c.opt), Contains(c.needle));
      INFO("out must be untouched");
      REQUIRE(same_bits(od, od_before));
    });
    REQUIRE_THROWS_AS(attnkit::reference::attention(c.q, c.k, c.v, c.out, c.opt), attnkit::invalid_argument);
    REQUIRE(same_bits(od, od_before));
  }
  // invalid_argument is a std::invalid_argument
  STATIC_REQUIRE(std::is_base_of_v<std::invalid_argument, attnkit::invalid_argument>);
}

// The mask model treats a view with null data as absent; a key_lengths view that claims B entries
// but has no data is a caller error (like a bias with extents and no data, which is rejected):
// silently ignoring it would let every query attend to the padding.
TEST_CASE("full_attention: key_lengths with extents but no data is rejected", "[attention][errors]") {
  const index_t B = 2, H = 2, L = 5, d = 4;
  attnkit::tensor<float, 4> q({B, H, L, d}), k({B, H, L, d}), v({B, H, L, d}), out({B, H, L, d});
  attnkit::attention_options opt;
  opt.mask.key_lengths = view<const std::int64_t, 1>(nullptr, {B}, {1});
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    INFO("arch " << Arch::name);
    REQUIRE_THROWS_AS(attnkit::full_attention<Arch>(q.cview(), k.cview(), v.cview(), out.view(), opt),
                      attnkit::invalid_argument);
  });
}

// Null data is fine when the view is empty (nothing is read or written through it).
TEST_CASE("full_attention: null data with zero size is accepted", "[attention][errors]") {
  const index_t B = 2, H = 2, Lq = 3, Lk = 4, d = 4;
  attnkit::tensor<float, 4> q({B, H, Lq, d}), out({B, H, Lq, d});
  for (index_t i = 0; i < out.size(); ++i) out.data()[i] = sentinel<float>();
  using cview = view<const float, 4>;
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    INFO("arch " << Arch::name);
    // no keys: k and v empty and null, every row sees nothing -> zeros
    REQUIRE_NOTHROW(attnkit::full_attention<Arch>(q.cview(), cview(nullptr, {B, H, 0, d}, {0, 0, 0, 0}),
                                                  cview(nullptr, {B, H, 0, d}, {0, 0, 0, 0}), out.view()));
    index_t nonzero = 0;
    for (index_t i = 0; i < out.size(); ++i) nonzero += out.data()[i] != 0.0f;
    REQUIRE(nonzero == 0);
    // no queries: q and out empty and null
    attnkit::tensor<float, 4> k({B, H, Lk, d}), v({B, H, Lk, d});
    REQUIRE_NOTHROW(attnkit::full_attention<Arch>(cview(nullptr, {B, H, 0, d}, {0, 0, 0, 0}), k.cview(),
                                                  v.cview(),
                                                  view<float, 4>(nullptr, {B, H, 0, d}, {H * d, d, d, 1})));
  });
}

// Owning tensors with an empty axis give views with stride 0 on the axes outside it
// (tensor_view::contiguous multiplies by the extent 0); such an output has no elements, so it
// cannot overlap itself and must be accepted like any other empty output.
TEST_CASE("full_attention: outputs of empty owning tensors are accepted", "[attention][errors]") {
  const index_t B = 2, H = 2, Lq = 3, Lk = 4, d = 4;
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    INFO("arch " << Arch::name);
    {
      INFO("Lq = 0");
      attnkit::tensor<float, 4> q({B, H, 0, d}), k({B, H, Lk, d}), v({B, H, Lk, d}), out({B, H, 0, d});
      REQUIRE_NOTHROW(attnkit::full_attention<Arch>(q.cview(), k.cview(), v.cview(), out.view()));
    }
    {
      INFO("dv = 0");
      attnkit::tensor<float, 4> q({B, H, Lq, d}), k({B, H, Lk, d}), v({B, H, Lk, 0}), out({B, H, Lq, 0});
      REQUIRE_NOTHROW(attnkit::full_attention<Arch>(q.cview(), k.cview(), v.cview(), out.view()));
    }
    {
      INFO("B = 0");
      attnkit::tensor<float, 4> q({0, H, Lq, d}), k({0, H, Lk, d}), v({0, H, Lk, d}), out({0, H, Lq, d});
      REQUIRE_NOTHROW(attnkit::full_attention<Arch>(q.cview(), k.cview(), v.cview(), out.view()));
    }
  });
}
