// attnkit: SIMD architecture tags (docs/design.md §1.5). Kernels are templates on the tag and
// run on simd::batch<T, Arch>; simd::native is the widest the compiler's flags enable.
#pragma once

#include "../config.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace simd {

struct scalar {
  static constexpr const char* name = "scalar";
};
struct avx2 {
  static constexpr const char* name = "avx2";
};
struct avx512 {
  static constexpr const char* name = "avx512";
};

#if ATTNKIT_HAS_AVX512
using native = avx512;
#elif ATTNKIT_HAS_AVX2
using native = avx2;
#else
using native = scalar;
#endif

/// A register of T lanes for Arch; specialized in scalar.hpp, avx2.hpp and avx512.hpp.
template <class T, class Arch>
struct batch;

}  // namespace simd
ATTNKIT_END_NAMESPACE
