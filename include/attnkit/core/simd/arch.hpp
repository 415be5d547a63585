// attnkit: SIMD architecture tags. Kernels overload on the tag; derived-to-base conversion is the
// fallback chain (a missing avx512 overload falls back to avx2, then scalar).
#pragma once

#include "../config.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace simd {

struct scalar {
  static constexpr const char* name = "scalar";
};
struct avx2 : scalar {
  static constexpr const char* name = "avx2";
};
struct avx512 : avx2 {
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
