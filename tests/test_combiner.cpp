// attnkit tests: Combiner attention (combiner_attention, combiner_probabilities, the per-query
// sets of combiner/spec.hpp, cluster routing and k-means) for every plan and every SIMD
// architecture the build can run.
//
// Oracle. combiner_probabilities writes out the distribution p(j|i) a plan implies, in double,
// query by query from the literal sets of combiner/spec.hpp (the fast path never uses them). The
// tests check that distribution (every row sums to 1, its support is exactly the visible keys) and
// that the engine's output is sum_j p(j|i) v_j with p computed in double on the same data. The
// inputs are float-representable, so one fp64 reference serves the float and the double runs.
//
// Tolerances (engine vs that fp64 reference). double: 1e-12 absolute + 1e-12 relative. float:
// |y - ref| <= 1e-5 + 1e-5 |ref| with v uniform in [-1, 1) and q, k uniform in [-1, 1), i.e. 1e-5
// relative to the scale of the values. Every output is a convex combination of values (direct keys
// and local expectations e, themselves convex combinations), so a relative error eps of the weights
// moves it by at most ~2 eps. The weights' errors come from fp32 logits: a dk-term dot product of
// |q|, |k| <= sqrt(dk/3) (pooled or anchored summary keys are means or maxima of keys, no larger)
// scaled by 1/sqrt(dk) has a rounding error ~ sqrt(dk) u |q||k| / sqrt(dk) <= 64/3 * 6e-8 ~ 1.3e-6
// for dk <= 64 (random errors, far less in practice), plus 2-3 ulp of exp2 and the pre-scaling of
// q; the local expectations add one more such level, and fp32 sums over L <= 300 keys add
// ~sqrt(L) u ~ 1e-6. Measured over this file: max |y - ref| / (1 + |ref|) = 4.6e-7 in float
// (dk = 64), 7e-16 in double.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include <catch2/catch.hpp>

#include <attnkit/attnkit.hpp>

#include "reference/attention_ref.hpp"
#include "reference/common.hpp"
#include "reference/kernel_instances.hpp"

namespace {

using namespace attnkit_test;
namespace cb = attnkit::combiner;
using attnkit::combiner_options;
using attnkit::combiner_pooling;

template <class T>
struct ctol;
template <>
struct ctol<float> {
  static constexpr double atol = 1e-5, rtol = 1e-5;
};
template <>
struct ctol<double> {
  static constexpr double atol = 1e-12, rtol = 1e-12;
};

const char* pooling_name(combiner_pooling p) { return p == combiner_pooling::max ? "max" : "mean"; }

const char* order_name(cb::axial_order o) {
  switch (o) {
    case cb::axial_order::row_major:
      return "row_major";
    case cb::axial_order::col_major:
      return "col_major";
    case cb::axial_order::mixture:
      return "mixture";
  }
  return "?";
}

const cb::axial_order kOrders[] = {cb::axial_order::row_major, cb::axial_order::col_major,
                                   cb::axial_order::mixture};
const combiner_pooling kPoolings[] = {combiner_pooling::max, combiner_pooling::mean};

std::string plan_name(const cb::fixed& p) { return "fixed{span=" + std::to_string(p.span) + "}"; }
std::string plan_name(const cb::logsparse&) { return "logsparse"; }
std::string plan_name(const cb::axial& p) {
  return "axial{" + std::to_string(p.rows) + "x" + std::to_string(p.cols) + ", " + order_name(p.order) + "}";
}
std::string plan_name(const cb::learnable& p) {
  std::ostringstream os;
  if (p.centroids)
    os << "learnable{centroids [" << p.centroids.extent(0) << ", " << p.centroids.extent(1) << ", "
       << p.centroids.extent(2) << "]";
  else
    os << "learnable{cluster_ids [" << p.cluster_ids.extent(0) << ", " << p.cluster_ids.extent(1) << ", "
       << p.cluster_ids.extent(2) << "]";
  os << ", span=" << p.span << "}";
  return os.str();
}

/// One Combiner problem: sizes, mask, options, layouts.
struct cspec {
  index_t B = 1, H = 2, Hkv = 1, L = 1, dk = 8, dv = 5;
  bool causal = false;
  combiner_pooling pooling = combiner_pooling::max;
  std::vector<std::int64_t> key_lengths;  // empty: no padding
  double scale = 0;
  layout lq = layout::contiguous, lk = layout::contiguous, lv = layout::contiguous, lo = layout::contiguous;
  double range = 1;  // q and k uniform in [-range, range)
};

/// A spec of B batch entries (key lengths `lens`), H query heads over Hkv kv heads, L positions.
cspec make_spec(index_t B, index_t H, index_t Hkv, index_t L, index_t dk, index_t dv, bool causal,
                std::vector<std::int64_t> lens, combiner_pooling pooling = combiner_pooling::max) {
  cspec s;
  s.B = B;
  s.H = H;
  s.Hkv = Hkv;
  s.L = L;
  s.dk = dk;
  s.dv = dv;
  s.causal = causal;
  s.pooling = pooling;
  s.key_lengths = std::move(lens);
  return s;
}

std::string describe(const cspec& s) {
  std::ostringstream os;
  os << "B=" << s.B << " H=" << s.H << " Hkv=" << s.Hkv << " L=" << s.L << " dk=" << s.dk << " dv=" << s.dv
     << " causal=" << s.causal << " pooling=" << pooling_name(s.pooling) << " scale=" << s.scale
     << " key_lengths=";
  if (s.key_lengths.empty()) os << "none";
  for (std::size_t b = 0; b < s.key_lengths.size(); ++b) os << (b ? "," : "") << s.key_lengths[b];
  os << " layouts q/k/v/out=" << layout_name(s.lq) << "/" << layout_name(s.lk) << "/" << layout_name(s.lv)
     << "/" << layout_name(s.lo);
  return os.str();
}

using dtensor = attnkit::tensor<double, 4>;

/// The data of a problem in double (float-representable values), contiguous.
struct cdata {
  cspec sp;
  dtensor q, k, v;
  std::vector<std::int64_t> lens;

  index_t len(index_t b) const { return lens.empty() ? sp.L : static_cast<index_t>(lens[b]); }
  combiner_options options(int threads = 1) const {
    combiner_options o;
    o.causal = sp.causal;
    o.pooling = sp.pooling;
    o.scale = sp.scale;
    o.threads = threads;
    if (!lens.empty())
      o.mask.key_lengths = view<const std::int64_t, 1>(lens.data(), {static_cast<index_t>(lens.size())}, {1});
    return o;
  }
};

void fill_float_representable(dtensor& x, test_rng& gen, double lo, double hi, bool same_batches) {
  for_each_index(x.extents(), [&](const std::array<index_t, 4>& ix) {
    at(x.view(), ix) = same_batches && ix[0] > 0
                           ? at(x.view(), {0, ix[1], ix[2], ix[3]})
                           : static_cast<double>(static_cast<float>(gen.uniform(lo, hi)));
  });
}

cdata make_cdata(const cspec& sp, std::uint64_t salt) {
  cdata d;
  d.sp = sp;
  auto gen = seeded_rng(salt);
  d.q = dtensor({sp.B, sp.H, sp.L, sp.dk});
  d.k = dtensor({sp.B, sp.Hkv, sp.L, sp.dk});
  d.v = dtensor({sp.B, sp.Hkv, sp.L, sp.dv});
  fill_float_representable(d.q, gen, -sp.range, sp.range, sp.lq == layout::broadcast_b);
  fill_float_representable(d.k, gen, -sp.range, sp.range, sp.lk == layout::broadcast_b);
  fill_float_representable(d.v, gen, -1.0, 1.0, sp.lv == layout::broadcast_b);
  d.lens = std::vector<std::int64_t>(sp.key_lengths);  // (from a temporary: GCC 12 -Wnonnull false positive)
  return d;
}

/// A problem's inputs as T in its layouts.
template <class T>
struct tdata {
  strided_buffer<T> q, k, v;
};

template <class T>
tdata<T> to_type(const cdata& d) {
  return tdata<T>{to_buffer<T>(d.q, d.sp.lq), to_buffer<T>(d.k, d.sp.lk), to_buffer<T>(d.v, d.sp.lv)};
}

template <class Arch, class T, class Plan>
strided_buffer<T> run_comb(const tdata<T>& in, const cspec& sp, const Plan& plan,
                           const combiner_options& opt) {
  auto out = make_buffer<T>({sp.B, sp.H, sp.L, sp.dv}, sp.lo, T(-7777.25));
  attnkit::combiner_attention<Arch>(in.q.cv(), in.k.cv(), in.v.cv(), out.v, plan, opt);
  return out;
}

/// sum_j p(j|i) v_j in double.
dtensor expected_output(const dtensor& p, const dtensor& v) {
  const index_t B = p.extent(0), H = p.extent(1), L = p.extent(2), Hkv = v.extent(1), dv = v.extent(3);
  dtensor out({B, H, L, dv});
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < L; ++i)
        for (index_t e = 0; e < dv; ++e) {
          double acc = 0;
          for (index_t j = 0; j < L; ++j) {
            const double w = p(b, h, i, j);
            if (w != 0) acc += w * v(b, h / (H / Hkv), j, e);
          }
          out(b, h, i, e) = acc;
        }
  return out;
}

/// Property 1: every row that sees a key sums to 1; p > 0 exactly on the visible keys (j < len,
/// and j <= i when causal), exactly 0 elsewhere (rows that see nothing are all zero).
void check_distribution(const dtensor& p, const cdata& d) {
  REQUIRE(p.extents() == (std::array<index_t, 4>{d.sp.B, d.sp.H, d.sp.L, d.sp.L}));
  index_t bad_sum = 0, bad_support = 0;
  std::ostringstream first;
  for (index_t b = 0; b < d.sp.B; ++b)
    for (index_t h = 0; h < d.sp.H; ++h)
      for (index_t i = 0; i < d.sp.L; ++i) {
        double sum = 0;
        index_t nvis = 0;
        for (index_t j = 0; j < d.sp.L; ++j) {
          const bool vis = j < d.len(b) && (!d.sp.causal || j <= i);
          const double x = p(b, h, i, j);
          nvis += vis;
          sum += x;
          if (vis ? !(x > 0) : x != 0) {
            if (bad_support++ == 0)
              first << "support: p[" << b << ", " << h << ", " << i << ", " << j << "] = " << x
                    << (vis ? " on a visible key; " : " on an invisible key; ");
          }
        }
        if (nvis > 0 ? !(std::fabs(sum - 1) <= 1e-12) : sum != 0) {
          if (bad_sum++ == 0)
            first << "sum: row [" << b << ", " << h << ", " << i << "] sums to " << sum << "; ";
        }
      }
  INFO(first.str());
  REQUIRE(bad_support == 0);
  REQUIRE(bad_sum == 0);
}

/// The engine (type T, every arch) against the fp64 reference `want`.
template <class T, class Plan>
void check_engine(const cdata& d, const Plan& plan, const dtensor& want) {
  const auto in = to_type<T>(d);
  const auto opt = d.options();
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    INFO("arch " << Arch::name << (std::is_same_v<T, float> ? " float" : " double"));
    const auto out = run_comb<Arch>(in, d.sp, plan, opt);
    REQUIRE(out.touched_outside() == 0);
    require_close(out.cv(), want.cview(), ctol<T>::atol, ctol<T>::rtol,
                  "combiner_attention vs sum_j p(j|i) v_j");
  });
}

/// Properties 1 and 2 for one problem and plan: the distribution, and the float and double engines
/// on every arch against sum_j p(j|i) v_j (`with_float` false: double only).
template <class Plan>
void check_plan(const cspec& sp, const Plan& plan, std::uint64_t salt, bool with_float = true) {
  const auto d = make_cdata(sp, salt);
  INFO(describe(sp) << " plan " << plan_name(plan));
  const auto p = attnkit::combiner_probabilities(d.q.cview(), d.k.cview(), plan, d.options());
  check_distribution(p, d);
  const auto want = expected_output(p, d.v);
  if (with_float) check_engine<float>(d, plan, want);
  check_engine<double>(d, plan, want);
}

/// Cluster ids [nb, nh, L] in {0, step, 2 step, ..., (C - 1) step} (step > 1 leaves empty clusters).
struct ids_holder {
  std::vector<std::int32_t> ids;
  std::array<index_t, 3> ext{};
  view<const std::int32_t, 3> view3() const {
    return view<const std::int32_t, 3>::contiguous(ids.data(), ext);
  }
  cb::learnable plan(std::int64_t span) const {
    cb::learnable p;
    p.cluster_ids = view3();
    p.span = span;
    return p;
  }
};

ids_holder random_ids(index_t nb, index_t nh, index_t L, int C, int step, std::uint64_t salt) {
  ids_holder h;
  h.ext = {nb, nh, L};
  auto gen = seeded_rng(salt);
  h.ids.resize(static_cast<std::size_t>(nb * nh * L));
  for (auto& x : h.ids) x = static_cast<std::int32_t>(gen() % static_cast<std::uint64_t>(C)) * step;
  for (auto& x : h.ids) x = std::min<std::int32_t>(x, static_cast<std::int32_t>(std::max<index_t>(L, 1) - 1));
  return h;
}

/// Centroids [nh, C, dk] uniform in [-1, 1) (float).
struct centroid_holder {
  std::vector<float> mu;
  std::array<index_t, 3> ext{};
  view<const float, 3> view3() const { return view<const float, 3>::contiguous(mu.data(), ext); }
  cb::learnable plan(std::int64_t span) const {
    cb::learnable p;
    p.centroids = view3();
    p.span = span;
    return p;
  }
};

centroid_holder random_centroids(index_t nh, index_t C, index_t dk, std::uint64_t salt) {
  centroid_holder c;
  c.ext = {nh, C, dk};
  auto gen = seeded_rng(salt);
  c.mu.resize(static_cast<std::size_t>(nh * C * dk));
  for (auto& x : c.mu) x = static_cast<float>(gen.uniform(-1, 1));
  return c;
}

/// The sequence lengths of the sweeps: tiny, 2^k and 2^k + 1, primes, and up to 300.
const index_t kLengths[] = {1, 2, 3, 5, 8, 9, 16, 17, 31, 33, 64, 65, 97, 128, 129, 255, 257, 300};

/// Sequence lengths with several factorizations for the axial plans (primes give 1 x L, L x 1 only).
const index_t kAxialLengths[] = {1, 2, 6, 12, 17, 30, 64, 65, 91, 120, 129, 256, 300};

/// rows x cols == L: 1 x L, L x 1, and the most square non-trivial pair both ways, plus a flat one.
std::vector<std::array<index_t, 2>> factorizations(index_t L) {
  std::vector<std::array<index_t, 2>> f{{1, L}};
  if (L > 1) f.push_back({L, 1});
  index_t r = 1;
  for (index_t x = 2; x * x <= L; ++x)
    if (L % x == 0) r = x;
  if (r > 1) {
    f.push_back({r, L / r});
    if (r != L / r) f.push_back({L / r, r});
    index_t small = 1;  // the smallest non-trivial divisor: a flat grid
    for (index_t x = 2; x < r && small == 1; ++x)
      if (L % x == 0) small = x;
    if (small > 1) f.push_back({small, L / small});
  }
  return f;
}

/// The sweep's batch: two entries, the second with padding (and none when L = 1).
cspec sweep_spec(index_t L, bool causal, combiner_pooling pooling) {
  cspec s = make_spec(2, 2, 1, L, 8, 5, causal, {L, (2 * L) / 3}, pooling);
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Properties 1 and 2: the distribution, and the engine against sum_j p(j|i) v_j

TEST_CASE("combiner fixed: distribution and engine vs sum_j p(j|i) v_j over lengths and spans",
          "[combiner][fixed]") {
  std::uint64_t salt = 100;
  for (index_t L : kLengths)
    for (bool causal : {false, true})
      for (combiner_pooling pool : kPoolings)
        for (std::int64_t span : {std::int64_t(0), std::int64_t(1), std::int64_t(5), std::int64_t(L + 3)}) {
          if (L > 100 && span == 1) continue;  // L groups per query: O(L^3) reference
          check_plan(sweep_spec(L, causal, pool), cb::fixed{span}, ++salt);
        }
}

TEST_CASE("combiner logsparse: distribution and engine vs sum_j p(j|i) v_j over lengths",
          "[combiner][logsparse]") {
  std::uint64_t salt = 200;
  for (index_t L : kLengths)
    for (bool causal : {false, true})
      for (combiner_pooling pool : kPoolings)
        check_plan(sweep_spec(L, causal, pool), cb::logsparse{}, ++salt);
}

TEST_CASE("combiner axial: distribution and engine vs sum_j p(j|i) v_j over grids and orders",
          "[combiner][axial]") {
  std::uint64_t salt = 300;
  for (index_t L : kAxialLengths)
    for (const auto& rc : factorizations(L))
      for (cb::axial_order order : kOrders)
        for (bool causal : {false, true}) {
          // The summaries of axial plans are anchored (no pooling): one pooling per case, alternating.
          auto s = sweep_spec(L, causal, salt % 2 ? combiner_pooling::max : combiner_pooling::mean);
          check_plan(s, cb::axial{rc[0], rc[1], order}, ++salt);
        }
}

TEST_CASE("combiner learnable: distribution and engine vs sum_j p(j|i) v_j with cluster_ids",
          "[combiner][learnable]") {
  std::uint64_t salt = 400;
  for (index_t L : kLengths)
    for (bool causal : {false, true})
      for (combiner_pooling pool : kPoolings)
        for (int variant = 0; variant < 4; ++variant) {
          // one cluster; 3 clusters; 5 clusters with gaps (ids 0, 3, ..., 12); up to L clusters at small L
          const int C = variant == 0   ? 1
                        : variant == 1 ? 3
                        : variant == 2 ? 5
                                       : static_cast<int>(std::min<index_t>(L, 40));
          const int step = variant == 2 ? 3 : 1;
          const std::int64_t span = variant % 2 ? 0 : 4;
          auto s = sweep_spec(L, causal, pool);
          // ids broadcast [1, 1, L] or per batch entry [B, 1, L]
          const auto ids = random_ids(variant == 1 ? s.B : 1, 1, L, C, step, salt);
          check_plan(s, ids.plan(span), ++salt);
        }
}

TEST_CASE("combiner learnable: centroid routing vs sum_j p(j|i) v_j and vs the cluster_ids path",
          "[combiner][learnable][clusters]") {
  std::uint64_t salt = 500;
  for (index_t L : {index_t(1), index_t(7), index_t(33), index_t(100), index_t(257)})
    for (bool causal : {false, true})
      for (combiner_pooling pool : kPoolings)
        for (index_t C : {index_t(1), index_t(4), index_t(9)}) {
          cspec s = sweep_spec(L, causal, pool);
          s.H = 4;
          s.Hkv = 2;
          s.dk = 16;
          // centroids [Hkv, C, dk] or broadcast [1, C, dk]
          const auto mu = random_centroids(C == 4 ? 1 : s.Hkv, C, s.dk, ++salt);
          const auto plan = mu.plan(C == 9 ? 3 : 0);
          // double: the engine and combiner_probabilities route the same double keys.
          check_plan(s, plan, ++salt, /*with_float=*/false);
          // Every type and arch: the centroid path gives the bits of the cluster_ids path with the
          // ids of assign_clusters (same type, same arch).
          const auto d = make_cdata(s, salt);
          INFO(describe(s) << " plan " << plan_name(plan));
          auto same_as_ids = [&](auto type_tag) {
            using T = decltype(type_tag);
            const auto in = to_type<T>(d);
            const auto opt = d.options();
            for_each_arch([&](auto arch) {
              using Arch = decltype(arch);
              INFO("arch " << Arch::name << (std::is_same_v<T, float> ? " float" : " double"));
              const auto ids = cb::assign_clusters<Arch>(in.k.cv(), mu.view3(), opt.mask);
              // assign_clusters marks padding keys -1; cluster_ids accepts any id there.
              cb::learnable by_ids;
              by_ids.cluster_ids = ids.cview();
              by_ids.span = plan.span;
              const auto a = run_comb<Arch>(in, s, plan, opt);
              const auto b = run_comb<Arch>(in, s, by_ids, opt);
              require_same_bits(a.cv(), b.cv(), "centroids vs cluster_ids = assign_clusters");
            });
          };
          // cluster_ids must lie in [0, L): with more centroids than positions the ids of
          // assign_clusters may not be expressible as cluster_ids (see the report).
          if (C <= L) {
            same_as_ids(float{});
            same_as_ids(double{});
          }
        }
}

// ---------------------------------------------------------------------------------------------
// Helpers of the remaining tests: every plan kind for one problem

namespace {

using any_plan = std::variant<cb::fixed, cb::logsparse, cb::axial, cb::learnable>;

std::string any_name(const any_plan& p) {
  return std::visit([](const auto& x) { return plan_name(x); }, p);
}

bool has_centroids(const any_plan& p) {
  const auto* l = std::get_if<cb::learnable>(&p);
  return l && l->centroids;
}

/// Every plan kind over L positions (axial as rows x L / rows in every order), with cluster ids
/// per (batch, kv head) and broadcast, and centroids per kv head. Holds the ids and centroids the
/// plans view (moving the holder keeps them valid).
struct plan_set {
  ids_holder ids_full, ids_bcast;
  centroid_holder mu;
  std::vector<any_plan> plans;
};

plan_set make_plans(index_t L, index_t rows, index_t B, index_t Hkv, index_t dk, std::uint64_t salt) {
  plan_set s;
  s.ids_full = random_ids(B, Hkv, L, 4, 1, salt);
  s.ids_bcast = random_ids(1, 1, L, 6, 2, salt + 1);
  s.mu = random_centroids(Hkv, 5, dk, salt + 2);
  s.plans = {cb::fixed{0}, cb::fixed{5}, cb::logsparse{}};
  for (cb::axial_order o : kOrders) s.plans.push_back(cb::axial{rows, L / rows, o});
  s.plans.push_back(s.ids_full.plan(0));
  s.plans.push_back(s.ids_bcast.plan(5));
  s.plans.push_back(s.mu.plan(0));
  return s;
}

template <class Arch, class T>
strided_buffer<T> run_any(const tdata<T>& in, const cspec& sp, const any_plan& plan,
                          const combiner_options& opt) {
  return std::visit([&](const auto& p) { return run_comb<Arch>(in, sp, p, opt); }, plan);
}

/// A copy of x in double with the rows i >= key_lengths[b] (queries at padding positions) zeroed.
template <class T>
dtensor key_rows(const view<T, 4>& x, const cdata& d) {
  dtensor r(x.extents());
  for_each_index(x.extents(), [&](const std::array<index_t, 4>& ix) {
    at(r.view(), ix) = ix[2] < d.len(ix[0]) ? static_cast<double>(at(x, ix)) : 0.0;
  });
  return r;
}

/// Checks that D_i and the groups of one query partition its visible keys [0, len) (causal:
/// j <= i): no empty group, no position twice. Returns a description of the first problem, or "".
std::string partition_error(const attnkit::detail::combiner_sets& s, index_t i, index_t L, index_t len,
                            bool causal) {
  std::vector<int> seen(static_cast<std::size_t>(L), 0);
  auto mark = [&](index_t j) {
    if (j < 0 || j >= L) return std::string("position " + std::to_string(j) + " outside [0, L)");
    if (seen[static_cast<std::size_t>(j)]++) return std::string("position " + std::to_string(j) + " twice");
    return std::string();
  };
  for (index_t j : s.direct) {
    const auto e = mark(j);
    if (!e.empty()) return "direct: " + e;
  }
  for (const auto& g : s.groups) {
    if (g.members.empty()) return "empty group";
    for (index_t j : g.members) {
      const auto e = mark(j);
      if (!e.empty()) return "group: " + e;
    }
  }
  for (index_t j = 0; j < L; ++j) {
    const bool vis = j < len && (!causal || j <= i);
    if (vis != (seen[static_cast<std::size_t>(j)] == 1))
      return "position " + std::to_string(j) + (vis ? " visible but in no set" : " invisible but in a set");
  }
  return "";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Property 3: exact special cases and the dyadic partition

TEMPLATE_TEST_CASE("combiner: plans that reduce to exact attention equal full_attention", "[combiner][exact]",
                   float, double) {
  using T = TestType;
  // fixed with span >= L is one segment: every visible key is direct. Groups of one key (fixed{1},
  // axial 1 x L and L x 1 either way, one cluster per position) have the key itself as summary and
  // its value as local expectation; one cluster makes every key direct.
  std::uint64_t salt = 600;
  for (index_t L : {1, 7, 33, 100, 129})
    for (bool causal : {false, true})
      for (combiner_pooling pool : kPoolings) {
        cspec s = make_spec(2, 4, 2, L, 16, 8, causal, {L, (L + 1) / 2}, pool);
        const auto d = make_cdata(s, ++salt);
        attnkit::attention_options ao;
        ao.mask.causal = causal ? attnkit::causal_mode::top_left : attnkit::causal_mode::none;
        ao.mask.key_lengths = d.options().mask.key_lengths;
        ao.threads = 1;
        const auto want = ref::attention<double>(d.q.cview(), d.k.cview(), d.v.cview(), ao);
        ids_holder zeros, distinct;
        zeros.ext = distinct.ext = {1, 1, L};
        zeros.ids.assign(static_cast<std::size_t>(L), 0);
        for (index_t j = 0; j < L; ++j) distinct.ids.push_back(static_cast<std::int32_t>(j));
        std::vector<any_plan> plans{cb::fixed{L}, cb::fixed{L + 7}, cb::fixed{1}, zeros.plan(0),
                                    distinct.plan(causal ? 1 : 0)};
        if (L == 1) plans.push_back(cb::fixed{0});
        for (cb::axial_order o : kOrders) {
          plans.push_back(cb::axial{1, L, o});
          plans.push_back(cb::axial{L, 1, o});
        }
        const auto in = to_type<T>(d);
        const auto opt = d.options();
        for_each_arch([&](auto arch) {
          using Arch = decltype(arch);
          auto full = make_buffer<T>({s.B, s.H, L, s.dv}, layout::contiguous);
          attnkit::full_attention<Arch>(in.q.cv(), in.k.cv(), in.v.cv(), full.v, ao);
          for (const any_plan& plan : plans) {
            INFO(describe(s) << " plan " << any_name(plan) << " arch " << Arch::name);
            const auto out = run_any<Arch>(in, s, plan, opt);
            if (std::holds_alternative<cb::learnable>(plan)) {
              // A query at a padding position belongs to no cluster: it sees every cluster through
              // its summary (combiner/spec.hpp), so only the rows i < key_lengths[b] are exact.
              require_close(key_rows(out.cv(), d).cview(), key_rows(want.cview(), d).cview(), ctol<T>::atol,
                            ctol<T>::rtol, "vs fp64 exact attention (key rows)");
              require_close(key_rows(out.cv(), d).cview(), key_rows(full.cv(), d).cview(), 2 * ctol<T>::atol,
                            2 * ctol<T>::rtol, "vs full_attention (key rows)");
              continue;
            }
            require_close(out.cv(), want.cview(), ctol<T>::atol, ctol<T>::rtol, "vs fp64 exact attention");
            require_close(out.cv(), full.cv(), 2 * ctol<T>::atol, 2 * ctol<T>::rtol, "vs full_attention");
          }
        });
      }
}

TEST_CASE("combiner spec: logsparse groups are an exact dyadic partition of the visible keys",
          "[combiner][logsparse][spec]") {
  std::vector<index_t> lengths;
  for (index_t L = 1; L <= 140; ++L) lengths.push_back(L);
  for (index_t L : {255, 256, 257, 300, 511, 513}) lengths.push_back(L);
  index_t checked = 0;
  for (index_t L : lengths) {
    index_t levels = 0;  // blocks of sizes 1, 2, 4, ... < 2L
    for (index_t c = 1; c < 2 * L; c *= 2) ++levels;
    for (index_t len : {L, (2 * L) / 3, index_t(0)})
      for (bool causal : {false, true})
        for (index_t i = 0; i < L; ++i) {
          const auto s = attnkit::detail::logsparse_sets(i, L, len, causal);
          INFO("L=" << L << " len=" << len << " causal=" << causal << " i=" << i);
          const std::string err = partition_error(s, i, L, len, causal);
          INFO(err);
          REQUIRE(err.empty());
          // D_i = {i} (when i is a key); every group a dyadic block [t 2^l, (t + 1) 2^l) of
          // consecutive positions clipped to [0, min(L, len)), at most one per level.
          REQUIRE(s.direct == (i < len ? std::vector<index_t>{i} : std::vector<index_t>{}));
          REQUIRE(static_cast<index_t>(s.groups.size()) <= levels);
          std::vector<int> level_used(static_cast<std::size_t>(levels), 0);
          for (const auto& g : s.groups) {
            const index_t lo = g.members.front(), hi = g.members.back() + 1;
            REQUIRE(g.anchor == -1);
            REQUIRE(static_cast<index_t>(g.members.size()) == hi - lo);  // consecutive (no repeats, sorted)
            for (std::size_t t = 1; t < g.members.size(); ++t) REQUIRE(g.members[t] == g.members[t - 1] + 1);
            index_t level = -1;
            for (index_t l = 0; l < levels && level < 0; ++l) {
              const index_t c = index_t(1) << l;
              if (lo % c == 0 && hi == std::min({lo + c, L, len}) && !level_used[static_cast<std::size_t>(l)])
                level = l;
            }
            INFO("group [" << lo << ", " << hi << ")");
            REQUIRE(level >= 0);
            level_used[static_cast<std::size_t>(level)] = 1;
            ++checked;
          }
        }
  }
  REQUIRE(checked > 10000);
}

TEST_CASE("combiner spec: every plan's direct keys and groups partition the visible keys",
          "[combiner][spec]") {
  namespace dt = attnkit::detail;
  std::uint64_t salt = 700;
  for (index_t L : {1, 2, 5, 12, 17, 30, 64, 91})
    for (index_t len : {L, (2 * L) / 3, index_t(0)})
      for (bool causal : {false, true}) {
        INFO("L=" << L << " len=" << len << " causal=" << causal);
        for (index_t span : {index_t(1), index_t(3), dt::combiner_default_span(L), L + 2})
          for (index_t i = 0; i < L; ++i) {
            INFO("fixed span " << span << " i=" << i);
            REQUIRE(partition_error(dt::fixed_sets(i, L, len, causal, span), i, L, len, causal).empty());
          }
        for (const auto& rc : factorizations(L))
          for (bool col : {false, true})
            for (index_t i = 0; i < L; ++i) {
              INFO("axial " << rc[0] << "x" << rc[1] << (col ? " col_major" : " row_major") << " i=" << i);
              const auto s = dt::axial_sets(i, rc[0], rc[1], len, causal, col);
              REQUIRE(partition_error(s, i, L, len, causal).empty());
              // Each group is another row (column) anchored in the query's column (row); a causal
              // column group of rows < r (c' > c) is anchored at its last row r - 1, never after i.
              const index_t m = rc[1], r = i / m, c = i % m;
              for (const auto& g : s.groups) {
                REQUIRE(g.anchor >= 0);
                REQUIRE(g.anchor < L);
                if (!col) {
                  REQUIRE(g.anchor % m == c);
                  REQUIRE(g.anchor / m != r);
                  for (index_t j : g.members) REQUIRE(j / m == g.anchor / m);
                } else {
                  REQUIRE(g.anchor / m == (causal && g.anchor % m > c ? r - 1 : r));
                  REQUIRE(g.anchor % m != c);
                  for (index_t j : g.members) REQUIRE(j % m == g.anchor % m);
                }
              }
            }
        for (int C : {1, 3, 8}) {
          const auto ids = random_ids(1, 1, L, C, 1, ++salt);
          std::vector<std::int32_t> id = ids.ids;
          for (index_t j = len; j < L; ++j) id[static_cast<std::size_t>(j)] = -1;  // as combiner_ids
          for (index_t span : {index_t(1), index_t(4), dt::combiner_default_span(L)})
            for (index_t i = 0; i < L; ++i) {
              INFO("learnable C=" << C << " span " << span << " i=" << i);
              const auto s = dt::learnable_sets(i, L, len, causal, span, id);
              REQUIRE(partition_error(s, i, L, len, causal).empty());
              // Bidirectional: D_i is the own cluster, each group one other cluster.
              if (!causal)
                for (const auto& g : s.groups) {
                  const std::int32_t c = id[static_cast<std::size_t>(g.members.front())];
                  REQUIRE(c != id[static_cast<std::size_t>(i)]);
                  for (index_t j : g.members) REQUIRE(id[static_cast<std::size_t>(j)] == c);
                }
            }
        }
      }
}

// ---------------------------------------------------------------------------------------------
// Property 4: causality

namespace {

/// Perturbs the inputs at the positions i+1.. (i descending, so earlier positions are never
/// perturbed) with other finite values (q when perturb_q, k and v when perturb_kv) and compares the
/// causal outputs of rows 0..i bit for bit, for every pooling and arch.
template <class T>
void check_causal(cspec s, const any_plan& plan, std::uint64_t salt, bool perturb_q, bool perturb_kv) {
  s.causal = true;
  for (combiner_pooling pool : kPoolings) {
    s.pooling = pool;
    const auto d = make_cdata(s, ++salt);
    const auto opt = d.options();
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO(describe(s) << " plan " << any_name(plan) << " arch " << Arch::name << " perturbed q " << perturb_q
                       << " k, v " << perturb_kv);
      auto in = to_type<T>(d);
      const auto base = run_any<Arch>(in, s, plan, opt);
      auto gen = seeded_rng(salt * 7 + 1);
      const index_t L = s.L;
      for (index_t i : {L - 1, L / 2 + 3, index_t(17), index_t(1), index_t(0)}) {
        for (index_t b = 0; b < s.B; ++b)
          for (index_t j = i + 1; j < L; ++j) {
            for (index_t h = 0; h < s.H && perturb_q; ++h)
              for (index_t e = 0; e < s.dk; ++e) in.q.v(b, h, j, e) = static_cast<T>(gen.uniform(-2, 2));
            for (index_t h = 0; h < s.Hkv && perturb_kv; ++h) {
              for (index_t e = 0; e < s.dk; ++e) in.k.v(b, h, j, e) = static_cast<T>(gen.uniform(-2, 2));
              for (index_t e = 0; e < s.dv; ++e) in.v.v(b, h, j, e) = static_cast<T>(gen.uniform(-5, 5));
            }
          }
        const auto out = run_any<Arch>(in, s, plan, opt);
        INFO("perturbed positions > " << i);
        require_same_bits(prefix_rows(out.cv(), i + 1), prefix_rows(base.cv(), i + 1), "rows 0..i");
      }
    });
  }
}

cspec causal_spec(index_t L) {
  cspec s = make_spec(2, 4, 2, L, 16, 8, true, {L, L - 10});
  return s;
}

}  // namespace

TEMPLATE_TEST_CASE("combiner: a causal output ignores every later input", "[combiner][causal]", float,
                   double) {
  std::uint64_t salt = 800;
  for (index_t L : {45, 64}) {
    const cspec s = causal_spec(L);
    const auto ps = make_plans(L, L == 64 ? 8 : 5, s.B, s.Hkv, s.dk, ++salt);
    for (const any_plan& plan : ps.plans) {
      check_causal<TestType>(s, plan, salt += 10, true, true);  // later queries, keys and values
    }
  }
}

// Causal column-major axial plans anchor a group of rows < r at its last row, so their outputs
// also ignore later queries alone (the anchor's query is a summary query).
TEMPLATE_TEST_CASE("combiner axial: a causal col_major / mixture output ignores later queries",
                   "[combiner][causal][axial]", float, double) {
  std::uint64_t salt = 850;
  for (index_t L : {45, 64}) {
    const cspec s = causal_spec(L);
    for (cb::axial_order o : {cb::axial_order::col_major, cb::axial_order::mixture})
      check_causal<TestType>(s, cb::axial{L == 64 ? 8 : 5, L == 64 ? 8 : 9, o}, ++salt, true, false);
  }
}

// ---------------------------------------------------------------------------------------------
// Property 5: padding keys

TEMPLATE_TEST_CASE("combiner: padding keys (key_lengths 0, 1, partial, L) are never read", "[combiner][mask]",
                   float, double) {
  using T = TestType;
  std::uint64_t salt = 900;
  const index_t L = 60;
  for (bool causal : {false, true})
    for (combiner_pooling pool : kPoolings) {
      cspec s = make_spec(4, 4, 2, L, 16, 8, causal, {0, L, 31, 1}, pool);
      const auto ps = make_plans(L, 6, s.B, s.Hkv, s.dk, ++salt);
      for (const any_plan& plan : ps.plans) {
        INFO(describe(s) << " plan " << any_name(plan));
        const auto d = make_cdata(s, ++salt);
        const auto opt = d.options();
        // The same data with NaN and Inf in every padding key and value.
        cdata g = make_cdata(s, salt);
        for (index_t b = 0; b < s.B; ++b)
          for (index_t h = 0; h < s.Hkv; ++h)
            for (index_t j = d.len(b); j < L; ++j) {
              for (index_t e = 0; e < s.dk; ++e) g.k(b, h, j, e) = std::numeric_limits<double>::quiet_NaN();
              for (index_t e = 0; e < s.dv; ++e) g.v(b, h, j, e) = j % 2 ? HUGE_VAL : -HUGE_VAL;
            }
        const auto p = std::visit(
            [&](const auto& x) { return attnkit::combiner_probabilities(d.q.cview(), d.k.cview(), x, opt); },
            plan);
        check_distribution(p, d);
        const auto pg = std::visit(
            [&](const auto& x) { return attnkit::combiner_probabilities(g.q.cview(), g.k.cview(), x, opt); },
            plan);
        REQUIRE(std::memcmp(p.data(), pg.data(), static_cast<std::size_t>(p.size()) * sizeof(double)) == 0);
        const auto want = expected_output(p, d.v);
        // Cluster ids of padding positions are never read either (other valid ids, same bits).
        any_plan plan2 = plan;
        ids_holder ids2;
        if (const auto* l = std::get_if<cb::learnable>(&plan); l && l->cluster_ids) {
          ids2.ext = l->cluster_ids.extents();
          ids2.ids.assign(l->cluster_ids.data(), l->cluster_ids.data() + l->cluster_ids.size());
          // positions that are padding in every batch entry reading the row (all of them when broadcast)
          for (index_t b = 0; b < ids2.ext[0]; ++b)
            for (index_t j = ids2.ext[0] == 1 ? L : d.len(b); j < L; ++j)
              for (index_t h = 0; h < ids2.ext[1]; ++h)
                ids2.ids[static_cast<std::size_t>((b * ids2.ext[1] + h) * L + j)] =
                    static_cast<std::int32_t>(L - 1 - j);
          plan2 = ids2.plan(l->span);
        }
        const auto in = to_type<T>(d);
        const auto ing = to_type<T>(g);
        for_each_arch([&](auto arch) {
          using Arch = decltype(arch);
          INFO("arch " << Arch::name);
          const auto out = run_any<Arch>(in, s, plan, opt);
          if (std::is_same_v<T, double> || !has_centroids(plan))
            require_close(out.cv(), want.cview(), ctol<T>::atol, ctol<T>::rtol, "vs sum_j p(j|i) v_j");
          // key_lengths 0: every query sees nothing and gets zeros.
          index_t nonzero = 0;
          for_each_index<4>({1, s.H, L, s.dv},
                            [&](const std::array<index_t, 4>& ix) { nonzero += at(out.v, ix) != T(0); });
          REQUIRE(nonzero == 0);
          require_same_bits(run_any<Arch>(ing, s, plan, opt).cv(), out.cv(),
                            "NaN / Inf in padding keys and values");
          require_same_bits(run_any<Arch>(ing, s, plan2, opt).cv(), out.cv(),
                            "other ids at padding positions");
        });
      }
    }
}

// ---------------------------------------------------------------------------------------------
// Property 6: heads, head dims, layouts, batches

TEMPLATE_TEST_CASE("combiner: grouped heads, dv != dk, strided views, batches with different key_lengths",
                   "[combiner][shapes][layout]", float, double) {
  using T = TestType;
  (void)sizeof(T);
  std::uint64_t salt = 1000;
  struct shape {
    index_t B, H, Hkv, L, rows, dk, dv;
    std::vector<std::int64_t> lens;
    layout lq, lk, lv, lo;
    double scale;
  };
  const std::vector<shape> shapes = {
      {2, 4, 2, 50, 5, 16, 7, {50, 31}, layout::bshd, layout::dim_major, layout::reversed, layout::gapped, 0},
      {2,
       4,
       1,
       48,
       6,
       64,
       64,
       {20, 48},
       layout::broadcast_b,
       layout::bshd_padded,
       layout::dim_major,
       layout::bshd_padded,
       0.3},
      {1, 3, 3, 36, 4, 3, 1, {}, layout::padded, layout::gapped, layout::padded, layout::dim_major, 0},
      {3,
       2,
       2,
       24,
       3,
       12,
       20,
       {0, 24, 13},
       layout::reversed,
       layout::reversed,
       layout::bshd,
       layout::padded,
       0},
      {2,
       4,
       4,
       130,
       10,
       64,
       32,
       {130, 77},
       layout::contiguous,
       layout::contiguous,
       layout::contiguous,
       layout::contiguous,
       0},
  };
  for (const shape& sh : shapes)
    for (bool causal : {false, true})
      for (combiner_pooling pool : kPoolings) {
        cspec s;
        s.B = sh.B;
        s.H = sh.H;
        s.Hkv = sh.Hkv;
        s.L = sh.L;
        s.dk = sh.dk;
        s.dv = sh.dv;
        s.key_lengths = std::vector<std::int64_t>(sh.lens);
        s.lq = sh.lq;
        s.lk = sh.lk;
        s.lv = sh.lv;
        s.lo = sh.lo;
        s.scale = sh.scale;
        s.causal = causal;
        s.pooling = pool;
        const auto ps = make_plans(s.L, sh.rows, s.B, s.Hkv, s.dk, ++salt);
        for (const any_plan& plan : ps.plans)
          std::visit([&](const auto& x) { check_plan(s, x, ++salt, !has_centroids(plan)); }, plan);
      }
}

// ---------------------------------------------------------------------------------------------
// Property 7: threads, causal spellings, invalid arguments, empty extents

TEMPLATE_TEST_CASE("combiner: output bits do not depend on the thread count", "[combiner][threads]", float,
                   double) {
  using T = TestType;
  std::uint64_t salt = 1100;
  for (bool causal : {false, true}) {
    cspec s = make_spec(2, 4, 2, 150, 16, 8, causal, {150, 97});
    const auto ps = make_plans(s.L, 10, s.B, s.Hkv, s.dk, ++salt);
    const auto d = make_cdata(s, ++salt);
    const auto in = to_type<T>(d);
    for (const any_plan& plan : ps.plans)
      for_each_arch([&](auto arch) {
        using Arch = decltype(arch);
        INFO(describe(s) << " plan " << any_name(plan) << " arch " << Arch::name);
        const auto one = run_any<Arch>(in, s, plan, d.options(1));
        for (int t : {2, 3}) {
          INFO("threads " << t);
          require_same_bits(run_any<Arch>(in, s, plan, d.options(t)).cv(), one.cv(), "threads");
        }
      });
  }
}

TEST_CASE("combiner: mask.causal top_left and bottom_right mean options.causal", "[combiner][causal]") {
  cspec s;
  s.B = 2;
  s.H = 2;
  s.L = 40;
  s.dk = 8;
  s.dv = 4;
  s.causal = true;
  s.key_lengths = std::vector<std::int64_t>{40, 25};
  const auto ps = make_plans(s.L, 5, s.B, s.Hkv, s.dk, 1200);
  const auto d = make_cdata(s, 1201);
  const auto in = to_type<float>(d);
  for (const any_plan& plan : ps.plans)
    for (auto mode : {attnkit::causal_mode::top_left, attnkit::causal_mode::bottom_right})
      for_each_arch([&](auto arch) {
        using Arch = decltype(arch);
        INFO("plan " << any_name(plan) << " arch " << Arch::name << " mode " << static_cast<int>(mode));
        auto opt = d.options();
        const auto want = run_any<Arch>(in, s, plan, opt);
        opt.causal = false;
        opt.mask.causal = mode;
        require_same_bits(run_any<Arch>(in, s, plan, opt).cv(), want.cv(), "mask.causal");
      });
}

TEST_CASE("combiner: invalid arguments throw attnkit::invalid_argument and leave out untouched",
          "[combiner][errors]") {
  using Catch::Matchers::Contains;
  const index_t B = 2, H = 4, Hkv = 2, L = 6, dk = 8, dv = 4, C = 3;
  const std::vector<float> qd(static_cast<std::size_t>((B + 1) * (H + 1) * (L + 2) * (dk + 1)), 0.25f);
  const std::vector<float> kd(static_cast<std::size_t>((B + 1) * (Hkv + 2) * (L + 2) * (dk + 1)), 0.5f);
  const std::vector<float> vd(static_cast<std::size_t>((B + 1) * (Hkv + 2) * (L + 2) * (dv + 1)), 0.75f);
  const std::vector<float> bd(static_cast<std::size_t>(B * L * L), 0.125f);
  std::vector<float> od(static_cast<std::size_t>((B + 1) * (H + 1) * (L + 2) * (dv + 1)), -7777.25f);
  const std::vector<float> od_before = od;
  using cview = view<const float, 4>;
  const auto in = [](const std::vector<float>& d, std::array<index_t, 4> e) {
    return cview::contiguous(d.data(), e);
  };
  const auto outv = [&](std::array<index_t, 4> e) { return view<float, 4>::contiguous(od.data(), e); };
  const cview q = in(qd, {B, H, L, dk}), k = in(kd, {B, Hkv, L, dk}), v = in(vd, {B, Hkv, L, dv});
  const view<float, 4> out = outv({B, H, L, dv});
  // learnable plans: valid ids and centroids, and broken ones
  std::vector<std::int32_t> ids(static_cast<std::size_t>((B + 1) * (Hkv + 1) * (L + 1)), 1);
  std::vector<std::int32_t> ids_neg = ids, ids_big = ids;
  ids_neg[4] = -1;
  ids_big[B * Hkv * L - 1] = static_cast<std::int32_t>(L);
  std::vector<float> mu(static_cast<std::size_t>((Hkv + 2) * (C + 1) * (dk + 1)), 0.5f), mu_nan = mu;
  mu_nan[5] = std::numeric_limits<float>::quiet_NaN();
  auto learn = [&](const std::vector<std::int32_t>* id, std::array<index_t, 3> ide,
                   const std::vector<float>* m, std::array<index_t, 3> me, std::int64_t span = 0) {
    cb::learnable p;
    if (id) p.cluster_ids = view<const std::int32_t, 3>::contiguous(id->data(), ide);
    if (m) p.centroids = view<const float, 3>::contiguous(m->data(), me);
    p.span = span;
    return p;
  };
  const cb::learnable by_ids = learn(&ids, {B, Hkv, L}, nullptr, {}),
                      by_mu = learn(nullptr, {}, &mu, {Hkv, C, dk});
  const std::vector<std::int64_t> lens{L, 3}, lens_long{L + 1, 3}, lens_neg{2, -1};
  const auto lensv = [](const std::vector<std::int64_t>& l, index_t n) {
    return view<const std::int64_t, 1>(l.data(), {n}, {1});
  };
  const std::vector<any_plan> valid_plans{
      cb::fixed{0}, cb::fixed{4}, cb::logsparse{}, cb::axial{2, 3}, cb::axial{3, 2, cb::axial_order::mixture},
      by_ids,       by_mu};

  // Every plan's valid call works (and is undone), so each failure below comes from its one change.
  for (const any_plan& plan : valid_plans) {
    INFO("valid plan " << any_name(plan));
    combiner_options opt;
    opt.causal = true;
    opt.mask.key_lengths = lensv(lens, B);
    REQUIRE_NOTHROW(
        std::visit([&](const auto& p) { attnkit::combiner_attention(q, k, v, out, p, opt); }, plan));
    REQUIRE(!same_bits(od, od_before));
    od = od_before;
  }

  struct bad {
    std::string name;
    cview q, k, v;
    view<float, 4> out;
    any_plan plan;
    combiner_options opt;
    const char* needle;  // a phrase the message must contain, or null
    bool probabilities;  // combiner_probabilities (no v, no out) must reject it too
  };
  const combiner_options none;
  auto with = [](auto f) {
    combiner_options o;
    f(o);
    return o;
  };
  std::vector<bad> cases;
  for (const any_plan& plan : valid_plans) {
    cases.push_back({"Lq != Lk", q, in(kd, {B, Hkv, L + 1, dk}), in(vd, {B, Hkv, L + 1, dv}), out, plan, none,
                     "Lq == Lk", true});
    cases.push_back({"bias given", q, k, v, out, plan, with([&](auto& o) {
                       o.mask.bias = in(bd, {B, 1, L, L});
                     }),
                     "bias", true});
  }
  cases.push_back({"axial rows * cols != L", q, k, v, out, cb::axial{2, 4}, none, "rows * cols", true});
  cases.push_back({"axial 6 x 0", q, k, v, out, cb::axial{6, 0}, none, "rows * cols", true});
  cases.push_back({"axial negative rows and cols", q, k, v, out, cb::axial{-2, -3}, none, "rows", true});
  cases.push_back({"axial order not a value", q, k, v, out, cb::axial{2, 3, static_cast<cb::axial_order>(7)},
                   none, "order", true});
  cases.push_back({"pooling not a value", q, k, v, out, cb::fixed{0},
                   with([](auto& o) { o.pooling = static_cast<combiner_pooling>(9); }), "pooling", true});
  cases.push_back({"fixed negative span", q, k, v, out, cb::fixed{-1}, none, "span", true});
  cases.push_back({"learnable negative span", q, k, v, out, learn(&ids, {B, Hkv, L}, nullptr, {}, -2), none,
                   "span", true});
  cases.push_back({"learnable with neither", q, k, v, out, cb::learnable{}, none, "exactly one", true});
  cases.push_back(
      {"learnable with both", q, k, v, out, learn(&ids, {B, Hkv, L}, &mu, {Hkv, C, dk}), none, "both", true});
  cases.push_back(
      {"cluster id -1", q, k, v, out, learn(&ids_neg, {B, Hkv, L}, nullptr, {}), none, "cluster_ids", true});
  cases.push_back(
      {"cluster id L", q, k, v, out, learn(&ids_big, {B, Hkv, L}, nullptr, {}), none, "cluster_ids", true});
  cases.push_back({"cluster_ids [B + 1, Hkv, L]", q, k, v, out, learn(&ids, {B + 1, Hkv, L}, nullptr, {}),
                   none, "cluster_ids", true});
  cases.push_back({"cluster_ids [1, Hkv + 1, L]", q, k, v, out, learn(&ids, {1, Hkv + 1, L}, nullptr, {}),
                   none, "cluster_ids", true});
  cases.push_back({"cluster_ids [1, 1, L + 1]", q, k, v, out, learn(&ids, {1, 1, L + 1}, nullptr, {}), none,
                   "cluster_ids", true});
  cases.push_back({"cluster_ids [1, 1, L - 1]", q, k, v, out, learn(&ids, {1, 1, L - 1}, nullptr, {}), none,
                   "cluster_ids", true});
  cases.push_back(
      {"centroids dk + 1", q, k, v, out, learn(nullptr, {}, &mu, {Hkv, C, dk + 1}), none, "centroids", true});
  cases.push_back({"centroids for Hkv + 1 heads", q, k, v, out, learn(nullptr, {}, &mu, {Hkv + 1, C, dk}),
                   none, "centroids", true});
  cases.push_back(
      {"no centroids (C = 0)", q, k, v, out, learn(nullptr, {}, &mu, {Hkv, 0, dk}), none, "centroids", true});
  cases.push_back(
      {"centroid NaN", q, k, v, out, learn(nullptr, {}, &mu_nan, {1, C, dk}), none, "not finite", true});
  cases.push_back({"key_lengths > L", q, k, v, out, cb::logsparse{},
                   with([&](auto& o) { o.mask.key_lengths = lensv(lens_long, B); }), "key_lengths", true});
  cases.push_back({"key_lengths < 0", q, k, v, out, cb::fixed{0},
                   with([&](auto& o) { o.mask.key_lengths = lensv(lens_neg, B); }), "key_lengths", true});
  cases.push_back({"key_lengths extent B + 1", q, k, v, out, by_ids,
                   with([&](auto& o) { o.mask.key_lengths = lensv(lens_long, B + 1); }), "key_lengths",
                   true});
  cases.push_back(
      {"threads -1", q, k, v, out, cb::fixed{0}, with([](auto& o) { o.threads = -1; }), "threads", true});
  cases.push_back({"scale NaN", q, k, v, out, cb::logsparse{}, with([](auto& o) { o.scale = std::nan(""); }),
                   "scale", true});
  cases.push_back({"H not a multiple of Hkv", in(qd, {B, 3, L, dk}), k, v, outv({B, 3, L, dv}), cb::fixed{0},
                   none, nullptr, true});
  cases.push_back(
      {"k dk != q dk", q, in(kd, {B, Hkv, L, dk + 1}), v, out, cb::axial{2, 3}, none, nullptr, true});
  cases.push_back({"k batch != q batch", q, in(kd, {B + 1, Hkv, L, dk}), in(vd, {B + 1, Hkv, L, dv}), out,
                   by_ids, none, nullptr, true});
  cases.push_back({"v L != k L", q, k, in(vd, {B, Hkv, L + 1, dv}), out, cb::fixed{0}, none, nullptr, false});
  cases.push_back(
      {"v heads != k heads", q, k, in(vd, {B, 1, L, dv}), out, cb::logsparse{}, none, nullptr, false});
  cases.push_back({"out dv wrong", q, k, v, outv({B, H, L, dv + 1}), by_mu, none, "out", false});
  cases.push_back({"out L wrong", q, k, v, outv({B, H, L + 1, dv}), cb::fixed{0}, none, "out", false});
  cases.push_back({"out with stride 0", q, k, v,
                   view<float, 4>(od.data(), {B, H, L, dv}, {H * L * dv, L * dv, 0, 1}), cb::fixed{0}, none,
                   "out", false});
  cases.push_back(
      {"null q", cview(nullptr, q.extents(), q.strides()), k, v, out, cb::fixed{0}, none, nullptr, true});
  cases.push_back({"null out", q, k, v, view<float, 4>(nullptr, out.extents(), out.strides()),
                   cb::logsparse{}, none, nullptr, false});
  cases.push_back({"negative extent", in(qd, {B, H, -1, dk}), k, v, outv({B, H, -1, dv}), cb::fixed{0}, none,
                   nullptr, true});

  for (const bad& c : cases) {
    INFO("case: " << c.name << ", plan " << any_name(c.plan));
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO("arch " << Arch::name);
      auto call = [&] {
        std::visit([&](const auto& p) { attnkit::combiner_attention<Arch>(c.q, c.k, c.v, c.out, p, c.opt); },
                   c.plan);
      };
      REQUIRE_THROWS_AS(call(), attnkit::invalid_argument);
      if (c.needle) REQUIRE_THROWS_WITH(call(), Contains(c.needle));
      INFO("out must be untouched");
      REQUIRE(same_bits(od, od_before));
    });
    if (c.probabilities)
      REQUIRE_THROWS_AS(
          std::visit([&](const auto& p) { (void)attnkit::combiner_probabilities(c.q, c.k, p, c.opt); },
                     c.plan),
          attnkit::invalid_argument);
  }
}

TEST_CASE("combiner: empty extents do nothing", "[combiner][shapes]") {
  // 128 elements hold every shape below (the largest, 2 x 2 x 6 x 4, has 96)
  std::vector<double> q(128, 0.5), k(128, 0.25), v(128, 1.0), o(128, -3.0);
  const std::vector<double> o_before = o;
  std::vector<std::int32_t> ids(8, 0);
  std::vector<float> mu(64, 0.5f);
  using cview = view<const double, 4>;
  for (bool causal : {false, true})
    // {B, H, Hkv, L, dk, dv}: no batch, no position, no head, no value dimension
    for (const auto& e : std::vector<std::array<index_t, 6>>{
             {0, 2, 1, 6, 4, 2}, {2, 2, 1, 0, 4, 2}, {1, 0, 1, 6, 4, 2}, {2, 2, 2, 6, 4, 0}}) {
      const index_t B = e[0], H = e[1], Hkv = e[2], L = e[3], dk = e[4], dv = e[5];
      INFO("B=" << B << " H=" << H << " Hkv=" << Hkv << " L=" << L << " dv=" << dv << " causal=" << causal);
      const auto Q = cview::contiguous(q.data(), {B, H, L, dk});
      const auto K = cview::contiguous(k.data(), {B, Hkv, L, dk});
      const auto V = cview::contiguous(v.data(), {B, Hkv, L, dv});
      const auto O = view<double, 4>::contiguous(o.data(), {B, H, L, dv});
      cb::learnable by_ids, by_mu;
      by_ids.cluster_ids = view<const std::int32_t, 3>::contiguous(ids.data(), {1, 1, L});
      by_mu.centroids = view<const float, 3>::contiguous(mu.data(), {1, 3, dk});
      combiner_options opt;
      opt.causal = causal;
      const std::vector<any_plan> plans{cb::fixed{0},
                                        cb::fixed{3},
                                        cb::logsparse{},
                                        cb::axial{L == 0 ? 0 : 2, 3},
                                        cb::axial{1, L, cb::axial_order::mixture},
                                        by_ids,
                                        by_mu};
      for (const any_plan& plan : plans) {
        INFO("plan " << any_name(plan));
        for_each_arch([&](auto arch) {
          using Arch = decltype(arch);
          REQUIRE_NOTHROW(std::visit(
              [&](const auto& p) { attnkit::combiner_attention<Arch>(Q, K, V, O, p, opt); }, plan));
        });
        REQUIRE(same_bits(o, o_before));
        const auto p =
            std::visit([&](const auto& x) { return attnkit::combiner_probabilities(Q, K, x, opt); }, plan);
        REQUIRE(p.extents() == (std::array<index_t, 4>{B, H, L, L}));
      }
    }
}

// ---------------------------------------------------------------------------------------------
// Learnable routing: assign_clusters and kmeans

TEMPLATE_TEST_CASE("combiner assign_clusters: the argmax cluster, -1 for padding, same ids on every arch",
                   "[combiner][clusters]", float, double) {
  using T = TestType;
  cspec s;
  s.B = 3;
  s.Hkv = 2;
  s.H = 2;
  s.L = 200;
  s.dk = 16;
  s.key_lengths = std::vector<std::int64_t>{200, 150, 0};
  s.lk = layout::bshd_padded;
  const auto d = make_cdata(s, 1300);
  const auto in = to_type<T>(d);
  const auto opt = d.options();
  for (index_t mh : {s.Hkv, index_t(1)})
    for (index_t C : {1, 7, 40}) {
      const auto mu = random_centroids(mh, C, s.dk, 1301 + static_cast<std::uint64_t>(C));
      INFO("centroids [" << mh << ", " << C << ", " << s.dk << "]");
      std::vector<std::int32_t> first;
      for_each_arch([&](auto arch) {
        using Arch = decltype(arch);
        INFO("arch " << Arch::name);
        const auto ids = cb::assign_clusters<Arch>(in.k.cv(), mu.view3(), opt.mask);
        REQUIRE(ids.extents() == (std::array<index_t, 3>{s.B, s.Hkv, s.L}));
        index_t bad = 0, clear = 0;
        for (index_t b = 0; b < s.B; ++b)
          for (index_t h = 0; h < s.Hkv; ++h)
            for (index_t j = 0; j < s.L; ++j) {
              const std::int32_t id = ids(b, h, j);
              if (j >= d.len(b)) {
                bad += id != -1;
                continue;
              }
              // naive argmax in double (of the values the kernel reads)
              std::vector<double> sc(static_cast<std::size_t>(C));
              for (index_t c = 0; c < C; ++c)
                for (index_t p = 0; p < s.dk; ++p)
                  sc[static_cast<std::size_t>(c)] += static_cast<double>(in.k.v(b, h, j, p)) *
                                                     static_cast<double>(mu.view3()(mh == 1 ? 0 : h, c, p));
              const auto best = std::max_element(sc.begin(), sc.end()) - sc.begin();
              double second = -HUGE_VAL;
              for (index_t c = 0; c < C; ++c)
                if (c != best) second = std::max(second, sc[static_cast<std::size_t>(c)]);
              if (id < 0 || id >= C) {
                ++bad;
              } else if (sc[static_cast<std::size_t>(best)] - second > 1e-4) {
                ++clear;
                bad += id != best;
              } else {
                bad += sc[static_cast<std::size_t>(id)] < sc[static_cast<std::size_t>(best)] - 1e-4;
              }
            }
        REQUIRE(bad == 0);
        REQUIRE(clear > (C == 1 ? 0 : 300));
        std::vector<std::int32_t> got(ids.data(), ids.data() + ids.size());
        if (first.empty())
          first = got;
        else
          REQUIRE(got == first);
        // Padding keys are never read.
        auto kg = to_buffer<T>(d.k, s.lk);
        for (index_t b = 0; b < s.B; ++b)
          for (index_t h = 0; h < s.Hkv; ++h)
            for (index_t j = d.len(b); j < s.L; ++j)
              for (index_t p = 0; p < s.dk; ++p) kg.v(b, h, j, p) = std::numeric_limits<T>::quiet_NaN();
        const auto ids_g = cb::assign_clusters<Arch>(kg.cv(), mu.view3(), opt.mask);
        REQUIRE(std::vector<std::int32_t>(ids_g.data(), ids_g.data() + ids_g.size()) == got);
      });
    }
}

TEMPLATE_TEST_CASE("combiner kmeans: seeded, deterministic, unit-norm centroids of shape [Hkv, C, dk]",
                   "[combiner][clusters]", float, double) {
  using T = TestType;
  cspec s;
  s.B = 2;
  s.Hkv = 2;
  s.H = 2;
  s.L = 100;
  s.dk = 16;
  s.key_lengths = std::vector<std::int64_t>{100, 60};
  const auto d = make_cdata(s, 1400);
  const auto in = to_type<T>(d);
  const auto mask = d.options().mask;
  auto unit_rows = [&](const attnkit::tensor<float, 3>& mu) {
    index_t bad = 0;
    for (index_t h = 0; h < mu.extent(0); ++h)
      for (index_t c = 0; c < mu.extent(1); ++c) {
        double n2 = 0;
        for (index_t p = 0; p < mu.extent(2); ++p) n2 += double(mu(h, c, p)) * double(mu(h, c, p));
        bad += !(std::fabs(std::sqrt(n2) - 1) <= 1e-5);
      }
    return bad;
  };
  auto bits = [](const attnkit::tensor<float, 3>& mu) {
    return std::vector<float>(mu.data(), mu.data() + mu.size());
  };
  for (index_t C : {1, 5, 16})
    for (int iters : {0, 1, 10}) {
      INFO("clusters " << C << " iterations " << iters);
      const auto a = cb::kmeans(in.k.cv(), C, iters, 7, mask);
      REQUIRE(a.extents() == (std::array<index_t, 3>{s.Hkv, C, s.dk}));
      REQUIRE(unit_rows(a) == 0);
      REQUIRE(same_bits(bits(cb::kmeans(in.k.cv(), C, iters, 7, mask)), bits(a)));
      // one cluster after an iteration is the normalized mean of all keys, whatever the seed
      if (C > 1 || iters == 0) REQUIRE(!same_bits(bits(cb::kmeans(in.k.cv(), C, iters, 8, mask)), bits(a)));
      for_each_arch([&](auto arch) {
        using Arch = decltype(arch);
        INFO("arch " << Arch::name);
        REQUIRE(same_bits(bits(cb::kmeans<Arch>(in.k.cv(), C, iters, 7, mask)), bits(a)));
      });
      // NaN in padding keys changes nothing.
      auto kg = to_buffer<T>(d.k, s.lk);
      for (index_t h = 0; h < s.Hkv; ++h)
        for (index_t j = 60; j < s.L; ++j)
          for (index_t p = 0; p < s.dk; ++p) kg.v(1, h, j, p) = std::numeric_limits<T>::quiet_NaN();
      REQUIRE(same_bits(bits(cb::kmeans(kg.cv(), C, iters, 7, mask)), bits(a)));
      // Without iterations every centroid is a normalized key of its kv head.
      if (iters == 0)
        for (index_t h = 0; h < s.Hkv; ++h)
          for (index_t c = 0; c < C; ++c) {
            double best = HUGE_VAL;
            for (index_t b = 0; b < s.B; ++b)
              for (index_t j = 0; j < d.len(b); ++j) {
                double n2 = 0, diff = 0;
                for (index_t p = 0; p < s.dk; ++p) n2 += d.k(b, h, j, p) * d.k(b, h, j, p);
                for (index_t p = 0; p < s.dk; ++p)
                  diff = std::max(diff, std::fabs(d.k(b, h, j, p) / std::sqrt(n2) - double(a(h, c, p))));
                best = std::min(best, diff);
              }
            REQUIRE(best <= 1e-6);
          }
      // The centroids route every key to a cluster: the learnable plan runs on them.
      cb::learnable plan;
      plan.centroids = a.cview();
      auto out = make_buffer<T>({s.B, s.H, s.L, 4}, layout::contiguous);
      auto v = make_buffer<T>({s.B, s.Hkv, s.L, 4}, layout::contiguous, T(0.5));
      auto q = to_buffer<T>(d.q, s.lq);
      attnkit::combiner_attention(q.cv(), in.k.cv(), v.cv(), out.v, plan, d.options());
      index_t wrong = 0;  // every visible output is 0.5 (all values are), padding rows too
      for_each_index(out.v.extents(), [&](const std::array<index_t, 4>& ix) {
        wrong += std::fabs(double(at(out.v, ix)) - 0.5) > 1e-6;
      });
      REQUIRE(wrong == 0);
    }
  REQUIRE_THROWS_AS(cb::kmeans(in.k.cv(), 0, 10, 1, mask), attnkit::invalid_argument);
  REQUIRE_THROWS_AS(cb::kmeans(in.k.cv(), 3, -1, 1, mask), attnkit::invalid_argument);
  const std::vector<std::int64_t> no_keys{0, 0};
  attnkit::mask empty_mask;
  empty_mask.key_lengths = view<const std::int64_t, 1>(no_keys.data(), {2}, {1});
  REQUIRE_THROWS_AS(cb::kmeans(in.k.cv(), 3, 10, 1, empty_mask), attnkit::invalid_argument);
}

// The engine under the plans: a combiner_block over one run of keys, each column with its own key
// end in any order (increasing as on a causal diagonal, decreasing, equal, zero, with gaps), so the
// steps leave out leading, trailing and middle column registers (core/flash.hpp: flash_step over
// a register range), against softmax over the visible keys in fp64. Also with a second run and a
// hidden row, which split the steps elsewhere.
TEMPLATE_TEST_CASE(
    "combiner engine: columns with any key windows, steps over register ranges, run in "
    "pieces and resumed, vs fp64",
    "[combiner][engine]", float, double) {
  using T = TestType;
  using Arch = attnkit::simd::native;
  using blk_t = attnkit::detail::combiner_block<Arch, T>;
  constexpr index_t Br = blk_t::Br;
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;  // the bounds of this file's header
  auto rng = attnkit_test::seeded_rng(0xE61E);
  for (const index_t dk : {index_t(8), index_t(33)})
    for (const index_t nkeys : {index_t(1), index_t(17), index_t(150), index_t(300)})
      for (int pattern = 0; pattern < 6; ++pattern)
        for (int starts = 0; starts < 3; ++starts)
          for (const index_t ncols : {index_t(1), Br / 2 + 1, Br}) {
            const index_t dv = dk + 3;
            std::vector<T> q(static_cast<std::size_t>(ncols * dk)), k(static_cast<std::size_t>(nkeys * dk)),
                v(static_cast<std::size_t>(nkeys * dv));
            for (auto* x : {&q, &k, &v})
              for (T& y : *x) y = static_cast<T>(rng.uniform(-1, 1));
            std::vector<index_t> kend(static_cast<std::size_t>(ncols)),
                kstart(static_cast<std::size_t>(ncols), 0);
            for (index_t c = 0; c < ncols; ++c) {
              const index_t up = std::min(nkeys, c + 1), down = std::max<index_t>(0, nkeys - c);
              index_t e = nkeys;
              switch (pattern) {
                case 0:
                  e = up;
                  break;  // causal diagonal
                case 1:
                  e = down;
                  break;  // reversed
                case 2:
                  e = c % 3 == 0 ? 0 : up;
                  break;  // gaps
                case 3:
                  e = static_cast<index_t>(rng.uniform(0, 1) * static_cast<double>(nkeys + 1));
                  break;
                case 4:
                  e = (c / 16) % 2 == 0 ? nkeys : std::min(nkeys, index_t(5));
                  break;  // middle registers
                default:
                  e = nkeys;
                  break;  // all equal
              }
              e = std::min(e, nkeys);
              kend[static_cast<std::size_t>(c)] = e;
              // windows: none, sliding (start c + 1 of the end's run), random inside [0, end]
              if (starts == 1) kstart[static_cast<std::size_t>(c)] = std::min(e, c + 1);
              if (starts == 2)
                kstart[static_cast<std::size_t>(c)] =
                    static_cast<index_t>(rng.uniform(0, 1) * static_cast<double>(e + 1)) % (e + 1);
            }
            const bool hide = pattern == 5 && nkeys > 3;  // row 2 hidden from column 0
            const index_t split = nkeys / 3;              // two runs: [0, split) and [split, nkeys)
            const T qscale = T(0.7);
            using vs_t = attnkit::detail::value_source<T>;
            auto first = [&](blk_t& b) { b.add(k.data(), dk, 1, vs_t{v.data(), dv, 1, dv, 0}, split); };
            auto second = [&](blk_t& b) {
              b.add(k.data() + split * dk, dk, 1, vs_t{v.data() + split * dv, dv, 1, dv, 0}, nkeys - split);
            };
            auto begin = [&](blk_t& b) {
              b.begin(
                  ncols, [&](index_t c) { return q.data() + c * dk; }, 1, qscale,
                  [&](index_t c) { return kend[static_cast<std::size_t>(c)]; });
              if (starts > 0) b.start_at([&](index_t c) { return kstart[static_cast<std::size_t>(c)]; });
            };
            // three ways to the same columns: one run; a run per part; the second part in a block
            // resumed from the first (its windows then start at 0 of its own panel)
            for (int way = 0; way < 3; ++way) {
              blk_t blk(dk, dv), res(dk, dv);
              begin(blk);
              first(blk);
              if (hide && split > 2) blk.restrict_row(2, ~std::uint64_t(1));
              if (way > 0) blk.run();
              blk_t* fin = &blk;
              if (way == 2) {
                res.resume(
                    blk,
                    [&](index_t c) {
                      return std::max<index_t>(0, kend[static_cast<std::size_t>(c)] - split);
                    },
                    dv);
                if (starts > 0)
                  res.start_at([&](index_t c) {
                    return std::max<index_t>(0, kstart[static_cast<std::size_t>(c)] - split);
                  });
                fin = &res;
              }
              second(*fin);
              if (hide && split <= 2) fin->restrict_row(way == 2 ? 2 - split : 2, ~std::uint64_t(1));
              fin->run();
              std::vector<T> out(static_cast<std::size_t>(ncols * dv), T(-7));
              fin->finish_all(
                  ncols, 0, dv, [&](index_t c) { return out.data() + c * dv; }, 1);
              for (index_t c = 0; c < ncols; ++c) {
                const index_t e = kend[static_cast<std::size_t>(c)], a = kstart[static_cast<std::size_t>(c)];
                auto seen = [&](index_t j) { return j >= a && j < e && !(hide && c == 0 && j == 2); };
                std::vector<double> w(static_cast<std::size_t>(nkeys));
                double mx = -std::numeric_limits<double>::infinity(), sum = 0;
                for (index_t j = 0; j < nkeys; ++j) {
                  if (!seen(j)) continue;
                  double s = 0;
                  for (index_t p = 0; p < dk; ++p) s += double(q[c * dk + p]) * double(k[j * dk + p]);
                  w[static_cast<std::size_t>(j)] = s * double(qscale);  // exp2 units
                  mx = std::max(mx, w[static_cast<std::size_t>(j)]);
                }
                for (index_t j = 0; j < nkeys; ++j)
                  if (seen(j)) sum += std::exp2(w[static_cast<std::size_t>(j)] - mx);
                for (index_t x = 0; x < dv; ++x) {
                  double ref = 0;
                  for (index_t j = 0; j < nkeys; ++j)
                    if (seen(j))
                      ref += std::exp2(w[static_cast<std::size_t>(j)] - mx) / sum * double(v[j * dv + x]);
                  INFO("dk " << dk << " keys " << nkeys << " pattern " << pattern << " starts " << starts
                             << " cols " << ncols << " way " << way << " col " << c << " window [" << a
                             << ", " << e << ")");
                  REQUIRE(std::abs(double(out[c * dv + x]) - ref) <= tol * (1 + std::abs(ref)));
                }
              }
            }
          }
}
