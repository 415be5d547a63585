// attnkit tests: the forward's log-sum-exp, full_attention_backward and merge_attention_states
// against fp64 references, for every SIMD architecture the build can run.
//
// Tolerances. A gradient element is a sum of terms; the reference also sums their magnitudes
// (ref::gradients: |dS| taken as P (|dP| + |D|), the scale of the rounding of dP - D), and the
// kernel's error is measured against that sum A: |g - ref| <= eps A + tiny. float: eps = 5e-5.
// The logits carry <= ~5e-6 relative error (test_attention.cpp's budget for dk <= 128), which moves
// every recomputed P_ij by a factor exp(+-5e-6) and lse by as much; dP and D are fp32 dot products
// over dv <= 128 terms (<= 128 u = 7.6e-6 relative to their magnitudes, ~1e-6 in practice); the
// sums over up to ~300 keys or queries add ~sqrt(n) u. Together ~1.5e-5 in the worst case. double:
// the same budget with u = 2^-53, eps = 1e-12. The lse itself: |lse - ref| <= 2e-5 (float, an
// absolute error: the logits' error plus log rounding) and 1e-12 (double).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include <attnkit/attnkit.hpp>

#include "reference/attention_problem.hpp"
#include "reference/attention_ref.hpp"
#include "reference/common.hpp"
#include "reference/golden_text.hpp"
#include "reference/kernel_instances.hpp"

namespace {

using namespace attnkit_test;

template <class T>
struct grad_tol;
template <>
struct grad_tol<float> {
  static constexpr double eps = 5e-5, tiny = 1e-7, lse = 2e-5;
};
template <>
struct grad_tol<double> {
  static constexpr double eps = 1e-12, tiny = 1e-15, lse = 1e-12;
};

/// The merge of two states and one call over all keys sum in different orders: outputs (convex
/// combinations of |v| <= 1) and lse (~ln 300) differ by a few sqrt(Lk) u.
template <class T>
double tolerance_abs() {
  return std::is_same_v<T, float> ? 4e-6 : 1e-14;
}

/// |got - want| <= eps * mag + tiny everywhere (ONE assertion), reporting the worst element.
template <class T>
void require_within(const view<const T, 4>& got, const attnkit::tensor<double, 4>& want,
                    const attnkit::tensor<double, 4>& mag, double eps, double tiny, const std::string& what) {
  REQUIRE(got.extents() == want.extents());
  index_t bad = 0;
  double worst = -1, wg = 0, ww = 0, wm = 0;
  std::array<index_t, 4> wix{};
  for_each_index(got.extents(), [&](const std::array<index_t, 4>& ix) {
    const index_t flat = ((ix[0] * want.extent(1) + ix[1]) * want.extent(2) + ix[2]) * want.extent(3) + ix[3];
    const double g = static_cast<double>(at(got, ix)), w = want.data()[flat], m = mag.data()[flat];
    const double r = std::fabs(g - w) / (eps * m + tiny);
    const bool ok = std::fabs(g - w) <= eps * m + tiny;
    if (!ok) ++bad;
    if (!(r <= worst)) worst = r, wg = g, ww = w, wm = m, wix = ix;
  });
  INFO(what << ": " << bad << " elements violate |g - ref| <= " << eps << " * A + " << tiny << "; worst at "
            << index_string(wix) << ": g = " << wg << ", ref = " << ww << ", A = " << wm << " (" << worst
            << " x tol)");
  REQUIRE(bad == 0);
}

/// Forward (with lse) and backward of one problem for one architecture.
template <class T>
struct run_result {
  strided_buffer<T> out, dq, dk, dv;
  attnkit::tensor<T, 3> lse;
};

template <class Arch, class T>
run_result<T> run_backward(const problem<T>& p, const strided_buffer<T>& dout, int threads) {
  const spec& s = p.sp;
  run_result<T> r;
  r.out = make_buffer<T>({s.B, s.H, s.Lq, s.dv}, s.lo, T(-7777.25));
  r.lse = attnkit::tensor<T, 3>({s.B, s.H, s.Lq});
  r.dq = make_buffer<T>({s.B, s.H, s.Lq, s.dk}, s.lq, T(-7777.25));
  r.dk = make_buffer<T>({s.B, s.Hkv, s.Lk, s.dk}, s.lk, T(-7777.25));
  r.dv = make_buffer<T>({s.B, s.Hkv, s.Lk, s.dv}, s.lv, T(-7777.25));
  attnkit::attention_options opt = p.opt;
  opt.threads = threads;
  attnkit::full_attention<Arch>(p.q.cv(), p.k.cv(), p.v.cv(), r.out.v, r.lse.view(), opt);
  attnkit::full_attention_backward<Arch>(p.q.cv(), p.k.cv(), p.v.cv(), r.out.cv(), r.lse.cview(), dout.cv(),
                                         r.dq.v, r.dk.v, r.dv.v, opt);
  return r;
}

/// Outputs never alias a broadcast input layout: gradients of q, k, v use these layouts.
layout writable(layout l) { return l == layout::broadcast_b ? layout::contiguous : l; }

template <class T>
void check_backward(spec sp, std::uint64_t salt) {
  sp.lq = writable(sp.lq);
  sp.lk = writable(sp.lk);
  sp.lv = writable(sp.lv);
  INFO(describe(sp));
  const problem<T> p = make_problem<T>(sp, salt);
  auto gen = seeded_rng(salt + 1000);
  auto dout = make_buffer<T>({sp.B, sp.H, sp.Lq, sp.dv}, sp.lo);
  fill_uniform(dout.v, gen, -1.0, 1.0);
  std::vector<ref::row_info> info;
  (void)ref::attention<T>(p.q.cv(), p.k.cv(), p.v.cv(), p.opt, &info);
  const ref::gradients want = ref::attention_backward<T>(p.q.cv(), p.k.cv(), p.v.cv(), dout.cv(), p.opt);
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    INFO("arch " << Arch::name);
    const run_result<T> r = run_backward<Arch>(p, dout, 1);
    INFO("storage around the gradient views keeps its fill value");
    REQUIRE(r.dq.touched_outside() + r.dk.touched_outside() + r.dv.touched_outside() == 0);
    index_t bad_lse = 0;
    for (index_t b = 0; b < sp.B; ++b)
      for (index_t h = 0; h < sp.H; ++h)
        for (index_t i = 0; i < sp.Lq; ++i) {
          const double w = info[static_cast<std::size_t>((b * sp.H + h) * sp.Lq + i)].lse;
          const double g = static_cast<double>(r.lse(b, h, i));
          if (!(g == w || std::fabs(g - w) <= grad_tol<T>::lse)) ++bad_lse;
        }
    INFO(bad_lse << " lse rows differ from the reference by more than " << grad_tol<T>::lse);
    REQUIRE(bad_lse == 0);
    require_within(r.dq.cv(), want.dq, want.adq, grad_tol<T>::eps, grad_tol<T>::tiny, "dq");
    require_within(r.dk.cv(), want.dk, want.adk, grad_tol<T>::eps, grad_tol<T>::tiny, "dk");
    require_within(r.dv.cv(), want.dv, want.adv, grad_tol<T>::eps, grad_tol<T>::tiny, "dv");
  });
}

const index_t kLengths[] = {1, 2, 15, 17, 47, 64, 65, 130};
const index_t kDims[] = {1, 3, 16, 64, 80};

}  // namespace

TEMPLATE_TEST_CASE("full_attention_backward: self-attention over lengths and head dims, causal or not",
                   "[backward][shapes]", float, double) {
  std::uint64_t salt = 1;
  for (const index_t L : kLengths)
    for (const index_t d : kDims)
      for (const causal_mode c : {causal_mode::none, causal_mode::top_left}) {
        spec sp;
        sp.H = 2;
        sp.Lq = sp.Lk = L;
        sp.dk = sp.dv = d;
        sp.causal = c;
        check_backward<TestType>(sp, salt++);
      }
}

TEMPLATE_TEST_CASE("full_attention_backward: grouped-query heads, dv != dk, Lq != Lk, bottom_right",
                   "[backward][shapes]", float, double) {
  std::uint64_t salt = 100;
  struct shape {
    index_t B, H, Hkv, Lq, Lk, dk, dv;
  };
  // (decode: few rows per kv head, keys in chunks of 512; one kv head: its keys split in parts)
  for (const shape& x :
       {shape{2, 4, 2, 33, 70, 16, 24}, shape{1, 8, 1, 17, 200, 64, 32}, shape{3, 6, 3, 90, 31, 5, 40},
        shape{2, 4, 1, 2, 1300, 32, 16}, shape{1, 1, 1, 3, 1100, 64, 64}, shape{1, 1, 1, 200, 1000, 16, 16},
        shape{1, 4, 4, 129, 129, 64, 64}, shape{2, 3, 1, 7, 300, 24, 8}, shape{1, 2, 1, 300, 7, 8, 8}})
    for (const causal_mode c : {causal_mode::none, causal_mode::top_left, causal_mode::bottom_right}) {
      spec sp;
      sp.B = x.B, sp.H = x.H, sp.Hkv = x.Hkv, sp.Lq = x.Lq, sp.Lk = x.Lk, sp.dk = x.dk, sp.dv = x.dv;
      sp.causal = c;
      check_backward<TestType>(sp, salt++);
    }
}

TEMPLATE_TEST_CASE("full_attention_backward: key_lengths, bias, scale and strided layouts",
                   "[backward][mask]", float, double) {
  std::uint64_t salt = 200;
  for (const causal_mode c : {causal_mode::none, causal_mode::top_left, causal_mode::bottom_right})
    for (const bias_kind bk :
         {bias_kind::none, bias_kind::b_h_q_k, bias_kind::b_1_1_k, bias_kind::b1_1_q_1}) {
      spec sp;
      sp.B = 3, sp.H = 4, sp.Hkv = 2, sp.Lq = 70, sp.Lk = 90, sp.dk = 24, sp.dv = 16;
      sp.causal = c;
      sp.key_lengths = {90, 0, 37};
      sp.bias = bk;
      sp.scale = bk == bias_kind::none ? 0.3 : 0.0;
      sp.lq = layout::bshd;
      sp.lk = layout::padded;
      sp.lv = layout::dim_major;
      sp.lo = layout::reversed;
      check_backward<TestType>(sp, salt++);
    }
}

TEMPLATE_TEST_CASE("full_attention: the lse overload writes the same out bits as the plain forward",
                   "[backward][lse]", float, double) {
  using T = TestType;
  std::uint64_t salt = 300;
  // tiled and split-key decode shapes
  for (const index_t lq : {1, 3, 40, 129})
    for (const causal_mode c : {causal_mode::none, causal_mode::bottom_right}) {
      spec sp;
      sp.B = 2, sp.H = 4, sp.Hkv = 2, sp.Lq = lq, sp.Lk = 1100, sp.dk = 32, sp.dv = 16;
      sp.causal = c;
      sp.key_lengths = {1100, 5};
      INFO(describe(sp));
      const problem<T> p = make_problem<T>(sp, salt++);
      std::vector<ref::row_info> info;
      (void)ref::attention<T>(p.q.cv(), p.k.cv(), p.v.cv(), p.opt, &info);
      for_each_arch([&](auto arch) {
        using Arch = decltype(arch);
        INFO("arch " << Arch::name);
        attnkit::tensor<T, 4> a({sp.B, sp.H, lq, sp.dv}), b({sp.B, sp.H, lq, sp.dv});
        attnkit::tensor<T, 3> lse({sp.B, sp.H, lq});
        attnkit::full_attention<Arch>(p.q.cv(), p.k.cv(), p.v.cv(), a.view(), p.opt);
        attnkit::full_attention<Arch>(p.q.cv(), p.k.cv(), p.v.cv(), b.view(), lse.view(), p.opt);
        require_same_bits(a.cview(), b.cview(), "out with and without lse");
        index_t bad = 0;
        for (index_t r = 0; r < lse.size(); ++r) {
          const double w = info[static_cast<std::size_t>(r)].lse, g = lse.data()[r];
          if (!(g == w || std::fabs(g - w) <= grad_tol<T>::lse)) ++bad;
        }
        INFO(bad << " lse rows off the reference (rows without a visible key must be -inf)");
        REQUIRE(bad == 0);
      });
    }
}

TEST_CASE("full_attention_backward: directional finite differences in double", "[backward][fd]") {
  // f(q, k, v) = <out(q, k, v), dout>; its derivative along u is <dq, uq> + <dk, uk> + <dv, uv>.
  // The central difference with step h has truncation error h^2/6 |f'''| (~1e-10 here, the inputs
  // and directions being O(1)) and rounding error ~ u |f| / h (~1e-11): 1e-7 relative is ample.
  std::uint64_t salt = 400;
  for (const causal_mode c : {causal_mode::none, causal_mode::top_left, causal_mode::bottom_right})
    for (const bias_kind bk : {bias_kind::none, bias_kind::b_h_q_k}) {
      spec sp;
      sp.B = 2, sp.H = 4, sp.Hkv = 2, sp.Lq = 37, sp.Lk = 70, sp.dk = 12, sp.dv = 9;
      sp.causal = c;
      sp.key_lengths = {70, 29};
      sp.bias = bk;
      INFO(describe(sp));
      problem<double> p = make_problem<double>(sp, salt);
      auto gen = seeded_rng(salt++ + 7);
      auto dout = make_buffer<double>({sp.B, sp.H, sp.Lq, sp.dv}, layout::contiguous);
      fill_uniform(dout.v, gen, -1.0, 1.0);
      auto uq = make_buffer<double>(p.q.v.extents(), layout::contiguous);
      auto uk = make_buffer<double>(p.k.v.extents(), layout::contiguous);
      auto uv = make_buffer<double>(p.v.v.extents(), layout::contiguous);
      for (auto* u : {&uq, &uk, &uv}) fill_uniform(u->v, gen, -1.0, 1.0);
      auto dot = [](const auto& a, const auto& b) {
        double s = 0;
        for_each_index(a.extents(), [&](const std::array<index_t, 4>& ix) {
          s += static_cast<double>(at(a, ix)) * static_cast<double>(at(b, ix));
        });
        return s;
      };
      for_each_arch([&](auto arch) {
        using Arch = decltype(arch);
        INFO("arch " << Arch::name);
        auto f = [&](double t) {
          problem<double> x = make_problem<double>(sp, salt - 1);
          for (const auto& pair : {std::pair{&x.q, &uq}, std::pair{&x.k, &uk}, std::pair{&x.v, &uv}}) {
            strided_buffer<double>* in = pair.first;
            const strided_buffer<double>* u = pair.second;
            for_each_index(in->v.extents(),
                           [&](const std::array<index_t, 4>& ix) { at(in->v, ix) += t * at(u->cv(), ix); });
          }
          attnkit::tensor<double, 4> out({sp.B, sp.H, sp.Lq, sp.dv});
          attnkit::full_attention<Arch>(x.q.cv(), x.k.cv(), x.v.cv(), out.view(), x.opt);
          return dot(out.cview(), dout.cv());
        };
        const double h = 1e-5;
        const double fd = (f(h) - f(-h)) / (2 * h);
        const run_result<double> r = run_backward<Arch>(p, dout, 1);
        const double an = dot(r.dq.cv(), uq.cv()) + dot(r.dk.cv(), uk.cv()) + dot(r.dv.cv(), uv.cv());
        INFO("analytic " << an << " vs central difference " << fd);
        REQUIRE(std::fabs(an - fd) <= 1e-7 * (1 + std::fabs(fd)));
      });
    }
}

TEMPLATE_TEST_CASE("full_attention_backward: the same bits for any thread count", "[backward][threads]",
                   float, double) {
  using T = TestType;
  std::uint64_t salt = 500;
  // tiled with one part per (b, kv head); tiled with its keys split in parts (one kv head);
  // split-key decode (few rows, keys in chunks)
  struct shape {
    index_t B, H, Hkv, Lq, Lk;
  };
  for (const shape& x : {shape{3, 4, 2, 150, 260}, shape{1, 2, 1, 150, 900}, shape{3, 4, 2, 2, 1300}})
    for (const causal_mode c : {causal_mode::none, causal_mode::top_left}) {
      spec sp;
      sp.B = x.B, sp.H = x.H, sp.Hkv = x.Hkv, sp.Lq = x.Lq, sp.Lk = x.Lk, sp.dk = 32, sp.dv = 24;
      sp.causal = c;
      if (x.B == 3) sp.key_lengths = {x.Lk, 100, 7};
      INFO(describe(sp));
      const problem<T> p = make_problem<T>(sp, salt);
      auto gen = seeded_rng(salt++ + 3);
      auto dout = make_buffer<T>({sp.B, sp.H, sp.Lq, sp.dv}, layout::contiguous);
      fill_uniform(dout.v, gen, -1.0, 1.0);
      for_each_arch([&](auto arch) {
        using Arch = decltype(arch);
        INFO("arch " << Arch::name);
        const run_result<T> one = run_backward<Arch>(p, dout, 1);
        for (const int t : {2, 3, 5}) {
          INFO(t << " threads");
          const run_result<T> r = run_backward<Arch>(p, dout, t);
          require_same_bits(r.dq.cv(), one.dq.cv(), "dq");
          require_same_bits(r.dk.cv(), one.dk.cv(), "dk");
          require_same_bits(r.dv.cv(), one.dv.cv(), "dv");
        }
      });
    }
}

TEMPLATE_TEST_CASE("full_attention_backward: NaN and Inf in hidden keys and values reach no gradient",
                   "[backward][mask]", float, double) {
  using T = TestType;
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  std::uint64_t salt = 600;
  for (const causal_mode c : {causal_mode::none, causal_mode::top_left, causal_mode::bottom_right}) {
    spec sp;
    sp.B = 2, sp.H = 2, sp.Hkv = 1, sp.Lq = 80, sp.Lk = 140, sp.dk = 16, sp.dv = 16;
    sp.causal = c;
    sp.key_lengths = {101, 0};
    INFO(describe(sp));
    problem<T> p = make_problem<T>(sp, salt);
    auto gen = seeded_rng(salt++ + 5);
    auto dout = make_buffer<T>({sp.B, sp.H, sp.Lq, sp.dv}, layout::contiguous);
    fill_uniform(dout.v, gen, -1.0, 1.0);
    const ref::gradients want = ref::attention_backward<T>(p.q.cv(), p.k.cv(), p.v.cv(), dout.cv(), p.opt);
    // Poison every key that some query of its batch entry does not see: padding everywhere, and
    // with a causal mask every key after the first query's last visible one.
    for (index_t b = 0; b < sp.B; ++b)
      for (index_t j = 0; j < sp.Lk; ++j) {
        bool hidden_somewhere = false;
        for (index_t i = 0; i < sp.Lq; ++i)
          hidden_somewhere = hidden_somewhere || !ref::visible(p.opt.mask, b, i, j, sp.Lq, sp.Lk);
        if (!hidden_somewhere) continue;
        // a key visible to a later query keeps its values there: poison only the never-visible ones
        bool seen = false;
        for (index_t i = 0; i < sp.Lq; ++i) seen = seen || ref::visible(p.opt.mask, b, i, j, sp.Lq, sp.Lk);
        if (seen) continue;
        for (index_t x = 0; x < sp.dk; ++x) at(p.k.v, {b, 0, j, x}) = (j % 2) ? nan : inf;
        for (index_t e = 0; e < sp.dv; ++e) at(p.v.v, {b, 0, j, e}) = (j % 2) ? inf : nan;
      }
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO("arch " << Arch::name);
      const run_result<T> r = run_backward<Arch>(p, dout, 1);
      require_within(r.dq.cv(), want.dq, want.adq, grad_tol<T>::eps, grad_tol<T>::tiny, "dq");
      require_within(r.dk.cv(), want.dk, want.adk, grad_tol<T>::eps, grad_tol<T>::tiny, "dk");
      require_within(r.dv.cv(), want.dv, want.adv, grad_tol<T>::eps, grad_tol<T>::tiny, "dv");
      // keys no query sees: exactly zero; queries that see no key (batch 1): dq exactly zero
      index_t nonzero = 0;
      for (index_t b = 0; b < sp.B; ++b)
        for (index_t j = 0; j < sp.Lk; ++j) {
          bool seen = false;
          for (index_t i = 0; i < sp.Lq; ++i) seen = seen || ref::visible(p.opt.mask, b, i, j, sp.Lq, sp.Lk);
          if (seen) continue;
          for (index_t x = 0; x < sp.dk; ++x) nonzero += !(at(r.dk.cv(), {b, 0, j, x}) == T(0));
          for (index_t e = 0; e < sp.dv; ++e) nonzero += !(at(r.dv.cv(), {b, 0, j, e}) == T(0));
        }
      for (index_t h = 0; h < sp.H; ++h)
        for (index_t i = 0; i < sp.Lq; ++i)
          for (index_t x = 0; x < sp.dk; ++x) nonzero += !(at(r.dq.cv(), {1, h, i, x}) == T(0));
      INFO(nonzero << " gradient elements of unseen keys or of queries without keys are not exactly 0");
      REQUIRE(nonzero == 0);
    });
  }
}

TEMPLATE_TEST_CASE(
    "full_attention_backward: a NaN key on the causal diagonal stays out of earlier queries' dq",
    "[backward][mask]", float, double) {
  using T = TestType;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  spec sp;
  sp.B = 1, sp.H = 2, sp.Hkv = 1, sp.Lq = 150, sp.Lk = 150, sp.dk = 16, sp.dv = 16;
  sp.causal = causal_mode::top_left;
  INFO(describe(sp));
  for (const index_t j0 : {5, 70, 131})
    for (const bool in_k : {true, false}) {
      INFO("poisoned key " << j0 << (in_k ? " (k)" : " (v)"));
      problem<T> p = make_problem<T>(sp, 700 + static_cast<std::uint64_t>(j0));
      auto gen = seeded_rng(710);
      auto dout = make_buffer<T>({sp.B, sp.H, sp.Lq, sp.dv}, layout::contiguous);
      fill_uniform(dout.v, gen, -1.0, 1.0);
      const ref::gradients want = ref::attention_backward<T>(p.q.cv(), p.k.cv(), p.v.cv(), dout.cv(), p.opt);
      for (index_t x = 0; x < sp.dk; ++x)
        if (in_k) at(p.k.v, {0, 0, j0, x}) = nan;
      for (index_t e = 0; e < sp.dv; ++e)
        if (!in_k) at(p.v.v, {0, 0, j0, e}) = nan;
      for_each_arch([&](auto arch) {
        using Arch = decltype(arch);
        INFO("arch " << Arch::name);
        const run_result<T> r = run_backward<Arch>(p, dout, 1);
        auto rows = [&](const auto& x) { return prefix_rows(x, j0); };
        attnkit::tensor<double, 4> w({sp.B, sp.H, j0, sp.dk}), m({sp.B, sp.H, j0, sp.dk});
        for_each_index(w.extents(), [&](const std::array<index_t, 4>& ix) {
          at(w.view(), ix) = at(want.dq.cview(), ix);
          at(m.view(), ix) = at(want.adq.cview(), ix);
        });
        require_within(rows(r.dq.cv()), w, m, grad_tol<T>::eps, grad_tol<T>::tiny,
                       "dq of the queries before the key");
      });
    }
}

TEMPLATE_TEST_CASE("merge_attention_states: two key sets merge into one call over all keys",
                   "[backward][merge]", float, double) {
  using T = TestType;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  spec sp;
  sp.B = 2, sp.H = 4, sp.Hkv = 2, sp.Lq = 50, sp.Lk = 300, sp.dk = 16, sp.dv = 24;
  const problem<T> p = make_problem<T>(sp, 800);
  auto keys = [&](const strided_buffer<T>& x, index_t j0, index_t n) {
    return view<const T, 4>(x.cv().data() + j0 * x.v.stride(2), {sp.B, sp.Hkv, n, x.v.extent(3)},
                            x.v.strides());
  };
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    INFO("arch " << Arch::name);
    attnkit::tensor<T, 4> all({sp.B, sp.H, sp.Lq, sp.dv}), a(all.extents()), b(all.extents()),
        m(all.extents());
    attnkit::tensor<T, 3> lall({sp.B, sp.H, sp.Lq}), la(lall.extents()), lb(lall.extents()),
        lm(lall.extents());
    attnkit::full_attention<Arch>(p.q.cv(), p.k.cv(), p.v.cv(), all.view(), lall.view(), p.opt);
    for (const index_t split : {0, 1, 128, 211, 300}) {
      INFO("keys [0, " << split << ") and [" << split << ", 300)");
      attnkit::full_attention<Arch>(p.q.cv(), keys(p.k, 0, split), keys(p.v, 0, split), a.view(), la.view(),
                                    p.opt);
      attnkit::full_attention<Arch>(p.q.cv(), keys(p.k, split, sp.Lk - split),
                                    keys(p.v, split, sp.Lk - split), b.view(), lb.view(), p.opt);
      // an empty side is -inf with zeros: poison its output, which must not be read
      if (split == 0) std::fill(a.data(), a.data() + a.size(), nan);
      if (split == sp.Lk) std::fill(b.data(), b.data() + b.size(), nan);
      attnkit::merge_attention_states<Arch>(a.cview(), la.cview(), b.cview(), lb.cview(), m.view(),
                                            lm.view());
      attnkit::tensor<double, 4> want(all.extents());
      attnkit::tensor<double, 3> wl(lall.extents());
      for (index_t i = 0; i < all.size(); ++i) want.data()[i] = all.data()[i];
      require_close(m.cview(), want.cview(), tolerance_abs<T>(), 4 * tolerance_abs<T>(),
                    "merged out vs one call");
      for (index_t i = 0; i < lall.size(); ++i) wl.data()[i] = lall.data()[i];
      require_close(lm.cview(), wl.cview(), tolerance_abs<T>(), tolerance_abs<T>(), "merged lse vs one call");
      // in place: out = out_a, lse = lse_a
      attnkit::merge_attention_states<Arch>(a.cview(), la.cview(), b.cview(), lb.cview(), a.view(),
                                            la.view());
      require_same_bits(a.cview(), m.cview(), "in-place merge");
      require_same_bits(la.cview(), lm.cview(), "in-place merge lse");
    }
    // two empty states: zeros and -inf
    std::fill(a.data(), a.data() + a.size(), nan);
    std::fill(la.data(), la.data() + la.size(), -std::numeric_limits<T>::infinity());
    attnkit::merge_attention_states<Arch>(a.cview(), la.cview(), a.cview(), la.cview(), m.view(), lm.view());
    index_t bad = 0;
    for (index_t i = 0; i < m.size(); ++i) bad += !(m.data()[i] == T(0));
    for (index_t i = 0; i < lm.size(); ++i) bad += !(lm.data()[i] == -std::numeric_limits<T>::infinity());
    INFO(bad << " elements of merging two empty states are not 0 / -inf");
    REQUIRE(bad == 0);
  });
}

TEST_CASE("full_attention_backward and merge_attention_states: invalid arguments throw and write nothing",
          "[backward][errors]") {
  using T = float;
  attnkit::tensor<T, 4> q({1, 2, 8, 4}), k({1, 1, 9, 4}), v({1, 1, 9, 3}), out({1, 2, 8, 3}),
      dout(out.extents());
  attnkit::tensor<T, 3> lse({1, 2, 8});
  attnkit::tensor<T, 4> dq(q.extents()), dk(k.extents()), dv(v.extents()), bad_dq({1, 2, 8, 5});
  std::fill(dq.data(), dq.data() + dq.size(), T(3));
  std::fill(dk.data(), dk.data() + dk.size(), T(3));
  std::fill(dv.data(), dv.data() + dv.size(), T(3));
  auto untouched = [&] {
    bool ok = true;
    for (auto* x : {&dq, &dk, &dv})
      for (index_t i = 0; i < x->size(); ++i) ok = ok && x->data()[i] == T(3);
    return ok;
  };
  using attnkit::invalid_argument;
  REQUIRE_THROWS_AS(
      attnkit::full_attention_backward(q.cview(), k.cview(), v.cview(), out.cview(), lse.cview(),
                                       dout.cview(), bad_dq.view(), dk.view(), dv.view()),
      invalid_argument);
  attnkit::tensor<T, 3> bad_lse({1, 2, 7});
  REQUIRE_THROWS_AS(
      attnkit::full_attention_backward(q.cview(), k.cview(), v.cview(), out.cview(), bad_lse.cview(),
                                       dout.cview(), dq.view(), dk.view(), dv.view()),
      invalid_argument);
  // a gradient that overlaps an input, or another gradient
  attnkit::tensor_view<T, 4> dq_on_q(const_cast<T*>(q.data()), q.extents(), q.cview().strides());
  REQUIRE_THROWS_AS(
      attnkit::full_attention_backward(q.cview(), k.cview(), v.cview(), out.cview(), lse.cview(),
                                       dout.cview(), dq_on_q, dk.view(), dv.view()),
      invalid_argument);
  attnkit::tensor_view<T, 4> dv_on_dk(dk.data(), v.extents(), {36, 36, 3, 1});
  REQUIRE_THROWS_AS(
      attnkit::full_attention_backward(q.cview(), k.cview(), v.cview(), out.cview(), lse.cview(),
                                       dout.cview(), dq.view(), dk.view(), dv_on_dk),
      invalid_argument);
  REQUIRE(untouched());
  // the forward's lse of the wrong shape
  attnkit::tensor<T, 4> o2(out.extents());
  std::fill(o2.data(), o2.data() + o2.size(), T(3));
  REQUIRE_THROWS_AS(attnkit::full_attention(q.cview(), k.cview(), v.cview(), o2.view(), bad_lse.view()),
                    invalid_argument);
  bool o2_untouched = true;
  for (index_t i = 0; i < o2.size(); ++i) o2_untouched = o2_untouched && o2.data()[i] == T(3);
  REQUIRE(o2_untouched);
  // merge: shapes that disagree
  REQUIRE_THROWS_AS(attnkit::merge_attention_states(out.cview(), lse.cview(), out.cview(), bad_lse.cview(),
                                                    o2.view(), lse.view()),
                    invalid_argument);
}

TEMPLATE_TEST_CASE("full_attention_backward equals PyTorch autograd (tools/attention_grad_golden.py)",
                   "[backward][golden]", float, double) {
  // Golden values in float64 from torch autograd of softmax attention with masks (GQA by
  // repeat_interleave, so autograd sums dk and dv over the group); every case has <= 13 keys and
  // O(1) values. double: a few ulp of O(10) sums: 1e-12 (1 + |ref|). float: the inputs rounded to
  // float (2^-24 relative) move the logits by ~dk 2^-24 and the gradients by as much relative to
  // their O(10) terms, plus the fp32 sums: 2e-5 (1 + |ref|) is ~20x that.
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;
  int n = 0;
  for (const golden_case& c : read_golden("attention_grad_golden.txt")) {
    REQUIRE(c.head.size() >= 11);
    const index_t B = c.word(1), H = c.word(2), Hkv = c.word(3), Lq = c.word(4), Lk = c.word(5),
                  dk = c.word(6), dv = c.word(7);
    const std::string causal = c.head[8];
    INFO("case " << n << ": B=" << B << " H=" << H << " Hkv=" << Hkv << " Lq=" << Lq << " Lk=" << Lk
                 << " causal " << causal);
    ++n;
    attnkit::attention_options opt;
    opt.scale = std::stod(c.head[9]);
    opt.mask.causal = causal == "top_left"       ? causal_mode::top_left
                      : causal == "bottom_right" ? causal_mode::bottom_right
                                                 : causal_mode::none;
    std::vector<std::int64_t> lens;
    for (index_t b = 0; b < c.word(10); ++b) lens.push_back(c.word(11 + static_cast<std::size_t>(b)));
    if (!lens.empty()) opt.mask.key_lengths = view<const std::int64_t, 1>(lens.data(), {B}, {1});
    REQUIRE(c.data.size() == 9);
    const auto q = tensor_of<T, 4>(c.data[0], {B, H, Lq, dk});
    const auto k = tensor_of<T, 4>(c.data[1], {B, Hkv, Lk, dk});
    const auto v = tensor_of<T, 4>(c.data[2], {B, Hkv, Lk, dv});
    const auto dout = tensor_of<T, 4>(c.data[3], {B, H, Lq, dv});
    const auto want_out = tensor_of<double, 4>(c.data[4], {B, H, Lq, dv});
    const auto want_lse = tensor_of<double, 3>(c.data[5], {B, H, Lq});
    const auto want_dq = tensor_of<double, 4>(c.data[6], {B, H, Lq, dk});
    const auto want_dk = tensor_of<double, 4>(c.data[7], {B, Hkv, Lk, dk});
    const auto want_dv = tensor_of<double, 4>(c.data[8], {B, Hkv, Lk, dv});
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO("arch " << Arch::name);
      attnkit::tensor<T, 4> out({B, H, Lq, dv}), dq(q.extents()), dK(k.extents()), dV(v.extents());
      attnkit::tensor<T, 3> lse({B, H, Lq});
      attnkit::full_attention<Arch>(q.cview(), k.cview(), v.cview(), out.view(), lse.view(), opt);
      attnkit::full_attention_backward<Arch>(q.cview(), k.cview(), v.cview(), out.cview(), lse.cview(),
                                             dout.cview(), dq.view(), dK.view(), dV.view(), opt);
      require_close(out.cview(), want_out.cview(), tol, tol, "out");
      require_close(lse.cview(), want_lse.cview(), tol, tol, "lse");
      require_close(dq.cview(), want_dq.cview(), tol, tol, "dq");
      require_close(dK.cview(), want_dk.cview(), tol, tol, "dk");
      require_close(dV.cview(), want_dv.cview(), tol, tol, "dv");
    });
  }
  CHECK(n == 4);
}

TEMPLATE_TEST_CASE("full_attention: tied saturated logits over several key chunks weigh every key alike",
                   "[backward][logits]", float, double) {
  // Every logit ties at the saturation bound (scale 1e38 on unit q and k): softmax is uniform, so
  // out = mean(v) whatever the decode path's chunks hold (512 + 88 keys here): the chunks merge as
  // (m, l) states, never through a log-sum-exp that would swallow their key counts. (The backward
  // recomputes P from lse and is not exact at such logits: docs/design.md §4.1.)
  using T = TestType;
  for (const index_t lq : {1, 40}) {
    INFO("Lq = " << lq);
    const index_t Lk = 600, d = 4;
    attnkit::tensor<T, 4> q({1, 1, lq, d}), k({1, 1, Lk, d}), v({1, 1, Lk, d}), out({1, 1, lq, d});
    attnkit::tensor<T, 3> lse({1, 1, lq});
    auto gen = seeded_rng(900);
    for (index_t i = 0; i < q.size(); ++i) q.data()[i] = T(1);
    for (index_t i = 0; i < k.size(); ++i) k.data()[i] = T(1);
    fill_uniform(v.view(), gen, -1.0, 1.0);
    attnkit::attention_options opt;
    opt.scale = 1e38;
    attnkit::tensor<double, 4> want(out.extents());
    for (index_t e = 0; e < d; ++e) {
      double m = 0;
      for (index_t j = 0; j < Lk; ++j) m += static_cast<double>(v(0, 0, j, e));
      for (index_t i = 0; i < lq; ++i) want(0, 0, i, e) = m / Lk;
    }
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO("arch " << Arch::name);
      attnkit::full_attention<Arch>(q.cview(), k.cview(), v.cview(), out.view(), lse.view(), opt);
      // float: sums of 600 terms of magnitude <= 1 in fp32 (a few 1e-7 relative to 600, over 600)
      const double tol = std::is_same_v<T, float> ? 2e-6 : 1e-13;
      require_close(out.cview(), want.cview(), tol, 0.0, "out = mean(v)");
    });
  }
}
