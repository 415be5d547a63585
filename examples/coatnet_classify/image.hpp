// attnkit example: image input and timm's evaluation preprocessing for attnkit_coatnet_classify.
//
// Readers (no dependency but the optional libpng):
//   PPM / PGM   P6, P3 (RGB) and P5, P2 (grayscale, replicated to RGB); maxval 1..65535 (two bytes
//               per sample, big-endian, when maxval > 255); '#' comments in the header. Samples are
//               scaled to 8 bits as round(v * 255 / maxval), as PIL does for PPM (PIL opens 16-bit
//               PGM as mode I and clips it to 255 on convert("RGB"); this reader scales it).
//   PNG         through libpng when built with ATTNKIT_EXAMPLE_HAVE_PNG=1: 1/2/4/8/16-bit gray,
//               gray+alpha, RGB, RGBA and palette images become 8-bit RGB; alpha (and tRNS) is
//               dropped, 16-bit samples keep their high byte. Equal to PIL's convert("RGB") except
//               for 16-bit gray, which PIL opens as mode I;16 and clips to 255 on conversion.
//   NPY         float32 ('<f4'), float64 ('<f8') or uint8 ('|u1') arrays, C order, little-endian,
//               of shape [3, H, W], [H, W, 3] or [1, 3, H, W] ([3, H, 3] counts as [H, W, 3]).
//               uint8 arrays are 8-bit RGB pixels; float arrays are RGB in [0, 1] (ToTensor's range),
//               except that a float array whose H x W equals the network input is taken as already
//               preprocessed (normalized) and goes to the network as it is.
// Preprocessing (timm's eval transform for CoAtNet, PIL + torchvision):
//   Resize: the shorter side to floor(size / crop_pct), the longer one int(that * long / short)
//           (non-square sizes: timm's ResizeKeepRatio), with PIL's BICUBIC filter (a = -0.5, support
//           widened by the downscale factor, 8-bit fixed-point taps, two passes each rounded to 8
//           bits, in Pillow 13's order: bit-exact with Image.resize for 8-bit RGB)
//   CenterCrop to size (offsets int(round((in - out) / 2)), Python's round half to even)
//   ToTensor (/255) and Normalize with the ImageNet mean and std, in float, to NHWC.
#pragma once

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#if defined(ATTNKIT_EXAMPLE_HAVE_PNG) && ATTNKIT_EXAMPLE_HAVE_PNG
#include <png.h>
#include <csetjmp>
#endif

namespace classify {

using index_t = std::int64_t;

/// An 8-bit RGB image, rows x cols x 3, row-major.
struct image8 {
  index_t rows = 0, cols = 0;
  std::vector<std::uint8_t> rgb;
};

/// A float RGB image, rows x cols x 3, row-major.
struct imagef {
  index_t rows = 0, cols = 0;
  std::vector<float> rgb;
};

/// What an input file holds: 8-bit pixels, float pixels in [0, 1], or a ready network input.
struct loaded_image {
  enum class kind { pixels8, pixels_float, preprocessed };
  kind what = kind::pixels8;
  image8 u8;        // kind::pixels8
  imagef f;         // kind::pixels_float and kind::preprocessed (normalized, rows x cols x 3)
  std::string how;  // e.g. "PNM P6 640 x 480 maxval 255"
};

inline std::string lower_extension(const std::string& path) {
  const auto dot = path.find_last_of('.');
  const auto slash = path.find_last_of("/\\");
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return "";
  std::string e = path.substr(dot + 1);
  for (char& c : e) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return e;
}

inline std::vector<unsigned char> read_file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open '" + path + "'");
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) throw std::runtime_error("cannot read '" + path + "'");
  return bytes;
}

inline void write_file_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("cannot write '" + path + "'");
}

/// Rejects image extents that are empty or large enough to overflow the buffers.
inline void check_extents(index_t rows, index_t cols, const std::string& what) {
  if (rows <= 0 || cols <= 0 || rows > (index_t(1) << 20) || cols > (index_t(1) << 20) ||
      rows * cols > (index_t(1) << 30))
    throw std::runtime_error(what + ": unsupported image size " + std::to_string(rows) + " x " +
                             std::to_string(cols));
}

// ---------------------------------------------------------------------------------------------
// PPM / PGM (netpbm P2, P3, P5, P6)

namespace detail {

/// Cursor over a netpbm header: whitespace and '#' comments between tokens.
struct pnm_cursor {
  const std::vector<unsigned char>& b;
  std::size_t pos = 0;
  const std::string& path;

  void skip_space_and_comments() {
    while (pos < b.size()) {
      if (b[pos] == '#') {
        while (pos < b.size() && b[pos] != '\n' && b[pos] != '\r') ++pos;
      } else if (std::isspace(b[pos])) {
        ++pos;
      } else {
        break;
      }
    }
  }
  /// The next unsigned decimal number; throws with `what` in the message otherwise.
  index_t number(const char* what) {
    skip_space_and_comments();
    if (pos >= b.size() || !std::isdigit(b[pos]))
      throw std::runtime_error("'" + path + "': bad PNM header: expected " + what);
    index_t v = 0;
    while (pos < b.size() && std::isdigit(b[pos])) {
      v = v * 10 + (b[pos++] - '0');
      if (v > (index_t(1) << 40))
        throw std::runtime_error("'" + path + "': bad PNM header: " + what + " too large");
    }
    return v;
  }
};

}  // namespace detail

/// Reads a P2, P3, P5 or P6 file into 8-bit RGB (grayscale replicated; maxval scaled to 255).
inline image8 read_pnm(const std::string& path, std::string* how = nullptr) {
  const std::vector<unsigned char> b = read_file_bytes(path);
  if (b.size() < 2 || b[0] != 'P')
    throw std::runtime_error("'" + path + "': not a PPM/PGM file (no 'P' magic number)");
  const char m = static_cast<char>(b[1]);
  if (m == '1' || m == '4' || m == '7')
    throw std::runtime_error("'" + path + "': unsupported netpbm format P" + std::string(1, m) +
                             " (use PPM P6/P3 or PGM P5/P2)");
  if (m != '2' && m != '3' && m != '5' && m != '6')
    throw std::runtime_error("'" + path + "': not a PPM/PGM file (magic 'P" + std::string(1, m) + "')");
  const bool ascii = m == '2' || m == '3';
  const index_t channels = (m == '3' || m == '6') ? 3 : 1;
  detail::pnm_cursor cur{b, 2, path};
  const index_t cols = cur.number("width"), rows = cur.number("height"), maxval = cur.number("maxval");
  check_extents(rows, cols, "'" + path + "'");
  if (maxval < 1 || maxval > 65535)
    throw std::runtime_error("'" + path + "': PNM maxval " + std::to_string(maxval) + " outside 1..65535");
  const index_t count = rows * cols * channels;
  std::vector<std::uint32_t> v(static_cast<std::size_t>(count));
  if (ascii) {
    for (index_t i = 0; i < count; ++i) v[i] = static_cast<std::uint32_t>(cur.number("a sample"));
  } else {
    // Exactly one whitespace character ends the header.
    if (cur.pos >= b.size() || !std::isspace(b[cur.pos]))
      throw std::runtime_error("'" + path + "': bad PNM header: no whitespace after maxval");
    ++cur.pos;
    const index_t bytes = maxval > 255 ? 2 : 1;
    if (static_cast<index_t>(b.size() - cur.pos) < count * bytes)
      throw std::runtime_error("'" + path + "': truncated PNM data (" + std::to_string(b.size() - cur.pos) +
                               " bytes, need " + std::to_string(count * bytes) + ")");
    const unsigned char* p = b.data() + cur.pos;
    for (index_t i = 0; i < count; ++i)
      v[i] = bytes == 2 ? (std::uint32_t(p[2 * i]) << 8 | p[2 * i + 1]) : std::uint32_t(p[i]);
  }
  image8 img;
  img.rows = rows;
  img.cols = cols;
  img.rgb.resize(static_cast<std::size_t>(rows * cols * 3));
  for (index_t i = 0; i < rows * cols; ++i)
    for (index_t c = 0; c < 3; ++c) {
      const std::uint32_t s = v[i * channels + (channels == 3 ? c : 0)];
      if (s > maxval)
        throw std::runtime_error("'" + path + "': PNM sample " + std::to_string(s) + " exceeds maxval " +
                                 std::to_string(maxval));
      // round(s * 255 / maxval) in integers
      img.rgb[i * 3 + c] = static_cast<std::uint8_t>((std::uint64_t(s) * 255 * 2 + maxval) / (2 * maxval));
    }
  if (how)
    *how = "P" + std::string(1, m) + " " + std::to_string(cols) + " x " + std::to_string(rows) + " maxval " +
           std::to_string(maxval) + (channels == 1 ? " (gray -> RGB)" : "");
  return img;
}

/// Writes 8-bit RGB as binary PPM (P6).
inline void write_ppm(const std::string& path, const image8& img) {
  std::string s = "P6\n" + std::to_string(img.cols) + " " + std::to_string(img.rows) + "\n255\n";
  s.append(img.rgb.begin(), img.rgb.end());
  write_file_bytes(path, s);
}

// ---------------------------------------------------------------------------------------------
// NPY (numpy's .npy format, versions 1.0, 2.0, 3.0)

/// A parsed .npy file: dtype ('f4', 'f8' or 'u1'), shape, and the values as double.
struct npy_array {
  std::string dtype;
  std::vector<index_t> shape;
  std::vector<double> values;
};

namespace detail {

/// The value text of 'key' in the header dict, up to the next ',' or '}' outside parentheses.
inline std::string npy_field(const std::string& h, const std::string& key, const std::string& path) {
  std::size_t k = h.find("'" + key + "'");
  if (k == std::string::npos) k = h.find("\"" + key + "\"");
  if (k == std::string::npos)
    throw std::runtime_error("'" + path + "': bad npy header: no '" + key + "' in " + h);
  std::size_t p = h.find(':', k);
  if (p == std::string::npos) throw std::runtime_error("'" + path + "': bad npy header: " + h);
  ++p;
  int depth = 0;
  std::size_t e = p;
  for (; e < h.size(); ++e) {
    if (h[e] == '(') ++depth;
    if (h[e] == ')') --depth;
    if (depth == 0 && (h[e] == ',' || h[e] == '}')) break;
    if (depth < 0) break;
  }
  if (e > h.size() || depth != 0) throw std::runtime_error("'" + path + "': bad npy header: " + h);
  std::string v = h.substr(p, e - p);
  const auto b = v.find_first_not_of(" \t");
  const auto l = v.find_last_not_of(" \t");
  return b == std::string::npos ? "" : v.substr(b, l - b + 1);
}

}  // namespace detail

inline npy_array read_npy(const std::string& path) {
  const std::vector<unsigned char> b = read_file_bytes(path);
  static const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (b.size() < 10 || std::memcmp(b.data(), magic, 6) != 0)
    throw std::runtime_error("'" + path + "': bad npy header: no \\x93NUMPY magic string");
  const int major = b[6];
  std::size_t header_len = 0, start = 0;
  if (major == 1) {
    header_len = std::size_t(b[8]) | std::size_t(b[9]) << 8;
    start = 10;
  } else if (major == 2 || major == 3) {
    if (b.size() < 12) throw std::runtime_error("'" + path + "': bad npy header: truncated");
    header_len =
        std::size_t(b[8]) | std::size_t(b[9]) << 8 | std::size_t(b[10]) << 16 | std::size_t(b[11]) << 24;
    start = 12;
  } else {
    throw std::runtime_error("'" + path + "': bad npy header: unsupported format version " +
                             std::to_string(major));
  }
  if (header_len > b.size() - start) throw std::runtime_error("'" + path + "': bad npy header: truncated");
  const std::string h(b.begin() + start, b.begin() + start + header_len);
  if (h.find('{') == std::string::npos || h.find('}') == std::string::npos)
    throw std::runtime_error("'" + path + "': bad npy header: not a dict: " + h);

  npy_array a;
  std::string descr = detail::npy_field(h, "descr", path);
  if (descr.size() < 2 || (descr.front() != '\'' && descr.front() != '"') || descr.back() != descr.front())
    throw std::runtime_error("'" + path + "': bad npy header: descr " + descr);
  descr = descr.substr(1, descr.size() - 2);
  if (descr == "<f4" || descr == "<f8") {
    a.dtype = descr.substr(1);
  } else if (descr == "|u1" || descr == "<u1" || descr == ">u1") {
    a.dtype = "u1";
  } else if (descr == ">f4" || descr == ">f8") {
    throw std::runtime_error("'" + path + "': big-endian npy arrays are not supported (dtype '" + descr +
                             "'): save with dtype '<" + descr.substr(1) + "'");
  } else {
    throw std::runtime_error("'" + path + "': unsupported npy dtype '" + descr +
                             "' (float32 '<f4', float64 '<f8' or uint8 '|u1')");
  }
  const std::string fortran = detail::npy_field(h, "fortran_order", path);
  if (fortran == "True")
    throw std::runtime_error("'" + path +
                             "': Fortran-order npy arrays are not supported (save a C-order array)");
  if (fortran != "False")
    throw std::runtime_error("'" + path + "': bad npy header: fortran_order " + fortran);
  const std::string shape = detail::npy_field(h, "shape", path);
  if (shape.size() < 2 || shape.front() != '(' || shape.back() != ')')
    throw std::runtime_error("'" + path + "': bad npy header: shape " + shape);
  {
    std::string inner = shape.substr(1, shape.size() - 2);
    std::size_t i = 0;
    while (true) {
      while (i < inner.size() && (inner[i] == ' ' || inner[i] == '\t')) ++i;
      if (i >= inner.size()) break;
      if (!std::isdigit(static_cast<unsigned char>(inner[i])))
        throw std::runtime_error("'" + path + "': bad npy header: shape " + shape);
      index_t v = 0;
      while (i < inner.size() && std::isdigit(static_cast<unsigned char>(inner[i]))) {
        v = v * 10 + (inner[i++] - '0');
        if (v > (index_t(1) << 40))
          throw std::runtime_error("'" + path + "': bad npy header: shape " + shape);
      }
      if (inner[i] == 'L') ++i;  // Python 2 longs
      a.shape.push_back(v);
      while (i < inner.size() && (inner[i] == ' ' || inner[i] == '\t')) ++i;
      if (i < inner.size() && inner[i] == ',') {
        ++i;
      } else if (i < inner.size()) {
        throw std::runtime_error("'" + path + "': bad npy header: shape " + shape);
      }
    }
  }
  index_t count = 1;
  for (index_t e : a.shape) {
    count *= e;
    if (count > (index_t(1) << 32)) throw std::runtime_error("'" + path + "': npy array too large");
  }
  const std::size_t item = a.dtype == "f8" ? 8 : a.dtype == "f4" ? 4 : 1;
  const std::size_t data = start + header_len;
  if (b.size() - data < std::size_t(count) * item)
    throw std::runtime_error("'" + path + "': truncated npy data (" + std::to_string(b.size() - data) +
                             " bytes, need " + std::to_string(count * item) + ")");
  a.values.resize(static_cast<std::size_t>(count));
  const unsigned char* p = b.data() + data;
  for (index_t i = 0; i < count; ++i) {
    if (item == 1) {
      a.values[i] = p[i];
    } else if (item == 4) {
      std::uint32_t u = 0;
      for (int k = 3; k >= 0; --k) u = u << 8 | p[4 * i + k];
      float f;
      std::memcpy(&f, &u, 4);
      a.values[i] = f;
    } else {
      std::uint64_t u = 0;
      for (int k = 7; k >= 0; --k) u = u << 8 | p[8 * i + k];
      double d;
      std::memcpy(&d, &u, 8);
      a.values[i] = d;
    }
  }
  return a;
}

/// Writes a C-order little-endian .npy (version 1.0) of dtype "f4" or "u1" from `values`.
inline void write_npy(const std::string& path, const std::string& dtype, const std::vector<index_t>& shape,
                      const std::vector<double>& values) {
  std::string tuple;  // Python's repr: (3,) or (3, 4)
  for (std::size_t i = 0; i < shape.size(); ++i) tuple += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) tuple += ",";
  std::string dict = "{'descr': '" + std::string(dtype == "u1" ? "|u1" : "<f4") +
                     "', 'fortran_order': False, 'shape': (" + tuple + "), }";
  dict.append((64 - (10 + dict.size() + 1) % 64) % 64, ' ');  // header padded to 64 bytes
  dict += '\n';
  std::string s("\x93NUMPY\x01\x00", 8);
  s += static_cast<char>(dict.size() & 0xff);
  s += static_cast<char>(dict.size() >> 8);
  s += dict;
  for (double v : values) {
    if (dtype == "u1") {
      s += static_cast<char>(static_cast<std::uint8_t>(v));
    } else {
      const float f = static_cast<float>(v);
      std::uint32_t u;
      std::memcpy(&u, &f, 4);
      for (int k = 0; k < 4; ++k) s += static_cast<char>((u >> (8 * k)) & 0xff);
    }
  }
  write_file_bytes(path, s);
}

/// The rows x cols x 3 view of an npy image: [H, W, 3], [3, H, W] or [1, 3, H, W]. Returns the
/// values in HWC order.
inline std::vector<double> npy_to_hwc(const npy_array& a, const std::string& path, index_t& rows,
                                      index_t& cols, std::string& layout) {
  const auto& s = a.shape;
  bool chw = false;
  if (s.size() == 3 && s[2] == 3) {
    rows = s[0], cols = s[1], layout = "[H, W, 3]";
  } else if (s.size() == 3 && s[0] == 3) {
    rows = s[1], cols = s[2], layout = "[3, H, W]", chw = true;
  } else if (s.size() == 4 && s[0] == 1 && s[1] == 3) {
    rows = s[2], cols = s[3], layout = "[1, 3, H, W]", chw = true;
  } else {
    std::string t = "(";
    for (std::size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
    throw std::runtime_error("'" + path + "': unsupported npy shape " + t +
                             ") (expected [3, H, W], [H, W, 3] or [1, 3, H, W])");
  }
  check_extents(rows, cols, "'" + path + "'");
  std::vector<double> hwc(static_cast<std::size_t>(rows * cols * 3));
  for (index_t y = 0; y < rows; ++y)
    for (index_t x = 0; x < cols; ++x)
      for (index_t c = 0; c < 3; ++c)
        hwc[(y * cols + x) * 3 + c] =
            chw ? a.values[(c * rows + y) * cols + x] : a.values[(y * cols + x) * 3 + c];
  return hwc;
}

// ---------------------------------------------------------------------------------------------
// PNG (libpng)

#if defined(ATTNKIT_EXAMPLE_HAVE_PNG) && ATTNKIT_EXAMPLE_HAVE_PNG
namespace detail {
// libpng reports errors by longjmp: the functions that call it hold no C++ object, and the C++
// side (buffers, exceptions) lives in read_png.
struct png_reader {
  std::jmp_buf jmp;
  char message[256] = {0};
  png_structp png = nullptr;
  png_infop info = nullptr;
  png_uint_32 width = 0, height = 0;
  int depth = 0, color = 0;
};
inline void png_error_fn(png_structp png, png_const_charp msg) {
  auto* r = static_cast<png_reader*>(png_get_error_ptr(png));
  std::snprintf(r->message, sizeof r->message, "%s", msg);
  std::longjmp(r->jmp, 1);
}
inline void png_warning_fn(png_structp, png_const_charp) {}

/// Reads the header and sets the transforms to 8-bit RGB; false on a libpng error.
inline bool png_read_header(png_reader* r, std::FILE* f) {
  if (setjmp(r->jmp)) return false;
  png_init_io(r->png, f);
  png_set_sig_bytes(r->png, 8);
  png_read_info(r->png, r->info);
  r->width = png_get_image_width(r->png, r->info);
  r->height = png_get_image_height(r->png, r->info);
  r->depth = png_get_bit_depth(r->png, r->info);
  r->color = png_get_color_type(r->png, r->info);
  if (r->color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(r->png);
  if (r->color == PNG_COLOR_TYPE_GRAY && r->depth < 8) png_set_expand_gray_1_2_4_to_8(r->png);
  if (r->depth == 16) png_set_strip_16(r->png);
  // Alpha dropped, also the one palette_to_rgb makes of a tRNS chunk (PIL's convert("RGB")).
  if ((r->color & PNG_COLOR_MASK_ALPHA) || png_get_valid(r->png, r->info, PNG_INFO_tRNS))
    png_set_strip_alpha(r->png);
  if (r->color == PNG_COLOR_TYPE_GRAY || r->color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(r->png);
  png_set_interlace_handling(r->png);
  png_read_update_info(r->png, r->info);
  if (png_get_rowbytes(r->png, r->info) != std::size_t(r->width) * 3)
    png_error(r->png, "unexpected row size after the transforms to RGB");
  return true;
}

/// Reads the rows; false on a libpng error.
inline bool png_read_rows(png_reader* r, png_bytepp rows) {
  if (setjmp(r->jmp)) return false;
  png_read_image(r->png, rows);
  png_read_end(r->png, nullptr);
  return true;
}
}  // namespace detail

/// Reads any PNG into 8-bit RGB: palette expanded, gray replicated, alpha dropped, 16 -> 8 bits by
/// the high byte.
inline image8 read_png(const std::string& path, std::string* how = nullptr) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error("cannot open '" + path + "'");
  unsigned char sig[8];
  if (std::fread(sig, 1, 8, f) != 8 || png_sig_cmp(sig, 0, 8) != 0) {
    std::fclose(f);
    throw std::runtime_error("'" + path + "': not a PNG file (bad signature)");
  }
  detail::png_reader r;
  r.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &r, detail::png_error_fn, detail::png_warning_fn);
  r.info = r.png ? png_create_info_struct(r.png) : nullptr;
  auto fail = [&](const std::string& msg) {
    png_destroy_read_struct(&r.png, r.info ? &r.info : nullptr, nullptr);
    std::fclose(f);
    throw std::runtime_error("'" + path + "': " + msg);
  };
  if (!r.png || !r.info) fail("libpng: out of memory");
  if (!detail::png_read_header(&r, f)) fail(std::string("PNG error: ") + r.message);
  const std::uint64_t w = r.width, h = r.height;
  if (w == 0 || h == 0 || w > (1u << 20) || h > (1u << 20) || w * h > (std::uint64_t(1) << 30))
    fail("unsupported image size " + std::to_string(h) + " x " + std::to_string(w));
  image8 img;
  img.rows = index_t(h);
  img.cols = index_t(w);
  img.rgb.resize(std::size_t(w * h * 3));
  std::vector<png_bytep> rows(h);
  for (std::uint64_t y = 0; y < h; ++y) rows[y] = img.rgb.data() + y * w * 3;
  if (!detail::png_read_rows(&r, rows.data())) fail(std::string("PNG error: ") + r.message);
  png_destroy_read_struct(&r.png, &r.info, nullptr);
  std::fclose(f);
  if (how) {
    const char* names[] = {"gray", "?", "RGB", "palette", "gray+alpha", "?", "RGBA"};
    *how = "PNG " + std::to_string(w) + " x " + std::to_string(h) + " " + std::to_string(r.depth) + "-bit " +
           (r.color >= 0 && r.color <= 6 ? names[r.color] : "?");
  }
  return img;
}

/// Writes 8-bit RGB as PNG (for the self-test).
inline void write_png_rgb8(const std::string& path, const image8& img) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error("cannot create '" + path + "'");
  png_image pi;
  std::memset(&pi, 0, sizeof pi);
  pi.version = PNG_IMAGE_VERSION;
  pi.width = png_uint_32(img.cols);
  pi.height = png_uint_32(img.rows);
  pi.format = PNG_FORMAT_RGB;
  const int ok = png_image_write_to_stdio(&pi, f, 0, img.rgb.data(), 0, nullptr);
  std::fclose(f);
  if (!ok) throw std::runtime_error("'" + path + "': libpng: " + pi.message);
}
#endif

// ---------------------------------------------------------------------------------------------
// Loading any supported file

/// Reads `path` by its extension (.ppm .pgm .pnm .png .npy). `net_rows` x `net_cols` is the network
/// input: a float npy array of exactly that H x W is taken as already preprocessed.
inline loaded_image load_image(const std::string& path, index_t net_rows, index_t net_cols) {
  const std::string ext = lower_extension(path);
  loaded_image li;
  if (ext == "ppm" || ext == "pgm" || ext == "pnm") {
    li.u8 = read_pnm(path, &li.how);
    li.how = "PNM " + li.how;
    return li;
  }
  if (ext == "png") {
#if defined(ATTNKIT_EXAMPLE_HAVE_PNG) && ATTNKIT_EXAMPLE_HAVE_PNG
    li.u8 = read_png(path, &li.how);
    return li;
#else
    throw std::runtime_error("'" + path +
                             "': PNG input needs libpng, and this program was built without it (install "
                             "libpng-dev and reconfigure), or convert the image to PPM or npy");
#endif
  }
  if (ext == "npy") {
    const npy_array a = read_npy(path);
    index_t rows = 0, cols = 0;
    std::string layout;
    const std::vector<double> hwc = npy_to_hwc(a, path, rows, cols, layout);
    const std::string dims = std::to_string(rows) + " x " + std::to_string(cols);
    if (a.dtype == "u1") {
      li.what = loaded_image::kind::pixels8;
      li.u8.rows = rows;
      li.u8.cols = cols;
      li.u8.rgb.assign(hwc.begin(), hwc.end());
      li.how = "npy uint8 " + layout + " " + dims;
      return li;
    }
    li.f.rows = rows;
    li.f.cols = cols;
    li.f.rgb.assign(hwc.begin(), hwc.end());
    const std::string t = a.dtype == "f4" ? "float32 " : "float64 ";
    if (rows == net_rows && cols == net_cols) {
      li.what = loaded_image::kind::preprocessed;
      li.how = "npy " + t + layout + " " + dims + ", the network input size: taken as preprocessed";
    } else {
      li.what = loaded_image::kind::pixels_float;
      li.how = "npy " + t + layout + " " + dims + ", RGB in [0, 1]";
    }
    return li;
  }
  throw std::runtime_error("'" + path + "': unsupported image format '" + ext +
                           "' (use .ppm/.pgm/.pnm, .png or .npy)");
}

// ---------------------------------------------------------------------------------------------
// PIL's resampling (Pillow src/libImaging/Resample.c): BICUBIC with a = -0.5, support 2 scaled by
// the downscale factor, taps normalized to sum 1; separable, horizontal pass first.

inline double pil_bicubic(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

/// The taps of one resampling pass: output i reads inputs first[i] .. first[i] + count[i] - 1 with
/// weights w[i * ksize + k] (PIL's precompute_coeffs).
struct resample_taps {
  index_t ksize = 0;
  std::vector<index_t> first, count;
  std::vector<double> w;
  std::vector<std::int32_t> w8;  // PIL's 8-bit fixed point (22 fraction bits)
};

constexpr int pil_precision_bits = 32 - 8 - 2;

inline resample_taps pil_taps(index_t in_size, index_t out_size) {
  resample_taps t;
  const double scale = double(in_size) / double(out_size);
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 2.0 * filterscale;
  t.ksize = index_t(std::ceil(support)) * 2 + 1;
  t.first.resize(out_size);
  t.count.resize(out_size);
  t.w.assign(std::size_t(out_size * t.ksize), 0.0);
  t.w8.assign(t.w.size(), 0);
  for (index_t xx = 0; xx < out_size; ++xx) {
    const double center = (double(xx) + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    index_t xmin = index_t(center - support + 0.5);  // truncation, as PIL's (int) cast
    if (xmin < 0) xmin = 0;
    index_t xmax = index_t(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double* k = &t.w[std::size_t(xx * t.ksize)];
    double ww = 0.0;
    for (index_t x = 0; x < xmax; ++x) {
      const double v = pil_bicubic((double(x + xmin) - center + 0.5) * ss);
      k[x] = v;
      ww += v;
    }
    for (index_t x = 0; x < xmax; ++x)
      if (ww != 0.0) k[x] /= ww;
    for (index_t x = 0; x < t.ksize; ++x) {
      const double v = k[x] * double(1 << pil_precision_bits);
      t.w8[std::size_t(xx * t.ksize + x)] = static_cast<std::int32_t>(k[x] < 0 ? -0.5 + v : 0.5 + v);
    }
    t.first[xx] = xmin;
    t.count[xx] = xmax;
  }
  return t;
}

inline std::uint8_t pil_clip8(std::int64_t in) {
  if (in >= (std::int64_t(1) << pil_precision_bits << 8)) return 255;
  if (in <= 0) return 0;
  return static_cast<std::uint8_t>(in >> pil_precision_bits);
}

/// One pass over `lines` lines of `in_size` pixels of 3 channels each (strides in pixels): `in_step`
/// between neighbours along the pass, `in_line` between lines; the same for the output.
template <class P>
void pil_resample_pass(const P* in, index_t in_step, index_t in_line, P* out, index_t out_step,
                       index_t out_line, index_t lines, index_t out_size, const resample_taps& t) {
  for (index_t l = 0; l < lines; ++l)
    for (index_t o = 0; o < out_size; ++o) {
      const index_t f = t.first[o], n = t.count[o];
      for (index_t c = 0; c < 3; ++c) {
        const P* src = in + (l * in_line + f * in_step) * 3 + c;
        P* dst = out + (l * out_line + o * out_step) * 3 + c;
        if constexpr (std::is_same_v<P, std::uint8_t>) {
          const std::int32_t* k = &t.w8[std::size_t(o * t.ksize)];
          std::int64_t ss = std::int64_t(1) << (pil_precision_bits - 1);
          for (index_t x = 0; x < n; ++x) ss += std::int64_t(src[x * in_step * 3]) * k[x];
          *dst = pil_clip8(ss);
        } else {
          const double* k = &t.w[std::size_t(o * t.ksize)];
          double ss = 0.0;
          for (index_t x = 0; x < n; ++x) ss += double(src[x * in_step * 3]) * k[x];
          *dst = static_cast<P>(ss);
        }
      }
    }
}

/// PIL's Image.resize((out_cols, out_rows), Image.BICUBIC) of a rows x cols x 3 image: bit-exact for
/// 8-bit pixels (PIL's "RGB" mode), and PIL's float ("F" mode) arithmetic for float pixels.
template <class P>
std::vector<P> resize_bicubic(const std::vector<P>& in, index_t rows, index_t cols, index_t out_rows,
                              index_t out_cols) {
  if (rows <= 0 || cols <= 0 || out_rows <= 0 || out_cols <= 0)
    throw std::invalid_argument("resize_bicubic: empty image");
  if (std::int64_t(in.size()) != rows * cols * 3)
    throw std::invalid_argument("resize_bicubic: wrong buffer size");
  // Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many pixels
  // as the width ("if height is scaled down significantly more than width, resize vertically
  // first"), else horizontal first. The order changes the 8-bit rounding of the intermediate image;
  // this rule reproduces Pillow 13.0.0's Image.resize bit for bit on random images of random sizes.
  const bool vertical_first =
      out_cols != cols && out_rows != rows && out_rows < rows && rows - out_rows > 2 * (cols - out_cols);
  std::vector<P> cur = in;
  index_t cur_rows = rows, cur_cols = cols;
  auto horizontal = [&] {
    std::vector<P> next(std::size_t(cur_rows * out_cols * 3));
    pil_resample_pass(cur.data(), 1, cur_cols, next.data(), 1, out_cols, cur_rows, out_cols,
                      pil_taps(cols, out_cols));
    cur.swap(next);
    cur_cols = out_cols;
  };
  auto vertical = [&] {
    std::vector<P> next(std::size_t(out_rows * cur_cols * 3));
    pil_resample_pass(cur.data(), cur_cols, 1, next.data(), cur_cols, 1, cur_cols, out_rows,
                      pil_taps(rows, out_rows));
    cur.swap(next);
    cur_rows = out_rows;
  };
  if (vertical_first) {
    vertical();
    horizontal();
  } else {  // PIL skips a pass whose size does not change
    if (out_cols != cols) horizontal();
    if (out_rows != rows) vertical();
  }
  return cur;
}

// ---------------------------------------------------------------------------------------------
// timm's eval transform

struct eval_transform {
  index_t rows = 224, cols = 224;  // the network input
  double crop_pct = 0.95;
  float mean[3] = {0.485f, 0.456f, 0.406f};
  float std[3] = {0.229f, 0.224f, 0.225f};
};

inline index_t python_round(double x) { return static_cast<index_t>(std::nearbyint(x)); }  // half to even

/// The size the image is resized to before the center crop: the shorter side to floor(size /
/// crop_pct) (torchvision Resize(int)) for a square input, timm's ResizeKeepRatio otherwise.
inline void resized_size(const eval_transform& t, index_t rows, index_t cols, index_t& out_rows,
                         index_t& out_cols) {
  const index_t sr = index_t(std::floor(double(t.rows) / t.crop_pct));
  const index_t sc = index_t(std::floor(double(t.cols) / t.crop_pct));
  if (sr == sc) {
    const index_t s = sr;
    const index_t shorter = std::min(rows, cols), longer = std::max(rows, cols);
    const index_t l = index_t(double(s * longer) / double(shorter));  // int(s * long / short)
    if (cols <= rows) {
      out_cols = s, out_rows = l;
    } else {
      out_rows = s, out_cols = l;
    }
  } else {
    const double ratio = std::min(double(rows) / double(sr), double(cols) / double(sc));
    out_rows = python_round(double(rows) / ratio);
    out_cols = python_round(double(cols) / ratio);
  }
}

/// Center crop offsets of torchvision's center_crop: int(round((in - out) / 2.0)).
inline index_t crop_offset(index_t in, index_t out) { return python_round(double(in - out) / 2.0); }

/// Resize, center crop, /255 (or nothing for float pixels in [0, 1]), normalize: rows x cols x 3.
template <class P>
std::vector<float> preprocess(const std::vector<P>& rgb, index_t rows, index_t cols,
                              const eval_transform& t) {
  index_t rr = 0, rc = 0;
  resized_size(t, rows, cols, rr, rc);
  if (rr < t.rows || rc < t.cols)
    throw std::runtime_error("image of " + std::to_string(rows) + " x " + std::to_string(cols) +
                             " resizes to less than the crop");
  const std::vector<P> r = resize_bicubic(rgb, rows, cols, rr, rc);
  const index_t top = crop_offset(rr, t.rows), left = crop_offset(rc, t.cols);
  std::vector<float> out(std::size_t(t.rows * t.cols * 3));
  for (index_t y = 0; y < t.rows; ++y)
    for (index_t x = 0; x < t.cols; ++x)
      for (index_t c = 0; c < 3; ++c) {
        const P v = r[std::size_t(((y + top) * rc + x + left) * 3 + c)];
        float f;
        if constexpr (std::is_same_v<P, std::uint8_t>) {
          f = float(v) / 255.0f;  // ToTensor: float32 division
        } else {
          f = float(v);
        }
        out[std::size_t((y * t.cols + x) * 3 + c)] = (f - t.mean[c]) / t.std[c];
      }
  return out;
}

/// The network input (rows x cols x 3, normalized) of a loaded file.
inline std::vector<float> network_input(const loaded_image& li, const eval_transform& t) {
  switch (li.what) {
    case loaded_image::kind::pixels8:
      return preprocess(li.u8.rgb, li.u8.rows, li.u8.cols, t);
    case loaded_image::kind::pixels_float:
      return preprocess(li.f.rgb, li.f.rows, li.f.cols, t);
    case loaded_image::kind::preprocessed:
      break;
  }
  return li.f.rgb;
}

}  // namespace classify
