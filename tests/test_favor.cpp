// attnkit tests: FAVOR+ (random features, favor_attention, favor_decoder) against the fp64
// reference of tests/reference/favor_ref.hpp, for every SIMD architecture the build can run, and
// the statistical properties of the estimator with fixed seeds.
//
// Tolerances (kernel vs fp64 reference with the same feature matrix). float: |y - ref| <= 1e-5 +
// 1e-5 |ref| with v uniform in [-1, 1), i.e. 1e-5 relative to the scale of the values. A feature
// exponent u = w.x' is a dk-term fp32 dot product: with |w| ~ sqrt(dk) and |x'| <= sqrt(dk/3) dk^-1/4
// its rounding error is ~ sqrt(dk) u |w||x'| <= 2e-6 (random errors) for dk <= 64, plus 3 ulp of exp2;
// a relative error e of the weights moves the output (a weighted mean of the values) by at most
// ~2e; fp32 sums over L <= 300 keys add ~sqrt(L) u = 1e-6. double: 1e-12 absolute and relative.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <attnkit/attnkit.hpp>

#include "reference/attention_ref.hpp"
#include "reference/common.hpp"
#include "reference/favor_ref.hpp"
#include "reference/kernel_instances.hpp"

namespace {

using namespace attnkit_test;
using attnkit::favor_kernel;
using attnkit::random_features;

template <class T>
struct favor_tol;
template <>
struct favor_tol<float> {
  static constexpr double atol = 1e-5, rtol = 1e-5;
};
template <>
struct favor_tol<double> {
  static constexpr double atol = 1e-12, rtol = 1e-12;
};

const favor_kernel kKernels[] = {favor_kernel::softmax_positive, favor_kernel::softmax_hyperbolic,
                                 favor_kernel::relu};

const char* kernel_name(favor_kernel k) {
  switch (k) {
    case favor_kernel::softmax_positive:
      return "softmax_positive";
    case favor_kernel::softmax_hyperbolic:
      return "softmax_hyperbolic";
    case favor_kernel::relu:
      return "relu";
  }
  return "?";
}

/// One FAVOR+ problem: sizes, features, options, layouts.
struct fspec {
  index_t B = 1, H = 1, Hkv = 1, Lq = 1, Lk = 1, dk = 16, dv = 16, m = 16;
  bool causal = false;
  std::vector<std::int64_t> key_lengths;
  layout lq = layout::contiguous, lk = layout::contiguous, lv = layout::contiguous, lo = layout::contiguous;
  double range = 1;  // q and k uniform in [-range, range)
};

std::string describe(const fspec& s) {
  std::ostringstream os;
  os << "B=" << s.B << " H=" << s.H << " Hkv=" << s.Hkv << " Lq=" << s.Lq << " Lk=" << s.Lk << " dk=" << s.dk
     << " dv=" << s.dv << " m=" << s.m << " causal=" << s.causal << " key_lengths=";
  if (s.key_lengths.empty()) os << "none";
  for (std::size_t b = 0; b < s.key_lengths.size(); ++b) os << (b ? "," : "") << s.key_lengths[b];
  os << " layouts q/k/v/out=" << layout_name(s.lq) << "/" << layout_name(s.lk) << "/" << layout_name(s.lv)
     << "/" << layout_name(s.lo) << " range=" << s.range;
  return os.str();
}

template <class T>
struct fproblem {
  fspec sp;
  strided_buffer<T> q, k, v;
  std::vector<std::int64_t> lens;
  attnkit::favor_options opt;
  random_features<T> rf = random_features<T>::orthogonal(1, 1, 0);
};

template <class T>
fproblem<T> make_fproblem(const fspec& sp, std::uint64_t salt) {
  fproblem<T> p;
  p.sp = sp;
  auto gen = seeded_rng(salt);
  p.q = make_buffer<T>({sp.B, sp.H, sp.Lq, sp.dk}, sp.lq);
  p.k = make_buffer<T>({sp.B, sp.Hkv, sp.Lk, sp.dk}, sp.lk);
  p.v = make_buffer<T>({sp.B, sp.Hkv, sp.Lk, sp.dv}, sp.lv);
  fill_uniform(p.q.v, gen, -sp.range, sp.range);
  fill_uniform(p.k.v, gen, -sp.range, sp.range);
  fill_uniform(p.v.v, gen, -1.0, 1.0);
  p.opt.causal = sp.causal;
  if (!sp.key_lengths.empty()) {
    p.lens = sp.key_lengths;
    p.opt.mask.key_lengths =
        view<const std::int64_t, 1>(p.lens.data(), {static_cast<index_t>(p.lens.size())}, {1});
  }
  p.rf = random_features<T>::orthogonal(sp.m, sp.dk, salt);
  return p;
}

template <class Arch, class T>
strided_buffer<T> run_favor(const fproblem<T>& p, int threads = 1) {
  auto out = make_buffer<T>({p.sp.B, p.sp.H, p.sp.Lq, p.sp.dv}, p.sp.lo, T(-7777.25));
  attnkit::favor_options opt = p.opt;
  opt.threads = threads;
  attnkit::favor_attention<Arch>(p.q.cv(), p.k.cv(), p.v.cv(), out.v, p.rf, opt);
  return out;
}

/// Every kernel and architecture against the fp64 reference of the formulas.
template <class T>
void check_fspec(const fspec& sp, std::uint64_t salt) {
  auto p = make_fproblem<T>(sp, salt);
  for (favor_kernel kern : kKernels) {
    p.opt.kernel = kern;
    INFO(describe(sp) << " kernel=" << kernel_name(kern));
    const auto want = ref::favor<T>(p.q.cv(), p.k.cv(), p.v.cv(), p.rf.matrix(), p.opt);
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO("arch " << Arch::name);
      const auto out = run_favor<Arch>(p);
      REQUIRE(out.touched_outside() == 0);
      require_close(out.cv(), want.cview(), favor_tol<T>::atol, favor_tol<T>::rtol,
                    "favor_attention vs fp64");
    });
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// random_features

TEST_CASE("random_features: orthogonal blocks, truncated last block, row norms", "[favor][features]") {
  for (index_t d : {1, 3, 16, 64})
    for (index_t m : {1, 2, 15, 16, 17, 40, 130}) {
      INFO("m=" << m << " d=" << d);
      const auto rf = random_features<double>::orthogonal(m, d, 11, attnkit::feature_norms::sqrt_d);
      const auto w = rf.matrix();
      REQUIRE(w.extent(0) == m);
      REQUIRE(w.extent(1) == d);
      double worst_dot = 0, worst_norm = 0;
      for (index_t i = 0; i < m; ++i) {
        double n2 = 0;
        for (index_t p = 0; p < d; ++p) n2 += w(i, p) * w(i, p);
        worst_norm = std::max(worst_norm, std::fabs(std::sqrt(n2) - std::sqrt(double(d))));
        for (index_t j = i / d * d; j < i; ++j) {  // rows of the same block are orthogonal
          double s = 0;
          for (index_t p = 0; p < d; ++p) s += w(i, p) * w(j, p);
          worst_dot = std::max(worst_dot, std::fabs(s) / d);
        }
      }
      REQUIRE(worst_norm <= 1e-12);
      REQUIRE(worst_dot <= 1e-13);
    }
}

TEST_CASE("random_features: chi norms and Gaussian entries have the right moments", "[favor][features]") {
  // chi norms: |w|^2 ~ chi^2_d with mean d, variance 2d; over m rows the mean has sd sqrt(2d/m).
  const index_t d = 16, m = 4096;
  const auto ort = random_features<double>::orthogonal(m, d, 5);
  double mean_n2 = 0;
  for (index_t i = 0; i < m; ++i)
    for (index_t p = 0; p < d; ++p) mean_n2 += ort.matrix()(i, p) * ort.matrix()(i, p) / m;
  REQUIRE(std::fabs(mean_n2 - d) <= 5 * std::sqrt(2.0 * d / m));
  // i.i.d. N(0,1): mean sd 1/sqrt(n), sample variance sd sqrt(2/n).
  const auto g = random_features<double>::gaussian(m, d, 6);
  double mean = 0, sq = 0;
  const double n = double(m * d);
  for (index_t i = 0; i < m; ++i)
    for (index_t p = 0; p < d; ++p) {
      mean += g.matrix()(i, p) / n;
      sq += g.matrix()(i, p) * g.matrix()(i, p) / n;
    }
  REQUIRE(std::fabs(mean) <= 5 / std::sqrt(n));
  REQUIRE(std::fabs(sq - mean * mean - 1) <= 5 * std::sqrt(2 / n));
}

TEST_CASE("random_features: seeded, deterministic, redraw, from_matrix round trip", "[favor][features]") {
  const auto a = random_features<float>::orthogonal(70, 16, 1234);
  const auto b = random_features<float>::orthogonal(70, 16, 1234);
  const auto c = random_features<float>::orthogonal(70, 16, 1235);
  const auto ad = random_features<double>::orthogonal(70, 16, 1234);
  auto r = random_features<float>::orthogonal(70, 16, 99);
  r.redraw(1234);
  REQUIRE(r.seed() == 1234);
  index_t same_ab = 0, same_ac = 0, same_r = 0, rounded = 0;
  for (index_t i = 0; i < 70; ++i)
    for (index_t p = 0; p < 16; ++p) {
      const float x = a.matrix()(i, p);
      same_ab += std::memcmp(&x, &b.matrix()(i, p), sizeof x) == 0;
      same_ac += x == c.matrix()(i, p);
      same_r += std::memcmp(&x, &r.matrix()(i, p), sizeof x) == 0;
      rounded += x == static_cast<float>(ad.matrix()(i, p));  // drawn in double, then rounded
    }
  REQUIRE(same_ab == 70 * 16);
  REQUIRE(same_r == 70 * 16);
  REQUIRE(rounded == 70 * 16);
  REQUIRE(same_ac == 0);
  const auto f = random_features<float>::from_matrix(a.matrix());
  REQUIRE(f.draw_kind() == attnkit::feature_draw::from_matrix);
  REQUIRE(std::memcmp(f.matrix().data(), a.matrix().data(), 70 * 16 * sizeof(float)) == 0);
  auto f2 = f;
  REQUIRE_THROWS_AS(f2.redraw(1), attnkit::invalid_argument);
  // A strided (transposed) caller matrix is read through its strides.
  std::vector<float> wt(16 * 70);
  for (index_t i = 0; i < 70; ++i)
    for (index_t p = 0; p < 16; ++p) wt[static_cast<std::size_t>(p * 70 + i)] = a.matrix()(i, p);
  const auto ft = random_features<float>::from_matrix(view<const float, 2>(wt.data(), {70, 16}, {1, 70}));
  REQUIRE(std::memcmp(ft.matrix().data(), a.matrix().data(), 70 * 16 * sizeof(float)) == 0);
  // Gaussian and orthogonal features of the same seed differ; gaussian is deterministic too.
  const auto g1 = random_features<float>::gaussian(8, 4, 3), g2 = random_features<float>::gaussian(8, 4, 3);
  REQUIRE(std::memcmp(g1.matrix().data(), g2.matrix().data(), 32 * sizeof(float)) == 0);
}

TEST_CASE("random_features: invalid sizes and matrices throw", "[favor][features][errors]") {
  REQUIRE_THROWS_AS(random_features<float>::orthogonal(0, 16, 1), attnkit::invalid_argument);
  REQUIRE_THROWS_AS(random_features<float>::orthogonal(16, 0, 1), attnkit::invalid_argument);
  REQUIRE_THROWS_AS(random_features<float>::gaussian(-1, 4, 1), attnkit::invalid_argument);
  std::vector<float> w(12, 1.0f);
  w[5] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_AS(random_features<float>::from_matrix(view<const float, 2>::contiguous(w.data(), {3, 4})),
                    attnkit::invalid_argument);
  REQUIRE_THROWS_AS(random_features<float>::from_matrix(view<const float, 2>(nullptr, {3, 4}, {4, 1})),
                    attnkit::invalid_argument);
  REQUIRE_THROWS_AS(random_features<float>::from_matrix(view<const float, 2>::contiguous(w.data(), {0, 4})),
                    attnkit::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// favor_attention against the fp64 reference (same feature matrix)

TEMPLATE_TEST_CASE("favor_attention: shapes, kernels, bidirectional and causal", "[favor][shapes]", float,
                   double) {
  std::uint64_t salt = 500;
  // {B, H, Hkv, L, dk, dv, m}: awkward lengths around the chunk sizes (8/24/64/72), m not a
  // multiple of the panel width, m < dk, dv != dk, grouped heads.
  const index_t shapes[][7] = {
      {1, 1, 1, 1, 16, 16, 16},  {1, 2, 1, 17, 16, 8, 24}, {2, 4, 2, 63, 32, 40, 40},
      {1, 2, 2, 64, 8, 8, 100},  {1, 3, 1, 65, 16, 16, 7}, {1, 1, 1, 130, 64, 64, 256},
      {2, 2, 1, 300, 16, 5, 33}, {1, 1, 1, 73, 3, 1, 5},   {1, 2, 1, 145, 1, 2, 3}};
  for (const auto& sh : shapes)
    for (bool causal : {false, true}) {
      fspec s;
      s.B = sh[0];
      s.H = sh[1];
      s.Hkv = sh[2];
      s.Lq = s.Lk = sh[3];
      s.dk = sh[4];
      s.dv = sh[5];
      s.m = sh[6];
      s.causal = causal;
      check_fspec<TestType>(s, ++salt);
    }
}

TEMPLATE_TEST_CASE("favor_attention: cross-attention, key_lengths, strided views", "[favor][mask][layout]",
                   float, double) {
  std::uint64_t salt = 600;
  {
    fspec s;  // bidirectional cross-attention Lq != Lk with padding keys
    s.B = 3;
    s.H = 2;
    s.Lq = 20;
    s.Lk = 77;
    s.dk = 16;
    s.dv = 12;
    s.m = 48;
    s.key_lengths = {77, 0, 31};
    check_fspec<TestType>(s, ++salt);
  }
  for (bool causal : {false, true}) {
    fspec s;  // causal padding: queries past key_lengths read every key of the sequence
    s.B = 3;
    s.H = 4;
    s.Hkv = 2;
    s.Lq = s.Lk = 100;
    s.dk = 8;
    s.dv = 8;
    s.m = 20;
    s.causal = causal;
    s.key_lengths = {100, 37, 0};
    check_fspec<TestType>(s, ++salt);
  }
  for (bool causal : {false, true}) {
    fspec s;  // every layout (bshd, dim-major, reversed sequence, gapped, broadcast batch)
    s.B = 2;
    s.H = 2;
    s.Lq = s.Lk = 70;
    s.dk = 16;
    s.dv = 16;
    s.m = 32;
    s.causal = causal;
    s.lq = layout::bshd;
    s.lk = layout::dim_major;
    s.lv = layout::reversed;
    s.lo = layout::gapped;
    check_fspec<TestType>(s, ++salt);
    s.lq = layout::broadcast_b;
    s.lk = layout::bshd_padded;
    s.lv = layout::dim_major;
    s.lo = layout::bshd_padded;
    check_fspec<TestType>(s, ++salt);
  }
}

TEMPLATE_TEST_CASE("favor_attention: long sequences split into key segments", "[favor][shapes][long]", float,
                   double) {
  // Lk > 4096: the bidirectional key pass sums the states of several segments.
  fspec s;
  s.B = 1;
  s.H = 2;
  s.Lq = 9;
  s.Lk = 2 * 4096 + 77;
  s.dk = 4;
  s.dv = 3;
  s.m = 8;
  s.key_lengths = {2 * 4096 + 50};
  check_fspec<TestType>(s, 700);
}

TEMPLATE_TEST_CASE("favor_attention: output bits do not depend on the thread count", "[favor][threads]",
                   float, double) {
  for (bool causal : {false, true}) {
    fspec s;
    s.B = 2;
    s.H = 4;
    s.Hkv = 2;
    s.Lq = s.Lk = causal ? 333 : 4096 + 300;
    s.dk = 16;
    s.dv = 8;
    s.m = 24;
    s.causal = causal;
    const auto p = make_fproblem<TestType>(s, 800 + causal);
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO("arch " << Arch::name << " causal " << causal);
      const auto one = run_favor<Arch>(p, 1);
      for (int t : {2, 3}) require_same_bits(one.cv(), run_favor<Arch>(p, t).cv(), "threads");
    });
  }
}

TEMPLATE_TEST_CASE("favor_attention: a causal output ignores every later input, even NaN and Inf",
                   "[favor][causal]", float, double) {
  for (index_t L : {5, 64, 150}) {
    fspec s;
    s.H = 2;
    s.Lq = s.Lk = L;
    s.dk = 16;
    s.dv = 8;
    s.m = 24;
    s.causal = true;
    for (favor_kernel kern : kKernels)
      for_each_arch([&](auto arch) {
        using Arch = decltype(arch);
        INFO("L=" << L << " kernel " << kernel_name(kern) << " arch " << Arch::name);
        auto p = make_fproblem<TestType>(s, 900 + L);
        p.opt.kernel = kern;
        const auto base = run_favor<Arch>(p);
        // Perturb the tail i+1.. (i descending, so earlier rows are never perturbed) and compare
        // the rows 0..i bit for bit.
        for (index_t i : {L - 1, L / 2, index_t(0)}) {
          for (index_t j = i + 1; j < L; ++j) {
            for (index_t e = 0; e < s.dk; ++e) {
              p.k.v(0, 0, j, e) = j % 3 == 0 ? TestType(NAN) : TestType(j % 3 == 1 ? 1e4 : -INFINITY);
              p.q.v(0, j % 2, j, e) = TestType(NAN);
            }
            for (index_t e = 0; e < s.dv; ++e) p.v.v(0, 0, j, e) = TestType(INFINITY);
          }
          const auto out = run_favor<Arch>(p);
          require_same_bits(prefix_rows(out.cv(), i + 1), prefix_rows(base.cv(), i + 1), "rows 0..i");
        }
      });
  }
}

TEMPLATE_TEST_CASE("favor_attention: padding keys change nothing, even NaN", "[favor][mask]", float, double) {
  for (bool causal : {false, true}) {
    fspec s;
    s.B = 2;
    s.H = 2;
    s.Lq = s.Lk = 90;
    s.dk = 16;
    s.dv = 8;
    s.m = 32;
    s.causal = causal;
    s.key_lengths = {61, 90};
    auto p = make_fproblem<TestType>(s, 1000 + causal);
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO("arch " << Arch::name << " causal " << causal);
      const auto base = run_favor<Arch>(p);
      auto q = p.q.v;
      (void)q;
      for (index_t j = 61; j < 90; ++j) {
        for (index_t e = 0; e < s.dk; ++e) p.k.v(0, 0, j, e) = TestType(NAN);
        for (index_t e = 0; e < s.dv; ++e) p.v.v(0, 0, j, e) = TestType(-INFINITY);
      }
      const auto out = run_favor<Arch>(p);
      require_same_bits(out.cv(), base.cv(), "padding keys");
      // Bidirectional: the same bits as the call on the unpadded keys of batch entry 0.
      if (!causal) {
        fproblem<TestType> t;
        t.sp = s;
        t.sp.B = 1;
        t.sp.Lk = 61;
        t.sp.key_lengths.clear();
        t.q = make_buffer<TestType>({1, 2, 90, 16}, layout::contiguous);
        t.k = make_buffer<TestType>({1, 1, 61, 16}, layout::contiguous);
        t.v = make_buffer<TestType>({1, 1, 61, 8}, layout::contiguous);
        for_each_index<4>({1, 2, 90, 16}, [&](const auto& ix) { at(t.q.v, ix) = at(p.q.v, ix); });
        for_each_index<4>({1, 1, 61, 16}, [&](const auto& ix) { at(t.k.v, ix) = at(p.k.v, ix); });
        for_each_index<4>({1, 1, 61, 8}, [&](const auto& ix) { at(t.v.v, ix) = at(p.v.v, ix); });
        t.rf = p.rf;
        const auto short_out = run_favor<Arch>(t);
        const view<const TestType, 4> o0(out.v.data(), {1, 2, 90, 8}, out.v.strides());
        require_same_bits(short_out.cv(), o0, "batch 0 vs its unpadded keys");
      }
    });
  }
}

TEMPLATE_TEST_CASE("favor_attention: large-norm inputs give finite convex combinations", "[favor][logits]",
                   float, double) {
  for (double range : {10.0, 100.0, 1000.0})
    for (bool causal : {false, true}) {
      fspec s;
      s.H = 2;
      s.Lq = s.Lk = 100;
      s.dk = 32;
      s.dv = 8;
      s.m = 64;
      s.causal = causal;
      s.range = range;
      auto p = make_fproblem<TestType>(s, 1100);
      for (favor_kernel kern : kKernels)
        for_each_arch([&](auto arch) {
          using Arch = decltype(arch);
          INFO("range " << range << " causal " << causal << " kernel " << kernel_name(kern) << " arch "
                        << Arch::name);
          p.opt.kernel = kern;
          const auto out = run_favor<Arch>(p);
          // Every weight is >= 0, so each output lies in [min v, max v] (v in [-1, 1)); zeros
          // where every weight underflowed.
          index_t bad = 0;
          for_each_index(out.v.extents(), [&](const std::array<index_t, 4>& ix) {
            const double y = static_cast<double>(at(out.v, ix));
            if (!(std::isfinite(y) && std::fabs(y) <= 1.0 + 1e-5) && bad++ == 0)
              UNSCOPED_INFO("first " << index_string(ix) << " = " << y);
          });
          REQUIRE(bad == 0);
        });
    }
}

TEMPLATE_TEST_CASE("favor_attention: empty extents", "[favor][shapes]", float, double) {
  using T = TestType;
  const auto rf = random_features<T>::orthogonal(8, 4, 1);
  for (bool causal : {false, true}) {
    attnkit::favor_options opt;
    opt.causal = causal;
    std::vector<T> q(64, T(0.5)), k(64, T(0.25)), v(64, T(1)), o(64, T(-3));
    // Lq = Lk = 0, and dv = 0: nothing to do.
    attnkit::favor_attention(view<const T, 4>::contiguous(q.data(), {1, 1, 0, 4}),
                             view<const T, 4>::contiguous(k.data(), {1, 1, 0, 4}),
                             view<const T, 4>::contiguous(v.data(), {1, 1, 0, 2}),
                             view<T, 4>::contiguous(o.data(), {1, 1, 0, 2}), rf, opt);
    attnkit::favor_attention(view<const T, 4>::contiguous(q.data(), {1, 1, 3, 4}),
                             view<const T, 4>::contiguous(k.data(), {1, 1, 3, 4}),
                             view<const T, 4>::contiguous(v.data(), {1, 1, 3, 0}),
                             view<T, 4>::contiguous(o.data(), {1, 1, 3, 0}), rf, opt);
    REQUIRE(std::all_of(o.begin(), o.end(), [](T x) { return x == T(-3); }));
  }
  // Bidirectional with no keys: zeros.
  std::vector<T> q(12, T(0.5)), o(6, T(-3));
  attnkit::favor_attention(view<const T, 4>::contiguous(q.data(), {1, 1, 3, 4}),
                           view<const T, 4>::contiguous(q.data(), {1, 1, 0, 4}),
                           view<const T, 4>::contiguous(q.data(), {1, 1, 0, 2}),
                           view<T, 4>::contiguous(o.data(), {1, 1, 3, 2}), rf);
  REQUIRE(std::all_of(o.begin(), o.end(), [](T x) { return x == T(0); }));
}

TEST_CASE("favor_attention: invalid arguments throw and leave out untouched", "[favor][errors]") {
  const auto rf = random_features<float>::orthogonal(8, 4, 1);
  std::vector<float> q(64, 0.5f), k(64, 0.25f), v(64, 1.f), o(64, -3.f), bias(16, 0.f);
  const auto Q = view<const float, 4>::contiguous(q.data(), {1, 2, 4, 4});
  const auto K = view<const float, 4>::contiguous(k.data(), {1, 1, 4, 4});
  const auto V = view<const float, 4>::contiguous(v.data(), {1, 1, 4, 4});
  const auto O = view<float, 4>::contiguous(o.data(), {1, 2, 4, 4});
  auto expect_throw = [&](auto&& call, const std::string& needle) {
    try {
      call();
      FAIL("no exception; expected one mentioning " << needle);
    } catch (const attnkit::invalid_argument& e) {
      INFO(e.what());
      REQUIRE(std::string(e.what()).find(needle) != std::string::npos);
    }
    REQUIRE(std::all_of(o.begin(), o.end(), [](float x) { return x == -3.f; }));
  };
  attnkit::favor_options opt;
  opt.mask.bias = view<const float, 4>::contiguous(bias.data(), {1, 1, 4, 4});
  expect_throw([&] { attnkit::favor_attention(Q, K, V, O, rf, opt); }, "bias");
  opt = {};
  opt.causal = true;
  const auto K3 = view<const float, 4>::contiguous(k.data(), {1, 1, 3, 4});
  const auto V3 = view<const float, 4>::contiguous(v.data(), {1, 1, 3, 4});
  expect_throw([&] { attnkit::favor_attention(Q, K3, V3, O, rf, opt); }, "favor_decoder");
  opt = {};
  opt.mask.causal = attnkit::causal_mode::bottom_right;
  expect_throw([&] { attnkit::favor_attention(Q, K3, V3, O, rf, opt); }, "Lq == Lk");
  opt = {};
  const auto rf5 = random_features<float>::orthogonal(8, 5, 1);
  expect_throw([&] { attnkit::favor_attention(Q, K, V, O, rf5, opt); }, "dimension");
  opt.relu_epsilon = -1;
  expect_throw([&] { attnkit::favor_attention(Q, K, V, O, rf, opt); }, "relu_epsilon");
  opt = {};
  opt.scale = -0.5;
  expect_throw([&] { attnkit::favor_attention(Q, K, V, O, rf, opt); }, "scale");
  opt = {};
  opt.threads = -1;
  expect_throw([&] { attnkit::favor_attention(Q, K, V, O, rf, opt); }, "threads");
  opt = {};
  std::vector<std::int64_t> lens{5};
  opt.mask.key_lengths = view<const std::int64_t, 1>::contiguous(lens.data(), {1});
  expect_throw([&] { attnkit::favor_attention(Q, K, V, O, rf, opt); }, "key_lengths");
  const auto Kbad = view<const float, 4>::contiguous(k.data(), {1, 3, 4, 4});
  const auto Vbad = view<const float, 4>::contiguous(v.data(), {1, 3, 4, 4});
  expect_throw([&] { attnkit::favor_attention(Q, Kbad, Vbad, O, rf, {}); }, "multiple");
}

// ---------------------------------------------------------------------------------------------
// favor_decoder

TEMPLATE_TEST_CASE("favor_decoder: prefill then steps equals causal favor_attention", "[favor][decoder]",
                   float, double) {
  using T = TestType;
  const index_t B = 2, H = 4, Hkv = 2, P = 70, S = 9, L = P + S, dk = 16, dv = 8;
  for (favor_kernel kern : kKernels) {
    fspec s;
    s.B = B;
    s.H = H;
    s.Hkv = Hkv;
    s.Lq = s.Lk = L;
    s.dk = dk;
    s.dv = dv;
    s.m = 40;
    s.causal = true;
    auto p = make_fproblem<T>(s, 1200);
    p.opt.kernel = kern;
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO("kernel " << kernel_name(kern) << " arch " << Arch::name);
      const auto want = run_favor<Arch>(p);
      attnkit::favor_options dopt;
      dopt.kernel = kern;
      attnkit::favor_decoder<T, Arch> dec(p.rf, B, H, Hkv, dv, dopt);
      auto out = make_buffer<T>({B, H, L, dv}, layout::contiguous, T(-7777.25));
      auto rows = [](const auto& x, index_t i0, index_t n) {
        return view<std::remove_reference_t<decltype(*x.data())>, 4>(
            x.data() + i0 * x.stride(2), {x.extent(0), x.extent(1), n, x.extent(3)}, x.strides());
      };
      for (int round = 0; round < 2; ++round) {  // the second round checks that prefill resets
        dec.prefill(rows(p.q.cv(), 0, P), rows(p.k.cv(), 0, P), rows(p.v.cv(), 0, P), rows(out.v, 0, P));
        for (index_t t = P; t < L; ++t)
          dec.step(rows(p.q.cv(), t, 1), rows(p.k.cv(), t, 1), rows(p.v.cv(), t, 1), rows(out.v, t, 1));
        REQUIRE(dec.tokens() == L);
        require_close(out.cv(), want.cv(), favor_tol<T>::atol, favor_tol<T>::rtol,
                      "decoder vs favor_attention");
      }
    });
  }
}

TEST_CASE("favor_decoder: padded prompts and invalid calls", "[favor][decoder][errors]") {
  const index_t B = 2, H = 2, L = 12, dk = 8, dv = 4;
  fspec s;
  s.B = B;
  s.H = H;
  s.Lq = s.Lk = L;
  s.dk = dk;
  s.dv = dv;
  s.m = 16;
  s.causal = true;
  s.key_lengths = {12, 5};
  auto p = make_fproblem<float>(s, 1300);
  const auto want = ref::favor<float>(p.q.cv(), p.k.cv(), p.v.cv(), p.rf.matrix(), p.opt);
  attnkit::favor_decoder<float> dec(p.rf, B, H, 1, dv);
  auto out = make_buffer<float>({B, H, L, dv}, layout::contiguous);
  dec.prefill(p.q.cv(), p.k.cv(), p.v.cv(), out.v, p.opt.mask.key_lengths);
  require_close(out.cv(), want.cview(), 1e-5, 1e-5, "padded prefill vs reference");
  // Wrong shapes throw and write nothing.
  std::vector<float> o(64, -3.f);
  const auto q1 = view<const float, 4>::contiguous(p.q.v.data(), {B, H, 1, dk});
  const auto k1 = view<const float, 4>::contiguous(p.k.v.data(), {B, 1, 1, dk});
  const auto v1 = view<const float, 4>::contiguous(p.v.v.data(), {B, 1, 1, dv});
  const auto k2 = view<const float, 4>::contiguous(p.k.v.data(), {B, 1, 2, dk});
  const auto v2 = view<const float, 4>::contiguous(p.v.v.data(), {B, 1, 2, dv});
  const auto q2 = view<const float, 4>::contiguous(p.q.v.data(), {B, H, 2, dk});
  REQUIRE_THROWS_AS(dec.step(q2, k2, v2, view<float, 4>::contiguous(o.data(), {B, H, 2, dv})),
                    attnkit::invalid_argument);
  REQUIRE_THROWS_AS(dec.step(q1, k1, v1, view<float, 4>::contiguous(o.data(), {B, H, 1, dv + 1})),
                    attnkit::invalid_argument);
  const auto q1b = view<const float, 4>::contiguous(p.q.v.data(), {B + 1, H, 1, dk});
  REQUIRE_THROWS_AS(dec.step(q1b, k1, v1, view<float, 4>::contiguous(o.data(), {B + 1, H, 1, dv})),
                    attnkit::invalid_argument);
  REQUIRE(std::all_of(o.begin(), o.end(), [](float x) { return x == -3.f; }));
  REQUIRE_THROWS_AS(attnkit::favor_decoder<float>(p.rf, 1, 3, 2, dv), attnkit::invalid_argument);
  REQUIRE_THROWS_AS(attnkit::favor_decoder<float>(random_features<float>::orthogonal(4, 4, 1), 1, 1, 1, dv)
                        .step(q1, k1, v1, view<float, 4>::contiguous(o.data(), {B, H, 1, dv})),
                    attnkit::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// The estimator (fp64 reference feature maps on the library's random features)

namespace {

/// n vectors of dimension d, entries uniform in [-a, a).
std::vector<std::vector<double>> random_rows(index_t n, index_t d, double a, std::uint64_t salt) {
  auto gen = seeded_rng(salt);
  std::vector<std::vector<double>> x(static_cast<std::size_t>(n),
                                     std::vector<double>(static_cast<std::size_t>(d)));
  for (auto& r : x)
    for (auto& e : r) e = gen.uniform(-a, a);
  return x;
}

std::vector<std::vector<double>> matrix_rows(const random_features<double>& rf) {
  std::vector<std::vector<double>> w(static_cast<std::size_t>(rf.features()));
  for (index_t f = 0; f < rf.features(); ++f)
    for (index_t p = 0; p < rf.dim(); ++p) w[f].push_back(rf.matrix()(f, p));
  return w;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

/// The unbiased kernel estimate phi(q_i).phi(k_j) (no stabilizers) for every pair.
std::vector<double> kernel_estimates(const std::vector<std::vector<double>>& q,
                                     const std::vector<std::vector<double>>& k,
                                     const random_features<double>& rf, favor_kernel kern, double scale) {
  const auto w = matrix_rows(rf);
  const auto pq = ref::favor_features(q, w, kern, scale, 0, false, true);
  const auto pk = ref::favor_features(k, w, kern, scale, 0, false, false);
  std::vector<double> a;
  for (const auto& x : pq)
    for (const auto& y : pk) a.push_back(dot(x, y));
  return a;
}

}  // namespace

TEST_CASE("favor estimator: averaged over seeds, phi(q).phi(k) converges to exp(q.k/sqrt(d))",
          "[favor][statistics][slow]") {
  // For one positive feature w ~ N(0, I) and x = q', y = k': Y = exp(w.(x+y) - |x|^2/2 - |y|^2/2),
  // E Y = exp(x.y), Var Y = exp(2 x.y) (exp(|x+y|^2) - 1) (Performer, Lemma 1). The mean over m
  // features and N seeds has sd sigma = sqrt(Var / (m N)) for i.i.d. features; orthogonal rows with
  // chi norms are unbiased too and have no larger variance (Performer, Theorem 2). Each pair must lie
  // within 5 sigma; the hyperbolic estimator averages Y(w) and Y(-w), whose variance is at most Var.
  const index_t d = 16, m = 32, N = 1500;
  const double scale = 1.0 / std::sqrt(double(d));
  const auto q = random_rows(5, d, 1.0, 1), k = random_rows(5, d, 1.0, 2);
  for (favor_kernel kern : {favor_kernel::softmax_positive, favor_kernel::softmax_hyperbolic})
    for (bool orth : {true, false}) {
      INFO("kernel " << kernel_name(kern) << (orth ? " orthogonal" : " iid"));
      std::vector<double> mean(25, 0.0);
      for (index_t s = 0; s < N; ++s) {
        const auto rf = orth ? random_features<double>::orthogonal(m, d, 10000 + s)
                             : random_features<double>::gaussian(m, d, 10000 + s);
        const auto a = kernel_estimates(q, k, rf, kern, scale);
        for (std::size_t i = 0; i < a.size(); ++i) mean[i] += a[i] / N;
      }
      double worst = 0;
      for (std::size_t i = 0; i < 25; ++i) {
        std::vector<double> x = q[i / 5], y = k[i % 5], xy(d);
        for (auto& e : x) e *= std::sqrt(scale);
        for (auto& e : y) e *= std::sqrt(scale);
        for (index_t p = 0; p < d; ++p) xy[p] = x[p] + y[p];
        const double exact = std::exp(dot(x, y));
        const double sigma = exact * std::sqrt(std::expm1(dot(xy, xy)) / double(m * N));
        worst = std::max(worst, std::fabs(mean[i] - exact) / sigma);
      }
      INFO("worst deviation " << worst << " sigma");
      REQUIRE(worst <= 5.0);
    }
}

TEST_CASE("favor estimator: orthogonal features have lower mean-squared error than i.i.d.",
          "[favor][statistics][slow]") {
  const index_t d = 16, N = 400;
  const double scale = 1.0 / std::sqrt(double(d));
  const auto q = random_rows(6, d, 1.0, 3), k = random_rows(6, d, 1.0, 4);
  std::vector<double> exact;
  for (const auto& x : q)
    for (const auto& y : k) exact.push_back(std::exp(scale * dot(x, y)));
  for (index_t m : {16, 64}) {
    double mse_orth = 0, mse_iid = 0;
    for (index_t s = 0; s < N; ++s) {
      const auto ao = kernel_estimates(q, k, random_features<double>::orthogonal(m, d, 20000 + s),
                                       favor_kernel::softmax_positive, scale);
      const auto ai = kernel_estimates(q, k, random_features<double>::gaussian(m, d, 20000 + s),
                                       favor_kernel::softmax_positive, scale);
      for (std::size_t i = 0; i < exact.size(); ++i) {
        mse_orth += (ao[i] - exact[i]) * (ao[i] - exact[i]);
        mse_iid += (ai[i] - exact[i]) * (ai[i] - exact[i]);
      }
    }
    INFO("m=" << m << " MSE orthogonal " << mse_orth / N << " iid " << mse_iid / N);
    REQUIRE(mse_orth < mse_iid);
  }
}

TEST_CASE("favor_attention: output error vs exact attention falls as m grows", "[favor][statistics]") {
  // d = 64; q and k uniform with standard deviation sigma: the relative error of the output vs
  // exact softmax attention, averaged over seeds, falls with m (the estimator's sd ~ m^-1/2). For
  // unit variance (|q'|^2 = 8) one feature's relative variance is ~exp(|q' + k'|^2) ~ e^16: the
  // error stays large at every m here and only its monotone fall is asserted; at sigma = 1/2 the
  // estimator is in its useful range and 64x the features must cut the error by more than 4x
  // (8x in theory).
  for (double sigma : {1.0, 0.5}) {
    fspec s;
    s.H = 2;
    s.Lq = s.Lk = 128;
    s.dk = s.dv = 64;
    s.range = sigma * std::sqrt(3.0);
    auto p = make_fproblem<float>(s, 1400);
    const auto exact = ref::attention<float>(p.q.cv(), p.k.cv(), p.v.cv(), {});
    double norm = 0;
    for_each_index(exact.extents(), [&](const std::array<index_t, 4>& ix) {
      norm += at(exact.cview(), ix) * at(exact.cview(), ix);
    });
    std::vector<double> errs;
    for (index_t m : {16, 64, 256, 1024}) {
      double err = 0;
      const int seeds = 4;
      for (int sd = 0; sd < seeds; ++sd) {
        p.rf = random_features<float>::orthogonal(m, s.dk, 3000 + static_cast<std::uint64_t>(sd));
        const auto out = run_favor<attnkit::simd::native>(p);
        double e2 = 0;
        for_each_index(exact.extents(), [&](const std::array<index_t, 4>& ix) {
          const double d = static_cast<double>(at(out.cv(), ix)) - at(exact.cview(), ix);
          e2 += d * d;
        });
        err += std::sqrt(e2 / norm) / seeds;
      }
      errs.push_back(err);
    }
    INFO("sigma " << sigma << ": relative errors at m = 16, 64, 256, 1024: " << errs[0] << " " << errs[1]
                  << " " << errs[2] << " " << errs[3]);
    for (std::size_t i = 1; i < errs.size(); ++i) REQUIRE(errs[i] < errs[i - 1]);
    if (sigma < 1) REQUIRE(errs[3] < errs[0] / 4);
  }
}
