// attnkit: tensor_view (non-owning, strided) and tensor (owning, 64-byte aligned).
#pragma once

#include <array>
#include <cassert>
#include <cstddef>
#include <cstdlib>
#include <limits>
#include <memory>
#include <new>
#include <type_traits>

#include "check.hpp"
#include "config.hpp"

ATTNKIT_BEGIN_NAMESPACE

/// A non-owning view: pointer + extents + strides, strides counted in elements (any value, 0 too).
template <class T, std::size_t Rank>
class tensor_view {
 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using extents_type = std::array<index_t, Rank>;
  static constexpr std::size_t rank = Rank;

  tensor_view() = default;
  tensor_view(T* data, extents_type extents, extents_type strides)
      : data_(data), extents_(extents), strides_(strides) {}

  /// Converts a view of T to a view of const T.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  tensor_view(const tensor_view<U, Rank>& other)  // NOLINT(google-explicit-constructor)
      : data_(other.data()), extents_(other.extents()), strides_(other.strides()) {}

  /// Returns a row-major (last index fastest) view of `extents` over `data`.
  static tensor_view contiguous(T* data, extents_type extents) {
    extents_type s{};
    index_t acc = 1;
    for (std::size_t i = Rank; i-- > 0;) {
      s[i] = acc;
      // A negative extent, or one whose product overflows, leaves acc as it is: no UB here, and
      // every operator rejects such a view (docs/design.md §5).
      index_t next = 0;
      if (extents[i] >= 0 && !__builtin_mul_overflow(acc, extents[i], &next)) acc = next;
    }
    return tensor_view(data, extents, s);
  }

  T* data() const { return data_; }
  const extents_type& extents() const { return extents_; }
  const extents_type& strides() const { return strides_; }
  index_t extent(std::size_t i) const { return extents_[i]; }
  index_t stride(std::size_t i) const { return strides_[i]; }
  /// Number of elements (the product of the extents; 0 when one is 0). Saturates at the largest
  /// index_t when the product does not fit, as for extents no operator accepts (require_view).
  index_t size() const {
    const index_t n = detail::checked_count(extents_);
    return n < 0 ? std::numeric_limits<index_t>::max() : n;
  }
  bool empty() const { return size() == 0; }
  /// True when the view points at memory; optional arguments (masks, bias) are absent otherwise.
  explicit operator bool() const { return data_ != nullptr; }

  template <class... I>
  T& operator()(I... idx) const {
    static_assert(sizeof...(I) == Rank, "tensor_view: wrong number of indices");
    const index_t ix[] = {static_cast<index_t>(idx)...};
    index_t off = 0;
    for (std::size_t d = 0; d < Rank; ++d) {
      assert(ix[d] >= 0 && ix[d] < extents_[d]);
      off += ix[d] * strides_[d];
    }
    return data_[off];
  }

  /// Returns the address of element idx... without bounds checks: for address arithmetic where an
  /// extent may be 0 (the pointer is then never dereferenced; null for a view without data).
  template <class... I>
  T* ptr(I... idx) const {
    static_assert(sizeof...(I) == Rank, "tensor_view: wrong number of indices");
    const index_t ix[] = {static_cast<index_t>(idx)...};
    index_t off = 0;
    for (std::size_t d = 0; d < Rank; ++d) off += ix[d] * strides_[d];
    return data_ ? data_ + off : data_;
  }

  /// Fixes the first index: returns the rank-(Rank-1) view at `i`.
  tensor_view<T, Rank - 1> operator[](index_t i) const {
    static_assert(Rank > 1, "tensor_view: operator[] needs rank >= 2");
    assert(i >= 0 && i < extents_[0]);
    std::array<index_t, Rank - 1> e{}, s{};
    for (std::size_t d = 1; d < Rank; ++d) {
      e[d - 1] = extents_[d];
      s[d - 1] = strides_[d];
    }
    return tensor_view<T, Rank - 1>(data_ ? data_ + i * strides_[0] : data_, e, s);
  }

 private:
  T* data_ = nullptr;
  extents_type extents_{};
  extents_type strides_{};
};

namespace detail {
struct aligned_free {
  void operator()(void* p) const noexcept { ::operator delete[](p, std::align_val_t(64)); }
};
}  // namespace detail

/// An owning, zero-initialized, row-major tensor whose storage is 64-byte aligned.
template <class T, std::size_t Rank>
class tensor {
  static_assert(std::is_trivially_destructible_v<T>, "tensor: element type must be trivial");

 public:
  using extents_type = std::array<index_t, Rank>;

  tensor() = default;
  explicit tensor(extents_type extents) : extents_(extents) {
    for (auto e : extents)
      detail::require(e >= 0, "attnkit::tensor",
                      [&] { return std::string("negative extent in " + detail::shape_string(extents)); });
    const index_t n = detail::checked_count(extents);
    detail::require(
        n >= 0 && static_cast<std::size_t>(n) <= std::numeric_limits<std::size_t>::max() / sizeof(T),
        "attnkit::tensor",
        [&] { return std::string("the size of " + detail::shape_string(extents) + " overflows"); });
    size_ = n;
    if (n > 0) {
      void* p = ::operator new[](static_cast<std::size_t>(n) * sizeof(T), std::align_val_t(64));
      data_.reset(static_cast<T*>(p));
      for (index_t i = 0; i < n; ++i) new (data_.get() + i) T();
    }
  }
  tensor(const tensor& o) : tensor(o.extents_) {
    for (index_t i = 0; i < size_; ++i) data_.get()[i] = o.data_.get()[i];
  }
  tensor& operator=(const tensor& o) {
    if (this != &o) *this = tensor(o);
    return *this;
  }
  tensor(tensor&&) noexcept = default;
  tensor& operator=(tensor&&) noexcept = default;

  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  const extents_type& extents() const { return extents_; }
  index_t extent(std::size_t i) const { return extents_[i]; }
  index_t size() const { return size_; }

  tensor_view<T, Rank> view() { return tensor_view<T, Rank>::contiguous(data(), extents_); }
  tensor_view<const T, Rank> view() const { return tensor_view<const T, Rank>::contiguous(data(), extents_); }
  tensor_view<const T, Rank> cview() const { return view(); }

  template <class... I>
  T& operator()(I... idx) {
    return view()(idx...);
  }
  template <class... I>
  const T& operator()(I... idx) const {
    return view()(idx...);
  }

 private:
  std::unique_ptr<T[], detail::aligned_free> data_;
  extents_type extents_{};
  index_t size_ = 0;
};

ATTNKIT_END_NAMESPACE
