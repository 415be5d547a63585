// attnkit: cluster routing of the learnable Combiner plan, and a seeded k-means that produces
// routing centroids from keys for users without trained ones.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../core/attention_args.hpp"
#include "../core/gemm.hpp"
#include "../core/random.hpp"
#include "../core/simd.hpp"
#include "options.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// Checks centroids [1 or Hkv, C >= 1, dk] (finite, non-null).
inline void check_centroids(const tensor_view<const float, 3>& mu, index_t Hkv, index_t dk,
                            const char* where) {
  require_view(mu, where, "centroids");
  require(mu.data() != nullptr && (mu.extent(0) == 1 || mu.extent(0) == Hkv) && mu.extent(1) >= 1 &&
              mu.extent(2) == dk,
          where, [&] {
            return std::string("centroids have shape " + shape_string(mu.extents()) +
                               ", expected [1 or Hkv=" + std::to_string(Hkv) +
                               ", clusters >= 1, dk=" + std::to_string(dk) + "]");
          });
  for (index_t h = 0; h < mu.extent(0); ++h)
    for (index_t c = 0; c < mu.extent(1); ++c)
      for (index_t p = 0; p < dk; ++p)
        require(std::isfinite(mu(h, c, p)), where, [&] {
          return std::string("centroids[" + std::to_string(h) + ", " + std::to_string(c) + ", " +
                             std::to_string(p) + "] is not finite");
        });
}

/// id[j] = argmax_c k_j . mu_c (the first of equal scores) for the keys j < len of (b, hkv); -1
/// for j >= len. Scores come from the block product, whose per-element FMA chain over dk is the
/// same on every ISA: the clusters do not depend on the ISA or the thread count.
template <class Arch, class T>
void route_clusters(const tensor_view<const T, 4>& k, index_t b, index_t hkv, index_t len,
                    const tensor_view<const float, 3>& mu, std::vector<std::int32_t>& id) {
  using B = simd::batch<T, Arch>;
  constexpr int W = B::size, NV = gemm_tiling<T, Arch>::NV, MR = gemm_tiling<T, Arch>::MR;
  constexpr index_t Bn = NV * W;
  const index_t L = k.extent(2), dk = k.extent(3), C = mu.extent(1);
  const index_t hm = mu.extent(0) == 1 ? 0 : hkv;
  const index_t cpad = (C + Bn - 1) / Bn * Bn;
  std::vector<T> mt(static_cast<std::size_t>(dk * cpad), T(0));  // mu^T [dk, cpad]
  for (index_t c = 0; c < C; ++c)
    for (index_t p = 0; p < dk; ++p)
      mt[static_cast<std::size_t>(p * cpad + c)] = static_cast<T>(mu(hm, c, p));
  id.assign(static_cast<std::size_t>(L), -1);
  constexpr index_t R = 64;
  std::vector<T> sc(static_cast<std::size_t>(R * Bn));
  std::vector<T> best(static_cast<std::size_t>(R));
  for (index_t j0 = 0; j0 < len; j0 += R) {
    const index_t n = std::min(R, len - j0);
    for (index_t c0 = 0; c0 < cpad; c0 += Bn) {
      block_product<B, MR, NV, false, false, a_layout::unit_col>(n, dk, k.ptr(b, hkv, j0, 0), k.stride(2),
                                                                 k.stride(3), mt.data() + c0, cpad, sc.data(),
                                                                 Bn, tile_args<T>{});
      for (index_t r = 0; r < n; ++r)
        for (index_t c = c0; c < std::min(C, c0 + Bn); ++c) {
          const T x = sc[static_cast<std::size_t>(r * Bn + c - c0)];
          auto& cur = id[static_cast<std::size_t>(j0 + r)];
          if (cur < 0 || x > best[static_cast<std::size_t>(r)]) {
            cur = static_cast<std::int32_t>(c);
            best[static_cast<std::size_t>(r)] = x;
          }
        }
    }
  }
}

}  // namespace detail

namespace combiner {

/// The cluster of every key: ids[b, h, j] = argmax_c k[b, h, j] . centroids[h or 0, c] (ties: the
/// lowest c), -1 for padding keys (j >= mask.key_lengths[b]). k [B, Hkv, L, dk]; centroids
/// [1 or Hkv, C, dk]. The ids are the same on every ISA.
template <class Arch = simd::native, class T>
tensor<std::int32_t, 3> assign_clusters(tensor_view<const T, 4> k, tensor_view<const float, 3> centroids,
                                        const mask& m = {}) {
  constexpr const char* where = "attnkit::combiner::assign_clusters";
  detail::require_view(k, where, "k");
  detail::check_centroids(centroids, k.extent(1), k.extent(3), where);
  detail::check_mask(m, where, k.extent(0), k.extent(1), k.extent(2), k.extent(2), false);
  tensor<std::int32_t, 3> ids({k.extent(0), k.extent(1), k.extent(2)});
  std::vector<std::int32_t> id;
  for (index_t b = 0; b < k.extent(0); ++b)
    for (index_t h = 0; h < k.extent(1); ++h) {
      const index_t len = m.key_lengths ? static_cast<index_t>(m.key_lengths(b)) : k.extent(2);
      detail::route_clusters<Arch>(k, b, h, len, centroids, id);
      for (index_t j = 0; j < k.extent(2); ++j) ids(b, h, j) = id[static_cast<std::size_t>(j)];
    }
  return ids;
}

/// Routing centroids from keys: spherical k-means per kv head over the keys of every batch entry
/// (j < mask.key_lengths[b]). Starts from `clusters` keys drawn with the seed, then `iterations`
/// rounds of: route each key to argmax_c k . mu_c, set mu_c to the normalized mean of its keys (an
/// empty cluster takes a key drawn at random). Returns [Hkv, clusters, dk]; deterministic for a seed.
template <class Arch = simd::native, class T>
tensor<float, 3> kmeans(tensor_view<const T, 4> k, index_t clusters, int iterations = 10,
                        std::uint64_t seed = 0, const mask& m = {}) {
  constexpr const char* where = "attnkit::combiner::kmeans";
  detail::require_view(k, where, "k");
  detail::require(clusters >= 1 && iterations >= 0, where, [&] {
    return std::string("clusters = " + std::to_string(clusters) + ", iterations = " +
                       std::to_string(iterations) + " (need clusters >= 1, iterations >= 0)");
  });
  detail::check_mask(m, where, k.extent(0), k.extent(1), k.extent(2), k.extent(2), false);
  const index_t Bn = k.extent(0), H = k.extent(1), L = k.extent(2), dk = k.extent(3);
  std::vector<std::pair<index_t, index_t>> keys;  // (b, j) of every non-padding key
  for (index_t b = 0; b < Bn; ++b) {
    const index_t len = m.key_lengths ? static_cast<index_t>(m.key_lengths(b)) : L;
    for (index_t j = 0; j < len; ++j) keys.emplace_back(b, j);
  }
  detail::require(!keys.empty() && dk >= 1, where, "k holds no keys to cluster");
  tensor<float, 3> mu({H, clusters, dk});
  random_generator rng(seed);
  auto set_from_key = [&](index_t h, index_t c) {
    const auto& bj = keys[static_cast<std::size_t>(rng.below(keys.size()))];
    double nrm = 0;
    for (index_t p = 0; p < dk; ++p)
      nrm += double(k(bj.first, h, bj.second, p)) * double(k(bj.first, h, bj.second, p));
    const double inv = nrm > 0 ? 1 / std::sqrt(nrm) : 1;
    for (index_t p = 0; p < dk; ++p)
      mu(h, c, p) = static_cast<float>(double(k(bj.first, h, bj.second, p)) * inv);
  };
  std::vector<std::int32_t> id;
  std::vector<double> acc(static_cast<std::size_t>(clusters * dk));
  std::vector<index_t> cnt(static_cast<std::size_t>(clusters));
  for (index_t h = 0; h < H; ++h) {
    for (index_t c = 0; c < clusters; ++c) set_from_key(h, c);
    for (int it = 0; it < iterations; ++it) {
      std::fill(acc.begin(), acc.end(), 0.0);
      std::fill(cnt.begin(), cnt.end(), 0);
      const tensor_view<const float, 3> mh(mu.data() + h * clusters * dk, {1, clusters, dk}, {0, dk, 1});
      for (index_t b = 0; b < Bn; ++b) {
        const index_t len = m.key_lengths ? static_cast<index_t>(m.key_lengths(b)) : L;
        detail::route_clusters<Arch>(k, b, h, len, mh, id);
        for (index_t j = 0; j < len; ++j) {
          const auto c = static_cast<std::size_t>(id[static_cast<std::size_t>(j)]);
          ++cnt[c];
          for (index_t p = 0; p < dk; ++p)
            acc[c * static_cast<std::size_t>(dk) + static_cast<std::size_t>(p)] += k(b, h, j, p);
        }
      }
      for (index_t c = 0; c < clusters; ++c) {
        if (cnt[static_cast<std::size_t>(c)] == 0) {
          set_from_key(h, c);
          continue;
        }
        double nrm = 0;
        for (index_t p = 0; p < dk; ++p)
          nrm += acc[static_cast<std::size_t>(c * dk + p)] * acc[static_cast<std::size_t>(c * dk + p)];
        const double inv = nrm > 0 ? 1 / std::sqrt(nrm) : 0;
        for (index_t p = 0; p < dk; ++p)
          mu(h, c, p) = static_cast<float>(acc[static_cast<std::size_t>(c * dk + p)] * inv);
      }
    }
  }
  return mu;
}

}  // namespace combiner
ATTNKIT_END_NAMESPACE
