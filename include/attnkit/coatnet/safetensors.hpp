// attnkit: loads a CoAtNet's parameters from a .safetensors checkpoint under timm's names (e.g.
// timm's coatnet_0_rw_224.sw_in1k "model.safetensors"). Needs nlohmann_json (io/safetensors.hpp).
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "../io/safetensors.hpp"
#include "network.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace coatnet {

/// Sets every parameter of net from file. The file must hold exactly the network's parameters
/// with their PyTorch shapes (any float dtype: f32, f16, bf16, f64), plus optionally batch norms'
/// "num_batches_tracked" counters (ignored). Throws invalid_argument naming the missing, extra and
/// mis-shaped tensors (up to 8 of each, with counts) before changing anything in net; the file
/// reader throws std::runtime_error naming the path for unreadable or malformed files.
template <class T, class Arch>
void load_safetensors(network<T, Arch>& net, const io::safetensors_file& file) {
  const std::string where = "attnkit::coatnet::load_safetensors: " + file.path();
  std::vector<std::string> missing, extra, misshaped;
  auto text = [](const std::vector<index_t>& v) {
    std::string t = "[";
    for (std::size_t i = 0; i < v.size(); ++i) t += (i ? ", " : "") + std::to_string(v[i]);
    return t + "]";
  };
  for (const io::safetensors_entry& e : file.entries()) {
    const std::vector<index_t>* shape = net.parameter_shape(e.name);
    const std::string tail = "num_batches_tracked";
    const bool counter =
        e.name.size() >= tail.size() && e.name.compare(e.name.size() - tail.size(), tail.size(), tail) == 0;
    if (!shape) {
      if (!counter) extra.push_back(e.name);
      continue;
    }
    if (*shape != e.shape) {
      misshaped.push_back(e.name + " " + text(e.shape) + " (expected " + text(*shape) + ")");
    }
  }
  for (const auto& [name, shape] : net.parameters())
    if (!file.find(name)) missing.push_back(name);
  if (!missing.empty() || !extra.empty() || !misshaped.empty()) {
    auto list = [](const char* what, const std::vector<std::string>& v) {
      if (v.empty()) return std::string();
      std::string s = "; " + std::to_string(v.size()) + " " + what + ": ";
      for (std::size_t i = 0; i < v.size() && i < 8; ++i) s += (i ? ", " : "") + v[i];
      if (v.size() > 8) s += ", ...";
      return s;
    };
    throw invalid_argument(where + ": checkpoint does not match the network (" +
                           std::to_string(net.parameters().size()) + " parameters)" +
                           list("missing", missing) + list("unexpected", extra) +
                           list("mis-shaped", misshaped));
  }
  // read everything first: a read error leaves net unchanged
  const auto params = net.parameters();
  std::vector<std::vector<T>> values(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    const io::safetensors_entry* e = file.find(params[i].first);
    values[i].resize(static_cast<std::size_t>(e->numel()));
    file.read(params[i].first, values[i].data(), e->numel());
  }
  for (std::size_t i = 0; i < params.size(); ++i)
    net.set_parameter(params[i].first, values[i].data(), static_cast<index_t>(values[i].size()));
}

/// Opens path and loads it (see above); file errors throw runtime_error naming the path.
template <class T, class Arch>
void load_safetensors(network<T, Arch>& net, const std::string& path) {
  load_safetensors(net, io::safetensors_file(path));
}

}  // namespace coatnet
ATTNKIT_END_NAMESPACE
