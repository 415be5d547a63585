// attnkit Combiner example: full attention at sparse cost (Ren et al. 2021).
//
// Every query attends directly to a few keys and to all the others through group summaries, so no
// key loses its probability mass. Shows each plan (fixed, logsparse, axial in its three orders,
// learnable with k-means centroids or with cluster ids of your own) bidirectional and causal on
// [batch, seq, heads, dim] buffers through strided views, the distance to exact attention, the
// explicit distribution the kernel implies (combiner_probabilities), and a rejected plan.
#include <attnkit/attnkit.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

using attnkit::index_t;
namespace cb = attnkit::combiner;

/// Views [B, S, H, D] row-major memory as [B, H, S, D]: extents and strides of axes 1 and 2 swap.
template <class T>
attnkit::tensor_view<T, 4> bshd_as_bhsd(T* data, index_t B, index_t S, index_t H, index_t D) {
  return attnkit::tensor_view<T, 4>(data, {B, H, S, D}, {S * H * D, D, H * D, 1});
}

/// ||a - b|| / ||b|| over two equally long arrays.
double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * double(a[i] - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

int main() {
  const index_t B = 1, S = 1024, H = 4, D = 64;
  std::vector<float> q(B * S * H * D), k(q.size()), v(q.size()), out(q.size()), exact(q.size());
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto* buf : {&q, &k, &v})
    for (float& x : *buf) x = normal(rng);
  const auto qv = bshd_as_bhsd<const float>(q.data(), B, S, H, D);
  const auto kv = bshd_as_bhsd<const float>(k.data(), B, S, H, D);
  const auto vv = bshd_as_bhsd<const float>(v.data(), B, S, H, D);
  const auto ov = bshd_as_bhsd<float>(out.data(), B, S, H, D);
  const auto ev = bshd_as_bhsd<float>(exact.data(), B, S, H, D);

  // learnable: routing centroids [H, C, D] from the keys (spherical k-means, seeded), or clusters
  // of your own: ids [1 or B, 1 or H, S] in [0, S). assign_clusters gives the ids the centroids
  // route to, so both plans below compute the same bits.
  const index_t C = 32;
  const attnkit::tensor<float, 3> centroids = cb::kmeans(kv, C, /*iterations=*/5, /*seed=*/1);
  const attnkit::tensor<std::int32_t, 3> ids = cb::assign_clusters(kv, centroids.cview());
  cb::learnable by_centroids, by_ids;
  by_centroids.centroids = centroids.cview();
  by_ids.cluster_ids = ids.cview();

  // Combiner is its own distribution, not an estimate of softmax: a group's share is that of one
  // key, exp(scale q_i . k~) / Z_i, however many keys it holds. On unstructured random inputs like
  // these, where exact attention averages nearly every value, the outputs are far apart; a model
  // is trained with its plan. A fixed plan whose span covers the sequence is exact attention.
  for (bool causal : {false, true}) {
    attnkit::attention_options eo;
    if (causal) eo.mask.causal = attnkit::causal_mode::top_left;
    attnkit::full_attention(qv, kv, vv, ev, eo);

    attnkit::combiner_options co;
    co.causal = causal;  // query i sees keys j <= i; its output depends on nothing after i
    // co.pooling = attnkit::combiner_pooling::mean;  (summary queries and keys: max-pooled by default)
    auto run = [&](const char* name, const auto& plan) {
      attnkit::combiner_attention(qv, kv, vv, ov, plan, co);
      std::printf("%-13s %-34s relative distance to exact attention %.3g\n",
                  causal ? "causal" : "bidirectional", name, relative_error(out, exact));
    };
    run("fixed (span ceil(sqrt S) = 32)", cb::fixed{});                             // O(S sqrt(S) D)
    run("logsparse", cb::logsparse{});                                              // O(S log(S) D)
    run("axial 32 x 32 row_major", cb::axial{32, 32, cb::axial_order::row_major});  // S = rows * cols
    run("axial 32 x 32 col_major", cb::axial{32, 32, cb::axial_order::col_major});
    run("axial 32 x 32 mixture", cb::axial{32, 32, cb::axial_order::mixture});  // mean of the two
    run("learnable (k-means centroids)", by_centroids);
    const std::vector<float> routed = out;
    run("learnable (cluster ids)", by_ids);
    std::printf("%-13s %-34s same bits as with the centroids: %s\n", "", "", out == routed ? "yes" : "no");
    run("fixed (span S: one segment)", cb::fixed{S});  // every key direct: exact attention
  }

  // The distribution a plan implies, explicitly ([B, H, S, S], small S only): out = p v. Here on
  // the first 64 tokens (views of the same buffers: another extent, the same strides).
  const index_t s = 64;
  const auto q64 = bshd_as_bhsd<const float>(q.data(), B, s, H, D);
  const auto k64 = bshd_as_bhsd<const float>(k.data(), B, s, H, D);
  const auto v64 = bshd_as_bhsd<const float>(v.data(), B, s, H, D);
  std::vector<float> o(B * s * H * D);
  const auto o64 = bshd_as_bhsd<float>(o.data(), B, s, H, D);
  attnkit::combiner_options co;
  co.causal = true;
  const attnkit::tensor<float, 4> p = attnkit::combiner_probabilities(q64, k64, cb::logsparse{}, co);
  attnkit::combiner_attention(q64, k64, v64, o64, cb::logsparse{}, co);
  double worst = 0, row_sum = 0;
  for (index_t h = 0; h < H; ++h)
    for (index_t i = 0; i < s; ++i)
      for (index_t e = 0; e < D; ++e) {
        double pv = 0;
        for (index_t j = 0; j < s; ++j) pv += double(p(0, h, i, j)) * v64(0, h, j, e);
        worst = std::fmax(worst, std::fabs(pv - o64(0, h, i, e)));
      }
  for (index_t j = 0; j < s; ++j) row_sum += p(0, 0, 40, j);
  std::printf("causal logsparse, S = %ld: sum_j p(j | i = 40) = %.6f, max |p v - out| = %.1e\n",
              static_cast<long>(s), row_sum, worst);

  // A plan that does not fit the sequence is rejected, never adjusted.
  try {
    attnkit::combiner_attention(qv, kv, vv, ov, cb::axial{30, 32}, co);
  } catch (const attnkit::invalid_argument& e) {
    std::printf("invalid_argument: %s\n", e.what());
  }
  return 0;
}
