// attnkit fuzz target: the argument checking of the attention operators. The input bytes decode
// into one call (operator, extents, strides, offsets into one memory pool, masks, plans, options);
// the call must either throw attnkit::invalid_argument with the pool unchanged, or succeed with
// finite outputs and nothing written outside them. Views are placed inside the pool (that the
// memory exists is the caller's duty); calls whose work is huge but may be valid (stride-0
// inputs over 2^40 keys, say) are skipped. Anything else (a crash, a sanitizer report, another
// exception, a write outside out, a NaN) is a bug. See tests/fuzz/README.md.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include <attnkit/attnkit.hpp>

namespace {

using attnkit::index_t;
template <class T, std::size_t R>
using view = attnkit::tensor_view<T, R>;

constexpr index_t kPool = 4096;  // floats

/// The input bytes, read front to back; zeros once they run out.
struct reader {
  const std::uint8_t* p;
  std::size_t n;
  std::uint8_t byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  template <class T>
  T take() {
    T v{};
    unsigned char b[sizeof(T)];
    for (auto& x : b) x = byte();
    std::memcpy(&v, b, sizeof(T));
    return v;
  }
  bool flag(int one_in = 2) { return byte() % one_in == 0; }
};

/// An extent: usually `want`; sometimes another small value, 0, or a huge one.
index_t extent(reader& r, index_t want) {
  static const index_t huge[] = {index_t(1) << 20, index_t(1) << 32, index_t(1) << 40,
                                 std::numeric_limits<index_t>::max() / 2,
                                 std::numeric_limits<index_t>::max()};
  const std::uint8_t b = r.byte();
  if (b < 200) return want;
  if (b < 235) return b % 10;
  if (b < 240) return -1 - b % 3;
  return huge[(b - 240) % 5];
}

/// One call's memory: a pool of finite floats that every float view points into.
struct pool {
  std::vector<float> mem = std::vector<float>(kPool);
  bool outside = false;  ///< some view reaches outside the pool: the call is not made
  pool() {
    for (index_t i = 0; i < kPool; ++i) mem[static_cast<std::size_t>(i)] = std::sin(0.37f * float(i));
  }

  /// A view of extents e: layout and offset from the bytes (contiguous, permuted, padded, stride 0,
  /// reversed, or arbitrary small strides), nullptr sometimes.
  template <std::size_t R>
  view<float, R> make(reader& r, std::array<index_t, R> e) {
    std::array<index_t, R> s{};
    const int kind = r.byte() % 7;
    index_t acc = 1;
    for (std::size_t i = R; i-- > 0;) {
      const index_t ei = std::max<index_t>(e[i], 0);
      switch (kind) {
        case 0:  // contiguous
        case 1:
          s[i] = acc;
          break;
        case 2:  // padded
          s[i] = acc + (r.byte() % 3);
          break;
        case 3:  // broadcast
          s[i] = r.flag() ? 0 : acc;
          break;
        case 4:  // reversed
          s[i] = -acc;
          break;
        case 5:  // arbitrary
          s[i] = static_cast<std::int8_t>(r.byte());
          break;
        default:  // huge
          s[i] = r.flag(4) ? (index_t(1) << (40 + r.byte() % 23)) : acc;
      }
      const index_t next =
          attnkit::detail::checked_product(acc + (kind == 2 ? 2 : 0), std::max<index_t>(ei, 1));
      acc = next < 0 || next > kPool ? kPool : next;
    }
    if (kind == 1 && R == 4) std::swap(s[1], s[2]);  // [B, L, H, d] memory as [B, H, L, d]
    if (r.flag(64)) return view<float, R>(nullptr, e, s);
    const index_t off = static_cast<index_t>(r.take<std::uint16_t>() % kPool);
    view<float, R> v(mem.data() + off, e, s);
    // Must the view's elements lie in the pool? Only if it is addressable (else validation throws).
    std::ptrdiff_t lo = 0, hi = 0;
    bool any_zero = false, any_neg = false;
    for (index_t x : e) any_zero = any_zero || x == 0, any_neg = any_neg || x < 0;
    if (!any_neg && !any_zero && attnkit::detail::checked_count(e) >= 0 &&
        attnkit::detail::checked_reach(e, s, lo, hi))
      if (lo < -off || hi >= kPool - off) outside = true;
    return v;
  }
};

double scale_of(reader& r) {
  static const double s[] = {0.0,
                             0.0,
                             0.0,
                             1.0,
                             0.125,
                             -0.5,
                             1e38,
                             3e38,
                             1e300,
                             -1e-30,
                             std::numeric_limits<double>::infinity(),
                             std::numeric_limits<double>::quiet_NaN()};
  return s[r.byte() % (sizeof s / sizeof s[0])];
}

std::int64_t span_of(reader& r, index_t L) {
  const std::int64_t s[] = {
      0, 0, 1, 2, 3, 5, L, L + 1, std::int64_t(1) << 40, std::numeric_limits<std::int64_t>::max(), -1};
  return s[r.byte() % (sizeof s / sizeof s[0])];
}

/// 2x - 1 for the table extent of a grid side x (1 when x is huge: the grid is then rejected anyway).
index_t table_side(index_t x) { return x > (index_t(1) << 30) ? 1 : 2 * x - 1; }

/// Saturating product (work estimates).
index_t work(std::initializer_list<index_t> xs) {
  index_t w = 1;
  for (index_t x : xs) {
    if (x <= 0) return 0;
    const index_t n = attnkit::detail::checked_product(w, x);
    w = n < 0 ? std::numeric_limits<index_t>::max() : n;
  }
  return w;
}

/// What a successful call's output element may be: finite, finite or -inf (a log-sum-exp: a row
/// without keys), anything (a gradient at a scale of 1e38 overflows: the true one is that large).
enum class values { finite, lse, any };

/// Gradients of pool inputs (|x| <= 1, d <= 8, L < 20) are finite at scales up to 1 (0: 1/sqrt(dk));
/// at 1e38 they overflow as the true gradients do, and any lse the pool holds is accepted.
values gradient_values(double scale) { return std::fabs(scale) <= 1 ? values::finite : values::any; }

/// Marks the elements of an output that a successful call wrote: each must lie in the pool and
/// hold what `want` allows.
template <std::size_t R>
void mark_output(const pool& P, const view<float, R>& out, values want, std::vector<char>& is_out) {
  for (index_t e : out.extents()) {
    if (e < 0) std::abort();
    if (e == 0) return;
  }
  std::array<index_t, R> ix{};
  while (true) {
    index_t off = 0;
    for (std::size_t d = 0; d < R; ++d) off += ix[d] * out.stride(d);
    const float* p = out.data() + off;
    const index_t i = p - P.mem.data();
    if (i < 0 || i >= kPool) std::abort();
    const bool ok = want == values::any || std::isfinite(*p) ||
                    (want == values::lse && *p == -std::numeric_limits<float>::infinity());
    if (!ok) std::abort();
    is_out[static_cast<std::size_t>(i)] = 1;
    std::size_t d = R;
    while (d-- > 0) {
      if (++ix[d] < out.extent(d)) break;
      ix[d] = 0;
    }
    if (d == static_cast<std::size_t>(-1)) return;
  }
}

/// An output of a call and the values it may hold.
template <std::size_t R>
struct output {
  view<float, R> v;
  values want = values::finite;
};

/// Runs op; on invalid_argument the pool must be unchanged, on success every element of the
/// outputs must be what they may hold (output::want) and nothing outside their elements may have changed.
template <class Op, std::size_t... R>
void check_outputs(pool& P, Op&& op, const output<R>&... outs) {
  if (P.outside) return;
  const std::vector<float> before = P.mem;
  try {
    op();
  } catch (const attnkit::invalid_argument&) {
    if (std::memcmp(before.data(), P.mem.data(), before.size() * sizeof(float)) != 0) std::abort();
    return;
  }
  // success: the outputs were valid, so their extents are >= 0 and their elements in the pool
  std::vector<char> is_out(static_cast<std::size_t>(kPool), 0);
  (mark_output(P, outs.v, outs.want, is_out), ...);
  for (index_t i = 0; i < kPool; ++i)
    if (!is_out[static_cast<std::size_t>(i)] &&
        std::memcmp(&before[static_cast<std::size_t>(i)], &P.mem[static_cast<std::size_t>(i)],
                    sizeof(float)) != 0)
      std::abort();
}

/// check_outputs with the one output out.
template <std::size_t R, class Op>
void check_call(pool& P, const view<float, R>& out, Op&& op) {
  check_outputs(P, op, output<R>{out});
}

/// True when the inputs have a huge extent (stride 0 over it) but element counts that fit: a call
/// that may be valid and would run for ages.
template <class... V>
bool huge_but_addressable(const V&... xs) {
  index_t big = 0;
  bool fits = true;
  auto one = [&](const auto& x) {
    for (index_t e : x.extents()) big = std::max(big, e);
    fits = fits && attnkit::detail::checked_count(x.extents()) >= 0;
  };
  (one(xs), ...);
  return big > 64 && fits;
}

attnkit::mask mask_of(reader& r, index_t B, index_t H, index_t Lq, index_t Lk,
                      std::vector<std::int64_t>& lens, pool& P, bool bias) {
  attnkit::mask m;
  const std::uint8_t c = r.byte();
  m.causal = static_cast<attnkit::causal_mode>(c < 200 ? c % 3 : c % 5);
  if (r.flag(3)) {
    lens.resize(static_cast<std::size_t>(std::clamp<index_t>(extent(r, B), 0, 64)));
    for (auto& l : lens) l = r.flag(8) ? static_cast<std::int8_t>(r.byte()) : r.byte() % (Lk + 1);
    m.key_lengths = view<const std::int64_t, 1>(lens.data(), {static_cast<index_t>(lens.size())}, {1});
  }
  if (bias && r.flag(3)) {
    const std::array<index_t, 4> full{B, H, Lq, Lk};
    std::array<index_t, 4> e{};
    for (std::size_t d = 0; d < 4; ++d) e[d] = r.flag() ? 1 : extent(r, full[d]);
    m.bias = P.make(r, e);
  }
  return m;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  reader r{data, size};
  pool P;
  const int op = r.byte() % 8;
  const index_t B = r.byte() % 3, G = 1 + r.byte() % 3, Hkv = r.byte() % 3, H = G * Hkv;
  const index_t Lq = r.byte() % 20, dk = r.byte() % 9, dv = r.byte() % 9;
  const index_t Lk = (op >= 2 && op <= 6) || r.flag() ? Lq : r.byte() % 20;
  const int threads = static_cast<int>(r.byte() % 4) - (r.flag(16) ? 2 : 0);
  std::vector<std::int64_t> lens;
  std::vector<std::int32_t> ids;
  if (op == 7) {  // lambda: queries [B, n, h, k], keys [B, m, k, u], values [B, m, v, u], out [B, n, h * v]
    const index_t u = 1 + r.byte() % 3, hq = 1 + r.byte() % 3;
    auto q = P.make(r, std::array<index_t, 4>{extent(r, B), extent(r, Lq), extent(r, hq), extent(r, dk)});
    auto k = P.make(r, std::array<index_t, 4>{extent(r, B), extent(r, Lk), extent(r, dk), extent(r, u)});
    auto v = P.make(r, std::array<index_t, 4>{extent(r, B), extent(r, Lk), extent(r, dv), extent(r, u)});
    auto out = P.make(r, std::array<index_t, 3>{extent(r, B), extent(r, Lq), extent(r, hq * dv)});
    attnkit::lambda_options o;
    o.mask = mask_of(r, B, 1, Lq, Lk, lens, P, false);
    o.causal = r.flag(4);
    o.threads = threads;
    attnkit::lambda_position<float> pos;
    const int kind = r.byte() % 5;
    pos.kind = static_cast<attnkit::lambda_position_kind>(kind);
    const index_t rows = r.flag() ? 1 : 1 + r.byte() % 4, cols = extent(r, Lq / std::max<index_t>(rows, 1));
    pos.grid = attnkit::lambda_grid{rows, cols};
    if (kind == 1)
      pos.embeddings =
          P.make(r, std::array<index_t, 4>{extent(r, Lq), extent(r, Lk), extent(r, dk), extent(r, u)});
    if (kind == 2)
      pos.table = P.make(r, std::array<index_t, 4>{extent(r, table_side(rows)), extent(r, table_side(cols)),
                                                   extent(r, dk), extent(r, u)});
    if (kind == 3) {
      const index_t sc = 1 + 2 * (r.byte() % 3);
      pos.table = P.make(r, std::array<index_t, 4>{extent(r, rows > 1 ? sc : 1), extent(r, sc), extent(r, dk),
                                                   extent(r, u)});
    }
    if (huge_but_addressable(q, k, v, pos.embeddings, pos.table)) return 0;
    check_call(P, out, [&] { attnkit::lambda_attention(q, k, v, pos, out, o); });
    return 0;
  }
  auto q = P.make(r, std::array<index_t, 4>{extent(r, B), extent(r, H), extent(r, Lq), extent(r, dk)});
  auto k = P.make(r, std::array<index_t, 4>{extent(r, B), extent(r, Hkv), extent(r, Lk), extent(r, dk)});
  auto v = P.make(r, std::array<index_t, 4>{extent(r, B), extent(r, Hkv), extent(r, Lk), extent(r, dv)});
  auto out = P.make(r, std::array<index_t, 4>{extent(r, B), extent(r, H), extent(r, Lq), extent(r, dv)});
  if (huge_but_addressable(q, k, v)) return 0;  // valid-looking calls over huge stride-0 inputs
  const double scale = scale_of(r);
  switch (op) {
    case 0: {
      attnkit::attention_options o;
      o.mask = mask_of(r, B, H, Lq, Lk, lens, P, true);
      o.scale = scale;
      o.threads = threads;
      // (read last: inputs written before the training variants replay as before)
      switch (r.byte() % 4) {
        case 0:
          check_call(P, out, [&] { attnkit::full_attention(q, k, v, out, o); });
          break;
        case 1: {
          auto lse = P.make(r, std::array<index_t, 3>{extent(r, B), extent(r, H), extent(r, Lq)});
          check_outputs(
              P, [&] { attnkit::full_attention(q, k, v, out, lse, o); }, output<4>{out},
              output<3>{lse, values::lse});
          break;
        }
        case 2: {  // the backward, from whatever out and lse the pool holds
          auto lse = P.make(r, std::array<index_t, 3>{extent(r, B), extent(r, H), extent(r, Lq)});
          auto dout = P.make(r, out.extents());
          auto dq = P.make(r, q.extents());
          auto dk = P.make(r, k.extents());
          auto dv = P.make(r, v.extents());
          const values g = gradient_values(scale);
          check_outputs(
              P, [&] { attnkit::full_attention_backward(q, k, v, out, lse, dout, dq, dk, dv, o); },
              output<4>{dq, g}, output<4>{dk, g}, output<4>{dv, g});
          break;
        }
        default: {  // merge two states into out (maybe in place of the first)
          auto lse = P.make(r, std::array<index_t, 3>{extent(r, B), extent(r, H), extent(r, Lq)});
          auto ob = P.make(r, out.extents());
          auto lb = P.make(r, lse.extents());
          const bool in_place = r.flag();
          auto oo = in_place ? out : P.make(r, out.extents());
          auto lo = in_place ? lse : P.make(r, lse.extents());
          if (huge_but_addressable(out, ob)) return 0;
          check_outputs(
              P, [&] { attnkit::merge_attention_states(out, lse, ob, lb, oo, lo); }, output<4>{oo},
              output<3>{lo, values::lse});
        }
      }
      break;
    }
    case 1: {
      const auto f =
          attnkit::random_features<float>::orthogonal(1 + r.byte() % 24, std::max<index_t>(dk, 1), r.byte());
      attnkit::favor_options o;
      o.mask = mask_of(r, B, H, Lq, Lk, lens, P, r.flag(8));
      o.kernel = static_cast<attnkit::favor_kernel>(r.byte() % 4);
      o.causal = r.flag(3);
      o.scale = scale;
      o.relu_epsilon = r.flag(8) ? -1.0 : 1e-3;
      o.threads = threads;
      check_call(P, out, [&] { attnkit::favor_attention(q, k, v, out, f, o); });
      break;
    }
    case 2:
    case 3:
    case 4:
    case 5: {
      attnkit::combiner_options o;
      o.mask = mask_of(r, B, H, Lq, Lk, lens, P, r.flag(8));
      o.causal = r.flag(3);
      o.pooling = static_cast<attnkit::combiner_pooling>(r.byte() % 3);
      o.scale = scale;
      o.threads = threads;
      if (op == 2) {
        const attnkit::combiner::fixed plan{span_of(r, Lq)};
        check_call(P, out, [&] { attnkit::combiner_attention(q, k, v, out, plan, o); });
      } else if (op == 3) {
        check_call(P, out,
                   [&] { attnkit::combiner_attention(q, k, v, out, attnkit::combiner::logsparse{}, o); });
      } else if (op == 4) {
        const index_t rows = 1 + r.byte() % 6;
        attnkit::combiner::axial plan{extent(r, rows), extent(r, Lq / rows),
                                      static_cast<attnkit::combiner::axial_order>(r.byte() % 4)};
        check_call(P, out, [&] { attnkit::combiner_attention(q, k, v, out, plan, o); });
      } else {
        attnkit::combiner::learnable plan;
        plan.span = span_of(r, Lq);
        if (r.flag()) {
          const index_t ib = r.flag() ? 1 : extent(r, B), ih = r.flag() ? 1 : extent(r, Hkv),
                        il = extent(r, Lq);
          ids.resize(static_cast<std::size_t>(std::clamp<index_t>(work({ib, ih, il}), 0, 4096)));
          for (auto& x : ids)
            x = r.flag(16) ? static_cast<std::int8_t>(r.byte()) : r.byte() % std::max<index_t>(Lq, 1);
          if (static_cast<index_t>(ids.size()) == work({ib, ih, il}))
            plan.cluster_ids = view<const std::int32_t, 3>::contiguous(ids.data(), {ib, ih, il});
        } else {
          plan.centroids = P.make(r, std::array<index_t, 3>{r.flag() ? 1 : extent(r, Hkv),
                                                            extent(r, 1 + r.byte() % 4), extent(r, dk)});
          if (huge_but_addressable(plan.centroids)) return 0;
        }
        check_call(P, out, [&] { attnkit::combiner_attention(q, k, v, out, plan, o); });
      }
      break;
    }
    default: {  // relative attention on a grid
      attnkit::relative_options o;
      o.mask = mask_of(r, B, H, Lq, Lk, lens, P, r.flag(8));
      o.mode = static_cast<attnkit::relative_mode>(r.byte() % 3);
      o.offset = static_cast<attnkit::relative_offset>(r.byte() % 3);
      o.scale = scale;
      o.threads = threads;
      const index_t rows = 1 + r.byte() % 5;
      const attnkit::relative_grid grid{extent(r, rows), extent(r, Lq / rows)};
      auto table = P.make(r, std::array<index_t, 3>{extent(r, H), extent(r, table_side(grid.rows)),
                                                    extent(r, table_side(grid.cols))});
      if (r.flag()) {
        check_call(P, out, [&] { attnkit::relative_attention_2d(q, k, v, table, grid, out, o); });
        break;
      }
      auto lse = P.make(r, std::array<index_t, 3>{extent(r, B), extent(r, H), extent(r, Lq)});
      if (r.flag()) {
        check_outputs(
            P, [&] { attnkit::relative_attention_2d(q, k, v, table, grid, out, lse, o); }, output<4>{out},
            output<3>{lse, values::lse});
        break;
      }
      auto dout = P.make(r, out.extents());
      auto dq = P.make(r, q.extents());
      auto dk = P.make(r, k.extents());
      auto dv = P.make(r, v.extents());
      auto dtable = P.make(r, table.extents());
      check_outputs(
          P,
          [&] {
            attnkit::relative_attention_2d_backward(q, k, v, table, grid, out, lse, dout, dq, dk, dv, dtable,
                                                    o);
          },
          output<4>{dq, gradient_values(scale)}, output<4>{dk, gradient_values(scale)},
          output<4>{dv, gradient_values(scale)}, output<3>{dtable, gradient_values(scale)});
    }
  }
  return 0;
}
