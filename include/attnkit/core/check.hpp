// attnkit: argument validation. Every public entry checks before it touches memory.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

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

/// True when rows, cols >= 0 and rows * cols == n, without overflowing for huge rows or cols.
inline bool grid_covers(std::int64_t rows, std::int64_t cols, std::int64_t n) {
  if (rows < 0 || cols < 0) return false;
  if (rows == 0 || cols == 0) return n == 0;
  return cols <= n / rows && rows * cols == n;
}

}  // namespace detail

ATTNKIT_END_NAMESPACE
