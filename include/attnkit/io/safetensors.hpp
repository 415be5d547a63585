// attnkit: a reader (and a small f32/f64 writer) of safetensors files. Needs nlohmann::json 3.10+.
//
// The format (https://github.com/huggingface/safetensors, "Format"):
//   8 bytes     N, a little-endian u64: the size of the header
//   N bytes     a UTF-8 JSON object (it starts with '{' and may be padded with trailing spaces):
//               {"__metadata__": {"key": "value", ...},                  (optional, str -> str)
//                "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
//   the rest    the byte buffer; [begin, end) are byte offsets inside it, the tensors are
//               little-endian and row-major
// The reader follows the reference implementation's checks: the header is at most 100 MB of JSON
// text (no NUL byte: readers that stop at one would see another header), no object repeats a key
// (at any depth), values nest at most 64 deep (a valid header needs 3), end - begin is exactly
// numel * itemsize, and the tensors cover the byte buffer entirely, without holes or overlaps
// (empty tensors take no bytes). A file failing any check throws
// std::runtime_error("attnkit::io::safetensors_file: <path>: <what>") from the constructor, before
// any tensor is read; so do read() and read_tensor() for an absent name, a wrong count or rank, or
// a value the destination type cannot hold. Messages quote at most a few hundred bytes of a name
// or value, whatever the file holds.
//
//   attnkit::io::safetensors_file f("model.safetensors");
//   auto w = f.read_tensor<float, 2>("encoder.proj.weight");   // F32, F16, BF16, ... -> float
//   std::vector<float> b(f.find("encoder.proj.bias")->numel());
//   f.read("encoder.proj.bias", b.data(), static_cast<attnkit::index_t>(b.size()));
//
//   attnkit::io::write_safetensors<float>("out.safetensors", {{"w", {{2, 3}, w_ptr}}}, {{"format", "pt"}});
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/check.hpp"
#include "../core/config.hpp"
#include "../core/tensor.hpp"
#include "detail/safetensors.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace io {

/// The element types of safetensors attnkit reads ("F64", "F32", "F16", "BF16", "I64", "I32",
/// "I16", "I8", "U8", "BOOL"). Other dtypes (U16, U32, U64, F8_*, ...) are rejected when the file
/// is opened.
enum class dtype { f64, f32, f16, bf16, i64, i32, i16, i8, u8, boolean };

/// The dtype string of the header ("F32", "BF16", "BOOL", ...).
inline const char* dtype_name(dtype t) {
  switch (t) {
    case dtype::f64:
      return "F64";
    case dtype::f32:
      return "F32";
    case dtype::f16:
      return "F16";
    case dtype::bf16:
      return "BF16";
    case dtype::i64:
      return "I64";
    case dtype::i32:
      return "I32";
    case dtype::i16:
      return "I16";
    case dtype::i8:
      return "I8";
    case dtype::u8:
      return "U8";
    case dtype::boolean:
      return "BOOL";
  }
  return "?";
}

/// Bytes per element.
inline std::size_t dtype_size(dtype t) {
  switch (t) {
    case dtype::f64:
    case dtype::i64:
      return 8;
    case dtype::f32:
    case dtype::i32:
      return 4;
    case dtype::f16:
    case dtype::bf16:
    case dtype::i16:
      return 2;
    case dtype::i8:
    case dtype::u8:
    case dtype::boolean:
      return 1;
  }
  return 0;
}

/// Exact IEEE binary16 -> binary32: normals, subnormals (down to 2^-24), +-0, +-inf; a NaN keeps
/// its sign and payload (shifted into the top of the float's mantissa, so quiet stays quiet).
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t mant = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + (127 - 15)) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal: mant * 2^-24. Shift the leading 1 up to the implicit bit (bit 10).
    std::uint32_t m = mant;
    std::uint32_t e = 127 - 15 + 1;  // the exponent of 2^-14, decremented once per shift
    while ((m & 0x400u) == 0) {
      m <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((m & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

/// bfloat16 -> float: the 16 bits are the upper half of the float (exact for every value).
inline float bfloat16_to_float(std::uint16_t b) {
  const std::uint32_t bits = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

/// One tensor of the header.
struct safetensors_entry {
  std::string name;
  dtype type = dtype::f32;
  std::vector<index_t> shape;        ///< empty: a scalar (one element)
  std::uint64_t begin = 0, end = 0;  ///< byte offsets inside the data section, [begin, end)
  /// Number of elements: the product of the shape (1 for a scalar).
  index_t numel() const {
    index_t n = 1;
    for (index_t e : shape) n *= e;
    return n;
  }
};

/// A safetensors file read into memory (header validated, data copied once). Copyable; reading
/// tensors is const and thread-safe.
class safetensors_file {
 public:
  /// Reads the whole file and validates the header; throws std::runtime_error naming the path and
  /// the problem.
  explicit safetensors_file(const std::string& path) : path_(path) { load(); }

  /// Reads a safetensors file held in memory (the `size` bytes at `bytes`, copied), validated as
  /// the constructor validates a file; `name` stands for the path in error messages.
  static safetensors_file from_memory(const void* bytes, std::size_t size,
                                      const std::string& name = "<memory>") {
    safetensors_file f;
    f.path_ = name;
    const auto* p = static_cast<const unsigned char*>(bytes);
    if (size > 0 && p == nullptr) f.fail("null buffer of " + std::to_string(size) + " bytes");
    const std::uint64_t header_len = f.check_lengths(size, size >= 8 ? detail::load_le<std::uint64_t>(p) : 0);
    const std::string header(reinterpret_cast<const char*>(p) + 8, static_cast<std::size_t>(header_len));
    f.data_.assign(p + 8 + header_len, p + size);
    f.parse_header(header, f.data_.size());
    return f;
  }

  const std::string& path() const { return path_; }
  /// The tensors, sorted by name.
  const std::vector<safetensors_entry>& entries() const { return entries_; }
  /// The entry named `name`, or nullptr.
  const safetensors_entry* find(const std::string& name) const {
    auto it = std::lower_bound(entries_.begin(), entries_.end(), name,
                               [](const safetensors_entry& e, const std::string& n) { return e.name < n; });
    return it != entries_.end() && it->name == name ? &*it : nullptr;
  }
  /// The "__metadata__" strings (empty when the header has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  /// Writes the entry.numel() values of tensor `name`, row-major, converted to T, into dst[0, count).
  /// Floating T takes every dtype (F16 and BF16 exactly; F64 -> float rounds to nearest); integer T
  /// (and bool) takes the integer dtypes and BOOL, and throws on a value T cannot hold. Throws
  /// std::runtime_error when `name` is absent or count != numel; dst is then untouched.
  template <class T>
  void read(const std::string& name, T* dst, index_t count) const {
    static_assert(std::is_arithmetic_v<T>, "safetensors_file::read: T must be an arithmetic type");
    const safetensors_entry& e = entry(name);
    if (count != e.numel())
      fail("read(\"" + detail::brief(name) + "\"): count = " + std::to_string(count) +
           " but the tensor has shape " + detail::shape_string(e.shape) + " (" + std::to_string(e.numel()) +
           " elements)");
    if (count > 0 && dst == nullptr) fail("read(\"" + detail::brief(name) + "\"): dst is a null pointer");
    const bool float_type =
        e.type == dtype::f64 || e.type == dtype::f32 || e.type == dtype::f16 || e.type == dtype::bf16;
    if (!std::is_floating_point_v<T> && float_type)
      fail("read(\"" + detail::brief(name) + "\"): cannot convert the " + dtype_name(e.type) +
           " tensor to an integer type; read it as float or double");
    const unsigned char* p = data_.data() + e.begin;
    const std::size_t n = static_cast<std::size_t>(count);
    switch (e.type) {
      case dtype::f64:
        convert_float<T>(dst, n, [&](std::size_t i) {
          return detail::bit_cast_to<double>(detail::load_le<std::uint64_t>(p + 8 * i));
        });
        break;
      case dtype::f32:
        convert_float<T>(dst, n, [&](std::size_t i) {
          return detail::bit_cast_to<float>(detail::load_le<std::uint32_t>(p + 4 * i));
        });
        break;
      case dtype::f16:
        convert_float<T>(
            dst, n, [&](std::size_t i) { return half_to_float(detail::load_le<std::uint16_t>(p + 2 * i)); });
        break;
      case dtype::bf16:
        convert_float<T>(dst, n, [&](std::size_t i) {
          return bfloat16_to_float(detail::load_le<std::uint16_t>(p + 2 * i));
        });
        break;
      case dtype::i64:
        convert_int<T>(name, e.type, dst, n, [&](std::size_t i) {
          return static_cast<std::int64_t>(detail::load_le<std::uint64_t>(p + 8 * i));
        });
        break;
      case dtype::i32:
        convert_int<T>(name, e.type, dst, n, [&](std::size_t i) {
          return static_cast<std::int64_t>(
              static_cast<std::int32_t>(detail::load_le<std::uint32_t>(p + 4 * i)));
        });
        break;
      case dtype::i16:
        convert_int<T>(name, e.type, dst, n, [&](std::size_t i) {
          return static_cast<std::int64_t>(
              static_cast<std::int16_t>(detail::load_le<std::uint16_t>(p + 2 * i)));
        });
        break;
      case dtype::i8:
        convert_int<T>(name, e.type, dst, n, [&](std::size_t i) {
          return static_cast<std::int64_t>(static_cast<std::int8_t>(p[i]));
        });
        break;
      case dtype::u8:
        convert_int<T>(name, e.type, dst, n, [&](std::size_t i) { return static_cast<std::int64_t>(p[i]); });
        break;
      case dtype::boolean:
        convert_int<T>(name, e.type, dst, n,
                       [&](std::size_t i) { return static_cast<std::int64_t>(p[i] != 0); });
        break;
    }
  }

  /// Reads tensor `name` into a new row-major tensor<T, N>; throws std::runtime_error when it is
  /// absent or its rank is not N.
  template <class T, std::size_t N>
  tensor<T, N> read_tensor(const std::string& name) const {
    const safetensors_entry& e = entry(name);
    if (e.shape.size() != N)
      fail("read_tensor(\"" + detail::brief(name) + "\"): the tensor has shape " +
           detail::shape_string(e.shape) + " (rank " + std::to_string(e.shape.size()) + "), expected rank " +
           std::to_string(N));
    std::array<index_t, N> extents{};
    for (std::size_t d = 0; d < N; ++d) extents[d] = e.shape[d];
    tensor<T, N> t(extents);
    read(name, t.data(), t.size());
    return t;
  }

 private:
  static constexpr std::uint64_t max_header_bytes = 100'000'000;  // the reference implementation's limit
  static constexpr int max_depth = 64;  // nesting of JSON values in the header (a valid one has 3)

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("attnkit::io::safetensors_file: " + path_ + ": " + what);
  }

  safetensors_file() = default;

  const safetensors_entry& entry(const std::string& name) const {
    const safetensors_entry* e = find(name);
    if (e == nullptr) fail("no tensor named \"" + detail::brief(name) + "\"");
    return *e;
  }

  template <class T, class Get>
  static void convert_float(T* dst, std::size_t n, Get get) {
    for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(get(i));
  }

  template <class T, class Get>
  void convert_int(const std::string& name, dtype type, T* dst, std::size_t n, Get get) const {
    for (std::size_t i = 0; i < n; ++i) {
      const std::int64_t v = get(i);
      if (!detail::integer_fits<T>(v))
        fail("read(\"" + detail::brief(name) + "\"): element " + std::to_string(i) + " of the " +
             dtype_name(type) + " tensor is " + std::to_string(v) +
             ", out of the range of the destination type");
    }
    for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(get(i));
  }

  static bool parse_dtype(const std::string& s, dtype& t) {
    static const std::pair<const char*, dtype> names[] = {
        {"F64", dtype::f64}, {"F32", dtype::f32},     {"F16", dtype::f16}, {"BF16", dtype::bf16},
        {"I64", dtype::i64}, {"I32", dtype::i32},     {"I16", dtype::i16}, {"I8", dtype::i8},
        {"U8", dtype::u8},   {"BOOL", dtype::boolean}};
    for (const auto& [n, d] : names)
      if (s == n) {
        t = d;
        return true;
      }
    return false;
  }

  void load() {
    std::ifstream in(path_, std::ios::binary);
    if (!in) fail("cannot open the file");
    in.seekg(0, std::ios::end);
    const std::streamoff size_off = in.tellg();
    if (!in || size_off < 0) fail("cannot determine the file size");
    in.seekg(0, std::ios::beg);
    const auto file_size = static_cast<std::uint64_t>(size_off);
    unsigned char len_bytes[8] = {};
    if (file_size >= 8 && !in.read(reinterpret_cast<char*>(len_bytes), 8))
      fail("cannot read the header length");
    const std::uint64_t header_len = check_lengths(file_size, detail::load_le<std::uint64_t>(len_bytes));
    std::string header(static_cast<std::size_t>(header_len), '\0');
    if (header_len > 0 && !in.read(&header[0], static_cast<std::streamsize>(header_len)))
      fail("cannot read the " + std::to_string(header_len) + "-byte header");
    const std::uint64_t data_size = file_size - 8 - header_len;
    if (data_size > static_cast<std::uint64_t>(std::numeric_limits<std::ptrdiff_t>::max()))
      fail("data section too large for this platform");
    data_.resize(static_cast<std::size_t>(data_size));
    if (data_size > 0 &&
        !in.read(reinterpret_cast<char*>(data_.data()), static_cast<std::streamsize>(data_size)))
      fail("cannot read the " + std::to_string(data_size) + "-byte data section");
    parse_header(header, data_size);
  }

  /// Checks a file of file_size bytes whose first 8 say header_len; returns header_len.
  std::uint64_t check_lengths(std::uint64_t file_size, std::uint64_t header_len) const {
    if (file_size < 8)
      fail("truncated: the file has " + std::to_string(file_size) +
           " bytes, less than the 8-byte header length");
    if (header_len > file_size - 8)
      fail("header length " + std::to_string(header_len) + " exceeds the " + std::to_string(file_size - 8) +
           " bytes after the 8-byte header length (file truncated or not safetensors)");
    if (header_len > max_header_bytes)
      fail("header length " + std::to_string(header_len) + " exceeds the limit of " +
           std::to_string(max_header_bytes) + " bytes");
    return header_len;
  }

  /// A header the parser callback rejects (thrown through nlohmann's parser, caught in parse_header).
  struct header_error {
    std::string what;
  };

  void parse_header(const std::string& header, std::uint64_t data_size) {
    if (header.empty() || header[0] != '{') fail("the header is not a JSON object (it must start with '{')");
    // nlohmann's lexer ends the text at a NUL: bytes after one would be ignored, not rejected.
    if (const std::size_t nul = header.find('\0'); nul != std::string::npos)
      fail("the header holds a NUL byte at offset " + std::to_string(nul) +
           " (JSON text cannot contain one)");
    // Every object's keys are unique (nlohmann would keep the last of a repeated key silently), and
    // nesting is bounded before anything recurses into the value (deep values are no header).
    std::vector<std::set<std::string>> keys;  // one set per open object
    nlohmann::json::parser_callback_t cb = [&](int depth, nlohmann::json::parse_event_t event,
                                               nlohmann::json& parsed) {
      using ev = nlohmann::json::parse_event_t;
      if ((event == ev::object_start || event == ev::array_start) && depth >= max_depth)
        throw header_error{"values nest deeper than " + std::to_string(max_depth) + " levels"};
      if (event == ev::object_start) keys.emplace_back();
      if (event == ev::object_end) keys.pop_back();
      if (event == ev::key && !keys.empty() &&
          !keys.back().insert(parsed.get_ref<const std::string&>()).second)
        throw header_error{"duplicate key \"" + detail::brief(parsed.get_ref<const std::string&>()) +
                           "\" in " + (depth == 1 ? std::string("the header") : "an object of the header")};
      return true;
    };
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(header, cb);
    } catch (const header_error& ex) {
      fail(ex.what);
    } catch (const nlohmann::json::exception& ex) {
      fail(std::string("the header is not valid JSON: ") + detail::brief(std::string(ex.what())));
    }
    if (!j.is_object()) fail("the header is not a JSON object");

    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& key = it.key();
      const nlohmann::json& v = it.value();
      if (key == "__metadata__") {
        if (!v.is_object()) fail("\"__metadata__\" is not a JSON object");
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (!m.value().is_string())
            fail("\"__metadata__\" value of \"" + detail::brief(m.key()) + "\" is not a string (" +
                 detail::brief(m.value()) + ")");
          metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      entries_.push_back(parse_entry(key, v, data_size));
    }
    std::sort(entries_.begin(), entries_.end(),
              [](const safetensors_entry& a, const safetensors_entry& b) { return a.name < b.name; });

    // The tensors, in the order of their bytes, tile [0, data_size) exactly.
    std::vector<const safetensors_entry*> by_offset;
    for (const auto& e : entries_) by_offset.push_back(&e);
    std::sort(by_offset.begin(), by_offset.end(), [](const safetensors_entry* a, const safetensors_entry* b) {
      if (a->begin != b->begin) return a->begin < b->begin;
      return a->end != b->end ? a->end < b->end : a->name < b->name;
    });
    std::uint64_t pos = 0;
    const safetensors_entry* prev = nullptr;
    for (const safetensors_entry* e : by_offset) {
      if (e->begin != pos)
        fail("tensor \"" + detail::brief(e->name) + "\" has data_offsets [" + std::to_string(e->begin) +
             ", " + std::to_string(e->end) + "] but " +
             (prev ? "the previous tensor \"" + detail::brief(prev->name) + "\" ends at byte " +
                         std::to_string(pos)
                   : std::string("the data section starts at byte 0")) +
             " (the tensors must cover the data section without holes or overlaps)");
      pos = e->end;
      prev = e;
    }
    if (pos != data_size)
      fail("the tensors cover " + std::to_string(pos) + " bytes but the data section has " +
           std::to_string(data_size) + " (trailing bytes after the last tensor)");
  }

  safetensors_entry parse_entry(const std::string& key, const nlohmann::json& v,
                                std::uint64_t data_size) const {
    const std::string where = "tensor \"" + detail::brief(key) + "\": ";
    if (!v.is_object()) fail(where + "the entry is not a JSON object (" + detail::brief(v) + ")");
    safetensors_entry e;
    e.name = key;

    auto dt = v.find("dtype");
    if (dt == v.end()) fail(where + "missing \"dtype\"");
    if (!dt->is_string()) fail(where + "\"dtype\" is not a string (" + detail::brief(*dt) + ")");
    if (!parse_dtype(dt->get<std::string>(), e.type))
      fail(where + "unsupported dtype \"" + detail::brief(dt->get<std::string>()) +
           "\" (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");

    auto sh = v.find("shape");
    if (sh == v.end()) fail(where + "missing \"shape\"");
    if (!sh->is_array()) fail(where + "\"shape\" is not an array (" + detail::brief(*sh) + ")");
    std::uint64_t numel = 1;
    bool zero = false;
    const std::uint64_t max_extent = static_cast<std::uint64_t>(std::numeric_limits<index_t>::max());
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned())
        fail(where + "\"shape\" " + detail::brief(*sh) + " has an entry that is not a non-negative integer");
      const std::uint64_t x = d.get<std::uint64_t>();
      if (x > max_extent) fail(where + "\"shape\" " + detail::brief(*sh) + " has an extent too large");
      e.shape.push_back(static_cast<index_t>(x));
      if (x == 0) zero = true;
      // The element count must fit index_t even when another extent is 0 (numel() multiplies all).
      if (x != 0 && numel > max_extent / x)
        fail(where + "\"shape\" " + detail::brief(*sh) + " has too many elements");
      if (x != 0) numel *= x;
    }
    if (zero) numel = 0;

    auto off = v.find("data_offsets");
    if (off == v.end()) fail(where + "missing \"data_offsets\"");
    if (!off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      fail(where + "\"data_offsets\" is not an array of two non-negative integers (" + detail::brief(*off) +
           ")");
    e.begin = (*off)[0].get<std::uint64_t>();
    e.end = (*off)[1].get<std::uint64_t>();
    const std::string offsets = "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
    if (e.end < e.begin) fail(where + "\"data_offsets\" " + offsets + " end before they begin");
    const std::uint64_t item = dtype_size(e.type);
    if (numel > std::numeric_limits<std::uint64_t>::max() / item || e.end - e.begin != numel * item)
      fail(where + "\"data_offsets\" " + offsets + " span " + std::to_string(e.end - e.begin) +
           " bytes but shape " + detail::shape_string(e.shape) + " of " + dtype_name(e.type) + " needs " +
           std::to_string(numel) + " x " + std::to_string(item) + " bytes");
    if (e.end > data_size)
      fail(where + "\"data_offsets\" " + offsets + " extend beyond the end of the " +
           std::to_string(data_size) + "-byte data section (file truncated?)");
    return e;
  }

  std::string path_;
  std::vector<safetensors_entry> entries_;
  std::map<std::string, std::string> metadata_;
  std::vector<unsigned char> data_;
};

}  // namespace io
ATTNKIT_END_NAMESPACE

#include "safetensors_writer.hpp"
