// attnkit: the private helpers of the safetensors reader and writer (docs/design.md §5.5):
// bounded quotes of names and JSON values for error messages, little-endian loads and stores,
// range checks of integers.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "../../core/config.hpp"
#include "../../core/tensor.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// "[a, b, ...]": at most the first 16 extents of a shape (a file may give it any rank).
inline std::string shape_string(const std::vector<index_t>& s) {
  std::string r = "[";
  for (std::size_t i = 0; i < s.size() && i < 16; ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() > 16 ? ", ... (rank " + std::to_string(s.size()) + ")]" : "]");
}

/// The longest excerpt of a name or JSON value an error message quotes.
constexpr std::size_t quote_limit = 200;

/// s, cut to quote_limit bytes (at a UTF-8 character boundary) with "..." when longer.
inline std::string brief(const std::string& s) {
  if (s.size() <= quote_limit) return s;
  std::size_t n = quote_limit;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0u) == 0x80u) --n;
  return s.substr(0, n) + "...";
}

/// Appends JSON text of v to out until out holds more than quote_limit bytes (then "..."): a
/// bounded excerpt of any value, recursing no deeper than out's budget allows.
inline void brief_json(const nlohmann::json& v, std::string& out) {
  if (out.size() > quote_limit) return;
  if (v.is_array() || v.is_object()) {
    out += v.is_array() ? '[' : '{';
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (out.size() > quote_limit) {
        out += "...";
        return;
      }
      if (!first) out += ", ";
      first = false;
      if (v.is_object()) out += nlohmann::json(brief(it.key())).dump() + ": ";
      brief_json(it.value(), out);
    }
    out += v.is_array() ? ']' : '}';
  } else {
    out += v.is_string() ? nlohmann::json(brief(v.get_ref<const std::string&>())).dump() : v.dump();
  }
}
inline std::string brief(const nlohmann::json& v) {
  std::string out;
  brief_json(v, out);
  return brief(out);
}

template <class U>
U load_le(const unsigned char* p) {
  static_assert(std::is_unsigned_v<U>, "load_le: unsigned types only");
  U v = 0;
  for (std::size_t i = 0; i < sizeof(U); ++i) v = static_cast<U>(v | (static_cast<U>(p[i]) << (8 * i)));
  return v;
}

template <class U>
void store_le(unsigned char* p, U v) {
  static_assert(std::is_unsigned_v<U>, "store_le: unsigned types only");
  for (std::size_t i = 0; i < sizeof(U); ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}

template <class F, class U>
F bit_cast_to(U u) {
  static_assert(sizeof(F) == sizeof(U), "bit_cast_to: sizes differ");
  F f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// True when the integer v is a value of T (for bool: 0 or 1).
template <class T, class I>
bool integer_fits(I v) {
  if constexpr (std::is_same_v<T, bool>) {
    return v == 0 || v == 1;
  } else if constexpr (std::is_floating_point_v<T>) {
    return true;
  } else if constexpr (std::is_signed_v<I>) {
    if constexpr (std::is_signed_v<T>) {
      return v >= static_cast<std::int64_t>(std::numeric_limits<T>::min()) &&
             v <= static_cast<std::int64_t>(std::numeric_limits<T>::max());
    } else {
      return v >= 0 &&
             static_cast<std::uint64_t>(v) <= static_cast<std::uint64_t>(std::numeric_limits<T>::max());
    }
  } else {
    return static_cast<std::uint64_t>(v) <= static_cast<std::uint64_t>(std::numeric_limits<T>::max());
  }
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
