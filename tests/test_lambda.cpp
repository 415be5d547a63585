// attnkit tests: lambda attention (lambda_attention, docs/design.md §4.4) against the fp64 einsum reference
// of tests/reference/lambda_ref.hpp, for every position term, mask, layout and SIMD architecture
// the build can run, and its exact properties: relative == global with E expanded from R, local of
// full scope == relative, translation equivariance of the position lambdas, causal prefixes,
// bitwise causality and padding, thread-count independence, argument checks and empty extents.
// The inputs are float-representable, so one fp64 reference serves the float and double runs.
//
// Tolerance, derived from the sizes (not fitted): every output is checked against
//   |y - ref| <= N eps mag,   N = (u + 4) m + k + u + 2 R + 24,
// eps the unit roundoff of T (2^-24 float, 2^-53 double), m the context length, keys uniform in
// [-R, R), and mag = sum_k |Q| sum_{m,u} (Kbar + |E|) |V| the reference's sums over absolute values
// (ref::lambda_result::mag), so a relative error N eps of every term is what the bound allows.
// Worst-case error analysis (gamma_j = j eps) of one output element:
//   Kbar = e^{K - max} / Z: the subtraction rounds by <= eps |K - max| <= 2 R eps, exp_scalar adds
//     <= 3 ulp = 6 eps, Z is an m-term sum (m eps), 1/Z and the product 2 eps: (2R + m + 8) eps;
//   causal: the prefix state S, Z is rescaled once per new running maximum (<= m times, one
//     rounding each on S and Z; the rescale factor itself cancels in S / Z): 2m eps more, and
//     sum_u S / Z adds u + 1;
//   lambda = lc + lp: one accumulation chain of the m u value rows of the window (m u + 1);
//   y = Q lambda: a k-term chain (k).
// Summed: (u + 3) m + k + u + 2R + 10 <= N. Measured errors are far below (random, not worst-case):
// over this file (rng seeds 1-3), max |y - ref| / (eps mag) = 8.1 in float and 4.8 in double (~6%
// of N); max |y - ref| = 1.3e-5 in float, 2.5e-14 in double.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <attnkit/attnkit.hpp>

#include "reference/common.hpp"
#include "reference/kernel_instances.hpp"
#include "reference/lambda_ref.hpp"

namespace {

using namespace attnkit_test;
using attnkit::lambda_grid;
using attnkit::lambda_options;
using kind = attnkit::lambda_position_kind;
template <class T>
using lpos = attnkit::lambda_position<T>;
using dtensor = attnkit::tensor<double, 4>;

enum class causality { none, top_left, mask_top_left, bottom_right };

const char* kind_name(kind k) {
  switch (k) {
    case kind::none:
      return "none";
    case kind::global:
      return "global";
    case kind::relative:
      return "relative";
    case kind::local:
      return "local";
  }
  return "?";
}

const char* causality_name(causality c) {
  switch (c) {
    case causality::none:
      return "none";
    case causality::top_left:
      return "options.causal";
    case causality::mask_top_left:
      return "mask top_left";
    case causality::bottom_right:
      return "mask bottom_right";
  }
  return "?";
}

/// One lambda problem: Q [B, n, h, k], K [B, m, k, u], V [B, m, v, u], a position term, a mask.
struct lspec {
  index_t B = 1, n = 1, m = 1, h = 1, k = 3, v = 5, u = 1;
  kind pos = kind::none;
  index_t rows = 1, cols = 0;  ///< relative / local grid; rows = 1, cols = 0: 1D
  index_t rh = 1, rw = 1;      ///< local scope (1D: rh = 1)
  bool rank3 = true;           ///< 1D tables through the rank-3 factories (else rank 4 with a grid)
  causality causal = causality::none;
  std::vector<std::int64_t> key_lengths;  ///< empty: no padding
  layout lq = layout::contiguous, lk = layout::contiguous, lv = layout::contiguous, le = layout::contiguous,
         lo = layout::contiguous;
  double krange = 2;  ///< keys uniform in [-krange, krange)
};

index_t grid_cols(const lspec& s) { return s.rows == 1 && s.cols == 0 ? s.n : s.cols; }
bool one_d(const lspec& s) { return s.rows == 1 && s.cols == 0; }

/// The extents of the global E or the relative / local table of a spec ({0, 0, 0, 0} for none).
std::array<index_t, 4> position_extents(const lspec& s) {
  switch (s.pos) {
    case kind::none:
      return {0, 0, 0, 0};
    case kind::global:
      return {s.n, s.m, s.k, s.u};
    case kind::relative:
      return {2 * s.rows - 1, std::max<index_t>(2 * grid_cols(s) - 1, 0), s.k, s.u};
    case kind::local:
      return {s.rh, s.rw, s.k, s.u};
  }
  return {0, 0, 0, 0};
}

std::string describe(const lspec& s) {
  std::ostringstream os;
  os << "B=" << s.B << " n=" << s.n << " m=" << s.m << " h=" << s.h << " k=" << s.k << " v=" << s.v
     << " u=" << s.u << " pos=" << kind_name(s.pos);
  if (s.pos == kind::relative || s.pos == kind::local)
    os << " grid=" << s.rows << "x" << grid_cols(s) << (one_d(s) && s.rank3 ? " (rank-3 factory)" : "");
  if (s.pos == kind::local) os << " scope=" << s.rh << "x" << s.rw;
  os << " causal=" << causality_name(s.causal) << " key_lengths=";
  if (s.key_lengths.empty()) os << "none";
  for (std::size_t b = 0; b < s.key_lengths.size(); ++b) os << (b ? "," : "") << s.key_lengths[b];
  os << " layouts q/k/v/pos/out=" << layout_name(s.lq) << "/" << layout_name(s.lk) << "/" << layout_name(s.lv)
     << "/" << layout_name(s.le) << "/" << layout_name(s.lo) << " krange=" << s.krange;
  return os.str();
}

lambda_options make_options(causality c, const std::vector<std::int64_t>& lens, int threads) {
  lambda_options o;
  o.threads = threads;
  switch (c) {
    case causality::none:
      break;
    case causality::top_left:
      o.causal = true;
      break;
    case causality::mask_top_left:
      o.mask.causal = attnkit::causal_mode::top_left;
      break;
    case causality::bottom_right:
      o.mask.causal = attnkit::causal_mode::bottom_right;
      break;
  }
  if (!lens.empty())
    o.mask.key_lengths = view<const std::int64_t, 1>(lens.data(), {static_cast<index_t>(lens.size())}, {1});
  return o;
}

/// The data of a problem in double (float-representable values), contiguous.
struct ldata {
  lspec sp;
  dtensor q, keys, values, emb;
  std::vector<std::int64_t> lens;

  index_t len(index_t b) const { return lens.empty() ? sp.m : static_cast<index_t>(lens[b]); }
  lambda_options options(int threads = 1) const { return make_options(sp.causal, lens, threads); }
};

/// Uniform float-representable values; `same_outer`: every index of axis 0 holds the data of index 0
/// (what a view with stride 0 on that axis reads).
void fill_fr(dtensor& x, test_rng& gen, double lo, double hi, bool same_outer) {
  for_each_index(x.extents(), [&](const std::array<index_t, 4>& ix) {
    at(x.view(), ix) = same_outer && ix[0] > 0 ? at(x.view(), {0, ix[1], ix[2], ix[3]})
                                               : static_cast<double>(static_cast<float>(gen.uniform(lo, hi)));
  });
}

ldata make_ldata(const lspec& sp, std::uint64_t salt) {
  ldata d;
  d.sp = sp;
  auto gen = seeded_rng(salt);
  d.q = dtensor({sp.B, sp.n, sp.h, sp.k});
  d.keys = dtensor({sp.B, sp.m, sp.k, sp.u});
  d.values = dtensor({sp.B, sp.m, sp.v, sp.u});
  d.emb = dtensor(position_extents(sp));
  fill_fr(d.q, gen, -1, 1, sp.lq == layout::broadcast_b);
  fill_fr(d.keys, gen, -sp.krange, sp.krange, sp.lk == layout::broadcast_b);
  fill_fr(d.values, gen, -1, 1, sp.lv == layout::broadcast_b);
  fill_fr(d.emb, gen, -1, 1, sp.le == layout::broadcast_b);
  d.lens = std::vector<std::int64_t>(sp.key_lengths);  // (from a temporary: GCC 12 -Wnonnull false positive)
  return d;
}

/// The rank-3 view of the last three axes of a rank-4 view (its index 0 along axis 0).
template <class T>
view<T, 3> last3(const view<T, 4>& x) {
  return view<T, 3>(x.data(), {x.extent(1), x.extent(2), x.extent(3)},
                    {x.stride(1), x.stride(2), x.stride(3)});
}

/// The position term of a spec over the global E or the table `x`.
template <class T>
lpos<T> make_position(const lspec& sp, const view<const T, 4>& x) {
  switch (sp.pos) {
    case kind::none:
      return lpos<T>::none();
    case kind::global:
      return lpos<T>::global(x);
    case kind::relative:
      if (one_d(sp) && sp.rank3) return lpos<T>::relative(last3(x));
      return lpos<T>::relative(x, lambda_grid{sp.rows, sp.cols});
    case kind::local:
      if (one_d(sp) && sp.rank3) return lpos<T>::local(last3(x));
      return lpos<T>::local(x, lambda_grid{sp.rows, sp.cols});
  }
  return lpos<T>::none();
}

/// A problem's inputs as T in its layouts.
template <class T>
struct tdata {
  lspec sp;
  strided_buffer<T> q, keys, values, emb;
  lpos<T> pos() const { return make_position<T>(sp, emb.cv()); }
};

template <class T>
tdata<T> to_type(const ldata& d) {
  return tdata<T>{d.sp, to_buffer<T>(d.q, d.sp.lq), to_buffer<T>(d.keys, d.sp.lk),
                  to_buffer<T>(d.values, d.sp.lv), to_buffer<T>(d.emb, d.sp.le)};
}

/// An output buffer [1, B, n, h v] in layout `lay` (so that reversed, bshd, dim_major, gapped
/// permute or stride the [B, n, h v] axes) filled with a sentinel; the kernel writes last3(v).
template <class T>
strided_buffer<T> make_out(const lspec& sp, layout lay) {
  return make_buffer<T>({1, sp.B, sp.n, sp.h * sp.v}, lay, T(-7777.25));
}

template <class Arch, class T>
strided_buffer<T> run_lambda(const tdata<T>& in, const lambda_options& opt, const lpos<T>& pos) {
  auto out = make_out<T>(in.sp, in.sp.lo);
  attnkit::lambda_attention<Arch>(in.q.cv(), in.keys.cv(), in.values.cv(), pos, last3(out.v), opt);
  return out;
}

template <class Arch, class T>
strided_buffer<T> run_lambda(const tdata<T>& in, const lambda_options& opt) {
  return run_lambda<Arch>(in, opt, in.pos());
}

ref::lambda_result reference(const ldata& d) {
  return ref::lambda<double>(d.q.cview(), d.keys.cview(), d.values.cview(),
                             make_position<double>(d.sp, d.emb.cview()), d.options());
}

double op_count(const lspec& s) {
  return static_cast<double>((s.u + 4) * s.m + s.k + s.u) + 2 * s.krange + 24;
}

template <class T>
constexpr double unit_roundoff() {
  return std::numeric_limits<T>::epsilon() / 2;
}

/// Checks |got - want| <= nops eps mag for every element with ONE assertion; on failure reports the
/// number of violations and the worst element. NaN or Inf in `got` is a violation. Returns the
/// worst |got - want| / (eps mag).
template <class T>
double require_lambda_close(const view<const T, 3>& got, const attnkit::tensor<double, 3>& want,
                            const attnkit::tensor<double, 3>& mag, double nops, const std::string& what) {
  REQUIRE(got.extents() == want.extents());
  const double eps = unit_roundoff<T>();
  index_t violations = 0, count = 0;
  double worst_ratio = 0, worst_got = 0, worst_want = 0, worst_mag = 0;
  std::array<index_t, 3> worst{};
  for_each_index(got.extents(), [&](const std::array<index_t, 3>& ix) {
    ++count;
    const double g = static_cast<double>(at(got, ix));
    const double w = want(ix[0], ix[1], ix[2]), a = mag(ix[0], ix[1], ix[2]);
    const double diff = std::fabs(g - w);
    const double ratio = g == w ? 0.0 : (std::isfinite(diff) && a > 0 ? diff / (eps * a) : INFINITY);
    if (!(ratio <= nops)) ++violations;
    if (!(ratio <= worst_ratio)) {
      worst_ratio = ratio;
      worst = ix;
      worst_got = g;
      worst_want = w;
      worst_mag = a;
    }
  });
  std::ostringstream os;
  os.precision(10);
  os << what << ": " << violations << " of " << count
     << " elements violate |y - ref| <= N eps mag with N = " << nops << ", eps = " << eps << "; worst at "
     << index_string(worst) << ": y = " << worst_got << ", ref = " << worst_want << ", mag = " << worst_mag
     << ", |diff| / (eps mag) = " << worst_ratio;
  INFO(os.str());
  REQUIRE(violations == 0);
  return worst_ratio;
}

/// The T kernel on every arch against the fp64 reference (and nothing written outside out's view).
template <class T>
void check_type(const ldata& d, const ref::lambda_result& want) {
  const auto in = to_type<T>(d);
  const auto opt = d.options();
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    INFO("arch " << Arch::name << (std::is_same_v<T, float> ? " float" : " double"));
    const auto out = run_lambda<Arch>(in, opt);
    REQUIRE(out.touched_outside() == 0);
    require_lambda_close<T>(last3(out.cv()), want.out, want.mag, op_count(d.sp), "lambda_attention vs fp64");
  });
}

/// Float and double kernels on every arch against the fp64 reference of the spec's data.
void check_spec(const lspec& sp, std::uint64_t salt) {
  INFO(describe(sp));
  const auto d = make_ldata(sp, salt);
  const auto want = reference(d);
  check_type<float>(d, want);
  check_type<double>(d, want);
}

/// Sequence lengths: tiny, 2^k and 2^k + 1, primes, one past the kernel's 64-query chunk, ~70.
const index_t kSizes[] = {1, 2, 3, 5, 8, 9, 16, 17, 31, 33, 64, 65, 70};

/// (h, k, v, u): small and odd, v not a multiple of any SIMD width, u = 1 and u > 1.
const std::array<index_t, 4> kDims[] = {{1, 3, 5, 1},  {2, 5, 7, 3}, {1, 1, 1, 1},
                                        {3, 2, 17, 2}, {1, 4, 9, 1}, {2, 3, 33, 1}};

lspec make_lspec(index_t B, index_t n, index_t m, const std::array<index_t, 4>& hkvu, kind pos) {
  lspec s;
  s.B = B;
  s.n = n;
  s.m = m;
  s.h = hkvu[0];
  s.k = hkvu[1];
  s.v = hkvu[2];
  s.u = hkvu[3];
  s.pos = pos;
  return s;
}

/// The spec of a relative / local problem of n positions on a rows x cols grid (1D: 1 x 0).
lspec grid_spec(index_t n, index_t rows, index_t cols, const std::array<index_t, 4>& hkvu, kind pos) {
  lspec s = make_lspec(2, n, n, hkvu, pos);
  s.rows = rows;
  s.cols = cols;
  return s;
}

/// The content-only / global sweep: every length, m == n and m != n, every causal spelling,
/// batches with and without padding.
void sweep_lengths(kind pos, std::uint64_t salt) {
  const index_t ns = static_cast<index_t>(std::size(kSizes));
  for (index_t i = 0; i < ns; ++i)
    for (index_t mi : {i, (i + 4) % ns}) {
      const index_t n = kSizes[i], m = kSizes[mi];
      for (causality c : {causality::none, causality::top_left, causality::bottom_right}) {
        const auto dims = kDims[static_cast<std::size_t>((i + mi + static_cast<index_t>(c)) % 6)];
        lspec s = make_lspec(2, n, m, dims, pos);
        s.causal = c;
        if ((i + static_cast<index_t>(c)) % 2) s.key_lengths = std::vector<std::int64_t>{m, (2 * m) / 3};
        check_spec(s, ++salt);
      }
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The kernel against the fp64 einsum reference

TEST_CASE("lambda: content lambda only (no position term) vs fp64 over lengths, dims and masks",
          "[lambda][content]") {
  sweep_lengths(kind::none, 100);
}

TEST_CASE("lambda: global embeddings E [n, m, k, u] vs fp64 (n != m too)", "[lambda][global]") {
  sweep_lengths(kind::global, 200);
}

TEST_CASE("lambda: relative and local terms vs fp64 on 1D sequences and 2D grids",
          "[lambda][relative][local]") {
  std::uint64_t salt = 300;
  // {rows, cols}: 1D (cols = 0), flat, tall, square, non-square
  const std::array<index_t, 2> grids[] = {{1, 0}, {1, 1}, {3, 5}, {5, 3}, {1, 9},
                                          {9, 1}, {4, 4}, {7, 9}, {2, 33}};
  const index_t lengths1d[] = {1, 2, 5, 17, 33, 65};
  std::size_t g = 0;
  for (const auto& grid : grids) {
    const bool d1 = grid[1] == 0;
    for (index_t len1 : d1 ? std::vector<index_t>(std::begin(lengths1d), std::end(lengths1d))
                           : std::vector<index_t>{grid[0] * grid[1]}) {
      const index_t n = len1, H = grid[0], W = d1 ? n : grid[1];
      // local scopes: 1, thin, square, wider than the grid, exactly 2N - 1
      std::vector<std::array<index_t, 2>> scopes = {{1, 1}, {1, 3}, {3, 3}, {5, 3}, {2 * H - 1, 2 * W - 1}};
      if (d1) scopes = {{1, 1}, {1, 3}, {1, 7}, {1, 2 * n - 1}, {1, 2 * n + 3}};
      for (kind pos : {kind::relative, kind::local})
        for (causality c : {causality::none, causality::top_left}) {
          for (std::size_t si = 0; si < (pos == kind::local ? scopes.size() : 1); ++si) {
            ++g;
            lspec s = make_lspec(2, n, n, kDims[g % 6], pos);
            s.rows = H;
            s.cols = d1 ? 0 : W;
            s.rank3 = g % 2 == 0;  // 1D: both the rank-3 factory and rank 4 with grid {1, 0}
            s.rh = scopes[si][0];
            s.rw = scopes[si][1];
            s.causal = c;
            if (g % 3 == 1) s.key_lengths = std::vector<std::int64_t>{n, (2 * n) / 3};
            check_spec(s, ++salt);
          }
        }
    }
  }
}

TEST_CASE("lambda: long relative / wide local windows (m u beyond a few hundred value rows)",
          "[lambda][relative][local]") {
  std::uint64_t salt = 350;
  // {n, rows, cols, rh, rw, u}: m u = 291, 260, 390 (not multiples of any slice of value rows)
  const std::array<index_t, 6> cases[] = {
      {97, 1, 0, 1, 1, 3}, {130, 10, 13, 1, 1, 2}, {130, 10, 13, 21, 27, 3}};
  for (const auto& c : cases)
    for (kind pos : {kind::relative, kind::local})
      for (causality cz : {causality::none, causality::top_left}) {
        lspec s = grid_spec(c[0], c[1], c[2], {2, 3, 7, c[5]}, pos);
        s.rh = c[3];
        s.rw = pos == kind::local && c[2] == 0 ? 2 * c[0] + 1 : c[4];
        s.causal = cz;
        s.key_lengths = std::vector<std::int64_t>{c[0], c[0] - 11};
        check_spec(s, ++salt);
      }
}

TEST_CASE("lambda: large keys (softmax of |K| up to 80) stay finite and accurate", "[lambda][content]") {
  std::uint64_t salt = 400;
  for (kind pos : {kind::none, kind::global})
    for (causality c : {causality::none, causality::top_left}) {
      lspec s = make_lspec(2, 33, 41, {2, 5, 7, 3}, pos);
      s.causal = c;
      s.krange = 80;
      check_spec(s, ++salt);
    }
}

// ---------------------------------------------------------------------------------------------
// Exact relations between the position terms

namespace {

/// Two kernel results of the same problem agree within the sum of their error bounds.
template <class T>
void require_pair_close(const strided_buffer<T>& a, const strided_buffer<T>& b,
                        const ref::lambda_result& want, double nops, const std::string& what) {
  attnkit::tensor<double, 3> bd(want.out.extents());
  for_each_index(bd.extents(), [&](const std::array<index_t, 3>& ix) {
    bd(ix[0], ix[1], ix[2]) = static_cast<double>(at(last3(b.cv()), ix));
  });
  require_lambda_close<T>(last3(a.cv()), bd, want.mag, 2 * nops, what);
}

/// Runs the problem d and an equivalent formulation e of it in float and double on every arch:
/// d against the fp64 reference `want`, e against d.
void require_equivalent(const ldata& d, const ldata& e, const lspec& s, const ref::lambda_result& want,
                        const char* d_vs_fp64, const char* e_vs_d) {
  auto run = [&](auto t) {
    using T = decltype(t);
    const auto in = to_type<T>(d);
    const auto ine = to_type<T>(e);
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO("arch " << Arch::name << (std::is_same_v<T, float> ? " float" : " double"));
      const auto got = run_lambda<Arch>(in, d.options());
      const auto other = run_lambda<Arch>(ine, e.options());
      require_lambda_close<T>(last3(got.cv()), want.out, want.mag, op_count(s), d_vs_fp64);
      require_pair_close(other, got, want, op_count(s), e_vs_d);
    });
  };
  run(float{});
  run(double{});
}

}  // namespace

TEST_CASE("lambda: relative == global with E expanded from R (1D and 2D, non-square grids)",
          "[lambda][relative][global]") {
  std::uint64_t salt = 500;
  // {n, rows, cols}: 1D (cols = 0) and grids 3 x 5, 5 x 3, 1 x N, N x 1, 6 x 6, 4 x 11
  const std::array<index_t, 3> cases[] = {{1, 1, 0},   {7, 1, 0},   {33, 1, 0}, {15, 3, 5}, {15, 5, 3},
                                          {13, 1, 13}, {13, 13, 1}, {36, 6, 6}, {44, 4, 11}};
  std::size_t i = 0;
  for (const auto& c : cases)
    for (causality cz : {causality::none, causality::top_left}) {
      ++i;
      lspec s = grid_spec(c[0], c[1], c[2], kDims[i % 6], kind::relative);
      s.causal = cz;
      if (i % 2) s.key_lengths = std::vector<std::int64_t>{c[0], c[0] / 2};
      INFO(describe(s));
      const auto d = make_ldata(s, ++salt);
      // the same problem with the global E [n, m, k, u] expanded from R
      ldata g = d;
      g.sp.pos = kind::global;
      g.emb = ref::lambda_embeddings(make_position<double>(s, d.emb.cview()), s.n, s.m, s.k, s.u);
      const auto want = reference(d);
      const auto want_g = reference(g);
      require_lambda_close<double>(want_g.out.cview(), want.out, want.mag, 0,
                                   "reference: global(E(R)) == relative");
      require_equivalent(d, g, s, want, "relative vs fp64", "global(E(R)) vs relative");
    }
}

TEST_CASE("lambda: local of scope >= 2N - 1 (centre-aligned) == relative with the same table",
          "[lambda][local][relative]") {
  std::uint64_t salt = 600;
  const std::array<index_t, 3> cases[] = {{1, 1, 0},  {9, 1, 0}, {31, 1, 0}, {15, 3, 5},
                                          {15, 5, 3}, {8, 1, 8}, {7, 7, 1},  {20, 4, 5}};
  std::size_t i = 0;
  for (const auto& c : cases)
    for (causality cz : {causality::none, causality::top_left})
      for (index_t extra : {0, 1, 3}) {  // scope (2H - 1 + 2 extra) x (2W - 1 + 2 extra'), R in its centre
        ++i;
        const index_t n = c[0], H = c[1], W = c[2] == 0 ? n : c[2];
        lspec s = grid_spec(n, c[1], c[2], kDims[i % 6], kind::relative);
        s.causal = cz;
        if (i % 3 == 0) s.key_lengths = std::vector<std::int64_t>{n, (n + 1) / 2};
        INFO(describe(s) << " local scope extra " << extra);
        const auto d = make_ldata(s, ++salt);
        ldata l = d;
        l.sp.pos = kind::local;
        const index_t ey = c[2] == 0 ? 0 : extra, ex = extra == 1 ? 2 : extra;  // unequal margins too
        l.sp.rh = 2 * H - 1 + 2 * ey;
        l.sp.rw = 2 * W - 1 + 2 * ex;
        const index_t my = (l.sp.rh - (2 * H - 1)) / 2, mx = (l.sp.rw - (2 * W - 1)) / 2;
        l.emb = dtensor({l.sp.rh, l.sp.rw, s.k, s.u});
        auto gen = seeded_rng(salt + 1000);
        fill_fr(l.emb, gen, -1, 1, false);  // the margin: never inside the grid's offsets
        for_each_index(d.emb.extents(), [&](const std::array<index_t, 4>& ix) {
          l.emb(ix[0] + my, ix[1] + mx, ix[2], ix[3]) = d.emb(ix[0], ix[1], ix[2], ix[3]);
        });
        const auto want = reference(d);
        require_lambda_close<double>(reference(l).out.cview(), want.out, want.mag, 0,
                                     "reference: local(full scope) == relative");
        require_equivalent(d, l, s, want, "relative vs fp64", "local(full scope) vs relative");
      }
}

// ---------------------------------------------------------------------------------------------
// Translation equivariance of the position lambdas

namespace {

/// x [B, n = H W, ...] with its positions shifted cyclically by (sy, sx) on the H x W grid:
/// out[(y + sy) mod H, (x + sx) mod W] = x[y, x].
dtensor shift_grid(const dtensor& x, index_t H, index_t W, index_t sy, index_t sx) {
  dtensor out(x.extents());
  for_each_index(x.extents(), [&](const std::array<index_t, 4>& ix) {
    const index_t y = ix[1] / W, c = ix[1] % W;
    const index_t p = ((y + sy + H) % H) * W + (c + sx + W) % W;
    out(ix[0], p, ix[2], ix[3]) = x(ix[0], ix[1], ix[2], ix[3]);
  });
  return out;
}

}  // namespace

// A cyclic shift of the grid permutes the context positions, which leaves the content lambda
// (softmax over m, then a sum over m) unchanged. With the values zero outside a box that the shift
// moves without wrapping, the position lambda at p of the shifted input sums the same terms as the
// one at p - s of the original (relative: E depends on pos_m - pos_n only; local: the same, with
// zero padding at the borders), so out'[p] = out[p - s] wherever p - s lies in the grid.
TEST_CASE("lambda: relative and local position lambdas are translation-equivariant on a 2D grid",
          "[lambda][relative][local]") {
  std::uint64_t salt = 700;
  const index_t H = 9, W = 11, n = H * W;
  const index_t by0 = 3, by1 = 6, bx0 = 3, bx1 = 8;  // the box where values are non-zero
  const std::array<index_t, 2> shifts[] = {{2, 3}, {-3, 1}, {1, -3}, {0, 2}, {3, 0}};
  const std::array<index_t, 2> scopes[] = {{1, 1}, {3, 3}, {5, 3}, {1, 7}, {9, 13}};
  std::size_t i = 0;
  for (kind pos : {kind::relative, kind::local})
    for (std::size_t si = 0; si < (pos == kind::local ? std::size(scopes) : 2); ++si) {
      ++i;
      lspec s = grid_spec(n, H, W, kDims[i % 6], pos);
      s.rh = scopes[si][0];
      s.rw = scopes[si][1];
      ldata d = make_ldata(s, ++salt);
      for_each_index(d.values.extents(), [&](const std::array<index_t, 4>& ix) {
        const index_t y = ix[1] / W, x = ix[1] % W;
        if (y < by0 || y >= by1 || x < bx0 || x >= bx1) d.values(ix[0], ix[1], ix[2], ix[3]) = 0;
      });
      const auto want = reference(d);
      for (const auto& sh : shifts) {
        INFO(describe(s) << " shift (" << sh[0] << ", " << sh[1] << ")");
        ldata e = d;
        e.q = shift_grid(d.q, H, W, sh[0], sh[1]);
        e.keys = shift_grid(d.keys, H, W, sh[0], sh[1]);
        e.values = shift_grid(d.values, H, W, sh[0], sh[1]);
        // the rows p whose p - s lies in the grid, and those p - s
        std::vector<index_t> rows, src;
        for (index_t p = 0; p < n; ++p) {
          const index_t y = p / W - sh[0], x = p % W - sh[1];
          if (y >= 0 && y < H && x >= 0 && x < W) {
            rows.push_back(p);
            src.push_back(y * W + x);
          }
        }
        const index_t nr = static_cast<index_t>(rows.size()), hv = s.h * s.v;
        auto gather = [&](const auto& x, const std::vector<index_t>& from) {
          attnkit::tensor<double, 3> g({s.B, nr, hv});
          for_each_index(g.extents(), [&](const std::array<index_t, 3>& ix) {
            g(ix[0], ix[1], ix[2]) = static_cast<double>(at(x, {ix[0], from[ix[1]], ix[2]}));
          });
          return g;
        };
        const auto mag = gather(want.mag.cview(), src);
        const auto ref_shifted = reference(e);
        require_lambda_close<double>(gather(ref_shifted.out.cview(), rows).cview(),
                                     gather(want.out.cview(), src), mag, op_count(s),
                                     "reference: out'[p] == out[p - s]");
        auto run = [&](auto t) {
          using T = decltype(t);
          const auto in = to_type<T>(d);
          const auto ins = to_type<T>(e);
          for_each_arch([&](auto arch) {
            using Arch = decltype(arch);
            INFO("arch " << Arch::name << (std::is_same_v<T, float> ? " float" : " double"));
            const auto y0 = run_lambda<Arch>(in, d.options());
            const auto y1 = run_lambda<Arch>(ins, e.options());
            require_lambda_close<T>(last3(y1.cv()), ref_shifted.out, ref_shifted.mag, op_count(s),
                                    "shifted vs fp64");
            const auto a = gather(last3(y1.cv()), rows);
            require_lambda_close<double>(a.cview(), gather(last3(y0.cv()), src), mag,
                                         2 * op_count(s) * unit_roundoff<T>() / unit_roundoff<double>(),
                                         "out'[p] vs out[p - s]");
          });
        };
        run(float{});
        run(double{});
      }
    }
}

// ---------------------------------------------------------------------------------------------
// Causal masks

namespace {

/// The first `len` positions of x [B, L, ...] (axis 1).
template <class T>
view<T, 4> first_positions(const view<T, 4>& x, index_t len) {
  return view<T, 4>(x.data(), {x.extent(0), len, x.extent(2), x.extent(3)}, x.strides());
}

/// The rows [0, len) of out [B, n, hv] equal those of want (another kernel result) bitwise.
template <class T>
void require_same_rows(const view<const T, 3>& got, const view<const T, 3>& want, index_t len,
                       const std::string& what) {
  const auto cut = [&](const view<const T, 3>& x) {
    return view<const T, 3>(x.data(), {x.extent(0), len, x.extent(2)}, x.strides());
  };
  require_same_bits(cut(got), cut(want), what);
}

}  // namespace

// The prefix-normalized content lambda and the position terms restricted to m <= n: row n' - 1 of
// a causal run equals row n' - 1 of a bidirectional run over the first n' positions (a sliced view;
// the relative table of n' positions is the centre of the one of N) and of a bidirectional run over
// all positions with key_lengths = n'. bottom_right (n < m): query i sees i + m - n + 1 keys.
TEST_CASE("lambda: causal output row n equals the bidirectional lambda of its prefix", "[lambda][causal]") {
  std::uint64_t salt = 800;
  struct pcase {
    kind pos;
    index_t n, m, rows, cols, rh, rw;
    causality c;
  };
  const pcase cases[] = {
      {kind::none, 37, 37, 1, 0, 1, 1, causality::top_left},
      {kind::global, 37, 37, 1, 0, 1, 1, causality::top_left},
      {kind::relative, 37, 37, 1, 0, 1, 1, causality::top_left},
      {kind::local, 37, 37, 1, 0, 1, 7, causality::top_left},
      {kind::relative, 35, 35, 5, 7, 1, 1, causality::mask_top_left},
      {kind::local, 35, 35, 5, 7, 3, 5, causality::top_left},
      {kind::none, 23, 41, 1, 0, 1, 1, causality::bottom_right},
      {kind::global, 23, 41, 1, 0, 1, 1, causality::bottom_right},
      {kind::global, 41, 23, 1, 0, 1, 1, causality::bottom_right},
  };
  std::size_t i = 0;
  for (const pcase& pc : cases) {
    ++i;
    lspec s = make_lspec(1, pc.n, pc.m, kDims[i % 6], pc.pos);
    s.rows = pc.rows;
    s.cols = pc.cols;
    s.rh = pc.rh;
    s.rw = pc.rw;
    s.causal = pc.c;
    INFO(describe(s));
    const auto d = make_ldata(s, ++salt);
    const auto want = reference(d);
    const index_t off = pc.c == causality::bottom_right ? pc.m - pc.n : 0;
    const bool sliceable = one_d(s) && off == 0;  // a prefix of a 2D grid is no grid
    auto run = [&](auto t) {
      using T = decltype(t);
      const auto in = to_type<T>(d);
      for_each_arch([&](auto arch) {
        using Arch = decltype(arch);
        INFO("arch " << Arch::name << (std::is_same_v<T, float> ? " float" : " double"));
        const auto full = run_lambda<Arch>(in, d.options());
        require_lambda_close<T>(last3(full.cv()), want.out, want.mag, op_count(s), "causal vs fp64");
        const auto fv = last3(full.cv());
        for (index_t r = 0; r < pc.n; ++r) {
          const index_t vis = std::clamp<index_t>(r + off + 1, 0, pc.m);
          INFO("row " << r << " sees " << vis << " context positions");
          // key_lengths = vis, bidirectional
          std::vector<std::int64_t> lens{static_cast<std::int64_t>(vis)};
          const auto kl = run_lambda<Arch>(in, make_options(causality::none, lens, 1));
          const auto kv = last3(kl.cv());
          attnkit::tensor<double, 3> row({1, 1, s.h * s.v}), rmag({1, 1, s.h * s.v});
          for (index_t e = 0; e < s.h * s.v; ++e) {
            row(0, 0, e) = static_cast<double>(kv(0, r, e));
            rmag(0, 0, e) = want.mag(0, r, e);
          }
          const view<const T, 3> frow(fv.ptr(0, r, 0), {1, 1, s.h * s.v}, fv.strides());
          require_lambda_close<T>(frow, row, rmag, 2 * op_count(s), "causal row vs key_lengths prefix");
          if (!sliceable) continue;
          // the first vis positions only, bidirectional
          lspec ps = s;
          ps.n = ps.m = vis;
          ps.causal = causality::none;
          auto out = make_out<T>(ps, ps.lo);
          lpos<T> pos = in.pos();
          if (s.pos == kind::global)  // E [:vis, :vis]
            pos =
                lpos<T>::global(view<const T, 4>(in.emb.v.data(), {vis, vis, s.k, s.u}, in.emb.v.strides()));
          if (s.pos == kind::relative)
            pos = lpos<T>::relative(view<const T, 3>(in.emb.cv().ptr(0, pc.n - vis, 0, 0),
                                                     {2 * vis - 1, s.k, s.u}, last3(in.emb.cv()).strides()));
          attnkit::lambda_attention<Arch>(first_positions(in.q.cv(), vis), first_positions(in.keys.cv(), vis),
                                          first_positions(in.values.cv(), vis), pos, last3(out.v),
                                          lambda_options{});
          const auto ov = last3(out.cv());
          for (index_t e = 0; e < s.h * s.v; ++e) row(0, 0, e) = static_cast<double>(ov(0, r, e));
          require_lambda_close<T>(frow, row, rmag, 2 * op_count(s), "causal row vs sliced prefix");
        }
      });
    };
    run(float{});
    run(double{});
  }
}

// Every input after position c (queries, keys and values of later positions, E rows of later
// queries and E columns of later keys) set to NaN leaves the rows <= c bitwise unchanged; the
// relative / local table entries of offsets that point forward (later in raster order) are never
// read by a causal query, so NaN there changes no output at all.
TEST_CASE("lambda: a causal output row ignores every later input (bitwise, NaN)", "[lambda][causal]") {
  std::uint64_t salt = 900;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  struct bcase {
    kind pos;
    index_t rows, cols, rh, rw;
  };
  const index_t L = 130;  // three 64-query chunks
  const bcase cases[] = {{kind::none, 1, 0, 1, 1},       {kind::global, 1, 0, 1, 1},
                         {kind::relative, 1, 0, 1, 1},   {kind::local, 1, 0, 1, 9},
                         {kind::relative, 10, 13, 1, 1}, {kind::local, 10, 13, 3, 5}};
  std::size_t i = 0;
  for (const bcase& bc : cases) {
    ++i;
    lspec s = make_lspec(2, L, L, kDims[i % 6], bc.pos);
    s.rows = bc.rows;
    s.cols = bc.cols;
    s.rh = bc.rh;
    s.rw = bc.rw;
    s.causal = causality::top_left;
    s.key_lengths = std::vector<std::int64_t>{L, 100};
    INFO(describe(s));
    const auto d = make_ldata(s, ++salt);
    // forward table offsets: NaN
    ldata f = d;
    if (bc.pos == kind::relative || bc.pos == kind::local) {
      const index_t W = grid_cols(s);
      const index_t cy = bc.pos == kind::relative ? s.rows - 1 : s.rh / 2;
      const index_t cx = bc.pos == kind::relative ? W - 1 : s.rw / 2;
      for_each_index(f.emb.extents(), [&](const std::array<index_t, 4>& ix) {
        if (ix[0] > cy || (ix[0] == cy && ix[1] > cx)) f.emb(ix[0], ix[1], ix[2], ix[3]) = nan;
      });
    }
    for (index_t c : {index_t(0), index_t(1), index_t(17), index_t(63), index_t(64), index_t(65), L - 2}) {
      ldata g = f;
      for_each_index(g.q.extents(), [&](const std::array<index_t, 4>& ix) {
        if (ix[1] > c) g.q(ix[0], ix[1], ix[2], ix[3]) = nan;
      });
      for_each_index(g.keys.extents(), [&](const std::array<index_t, 4>& ix) {
        if (ix[1] > c) g.keys(ix[0], ix[1], ix[2], ix[3]) = nan;
      });
      for_each_index(g.values.extents(), [&](const std::array<index_t, 4>& ix) {
        if (ix[1] > c) g.values(ix[0], ix[1], ix[2], ix[3]) = ix[1] % 2 ? HUGE_VAL : nan;
      });
      if (bc.pos == kind::global)
        for_each_index(g.emb.extents(), [&](const std::array<index_t, 4>& ix) {
          if (ix[0] > c || ix[1] > c) g.emb(ix[0], ix[1], ix[2], ix[3]) = nan;
        });
      auto run = [&](auto t) {
        using T = decltype(t);
        const auto in = to_type<T>(d);
        const auto inf = to_type<T>(f);
        const auto ing = to_type<T>(g);
        for_each_arch([&](auto arch) {
          using Arch = decltype(arch);
          INFO("arch " << Arch::name << (std::is_same_v<T, float> ? " float" : " double") << " cut " << c);
          const auto y = run_lambda<Arch>(in, d.options());
          require_same_bits(last3(run_lambda<Arch>(inf, f.options()).cv()), last3(y.cv()),
                            "NaN in forward table offsets");
          require_same_rows(last3(run_lambda<Arch>(ing, g.options()).cv()), last3(y.cv()), c + 1,
                            "rows <= cut with NaN after the cut");
        });
      };
      run(float{});
      run(double{});
    }
  }
}

TEST_CASE("lambda: mask.causal top_left / bottom_right (n == m) mean options.causal", "[lambda][causal]") {
  lspec s = make_lspec(2, 40, 40, {2, 3, 5, 2}, kind::global);
  s.causal = causality::top_left;
  s.key_lengths = std::vector<std::int64_t>{40, 25};
  const auto d = make_ldata(s, 950);
  const auto in = to_type<float>(d);
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    INFO("arch " << Arch::name);
    const auto want = run_lambda<Arch>(in, d.options());
    for (causality c : {causality::mask_top_left, causality::bottom_right}) {
      INFO(causality_name(c));
      require_same_bits(last3(run_lambda<Arch>(in, make_options(c, d.lens, 1)).cv()), last3(want.cv()),
                        "mask.causal");
      // both spellings at once
      auto o = make_options(c, d.lens, 1);
      o.causal = true;
      require_same_bits(last3(run_lambda<Arch>(in, o).cv()), last3(want.cv()),
                        "options.causal and mask.causal");
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Padding, shapes and layouts, threads

// key_lengths 0 (every query sees nothing: zeros), 1, partial, full and another partial in one
// batch; NaN in padding keys and global E columns, +-Inf in padding values change no bit.
TEST_CASE("lambda: key_lengths (0, 1, partial, full per batch entry); NaN / Inf in padding change no bit",
          "[lambda][mask]") {
  std::uint64_t salt = 1000;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  struct kcase {
    kind pos;
    index_t n, m, rows, cols, rh, rw;
  };
  const kcase cases[] = {{kind::none, 29, 29, 1, 0, 1, 1},     {kind::none, 17, 31, 1, 0, 1, 1},
                         {kind::global, 31, 17, 1, 0, 1, 1},   {kind::global, 29, 29, 1, 0, 1, 1},
                         {kind::relative, 29, 29, 1, 0, 1, 1}, {kind::relative, 30, 30, 5, 6, 1, 1},
                         {kind::local, 29, 29, 1, 0, 1, 5},    {kind::local, 30, 30, 5, 6, 3, 3}};
  std::size_t i = 0;
  for (const kcase& kc : cases)
    for (causality c : {causality::none, causality::top_left, causality::bottom_right}) {
      ++i;
      lspec s = make_lspec(5, kc.n, kc.m, kDims[i % 6], kc.pos);
      s.rows = kc.rows;
      s.cols = kc.cols;
      s.rh = kc.rh;
      s.rw = kc.rw;
      s.causal = c;
      // global E is shared by the batch: its columns m >= the longest length are padding for every
      // entry, so its batches leave the last two columns to padding
      const index_t full = kc.pos == kind::global ? kc.m - 2 : kc.m;
      s.key_lengths = std::vector<std::int64_t>{0, 1, kc.m / 2, full, kc.m - 3};
      INFO(describe(s));
      const auto d = make_ldata(s, ++salt);
      const auto want = reference(d);
      ldata g = d;
      for (index_t b = 0; b < s.B; ++b)
        for (index_t j = d.len(b); j < s.m; ++j) {
          for (index_t kk = 0; kk < s.k; ++kk)
            for (index_t uu = 0; uu < s.u; ++uu) g.keys(b, j, kk, uu) = nan;
          for (index_t e = 0; e < s.v; ++e)
            for (index_t uu = 0; uu < s.u; ++uu) g.values(b, j, e, uu) = (j + e) % 2 ? HUGE_VAL : -HUGE_VAL;
        }
      if (kc.pos == kind::global)
        for_each_index(g.emb.extents(), [&](const std::array<index_t, 4>& ix) {
          if (ix[1] >= full) g.emb(ix[0], ix[1], ix[2], ix[3]) = nan;
        });
      auto run = [&](auto t) {
        using T = decltype(t);
        const auto in = to_type<T>(d);
        const auto ing = to_type<T>(g);
        for_each_arch([&](auto arch) {
          using Arch = decltype(arch);
          INFO("arch " << Arch::name << (std::is_same_v<T, float> ? " float" : " double"));
          const auto y = run_lambda<Arch>(in, d.options());
          REQUIRE(y.touched_outside() == 0);
          require_lambda_close<T>(last3(y.cv()), want.out, want.mag, op_count(s), "vs fp64");
          index_t nonzero = 0;  // batch entry 0 (key_lengths 0) is all zeros
          for_each_index<3>({1, s.n, s.h * s.v},
                            [&](const std::array<index_t, 3>& ix) { nonzero += at(last3(y.v), ix) != T(0); });
          REQUIRE(nonzero == 0);
          require_same_bits(last3(run_lambda<Arch>(ing, g.options()).cv()), last3(y.cv()),
                            "NaN / Inf in padding keys, values and E columns");
        });
      };
      run(float{});
      run(double{});
    }
}

TEST_CASE("lambda: u > 1, multi-query h > 1, non-square grids, strided views of every argument",
          "[lambda][shapes][layout]") {
  std::uint64_t salt = 1100;
  struct shape {
    kind pos;
    index_t B, n, m, h, k, v, u, rows, cols, rh, rw;
    layout lq, lk, lv, le, lo;
  };
  using L = layout;
  const shape shapes[] = {
      {kind::relative, 2, 29, 29, 2, 5, 7, 3, 1, 0, 1, 1, L::bshd, L::dim_major, L::reversed, L::gapped,
       L::padded},
      {kind::global, 2, 17, 23, 3, 3, 9, 2, 1, 0, 1, 1, L::broadcast_b, L::bshd_padded, L::dim_major, L::bshd,
       L::reversed},
      {kind::local, 2, 24, 24, 2, 4, 5, 3, 4, 6, 3, 5, L::padded, L::reversed, L::gapped, L::dim_major,
       L::dim_major},
      {kind::none, 3, 33, 9, 4, 3, 3, 2, 1, 0, 1, 1, L::gapped, L::broadcast_b, L::broadcast_b, L::contiguous,
       L::bshd},
      {kind::relative, 2, 15, 15, 1, 7, 11, 1, 5, 3, 1, 1, L::reversed, L::padded, L::bshd_padded,
       L::reversed, L::gapped},
      {kind::global, 2, 19, 19, 2, 2, 6, 3, 1, 0, 1, 1, L::dim_major, L::gapped, L::padded, L::broadcast_b,
       L::bshd_padded},
      {kind::global, 1, 21, 13, 1, 5, 3, 2, 1, 0, 1, 1, L::contiguous, L::reversed, L::bshd, L::dim_major,
       L::contiguous},
      {kind::local, 2, 31, 31, 3, 3, 8, 2, 1, 0, 1, 7, L::bshd_padded, L::bshd, L::dim_major, L::bshd,
       L::padded},
      {kind::local, 2, 27, 27, 2, 3, 5, 2, 3, 9, 5, 3, L::contiguous, L::gapped, L::contiguous,
       L::broadcast_b, L::reversed},
      {kind::relative, 2, 70, 70, 2, 3, 33, 2, 7, 10, 1, 1, L::padded, L::bshd, L::gapped, L::padded,
       L::dim_major},
  };
  for (const shape& sh : shapes)
    for (causality c : {causality::none, causality::top_left}) {
      lspec s = make_lspec(sh.B, sh.n, sh.m, {sh.h, sh.k, sh.v, sh.u}, sh.pos);
      s.rows = sh.rows;
      s.cols = sh.cols;
      s.rh = sh.rh;
      s.rw = sh.rw;
      s.causal = c;
      s.lq = sh.lq;
      s.lk = sh.lk;
      s.lv = sh.lv;
      s.le = sh.le;
      s.lo = sh.lo;
      if (sh.B > 1) {
        s.key_lengths.assign(static_cast<std::size_t>(sh.B), sh.m);
        s.key_lengths[1] = (2 * sh.m) / 3;
      }
      check_spec(s, ++salt);
    }
}

TEST_CASE("lambda: output bits do not depend on the thread count", "[lambda][threads]") {
  std::uint64_t salt = 1200;
  struct tcase {
    kind pos;
    index_t rows, cols, rh, rw;
  };
  const index_t L = 150;  // three 64-query chunks per batch entry
  const tcase cases[] = {{kind::none, 1, 0, 1, 1},
                         {kind::global, 1, 0, 1, 1},
                         {kind::relative, 1, 0, 1, 1},
                         {kind::local, 10, 15, 3, 5}};
  for (const tcase& tc : cases)
    for (causality c : {causality::none, causality::top_left}) {
      lspec s = make_lspec(3, L, L, {2, 5, 7, 2}, tc.pos);
      s.rows = tc.rows;
      s.cols = tc.cols;
      s.rh = tc.rh;
      s.rw = tc.rw;
      s.causal = c;
      s.key_lengths = std::vector<std::int64_t>{L, 97, 0};
      const auto d = make_ldata(s, ++salt);
      auto run = [&](auto t) {
        using T = decltype(t);
        const auto in = to_type<T>(d);
        for_each_arch([&](auto arch) {
          using Arch = decltype(arch);
          INFO(describe(s) << " arch " << Arch::name << (std::is_same_v<T, float> ? " float" : " double"));
          const auto one = run_lambda<Arch>(in, d.options(1));
          for (int th : {2, 3, 0}) {
            INFO("threads " << th);
            require_same_bits(last3(run_lambda<Arch>(in, d.options(th)).cv()), last3(one.cv()), "threads");
          }
        });
      };
      run(float{});
      run(double{});
    }
}

// ---------------------------------------------------------------------------------------------
// Invalid arguments, empty extents

TEST_CASE("lambda: invalid arguments throw attnkit::invalid_argument and leave out untouched",
          "[lambda][errors]") {
  using Catch::Matchers::Contains;
  using cview = view<const float, 4>;
  using pos_t = lpos<float>;
  const index_t B = 2, n = 6, m = 6, h = 2, k = 3, v = 4, u = 2;
  // room for every (slightly too large) shape below
  const std::vector<float> qd(static_cast<std::size_t>((B + 1) * (n + 2) * (h + 1) * (k + 1)), 0.25f);
  const std::vector<float> kd(static_cast<std::size_t>((B + 1) * (m + 2) * (k + 1) * (u + 1)), 0.5f);
  const std::vector<float> vd(static_cast<std::size_t>((B + 1) * (m + 2) * (v + 1) * (u + 1)), 0.75f);
  const std::vector<float> ed(static_cast<std::size_t>((n + 2) * (m + 2) * (k + 1) * (u + 1)), 0.125f);
  const std::vector<float> bd(static_cast<std::size_t>(B * n * m), 0.125f);
  std::vector<float> od(static_cast<std::size_t>((B + 1) * (n + 2) * (h * v + 2)), -7777.25f);
  const std::vector<float> od_before = od;
  const auto in = [](const std::vector<float>& d, std::array<index_t, 4> e) {
    return cview::contiguous(d.data(), e);
  };
  const auto t3 = [&](std::array<index_t, 3> e) { return view<const float, 3>::contiguous(ed.data(), e); };
  const auto outv = [&](std::array<index_t, 3> e) { return view<float, 3>::contiguous(od.data(), e); };
  const cview q = in(qd, {B, n, h, k}), K = in(kd, {B, m, k, u}), V = in(vd, {B, m, v, u});
  const view<float, 3> out = outv({B, n, h * v});
  const lambda_grid g23{2, 3};
  const pos_t global = pos_t::global(in(ed, {n, m, k, u}));
  const pos_t rel1 = pos_t::relative(t3({2 * n - 1, k, u}));
  const pos_t rel2 = pos_t::relative(in(ed, {3, 5, k, u}), g23);
  const pos_t loc1 = pos_t::local(t3({3, k, u}));
  const pos_t loc2 = pos_t::local(in(ed, {3, 1, k, u}), g23);
  const std::vector<std::int64_t> lens{m, 3}, lens_long{m + 1, 3}, lens_neg{2, -1};
  const auto lensv = [](const std::vector<std::int64_t>& l, index_t len) {
    return view<const std::int64_t, 1>(l.data(), {len}, {1});
  };
  const std::vector<pos_t> valid{pos_t::none(), global, rel1, rel2, loc1, loc2};

  // Every valid call works (and is undone), so each failure below comes from its one change.
  for (const pos_t& p : valid) {
    INFO("valid position " << kind_name(p.kind));
    lambda_options opt;
    opt.causal = true;
    opt.mask.key_lengths = lensv(lens, B);
    REQUIRE_NOTHROW(attnkit::lambda_attention(q, K, V, p, out, opt));
    REQUIRE(!same_bits(od, od_before));
    od = od_before;
  }

  struct bad {
    std::string name;
    cview q, k, v;
    pos_t pos;
    view<float, 3> out;
    lambda_options opt;
    const char* needle;  // a phrase the message must contain, or null
  };
  const lambda_options none;
  auto with = [](auto f) {
    lambda_options o;
    f(o);
    return o;
  };
  auto kind_of = [](pos_t p, kind kd) {
    p.kind = kd;
    return p;
  };
  std::vector<bad> cases;
  for (const pos_t& p : valid) {
    cases.push_back({"bias given", q, K, V, p, out, with([&](auto& o) {
                       o.mask.bias = in(bd, {B, 1, n, m});
                     }),
                     "bias"});
    cases.push_back({"key_lengths extent B + 1", q, K, V, p, out,
                     with([&](auto& o) { o.mask.key_lengths = lensv(lens_long, B + 1); }), "key_lengths"});
    cases.push_back(
        {"null out", q, K, V, p, view<float, 3>(nullptr, out.extents(), out.strides()), none, "null"});
  }
  cases.push_back({"key_lengths > m", q, K, V, global, out,
                   with([&](auto& o) { o.mask.key_lengths = lensv(lens_long, B); }), "key_lengths"});
  cases.push_back({"key_lengths < 0", q, K, V, rel1, out,
                   with([&](auto& o) { o.mask.key_lengths = lensv(lens_neg, B); }), "key_lengths"});
  cases.push_back({"key_lengths extent without data", q, K, V, pos_t::none(), out, with([&](auto& o) {
                     o.mask.key_lengths = view<const std::int64_t, 1>(nullptr, {B}, {1});
                   }),
                   "key_lengths"});
  cases.push_back({"options.causal with bottom_right, n != m", q, in(kd, {B, m - 1, k, u}),
                   in(vd, {B, m - 1, v, u}), pos_t::none(), out, with([](auto& o) {
                     o.causal = true;
                     o.mask.causal = attnkit::causal_mode::bottom_right;
                   }),
                   "bottom_right"});
  cases.push_back(
      {"threads -1", q, K, V, pos_t::none(), out, with([](auto& o) { o.threads = -1; }), "threads"});
  // extents
  cases.push_back(
      {"negative n", in(qd, {B, -1, h, k}), K, V, pos_t::none(), outv({B, -1, h * v}), none, "negative"});
  cases.push_back(
      {"negative u", q, in(kd, {B, m, k, -1}), in(vd, {B, m, v, -1}), pos_t::none(), out, none, "negative"});
  cases.push_back({"keys batch B + 1", q, in(kd, {B + 1, m, k, u}), in(vd, {B + 1, m, v, u}), pos_t::none(),
                   out, none, "keys"});
  cases.push_back({"keys k + 1", q, in(kd, {B, m, k + 1, u}), V, pos_t::none(), out, none, "keys"});
  cases.push_back({"values m + 1", q, K, in(vd, {B, m + 1, v, u}), pos_t::none(), out, none, "values"});
  cases.push_back({"values u - 1", q, K, in(vd, {B, m, v, u - 1}), global, out, none, "values"});
  cases.push_back({"values batch 1", q, K, in(vd, {1, m, v, u}), pos_t::none(), out, none, "values"});
  cases.push_back({"out n + 1", q, K, V, pos_t::none(), outv({B, n + 1, h * v}), none, "out"});
  cases.push_back({"out h * v - 1", q, K, V, rel1, outv({B, n, h * v - 1}), none, "out"});
  cases.push_back({"out batch 1", q, K, V, loc2, outv({1, n, h * v}), none, "out"});
  cases.push_back({"out with stride 0", q, K, V, pos_t::none(),
                   view<float, 3>(od.data(), {B, n, h * v}, {n * h * v, 0, 1}), none, "elements overlap"});
  cases.push_back(
      {"null queries", cview(nullptr, q.extents(), q.strides()), K, V, global, out, none, "null"});
  cases.push_back({"null keys", q, cview(nullptr, K.extents(), K.strides()), V, rel1, out, none, "null"});
  cases.push_back({"null values", q, K, cview(nullptr, V.extents(), V.strides()), loc1, out, none, "null"});
  // position terms
  cases.push_back({"global E null", q, K, V,
                   pos_t::global(cview(nullptr, {n, m, k, u}, global.embeddings.strides())), out, none,
                   "null"});
  cases.push_back({"global E [n + 1, m, k, u]", q, K, V, pos_t::global(in(ed, {n + 1, m, k, u})), out, none,
                   "global embeddings"});
  cases.push_back({"global E [n, m - 1, k, u]", q, K, V, pos_t::global(in(ed, {n, m - 1, k, u})), out, none,
                   "global embeddings"});
  cases.push_back({"global E [n, m, k, u + 1]", q, K, V, pos_t::global(in(ed, {n, m, k, u + 1})), out, none,
                   "global embeddings"});
  cases.push_back(
      {"global without E", q, K, V, kind_of(pos_t::none(), kind::global), out, none, "global embeddings"});
  cases.push_back({"relative n != m", q, in(kd, {B, m + 1, k, u}), in(vd, {B, m + 1, v, u}),
                   pos_t::relative(t3({2 * n - 1, k, u})), out, none, "same positions"});
  cases.push_back({"local n != m", q, in(kd, {B, m - 1, k, u}), in(vd, {B, m - 1, v, u}), loc1, out, none,
                   "same positions"});
  cases.push_back({"relative grid 4 x 2 != 6", q, K, V,
                   pos_t::relative(in(ed, {7, 3, k, u}), lambda_grid{4, 2}), out, none, "rows * cols"});
  cases.push_back({"relative grid 0 x 0", q, K, V, pos_t::relative(in(ed, {1, 1, k, u}), lambda_grid{0, 0}),
                   out, none, "rows * cols"});
  cases.push_back({"relative grid -2 x -3", q, K, V,
                   pos_t::relative(in(ed, {1, 1, k, u}), lambda_grid{-2, -3}), out, none, "rows * cols"});
  cases.push_back({"local grid 3 x 0", q, K, V, pos_t::local(in(ed, {3, 3, k, u}), lambda_grid{3, 0}), out,
                   none, "rows * cols"});
  cases.push_back({"relative 1D table 2n - 2", q, K, V, pos_t::relative(t3({2 * n - 2, k, u})), out, none,
                   "relative table"});
  cases.push_back(
      {"relative 1D table 2n", q, K, V, pos_t::relative(t3({2 * n, k, u})), out, none, "relative table"});
  cases.push_back({"relative 2D table [3, 4]", q, K, V, pos_t::relative(in(ed, {3, 4, k, u}), g23), out, none,
                   "relative table"});
  cases.push_back({"relative 2D table [5, 3] (transposed grid)", q, K, V,
                   pos_t::relative(in(ed, {5, 3, k, u}), g23), out, none, "relative table"});
  cases.push_back({"relative table k + 1", q, K, V, pos_t::relative(t3({2 * n - 1, k + 1, u})), out, none,
                   "relative table"});
  cases.push_back({"relative table u + 1", q, K, V, pos_t::relative(in(ed, {3, 5, k, u + 1}), g23), out, none,
                   "relative table"});
  cases.push_back({"relative table null", q, K, V,
                   pos_t::relative(view<const float, 3>(nullptr, {2 * n - 1, k, u}, {k * u, u, 1})), out,
                   none, "null"});
  cases.push_back({"local even scope 4", q, K, V, pos_t::local(t3({4, k, u})), out, none, "local table"});
  cases.push_back({"local scope 0", q, K, V, pos_t::local(t3({0, k, u})), out, none, "local table"});
  cases.push_back(
      {"local even rows 2", q, K, V, pos_t::local(in(ed, {2, 3, k, u}), g23), out, none, "local table"});
  cases.push_back({"local table k - 1", q, K, V, pos_t::local(t3({3, k - 1, u})), out, none, "local table"});
  cases.push_back(
      {"local table u + 1", q, K, V, pos_t::local(in(ed, {3, 3, k, u + 1}), g23), out, none, "local table"});
  cases.push_back({"local table null", q, K, V,
                   pos_t::local(cview(nullptr, {3, 3, k, u}, {9 * k * u, 3 * k * u, u, 1}), g23), out, none,
                   "null"});
  cases.push_back(
      {"kind not a value", q, K, V, kind_of(pos_t::none(), static_cast<kind>(9)), out, none, "kind"});

  for (const bad& c : cases) {
    INFO("case: " << c.name << ", position " << kind_name(c.pos.kind));
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO("arch " << Arch::name);
      auto call = [&] { attnkit::lambda_attention<Arch>(c.q, c.k, c.v, c.pos, c.out, c.opt); };
      REQUIRE_THROWS_AS(call(), attnkit::invalid_argument);
      if (c.needle) REQUIRE_THROWS_WITH(call(), Contains(c.needle));
      INFO("out must be untouched");
      REQUIRE(same_bits(od, od_before));
    });
  }
}

TEST_CASE("lambda: empty extents (B, n, m, h, v, k or u = 0) work: zeros where defined", "[lambda][shapes]") {
  std::uint64_t salt = 1300;
  // {B, n, m, h, k, v, u}
  const std::array<index_t, 7> shapes[] = {
      {0, 5, 5, 2, 3, 4, 2}, {2, 0, 0, 2, 3, 4, 2}, {2, 0, 5, 2, 3, 4, 2}, {2, 5, 0, 2, 3, 4, 2},
      {2, 5, 5, 0, 3, 4, 2}, {2, 5, 5, 2, 3, 0, 2}, {2, 5, 5, 2, 0, 4, 2}, {2, 5, 5, 2, 3, 4, 0}};
  for (const auto& e : shapes)
    for (kind pos : {kind::none, kind::global, kind::relative, kind::local})
      for (causality c : {causality::none, causality::top_left}) {
        if ((pos == kind::relative || pos == kind::local) && e[1] != e[2]) continue;
        lspec s = make_lspec(e[0], e[1], e[2], {e[3], e[4], e[5], e[6]}, pos);
        s.rh = 1;
        s.rw = 3;
        s.causal = c;
        s.lo = layout::padded;
        // one length per batch entry, 0 or m
        if (e[0] > 0) s.key_lengths = std::vector<std::int64_t>{e[2], 0};
        INFO(describe(s));
        const auto d = make_ldata(s, ++salt);
        const auto want = reference(d);
        auto run = [&](auto t) {
          using T = decltype(t);
          const auto in = to_type<T>(d);
          for_each_arch([&](auto arch) {
            using Arch = decltype(arch);
            INFO("arch " << Arch::name << (std::is_same_v<T, float> ? " float" : " double"));
            auto out = make_out<T>(s, s.lo);
            REQUIRE_NOTHROW(attnkit::lambda_attention<Arch>(in.q.cv(), in.keys.cv(), in.values.cv(), in.pos(),
                                                            last3(out.v), d.options()));
            REQUIRE(out.touched_outside() == 0);
            // m, k or u = 0: every lambda is 0, so is every output (mag = 0: exact zeros)
            require_lambda_close<T>(last3(out.cv()), want.out, want.mag, op_count(s), "vs fp64 (zeros)");
          });
        };
        run(float{});
        run(double{});
      }
}
