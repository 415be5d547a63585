// attnkit: version, feature macros (always 0 or 1) and the ISA inline namespace.
#pragma once

#include <cstddef>

#define ATTNKIT_VERSION_MAJOR 0
#define ATTNKIT_VERSION_MINOR 1
#define ATTNKIT_VERSION_PATCH 0

// ISA selection follows the consumer's compiler flags (the CMake target adds no -m flags).
// Define ATTNKIT_FORCE_SCALAR=1 to ignore the flags and use the portable path.
#ifndef ATTNKIT_FORCE_SCALAR
#define ATTNKIT_FORCE_SCALAR 0
#endif

#if !ATTNKIT_FORCE_SCALAR && defined(__AVX2__) && defined(__FMA__)
#define ATTNKIT_HAS_AVX2 1
#else
#define ATTNKIT_HAS_AVX2 0
#endif

#if ATTNKIT_HAS_AVX2 && defined(__AVX512F__) && defined(__AVX512DQ__)
#define ATTNKIT_HAS_AVX512 1
#else
#define ATTNKIT_HAS_AVX512 0
#endif

#if defined(_OPENMP)
#define ATTNKIT_HAS_OPENMP 1
#else
#define ATTNKIT_HAS_OPENMP 0
#endif

// Every translation unit built with other ISA flags gets other symbol names, so inline
// functions compiled for AVX-512 are never merged with their scalar twins by the linker.
#if ATTNKIT_HAS_AVX512
#define ATTNKIT_ISA_NAMESPACE isa_avx512
#elif ATTNKIT_HAS_AVX2
#define ATTNKIT_ISA_NAMESPACE isa_avx2
#else
#define ATTNKIT_ISA_NAMESPACE isa_scalar
#endif

#define ATTNKIT_BEGIN_NAMESPACE \
  namespace attnkit {           \
  inline namespace ATTNKIT_ISA_NAMESPACE {
#define ATTNKIT_END_NAMESPACE \
  }                           \
  }

#if defined(__GNUC__) || defined(__clang__)
#define ATTNKIT_ALWAYS_INLINE inline __attribute__((always_inline))
#define ATTNKIT_RESTRICT __restrict__
#else
#define ATTNKIT_ALWAYS_INLINE inline
#define ATTNKIT_RESTRICT
#endif

ATTNKIT_BEGIN_NAMESPACE
/// Signed index and extent type of every view and loop.
using index_t = std::ptrdiff_t;
ATTNKIT_END_NAMESPACE
