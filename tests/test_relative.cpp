// attnkit tests: CoAtNet's 2D relative attention (relative_attention_2d, docs/design.md §4.5) against the
// fp64 reference of tests/reference/relative_ref.hpp, pre_softmax and post_softmax, both offset
// conventions, for every SIMD architecture the build can run; and its exact properties: the two
// conventions are related by flipping the table, the bias is translation-equivariant, a zero
// table is full attention, padding keys never reach an output, the bits do not depend on the
// thread count; argument checks and empty extents. The inputs are float-representable, so one
// fp64 reference serves the float and the double runs.
//
// Tolerance, derived from the sizes (not fitted): every output element is checked against
//   |y - ref| <= N u mag,   N = 2 (dk + 2) a + 4 wmax + 6 zmax + 2 L + 4 nt + 16,
// u the unit roundoff of T (2^-24 float, 2^-53 double), L the number of visible keys, nt = ceil(L / 64)
// the number of key tiles (64: the smallest tile of any arch), and per row (ref::relative_row)
// a = max_j |scale| sum_p |q_p k_jp|, wmax = max_j |w_ij|, zmax = max_j |softmax argument|;
// mag = sum_j p_ij |v_j| (+ sum_j |w_ij| |v_j| post_softmax) is the reference's sum of absolute terms.
// First-order worst-case analysis (gamma_n = n u) of one output element:
//   logit (log2 domain; the ln 2 of exp2 undoes the log2(e) factors): q is pre-multiplied by
//     fl(scale log2 e) (2u a), a dk-term dot product (dk u a), the bias fl(w fl(log2 e)) (2u |w|),
//     their sum (u zmax), minus the running max (u 2 zmax), exp2 <= 3 ulp (6u, test_math.cpp):
//     every weight carries a relative error eps_w <= u ((dk + 2) a + 2 wmax + 3 zmax + 6);
//   a relative error eps_w of every weight moves the normalized sum by <= eps_w (mag + |y|) <= 2 eps_w mag;
//   O = sum_j p_j v_j and l = sum_j p_j accumulate L terms plus one rescale by alpha per key tile
//     (alpha itself cancels in O / l): (L + 2 nt) u each, relative to mag and |y| <= mag;
//   1 / l and the product: 2u. post_softmax adds sum_j w_ij v_j, an L-term product accumulated over
//     nt tiles ((L + nt) u of sum_j |w_ij| |v_j|), and the final sum (u).
// Summed (post_softmax's terms fall under 2 (L + 2 nt) u mag, as mag holds both sums):
// 2 ((dk + 2) a + 2 wmax + 3 zmax + 6) + 2 (L + 2 nt) + 4 = N. A row that sees no key, or whose values are 0,
// has mag = 0 and must be exact. Measured over this file (rng seeds 0-3): max |y - ref| / (u mag) = 5.5 in
// float and 9.5 in double with q, k, v in [-1, 1) and |w| < 1.5, and 86 / 107 in the large-logit case (|z| up
// to ~90, where N is in the thousands); never above 10% of a row's N. max |y - ref| = 1.2e-5 in float and
// 3.9e-14 in double (1.9e-4 and 7.4e-13 with the large logits).
#include <algorithm>
#include <array>
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

#include "reference/common.hpp"
#include "reference/kernel_instances.hpp"
#include "reference/relative_ref.hpp"

namespace {

using namespace attnkit_test;
using attnkit::relative_grid;
using attnkit::relative_mode;
using attnkit::relative_offset;
using attnkit::relative_options;
using dtensor = attnkit::tensor<double, 4>;

const char* mode_name(relative_mode m) {
  return m == relative_mode::pre_softmax ? "pre_softmax" : "post_softmax";
}
const char* offset_name(relative_offset o) {
  return o == relative_offset::key_minus_query ? "key_minus_query" : "query_minus_key";
}

const relative_mode kModes[] = {relative_mode::pre_softmax, relative_mode::post_softmax};
const relative_offset kOffsets[] = {relative_offset::key_minus_query, relative_offset::query_minus_key};

/// One problem: q [B, H, L, dk], k [B, Hkv, L, dk], v [B, Hkv, L, dv], table [H, 2 rows - 1, 2 cols - 1].
struct rspec {
  index_t B = 2, H = 2, Hkv = 1, rows = 1, cols = 1, dk = 3, dv = 5;
  relative_mode mode = relative_mode::pre_softmax;
  relative_offset offset = relative_offset::key_minus_query;
  std::vector<std::int64_t> key_lengths;  ///< empty: no padding
  double scale = 0;
  double qk_range = 1;   ///< q and k uniform in [-qk_range, qk_range)
  double w_range = 1.5;  ///< table uniform in [-w_range, w_range)
  layout lq = layout::contiguous, lk = layout::contiguous, lv = layout::contiguous, lo = layout::contiguous,
         lt = layout::contiguous;  ///< lt: the table as the last three axes of a [1, H, 2R-1, 2C-1] buffer
  index_t L() const { return rows * cols; }
  relative_grid grid() const { return relative_grid{rows, cols}; }
  std::array<index_t, 4> table_extents() const {
    return {1, H, std::max<index_t>(2 * rows - 1, 0), std::max<index_t>(2 * cols - 1, 0)};
  }
};

std::string describe(const rspec& s) {
  std::ostringstream os;
  os << "B=" << s.B << " H=" << s.H << " Hkv=" << s.Hkv << " grid=" << s.rows << "x" << s.cols
     << " dk=" << s.dk << " dv=" << s.dv << " " << mode_name(s.mode) << " " << offset_name(s.offset)
     << " scale=" << s.scale << " qk_range=" << s.qk_range << " w_range=" << s.w_range << " key_lengths=";
  if (s.key_lengths.empty()) os << "none";
  for (std::size_t b = 0; b < s.key_lengths.size(); ++b) os << (b ? "," : "") << s.key_lengths[b];
  os << " layouts q/k/v/out/table=" << layout_name(s.lq) << "/" << layout_name(s.lk) << "/"
     << layout_name(s.lv) << "/" << layout_name(s.lo) << "/" << layout_name(s.lt);
  return os.str();
}

/// The data of a problem in double (float-representable values), contiguous.
struct rdata {
  rspec sp;
  dtensor q, k, v, table;  ///< table: [1, H, 2R - 1, 2C - 1]
  std::vector<std::int64_t> lens;

  relative_options options(int threads = 1) const {
    relative_options o;
    o.mode = sp.mode;
    o.offset = sp.offset;
    o.scale = sp.scale;
    o.threads = threads;
    if (!lens.empty())
      o.mask.key_lengths = view<const std::int64_t, 1>(lens.data(), {static_cast<index_t>(lens.size())}, {1});
    return o;
  }
};

/// The rank-3 view of the last three axes of a rank-4 view (its index 0 along axis 0).
template <class T>
view<T, 3> last3(const view<T, 4>& x) {
  return view<T, 3>(x.data(), {x.extent(1), x.extent(2), x.extent(3)},
                    {x.stride(1), x.stride(2), x.stride(3)});
}

/// Uniform float-representable values; `same_outer`: every index of axis 0 holds the data of index 0
/// (what a view with stride 0 on that axis reads).
void fill_fr(dtensor& x, test_rng& gen, double lo, double hi, bool same_outer) {
  for_each_index(x.extents(), [&](const std::array<index_t, 4>& ix) {
    at(x.view(), ix) = same_outer && ix[0] > 0 ? at(x.view(), {0, ix[1], ix[2], ix[3]})
                                               : static_cast<double>(static_cast<float>(gen.uniform(lo, hi)));
  });
}

rdata make_rdata(const rspec& sp, std::uint64_t salt) {
  rdata d;
  d.sp = sp;
  auto gen = seeded_rng(salt);
  d.q = dtensor({sp.B, sp.H, sp.L(), sp.dk});
  d.k = dtensor({sp.B, sp.Hkv, sp.L(), sp.dk});
  d.v = dtensor({sp.B, sp.Hkv, sp.L(), sp.dv});
  d.table = dtensor(sp.table_extents());
  fill_fr(d.q, gen, -sp.qk_range, sp.qk_range, sp.lq == layout::broadcast_b);
  fill_fr(d.k, gen, -sp.qk_range, sp.qk_range, sp.lk == layout::broadcast_b);
  fill_fr(d.v, gen, -1, 1, sp.lv == layout::broadcast_b);
  fill_fr(d.table, gen, -sp.w_range, sp.w_range, false);
  d.lens = std::vector<std::int64_t>(sp.key_lengths);  // (from a temporary: GCC 12 -Wnonnull false positive)
  return d;
}

/// A problem's inputs as T in its layouts.
template <class T>
struct tdata {
  rspec sp;
  strided_buffer<T> q, k, v, table;
  view<const T, 3> tv() const { return last3(table.cv()); }
};

template <class T>
tdata<T> to_type(const rdata& d) {
  return tdata<T>{d.sp, to_buffer<T>(d.q, d.sp.lq), to_buffer<T>(d.k, d.sp.lk), to_buffer<T>(d.v, d.sp.lv),
                  to_buffer<T>(d.table, d.sp.lt)};
}

template <class T>
strided_buffer<T> make_out(const rspec& sp) {
  return make_buffer<T>({sp.B, sp.H, sp.L(), sp.dv}, sp.lo, T(-7777.25));
}

template <class Arch, class T>
strided_buffer<T> run_rel(const tdata<T>& in, const relative_options& opt, const view<const T, 3>& table) {
  auto out = make_out<T>(in.sp);
  attnkit::relative_attention_2d<Arch>(in.q.cv(), in.k.cv(), in.v.cv(), table, in.sp.grid(), out.v, opt);
  return out;
}

template <class Arch, class T>
strided_buffer<T> run_rel(const tdata<T>& in, const relative_options& opt) {
  return run_rel<Arch>(in, opt, in.tv());
}

ref::relative_result reference(const rdata& d) {
  return ref::relative_attention_2d<double, double>(d.q.cview(), d.k.cview(), d.v.cview(),
                                                    last3(d.table.cview()), d.sp.grid(), d.options());
}

template <class T>
constexpr double unit_roundoff() {
  return std::numeric_limits<T>::epsilon() / 2;
}

/// N of the header comment for one reference row.
double op_count(const ref::relative_row& r, index_t dk) {
  const double L = static_cast<double>(r.visible), nt = std::ceil(L / 64.0);
  return 2.0 * static_cast<double>(dk + 2) * r.max_dot + 4 * r.max_w + 6 * r.max_z + 2 * L + 4 * nt + 16;
}

/// Checks |got - want| <= slack N u mag for every element with ONE assertion (slack 2: two kernels
/// each within N u mag of the same exact value); on failure reports the number of violations and
/// the worst element. NaN or Inf in `got` is a violation.
template <class T, class G>
void require_rel_close(const view<const G, 4>& got, const dtensor& want, const ref::relative_result& r,
                       index_t dk, const std::string& what, double slack = 1) {
  REQUIRE(got.extents() == want.extents());
  const double u = unit_roundoff<T>();
  const index_t H = want.extent(1), L = want.extent(2);
  index_t violations = 0, count = 0;
  double worst_ratio = 0, worst_got = 0, worst_want = 0, worst_mag = 0, worst_n = 0;
  std::array<index_t, 4> worst_ix{};
  for_each_index(got.extents(), [&](const std::array<index_t, 4>& ix) {
    ++count;
    const double n = slack * op_count(r.rows[static_cast<std::size_t>((ix[0] * H + ix[1]) * L + ix[2])], dk);
    const double g = static_cast<double>(at(got, ix)), w = at(want.cview(), ix), a = at(r.mag.cview(), ix);
    const double diff = std::fabs(g - w);
    const double ratio = g == w ? 0.0 : (std::isfinite(diff) && a > 0 ? diff / (u * a) : INFINITY);
    if (!(ratio <= n)) ++violations;
    if (!(ratio / n <= worst_ratio / std::max(worst_n, 1.0))) {
      worst_ratio = ratio;
      worst_ix = ix;
      worst_got = g;
      worst_want = w;
      worst_mag = a;
      worst_n = n;
    }
  });
  std::ostringstream os;
  os.precision(10);
  os << what << ": " << violations << " of " << count << " elements violate |y - ref| <= N u mag, u = " << u
     << "; worst at " << index_string(worst_ix) << ": y = " << worst_got << ", ref = " << worst_want
     << ", mag = " << worst_mag << ", |diff| / (u mag) = " << worst_ratio << " vs N = " << worst_n;
  INFO(os.str());
  REQUIRE(violations == 0);
}

template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "float" : "double";
}

/// The T kernel on every arch against the fp64 reference (and nothing written outside out's view).
template <class T>
void check_type(const rdata& d, const ref::relative_result& want) {
  const auto in = to_type<T>(d);
  const auto opt = d.options();
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    INFO("arch " << Arch::name << " " << type_name<T>());
    const auto out = run_rel<Arch>(in, opt);
    REQUIRE(out.touched_outside() == 0);
    require_rel_close<T>(out.cv(), want.out, want, d.sp.dk, "relative_attention_2d vs fp64");
  });
}

/// Float and double kernels on every arch against the fp64 reference of the spec's data.
void check_spec(const rspec& sp, std::uint64_t salt) {
  INFO(describe(sp));
  const auto d = make_rdata(sp, salt);
  const auto want = reference(d);
  check_type<float>(d, want);
  check_type<double>(d, want);
}

rspec grid_spec(index_t rows, index_t cols, index_t dk, index_t dv) {
  rspec s;
  s.rows = rows;
  s.cols = cols;
  s.dk = dk;
  s.dv = dv;
  return s;
}

/// Grids: degenerate (1 x 1, 1 x N, N x 1), non-square both ways, square, L below and above one
/// 64-query block and one 128-key tile (64 = 8 x 8 exactly, 65, 129, 131, 143, 196), prime L.
const std::array<index_t, 2> kGrids[] = {{1, 1},  {1, 2},  {2, 1},  {1, 7},   {7, 1},   {3, 5},
                                         {5, 3},  {7, 7},  {1, 13}, {13, 1},  {8, 8},   {5, 13},
                                         {9, 11}, {2, 33}, {3, 43}, {1, 131}, {11, 13}, {14, 14}};
/// (dk, dv): odd but one dv, no multiple of a SIMD width (4, 8, 16) but 1, dv != dk both ways.
const std::array<index_t, 2> kDims[] = {{1, 1}, {3, 5}, {5, 3}, {7, 13}, {17, 9}, {33, 7}, {13, 19}, {9, 2}};

/// A view's elements as an fp64 tensor.
template <class G>
dtensor to_double(const view<const G, 4>& x) {
  dtensor t(x.extents());
  for_each_index(x.extents(), [&](const std::array<index_t, 4>& ix) {
    at(t.view(), ix) = static_cast<double>(at(x, ix));
  });
  return t;
}

/// The queries `qs` (indices along axis 2) of a [B, H, L, D] tensor, in that order.
dtensor select_rows(const dtensor& x, const std::vector<index_t>& qs) {
  const index_t n = static_cast<index_t>(qs.size());
  dtensor t({x.extent(0), x.extent(1), n, x.extent(3)});
  for_each_index(t.extents(), [&](const std::array<index_t, 4>& ix) {
    at(t.view(), ix) = x(ix[0], ix[1], qs[static_cast<std::size_t>(ix[2])], ix[3]);
  });
  return t;
}

/// The queries `qs` of a reference result: output, mag and row facts.
ref::relative_result select_rows(const ref::relative_result& r, const std::vector<index_t>& qs) {
  ref::relative_result x;
  x.out = select_rows(r.out, qs);
  x.mag = select_rows(r.mag, qs);
  const index_t B = r.out.extent(0), H = r.out.extent(1), L = r.out.extent(2);
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t q : qs) x.rows.push_back(r.rows[static_cast<std::size_t>((b * H + h) * L + q)]);
  return x;
}

void set_zero(dtensor& x) { std::fill(x.data(), x.data() + x.size(), 0.0); }

/// Runs problems a and b in float and double on every arch: each against its fp64 reference, and
/// b's outputs at the queries qb against a's at qa (the same translated problem) within `budget`.
void require_moved(const rdata& a, const rdata& b, const ref::relative_result& want_a,
                   const ref::relative_result& want_b, const std::vector<index_t>& qa,
                   const std::vector<index_t>& qb, const ref::relative_result& budget, double nops,
                   const char* what) {
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const auto in_a = to_type<T>(a), in_b = to_type<T>(b);
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO("arch " << Arch::name << " " << type_name<T>());
      const auto out_a = run_rel<Arch>(in_a, a.options());
      const auto out_b = run_rel<Arch>(in_b, b.options());
      require_rel_close<T>(out_a.cv(), want_a.out, want_a, nops, "original vs fp64");
      require_rel_close<T>(out_b.cv(), want_b.out, want_b, nops, "moved vs fp64");
      require_rel_close<T>(select_rows(to_double(out_b.cv()), qb).cview(),
                           select_rows(to_double(out_a.cv()), qa), budget, nops, what, 2);
    });
  };
  run(float{});
  run(double{});
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The kernel against the fp64 reference

TEST_CASE("relative: pre and post softmax, both offset conventions, vs fp64 over grids and dims",
          "[relative][shapes]") {
  std::uint64_t salt = 100;
  std::size_t t = 0;  // runs over (grid, mode, offset); t + grid index rotates Hkv and scale over all four
  for (std::size_t gi = 0; gi < std::size(kGrids); ++gi)
    for (relative_mode mode : kModes)
      for (relative_offset off : kOffsets) {
        const auto& g = kGrids[gi];
        const auto& dims = kDims[t % std::size(kDims)];
        rspec s = grid_spec(g[0], g[1], dims[0], dims[1]);
        s.mode = mode;
        s.offset = off;
        s.Hkv = (t + gi) % 2 ? 2 : 1;
        if (t % 3 == 1) s.key_lengths = std::vector<std::int64_t>{s.L(), (2 * s.L()) / 3 + 1};
        if ((t + gi) % 4 == 3) s.scale = 0.3;
        ++t;
        check_spec(s, ++salt);
      }
}

TEST_CASE("relative: large logits and table entries stay finite and accurate", "[relative][logits]") {
  std::uint64_t salt = 200;
  for (const auto& g : {std::array<index_t, 2>{9, 11}, std::array<index_t, 2>{14, 14}})
    for (relative_mode mode : kModes)
      for (relative_offset off : kOffsets) {
        rspec s = grid_spec(g[0], g[1], 16, 7);
        s.mode = mode;
        s.offset = off;
        s.qk_range = 4;  // |scale q.k| up to 64
        s.w_range = 30;  // a table that alone decides the softmax
        check_spec(s, ++salt);
      }
}

TEST_CASE("relative: grouped heads (4 over Hkv = 1, 2, 4), dv != dk, every strided layout of every view",
          "[relative][layout]") {
  const layout in_layouts[] = {layout::contiguous, layout::padded, layout::bshd,     layout::bshd_padded,
                               layout::dim_major,  layout::gapped, layout::reversed, layout::broadcast_b};
  // out: every layout but broadcast (an out stride 0 is rejected); the table: every layout
  // (broadcast_b strides the unused axis 0; bshd interleaves heads and rows, dim_major transposes
  // the table, reversed runs its rows backwards)
  const layout out_layouts[] = {layout::contiguous, layout::padded, layout::bshd,    layout::bshd_padded,
                                layout::dim_major,  layout::gapped, layout::reversed};
  std::uint64_t salt = 300;
  std::size_t t = 0;
  for (index_t hkv : {1, 2, 4})
    for (const auto& g : {std::array<index_t, 2>{5, 7}, std::array<index_t, 2>{9, 11}})
      for (std::size_t li = 0; li < std::size(in_layouts); ++li) {
        rspec s = grid_spec(g[0], g[1], 5, 11);
        s.B = 2;
        s.H = 4;
        s.Hkv = hkv;
        s.mode = kModes[t % 2];
        s.offset = kOffsets[(t / 2) % 2];
        s.lq = in_layouts[li];
        s.lk = in_layouts[(li + 3) % 8];
        s.lv = in_layouts[(li + 5) % 8];
        s.lo = out_layouts[li % 7];
        s.lt = in_layouts[(li + 1 + t) % 8];
        if (t % 3 == 2) s.key_lengths = std::vector<std::int64_t>{s.L() - 3, s.L()};
        ++t;
        check_spec(s, ++salt);
      }
}

TEST_CASE("relative: a table view with stride 0 over heads (every head shares one table)",
          "[relative][layout]") {
  for (relative_mode mode : kModes) {
    rspec s = grid_spec(6, 7, 5, 4);
    s.H = 3;
    s.mode = mode;
    INFO(describe(s));
    auto d = make_rdata(s, 400 + static_cast<std::uint64_t>(mode));
    for_each_index(d.table.extents(), [&](const std::array<index_t, 4>& ix) {
      at(d.table.view(), ix) = at(d.table.cview(), {0, 0, ix[2], ix[3]});
    });
    const auto want = reference(d);
    auto run = [&](auto tag) {
      using T = decltype(tag);
      const auto in = to_type<T>(d);
      const auto t3 = in.tv();
      const view<const T, 3> shared(t3.data(), t3.extents(), {0, t3.stride(1), t3.stride(2)});
      for_each_arch([&](auto arch) {
        using Arch = decltype(arch);
        INFO("arch " << Arch::name << " " << type_name<T>());
        const auto out = run_rel<Arch>(in, d.options(), shared);
        REQUIRE(out.touched_outside() == 0);
        require_rel_close<T>(out.cv(), want.out, want, s.dk, "stride-0 table vs fp64");
      });
    };
    run(float{});
    run(double{});
  }
}

// ---------------------------------------------------------------------------------------------
// Exact properties

TEST_CASE("relative: query_minus_key with the table flipped in both axes equals key_minus_query",
          "[relative][offset]") {
  // w'[h, a, b] = w[h, 2H - 2 - a, 2W - 2 - b] gives w'[-dy, -dx] = w[dy, dx]: the two calls
  // compute the same bias from the same floats, so they agree bit for bit (and with fp64).
  std::uint64_t salt = 500;
  for (const auto& g :
       {std::array<index_t, 2>{1, 1}, std::array<index_t, 2>{1, 7}, std::array<index_t, 2>{3, 5},
        std::array<index_t, 2>{2, 33}, std::array<index_t, 2>{14, 14}})
    for (relative_mode mode : kModes) {
      rspec s = grid_spec(g[0], g[1], 7, 5);
      s.H = 3;
      s.mode = mode;
      s.key_lengths = std::vector<std::int64_t>{s.L(), (s.L() + 1) / 2};
      INFO(describe(s));
      const auto d = make_rdata(s, ++salt);
      rdata flipped = make_rdata(s, salt);
      flipped.sp.offset = relative_offset::query_minus_key;
      const index_t R = 2 * s.rows - 1, C = 2 * s.cols - 1;
      for_each_index(d.table.extents(), [&](const std::array<index_t, 4>& ix) {
        at(flipped.table.view(), ix) = at(d.table.cview(), {0, ix[1], R - 1 - ix[2], C - 1 - ix[3]});
      });
      const auto want = reference(d);
      const auto want_flipped = reference(flipped);
      require_rel_close<double>(want_flipped.out.cview(), want.out, want, s.dk, "fp64 references");
      auto run = [&](auto tag) {
        using T = decltype(tag);
        const auto in = to_type<T>(d);
        const auto in_flipped = to_type<T>(flipped);
        // the same flip as a view of the original table: negative strides on both table axes
        const auto t3 = in.tv();
        const view<const T, 3> flip_view(&at(t3, {0, R - 1, C - 1}), t3.extents(),
                                         {t3.stride(0), -t3.stride(1), -t3.stride(2)});
        for_each_arch([&](auto arch) {
          using Arch = decltype(arch);
          INFO("arch " << Arch::name << " " << type_name<T>());
          const auto kmq = run_rel<Arch>(in, d.options());
          const auto qmk = run_rel<Arch>(in_flipped, flipped.options());
          const auto qmk_view = run_rel<Arch>(in, flipped.options(), flip_view);
          require_rel_close<T>(kmq.cv(), want.out, want, s.dk, "key_minus_query vs fp64");
          require_same_bits(qmk.cv(), kmq.cv(), "query_minus_key (flipped copy) vs key_minus_query");
          require_same_bits(qmk_view.cv(), kmq.cv(), "query_minus_key (flipped view) vs key_minus_query");
        });
      };
      run(float{});
      run(double{});
    }
}

TEST_CASE(
    "relative: pre_softmax with q = k = 0 is a convolution: values moved on a larger grid move the "
    "output (away from the borders)",
    "[relative][equivariance]") {
  // With q = k = 0 the logits are the table alone: out_i = sum_j softmax_j(w[pos_j - pos_i]) v_j.
  // A table that is finite only for |dy| <= ry, |dx| <= rx and -1000 elsewhere (exp(-1000 - max)
  // is exactly 0 in float and in double) makes the output of a query whose window lies inside the
  // grid sum_{|d| <= r} softmax(w)[d] v_{pos_i + d}: it depends on the values around the query
  // only, through their offsets. So the values of a small grid copied into a larger grid at
  // (oy, ox), random values around them, give at every query at least r from the small grid's
  // border the small grid's output moved by (oy, ox). The two kernels' outputs are within N u mag
  // of the same exact value, so within 2 N u mag of each other (N of the large grid's rows).
  const index_t hs = 6, ws = 7, hl = 13, wl = 12, ry = 2, rx = 1, heads = 2, dv = 5;
  std::uint64_t salt = 600;
  for (relative_offset off : kOffsets)
    for (const auto& o :
         {std::array<index_t, 2>{0, 0}, std::array<index_t, 2>{7, 5}, std::array<index_t, 2>{3, 2}}) {
      INFO(offset_name(off) << ": the " << hs << "x" << ws << " grid at (" << o[0] << ", " << o[1] << ") of "
                            << hl << "x" << wl);
      auto gen = seeded_rng(++salt);
      // the window w[h, dy, dx], |dy| <= ry, |dx| <= rx, the same in both grids' tables
      std::vector<double> win(static_cast<std::size_t>(heads * (2 * ry + 1) * (2 * rx + 1)));
      for (double& x : win) x = static_cast<double>(static_cast<float>(gen.uniform(-1.5, 1.5)));
      auto make = [&](index_t rows, index_t cols) {
        rspec s = grid_spec(rows, cols, 3, dv);
        s.B = 1;
        s.H = heads;
        s.offset = off;
        rdata d = make_rdata(s, salt * 1000 + static_cast<std::uint64_t>(rows));
        set_zero(d.q);
        set_zero(d.k);
        for_each_index(d.table.extents(), [&](const std::array<index_t, 4>& ix) {
          const index_t dy = ix[2] - (rows - 1), dx = ix[3] - (cols - 1);
          at(d.table.view(), ix) =
              std::abs(dy) <= ry && std::abs(dx) <= rx
                  ? win[static_cast<std::size_t>((ix[1] * (2 * ry + 1) + dy + ry) * (2 * rx + 1) + dx + rx)]
                  : -1000.0;
        });
        return d;
      };
      const rdata small = make(hs, ws);
      rdata large = make(hl, wl);
      for (index_t y = 0; y < hs; ++y)
        for (index_t x = 0; x < ws; ++x)
          for (index_t e = 0; e < dv; ++e)
            large.v(0, 0, (o[0] + y) * wl + o[1] + x, e) = small.v(0, 0, y * ws + x, e);
      std::vector<index_t> qs_small, qs_large;  // the interior queries and the same queries moved
      for (index_t y = ry; y < hs - ry; ++y)
        for (index_t x = rx; x < ws - rx; ++x) {
          qs_small.push_back(y * ws + x);
          qs_large.push_back((o[0] + y) * wl + o[1] + x);
        }
      const auto want_s = reference(small), want_l = reference(large);
      const auto want = select_rows(want_s, qs_small), budget = select_rows(want_l, qs_large);
      // the fp64 reference has the property too (the same nonzero terms)
      require_rel_close<double>(select_rows(want_l.out, qs_large).cview(), want.out, budget, 3,
                                "fp64: large grid at the moved queries vs small grid", 2);
      require_moved(small, large, want_s, want_l, qs_small, qs_large, budget, 3,
                    "large grid at the moved queries vs small grid");
    }
}

TEST_CASE("relative: post_softmax with q = k = 0 is translation-equivariant on the whole grid",
          "[relative][equivariance]") {
  // With q = k = 0, out_i = (1/L) sum_j v_j + sum_j w[pos_j - pos_i] v_j. With values that are 0
  // outside a patch P at s, the second sum is sum_{d in P} w[s + d - pos_i] P_d (every offset of
  // the grid is in the table): moving the patch by t moves the output by t at every query i with
  // i + t on the grid, and the mean term does not change. Two kernel runs: slack 2.
  const index_t rows = 9, cols = 10, heads = 2, dv = 4, ph = 3, pw = 4, sy = 1, sx = 2, ty = 4, tx = 4;
  std::uint64_t salt = 700;
  for (relative_offset off : kOffsets) {
    rspec s = grid_spec(rows, cols, 5, dv);
    s.B = 1;
    s.H = heads;
    s.mode = relative_mode::post_softmax;
    s.offset = off;
    INFO(describe(s) << "; a " << ph << "x" << pw << " patch at (" << sy << ", " << sx << ") moved by (" << ty
                     << ", " << tx << ")");
    rdata a = make_rdata(s, ++salt);
    set_zero(a.q);
    set_zero(a.k);
    rdata b = make_rdata(s, salt);  // the same table
    set_zero(b.q);
    set_zero(b.k);
    set_zero(a.v);
    set_zero(b.v);
    auto gen = seeded_rng(salt + 5000);
    for (index_t y = 0; y < ph; ++y)
      for (index_t x = 0; x < pw; ++x)
        for (index_t e = 0; e < dv; ++e) {
          const double p = static_cast<double>(static_cast<float>(gen.uniform(-1, 1)));
          a.v(0, 0, (sy + y) * cols + sx + x, e) = p;
          b.v(0, 0, (sy + ty + y) * cols + sx + tx + x, e) = p;
        }
    std::vector<index_t> qa, qb;
    for (index_t y = 0; y + ty < rows; ++y)
      for (index_t x = 0; x + tx < cols; ++x) {
        qa.push_back(y * cols + x);
        qb.push_back((y + ty) * cols + x + tx);
      }
    const auto want_a = reference(a), want_b = reference(b);
    const auto want = select_rows(want_a, qa);
    require_rel_close<double>(select_rows(want_b.out, qb).cview(), want.out, want, 5,
                              "fp64: moved vs original", 2);
    require_moved(a, b, want_a, want_b, qa, qb, want, 5, "moved output vs original output moved");
  }
}

TEST_CASE("relative: a zero table gives full_attention's result (pre and post softmax)", "[relative][full]") {
  // pre: softmax(s + 0) = softmax(s); post: softmax(s) + 0. Two kernels within N u mag of the same
  // exact value each: slack 2 (their bits may differ: the kernels order their sums differently).
  std::uint64_t salt = 800;
  for (const auto& g : {std::array<index_t, 2>{7, 7}, std::array<index_t, 2>{9, 11},
                        std::array<index_t, 2>{14, 14}, std::array<index_t, 2>{1, 131}})
    for (relative_mode mode : kModes) {
      rspec s = grid_spec(g[0], g[1], 9, 6);
      s.H = 4;
      s.Hkv = 2;
      s.mode = mode;
      s.key_lengths = std::vector<std::int64_t>{s.L(), s.L() / 2 + 1};
      if (mode == relative_mode::post_softmax) s.scale = 0.4;
      INFO(describe(s));
      rdata d = make_rdata(s, ++salt);
      set_zero(d.table);
      const auto want = reference(d);
      auto run = [&](auto tag) {
        using T = decltype(tag);
        const auto in = to_type<T>(d);
        attnkit::attention_options fo;
        fo.scale = s.scale;
        fo.mask = d.options().mask;
        fo.threads = 1;
        for_each_arch([&](auto arch) {
          using Arch = decltype(arch);
          INFO("arch " << Arch::name << " " << type_name<T>());
          const auto rel = run_rel<Arch>(in, d.options());
          auto full = make_out<T>(s);
          attnkit::full_attention<Arch>(in.q.cv(), in.k.cv(), in.v.cv(), full.v, fo);
          require_rel_close<T>(rel.cv(), want.out, want, s.dk, "zero table vs fp64");
          require_rel_close<T>(rel.cv(), to_double(full.cv()), want, s.dk, "zero table vs full_attention", 2);
        });
      };
      run(float{});
      run(double{});
    }
}

TEST_CASE("relative: key_lengths 0, 1, partial, full per batch entry; NaN / Inf in padding change no bit",
          "[relative][mask]") {
  std::uint64_t salt = 900;
  for (const auto& g : {std::array<index_t, 2>{9, 11}, std::array<index_t, 2>{14, 14}})
    for (relative_mode mode : kModes)
      for (relative_offset off : kOffsets) {
        rspec s = grid_spec(g[0], g[1], 5, 3);
        const index_t L = s.L();
        s.B = 6;
        s.mode = mode;
        s.offset = off;
        // 0, 1, partial (inside the first 64- and 128-key tiles), full, one short, one past 128
        s.key_lengths = std::vector<std::int64_t>{0, 1, L / 2, L, L - 1, std::min<index_t>(129, L)};
        s.lk = g[0] == 9 ? layout::padded : layout::contiguous;
        s.lv = g[0] == 9 ? layout::contiguous : layout::bshd_padded;
        INFO(describe(s));
        const auto d = make_rdata(s, ++salt);
        const auto want = reference(d);
        auto run = [&](auto tag) {
          using T = decltype(tag);
          auto in = to_type<T>(d);
          const T poison[] = {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                              -std::numeric_limits<T>::infinity()};
          for_each_arch([&](auto arch) {
            using Arch = decltype(arch);
            INFO("arch " << Arch::name << " " << type_name<T>());
            const auto clean = run_rel<Arch>(in, d.options());
            REQUIRE(clean.touched_outside() == 0);
            require_rel_close<T>(clean.cv(), want.out, want, s.dk, "vs fp64");
            // batch entry 0 sees no key: every output is +0
            index_t nonzero = 0;
            for_each_index(std::array<index_t, 4>{1, s.H, L, s.dv}, [&](const std::array<index_t, 4>& ix) {
              const T y = at(clean.v, ix), zero = T(0);
              nonzero += std::memcmp(&y, &zero, sizeof(T)) != 0;
            });
            REQUIRE(nonzero == 0);
            auto poisoned = to_type<T>(d);
            std::size_t n = 0;
            for (index_t b = 0; b < s.B; ++b)
              for (index_t j = static_cast<index_t>(d.lens[static_cast<std::size_t>(b)]); j < L; ++j) {
                for (index_t p = 0; p < s.dk; ++p) at(poisoned.k.v, {b, 0, j, p}) = poison[n++ % 3];
                for (index_t e = 0; e < s.dv; ++e) at(poisoned.v.v, {b, 0, j, e}) = poison[n++ % 3];
              }
            const auto dirty = run_rel<Arch>(poisoned, d.options());
            require_same_bits(dirty.cv(), clean.cv(), "NaN / Inf in padding keys and values");
          });
        };
        run(float{});
        run(double{});
      }
}

TEST_CASE("relative: output bits do not depend on the thread count", "[relative][threads]") {
  std::uint64_t salt = 1000;
  for (const auto& g : {std::array<index_t, 2>{9, 11}, std::array<index_t, 2>{14, 14}})
    for (relative_mode mode : kModes) {
      rspec s = grid_spec(g[0], g[1], 7, 5);
      s.H = 3;
      s.mode = mode;
      s.offset = mode == relative_mode::pre_softmax ? relative_offset::query_minus_key
                                                    : relative_offset::key_minus_query;
      s.key_lengths = std::vector<std::int64_t>{s.L(), s.L() - 10};
      INFO(describe(s));
      const auto d = make_rdata(s, ++salt);
      auto run = [&](auto tag) {
        using T = decltype(tag);
        const auto in = to_type<T>(d);
        for_each_arch([&](auto arch) {
          using Arch = decltype(arch);
          INFO("arch " << Arch::name << " " << type_name<T>());
          const auto one = run_rel<Arch>(in, d.options(1));
          for (int threads : {2, 3, 0}) {
            INFO("threads " << threads);
            const auto many = run_rel<Arch>(in, d.options(threads));
            require_same_bits(many.cv(), one.cv(), "vs 1 thread");
          }
        });
      };
      run(float{});
      run(double{});
    }
}

// ---------------------------------------------------------------------------------------------
// Arguments

TEST_CASE("relative: invalid arguments throw attnkit::invalid_argument and leave out untouched",
          "[relative][errors]") {
  using Catch::Matchers::Contains;
  using cview = view<const float, 4>;
  using tview = view<const float, 3>;
  const index_t B = 2, H = 2, Hkv = 1, L = 6, dk = 3, dv = 4;
  const relative_grid g23{2, 3};
  // room for every (slightly too large) shape below
  const std::vector<float> qd(static_cast<std::size_t>((B + 1) * (H + 2) * (L + 2) * (dk + 1)), 0.25f);
  const std::vector<float> kd(static_cast<std::size_t>((B + 1) * (H + 2) * (L + 2) * (dk + 1)), 0.5f);
  const std::vector<float> vd(static_cast<std::size_t>((B + 1) * (H + 2) * (L + 2) * (dv + 1)), 0.75f);
  const std::vector<float> td(static_cast<std::size_t>((H + 2) * 8 * 8), 0.125f);
  const std::vector<float> bd(static_cast<std::size_t>(B * H * L * L), 0.125f);
  std::vector<float> od(static_cast<std::size_t>((B + 1) * (H + 2) * (L + 2) * (dv + 2)), -7777.25f);
  const std::vector<float> od_before = od;
  const auto in = [](const std::vector<float>& x, std::array<index_t, 4> e) {
    return cview::contiguous(x.data(), e);
  };
  const auto tab = [&](std::array<index_t, 3> e) { return tview::contiguous(td.data(), e); };
  const auto outv = [&](std::array<index_t, 4> e) { return view<float, 4>::contiguous(od.data(), e); };
  const cview q = in(qd, {B, H, L, dk}), K = in(kd, {B, Hkv, L, dk}), V = in(vd, {B, Hkv, L, dv});
  const tview table = tab({H, 3, 5});
  const view<float, 4> out = outv({B, H, L, dv});
  const std::vector<std::int64_t> lens{L, 3}, lens_long{L, 3, 1}, lens_big{L + 1, 3}, lens_neg{2, -1};
  const auto lensv = [](const std::vector<std::int64_t>& l, index_t n) {
    return view<const std::int64_t, 1>(l.data(), {n}, {1});
  };

  // Every valid call works (and is undone), so each failure below comes from its one change.
  for (relative_mode mode : kModes)
    for (relative_offset off : kOffsets) {
      INFO("valid " << mode_name(mode) << " " << offset_name(off));
      relative_options o;
      o.mode = mode;
      o.offset = off;
      o.mask.key_lengths = lensv(lens, B);
      REQUIRE_NOTHROW(attnkit::relative_attention_2d(q, K, V, table, g23, out, o));
      REQUIRE(!same_bits(od, od_before));
      od = od_before;
    }

  struct bad {
    std::string name;
    cview q, k, v;
    tview table;
    relative_grid grid;
    view<float, 4> out;
    relative_options opt;
    const char* needle;  // a phrase the message must contain, or null
  };
  const relative_options none;
  auto with = [](auto f) {
    relative_options o;
    f(o);
    return o;
  };
  std::vector<bad> cases;
  // grid and sequence lengths
  cases.push_back({"grid 3 x 3 != L", q, K, V, tab({H, 5, 5}), {3, 3}, out, none, "rows * cols"});
  cases.push_back({"grid 1 x 5 != L", q, K, V, tab({H, 1, 9}), {1, 5}, out, none, "rows * cols"});
  cases.push_back({"grid 0 x 6", q, K, V, tab({H, 0, 11}), {0, 6}, out, none, "rows * cols"});
  cases.push_back({"grid -2 x -3 (product 6)", q, K, V, tab({H, 0, 0}), {-2, -3}, out, none, "rows * cols"});
  cases.push_back({"grid -1 x 0 (product 0), L = 0",
                   in(qd, {B, H, 0, dk}),
                   in(kd, {B, Hkv, 0, dk}),
                   in(vd, {B, Hkv, 0, dv}),
                   tab({H, 0, 0}),
                   {-1, 0},
                   outv({B, H, 0, dv}),
                   none,
                   "rows * cols"});
  cases.push_back({"Lq != Lk", q, in(kd, {B, Hkv, L + 1, dk}), in(vd, {B, Hkv, L + 1, dv}), table, g23, out,
                   none, "rows * cols"});
  cases.push_back({"Lq != Lk (Lk = grid)", in(qd, {B, H, L + 1, dk}), K, V, table, g23,
                   outv({B, H, L + 1, dv}), none, "rows * cols"});
  // table
  cases.push_back({"table [H, 3, 4]", q, K, V, tab({H, 3, 4}), g23, out, none, "table"});
  cases.push_back({"table [H, 4, 5]", q, K, V, tab({H, 4, 5}), g23, out, none, "table"});
  cases.push_back(
      {"table [H, 5, 3] (the transposed grid's)", q, K, V, tab({H, 5, 3}), g23, out, none, "table"});
  cases.push_back({"table [H + 1, 3, 5]", q, K, V, tab({H + 1, 3, 5}), g23, out, none, "table"});
  cases.push_back(
      {"table [1, 3, 5] (no broadcast over heads)", q, K, V, tab({1, 3, 5}), g23, out, none, "table"});
  cases.push_back({"table [Hkv, 3, 5] (heads of k, not of q)", in(qd, {B, 4, L, dk}), in(kd, {B, 2, L, dk}),
                   in(vd, {B, 2, L, dv}), tab({2, 3, 5}), g23, outv({B, 4, L, dv}), none, "table"});
  cases.push_back({"table 3 x 5 for a 3 x 2 grid", q, K, V, table, {3, 2}, out, none, "table"});
  cases.push_back({"table null", q, K, V, tview(nullptr, {H, 3, 5}, {15, 5, 1}), g23, out, none, "null"});
  // mask
  for (auto c : {attnkit::causal_mode::top_left, attnkit::causal_mode::bottom_right})
    cases.push_back(
        {"mask.causal", q, K, V, table, g23, out, with([&](auto& o) { o.mask.causal = c; }), "causal"});
  cases.push_back({"mask.bias given", q, K, V, table, g23, out, with([&](auto& o) {
                     o.mask.bias = in(bd, {B, H, L, L});
                   }),
                   "bias"});
  cases.push_back({"mask.bias [1, 1, 1, 1]", q, K, V, table, g23, out, with([&](auto& o) {
                     o.mask.bias = in(bd, {1, 1, 1, 1});
                   }),
                   "bias"});
  cases.push_back({"key_lengths extent B + 1", q, K, V, table, g23, out,
                   with([&](auto& o) { o.mask.key_lengths = lensv(lens_long, B + 1); }), "key_lengths"});
  cases.push_back({"key_lengths extent B - 1", q, K, V, table, g23, out,
                   with([&](auto& o) { o.mask.key_lengths = lensv(lens, B - 1); }), "key_lengths"});
  cases.push_back({"key_lengths > L", q, K, V, table, g23, out,
                   with([&](auto& o) { o.mask.key_lengths = lensv(lens_big, B); }), "key_lengths"});
  cases.push_back({"key_lengths < 0", q, K, V, table, g23, out,
                   with([&](auto& o) { o.mask.key_lengths = lensv(lens_neg, B); }), "key_lengths"});
  cases.push_back({"key_lengths extent without data", q, K, V, table, g23, out, with([&](auto& o) {
                     o.mask.key_lengths = view<const std::int64_t, 1>(nullptr, {B}, {1});
                   }),
                   "key_lengths"});
  // options
  cases.push_back({"mode not a value", q, K, V, table, g23, out,
                   with([](auto& o) { o.mode = static_cast<relative_mode>(7); }), "mode"});
  cases.push_back({"offset not a value", q, K, V, table, g23, out,
                   with([](auto& o) { o.offset = static_cast<relative_offset>(-1); }), "offset"});
  cases.push_back({"threads -1", q, K, V, table, g23, out, with([](auto& o) { o.threads = -1; }), "threads"});
  cases.push_back({"scale NaN", q, K, V, table, g23, out,
                   with([](auto& o) { o.scale = std::numeric_limits<double>::quiet_NaN(); }), "scale"});
  cases.push_back({"scale Inf", q, K, V, table, g23, out,
                   with([](auto& o) { o.scale = std::numeric_limits<double>::infinity(); }), "scale"});
  // extents, heads, null data, strides
  cases.push_back({"negative L",
                   in(qd, {B, H, -1, dk}),
                   in(kd, {B, Hkv, -1, dk}),
                   in(vd, {B, Hkv, -1, dv}),
                   table,
                   {1, -1},
                   outv({B, H, -1, dv}),
                   none,
                   "negative"});
  cases.push_back(
      {"negative dv", q, K, in(vd, {B, Hkv, L, -1}), table, g23, outv({B, H, L, -1}), none, "negative"});
  cases.push_back({"negative B", in(qd, {-1, H, L, dk}), in(kd, {-1, Hkv, L, dk}), in(vd, {-1, Hkv, L, dv}),
                   table, g23, outv({-1, H, L, dv}), none, "negative"});
  cases.push_back({"H not a multiple of Hkv", q, in(kd, {B, 3, L, dk}), in(vd, {B, 3, L, dv}), table, g23,
                   out, none, "multiple"});
  cases.push_back({"k batch B + 1", q, in(kd, {B + 1, Hkv, L, dk}), in(vd, {B + 1, Hkv, L, dv}), table, g23,
                   out, none, "k has shape"});
  cases.push_back({"k dk + 1", q, in(kd, {B, Hkv, L, dk + 1}), V, table, g23, out, none, "k has shape"});
  cases.push_back({"v Hkv + 1", q, K, in(vd, {B, Hkv + 1, L, dv}), table, g23, out, none, "v has shape"});
  cases.push_back({"out dv + 1", q, K, V, table, g23, outv({B, H, L, dv + 1}), none, "out has shape"});
  cases.push_back({"out H + 1", q, K, V, table, g23, outv({B, H + 1, L, dv}), none, "out has shape"});
  cases.push_back({"out with stride 0", q, K, V, table, g23,
                   view<float, 4>(od.data(), {B, H, L, dv}, {H * L * dv, L * dv, 0, 1}), none,
                   "elements overlap"});
  cases.push_back({"null q", cview(nullptr, q.extents(), q.strides()), K, V, table, g23, out, none, "null"});
  cases.push_back({"null k", q, cview(nullptr, K.extents(), K.strides()), V, table, g23, out, none, "null"});
  cases.push_back({"null v", q, K, cview(nullptr, V.extents(), V.strides()), table, g23, out, none, "null"});
  cases.push_back(
      {"null out", q, K, V, table, g23, view<float, 4>(nullptr, out.extents(), out.strides()), none, "null"});

  for (const bad& c : cases) {
    INFO("case: " << c.name);
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO("arch " << Arch::name);
      auto call = [&] { attnkit::relative_attention_2d<Arch>(c.q, c.k, c.v, c.table, c.grid, c.out, c.opt); };
      REQUIRE_THROWS_AS(call(), attnkit::invalid_argument);
      if (c.needle) REQUIRE_THROWS_WITH(call(), Contains(c.needle));
      INFO("out must be untouched");
      REQUIRE(same_bits(od, od_before));
    });
  }
}

TEST_CASE(
    "relative: empty extents (B, heads, L with a 0-row or 0-column grid, dv = 0) work; dk = 0 is the table "
    "alone",
    "[relative][shapes]") {
  std::uint64_t salt = 1100;
  // {B, H, Hkv, rows, cols, dk, dv}
  const std::array<index_t, 7> shapes[] = {
      {0, 2, 1, 2, 3, 3, 4}, {2, 0, 1, 2, 3, 3, 4}, {2, 0, 0, 2, 3, 3, 4},
      {2, 2, 1, 0, 0, 3, 4}, {2, 2, 1, 0, 5, 3, 4}, {2, 2, 1, 3, 0, 3, 4},
      {2, 2, 1, 2, 3, 3, 0}, {2, 2, 1, 2, 3, 0, 4}, {2, 4, 2, 5, 3, 0, 7}};
  for (const auto& e : shapes)
    for (relative_mode mode : kModes) {
      rspec s = grid_spec(e[3], e[4], e[5], e[6]);
      s.B = e[0];
      s.H = e[1];
      s.Hkv = e[2];
      s.mode = mode;
      s.lo = layout::padded;
      if (s.B > 0) s.key_lengths = std::vector<std::int64_t>{s.L(), 0};
      INFO(describe(s));
      const auto d = make_rdata(s, ++salt);
      const auto want = reference(d);
      auto run = [&](auto tag) {
        using T = decltype(tag);
        const auto in = to_type<T>(d);
        for_each_arch([&](auto arch) {
          using Arch = decltype(arch);
          INFO("arch " << Arch::name << " " << type_name<T>());
          auto out = make_out<T>(s);
          REQUIRE_NOTHROW(attnkit::relative_attention_2d<Arch>(in.q.cv(), in.k.cv(), in.v.cv(), in.tv(),
                                                               s.grid(), out.v, d.options()));
          REQUIRE(out.touched_outside() == 0);
          require_rel_close<T>(out.cv(), want.out, want, s.dk, "vs fp64");
        });
      };
      run(float{});
      run(double{});
    }
  // null data is fine where there is nothing to read or write
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    INFO("arch " << Arch::name << ": null views of an L = 0 (0 x 0 grid) problem");
    using cv4 = view<const float, 4>;
    REQUIRE_NOTHROW(attnkit::relative_attention_2d<Arch>(
        cv4(nullptr, {2, 2, 0, 3}, {0, 0, 3, 1}), cv4(nullptr, {2, 1, 0, 3}, {0, 0, 3, 1}),
        cv4(nullptr, {2, 1, 0, 4}, {0, 0, 4, 1}), view<const float, 3>(nullptr, {2, 0, 0}, {0, 0, 1}),
        relative_grid{0, 0}, view<float, 4>(nullptr, {2, 2, 0, 4}, {0, 0, 4, 1})));
  });
}
