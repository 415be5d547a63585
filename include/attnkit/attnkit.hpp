// attnkit: umbrella header (public headers only).
#pragma once

#include "core/check.hpp"
#include "core/config.hpp"
#include "core/mask.hpp"
#include "core/math.hpp"
#include "core/parallel.hpp"
#include "core/random.hpp"
#include "core/simd.hpp"
#include "core/softmax.hpp"
#include "core/tensor.hpp"
#include "favor/attention.hpp"
#include "favor/decoder.hpp"
#include "favor/features.hpp"
#include "favor/options.hpp"
#include "full/attention.hpp"
#include "full/reference.hpp"
