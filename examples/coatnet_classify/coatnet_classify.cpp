// attnkit CoAtNet example: classify one image with a CoAtNet checkpoint and print the top-5.
//
// Usage:
//   attnkit_coatnet_classify <checkpoint.safetensors> <image.(ppm|pgm|png|npy)>
//                            [--preset coatnet_0_rw_224|coatnet_0] [--labels labels.txt]
//                            [--threads N] [--size RxC] [--save-input input.npy]
//   attnkit_coatnet_classify --selftest
//
//   --preset      the network layout (default coatnet_0_rw_224: timm's coatnet_0_rw_224, whose
//                 ImageNet weights are public; coatnet_0: the paper's CoAtNet-0, timm coatnet_0_224)
//   --labels      a text file with one class name per line (line i = class i), printed after the
//                 probabilities
//   --threads N   threads of the forward pass (default 0: all)
//   --size RxC    network input size (default the preset's, 224x224)
//   --save-input  also write the preprocessed network input as a float32 npy [1, R, C, 3] (NHWC), to
//                 compare with timm's transform in Python
//   --selftest    checks the image readers, the PIL-exact resize and the preprocessing without a
//                 checkpoint; prints PASS or FAIL
//
// The checkpoint is a timm state dict saved as safetensors, e.g. in Python:
//   m = timm.create_model("coatnet_0_rw_224.sw_in1k", pretrained=True)
//   safetensors.torch.save_file(m.state_dict(), "coatnet_0_rw_224.safetensors")
// The image goes through timm's eval transform for these models (image.hpp): resize the shorter
// side to floor(224 / 0.95) = 235 with PIL's bicubic filter, center crop 224 x 224, /255, normalize
// with the ImageNet mean and std. crop_pct = 0.95 is coatnet_0_rw_224's pretrained config; it is
// used for both presets. Input formats: PPM/PGM (P6, P3, P5, P2; 8 or 16 bits), PNG (when built
// with libpng), npy (float32/float64/uint8 [3, H, W], [H, W, 3] or [1, 3, H, W]; a float array whose
// H x W equals the network input is taken as already preprocessed, any other float array as RGB in
// [0, 1], and uint8 arrays as 8-bit pixels). Errors go to stderr with exit code 1.
#include <attnkit/coatnet/network.hpp>
#include <attnkit/coatnet/safetensors.hpp>

#include "image.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

const char* usage_text =
    "usage: attnkit_coatnet_classify <checkpoint.safetensors> <image.(ppm|pgm|png|npy)>\n"
    "         [--preset coatnet_0_rw_224|coatnet_0] [--labels labels.txt] [--threads N] [--size RxC]\n"
    "         [--save-input input.npy]\n"
    "       attnkit_coatnet_classify --selftest\n";

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct options {
  std::string checkpoint, image, preset = "coatnet_0_rw_224", labels, save_input;
  int threads = 0;
  classify::index_t rows = 0, cols = 0;  // 0: the preset's
  bool selftest = false;
};

classify::index_t parse_int(const std::string& s, const std::string& what) {
  std::size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != s.size() || s.empty()) throw usage_error("bad " + what + " '" + s + "'");
  return v;
}

options parse_args(int argc, char** argv) {
  options o;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw usage_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--selftest") {
      o.selftest = true;
    } else if (a == "--preset") {
      o.preset = value();
      if (o.preset != "coatnet_0_rw_224" && o.preset != "coatnet_0")
        throw usage_error("unknown preset '" + o.preset + "' (coatnet_0_rw_224 or coatnet_0)");
    } else if (a == "--labels") {
      o.labels = value();
    } else if (a == "--threads") {
      const auto t = parse_int(value(), "thread count");
      if (t < 0 || t > 4096) throw usage_error("bad thread count " + std::to_string(t));
      o.threads = static_cast<int>(t);
    } else if (a == "--size") {
      const std::string v = value();
      const auto x = v.find_first_of("xX");
      if (x == std::string::npos) throw usage_error("bad --size '" + v + "' (expected RxC, e.g. 224x224)");
      o.rows = parse_int(v.substr(0, x), "--size rows");
      o.cols = parse_int(v.substr(x + 1), "--size cols");
      if (o.rows <= 0 || o.cols <= 0 || o.rows > 8192 || o.cols > 8192)
        throw usage_error("bad --size '" + v + "'");
    } else if (a == "--save-input") {
      o.save_input = value();
    } else if (a == "-h" || a == "--help") {
      std::fputs(usage_text, stdout);
      std::exit(0);
    } else if (a.size() > 1 && a[0] == '-') {
      throw usage_error("unknown option '" + a + "'");
    } else {
      positional.push_back(a);
    }
  }
  if (o.selftest) {
    if (!positional.empty()) throw usage_error("--selftest takes no files");
    return o;
  }
  if (positional.size() != 2) throw usage_error("expected a checkpoint and an image");
  o.checkpoint = positional[0];
  o.image = positional[1];
  return o;
}

std::vector<std::string> read_labels(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open labels file '" + path + "'");
  std::vector<std::string> labels;
  std::string line;
  while (std::getline(f, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    labels.push_back(line);
  }
  return labels;
}

int classify_image(const options& o) {
  using attnkit::coatnet::network_config;
  network_config cfg =
      o.preset == "coatnet_0" ? network_config::coatnet_0() : network_config::coatnet_0_rw_224();
  if (o.rows > 0) {
    cfg.image_rows = o.rows;
    cfg.image_cols = o.cols;
  }
  if (cfg.in_channels != 3) throw std::runtime_error("the preset does not take RGB input");

  // Image and labels first: their errors come before the (slow) checkpoint load.
  classify::eval_transform tf;
  tf.rows = cfg.image_rows;
  tf.cols = cfg.image_cols;
  const classify::loaded_image img = classify::load_image(o.image, tf.rows, tf.cols);
  const std::vector<float> input = classify::network_input(img, tf);
  if (!o.save_input.empty())
    classify::write_npy(o.save_input, "f4", {1, tf.rows, tf.cols, 3},
                        std::vector<double>(input.begin(), input.end()));
  std::vector<std::string> labels;
  if (!o.labels.empty()) labels = read_labels(o.labels);

  attnkit::coatnet::network<float> net(cfg);
  attnkit::coatnet::load_safetensors(net, o.checkpoint);
  const auto x = attnkit::tensor_view<const float, 4>::contiguous(input.data(), {1, tf.rows, tf.cols, 3});
  const auto t0 = std::chrono::steady_clock::now();
  const attnkit::tensor<float, 2> logits = net.forward(x, o.threads);
  const auto t1 = std::chrono::steady_clock::now();
  const double ms = std::chrono::duration<double, std::milli>(t1 - t0).count();

  const classify::index_t n = net.config().num_classes;
  if (logits.extent(0) != 1 || logits.extent(1) != n)
    throw std::runtime_error("forward returned logits of an unexpected shape");
  if (!labels.empty() && classify::index_t(labels.size()) != n)
    std::fprintf(stderr, "warning: %zu labels for %lld classes\n", labels.size(), static_cast<long long>(n));
  // Softmax in double, max subtracted.
  std::vector<double> p(static_cast<std::size_t>(n));
  double mx = -INFINITY, sum = 0;
  for (classify::index_t j = 0; j < n; ++j) mx = std::max(mx, double(logits.data()[j]));
  for (classify::index_t j = 0; j < n; ++j) sum += p[j] = std::exp(double(logits.data()[j]) - mx);
  for (double& v : p) v /= sum;
  std::vector<classify::index_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  const std::size_t k = std::min<std::size_t>(5, order.size());
  std::partial_sort(
      order.begin(), order.begin() + k, order.end(),
      [&](classify::index_t a, classify::index_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });

  std::printf("input:    %s (%s)\n", o.image.c_str(), img.how.c_str());
  std::printf("preset:   %s, checkpoint %s\n", o.preset.c_str(), o.checkpoint.c_str());
  std::printf("image:    %lld x %lld x 3 (NHWC, crop_pct %.2f, bicubic, ImageNet mean/std)\n",
              static_cast<long long>(tf.rows), static_cast<long long>(tf.cols), tf.crop_pct);
  std::printf("forward:  %.1f ms (threads %d)\n", ms, o.threads);
  std::printf("rank  class  probability  label\n");
  for (std::size_t r = 0; r < k; ++r) {
    const auto c = order[r];
    std::printf("%4zu  %5lld  %11.6f  %s\n", r + 1, static_cast<long long>(c), p[c],
                c < classify::index_t(labels.size()) ? labels[c].c_str() : "");
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
// --selftest

struct checker {
  int failed = 0, passed = 0;
  void operator()(bool ok, const std::string& what) {
    if (ok) {
      ++passed;
    } else {
      ++failed;
      std::printf("  FAIL: %s\n", what.c_str());
    }
  }
};

template <class F>
bool throws(F&& f, const std::string& needle) {
  try {
    f();
  } catch (const std::exception& e) {
    return std::string(e.what()).find(needle) != std::string::npos;
  }
  return false;
}

/// The selftest's 6 x 10 RGB ramp: R = 20 x + 3 y, G = 255 - R, B = 100.
std::vector<std::uint8_t> ramp_image() {
  std::vector<std::uint8_t> ramp(6 * 10 * 3);
  for (attnkit::index_t y = 0; y < 6; ++y)
    for (attnkit::index_t x = 0; x < 10; ++x) {
      const int r = int(20 * x + 3 * y);
      ramp[(y * 10 + x) * 3 + 0] = std::uint8_t(r);
      ramp[(y * 10 + x) * 3 + 1] = std::uint8_t(255 - r);
      ramp[(y * 10 + x) * 3 + 2] = 100;
    }
  return ramp;
}

int selftest_checks(checker& check) {
  using namespace classify;
  char tmpl[] = "/tmp/attnkit_classify_selftest_XXXXXX";
  if (!mkdtemp(tmpl)) {
    std::fprintf(stderr, "selftest: cannot create a temporary directory\n");
    return 1;
  }
  const std::string dir = tmpl;
  std::vector<std::string> files;
  auto file = [&](const std::string& name) {
    files.push_back(dir + "/" + name);
    return files.back();
  };

  // PPM P6 round trip, 3 rows x 4 cols.
  image8 a;
  a.rows = 3;
  a.cols = 4;
  for (int i = 0; i < 36; ++i) a.rgb.push_back(static_cast<std::uint8_t>(i * 7 + 1));
  write_ppm(file("a.ppm"), a);
  const image8 b = read_pnm(files.back());
  check(b.rows == 3 && b.cols == 4 && b.rgb == a.rgb, "PPM P6 round trip");

  // P3 with comments and maxval 1000; P5 16-bit gray (replicated); P2 gray.
  write_file_bytes(file("p3.ppm"), "P3 # comment\n2 1\n# another\n1000\n0 500 1000  999 1 2\n");
  const image8 p3 = read_pnm(files.back());
  const std::vector<std::uint8_t> p3_want = {0, 128, 255, 255, 0, 1};  // round(v * 255 / 1000)
  check(p3.rows == 1 && p3.cols == 2 && p3.rgb == p3_want, "PPM P3 with comments, maxval 1000");
  write_file_bytes(file("p5.pgm"), std::string("P5\n2 1\n65535\n\xff\xff\x80\x00", 17));
  const image8 p5 = read_pnm(files.back());
  const std::vector<std::uint8_t> p5_want = {255, 255, 255, 128, 128, 128};  // 32768 * 255 / 65535
  check(p5.rgb == p5_want, "PGM P5 16-bit gray -> RGB");
  write_file_bytes(file("p2.pgm"), "P2 3 1 255 7 8 9\n");
  const image8 p2 = read_pnm(files.back());
  check(p2.rgb == std::vector<std::uint8_t>{7, 7, 7, 8, 8, 8, 9, 9, 9}, "PGM P2 gray -> RGB");
  write_file_bytes(file("short.ppm"), "P6 4 4 255\nabc");
  check(throws([&] { read_pnm(files.back()); }, "truncated PNM data"), "truncated PPM rejected");
  write_file_bytes(file("p4.pbm"), "P4 1 1\n\x80");
  check(throws([&] { read_pnm(files.back()); }, "unsupported netpbm format P4"), "PBM rejected");

  // npy: float32 [3, H, W] and uint8 [H, W, 3] and [1, 3, H, W] round trips through load_image.
  {
    const index_t H = 2, W = 5;
    std::vector<double> chw(3 * H * W);
    for (std::size_t i = 0; i < chw.size(); ++i) chw[i] = 0.25 * double(i) - 1.0;
    write_npy(file("chw.npy"), "f4", {3, H, W}, chw);
    const loaded_image li = load_image(files.back(), H, W);  // the network input size: preprocessed
    bool ok = li.what == loaded_image::kind::preprocessed && li.f.rows == H && li.f.cols == W;
    for (index_t y = 0; ok && y < H; ++y)
      for (index_t x = 0; x < W; ++x)
        for (index_t c = 0; c < 3; ++c)
          ok = ok && li.f.rgb[(y * W + x) * 3 + c] == float(chw[(c * H + y) * W + x]);
    check(ok, "npy float32 [3, H, W] at the input size -> preprocessed NHWC");
    check(network_input(li, eval_transform{H, W}) == li.f.rgb, "preprocessed npy goes through unchanged");
    const loaded_image other = load_image(files.back(), 224, 224);
    check(other.what == loaded_image::kind::pixels_float, "npy float32 of another size -> pixels in [0, 1]");
    write_npy(file("nchw.npy"), "f4", {1, 3, H, W}, chw);
    const loaded_image li4 = load_image(files.back(), H, W);
    check(li4.f.rgb == li.f.rgb, "npy float32 [1, 3, H, W] == [3, H, W]");

    std::vector<double> hwc(H * W * 3);
    for (std::size_t i = 0; i < hwc.size(); ++i) hwc[i] = double((i * 37) % 256);
    write_npy(file("hwc.npy"), "u1", {H, W, 3}, hwc);
    const loaded_image lu = load_image(files.back(), H, W);
    check(lu.what == loaded_image::kind::pixels8 && lu.u8.rows == H && lu.u8.cols == W &&
              std::equal(hwc.begin(), hwc.end(), lu.u8.rgb.begin()),
          "npy uint8 [H, W, 3] -> 8-bit pixels");

    // Bad headers: big-endian, Fortran order, wrong shape, truncated data, no magic.
    std::string be = std::string("\x93NUMPY\x01\x00", 8);
    std::string d = "{'descr': '>f4', 'fortran_order': False, 'shape': (3, 2, 2), }";
    d.append((64 - (10 + d.size() + 1) % 64) % 64, ' ');  // header padded to 64 bytes
    d += '\n';
    be += static_cast<char>(d.size());
    be += '\0';
    be += d;
    write_file_bytes(file("be.npy"), be + std::string(48, '\0'));
    check(throws([&] { read_npy(files.back()); }, "big-endian"), "big-endian npy rejected");
    std::string fo = be;
    fo.replace(fo.find(">f4"), 3, "<f4");
    fo.replace(fo.find("False"), 5, "True ");
    write_file_bytes(file("fo.npy"), fo + std::string(48, '\0'));
    check(throws([&] { read_npy(files.back()); }, "Fortran-order"), "Fortran-order npy rejected");
    write_npy(file("shape.npy"), "f4", {2, 2, 2}, std::vector<double>(8, 0.0));
    check(throws([&] { load_image(files.back(), 2, 2); }, "unsupported npy shape (2, 2, 2)"),
          "npy shape rejected");
    write_file_bytes(file("trunc.npy"), fo.replace(fo.find("True "), 5, "False") + std::string(40, '\0'));
    check(throws([&] { read_npy(files.back()); }, "truncated npy data"), "truncated npy rejected");
    write_file_bytes(file("magic.npy"), "NUMPY but not really");
    check(throws([&] { read_npy(files.back()); }, "bad npy header"), "npy without magic rejected");
  }
  check(throws([&] { load_image(dir + "/missing.ppm", 224, 224); }, "cannot open"), "missing file");
  check(throws([&] { load_image(dir + "/a.jpg", 224, 224); }, "unsupported image format 'jpg'"),
        "unsupported extension");

#if defined(ATTNKIT_EXAMPLE_HAVE_PNG) && ATTNKIT_EXAMPLE_HAVE_PNG
  write_png_rgb8(file("a.png"), a);
  const image8 pa = read_png(files.back());
  check(pa.rows == 3 && pa.cols == 4 && pa.rgb == a.rgb, "PNG RGB round trip");
  write_file_bytes(file("bad.png"), "\x89PNG\r\n\x1a\n garbage");
  check(throws([&] { read_png(files.back()); }, "PNG error"), "corrupt PNG rejected");
#endif

  // Resize: a constant image stays constant, down and up, 8-bit and float.
  {
    const std::vector<std::uint8_t> c8(37 * 23 * 3, 173);
    bool ok = true;
    for (const auto& s : {std::pair<index_t, index_t>{11, 7}, {80, 51}, {37, 5}, {3, 23}}) {
      const auto r = resize_bicubic(c8, 37, 23, s.first, s.second);
      ok = ok && r.size() == std::size_t(s.first * s.second * 3) &&
           std::all_of(r.begin(), r.end(), [](std::uint8_t v) { return v == 173; });
    }
    check(ok, "8-bit resize of a constant image stays constant");
    const std::vector<float> cf(37 * 23 * 3, 0.625f);
    ok = true;
    for (const auto& s : {std::pair<index_t, index_t>{11, 7}, {80, 51}}) {
      const auto r = resize_bicubic(cf, 37, 23, s.first, s.second);
      ok = ok && std::all_of(r.begin(), r.end(), [](float v) { return std::fabs(v - 0.625f) < 1e-6f; });
    }
    check(ok, "float resize of a constant image stays constant");
  }

  // Resize of a ramp against Pillow 13.0.0. The image is 6 rows x 10 cols, R = 20 * x + 3 * y,
  // G = 255 - R, B = 100; the expected numbers were produced by
  //   img = Image.fromarray(arr).resize((w, h), Image.BICUBIC); np.asarray(img)
  // and for float by Image.fromarray(R.astype(np.float32), "F").resize(...).
  {
    const std::vector<std::uint8_t> ramp = ramp_image();
    std::vector<float> rampf(6 * 10 * 3);
    for (std::size_t i = 0; i < rampf.size(); i += 3) rampf[i] = float(ramp[i]);
    // Downscale to 4 rows x 3 cols: the red channel, row-major.
    const std::vector<int> down_r = {26, 91, 156, 30, 95, 160, 35, 100, 165, 39, 104, 169};
    // Upscale to 9 rows x 16 cols: red at (row, col) for a few positions.
    struct pt {
      int y, x, v;
    };
    const std::vector<pt> up_r = {{0, 0, 0},  {0, 15, 181}, {8, 0, 14}, {8, 15, 196}, {4, 7, 92},
                                  {2, 3, 38}, {6, 11, 145}, {1, 1, 8},  {7, 14, 187}, {3, 9, 114}};
    const auto d = resize_bicubic(ramp, 6, 10, 4, 3);
    bool ok = d.size() == 36 && down_r.size() == 12;
    for (std::size_t i = 0; ok && i < 12; ++i) ok = d[i * 3] == down_r[i] && d[i * 3 + 2] == 100;
    check(ok, "8-bit bicubic downscale 6x10 -> 4x3 == PIL");
    const auto u = resize_bicubic(ramp, 6, 10, 9, 16);
    ok = !up_r.empty();
    for (const pt& p : up_r) ok = ok && u[(p.y * 16 + p.x) * 3] == p.v;
    check(ok, "8-bit bicubic upscale 6x10 -> 9x16 == PIL");
    const std::vector<float> down_f = {25.685203552246094f, 90.86407470703125f,  156.04295349121094f,
                                       29.948230743408203f, 95.12710571289062f,  160.3059844970703f,
                                       34.69401931762695f,  99.87289428710938f,  165.05177307128906f,
                                       38.95704650878906f,  104.13592529296875f, 169.31480407714844f};
    const auto df = resize_bicubic(rampf, 6, 10, 4, 3);
    ok = down_f.size() == 12;
    for (std::size_t i = 0; ok && i < 12; ++i)
      ok = std::fabs(df[i * 3] - down_f[i]) <= 1e-4f * std::fabs(down_f[i]) + 1e-4f;
    check(ok, "float bicubic downscale 6x10 -> 4x3 == PIL 'F'");
  }

  // Pass order: Pillow 13 resizes vertically first when the height loses more than twice as many
  // pixels as the width (23 x 8 -> 13 x 4), else horizontally first (40 x 30 -> 11 x 26); the 8-bit
  // rounding in between makes the two orders differ (at 38 and 198 values here). Expected: the sum
  // and the sum of (i + 1) * v[i] mod 1000003 of Pillow 13.0.0's resize of the same pattern.
  {
    struct order_case {
      index_t h, w, oh, ow;
      long long sum, weighted;
    };
    bool ok = true;
    for (const order_case& oc :
         {order_case{23, 8, 13, 4, 19929, 550486}, order_case{40, 30, 11, 26, 109118, 285380}}) {
      std::vector<std::uint8_t> pat(std::size_t(oc.h * oc.w * 3));
      for (index_t y = 0; y < oc.h; ++y)
        for (index_t x = 0; x < oc.w; ++x)
          for (index_t c = 0; c < 3; ++c)
            pat[(y * oc.w + x) * 3 + c] = std::uint8_t((x * 73 + y * 151 + c * 37 + (x * y) % 7 * 19) % 256);
      const auto r = resize_bicubic(pat, oc.h, oc.w, oc.oh, oc.ow);
      long long sum = 0, weighted = 0;
      for (std::size_t i = 0; i < r.size(); ++i) {
        sum += r[i];
        weighted = (weighted + (long long)(i + 1) * r[i]) % 1000003;
      }
      ok = ok && sum == oc.sum && weighted == oc.weighted;
    }
    check(ok, "8-bit bicubic pass order (vertical first / horizontal first) == PIL");
  }

  // The whole transform at a small size: the 6 x 10 ramp to size 4 (resize to 4 x int(4 * 10 / 6) =
  // 4 x 6 since floor(4 / 0.95) = 4, crop left int(round(1.0)) = 1). Expected: Pillow 13.0.0's
  // resize((6, 4), Image.BICUBIC), the crop, then torchvision's ToTensor and Normalize steps in numpy
  // float32: (np.float32(v) / np.float32(255) - mean) / std, NHWC.
  {
    index_t rr = 0, rc = 0;
    eval_transform t;
    resized_size(t, 480, 640, rr, rc);
    check(rr == 235 && rc == 313, "resize of 480 x 640 for 224: 235 x 313");
    resized_size(t, 640, 480, rr, rc);
    check(rr == 313 && rc == 235, "resize of 640 x 480 for 224: 313 x 235");
    check(crop_offset(235, 224) == 6 && crop_offset(313, 224) == 44 && crop_offset(5, 4) == 0 &&
              crop_offset(7, 4) == 2,
          "center crop offsets round half to even");
    const std::vector<float> want = {
        -1.4329139f,    1.72829127f,  -0.061524976f, -0.833547413f, 1.11554623f,    -0.061524976f,
        -0.285555303f,  0.55532223f,  -0.061524976f, 0.313811153f,  -0.0574229546f, -0.061524976f,
        -1.36441481f,   1.65826333f,  -0.061524976f, -0.765048385f, 1.04551828f,    -0.061524976f,
        -0.217056304f,  0.485294223f, -0.061524976f, 0.382310182f,  -0.127450958f,  -0.061524976f,
        -1.27879107f,   1.5707283f,   -0.061524976f, -0.679424644f, 0.957983255f,   -0.061524976f,
        -0.131432533f,  0.397759199f, -0.061524976f, 0.467933923f,  -0.214985967f,  -0.061524976f,
        -1.2102921f,    1.50070024f,  -0.061524976f, -0.610925615f, 0.887955248f,   -0.061524976f,
        -0.0629335269f, 0.327731192f, -0.061524976f, 0.536432922f,  -0.285013974f,  -0.061524976f};
    const std::vector<std::uint8_t> ramp = ramp_image();
    t.rows = t.cols = 4;
    const auto got = preprocess(ramp, 6, 10, t);
    bool ok = got.size() == want.size() && !want.empty();
    for (std::size_t i = 0; ok && i < want.size(); ++i) ok = std::fabs(got[i] - want[i]) <= 1e-6f;
    check(ok, "preprocess (resize, crop, normalize) of a 6 x 10 ramp to 4 x 4 == torchvision");
  }

  for (const auto& f : files) std::remove(f.c_str());
  rmdir(dir.c_str());
  return 0;
}

int selftest() {
  checker check;
  try {
    if (selftest_checks(check) != 0) return 1;
  } catch (const std::exception& e) {
    check(false, std::string("unexpected exception: ") + e.what());
  }
  std::printf("selftest: %d checks, %d failed: %s\n", check.passed + check.failed, check.failed,
              check.failed ? "FAIL" : "PASS");
  return check.failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const options o = parse_args(argc, argv);
    if (o.selftest) return selftest();
    return classify_image(o);
  } catch (const usage_error& e) {
    std::fprintf(stderr, "attnkit_coatnet_classify: %s\n%s", e.what(), usage_text);
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attnkit_coatnet_classify: error: %s\n", e.what());
    return 1;
  }
}
