// attnkit: the named parameters of CoAtNet's blocks and network (timm names, PyTorch shapes),
// which the blocks read their weights from (docs/design.md §4.5).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "../core/check.hpp"
#include "../core/tensor.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace coatnet {

/// A named list of parameters (timm names, PyTorch shapes, row-major values), in module order.
template <class T>
class parameter_set {
 public:
  using list = std::vector<std::pair<std::string, std::vector<index_t>>>;

  /// Declares parameter `name` of `shape`.
  void add(const std::string& name, std::vector<index_t> shape) {
    order_.push_back(name);
    params_[name].shape = std::move(shape);
  }
  void add_batch_norm(const std::string& p, index_t c) {
    for (const char* s : {"weight", "bias", "running_mean", "running_var"}) add(p + "." + s, {c});
  }
  void add_conv(const std::string& p, index_t out, index_t in, index_t k, bool bias) {
    add(p + ".weight", {out, in, k, k});
    if (bias) add(p + ".bias", {out});
  }

  list parameters() const {
    list out;
    for (const std::string& n : order_) out.emplace_back(n, params_.at(n).shape);
    return out;
  }
  std::vector<std::string> missing() const {
    std::vector<std::string> out;
    for (const std::string& n : order_)
      if (!params_.at(n).loaded) out.push_back(n);
    return out;
  }
  const std::vector<index_t>* shape(const std::string& name) const {
    const auto it = params_.find(name);
    return it == params_.end() ? nullptr : &it->second.shape;
  }
  bool has(const std::string& name) const { return params_.count(name) != 0; }

  /// Sets `name` from count values; throws invalid_argument (changing nothing) for an unknown name
  /// or a wrong count.
  void set(const std::string& name, const T* data, index_t count, const char* where) {
    const auto it = params_.find(name);
    detail::require(it != params_.end(), where, [&] { return "no parameter named \"" + name + "\""; });
    entry& p = it->second;
    detail::require(count == p.numel(), where, [&] {
      return "parameter \"" + name + "\" has shape " + text(p.shape) + " (" + std::to_string(p.numel()) +
             " values), got " + std::to_string(count) + " values";
    });
    detail::require(data != nullptr || count == 0, where, "data is null");
    p.data.assign(data, data + count);
    if (!p.loaded) ++loaded_;
    p.loaded = true;
  }

  /// True when every parameter is set.
  bool complete() const { return loaded_ == order_.size(); }

  /// Throws invalid_argument unless every parameter is set.
  void require_loaded(const char* where) const {
    detail::require(complete(), where, [&] {
      const std::vector<std::string> m = missing();
      return std::to_string(m.size()) + " parameters are not loaded, e.g. \"" + m.front() + "\"";
    });
  }

  const std::vector<T>& data(const std::string& name) const { return params_.at(name).data; }
  template <std::size_t N>
  tensor_view<const T, N> view(const std::string& name) const {
    const entry& p = params_.at(name);
    std::array<index_t, N> e{};
    for (std::size_t i = 0; i < N; ++i) e[i] = p.shape[i];
    return tensor_view<const T, N>::contiguous(p.data.data(), e);
  }
  /// The view of `name`, or an empty view when there is no such parameter (an absent bias).
  tensor_view<const T, 1> optional(const std::string& name) const {
    return has(name) ? view<1>(name) : tensor_view<const T, 1>{};
  }
  template <std::size_t N>
  tensor<T, N> copy(const std::string& name) const {
    tensor<T, N> t(view<N>(name).extents());
    std::copy(data(name).begin(), data(name).end(), t.data());
    return t;
  }

  static std::string text(const std::vector<index_t>& s) {
    std::string t = "[";
    for (std::size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
    return t + "]";
  }

 private:
  struct entry {
    std::vector<index_t> shape;
    std::vector<T> data;
    bool loaded = false;
    index_t numel() const {
      index_t n = 1;
      for (index_t e : shape) n *= e;
      return n;
    }
  };
  std::vector<std::string> order_;
  std::map<std::string, entry> params_;
  std::size_t loaded_ = 0;  ///< entries with loaded set
};

}  // namespace coatnet
ATTNKIT_END_NAMESPACE
