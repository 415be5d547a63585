// attnkit fuzz target: the safetensors reader (attnkit/io/safetensors.hpp) on arbitrary bytes.
// Every input must either open (then every tensor reads as double, and as int64 where the dtype
// is an integer one) or throw std::runtime_error; anything else (a crash, a sanitizer report, an
// exception of another type, a read outside the data) is a bug. Built with clang's libFuzzer and
// ASan + UBSan by -DATTNKIT_BUILD_FUZZERS=ON; see tests/fuzz/README.md.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include <attnkit/io/safetensors.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using attnkit::io::dtype;
  try {
    const auto f = attnkit::io::safetensors_file::from_memory(data, size, "fuzz");
    for (const auto& e : f.entries()) {
      std::vector<double> x(static_cast<std::size_t>(e.numel()));  // numel <= size: the data covers it
      f.read(e.name, x.data(), e.numel());
      if (e.type != dtype::f64 && e.type != dtype::f32 && e.type != dtype::f16 && e.type != dtype::bf16) {
        std::vector<std::int64_t> n(static_cast<std::size_t>(e.numel()));
        f.read(e.name, n.data(), e.numel());
        try {  // narrower integers: a value out of range throws
          std::vector<std::int8_t> b(static_cast<std::size_t>(e.numel()));
          f.read(e.name, b.data(), e.numel());
        } catch (const std::runtime_error&) {
        }
      }
      if (e.shape.size() == 2) (void)f.read_tensor<float, 2>(e.name);
    }
    (void)f.metadata();
  } catch (const std::runtime_error&) {
  }
  return 0;
}
