// attnkit: all SIMD batches available under the current compiler flags.
#pragma once

#include "simd/arch.hpp"
#include "simd/avx2.hpp"
#include "simd/avx512.hpp"
#include "simd/scalar.hpp"
