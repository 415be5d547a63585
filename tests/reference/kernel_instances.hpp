// attnkit tests: explicit instantiations of the kernels under test.
//
// Each optimized kernel instantiation takes ~20 s to compile. The test sources declare them
// `extern` (include this header), and CMake generates one translation unit per (arch, type) that
// defines ATTNKIT_TEST_INSTANTIATE_ARCH / _TYPE before including it, so the build spreads the
// kernels over all cores instead of compiling them one after the other inside test_attention.cpp.
#pragma once

#include <attnkit/coatnet/relative_attention.hpp>
#include <attnkit/coatnet/relative_backward.hpp>
#include <attnkit/combiner/attention.hpp>
#include <attnkit/combiner/probabilities.hpp>
#include <attnkit/favor/attention.hpp>
#include <attnkit/favor/decoder.hpp>
#include <attnkit/full/attention.hpp>
#include <attnkit/full/backward.hpp>
#include <attnkit/lambda/attention.hpp>

#define ATTNKIT_TEST_COMBINER(EXTERN, ARCH, T, PLAN)                                                        \
  EXTERN template void attnkit::combiner_attention<attnkit::simd::ARCH, T, attnkit::combiner::PLAN>(        \
      attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 4>, \
      attnkit::tensor_view<T, 4>, const attnkit::combiner::PLAN&, const attnkit::combiner_options&);

#define ATTNKIT_TEST_KERNELS(EXTERN, ARCH, T)                                                               \
  EXTERN template void attnkit::full_attention<attnkit::simd::ARCH, T>(                                     \
      attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 4>, \
      attnkit::tensor_view<T, 4>, const attnkit::attention_options&);                                       \
  EXTERN template void attnkit::full_attention<attnkit::simd::ARCH, T>(                                     \
      attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 4>, \
      attnkit::tensor_view<T, 4>, attnkit::tensor_view<T, 3>, const attnkit::attention_options&);           \
  EXTERN template void attnkit::full_attention_backward<attnkit::simd::ARCH, T>(                            \
      attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 4>, \
      attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 3>, attnkit::tensor_view<const T, 4>, \
      attnkit::tensor_view<T, 4>, attnkit::tensor_view<T, 4>, attnkit::tensor_view<T, 4>,                   \
      const attnkit::attention_options&);                                                                   \
  EXTERN template void attnkit::favor_attention<attnkit::simd::ARCH, T>(                                    \
      attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 4>, \
      attnkit::tensor_view<T, 4>, const attnkit::random_features<T>&, const attnkit::favor_options&);       \
  EXTERN template class attnkit::favor_decoder<T, attnkit::simd::ARCH>;                                     \
  ATTNKIT_TEST_COMBINER(EXTERN, ARCH, T, fixed)                                                             \
  ATTNKIT_TEST_COMBINER(EXTERN, ARCH, T, logsparse)                                                         \
  ATTNKIT_TEST_COMBINER(EXTERN, ARCH, T, axial)                                                             \
  ATTNKIT_TEST_COMBINER(EXTERN, ARCH, T, learnable)                                                         \
  EXTERN template void attnkit::lambda_attention<attnkit::simd::ARCH, T>(                                   \
      attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 4>, \
      const attnkit::lambda_position<T>&, attnkit::tensor_view<T, 3>, const attnkit::lambda_options&);      \
  EXTERN template void attnkit::relative_attention_2d<attnkit::simd::ARCH, T>(                              \
      attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 4>, \
      attnkit::tensor_view<const T, 3>, attnkit::relative_grid, attnkit::tensor_view<T, 4>,                 \
      const attnkit::relative_options&);                                                                    \
  EXTERN template void attnkit::relative_attention_2d<attnkit::simd::ARCH, T>(                              \
      attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 4>, \
      attnkit::tensor_view<const T, 3>, attnkit::relative_grid, attnkit::tensor_view<T, 4>,                 \
      attnkit::tensor_view<T, 3>, const attnkit::relative_options&);                                        \
  EXTERN template void attnkit::relative_attention_2d_backward<attnkit::simd::ARCH, T>(                     \
      attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 4>, attnkit::tensor_view<const T, 4>, \
      attnkit::tensor_view<const T, 3>, attnkit::relative_grid, attnkit::tensor_view<const T, 4>,           \
      attnkit::tensor_view<const T, 3>, attnkit::tensor_view<const T, 4>, attnkit::tensor_view<T, 4>,       \
      attnkit::tensor_view<T, 4>, attnkit::tensor_view<T, 4>, attnkit::tensor_view<T, 3>,                   \
      const attnkit::relative_options&);

// The Combiner oracle (combiner_probabilities in double, default Arch) is the slowest part of the
// Combiner tests; instantiated once, in the scalar double unit, it runs optimized in the sanitizer
// build too (whose test sources are compiled at -O0).
#define ATTNKIT_TEST_ORACLE(EXTERN, PLAN)                                                  \
  EXTERN template attnkit::tensor<double, 4>                                               \
  attnkit::combiner_probabilities<attnkit::simd::native, double, attnkit::combiner::PLAN>( \
      attnkit::tensor_view<const double, 4>, attnkit::tensor_view<const double, 4>,        \
      const attnkit::combiner::PLAN&, const attnkit::combiner_options&);
#define ATTNKIT_TEST_ORACLES(EXTERN)     \
  ATTNKIT_TEST_ORACLE(EXTERN, fixed)     \
  ATTNKIT_TEST_ORACLE(EXTERN, logsparse) \
  ATTNKIT_TEST_ORACLE(EXTERN, axial)     \
  ATTNKIT_TEST_ORACLE(EXTERN, learnable)

#if defined(ATTNKIT_TEST_INSTANTIATE_ARCH)
ATTNKIT_TEST_KERNELS(, ATTNKIT_TEST_INSTANTIATE_ARCH, ATTNKIT_TEST_INSTANTIATE_TYPE)
#if defined(ATTNKIT_TEST_INSTANTIATE_ORACLES)
ATTNKIT_TEST_ORACLES()
#endif
#else
ATTNKIT_TEST_ORACLES(extern)
ATTNKIT_TEST_KERNELS(extern, scalar, float)
ATTNKIT_TEST_KERNELS(extern, scalar, double)
#if ATTNKIT_HAS_AVX2
ATTNKIT_TEST_KERNELS(extern, avx2, float)
ATTNKIT_TEST_KERNELS(extern, avx2, double)
#endif
#if ATTNKIT_HAS_AVX512
ATTNKIT_TEST_KERNELS(extern, avx512, float)
ATTNKIT_TEST_KERNELS(extern, avx512, double)
#endif
#endif
