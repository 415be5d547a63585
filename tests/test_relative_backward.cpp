// attnkit tests: relative_attention_2d's log-sum-exp overload and relative_attention_2d_backward
// (CoAtNet's 2D relative attention, docs/design.md §4.5) against the fp64 reference of
// tests/reference/relative_backward_ref.hpp, pre_softmax and post_softmax, both offset conventions,
// for every SIMD architecture the build can run, in float and double; directional finite
// differences; equal bits for any thread count; padding keys and empty batch entries; dtable's sum
// over the batch and its exact zeros; argument checks. The inputs are float-representable, so one
// fp64 reference serves the float and the double runs.
//
// Tolerances. Every element of out, dq, dk, dv and dtable is a sum of terms; the reference also sums
// their magnitudes A (relative_backward_ref.hpp: |dS| = P (|dP| + AD), AD = |D| pre and
// |D| + 2 sum_j |w_ij| sum_p |dout_ip v_jp| post, whose table terms cancel in the kernel's
// D = dout . (out - O2); dv's weights P + |w| post; dtable's terms |dS| pre and dP's products post),
// and each element must satisfy |g - ref| <= eps A + tiny (one assertion per tensor). The budget is
// test_attention_backward.cpp's with the table as one more logit (pre) or weight (post) term.
// float, u = 2^-24, eps = 5e-5 (~840 u):
//   - logits, log2 units: q pre-scaled by fl(scale log2 e) (2u), a dk <= 64-term dot product (<= 64 u
//     relative to |scale| sum_p |q_p k_p| <= ~3 here), the window fl(w fl(log2 e)) (2u |w|, |w| < 1.5)
//     and the sum (u |z|): <= ~1.5e-5 absolute in the worst case, ~1e-6 in practice; every recomputed
//     P_ij moves by a factor exp(+-that), and by |lse| u more (P is recomputed from lse rounded to T,
//     |lse| <= ln 256 + max |z| ~ 10 here: 6e-7);
//   - dP and D are dot products over dv <= 64 terms: <= 64 u = 3.8e-6 relative to their terms'
//     magnitudes (AD holds post_softmax's cancelling ones), ~sqrt(dv) u in practice;
//   - the sums over <= 256 keys, <= 4 x 256 (head, query) columns or, for dtable, <= B L = 768 pairs
//     of one offset add <= n u (4.6e-5 for n = 768, attained only if every rounding has the same
//     sign) and ~sqrt(n) u in practice.
//   Together ~2e-5 in a realistic worst case for the largest shapes (dk = dv = 64, L = 256), well
//   within eps. out is held to the same eps against A = sum_j (P_ij + |w_ij| post) |v_j|: the
//   forward's first-order worst case (test_relative.cpp's N u) is <= ~1000 u for these sizes and its
//   measured maximum ~10 u. lse: |lse - ref| <= 2e-5 absolute (the logits' error plus the log's
//   rounding), -inf exactly for a row without keys.
// double: the same budget with u = 2^-53: eps = 1e-12, tiny = 1e-15, lse 1e-12.
// Where A = 0 (rows without keys, padding keys, table offsets no pair uses) the tolerance is tiny;
// the dedicated tests below require exact zeros there.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include <attnkit/attnkit.hpp>

#include "reference/common.hpp"
#include "reference/kernel_instances.hpp"
#include "reference/relative_backward_ref.hpp"

namespace {

using namespace attnkit_test;
using attnkit::relative_grid;
using attnkit::relative_mode;
using attnkit::relative_offset;
using attnkit::relative_options;
using dtensor = attnkit::tensor<double, 4>;

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

const char* mode_name(relative_mode m) {
  return m == relative_mode::pre_softmax ? "pre_softmax" : "post_softmax";
}
const char* offset_name(relative_offset o) {
  return o == relative_offset::key_minus_query ? "key_minus_query" : "query_minus_key";
}
template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "float" : "double";
}

const relative_mode kModes[] = {relative_mode::pre_softmax, relative_mode::post_softmax};
const relative_offset kOffsets[] = {relative_offset::key_minus_query, relative_offset::query_minus_key};

/// Views whose last axis runs backwards (a negative stride), as bits of bspec::neg.
enum neg_bits : unsigned {
  neg_q = 1,
  neg_k = 2,
  neg_v = 4,
  neg_table = 8,
  neg_dout = 16,
  neg_out = 32,
  neg_dq = 64,
  neg_dk = 128,
  neg_dv = 256,
  neg_dtable = 512,
};

/// One problem: q [B, H, L, dk], k [B, Hkv, L, dk], v [B, Hkv, L, dv], table [H, 2 rows - 1, 2 cols - 1],
/// dout [B, H, L, dv], and the layouts of every input and output. The table, lse and dtable are the
/// last three axes of [1, H, 2R - 1, 2C - 1] and [1, B, H, L] buffers in their layouts.
struct bspec {
  index_t B = 1, H = 4, Hkv = 1, rows = 1, cols = 1, dk = 8, dv = 8;
  relative_mode mode = relative_mode::pre_softmax;
  relative_offset offset = relative_offset::key_minus_query;
  std::vector<std::int64_t> key_lengths;  ///< empty: no padding
  double scale = 0;
  double qk_range = 1;   ///< q and k uniform in [-qk_range, qk_range)
  double w_range = 1.5;  ///< table uniform in [-w_range, w_range)
  layout lq = layout::contiguous, lk = layout::contiguous, lv = layout::contiguous, lt = layout::contiguous,
         ldo = layout::contiguous;  ///< inputs
  layout lo = layout::contiguous, llse = layout::contiguous, lgq = layout::contiguous,
         lgk = layout::contiguous, lgv = layout::contiguous, lgt = layout::contiguous;  ///< outputs
  unsigned neg = 0;                                                                     ///< neg_bits
  index_t L() const { return rows * cols; }
  relative_grid grid() const { return relative_grid{rows, cols}; }
  std::array<index_t, 4> table_extents() const {
    return {1, H, std::max<index_t>(2 * rows - 1, 0), std::max<index_t>(2 * cols - 1, 0)};
  }
};

std::string describe(const bspec& s) {
  std::ostringstream os;
  os << "B=" << s.B << " H=" << s.H << " Hkv=" << s.Hkv << " grid=" << s.rows << "x" << s.cols
     << " dk=" << s.dk << " dv=" << s.dv << " " << mode_name(s.mode) << " " << offset_name(s.offset)
     << " scale=" << s.scale << " qk_range=" << s.qk_range << " w_range=" << s.w_range << " key_lengths=";
  if (s.key_lengths.empty()) os << "none";
  for (std::size_t b = 0; b < s.key_lengths.size(); ++b) os << (b ? "," : "") << s.key_lengths[b];
  os << " layouts q/k/v/table/dout=" << layout_name(s.lq) << "/" << layout_name(s.lk) << "/"
     << layout_name(s.lv) << "/" << layout_name(s.lt) << "/" << layout_name(s.ldo)
     << " out/lse/dq/dk/dv/dtable=" << layout_name(s.lo) << "/" << layout_name(s.llse) << "/"
     << layout_name(s.lgq) << "/" << layout_name(s.lgk) << "/" << layout_name(s.lgv) << "/"
     << layout_name(s.lgt) << " negated last axes=0x" << std::hex << s.neg;
  return os.str();
}

/// The data of a problem in double (float-representable values), contiguous.
struct bdata {
  bspec sp;
  dtensor q, k, v, table, dout;  ///< table: [1, H, 2R - 1, 2C - 1]
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

bdata make_bdata(const bspec& sp, std::uint64_t salt) {
  bdata d;
  d.sp = sp;
  auto gen = seeded_rng(salt);
  d.q = dtensor({sp.B, sp.H, sp.L(), sp.dk});
  d.k = dtensor({sp.B, sp.Hkv, sp.L(), sp.dk});
  d.v = dtensor({sp.B, sp.Hkv, sp.L(), sp.dv});
  d.table = dtensor(sp.table_extents());
  d.dout = dtensor({sp.B, sp.H, sp.L(), sp.dv});
  fill_fr(d.q, gen, -sp.qk_range, sp.qk_range, sp.lq == layout::broadcast_b);
  fill_fr(d.k, gen, -sp.qk_range, sp.qk_range, sp.lk == layout::broadcast_b);
  fill_fr(d.v, gen, -1, 1, sp.lv == layout::broadcast_b);
  fill_fr(d.table, gen, -sp.w_range, sp.w_range, false);
  fill_fr(d.dout, gen, -1, 1, sp.ldo == layout::broadcast_b);
  d.lens = std::vector<std::int64_t>(sp.key_lengths);
  return d;
}

/// Makes b's view run backwards along its last axis (the same elements).
template <class T>
void negate_last(strided_buffer<T>& b) {
  const view<T, 4>& v = b.v;
  if (v.extent(3) <= 0) return;
  b.v = view<T, 4>(v.data() + (v.extent(3) - 1) * v.stride(3), v.extents(),
                   {v.stride(0), v.stride(1), v.stride(2), -v.stride(3)});
}

/// Fresh storage in layout `lay` (last axis negated when `neg`) filled with `fill` outside the view.
template <class T>
strided_buffer<T> make_view(const std::array<index_t, 4>& ext, layout lay, bool neg, T fill) {
  auto b = make_buffer<T>(ext, lay, fill);
  if (neg) negate_last(b);
  return b;
}

/// An fp64 tensor as T in layout `lay` (last axis negated when `neg`).
template <class T>
strided_buffer<T> to_view(const dtensor& x, layout lay, bool neg) {
  auto b = make_view<T>(x.extents(), lay, neg, T(-5555.5));
  for_each_index(x.extents(),
                 [&](const std::array<index_t, 4>& ix) { at(b.v, ix) = static_cast<T>(at(x.cview(), ix)); });
  return b;
}

/// A problem's inputs as T in its layouts.
template <class T>
struct binputs {
  bspec sp;
  strided_buffer<T> q, k, v, table, dout;
  view<const T, 3> tv() const { return last3(table.cv()); }
};

template <class T>
binputs<T> to_type(const bdata& d) {
  const bspec& s = d.sp;
  return binputs<T>{s,
                    to_view<T>(d.q, s.lq, s.neg & neg_q),
                    to_view<T>(d.k, s.lk, s.neg & neg_k),
                    to_view<T>(d.v, s.lv, s.neg & neg_v),
                    to_view<T>(d.table, s.lt, s.neg & neg_table),
                    to_view<T>(d.dout, s.ldo, s.neg & neg_dout)};
}

/// The forward's out and lse, the backward's gradients, in the spec's output layouts.
template <class T>
struct bresult {
  strided_buffer<T> out, lse, dq, dk, dv, dtable;
  view<const T, 3> lse3() const { return last3(lse.cv()); }
  view<const T, 3> dtable3() const { return last3(dtable.cv()); }
  index_t touched_outside() const {
    return out.touched_outside() + lse.touched_outside() + dq.touched_outside() + dk.touched_outside() +
           dv.touched_outside() + dtable.touched_outside();
  }
};

/// Forward with lse, then backward, of one problem on one arch (table: the table view to use, or
/// the inputs' own).
template <class Arch, class T>
bresult<T> run(const binputs<T>& in, const relative_options& opt, const view<const T, 3>* table = nullptr) {
  const bspec& s = in.sp;
  const index_t L = s.L();
  const T fill = T(-7777.25);
  const auto te = s.table_extents();
  bresult<T> r{make_view<T>({s.B, s.H, L, s.dv}, s.lo, s.neg & neg_out, fill),
               make_view<T>({1, s.B, s.H, L}, s.llse, false, fill),
               make_view<T>({s.B, s.H, L, s.dk}, s.lgq, s.neg & neg_dq, fill),
               make_view<T>({s.B, s.Hkv, L, s.dk}, s.lgk, s.neg & neg_dk, fill),
               make_view<T>({s.B, s.Hkv, L, s.dv}, s.lgv, s.neg & neg_dv, fill),
               make_view<T>(te, s.lgt, s.neg & neg_dtable, fill)};
  const view<const T, 3> tab = table ? *table : in.tv();
  attnkit::relative_attention_2d<Arch>(in.q.cv(), in.k.cv(), in.v.cv(), tab, s.grid(), r.out.v,
                                       last3(r.lse.v), opt);
  attnkit::relative_attention_2d_backward<Arch>(in.q.cv(), in.k.cv(), in.v.cv(), tab, s.grid(), r.out.cv(),
                                                r.lse3(), in.dout.cv(), r.dq.v, r.dk.v, r.dv.v,
                                                last3(r.dtable.v), opt);
  return r;
}

ref::relative_gradients reference(const bdata& d) {
  return ref::relative_attention_2d_backward<double, double>(d.q.cview(), d.k.cview(), d.v.cview(),
                                                             last3(d.table.cview()), d.dout.cview(),
                                                             d.sp.grid(), d.options());
}

/// |got - want| <= eps * mag + tiny everywhere (ONE assertion), reporting the worst element. NaN or
/// Inf in `got` is a violation.
template <class G, std::size_t R>
void require_within(const view<const G, R>& got, const attnkit::tensor<double, R>& want,
                    const attnkit::tensor<double, R>& mag, double eps, double tiny, const std::string& what) {
  REQUIRE(got.extents() == want.extents());
  index_t bad = 0, count = 0;
  double worst = -1, wg = 0, ww = 0, wm = 0;
  std::array<index_t, R> wix{};
  for_each_index(got.extents(), [&](const std::array<index_t, R>& ix) {
    ++count;
    const double g = static_cast<double>(at(got, ix)), w = at(want.cview(), ix), m = at(mag.cview(), ix);
    const double tol = eps * m + tiny, diff = std::fabs(g - w);
    const double r = std::isfinite(diff) ? diff / tol : std::numeric_limits<double>::infinity();
    if (!(diff <= tol)) ++bad;
    if (!(r <= worst)) worst = r, wg = g, ww = w, wm = m, wix = ix;
  });
  std::ostringstream os;
  os.precision(10);
  os << what << ": " << bad << " of " << count << " elements violate |g - ref| <= " << eps << " * A + "
     << tiny << "; worst at " << index_string(wix) << ": g = " << wg << ", ref = " << ww << ", A = " << wm
     << " (" << worst << " x tol)";
  INFO(os.str());
  REQUIRE(bad == 0);
}

/// lse within grad_tol<T>::lse of the reference, -inf exactly where the reference is (ONE assertion).
template <class T>
void require_lse(const view<const T, 3>& got, const attnkit::tensor<double, 3>& want) {
  REQUIRE(got.extents() == want.extents());
  index_t bad = 0;
  double worst = -1, wg = 0, ww = 0;
  std::array<index_t, 3> wix{};
  for_each_index(got.extents(), [&](const std::array<index_t, 3>& ix) {
    const double g = static_cast<double>(at(got, ix)), w = at(want.cview(), ix);
    const double diff = g == w ? 0.0 : std::fabs(g - w);
    if (!(diff <= grad_tol<T>::lse)) ++bad;
    if (!(diff <= worst)) worst = diff, wg = g, ww = w, wix = ix;
  });
  std::ostringstream os;
  os.precision(10);
  os << "lse: " << bad << " rows differ from the reference by more than " << grad_tol<T>::lse
     << " (rows without a visible key must be -inf); worst at " << index_string(wix) << ": " << wg << " vs "
     << ww;
  INFO(os.str());
  REQUIRE(bad == 0);
}

/// out, lse and the four gradients of one run against the reference.
template <class T>
void require_result(const bresult<T>& r, const ref::relative_gradients& want, double slack = 1) {
  const double eps = slack * grad_tol<T>::eps, tiny = slack * grad_tol<T>::tiny;
  {
    INFO("storage around the output views keeps its fill value");
    REQUIRE(r.touched_outside() == 0);
  }
  require_within(r.out.cv(), want.out, want.aout, eps, tiny, "out");
  require_lse(r.lse3(), want.lse);
  require_within(r.dq.cv(), want.dq, want.adq, eps, tiny, "dq");
  require_within(r.dk.cv(), want.dk, want.adk, eps, tiny, "dk");
  require_within(r.dv.cv(), want.dv, want.adv, eps, tiny, "dv");
  require_within(r.dtable3(), want.dtable, want.adtable, eps, tiny, "dtable");
}

/// The T kernels on every arch against the fp64 reference of the spec's data.
template <class T>
void check_spec(const bspec& sp, std::uint64_t salt) {
  INFO(describe(sp));
  const bdata d = make_bdata(sp, salt);
  const ref::relative_gradients want = reference(d);
  const binputs<T> in = to_type<T>(d);
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    INFO("arch " << Arch::name << " " << type_name<T>());
    require_result(run<Arch>(in, d.options()), want);
  });
}

bspec grid_spec(index_t rows, index_t cols, index_t dk, index_t dv) {
  bspec s;
  s.rows = rows;
  s.cols = cols;
  s.dk = dk;
  s.dv = dv;
  return s;
}

/// Elements of a tensor that are not exactly zero.
template <class G, std::size_t R>
index_t nonzeros(const view<const G, R>& x) {
  index_t n = 0;
  for_each_index(x.extents(), [&](const std::array<index_t, R>& ix) { n += !(at(x, ix) == G(0)); });
  return n;
}

/// The batch entries [b0, b0 + n) of a [B, ...] view.
template <class T>
view<T, 4> batch_slice(const view<T, 4>& x, index_t b0, index_t n) {
  return view<T, 4>(x.data() + b0 * x.stride(0), {n, x.extent(1), x.extent(2), x.extent(3)}, x.strides());
}

/// sum over every element of a (.) b, for views or tensors of equal extents.
template <class A, class B, std::size_t R>
double inner(const view<A, R>& a, const view<B, R>& b) {
  REQUIRE(a.extents() == b.extents());
  double s = 0;
  for_each_index(a.extents(), [&](const std::array<index_t, R>& ix) {
    s += static_cast<double>(at(a, ix)) * static_cast<double>(at(b, ix));
  });
  return s;
}

const std::array<index_t, 2> kGrids[] = {{1, 1}, {1, 7}, {5, 1}, {3, 4}, {7, 9}, {12, 12}, {9, 17}, {16, 16}};
/// (dk, dv) over 1, 3, 8, 16, 33, 64, dv != dk both ways
const std::array<index_t, 2> kDims[] = {{1, 1},   {3, 8},   {8, 3}, {16, 33},
                                        {33, 16}, {64, 64}, {3, 1}, {1, 64}};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Against the fp64 reference

TEMPLATE_TEST_CASE("relative_attention_2d_backward: vs fp64 over grids, head dims, modes and offsets",
                   "[relative][backward]", float, double) {
  std::uint64_t salt = 1;
  std::size_t t = 0;  // runs over (grid, mode, offset): rotates dims, heads, batch, key_lengths, scale
  for (const auto& g : kGrids)
    for (relative_mode mode : kModes)
      for (relative_offset off : kOffsets) {
        const auto& dims = kDims[(t + t / 4) % std::size(kDims)];
        bspec s = grid_spec(g[0], g[1], dims[0], dims[1]);
        const index_t L = s.L();
        s.mode = mode;
        s.offset = off;
        s.H = 4;
        s.Hkv = index_t{1} << (t % 3);  // 1, 2, 4
        s.B = 1 + static_cast<index_t>(t % 3 + t / 12) % 3;
        // per batch entry: full, partial, 1, 0 (rotated); every fifth problem without key_lengths
        const index_t choice[] = {L, (2 * L) / 3 + 1 > L ? L : (2 * L) / 3 + 1, 1, 0};
        if (t % 5 != 0)
          for (index_t b = 0; b < s.B; ++b)
            s.key_lengths.push_back(choice[(t + static_cast<std::size_t>(b)) % 4]);
        if (t % 4 == 3) s.scale = 0.3;
        ++t;
        check_spec<TestType>(s, ++salt);
      }
}

TEMPLATE_TEST_CASE(
    "relative_attention_2d_backward: grouped heads (4 over Hkv = 1, 2, 4), key_lengths, scale, strided "
    "layouts of every view",
    "[relative][backward]", float, double) {
  const layout ins[] = {layout::contiguous, layout::padded, layout::bshd,     layout::bshd_padded,
                        layout::dim_major,  layout::gapped, layout::reversed, layout::broadcast_b};
  // outputs: every layout but broadcast (out, dq, dk, dv); lse and dtable are last-three-axes views of
  // rank-4 buffers, whose broadcast axis 0 they drop
  const layout outs[] = {layout::contiguous, layout::padded, layout::bshd,    layout::bshd_padded,
                         layout::dim_major,  layout::gapped, layout::reversed};
  std::uint64_t salt = 100;
  std::size_t t = 0;
  for (index_t hkv : {1, 2, 4})
    for (const auto& g : {std::array<index_t, 2>{5, 7}, std::array<index_t, 2>{9, 17}})
      for (std::size_t li = 0; li < std::size(ins); ++li) {
        bspec s = grid_spec(g[0], g[1], g[0] == 5 ? 16 : 33, g[0] == 5 ? 11 : 8);
        const index_t L = s.L();
        s.B = 3;
        s.H = 4;
        s.Hkv = hkv;
        s.mode = kModes[t % 2];
        s.offset = kOffsets[(t / 2) % 2];
        s.lq = ins[li];
        s.lk = ins[(li + 3) % 8];
        s.lv = ins[(li + 5) % 8];
        s.ldo = ins[(li + 6) % 8];
        s.lt = ins[(li + 1 + t) % 8];
        s.lo = outs[li % 7];
        s.lgq = outs[(li + 2) % 7];
        s.lgk = outs[(li + 4) % 7];
        s.lgv = outs[(li + 6) % 7];
        s.lgt = ins[(li + t) % 8];
        s.llse = ins[(li + 2 + t) % 8];
        s.neg = (1u << (t % 10)) | (1u << ((t + 3) % 10)) | (t % 7 == 0 ? 0x3ffu : 0u);
        if (t % 3 == 0) s.key_lengths = {L, 0, L / 2};
        if (t % 3 == 1) s.key_lengths = {1, L - 3, L};
        if (t % 4 == 1) s.scale = 0.7;
        if (t % 4 == 3) s.scale = -0.45;
        ++t;
        check_spec<TestType>(s, ++salt);
      }
}

TEMPLATE_TEST_CASE("relative_attention_2d_backward: a table shared by the heads through stride 0",
                   "[relative][backward][layout]", float, double) {
  // The input table may broadcast over heads; dtable is still [heads, 2H - 1, 2W - 1], each head's
  // gradient apart (the caller sums them).
  using T = TestType;
  std::uint64_t salt = 200;
  for (relative_mode mode : kModes)
    for (relative_offset off : kOffsets) {
      bspec s = grid_spec(6, 7, 5, 4);
      s.B = 2;
      s.H = 3;
      s.mode = mode;
      s.offset = off;
      s.key_lengths = {42, 30};
      INFO(describe(s));
      bdata d = make_bdata(s, ++salt);
      for_each_index(d.table.extents(), [&](const std::array<index_t, 4>& ix) {
        at(d.table.view(), ix) = at(d.table.cview(), {0, 0, ix[2], ix[3]});
      });
      const auto want = reference(d);
      const auto in = to_type<T>(d);
      const auto t3 = in.tv();
      const view<const T, 3> shared(t3.data(), t3.extents(), {0, t3.stride(1), t3.stride(2)});
      for_each_arch([&](auto arch) {
        using Arch = decltype(arch);
        INFO("arch " << Arch::name << " " << type_name<T>());
        require_result(run<Arch>(in, d.options(), &shared), want);
      });
    }
}

TEMPLATE_TEST_CASE("relative_attention_2d: the lse overload writes the same out bits as the plain forward",
                   "[relative][backward][lse]", float, double) {
  using T = TestType;
  std::uint64_t salt = 300;
  for (const auto& g : {std::array<index_t, 2>{1, 1}, std::array<index_t, 2>{3, 4},
                        std::array<index_t, 2>{12, 12}, std::array<index_t, 2>{9, 17}})
    for (relative_mode mode : kModes)
      for (relative_offset off : kOffsets) {
        bspec s = grid_spec(g[0], g[1], 16, 9);
        const index_t L = s.L();
        s.B = 3;
        s.Hkv = 2;
        s.mode = mode;
        s.offset = off;
        s.key_lengths = {L, 0, std::min<index_t>(5, L)};
        s.llse = layout::padded;
        INFO(describe(s));
        const bdata d = make_bdata(s, ++salt);
        const auto want = reference(d);
        const auto in = to_type<T>(d);
        for_each_arch([&](auto arch) {
          using Arch = decltype(arch);
          INFO("arch " << Arch::name << " " << type_name<T>());
          for (int threads : {1, 3}) {
            INFO(threads << " threads");
            auto a = make_view<T>({s.B, s.H, L, s.dv}, layout::contiguous, false, T(0));
            auto b = make_view<T>({s.B, s.H, L, s.dv}, layout::contiguous, false, T(0));
            auto lse = make_view<T>({1, s.B, s.H, L}, s.llse, false, T(-7777.25));
            attnkit::relative_attention_2d<Arch>(in.q.cv(), in.k.cv(), in.v.cv(), in.tv(), s.grid(), a.v,
                                                 d.options(threads));
            attnkit::relative_attention_2d<Arch>(in.q.cv(), in.k.cv(), in.v.cv(), in.tv(), s.grid(), b.v,
                                                 last3(lse.v), d.options(threads));
            require_same_bits(a.cv(), b.cv(), "out with and without lse");
            REQUIRE(lse.touched_outside() == 0);
            require_lse(last3(lse.cv()), want.lse);
            require_within(b.cv(), want.out, want.aout, grad_tol<T>::eps, grad_tol<T>::tiny, "out");
          }
        });
      }
}

// ---------------------------------------------------------------------------------------------
// Finite differences, threads

TEST_CASE("relative_attention_2d_backward: directional finite differences in double",
          "[relative][backward][fd]") {
  // f(q, k, v, table) = <out, dout>; its derivative along u is <dq, uq> + <dk, uk> + <dv, uv> +
  // <dtable, ut>. The central difference with step h has truncation error h^2/6 |f'''| (~1e-10, the
  // inputs and directions being O(1)) and rounding error ~ u |f| / h (~1e-11): 1e-7 relative is ample.
  std::uint64_t salt = 400;
  for (relative_mode mode : kModes)
    for (relative_offset off : kOffsets)
      for (const double scale : {0.0, 0.4}) {
        bspec s = grid_spec(5, 7, 12, 9);
        s.B = 2;
        s.H = 4;
        s.Hkv = 2;
        s.mode = mode;
        s.offset = off;
        s.scale = scale;
        s.key_lengths = {35, 20};
        INFO(describe(s));
        const bdata d = make_bdata(s, ++salt);
        auto gen = seeded_rng(salt + 7);
        dtensor uq(d.q.extents()), uk(d.k.extents()), uv(d.v.extents()), ut(d.table.extents());
        for (dtensor* u : {&uq, &uk, &uv, &ut}) fill_uniform(u->view(), gen, -1.0, 1.0);
        const binputs<double> in = to_type<double>(d);
        for_each_arch([&](auto arch) {
          using Arch = decltype(arch);
          INFO("arch " << Arch::name);
          auto f = [&](double t) {
            bdata x = make_bdata(s, salt);
            for (const auto& pair :
                 {std::pair{&x.q, &uq}, std::pair{&x.k, &uk}, std::pair{&x.v, &uv}, std::pair{&x.table, &ut}})
              for_each_index(pair.first->extents(), [&](const std::array<index_t, 4>& ix) {
                at(pair.first->view(), ix) += t * at(pair.second->cview(), ix);
              });
            dtensor out({s.B, s.H, s.L(), s.dv});
            attnkit::relative_attention_2d<Arch>(x.q.cview(), x.k.cview(), x.v.cview(),
                                                 last3(x.table.cview()), s.grid(), out.view(), x.options());
            return inner(out.cview(), d.dout.cview());
          };
          const double h = 1e-5;
          const double fd = (f(h) - f(-h)) / (2 * h);
          const bresult<double> r = run<Arch>(in, d.options());
          const double an = inner(r.dq.cv(), uq.cview()) + inner(r.dk.cv(), uk.cview()) +
                            inner(r.dv.cv(), uv.cview()) + inner(r.dtable.cv(), ut.cview());
          INFO("analytic " << an << " vs central difference " << fd);
          REQUIRE(std::fabs(an - fd) <= 1e-7 * (1 + std::fabs(fd)));
        });
      }
}

TEMPLATE_TEST_CASE("relative_attention_2d_backward: the same bits for 1, 2, 3 and 5 threads",
                   "[relative][backward][threads]", float, double) {
  using T = TestType;
  std::uint64_t salt = 500;
  // B Hkv < 8 splits each (b, kv head)'s keys into parts (1 x 1 over 144 and 400 keys, 2 x 2 over 256);
  // B Hkv = 12: one part each
  struct shape {
    index_t B, H, Hkv, rows, cols, dk, dv;
    std::vector<std::int64_t> lens;
  };
  const shape shapes[] = {{1, 4, 1, 12, 12, 16, 8, {}},
                          {2, 4, 2, 16, 16, 32, 24, {256, 100}},
                          {3, 4, 4, 9, 17, 8, 16, {153, 0, 40}},
                          {1, 2, 1, 20, 20, 16, 16, {390}}};
  for (const shape& x : shapes)
    for (relative_mode mode : kModes) {
      bspec s = grid_spec(x.rows, x.cols, x.dk, x.dv);
      s.B = x.B;
      s.H = x.H;
      s.Hkv = x.Hkv;
      s.mode = mode;
      s.offset = mode == relative_mode::pre_softmax ? relative_offset::query_minus_key
                                                    : relative_offset::key_minus_query;
      s.key_lengths = x.lens;
      INFO(describe(s));
      const bdata d = make_bdata(s, ++salt);
      const auto in = to_type<T>(d);
      for_each_arch([&](auto arch) {
        using Arch = decltype(arch);
        INFO("arch " << Arch::name << " " << type_name<T>());
        const bresult<T> one = run<Arch>(in, d.options(1));
        for (int threads : {2, 3, 5}) {
          INFO(threads << " threads");
          const bresult<T> r = run<Arch>(in, d.options(threads));
          require_same_bits(r.out.cv(), one.out.cv(), "out");
          require_same_bits(r.lse3(), one.lse3(), "lse");
          require_same_bits(r.dq.cv(), one.dq.cv(), "dq");
          require_same_bits(r.dk.cv(), one.dk.cv(), "dk");
          require_same_bits(r.dv.cv(), one.dv.cv(), "dv");
          require_same_bits(r.dtable3(), one.dtable3(), "dtable");
        }
      });
    }
}

// ---------------------------------------------------------------------------------------------
// Padding, empty batch entries, dtable over the batch

TEMPLATE_TEST_CASE(
    "relative_attention_2d_backward: NaN and Inf in padding keys and values reach no gradient; a batch "
    "entry without keys gives dq = 0 and leaves dtable alone",
    "[relative][backward][mask]", float, double) {
  using T = TestType;
  const T poison[] = {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                      -std::numeric_limits<T>::infinity()};
  std::uint64_t salt = 600;
  for (const auto& g : {std::array<index_t, 2>{9, 11}, std::array<index_t, 2>{12, 12}})
    for (relative_mode mode : kModes)
      for (relative_offset off : kOffsets) {
        bspec s = grid_spec(g[0], g[1], 16, 12);
        const index_t L = s.L();
        s.B = 3;
        s.H = 4;
        s.Hkv = 2;
        s.mode = mode;
        s.offset = off;
        // partial (inside the first key block on every arch, and past it), none, one key
        s.key_lengths = {g[0] == 9 ? 60 : 131, 0, 1};
        s.lk = layout::padded;
        s.lv = layout::bshd_padded;
        INFO(describe(s));
        const bdata d = make_bdata(s, ++salt);
        const auto want = reference(d);
        const auto clean = to_type<T>(d);
        auto poisoned = to_type<T>(d);
        std::size_t n = 0;
        for (index_t b = 0; b < s.B; ++b)
          for (index_t hk = 0; hk < s.Hkv; ++hk)
            for (index_t j = static_cast<index_t>(d.lens[static_cast<std::size_t>(b)]); j < L; ++j) {
              for (index_t p = 0; p < s.dk; ++p) at(poisoned.k.v, {b, hk, j, p}) = poison[n++ % 3];
              for (index_t e = 0; e < s.dv; ++e) at(poisoned.v.v, {b, hk, j, e}) = poison[n++ % 3];
            }
        // the same, with everything else of batch entry 1 (no keys) replaced: q and dout
        auto other = to_type<T>(d);
        for_each_index(std::array<index_t, 4>{s.B, s.Hkv, L, s.dk}, [&](const std::array<index_t, 4>& ix) {
          at(other.k.v, ix) = at(poisoned.k.cv(), ix);
        });
        for_each_index(std::array<index_t, 4>{s.B, s.Hkv, L, s.dv}, [&](const std::array<index_t, 4>& ix) {
          at(other.v.v, ix) = at(poisoned.v.cv(), ix);
        });
        auto gen = seeded_rng(salt + 50);
        fill_uniform(batch_slice(other.q.v, 1, 1), gen, -3.0, 3.0);
        fill_uniform(batch_slice(other.dout.v, 1, 1), gen, -3.0, 3.0);
        for_each_arch([&](auto arch) {
          using Arch = decltype(arch);
          INFO("arch " << Arch::name << " " << type_name<T>());
          const bresult<T> c = run<Arch>(clean, d.options());
          const bresult<T> r = run<Arch>(poisoned, d.options());
          require_result(r, want);
          require_same_bits(r.dq.cv(), c.dq.cv(), "dq with and without NaN / Inf in padding");
          require_same_bits(r.dk.cv(), c.dk.cv(), "dk with and without NaN / Inf in padding");
          require_same_bits(r.dv.cv(), c.dv.cv(), "dv with and without NaN / Inf in padding");
          require_same_bits(r.dtable3(), c.dtable3(), "dtable with and without NaN / Inf in padding");
          // padding keys: dk = dv = 0 exactly; batch entry 1: dq = 0 exactly
          index_t nz = 0;
          for (index_t b = 0; b < s.B; ++b) {
            const index_t len = static_cast<index_t>(d.lens[static_cast<std::size_t>(b)]);
            auto keys = [&](const view<const T, 4>& x) {
              return view<const T, 4>(x.data() + b * x.stride(0) + len * x.stride(2),
                                      {1, x.extent(1), L - len, x.extent(3)}, x.strides());
            };
            nz += nonzeros(keys(r.dk.cv())) + nonzeros(keys(r.dv.cv()));
          }
          nz += nonzeros(batch_slice(r.dq.cv(), 1, 1));
          INFO(nz << " gradient elements of padding keys or of queries without keys are not exactly 0");
          REQUIRE(nz == 0);
          // entry 1's q and dout reach nothing
          const bresult<T> o = run<Arch>(other, d.options());
          require_same_bits(o.dq.cv(), r.dq.cv(), "dq with another q, dout in the entry without keys");
          require_same_bits(o.dk.cv(), r.dk.cv(), "dk with another q, dout in the entry without keys");
          require_same_bits(o.dv.cv(), r.dv.cv(), "dv with another q, dout in the entry without keys");
          require_same_bits(o.dtable3(), r.dtable3(),
                            "dtable with another q, dout in the entry without keys");
        });
      }
}

TEMPLATE_TEST_CASE(
    "relative_attention_2d_backward: dtable sums over the batch; offsets no pair uses are exactly 0",
    "[relative][backward][dtable]", float, double) {
  using T = TestType;
  std::uint64_t salt = 700;
  for (relative_mode mode : kModes)
    for (relative_offset off : kOffsets) {
      // B = 2 against each batch entry alone: each single-entry run is within eps A_b + tiny of its
      // reference, so their sum is within eps (A_0 + A_1) + 2 tiny = eps A + 2 tiny of the B = 2
      // reference (adtable sums over b), and within 2 eps A + 3 tiny of the B = 2 run
      {
        bspec s = grid_spec(7, 9, 8, 6);
        s.B = 2;
        s.H = 4;
        s.Hkv = 2;
        s.mode = mode;
        s.offset = off;
        s.key_lengths = {63, 40};
        INFO(describe(s));
        const bdata d = make_bdata(s, ++salt);
        const auto want = reference(d);
        const auto in = to_type<T>(d);
        for_each_arch([&](auto arch) {
          using Arch = decltype(arch);
          INFO("arch " << Arch::name << " " << type_name<T>());
          const bresult<T> both = run<Arch>(in, d.options());
          require_result(both, want);
          attnkit::tensor<double, 3> sum(want.dtable.extents());
          for (index_t b = 0; b < s.B; ++b) {
            binputs<T> one{s, {}, {}, {}, {}, {}};
            one.sp.B = 1;
            one.sp.key_lengths = {d.lens[static_cast<std::size_t>(b)]};
            auto slice = [&](const strided_buffer<T>& x) {
              strided_buffer<T> y;
              y.v = batch_slice(x.v, b, 1);
              return y;
            };
            one.q = slice(in.q);
            one.k = slice(in.k);
            one.v = slice(in.v);
            one.dout = slice(in.dout);
            one.table.v = in.table.v;  // (the table has no batch axis)
            relative_options o = d.options();
            o.mask.key_lengths = view<const std::int64_t, 1>(one.sp.key_lengths.data(), {1}, {1});
            const bresult<T> r = run<Arch>(one, o);
            for_each_index(sum.extents(), [&](const std::array<index_t, 3>& ix) {
              at(sum.view(), ix) += static_cast<double>(at(r.dtable3(), ix));
            });
          }
          require_within(sum.cview(), want.dtable, want.adtable, grad_tol<T>::eps, 2 * grad_tol<T>::tiny,
                         "dtable of each batch entry alone, summed, vs the B = 2 reference");
          require_within(both.dtable3(), sum, want.adtable, 2 * grad_tol<T>::eps, 3 * grad_tol<T>::tiny,
                         "dtable of B = 2 vs the sum over single entries");
        });
      }
      // key_lengths 5 and 3 on a 6 x 7 grid: keys only in the first row, x < 5, so only offsets with
      // dy <= 0 and -6 <= dx <= 4 (key_minus_query; negated query_minus_key) occur: the rest of
      // dtable (5 of its 11 rows, 2 of its 13 columns in the other 6) must be exactly 0
      {
        bspec s = grid_spec(6, 7, 8, 6);
        s.B = 2;
        s.H = 4;
        s.Hkv = 1;
        s.mode = mode;
        s.offset = off;
        s.key_lengths = {5, 3};
        INFO(describe(s));
        const bdata d = make_bdata(s, ++salt);
        const auto want = reference(d);
        const auto in = to_type<T>(d);
        const index_t L = s.L(), R = 2 * s.rows - 1, C = 2 * s.cols - 1;
        std::vector<char> used(static_cast<std::size_t>(R * C), 0);
        for (index_t b = 0; b < s.B; ++b)
          for (index_t i = 0; i < L; ++i)
            for (index_t j = 0; j < s.key_lengths[static_cast<std::size_t>(b)]; ++j) {
              const auto o = ref::relative_index(s.grid(), off, i, j);
              used[static_cast<std::size_t>(o.first * C + o.second)] = 1;
            }
        index_t unused = 0;
        for (char u : used) unused += !u;
        REQUIRE(unused == 5 * C + 2 * 6);
        for_each_arch([&](auto arch) {
          using Arch = decltype(arch);
          INFO("arch " << Arch::name << " " << type_name<T>());
          const bresult<T> r = run<Arch>(in, d.options());
          require_result(r, want);
          index_t nz = 0;
          for (index_t h = 0; h < s.H; ++h)
            for (index_t ty = 0; ty < R; ++ty)
              for (index_t tx = 0; tx < C; ++tx)
                if (!used[static_cast<std::size_t>(ty * C + tx)])
                  nz += !(at(r.dtable3(), {h, ty, tx}) == T(0));
          INFO(nz << " dtable entries of offsets no pair uses are not exactly 0");
          REQUIRE(nz == 0);
        });
      }
    }
}

TEMPLATE_TEST_CASE("relative_attention_2d_backward: empty extents (B, heads, L, dk or dv of 0)",
                   "[relative][backward][shapes]", float, double) {
  using T = TestType;
  std::uint64_t salt = 800;
  // {B, H, Hkv, rows, cols, dk, dv}
  const std::array<index_t, 7> shapes[] = {
      {0, 2, 1, 2, 3, 3, 4}, {2, 0, 1, 2, 3, 3, 4}, {2, 2, 1, 0, 0, 3, 4}, {2, 2, 1, 0, 5, 3, 4},
      {2, 2, 1, 2, 3, 3, 0}, {2, 2, 1, 2, 3, 0, 4}, {2, 4, 2, 5, 3, 0, 0}};
  for (const auto& e : shapes)
    for (relative_mode mode : kModes) {
      bspec s = grid_spec(e[3], e[4], e[5], e[6]);
      s.B = e[0];
      s.H = e[1];
      s.Hkv = e[2];
      s.mode = mode;
      if (s.B == 2) s.key_lengths = {s.L(), 0};
      INFO(describe(s));
      const bdata d = make_bdata(s, ++salt);
      const auto want = reference(d);
      const auto in = to_type<T>(d);
      for_each_arch([&](auto arch) {
        using Arch = decltype(arch);
        INFO("arch " << Arch::name << " " << type_name<T>());
        bresult<T> r;
        REQUIRE_NOTHROW(r = run<Arch>(in, d.options()));
        require_result(r, want);
      });
    }
}

// ---------------------------------------------------------------------------------------------
// Arguments

TEST_CASE("relative_attention_2d_backward and the lse overload: invalid arguments throw and write nothing",
          "[relative][backward][errors]") {
  using T = float;
  using cv4 = view<const T, 4>;
  using cv3 = view<const T, 3>;
  using Catch::Matchers::Contains;
  const index_t B = 2, H = 2, L = 6, dk = 3, dv = 4;
  const relative_grid grid{2, 3};
  attnkit::tensor<T, 4> q({B, H, L, dk}), k({B, 1, L, dk}), v({B, 1, L, dv}), out({B, H, L, dv}),
      dout({B, H, L, dv}), big({B + 1, H + 1, L + 1, dv + 1});
  attnkit::tensor<T, 3> table({H, 3, 5}), lse({B, H, L}), tbig({H + 1, 4, 6});
  auto gen = seeded_rng(900);
  for (auto* x : {&q, &k, &v, &dout}) fill_uniform(x->view(), gen, -1.0, 1.0);
  fill_uniform(table.view(), gen, -1.0, 1.0);
  attnkit::relative_attention_2d(q.cview(), k.cview(), v.cview(), table.cview(), grid, out.view(),
                                 lse.view());
  attnkit::tensor<T, 4> dq(q.extents()), dk_(k.extents()), dv_(v.extents());
  attnkit::tensor<T, 3> dtable(table.extents());
  const std::vector<std::int64_t> lens_big{L + 1, 3}, lens_ok{L, 3};
  const std::vector<T> table_before(table.data(), table.data() + table.size());
  const std::vector<T> lse_before(lse.data(), lse.data() + lse.size());
  auto reset = [&] {
    for (auto* x : {&dq, &dk_, &dv_}) std::fill(x->data(), x->data() + x->size(), T(3));
    std::fill(dtable.data(), dtable.data() + dtable.size(), T(3));
    std::fill(big.data(), big.data() + big.size(), T(3));
    std::fill(tbig.data(), tbig.data() + tbig.size(), T(3));
  };
  // (lse and dtable in one buffer, for an overlap case: lse at [0, 24), dtable at [10, 40))
  std::vector<T> lse_dtable(64, T(3));
  std::copy(lse.data(), lse.data() + lse.size(), lse_dtable.begin());
  const std::vector<T> lse_dtable_before = lse_dtable;
  auto untouched = [&] {
    bool ok = true;
    for (auto* x : {&dq, &dk_, &dv_, &big})
      for (index_t i = 0; i < x->size(); ++i) ok = ok && x->data()[i] == T(3);
    for (auto* x : {&dtable, &tbig})
      for (index_t i = 0; i < x->size(); ++i) ok = ok && x->data()[i] == T(3);
    return ok && std::equal(table_before.begin(), table_before.end(), table.data()) &&
           std::equal(lse_before.begin(), lse_before.end(), lse.data()) &&
           same_bits(lse_dtable, lse_dtable_before);
  };
  reset();

  struct call {
    cv4 q, k, v;
    cv3 table;
    relative_grid grid;
    cv4 out;
    cv3 lse;
    cv4 dout;
    view<T, 4> dq, dk, dv;
    view<T, 3> dtable;
    relative_options opt;
  };
  const call base{q.cview(),   k.cview(),     v.cview(),         table.cview(), grid,
                  out.cview(), lse.cview(),   dout.cview(),      dq.view(),     dk_.view(),
                  dv_.view(),  dtable.view(), relative_options{}};
  for (relative_mode mode : kModes)
    for (relative_offset off : kOffsets) {
      INFO("valid " << mode_name(mode) << " " << offset_name(off));
      call c = base;
      c.opt.mode = mode;
      c.opt.offset = off;
      c.opt.mask.key_lengths = view<const std::int64_t, 1>(lens_ok.data(), {B}, {1});
      REQUIRE_NOTHROW(attnkit::relative_attention_2d_backward(c.q, c.k, c.v, c.table, c.grid, c.out, c.lse,
                                                              c.dout, c.dq, c.dk, c.dv, c.dtable, c.opt));
      REQUIRE(!untouched());
      reset();
    }

  auto big4 = [&](std::array<index_t, 4> e) { return view<T, 4>::contiguous(big.data(), e); };
  auto big3 = [&](std::array<index_t, 3> e) { return view<T, 3>::contiguous(tbig.data(), e); };
  T* const table_mem = const_cast<T*>(table.data());
  struct bad {
    std::string name;
    call c;
    const char* needle;  // a phrase the message must contain, or null
  };
  std::vector<bad> cases;
  auto with = [&](const char* name, const char* needle, auto f) {
    call c = base;
    f(c);
    cases.push_back({name, c, needle});
  };
  // dtable
  with("dtable [H, 3, 4]", "dtable", [&](call& c) { c.dtable = big3({H, 3, 4}); });
  with("dtable [H, 4, 5]", "dtable", [&](call& c) { c.dtable = big3({H, 4, 5}); });
  with("dtable [H + 1, 3, 5]", "dtable", [&](call& c) { c.dtable = big3({H + 1, 3, 5}); });
  with("dtable [1, 3, 5] for a table shared through stride 0", "dtable", [&](call& c) {
    c.table = cv3(table.data(), {H, 3, 5}, {0, 5, 1});
    c.dtable = big3({1, 3, 5});
  });
  with("dtable with stride 0 over heads (for a stride-0 table too)", nullptr, [&](call& c) {
    c.table = cv3(table.data(), {H, 3, 5}, {0, 5, 1});
    c.dtable = view<T, 3>(tbig.data(), {H, 3, 5}, {0, 5, 1});
  });
  with("dtable overlaps table", nullptr, [&](call& c) {
    c.dtable = view<T, 3>(table_mem, {H, 3, 5}, {15, 5, 1});
  });
  with("dtable overlaps dq", nullptr, [&](call& c) {
    c.dtable = view<T, 3>(dq.data(), {H, 3, 5}, {15, 5, 1});
  });
  with("dtable overlaps dv", nullptr, [&](call& c) {
    c.dtable = view<T, 3>(dv_.data() + 4, {H, 3, 5}, {15, 5, 1});
  });
  with("dtable overlaps lse", nullptr, [&](call& c) {
    c.lse = cv3(lse_dtable.data(), {B, H, L}, {H * L, L, 1});
    c.dtable = view<T, 3>(lse_dtable.data() + 10, {H, 3, 5}, {15, 5, 1});
  });
  with("dtable overlaps dout", nullptr, [&](call& c) {
    c.dtable = view<T, 3>(const_cast<T*>(dout.data()), {H, 3, 5}, {15, 5, 1});
  });
  with("dtable null", "null", [&](call& c) { c.dtable = view<T, 3>(nullptr, {H, 3, 5}, {15, 5, 1}); });
  // gradients, lse, dout, out
  with("dq dk + 1", "dq", [&](call& c) { c.dq = big4({B, H, L, dk + 1}); });
  with("dk Hkv + 1", "dk", [&](call& c) { c.dk = big4({B, 2, L, dk}); });
  with("dv dv - 1", "dv", [&](call& c) { c.dv = big4({B, 1, L, dv - 1}); });
  with("lse [B, H, L - 1]", "lse", [&](call& c) { c.lse = cv3(lse.data(), {B, H, L - 1}, {H * L, L, 1}); });
  with("lse [B, H + 1, L]", "lse", [&](call& c) {
    c.lse = cv3(tbig.data(), {B, H + 1, L}, {(H + 1) * L, L, 1});
  });
  with("dout [B, H, L, dv + 1]", "dout", [&](call& c) {
    c.dout = cv4(big.data(), {B, H, L, dv + 1}, {H * L * 5, L * 5, 5, 1});
  });
  with("out [B, H, L, dv + 1]", nullptr, [&](call& c) {
    c.out = cv4(big.data(), {B, H, L, dv + 1}, {H * L * 5, L * 5, 5, 1});
  });
  with("dq overlaps q", nullptr,
       [&](call& c) { c.dq = view<T, 4>(const_cast<T*>(q.data()), q.extents(), q.cview().strides()); });
  with("dk overlaps table", nullptr, [&](call& c) {
    c.table = cv3(tbig.data(), {H, 3, 5}, {15, 5, 1});
    c.dk = view<T, 4>(tbig.data() + 10, k.extents(), {18, 18, 3, 1});
  });
  with("dk overlaps dv", nullptr, [&](call& c) {
    c.dk = view<T, 4>(dv_.data(), k.extents(), {18, 18, 3, 1});
  });
  with("dq with stride 0", nullptr, [&](call& c) {
    c.dq = view<T, 4>(dq.data(), q.extents(), {18, 9, 0, 1});
  });
  // table, grid, mask, options
  with("table [H, 3, 4]", "table", [&](call& c) { c.table = cv3(table.data(), {H, 3, 4}, {15, 5, 1}); });
  with("grid 3 x 2", nullptr, [&](call& c) { c.grid = {3, 2}; });
  for (auto cm : {attnkit::causal_mode::top_left, attnkit::causal_mode::bottom_right})
    with("mask.causal", "causal", [&](call& c) { c.opt.mask.causal = cm; });
  const std::vector<float> bias(static_cast<std::size_t>(B * H * L * L), 0.5f);
  with("mask.bias", "bias", [&](call& c) {
    c.opt.mask.bias = view<const float, 4>::contiguous(bias.data(), {B, H, L, L});
  });
  with("key_lengths > L", "key_lengths",
       [&](call& c) { c.opt.mask.key_lengths = view<const std::int64_t, 1>(lens_big.data(), {B}, {1}); });
  with("key_lengths extent B - 1", "key_lengths",
       [&](call& c) { c.opt.mask.key_lengths = view<const std::int64_t, 1>(lens_ok.data(), {B - 1}, {1}); });
  with("threads -1", "threads", [&](call& c) { c.opt.threads = -1; });
  with("scale NaN", "scale", [&](call& c) { c.opt.scale = std::numeric_limits<double>::quiet_NaN(); });
  with("mode not a value", "mode", [&](call& c) { c.opt.mode = static_cast<relative_mode>(5); });

  for (const bad& b : cases) {
    INFO("case: " << b.name);
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO("arch " << Arch::name);
      const call& c = b.c;
      auto f = [&] {
        attnkit::relative_attention_2d_backward<Arch>(c.q, c.k, c.v, c.table, c.grid, c.out, c.lse, c.dout,
                                                      c.dq, c.dk, c.dv, c.dtable, c.opt);
      };
      REQUIRE_THROWS_AS(f(), attnkit::invalid_argument);
      if (b.needle) REQUIRE_THROWS_WITH(f(), Contains(b.needle));
      INFO("every gradient (and the table, lse) must be untouched");
      REQUIRE(untouched());
    });
  }

  // the forward's lse: wrong shape, or overlapping out, an input or the table
  attnkit::tensor<T, 4> o2(out.extents());
  attnkit::tensor<T, 3> l2(lse.extents());
  std::fill(o2.data(), o2.data() + o2.size(), T(3));
  std::fill(l2.data(), l2.data() + l2.size(), T(3));
  struct fwd {
    std::string name;
    view<T, 3> lse;
  };
  const fwd fcases[] = {{"lse [B, H, L - 1]", view<T, 3>(l2.data(), {B, H, L - 1}, {H * L, L, 1})},
                        {"lse [B, H + 1, L]", view<T, 3>(tbig.data(), {B, H + 1, L}, {(H + 1) * L, L, 1})},
                        {"lse overlaps out", view<T, 3>(o2.data(), {B, H, L}, {H * L, L, 1})},
                        {"lse overlaps q", view<T, 3>(const_cast<T*>(q.data()), {B, H, L}, {H * L, L, 1})},
                        {"lse overlaps table", view<T, 3>(table_mem, {B, H, L}, {1, 1, 1})},
                        {"lse with stride 0", view<T, 3>(l2.data(), {B, H, L}, {H * L, 0, 1})}};
  for (const fwd& f : fcases) {
    INFO("forward case: " << f.name);
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      INFO("arch " << Arch::name);
      REQUIRE_THROWS_AS(attnkit::relative_attention_2d<Arch>(q.cview(), k.cview(), v.cview(), table.cview(),
                                                             grid, o2.view(), f.lse),
                        attnkit::invalid_argument);
      bool ok = std::equal(table_before.begin(), table_before.end(), table.data());
      for (index_t i = 0; i < o2.size(); ++i) ok = ok && o2.data()[i] == T(3);
      for (index_t i = 0; i < l2.size(); ++i) ok = ok && l2.data()[i] == T(3);
      for (index_t i = 0; i < tbig.size(); ++i) ok = ok && tbig.data()[i] == T(3);
      INFO("out and lse must be untouched");
      REQUIRE(ok);
    });
  }
}
