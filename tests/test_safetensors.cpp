// attnkit tests: attnkit/io/safetensors.hpp: the writer's round trip (bit-exact f32/f64), hand-made
// headers with F16/BF16/integer payloads, metadata, padding, and every way a file can be rejected.
// Compiled only when CMake found nlohmann_json (ATTNKIT_HAVE_NLOHMANN_JSON=1).
#if defined(ATTNKIT_HAVE_NLOHMANN_JSON) && ATTNKIT_HAVE_NLOHMANN_JSON

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include <attnkit/io/safetensors.hpp>

namespace {
using attnkit::index_t;
using attnkit::io::dtype;
using attnkit::io::safetensors_file;
using Catch::Contains;
using Catch::StartsWith;

/// A unique path in the temp directory, removed when the object goes away.
struct temp_path {
  std::string path;
  temp_path() {
    static std::atomic<unsigned> counter{0};
    static const unsigned long long salt = std::random_device{}();
    path = (std::filesystem::temp_directory_path() /
            ("attnkit_st_" + std::to_string(salt) + "_" + std::to_string(counter++) + ".safetensors"))
               .string();
  }
  ~temp_path() {
    std::error_code ec;
    std::filesystem::remove(path, ec);
  }
  temp_path(const temp_path&) = delete;
  temp_path& operator=(const temp_path&) = delete;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// Little-endian bytes of an unsigned integer.
template <class U>
std::string le(U v) {
  std::string s(sizeof(U), '\0');
  for (std::size_t i = 0; i < sizeof(U); ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

template <class U, class... Us>
std::string le_all(Us... vs) {
  return (std::string() + ... + le<U>(static_cast<U>(vs)));
}

/// A safetensors file: the 8-byte header length (header.size() unless given), header, data.
std::string st_bytes(const std::string& header, const std::string& data, std::uint64_t length = ~0ull) {
  return le<std::uint64_t>(length == ~0ull ? header.size() : length) + header + data;
}

std::string prefix(const std::string& path) { return "attnkit::io::safetensors_file: " + path + ": "; }

template <class T, class U>
U bits_of(T x) {
  U u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

/// One hand-made header entry.
std::string entry(const std::string& name, const std::string& dt, const std::string& shape, std::uint64_t b,
                  std::uint64_t e) {
  return "\"" + name + "\":{\"dtype\":\"" + dt + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(b) + "," + std::to_string(e) + "]}";
}

}  // namespace

TEST_CASE("safetensors: f32 and f64 round trip bit-exactly, entries sorted, metadata", "[io]") {
  temp_path f32, f64;
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> a = {
      1.0f, -0.0f, inf, -inf, std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::max(),
      0.1f, -3.25f};
  const float qnan = bits_of<std::uint32_t, float>(0x7fc12345u);  // NaN with a payload
  a.push_back(qnan);
  std::vector<float> b(2 * 3 * 4);
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = std::sin(static_cast<float>(i)) * 1e3f;
  const float scalar = 42.5f;
  using list_f = std::vector<std::pair<std::string, std::pair<std::vector<index_t>, const float*>>>;
  // Given out of name order, with an empty tensor and a scalar (shape []).
  const list_f tensors = {{"zeta", {{9}, a.data()}},
                          {"alpha.weight", {{2, 3, 4}, b.data()}},
                          {"empty", {{0, 3}, nullptr}},
                          {"scalar", {{}, &scalar}}};
  attnkit::io::write_safetensors<float>(f32.path, tensors, {{"format", "pt"}, {"note", "ünïcode"}});

  const std::string raw = read_bytes(f32.path);
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(static_cast<unsigned char>(raw[i])) << (8 * i);
  CHECK(n % 8 == 0);  // padded: the data section starts 8-byte aligned
  CHECK(raw[8] == '{');
  CHECK(raw.size() == 8 + n + (9 + 24 + 0 + 1) * 4);

  const safetensors_file f(f32.path);
  CHECK(f.path() == f32.path);
  REQUIRE(f.entries().size() == 4);
  CHECK(f.entries()[0].name == "alpha.weight");
  CHECK(f.entries()[1].name == "empty");
  CHECK(f.entries()[2].name == "scalar");
  CHECK(f.entries()[3].name == "zeta");
  CHECK(f.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"note", "ünïcode"}});
  const auto* e = f.find("alpha.weight");
  REQUIRE(e != nullptr);
  CHECK(e->type == dtype::f32);
  CHECK(e->shape == std::vector<index_t>{2, 3, 4});
  CHECK(e->numel() == 24);
  CHECK(e->end - e->begin == 96);
  CHECK(f.find("alpha") == nullptr);
  CHECK(f.find("") == nullptr);
  CHECK(f.find("zeta.") == nullptr);
  CHECK(f.find("empty")->numel() == 0);
  CHECK(f.find("empty")->begin == f.find("empty")->end);
  CHECK(f.find("scalar")->shape.empty());
  CHECK(f.find("scalar")->numel() == 1);
  // The writer keeps the given order in the data section.
  CHECK(f.find("zeta")->begin == 0);
  CHECK(f.find("alpha.weight")->begin == 36);

  std::vector<float> ra(a.size());
  f.read("zeta", ra.data(), static_cast<index_t>(ra.size()));
  CHECK(std::memcmp(ra.data(), a.data(), a.size() * sizeof(float)) == 0);
  const auto tb = f.read_tensor<float, 3>("alpha.weight");
  CHECK(tb.extents() == std::array<index_t, 3>{2, 3, 4});
  CHECK(std::memcmp(tb.data(), b.data(), b.size() * sizeof(float)) == 0);
  const auto te = f.read_tensor<float, 2>("empty");
  CHECK(te.extents() == std::array<index_t, 2>{0, 3});
  float s = 0;
  f.read("scalar", &s, 1);
  CHECK(s == 42.5f);
  const auto ts = f.read_tensor<double, 0>("scalar");
  CHECK(ts.size() == 1);
  CHECK(ts.data()[0] == 42.5);
  CHECK_THROWS_WITH((f.read_tensor<float, 1>("scalar")),
                    Contains("the tensor has shape [] (rank 0), expected rank 1"));
  f.read<float>("empty", nullptr, 0);
  // F32 -> double is exact (NaN stays NaN).
  std::vector<double> rd(a.size());
  f.read("zeta", rd.data(), static_cast<index_t>(rd.size()));
  for (std::size_t i = 0; i + 1 < a.size(); ++i)
    CHECK(bits_of<double, std::uint64_t>(rd[i]) == bits_of<double, std::uint64_t>(static_cast<double>(a[i])));
  CHECK(std::isnan(rd.back()));

  // f64: bit-exact, including values float cannot hold; read as float rounds to nearest.
  std::vector<double> d = {1.0 / 3.0,
                           -1e300,
                           std::numeric_limits<double>::denorm_min(),
                           -0.0,
                           std::numeric_limits<double>::quiet_NaN(),
                           0.1};
  attnkit::io::write_safetensors<double>(f64.path, {{"d", {{2, 3}, d.data()}}});
  const safetensors_file g(f64.path);
  CHECK(g.metadata().empty());
  CHECK(g.find("d")->type == dtype::f64);
  const auto td = g.read_tensor<double, 2>("d");
  CHECK(std::memcmp(td.data(), d.data(), d.size() * sizeof(double)) == 0);
  std::vector<float> df(d.size());
  g.read("d", df.data(), 6);
  for (std::size_t i = 0; i < d.size(); ++i) {
    if (std::isnan(d[i])) {
      CHECK(std::isnan(df[i]));
    } else {
      CHECK(bits_of<float, std::uint32_t>(df[i]) == bits_of<float, std::uint32_t>(static_cast<float>(d[i])));
    }
  }
}

TEST_CASE("safetensors: the writer's exact bytes", "[io]") {
  temp_path p;
  const float x[2] = {1.5f, -0.25f};
  attnkit::io::write_safetensors<float>(p.path, {{"x", {{2}, x}}}, {{"k", "v"}});
  // nlohmann's std::map orders the keys; 79 bytes of JSON + 1 space = 80.
  const std::string header =
      R"({"__metadata__":{"k":"v"},"x":{"data_offsets":[0,8],"dtype":"F32","shape":[2]}} )";
  CHECK(read_bytes(p.path) == st_bytes(header, le_all<std::uint32_t>(0x3fc00000u, 0xbe800000u)));
}

TEST_CASE("safetensors: a header laid out as Python's safetensors writes it", "[io]") {
  // save_file({"b": torch.tensor([1.5, -0.25]), "a": torch.tensor([[-7]], dtype=torch.int32)},
  //           metadata={"format": "pt"}): metadata first, compact JSON, the fields in the order
  // dtype, shape, data_offsets, padded with spaces to 144 = 0x90 bytes; data 1.5f, -0.25f, -7.
  static const char bytes[] =
      "\x90\x00\x00\x00\x00\x00\x00\x00"
      "{\"__metadata__\":{\"format\":\"pt\"},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"a\":{\"dtype\":\"I32\",\"shape\":[1,1],\"data_offsets\":[8,12]}}   "
      "\x00\x00\xc0\x3f\x00\x00\x80\xbe\xf9\xff\xff\xff";
  temp_path p;
  write_bytes(p.path, std::string(bytes, sizeof bytes - 1));
  REQUIRE(sizeof bytes - 1 == 8 + 144 + 12);
  const safetensors_file f(p.path);
  REQUIRE(f.entries().size() == 2);
  CHECK(f.entries()[0].name == "a");
  CHECK(f.entries()[1].name == "b");
  CHECK(f.metadata().at("format") == "pt");
  const auto b = f.read_tensor<float, 1>("b");
  CHECK(b(0) == 1.5f);
  CHECK(b(1) == -0.25f);
  const auto a = f.read_tensor<std::int32_t, 2>("a");
  CHECK(a(0, 0) == -7);
  const auto ad = f.read_tensor<double, 2>("a");
  CHECK(ad(0, 0) == -7.0);
}

TEST_CASE("safetensors: F16 and BF16 convert exactly", "[io]") {
  const float inf = std::numeric_limits<float>::infinity();
  const float two_m24 = std::ldexp(1.0f, -24), two_m14 = std::ldexp(1.0f, -14);
  // bits -> value (NaNs checked separately).
  const std::vector<std::pair<std::uint16_t, float>> f16 = {{0x3c00, 1.0f},
                                                            {0xc100, -2.5f},
                                                            {0x7bff, 65504.0f},
                                                            {0xfbff, -65504.0f},
                                                            {0x0001, two_m24},
                                                            {0x8001, -two_m24},
                                                            {0x03ff, 1023 * two_m24},
                                                            {0x0200, 512 * two_m24},
                                                            {0x0400, two_m14},
                                                            {0x3555, 0.333251953125f},
                                                            {0x7c00, inf},
                                                            {0xfc00, -inf},
                                                            {0x0000, 0.0f},
                                                            {0x8000, -0.0f},
                                                            {0x3bff, 0.99951171875f},
                                                            {0x5640, 100.0f}};
  const std::vector<std::pair<std::uint16_t, float>> bf16 = {{0x3f80, 1.0f},
                                                             {0xc020, -2.5f},
                                                             {0x7f80, inf},
                                                             {0xff80, -inf},
                                                             {0x8000, -0.0f},
                                                             {0x0001, std::ldexp(1.0f, -133)},
                                                             {0x7f7f, 3.3895313892515355e38f},
                                                             {0x0080, std::numeric_limits<float>::min()},
                                                             {0x4049, 3.140625f}};
  std::string data16, databf;
  for (const auto& [b, v] : f16) data16 += le<std::uint16_t>(b);
  data16 += le<std::uint16_t>(0x7e00) + le<std::uint16_t>(0xfe01);  // quiet NaN, negative NaN with payload
  for (const auto& [b, v] : bf16) databf += le<std::uint16_t>(b);
  databf += le<std::uint16_t>(0x7fc0);
  const std::size_t n16 = f16.size() + 2, nbf = bf16.size() + 1;
  const std::string header = "{" + entry("h", "F16", "[" + std::to_string(n16) + "]", 0, 2 * n16) + "," +
                             entry("g", "BF16", "[" + std::to_string(nbf) + "]", 2 * n16, 2 * (n16 + nbf)) +
                             "}";
  temp_path p;
  write_bytes(p.path, st_bytes(header, data16 + databf));
  const safetensors_file f(p.path);
  CHECK(f.find("h")->type == dtype::f16);
  CHECK(f.find("g")->type == dtype::bf16);

  std::vector<float> h(n16);
  f.read("h", h.data(), static_cast<index_t>(n16));
  for (std::size_t i = 0; i < f16.size(); ++i) {
    INFO("F16 0x" << std::hex << f16[i].first);
    CHECK(bits_of<float, std::uint32_t>(h[i]) == bits_of<float, std::uint32_t>(f16[i].second));
  }
  CHECK(std::isnan(h[n16 - 2]));
  CHECK(bits_of<float, std::uint32_t>(h[n16 - 2]) == 0x7fc00000u);
  CHECK(std::isnan(h[n16 - 1]));
  CHECK(bits_of<float, std::uint32_t>(h[n16 - 1]) == 0xffc02000u);  // sign and payload kept
  std::vector<double> hd(n16);
  f.read("h", hd.data(), static_cast<index_t>(n16));
  for (std::size_t i = 0; i < f16.size(); ++i) CHECK(hd[i] == static_cast<double>(f16[i].second));
  CHECK(std::signbit(hd[13]));  // -0

  std::vector<float> g(nbf);
  f.read("g", g.data(), static_cast<index_t>(nbf));
  for (std::size_t i = 0; i < bf16.size(); ++i) {
    INFO("BF16 0x" << std::hex << bf16[i].first);
    CHECK(bits_of<float, std::uint32_t>(g[i]) == bits_of<float, std::uint32_t>(bf16[i].second));
  }
  CHECK(std::isnan(g.back()));
}

TEST_CASE("safetensors: half_to_float for all 65536 bit patterns", "[io]") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const float f = attnkit::io::half_to_float(h);
    const std::uint32_t exp = (b >> 10) & 0x1f, mant = b & 0x3ff;
    // Reference: (-1)^s 2^(e-15) (1 + m/1024), or 2^-14 (m/1024) for e = 0, in double.
    double want;
    if (exp == 0x1f)
      want = mant ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
    else if (exp == 0)
      want = std::ldexp(static_cast<double>(mant), -24);
    else
      want = std::ldexp(1.0 + mant / 1024.0, static_cast<int>(exp) - 15);
    if (b & 0x8000) want = -want;
    if (std::isnan(want)) {
      if (!std::isnan(f) ||
          bits_of<float, std::uint32_t>(f) != (((b & 0x8000u) << 16) | 0x7f800000u | (mant << 13)))
        FAIL("half 0x" << std::hex << b << " -> " << f);
    } else if (static_cast<double>(f) != want || std::signbit(f) != ((b & 0x8000) != 0)) {
      FAIL("half 0x" << std::hex << b << " -> " << f << ", want " << want);
    }
#ifdef __FLT16_MAX__
    if (exp != 0x1f || mant == 0) {  // the compiler's own conversion (x86 GCC 12+)
      _Float16 x;
      std::memcpy(&x, &h, 2);
      const float y = static_cast<float>(x);
      if (bits_of<float, std::uint32_t>(y) != bits_of<float, std::uint32_t>(f))
        FAIL("half 0x" << std::hex << b << ": _Float16 gives " << y << ", half_to_float " << f);
    }
#endif
    CHECK(bits_of<float, std::uint32_t>(attnkit::io::bfloat16_to_float(h)) == b << 16);
  }
  SUCCEED();
}

TEST_CASE("safetensors: integer and BOOL dtypes", "[io]") {
  std::string data;
  std::string header = "{";
  std::uint64_t off = 0;
  auto add = [&](const std::string& name, const std::string& dt, const std::string& bytes, std::size_t n) {
    if (off) header += ",";
    header += entry(name, dt, "[" + std::to_string(n) + "]", off, off + bytes.size());
    off += bytes.size();
    data += bytes;
  };
  add("i64", "I64", le_all<std::uint64_t>(-(1ll << 40), 3, std::numeric_limits<std::int64_t>::max()), 3);
  add("i32", "I32", le_all<std::uint32_t>(-5, 7, 2147483647), 3);
  add("i16", "I16", le_all<std::uint16_t>(-32768, 12), 2);
  add("i8", "I8", le_all<std::uint8_t>(-128, 127, 0), 3);
  add("u8", "U8", le_all<std::uint8_t>(255, 0, 17), 3);
  add("mask", "BOOL", le_all<std::uint8_t>(1, 0, 1, 1), 4);
  header += "}";
  temp_path p;
  write_bytes(p.path, st_bytes(header, data));
  const safetensors_file f(p.path);
  CHECK(f.find("i64")->type == dtype::i64);
  CHECK(f.find("i32")->type == dtype::i32);
  CHECK(f.find("i16")->type == dtype::i16);
  CHECK(f.find("i8")->type == dtype::i8);
  CHECK(f.find("u8")->type == dtype::u8);
  CHECK(f.find("mask")->type == dtype::boolean);

  std::vector<std::int64_t> i64(3);
  f.read("i64", i64.data(), 3);
  CHECK(i64 == std::vector<std::int64_t>{-(1ll << 40), 3, std::numeric_limits<std::int64_t>::max()});
  std::vector<double> d(3);
  f.read("i64", d.data(), 3);
  CHECK(d[0] == -1099511627776.0);
  const auto i32 = f.read_tensor<std::int32_t, 1>("i32");
  CHECK((i32(0) == -5 && i32(1) == 7 && i32(2) == 2147483647));
  const auto i16 = f.read_tensor<float, 1>("i16");
  CHECK((i16(0) == -32768.0f && i16(1) == 12.0f));
  const auto i8 = f.read_tensor<int, 1>("i8");
  CHECK((i8(0) == -128 && i8(1) == 127 && i8(2) == 0));
  const auto u8 = f.read_tensor<std::uint8_t, 1>("u8");
  CHECK((u8(0) == 255 && u8(1) == 0 && u8(2) == 17));
  const auto m = f.read_tensor<bool, 1>("mask");
  CHECK((m(0) && !m(1) && m(2) && m(3)));
  const auto mf = f.read_tensor<float, 1>("mask");
  CHECK((mf(0) == 1.0f && mf(1) == 0.0f));

  // Values the destination cannot hold, and floats into integers, are errors; dst is untouched.
  std::vector<std::int32_t> small(3, 99);
  CHECK_THROWS_WITH(f.read("i64", small.data(), 3),
                    StartsWith(prefix(p.path)) && Contains("read(\"i64\"): element 0 of the I64 tensor is "
                                                           "-1099511627776, out of the range"));
  CHECK(small == std::vector<std::int32_t>(3, 99));
  std::vector<std::uint8_t> u(3);
  CHECK_THROWS_WITH(f.read("i8", u.data(), 3), Contains("element 0 of the I8 tensor is -128"));
  bool bb[3];
  CHECK_THROWS_WITH(f.read("u8", bb, 3), Contains("element 0 of the U8 tensor is 255"));
  temp_path q;
  const float x[1] = {1.0f};
  attnkit::io::write_safetensors<float>(q.path, {{"x", {{1}, x}}});
  int xi = 0;
  CHECK_THROWS_WITH(
      safetensors_file(q.path).read("x", &xi, 1),
      StartsWith(prefix(q.path)) && Contains("cannot convert the F32 tensor to an integer type"));
}

TEST_CASE("safetensors: header padding, empty header object, unknown fields", "[io]") {
  temp_path p;
  const std::string header = "{" + entry("w", "F32", "[1]", 0, 4) + "}" + std::string(13, ' ');
  write_bytes(p.path, st_bytes(header, le<std::uint32_t>(0x40490fdbu)));
  const safetensors_file f(p.path);
  float v = 0;
  f.read("w", &v, 1);
  CHECK(v == 3.14159274101257324f);

  temp_path e;
  write_bytes(e.path, st_bytes("{}      ", ""));
  const safetensors_file fe(e.path);
  CHECK(fe.entries().empty());
  CHECK(fe.metadata().empty());

  temp_path m;
  write_bytes(m.path, st_bytes(R"({"__metadata__":{}})", ""));
  CHECK(safetensors_file(m.path).metadata().empty());

  // Other fields of an entry are ignored (as by the reference implementation's serde).
  temp_path u;
  write_bytes(u.path, st_bytes(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"extra":1}})", "ab"));
  CHECK(safetensors_file(u.path).find("w")->numel() == 2);
}

TEST_CASE("safetensors: file-level errors", "[io]") {
  auto expect = [](const std::string& bytes, const std::string& needle) {
    temp_path p;
    write_bytes(p.path, bytes);
    INFO("expected: " << needle);
    CHECK_THROWS_AS(safetensors_file(p.path), std::runtime_error);
    CHECK_THROWS_WITH(safetensors_file(p.path), StartsWith(prefix(p.path)) && Contains(needle));
  };
  {
    temp_path missing;
    CHECK_THROWS_AS(safetensors_file(missing.path), std::runtime_error);
    CHECK_THROWS_WITH(safetensors_file(missing.path), prefix(missing.path) + "cannot open the file");
  }
  expect("", "truncated: the file has 0 bytes, less than the 8-byte header length");
  expect(std::string("\x05\x00\x00\x00\x00", 5), "truncated: the file has 5 bytes");
  expect(st_bytes("{}", "", 100), "header length 100 exceeds the 2 bytes after the 8-byte header length");
  expect(st_bytes("{}", "", ~0ull - 1), "header length 18446744073709551614 exceeds");
  expect(st_bytes("", ""), "the header is not a JSON object (it must start with '{')");
  expect(st_bytes("[1, 2]", ""), "must start with '{'");
  expect(st_bytes(" {}", ""), "must start with '{'");
  expect(st_bytes("{\"a\":", ""), "the header is not valid JSON: [json.exception.parse_error");
  expect(st_bytes("{\"a\":1}}", ""), "the header is not valid JSON");
  expect(st_bytes("{} x", ""), "the header is not valid JSON");
  expect(st_bytes("{\"a\":\"\xff\"}", ""), "the header is not valid JSON");  // not UTF-8
  expect(st_bytes(R"({"__metadata__":[]})", ""), "\"__metadata__\" is not a JSON object");
  expect(st_bytes(R"({"__metadata__":{"epoch":3}})", ""),
         "\"__metadata__\" value of \"epoch\" is not a string (3)");
  expect(st_bytes("{" + entry("w", "F32", "[1]", 0, 4) + "," + entry("w", "F32", "[1]", 4, 8) + "}",
                  std::string(8, '\0')),
         "duplicate key \"w\" in the header");

  // Header length limit: a sparse file just over 100 MB with a header length of 100 MB + 1.
  temp_path big;
  write_bytes(big.path, le<std::uint64_t>(100'000'001));
  std::filesystem::resize_file(big.path, 100'000'016);
  CHECK_THROWS_WITH(safetensors_file(big.path),
                    StartsWith(prefix(big.path)) &&
                        Contains("header length 100000001 exceeds the limit of 100000000 bytes"));
}

TEST_CASE("safetensors: entry errors", "[io]") {
  auto expect = [](const std::string& header, const std::string& data, const std::string& needle) {
    temp_path p;
    write_bytes(p.path, st_bytes(header, data));
    INFO("header: " << header << "\nexpected: " << needle);
    CHECK_THROWS_AS(safetensors_file(p.path), std::runtime_error);
    CHECK_THROWS_WITH(safetensors_file(p.path), StartsWith(prefix(p.path)) && Contains(needle));
  };
  const std::string d8(8, '\0');
  expect(R"({"w":[1]})", "", "tensor \"w\": the entry is not a JSON object ([1])");
  expect(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", d8, "tensor \"w\": missing \"dtype\"");
  expect(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", d8, "tensor \"w\": missing \"shape\"");
  expect(R"({"w":{"dtype":"F32","shape":[2]}})", d8, "tensor \"w\": missing \"data_offsets\"");
  expect(R"({"w":{"dtype":5,"shape":[2],"data_offsets":[0,8]}})", d8, "\"dtype\" is not a string (5)");
  expect("{" + entry("w", "float32", "[2]", 0, 8) + "}", d8, "tensor \"w\": unsupported dtype \"float32\"");
  expect("{" + entry("w", "F8_E4M3", "[8]", 0, 8) + "}", d8, "unsupported dtype \"F8_E4M3\"");
  expect("{" + entry("w", "U16", "[4]", 0, 8) + "}", d8, "unsupported dtype \"U16\"");
  expect("{" + entry("w", "F32", "2", 0, 8) + "}", d8, "\"shape\" is not an array (2)");
  expect("{" + entry("w", "F32", "[-2]", 0, 8) + "}", d8,
         "\"shape\" [-2] has an entry that is not a non-negative integer");
  expect("{" + entry("w", "F32", "[2.0]", 0, 8) + "}", d8, "not a non-negative integer");
  expect("{" + entry("w", "U8", "[4294967296,4294967296]", 0, 8) + "}", d8, "has too many elements");
  expect(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", d8,
         "\"data_offsets\" is not an array of two non-negative integers ([0])");
  expect(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}})", d8, "two non-negative integers");
  expect(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":{"begin":0}}})", d8, "two non-negative integers");
  expect("{" + entry("w", "F32", "[0]", 8, 0) + "}", d8, "\"data_offsets\" [8, 0] end before they begin");
  // Offsets inconsistent with the shape.
  expect("{" + entry("w", "F32", "[3]", 0, 8) + "}", d8,
         "tensor \"w\": \"data_offsets\" [0, 8] span 8 bytes but shape [3] of F32 needs 3 x 4 bytes");
  expect("{" + entry("w", "F16", "[2,3]", 0, 8) + "}", d8,
         "span 8 bytes but shape [2, 3] of F16 needs 6 x 2");
  // Data beyond the end of the file (truncated data section).
  expect("{" + entry("w", "F64", "[2]", 0, 16) + "}", d8,
         "tensor \"w\": \"data_offsets\" [0, 16] extend beyond the end of the 8-byte data section");
  // Holes, overlaps, trailing bytes: the tensors must tile the data section.
  expect("{" + entry("a", "U8", "[4]", 4, 8) + "}", d8,
         "tensor \"a\" has data_offsets [4, 8] but the data section starts at byte 0");
  expect("{" + entry("a", "U8", "[2]", 0, 2) + "," + entry("b", "U8", "[4]", 4, 8) + "}", d8,
         "tensor \"b\" has data_offsets [4, 8] but the previous tensor \"a\" ends at byte 2");
  expect("{" + entry("a", "U8", "[6]", 0, 6) + "," + entry("b", "U8", "[4]", 4, 8) + "}", d8,
         "the previous tensor \"a\" ends at byte 6 (the tensors must cover the data section without holes or "
         "overlaps)");
  expect("{" + entry("a", "U8", "[4]", 0, 4) + "," + entry("b", "U8", "[4]", 0, 4) + "}", d8,
         "ends at byte 4");
  expect("{" + entry("a", "U8", "[4]", 0, 4) + "}", d8,
         "the tensors cover 4 bytes but the data section has 8 (trailing bytes after the last tensor)");
  expect("{}", d8, "the tensors cover 0 bytes but the data section has 8");
}

TEST_CASE("safetensors: read and read_tensor errors", "[io]") {
  temp_path p;
  std::vector<float> w(6, 1.0f);
  attnkit::io::write_safetensors<float>(p.path, {{"w", {{2, 3}, w.data()}}});
  const safetensors_file f(p.path);
  std::vector<float> dst(7, -1.0f);
  CHECK_THROWS_AS(f.read("w", dst.data(), 5), std::runtime_error);
  CHECK_THROWS_WITH(f.read("w", dst.data(), 5),
                    prefix(p.path) + "read(\"w\"): count = 5 but the tensor has shape [2, 3] (6 elements)");
  CHECK_THROWS_WITH(f.read("w", dst.data(), 7), Contains("count = 7 but the tensor has shape [2, 3]"));
  CHECK(dst == std::vector<float>(7, -1.0f));
  CHECK_THROWS_WITH(f.read<float>("w", nullptr, 6), prefix(p.path) + "read(\"w\"): dst is a null pointer");
  CHECK_THROWS_AS(f.read("v", dst.data(), 6), std::runtime_error);
  CHECK_THROWS_WITH(f.read("v", dst.data(), 6), prefix(p.path) + "no tensor named \"v\"");
  CHECK_THROWS_WITH((f.read_tensor<float, 2>("W")), prefix(p.path) + "no tensor named \"W\"");
  CHECK_THROWS_AS((f.read_tensor<float, 3>("w")), std::runtime_error);
  CHECK_THROWS_WITH(
      (f.read_tensor<float, 3>("w")),
      prefix(p.path) + "read_tensor(\"w\"): the tensor has shape [2, 3] (rank 2), expected rank 3");
  CHECK_THROWS_WITH((f.read_tensor<double, 1>("w")), Contains("shape [2, 3] (rank 2), expected rank 1"));
}

TEST_CASE("safetensors: writer errors", "[io]") {
  temp_path p;
  const float x[4] = {1, 2, 3, 4};
  using list_f = std::vector<std::pair<std::string, std::pair<std::vector<index_t>, const float*>>>;
  const std::string pre = "attnkit::io::write_safetensors: " + p.path + ": ";
  CHECK_THROWS_AS(attnkit::io::write_safetensors<float>(p.path, list_f{{"a", {{2}, x}}, {"a", {{2}, x}}}),
                  attnkit::invalid_argument);
  CHECK_THROWS_WITH(attnkit::io::write_safetensors<float>(p.path, list_f{{"a", {{2}, x}}, {"a", {{2}, x}}}),
                    pre + "duplicate tensor name \"a\"");
  CHECK_THROWS_WITH(attnkit::io::write_safetensors<float>(p.path, list_f{{"__metadata__", {{2}, x}}}),
                    pre + "invalid tensor name \"__metadata__\"");
  CHECK_THROWS_WITH(attnkit::io::write_safetensors<float>(p.path, list_f{{"", {{2}, x}}}),
                    pre + "invalid tensor name \"\"");
  CHECK_THROWS_WITH(attnkit::io::write_safetensors<float>(p.path, list_f{{"a", {{2, -1}, x}}}),
                    pre + "tensor \"a\" has a negative extent in [2, -1]");
  CHECK_THROWS_WITH(attnkit::io::write_safetensors<float>(p.path, list_f{{"a", {{2}, nullptr}}}),
                    pre + "tensor \"a\" of shape [2] has no data");
  CHECK_THROWS_WITH(attnkit::io::write_safetensors<float>(p.path, list_f{{"a", {{1}, x}}}, {{"k", "\xff"}}),
                    StartsWith(pre + "cannot encode the header"));
  CHECK_FALSE(std::filesystem::exists(p.path));  // nothing was created
  const std::string nodir =
      (std::filesystem::temp_directory_path() / "attnkit_no_such_dir_xyz" / "a.safetensors").string();
  CHECK_THROWS_AS(attnkit::io::write_safetensors<float>(nodir, list_f{{"a", {{1}, x}}}), std::runtime_error);
  CHECK_THROWS_WITH(attnkit::io::write_safetensors<float>(nodir, list_f{{"a", {{1}, x}}}),
                    "attnkit::io::write_safetensors: " + nodir + ": cannot create the file");
  // An empty list is a valid file.
  attnkit::io::write_safetensors<float>(p.path, list_f{});
  CHECK(safetensors_file(p.path).entries().empty());
}

TEST_CASE("safetensors: hostile headers: deep nesting, NUL bytes, repeated keys in entries", "[io]") {
  auto expect = [](const std::string& header, const std::string& data, const std::string& needle) {
    const std::string bytes = st_bytes(header, data);
    INFO("header: " << header.substr(0, 120) << "\nexpected: " << needle);
    CHECK_THROWS_AS(safetensors_file::from_memory(bytes.data(), bytes.size(), "mem"), std::runtime_error);
    CHECK_THROWS_WITH(safetensors_file::from_memory(bytes.data(), bytes.size(), "mem"),
                      StartsWith(prefix("mem")) && Contains(needle));
    temp_path p;  // the file reader says the same
    write_bytes(p.path, bytes);
    CHECK_THROWS_WITH(safetensors_file(p.path), StartsWith(prefix(p.path)) && Contains(needle));
  };
  const std::string w = entry("w", "F32", "[1]", 0, 4), four(4, '\0');
  // 100,000 nested arrays (200 KB) as an entry, as a shape, as a metadata value; nested objects
  const std::string open(100000, '['), close(100000, ']');
  std::string objects;
  for (int i = 0; i < 100000; ++i) objects += "{\"a\":";
  objects += "1" + std::string(100000, '}');
  const std::string deep = "values nest deeper than 64 levels";
  expect("{\"w\":" + open + close + "}", "", deep);
  expect(R"({"w":{"dtype":"F32","shape":)" + open + close + R"(,"data_offsets":[0,4]}})", four, deep);
  expect(R"({"__metadata__":{"a":)" + open + close + "}}", "", deep);
  expect("{\"w\":" + objects + "}", "", deep);
  // 64 levels is the limit; at 63 the value is rejected for what it is, quoted briefly
  expect("{\"w\":" + std::string(62, '[') + std::string(62, ']') + "}", "",
         "tensor \"w\": the entry is not a JSON object ([[[[");
  // a NUL ends the text for nlohmann's lexer: bytes after one would otherwise be ignored
  const std::string head = "{" + w + "}";
  expect(head + std::string(1, '\0') + "{\"x\":1}", four,
         "NUL byte at offset " + std::to_string(head.size()));
  expect(std::string("{\"a\":\"b\0c\"}", 11), "", "NUL byte at offset 7");
  // repeated keys inside an entry (the last "dtype" would win) or the metadata
  expect(R"({"w":{"dtype":"F32","dtype":"I8","shape":[1],"data_offsets":[0,4]}})", four,
         "duplicate key \"dtype\" in an object of the header");
  expect(R"({"w":{"dtype":"F32","shape":[1],"shape":[4],"data_offsets":[0,4]}})", four,
         "duplicate key \"shape\"");
  expect(R"({"__metadata__":{"a":"x","a":"y"}})", "", "duplicate key \"a\" in an object of the header");
  // same keys in different objects are fine
  const std::string ok = "{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[1]", 4, 8) + "}";
  const std::string bytes = st_bytes(ok, std::string(8, '\0'));
  CHECK(safetensors_file::from_memory(bytes.data(), bytes.size()).entries().size() == 2);
}

TEST_CASE("safetensors: error messages quote a bounded excerpt of any name or value", "[io]") {
  auto message = [](const std::string& header, const std::string& data) {
    const std::string bytes = st_bytes(header, data);
    try {
      safetensors_file::from_memory(bytes.data(), bytes.size(), "mem");
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    FAIL("no error");
    return std::string();
  };
  const std::string huge(1 << 20, 'x');  // 1 MB
  std::string ones = "[";
  for (int i = 0; i < 100000; ++i) ones += i ? ",1" : "1";
  ones += "]";
  const std::string bad_values[] = {
      "{\"w\":\"" + huge + "\"}",  // entry not an object
      "{\"" + huge +
          "\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,0]}}",       // long name, bad offsets
      R"({"w":{"dtype":")" + huge + R"(","shape":[1],"data_offsets":[0,4]}})",  // unsupported dtype
      R"({"w":{"dtype":"F32","shape":)" + ones + R"(,"data_offsets":[0,8]}})",  // rank 100000, 4 bytes
      R"({"w":{"dtype":"F32","shape":[-1)" + ones.substr(1) + R"(,"data_offsets":[0,4]}})",
      R"({"__metadata__":{")" + huge + R"(":)" + ones + "}}",
      "{\"" + huge + "\":1,\"" + huge + "\":2}",  // a duplicate key of 1 MB
      "{\"w\":" + ones + "}"};
  for (const std::string& h : bad_values) {
    const std::string what = message(h, std::string(4, '\0'));
    INFO(what.substr(0, 300));
    CHECK(what.size() < 800);
  }
  // read() and read_tensor() quote the caller's name briefly too
  const std::string bytes = st_bytes("{" + entry("w", "F32", "[1]", 0, 4) + "}", std::string(4, '\0'));
  const auto f = safetensors_file::from_memory(bytes.data(), bytes.size(), "mem");
  float x = 0;
  try {
    f.read(huge, &x, 1);
    FAIL("no error");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()).size() < 400);
  }
}

TEST_CASE("safetensors: from_memory reads what the file reader reads", "[io]") {
  temp_path p;
  const float a[6] = {1, -2, 3.5f, 4, 5, 6};
  const double b[2] = {0.25, -1e300};
  attnkit::io::write_safetensors<float>(p.path, {{"a", {{2, 3}, a}}}, {{"format", "pt"}});
  const std::string bytes = read_bytes(p.path);
  const auto f = safetensors_file::from_memory(bytes.data(), bytes.size());
  CHECK(f.path() == "<memory>");
  CHECK(f.metadata().at("format") == "pt");
  const auto t = f.read_tensor<float, 2>("a");
  CHECK(std::equal(a, a + 6, t.data()));
  CHECK_THROWS_WITH(safetensors_file::from_memory(nullptr, 3, "buf"),
                    prefix("buf") + "null buffer of 3 bytes");
  CHECK_THROWS_WITH(safetensors_file::from_memory(bytes.data(), 5, "buf"),
                    Contains("truncated: the file has 5 bytes"));
  attnkit::io::write_safetensors<double>(p.path, {{"b", {{2}, b}}});
  const std::string bd = read_bytes(p.path);
  CHECK(safetensors_file::from_memory(bd.data(), bd.size()).read_tensor<double, 1>("b")(1) == -1e300);
}

#endif  // ATTNKIT_HAVE_NLOHMANN_JSON
