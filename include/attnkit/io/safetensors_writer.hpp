// attnkit: writing .safetensors files (the format read by safetensors.hpp, which includes this):
// F32 or F64 tensors and string metadata, for tests, tools and exported parameters.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/check.hpp"
#include "detail/safetensors.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace io {

/// Writes `tensors` (name -> (shape, contiguous row-major data)) as F32 (T = float) or F64
/// (T = double) in the given order, with optional metadata; the header is padded with spaces to
/// a multiple of 8 bytes, so every tensor starts 8-byte aligned in the file. Throws
/// attnkit::invalid_argument("attnkit::io::write_safetensors: <path>: ...") for an empty, duplicate
/// or "__metadata__" name, a negative extent, or null data of a non-empty tensor (before the file is
/// created), and std::runtime_error with the same prefix when the file cannot be written.
template <class T>
void write_safetensors(
    const std::string& path,
    const std::vector<std::pair<std::string, std::pair<std::vector<index_t>, const T*>>>& tensors,
    const std::map<std::string, std::string>& metadata = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "write_safetensors: T must be float (F32) or double (F64)");
  static_assert(std::numeric_limits<T>::is_iec559, "write_safetensors: T must be IEEE 754");
  const std::string where = "attnkit::io::write_safetensors: " + path;
  using bits_t = std::conditional_t<std::is_same_v<T, float>, std::uint32_t, std::uint64_t>;

  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) {
    nlohmann::json m = nlohmann::json::object();
    for (const auto& [k, val] : metadata) m[k] = val;
    header["__metadata__"] = std::move(m);
  }
  std::uint64_t offset = 0;
  for (const auto& t : tensors) {
    // Named references, not structured bindings: C++17 lambdas cannot capture those (clang).
    const std::string& name = t.first;
    const std::vector<index_t>& shape = t.second.first;
    const T* data = t.second.second;
    attnkit::detail::require(!name.empty() && name != "__metadata__", where.c_str(), [&] {
      return std::string("invalid tensor name \"" + detail::brief(name) + "\"");
    });
    attnkit::detail::require(!header.contains(name), where.c_str(), [&] {
      return std::string("duplicate tensor name \"" + detail::brief(name) + "\"");
    });
    std::uint64_t numel = 1;
    bool zero = false;
    for (index_t e : shape) {
      attnkit::detail::require(e >= 0, where.c_str(), [&] {
        return std::string("tensor \"" + detail::brief(name) + "\" has a negative extent in " +
                           detail::shape_string(shape));
      });
      const auto x = static_cast<std::uint64_t>(e);
      if (x == 0) zero = true;
      attnkit::detail::require(zero || numel <= std::numeric_limits<std::uint64_t>::max() / sizeof(T) / x,
                               where.c_str(), [&] {
                                 return std::string("tensor \"" + detail::brief(name) + "\" of shape " +
                                                    detail::shape_string(shape) + " has too many elements");
                               });
      if (!zero) numel *= x;
    }
    if (zero) numel = 0;
    attnkit::detail::require(numel == 0 || data != nullptr, where.c_str(), [&] {
      return std::string("tensor \"" + detail::brief(name) + "\" of shape " + detail::shape_string(shape) +
                         " has no data");
    });
    const std::uint64_t bytes = numel * sizeof(T);
    attnkit::detail::require(offset <= std::numeric_limits<std::uint64_t>::max() - bytes, where.c_str(),
                             "the tensors hold more bytes than a file offset can count");
    header[name] = {{"dtype", std::is_same_v<T, float> ? "F32" : "F64"},
                    {"shape", shape},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& ex) {  // e.g. a name or metadata that is not UTF-8
    attnkit::detail::require(false, where.c_str(), std::string("cannot encode the header: ") + ex.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error(where + ": cannot create the file");
  unsigned char len[8];
  detail::store_le<std::uint64_t>(len, static_cast<std::uint64_t>(text.size()));
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  std::vector<unsigned char> buf;
  constexpr std::size_t chunk = 16384;
  for (const auto& t : tensors) {
    const T* data = t.second.second;
    std::size_t n = 1;
    for (index_t e : t.second.first) n *= static_cast<std::size_t>(e);
    for (std::size_t i0 = 0; i0 < n; i0 += chunk) {
      const std::size_t m = std::min(chunk, n - i0);
      buf.resize(m * sizeof(T));
      for (std::size_t i = 0; i < m; ++i) {
        bits_t b;
        std::memcpy(&b, data + i0 + i, sizeof b);
        detail::store_le<bits_t>(buf.data() + i * sizeof(T), b);
      }
      out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
    }
  }
  out.flush();
  if (!out) throw std::runtime_error(where + ": writing the file failed");
}

}  // namespace io
ATTNKIT_END_NAMESPACE
