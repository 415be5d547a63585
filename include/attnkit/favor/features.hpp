// attnkit: the random feature matrices of FAVOR+ (docs/design.md §4.2).
//
// W in R^{m x d}. orthogonal(): rows from blocks of d orthonormal rows (Gram-Schmidt, i.e. the Q
// factor with positive diagonal R of the QR of an N(0,1)^{d x d} block; the last block keeps only
// the rows it needs), each row then scaled to a chi-distributed norm (the norm of a fresh N(0, I_d)
// vector, the default) or to sqrt(d). gaussian(): i.i.d. N(0,1) entries. from_matrix(): a caller's
// matrix, e.g. one saved with matrix() or drawn by another implementation.
//
// Everything is drawn and orthogonalized once, in double, from attnkit::random_generator: the same
// seed gives the same matrix whatever the ISA of the kernels, the thread count or the standard
// library. Nothing is redrawn per call; redraw(seed) does it on request.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../core/check.hpp"
#include "../core/random.hpp"
#include "../core/tensor.hpp"

ATTNKIT_BEGIN_NAMESPACE

/// How a random_features matrix was made.
enum class feature_draw { orthogonal, gaussian, from_matrix };
/// Row norms of orthogonal features: chi (norm of a fresh Gaussian vector, as i.i.d. rows have) or sqrt(d).
enum class feature_norms { chi, sqrt_d };

/// A FAVOR+ random feature matrix W [m, d] (m features of d-dimensional queries and keys).
template <class T>
class random_features {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "random_features: float or double");

 public:
  /// m orthogonal random features of dimension d (blocks of d orthonormal rows, the last block
  /// truncated), rows scaled by `norms`. Throws invalid_argument unless m >= 1 and d >= 1.
  static random_features orthogonal(index_t m, index_t d, std::uint64_t seed,
                                    feature_norms norms = feature_norms::chi) {
    random_features f(feature_draw::orthogonal, norms, m, d, seed, "attnkit::random_features::orthogonal");
    f.draw();
    return f;
  }

  /// m i.i.d. Gaussian features N(0, I_d). Throws invalid_argument unless m >= 1 and d >= 1.
  static random_features gaussian(index_t m, index_t d, std::uint64_t seed) {
    random_features f(feature_draw::gaussian, feature_norms::chi, m, d, seed,
                      "attnkit::random_features::gaussian");
    f.draw();
    return f;
  }

  /// A copy of the caller's [m, d] matrix (any strides). Throws invalid_argument on an empty or
  /// null matrix or a non-finite entry.
  template <class U>
  static random_features from_matrix(const tensor_view<U, 2>& w) {
    static_assert(std::is_same_v<std::remove_const_t<U>, T>, "random_features::from_matrix: a view of T");
    constexpr const char* where = "attnkit::random_features::from_matrix";
    detail::require(w.data() != nullptr && w.extent(0) >= 1 && w.extent(1) >= 1, where, [&] {
      return std::string("w has shape " + detail::shape_string(w.extents()) +
                         ", expected [m >= 1, d >= 1] with data");
    });
    random_features f(feature_draw::from_matrix, feature_norms::chi, w.extent(0), w.extent(1), 0, where);
    for (index_t i = 0; i < w.extent(0); ++i)
      for (index_t j = 0; j < w.extent(1); ++j) {
        const T x = w(i, j);
        detail::require(std::isfinite(x), where, [&] {
          return std::string("w(" + std::to_string(i) + ", " + std::to_string(j) + ") is not finite");
        });
        f.w_(i, j) = x;
      }
    return f;
  }

  /// Draws a new matrix of the same kind, size and norms from `seed`. Throws invalid_argument for
  /// a matrix made by from_matrix (there is nothing to draw it from).
  void redraw(std::uint64_t seed) {
    detail::require(draw_ != feature_draw::from_matrix, "attnkit::random_features::redraw",
                    "features built from a caller's matrix cannot be redrawn; build new ones instead");
    seed_ = seed;
    draw();
  }

  index_t features() const { return w_.extent(0); }  ///< m
  index_t dim() const { return w_.extent(1); }       ///< d
  feature_draw draw_kind() const { return draw_; }
  feature_norms norms() const { return norms_; }
  std::uint64_t seed() const { return seed_; }
  /// The matrix W [m, d], row-major; save it and restore with from_matrix.
  tensor_view<const T, 2> matrix() const { return w_.view(); }

 private:
  random_features(feature_draw draw, feature_norms norms, index_t m, index_t d, std::uint64_t seed,
                  const char* where)
      : draw_(draw), norms_(norms), seed_(seed), w_(checked_extents(m, d, where)) {}

  static std::array<index_t, 2> checked_extents(index_t m, index_t d, const char* where) {
    detail::require(m >= 1 && d >= 1, where, [&] {
      return std::string("m = " + std::to_string(m) + ", d = " + std::to_string(d) + ": both must be >= 1");
    });
    return {m, d};
  }

  void draw() {
    const index_t m = features(), d = dim();
    random_generator rng(seed_);
    std::vector<double> w(static_cast<std::size_t>(m * d));
    for (auto& x : w) x = rng.normal();
    if (draw_ == feature_draw::orthogonal) {
      for (index_t r0 = 0; r0 < m; r0 += d) orthonormalize(w.data() + r0 * d, std::min(d, m - r0), d);
      for (index_t i = 0; i < m; ++i) {
        double norm = std::sqrt(static_cast<double>(d));
        if (norms_ == feature_norms::chi) {
          double s = 0;
          for (index_t j = 0; j < d; ++j) {
            const double g = rng.normal();
            s += g * g;
          }
          norm = std::sqrt(s);
        }
        for (index_t j = 0; j < d; ++j) w[static_cast<std::size_t>(i * d + j)] *= norm;
      }
    }
    for (index_t i = 0; i < m; ++i)
      for (index_t j = 0; j < d; ++j) w_(i, j) = static_cast<T>(w[static_cast<std::size_t>(i * d + j)]);
  }

  /// Gram-Schmidt on `rows` (<= d) rows of length d, twice per row (full double precision); the
  /// rows of a Gaussian block are independent with probability 1.
  static void orthonormalize(double* a, index_t rows, index_t d) {
    for (index_t i = 0; i < rows; ++i) {
      double* ai = a + i * d;
      for (int pass = 0; pass < 2; ++pass)
        for (index_t j = 0; j < i; ++j) {
          const double* aj = a + j * d;
          double p = 0;
          for (index_t t = 0; t < d; ++t) p += ai[t] * aj[t];
          for (index_t t = 0; t < d; ++t) ai[t] -= p * aj[t];
        }
      double n = 0;
      for (index_t t = 0; t < d; ++t) n += ai[t] * ai[t];
      n = std::sqrt(n);
      for (index_t t = 0; t < d; ++t) ai[t] /= n;
    }
  }

  feature_draw draw_;
  feature_norms norms_;
  std::uint64_t seed_;
  tensor<T, 2> w_;
};

ATTNKIT_END_NAMESPACE
