// attnkit: a small seeded random generator with a fixed, documented stream (xoshiro256** seeded
// by splitmix64; Gaussians by the Box-Muller transform in double). Unlike <random>'s
// distributions, whose algorithms the standard leaves to each library, the numbers it produces
// are the same with every standard library and every compiler option that keeps IEEE arithmetic.
#pragma once

#include <cmath>
#include <cstdint>

#include "config.hpp"

ATTNKIT_BEGIN_NAMESPACE

/// xoshiro256** (Blackman and Vigna), seeded through splitmix64 so that any 64-bit seed (0 too)
/// gives a well-mixed state.
class random_generator {
 public:
  explicit random_generator(std::uint64_t seed) {
    for (auto& s : s_) {
      seed += 0x9E3779B97F4A7C15ull;
      std::uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      s = z ^ (z >> 31);
    }
  }

  /// The next 64 random bits.
  std::uint64_t next() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  /// Uniform in the open interval (0, 1): 53 random bits, offset by half a step.
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53; }

  /// Uniform integer in [0, n) (n >= 1), by rejection so that every value is equally likely.
  std::uint64_t below(std::uint64_t n) {
    const std::uint64_t limit = ~std::uint64_t(0) - (~std::uint64_t(0) % n);
    std::uint64_t x = next();
    while (x >= limit) x = next();
    return x % n;
  }

  /// Standard normal N(0, 1) (Box-Muller; the second value of each pair is kept for the next call).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double r = std::sqrt(-2.0 * std::log(uniform()));
    const double a = 6.283185307179586476925 * uniform();
    spare_ = r * std::sin(a);
    has_spare_ = true;
    return r * std::cos(a);
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t s_[4]{};
  double spare_ = 0.0;
  bool has_spare_ = false;
};

ATTNKIT_END_NAMESPACE
