// attnkit: argument validation. Every public entry checks before it touches memory.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "config.hpp"

ATTNKIT_BEGIN_NAMESPACE

/// Thrown by every public entry whose arguments are inconsistent; nothing has been written then.
class invalid_argument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

template <std::size_t N>
std::string shape_string(const std::array<std::ptrdiff_t, N>& e) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < N; ++i) os << (i ? ", " : "") << e[i];
  os << ']';
  return os.str();
}

/// Throws invalid_argument("<where>: <what>") when `ok` is false.
inline void require(bool ok, const char* where, const std::string& what) {
  if (!ok) throw invalid_argument(std::string(where) + ": " + what);
}

/// The same with the message built by what() only on failure: checks on the hot path of small
/// calls (decoding one token) cost no string formatting.
template <class F, class = std::enable_if_t<std::is_invocable_r_v<std::string, F&>>>
void require(bool ok, const char* where, F&& what) {
  if (!ok) throw invalid_argument(std::string(where) + ": " + what());
}

/// a * b when it fits std::ptrdiff_t (a, b >= 0), else -1.
inline std::ptrdiff_t checked_product(std::ptrdiff_t a, std::ptrdiff_t b) {
  if (a == 0 || b == 0) return 0;
  return a > std::numeric_limits<std::ptrdiff_t>::max() / b ? -1 : a * b;
}

/// The number of elements of a view with extents e (>= 0), or -1 when it does not fit std::ptrdiff_t.
template <std::size_t N>
std::ptrdiff_t checked_count(const std::array<std::ptrdiff_t, N>& e) {
  for (std::size_t d = 0; d < N; ++d)
    if (e[d] == 0) return 0;
  std::ptrdiff_t n = 1;
  for (std::size_t d = 0; d < N && n >= 0; ++d) n = checked_product(n, e[d]);
  return n;
}

/// The lowest and highest element offsets a view with extents e (> 0) and strides s reaches:
/// offsets lo <= 0 <= hi (in elements); false when one does not fit std::ptrdiff_t.
template <std::size_t N>
bool checked_reach(const std::array<std::ptrdiff_t, N>& e, const std::array<std::ptrdiff_t, N>& s,
                   std::ptrdiff_t& lo, std::ptrdiff_t& hi) {
  constexpr std::ptrdiff_t max = std::numeric_limits<std::ptrdiff_t>::max();
  lo = hi = 0;
  for (std::size_t d = 0; d < N; ++d) {
    if (e[d] <= 1 || s[d] == 0) continue;
    if (s[d] == std::numeric_limits<std::ptrdiff_t>::min()) return false;
    const std::ptrdiff_t step = checked_product(e[d] - 1, s[d] < 0 ? -s[d] : s[d]);
    if (step < 0) return false;
    if (s[d] > 0) {
      if (hi > max - step) return false;
      hi += step;
    } else {
      if (lo < -max + step) return false;
      lo -= step;
    }
  }
  return true;
}

/// Throws unless x is a view operators can address: extents >= 0, an element count and a reach
/// (extents x strides, in bytes) that fit std::ptrdiff_t, and data unless it has no elements.
/// That the reached memory exists is the caller's duty.
template <class V>
void require_view(const V& x, const char* where, const char* name) {
  using T = typename V::element_type;
  const auto& e = x.extents();
  const auto& s = x.strides();
  for (std::size_t d = 0; d < e.size(); ++d)
    require(e[d] >= 0, where,
            [&] { return std::string(name) + " has a negative extent: " + shape_string(e); });
  const std::ptrdiff_t n = checked_count(e);
  require(n >= 0, where, [&] {
    return std::string(name) + " has shape " + shape_string(e) +
           ": its element count overflows std::ptrdiff_t";
  });
  if (n == 0) return;
  std::ptrdiff_t lo = 0, hi = 0;
  const std::ptrdiff_t bytes = static_cast<std::ptrdiff_t>(sizeof(T));
  const bool fits =
      checked_reach(e, s, lo, hi) && hi - lo <= std::numeric_limits<std::ptrdiff_t>::max() / bytes;
  require(fits, where, [&] {
    return std::string(name) + " has shape " + shape_string(e) + " and strides " + shape_string(s) +
           ": the memory it spans overflows std::ptrdiff_t";
  });
  require(x.data() != nullptr, where, [&] {
    return std::string(name) + " has shape " + shape_string(e) + " but no data (null pointer)";
  });
}

/// True when no two elements of x (extents > 0, a checked reach) share an address: sorted by
/// stride, each dimension of extent > 1 steps past everything the smaller ones reach. Sufficient,
/// and necessary for every layout that permutes and pads a dense array (any interleaving that
/// fails it is rejected as an output although its elements might be distinct).
template <class V>
bool elements_distinct(const V& x) {
  constexpr std::size_t N = V::rank;
  std::array<std::pair<std::ptrdiff_t, std::ptrdiff_t>, N> dims{};  // (|stride|, extent)
  std::size_t n = 0;
  for (std::size_t d = 0; d < N; ++d)
    if (x.extent(d) > 1) dims[n++] = {x.stride(d) < 0 ? -x.stride(d) : x.stride(d), x.extent(d)};
  for (std::size_t i = 1; i < n; ++i)  // insertion sort of <= Rank entries
    for (std::size_t j = i; j > 0 && dims[j] < dims[j - 1]; --j) std::swap(dims[j], dims[j - 1]);
  std::ptrdiff_t reach = 0;  // fits: require_view checked the sum of these steps
  for (std::size_t i = 0; i < n; ++i) {
    if (dims[i].first <= reach) return false;
    reach += dims[i].first * (dims[i].second - 1);
  }
  return true;
}

/// The bytes [lo, hi) a view's elements occupy (lo == hi for a view without elements).
struct memory_span {
  std::uintptr_t lo = 0, hi = 0;
  bool overlaps(const memory_span& o) const { return lo < hi && o.lo < o.hi && lo < o.hi && o.lo < hi; }
};

template <class V>
memory_span span_of(const V& x) {
  std::ptrdiff_t lo = 0, hi = 0;
  if (checked_count(x.extents()) <= 0 || !x.data() || !checked_reach(x.extents(), x.strides(), lo, hi))
    return {};
  using T = typename V::element_type;
  const auto base = reinterpret_cast<std::uintptr_t>(x.data());
  const auto bytes = static_cast<std::uintptr_t>(sizeof(T));
  return {base - static_cast<std::uintptr_t>(-lo) * bytes,
          base + (static_cast<std::uintptr_t>(hi) + 1) * bytes};
}

/// A view with the name error messages give it.
template <class V>
struct named_view {
  const char* name;
  const V& view;
};
template <class V>
named_view<V> arg(const char* name, const V& view) {
  return {name, view};
}

/// Throws when the memory of out overlaps that of any of `inputs` (views without elements never do).
template <class O, class... I>
void require_disjoint(const char* where, const named_view<O>& out, const named_view<I>&... inputs) {
  const memory_span so = span_of(out.view);
  auto disjoint = [&](const auto& in) {
    require(!so.overlaps(span_of(in.view)), where, [&] {
      return std::string(out.name) + " overlaps " + in.name + " in memory (" + out.name + " " +
             shape_string(out.view.extents()) + " strides " + shape_string(out.view.strides()) + ", " +
             in.name + " " + shape_string(in.view.extents()) + " strides " + shape_string(in.view.strides()) +
             "): an output must not share memory with an input or another output";
    });
  };
  (disjoint(inputs), ...);
}

/// `in`, or an empty view when it is `out` itself (same data, extents and strides): the input
/// to leave out of require_output's list for an operator that may write in place.
template <class I, class O>
I unless_in_place(const I& in, const O& out) {
  return in.data() == out.data() && in.extents() == out.extents() && in.strides() == out.strides() ? I{} : in;
}

/// Checks an output view: require_view, elements that do not overlap each other, and memory that
/// overlaps none of `inputs` (an operator that may write in place leaves that input out).
template <class O, class... I>
void require_output(const char* where, const named_view<O>& out, const named_view<I>&... inputs) {
  require_view(out.view, where, out.name);
  if (checked_count(out.view.extents()) == 0) return;
  require(elements_distinct(out.view), where, [&] {
    return std::string(out.name) + " has shape " + shape_string(out.view.extents()) + " and strides " +
           shape_string(out.view.strides()) + ": its elements overlap (outputs would overwrite each other)";
  });
  require_disjoint(where, out, inputs...);
}

/// True when rows, cols >= 0 and rows * cols == n, without overflowing for huge rows or cols.
inline bool grid_covers(std::int64_t rows, std::int64_t cols, std::int64_t n) {
  if (rows < 0 || cols < 0) return false;
  if (rows == 0 || cols == 0) return n == 0;
  return cols <= n / rows && rows * cols == n;
}

}  // namespace detail

ATTNKIT_END_NAMESPACE
