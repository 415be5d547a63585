// attnkit tool: the full-size CoAtNet presets against timm's logits (see tools/coatnet_fullsize_check.py,
// which writes the random-weight checkpoints and the reference logits: ~210 MB, not committed).
//   coatnet_fullsize_check <dir>
// Loads <dir>/coatnet_0_rw_224.safetensors and <dir>/coatnet_0_224.safetensors into
// coatnet::network<float> (presets coatnet_0_rw_224() and coatnet_0()), runs the NCHW input of
// <dir>/<name>_io.safetensors through strides, and prints max |logits - timm| / max |timm|.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>

#include <attnkit/coatnet/safetensors.hpp>

int main(int argc, char** argv) {
  namespace cn = attnkit::coatnet;
  using attnkit::index_t;
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <dir written by tools/coatnet_fullsize_check.py>\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  int failures = 0;
  try {
    for (const bool rw : {true, false}) {
      const std::string name = rw ? "coatnet_0_rw_224" : "coatnet_0_224";
      cn::network<float> net(rw ? cn::network_config::coatnet_0_rw_224() : cn::network_config::coatnet_0());
      cn::load_safetensors(net, dir + "/" + name + ".safetensors");
      const attnkit::io::safetensors_file io(dir + "/" + name + "_io.safetensors");
      const auto x = io.read_tensor<float, 4>("input");  // NCHW
      const auto ref = io.read_tensor<double, 2>("logits");
      const index_t B = x.extent(0), C = x.extent(1), H = x.extent(2), W = x.extent(3);
      const attnkit::tensor_view<const float, 4> nhwc(x.data(), {B, H, W, C}, {C * H * W, W, 1, H * W});
      const auto t0 = std::chrono::steady_clock::now();
      const auto y = net.forward(nhwc);
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      double num = 0, den = 0;
      for (index_t i = 0; i < y.size(); ++i) {
        num = std::max(num, std::fabs(static_cast<double>(y.data()[i]) - ref.data()[i]));
        den = std::max(den, std::fabs(ref.data()[i]));
      }
      const double rel = num / den;
      std::printf(
          "%-17s max|logits - timm| / max|timm| = %.3g (max|timm| = %.3g; first forward incl. packing %.0f "
          "ms)\n",
          name.c_str(), rel, den, ms);
      failures += !(rel <= 1e-4);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return failures ? 1 : 0;
}
