// attnkit tests: shared helpers. Seeded random fill, whole-tensor comparison with one assertion
// that reports the worst element, and strided / padded buffers that stand in for caller memory.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include <attnkit/core/simd/arch.hpp>
#include <attnkit/core/tensor.hpp>

namespace attnkit_test {

/// Every SIMD architecture this build can run: scalar, then avx2 and avx512 as the compiler flags
/// enable them (an AVX-512 build also tests the AVX2 kernels).
using arch_list = decltype(std::tuple_cat(
    std::tuple<attnkit::simd::scalar>{},
    std::conditional_t<ATTNKIT_HAS_AVX2, std::tuple<attnkit::simd::avx2>, std::tuple<>>{},
    std::conditional_t<ATTNKIT_HAS_AVX512, std::tuple<attnkit::simd::avx512>, std::tuple<>>{}));

/// Calls f(Arch{}) for every architecture of arch_list.
template <class F>
void for_each_arch(F&& f) {
  std::apply([&](auto... arch) { (f(arch), ...); }, arch_list{});
}

// Bitwise equality of two equally long arrays; empty arrays (possibly null data) compare equal.
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

using attnkit::index_t;
template <class T, std::size_t R>
using view = attnkit::tensor_view<T, R>;

/// A small, fast 64-bit generator (splitmix64); satisfies UniformRandomBitGenerator.
struct test_rng {
  using result_type = std::uint64_t;
  std::uint64_t state;
  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return ~result_type(0); }
  result_type operator()() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform double in [lo, hi).
  double uniform(double lo, double hi) {
    return lo + (hi - lo) * static_cast<double>((*this)() >> 11) * 0x1p-53;
  }
};

/// Returns a generator seeded from Catch's --rng-seed and a salt that tells the uses apart.
inline test_rng seeded_rng(std::uint64_t salt) {
  const std::uint64_t s = static_cast<std::uint64_t>(Catch::rngSeed());
  return test_rng{s * 0xD1B54A32D192ED03ull + salt * 0x9E3779B97F4A7C15ull + 1};
}

/// Calls f(index) for every multi-index of `ext` in row-major order (nothing when any extent is 0).
template <std::size_t R, class F>
void for_each_index(const std::array<index_t, R>& ext, F&& f) {
  for (index_t e : ext)
    if (e <= 0) return;
  std::array<index_t, R> ix{};
  for (;;) {
    f(static_cast<const std::array<index_t, R>&>(ix));
    std::size_t d = R;
    for (;;) {
      if (d == 0) return;
      --d;
      if (++ix[d] < ext[d]) break;
      ix[d] = 0;
    }
  }
}

/// The element of `x` at multi-index `ix` (independent of tensor_view::operator()).
template <class T, std::size_t R>
T& at(const view<T, R>& x, const std::array<index_t, R>& ix) {
  index_t off = 0;
  for (std::size_t d = 0; d < R; ++d) off += ix[d] * x.stride(d);
  return x.data()[off];
}

template <std::size_t R>
std::string index_string(const std::array<index_t, R>& ix) {
  std::ostringstream os;
  os << '[';
  for (std::size_t d = 0; d < R; ++d) os << (d ? ", " : "") << ix[d];
  os << ']';
  return os.str();
}

/// Fills every element of `x` with a uniform value in [lo, hi).
template <class T, std::size_t R, class G>
void fill_uniform(const view<T, R>& x, G& gen, double lo, double hi) {
  static_assert(R >= 1, "fill_uniform: rank >= 1");
  const index_t n = x.extent(R - 1), st = x.stride(R - 1);
  std::array<index_t, R> outer = x.extents();
  outer[R - 1] = 1;  // visit every row once, then run along the last axis
  for_each_index(outer, [&](const std::array<index_t, R>& ix) {
    T* row = &at(x, ix);
    for (index_t e = 0; e < n; ++e) row[e * st] = static_cast<T>(gen.uniform(lo, hi));
  });
}

/// Checks |got - want| <= atol + rtol * |want| for every element with ONE assertion; on failure
/// reports the number of violations, the worst element (largest |diff| / tol), its values.
/// NaN or Inf in `got` where `want` is finite is a violation.
template <class T, class U, std::size_t R>
void require_close(const view<T, R>& got, const view<U, R>& want, double atol, double rtol,
                   const std::string& what = "") {
  REQUIRE(got.extents() == want.extents());
  index_t violations = 0, count = 0;
  double worst_ratio = -1, worst_got = 0, worst_want = 0, max_abs_diff = 0;
  std::array<index_t, R> worst{};
  for_each_index(got.extents(), [&](const std::array<index_t, R>& ix) {
    ++count;
    const double g = static_cast<double>(at(got, ix));
    const double w = static_cast<double>(at(want, ix));
    const double tol = atol + rtol * std::fabs(w);
    const double diff = std::fabs(g - w);
    const bool ok = (g == w) || diff <= tol;  // g == w covers equal infinities
    const double inf = std::numeric_limits<double>::infinity();
    double ratio = 0;
    if (!(g == w)) ratio = std::isfinite(diff) ? (tol > 0 ? diff / tol : inf) : inf;
    if (!ok) ++violations;
    if (std::isfinite(diff)) max_abs_diff = std::max(max_abs_diff, diff);
    if (ratio > worst_ratio) {
      worst_ratio = ratio;
      worst = ix;
      worst_got = g;
      worst_want = w;
    }
  });
  std::ostringstream os;
  os.precision(10);
  os << what << (what.empty() ? "" : ": ") << violations << " of " << count
     << " elements violate |y - ref| <= " << atol << " + " << rtol << " * |ref|; worst at "
     << index_string(worst) << ": y = " << worst_got << ", ref = " << worst_want
     << ", |diff| = " << std::fabs(worst_got - worst_want) << " (" << worst_ratio
     << " x tol); max |diff| over finite = " << max_abs_diff;
  INFO(os.str());
  REQUIRE(violations == 0);
}

/// Checks that two views hold bitwise identical elements (ONE assertion).
template <class T, std::size_t R>
void require_same_bits(const view<T, R>& a, const view<T, R>& b, const std::string& what = "") {
  REQUIRE(a.extents() == b.extents());
  index_t diffs = 0;
  std::array<index_t, R> first{};
  double fa = 0, fb = 0;
  for_each_index(a.extents(), [&](const std::array<index_t, R>& ix) {
    if (std::memcmp(&at(a, ix), &at(b, ix), sizeof(T)) != 0) {
      if (diffs == 0) {
        first = ix;
        fa = static_cast<double>(at(a, ix));
        fb = static_cast<double>(at(b, ix));
      }
      ++diffs;
    }
  });
  std::ostringstream os;
  os.precision(17);
  os << what << (what.empty() ? "" : ": ") << diffs << " elements differ in their bits; first at "
     << index_string(first) << ": " << fa << " vs " << fb;
  INFO(os.str());
  REQUIRE(diffs == 0);
}

/// The first `rows` rows (queries or keys) of a [B, H, Lq, D] view.
template <class T>
view<T, 4> prefix_rows(const view<T, 4>& x, index_t rows) {
  return view<T, 4>(x.data(), {x.extent(0), x.extent(1), rows, x.extent(3)}, x.strides());
}

/// Memory layouts of a [B, H, L, D] view over caller memory.
enum class layout {
  contiguous,   ///< [B, H, L, D] row-major
  padded,       ///< row-major with padding after every row / head / batch and a misaligned start
  bshd,         ///< [B, L, H, D] memory (the view's strides permute the axes)
  bshd_padded,  ///< [B, L, H, D] with padded rows (as a slice of a packed QKV buffer)
  dim_major,    ///< [B, H, D, L] memory: the last axis of the view has a large stride
  gapped,       ///< row-major with stride 2 along the last axis
  reversed,     ///< row-major with a negative stride along L (the sequence runs backwards)
  broadcast_b,  ///< stride 0 along B (inputs only: every batch entry shares the same data)
};

inline const char* layout_name(layout l) {
  switch (l) {
    case layout::contiguous:
      return "contiguous";
    case layout::padded:
      return "padded";
    case layout::bshd:
      return "bshd";
    case layout::bshd_padded:
      return "bshd_padded";
    case layout::dim_major:
      return "dim_major";
    case layout::gapped:
      return "gapped";
    case layout::reversed:
      return "reversed";
    case layout::broadcast_b:
      return "broadcast_b";
  }
  return "?";
}

/// Owning storage plus a view of it in one of the layouts; storage outside the view keeps the
/// fill value, so a writer that strays out of its view can be caught (untouched_outside()).
template <class T>
struct strided_buffer {
  strided_buffer() = default;
  strided_buffer(strided_buffer&&) noexcept =
      default;  // the view stays valid: vector moves keep the heap block
  strided_buffer& operator=(strided_buffer&&) noexcept = default;
  strided_buffer(const strided_buffer&) = delete;
  strided_buffer& operator=(const strided_buffer&) = delete;

  std::vector<T> storage;
  view<T, 4> v;
  T fill{};

  view<const T, 4> cv() const { return v; }

  /// Number of storage elements outside the view whose bits differ from the fill value.
  index_t touched_outside() const {
    std::vector<char> inside(storage.size(), 0);
    const T* base = storage.data();
    for_each_index(v.extents(), [&](const std::array<index_t, 4>& ix) {
      inside[static_cast<std::size_t>(&at(v, ix) - base)] = 1;
    });
    index_t n = 0;
    for (std::size_t i = 0; i < storage.size(); ++i)
      if (!inside[i] && std::memcmp(&storage[i], &fill, sizeof(T)) != 0) ++n;
    return n;
  }
};

/// Makes a [B, H, L, D] view with extents `ext` in layout `lay` over fresh storage filled with `fill`.
template <class T>
strided_buffer<T> make_buffer(const std::array<index_t, 4>& ext, layout lay, T fill = T(0)) {
  std::array<int, 4> order{0, 1, 2, 3};  // memory order, outermost first
  std::array<index_t, 3> pad{0, 0, 0};   // extra elements after each level (outer, mid, inner)
  index_t inner = 1, lead = 0;
  switch (lay) {
    case layout::contiguous:
      break;
    case layout::padded:
      pad = {5, 3, 2};
      lead = 1;
      break;
    case layout::bshd:
      order = {0, 2, 1, 3};
      break;
    case layout::bshd_padded:
      order = {0, 2, 1, 3};
      pad = {3, 7, 0};
      lead = 3;
      break;
    case layout::dim_major:
      order = {0, 1, 3, 2};
      pad = {0, 0, 1};
      break;
    case layout::gapped:
      inner = 2;
      lead = 1;
      break;
    case layout::reversed:
      pad = {0, 0, 1};
      break;
    case layout::broadcast_b:
      break;
  }
  std::array<index_t, 4> st{};
  st[static_cast<std::size_t>(order[3])] = inner;
  for (int lvl = 2; lvl >= 0; --lvl) {
    const auto in = static_cast<std::size_t>(order[static_cast<std::size_t>(lvl) + 1]);
    st[static_cast<std::size_t>(order[static_cast<std::size_t>(lvl)])] =
        st[in] * std::max<index_t>(ext[in], 1) + pad[static_cast<std::size_t>(lvl)];
  }
  if (lay == layout::reversed) st[2] = -st[2];
  if (lay == layout::broadcast_b) st[0] = 0;
  index_t lo = 0, hi = 0;
  for (std::size_t d = 0; d < 4; ++d) {
    const index_t span = (std::max<index_t>(ext[d], 1) - 1) * st[d];
    lo += std::min<index_t>(0, span);
    hi += std::max<index_t>(0, span);
  }
  strided_buffer<T> b;
  b.fill = fill;
  const index_t base = lead - lo;
  b.storage.assign(static_cast<std::size_t>(base + hi + 1 + 2), fill);  // 2 trailing guard elements
  b.v = view<T, 4>(b.storage.data() + base, ext, st);
  return b;
}

/// An fp64 tensor in layout `lay`, as T, in fresh storage filled with -5555.5 outside the view.
template <class T>
strided_buffer<T> to_buffer(const attnkit::tensor<double, 4>& x, layout lay) {
  auto b = make_buffer<T>(x.extents(), lay, T(-5555.5));
  for_each_index(x.extents(),
                 [&](const std::array<index_t, 4>& ix) { at(b.v, ix) = static_cast<T>(at(x.cview(), ix)); });
  return b;
}

}  // namespace attnkit_test
