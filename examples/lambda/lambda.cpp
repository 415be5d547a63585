// attnkit lambda layer example: LambdaNetworks (Bello 2021) on a feature map.
//
// Builds lambda layers for a batch of 14 x 14 x 64 feature maps, one per position term: content
// only, local (a lambda convolution of scope 7 x 7), relative embeddings over the whole map, and
// global embeddings. Loads the parameters through the layer's views (from a seed here, from a
// checkpoint in practice), sets the inference batch norm from running statistics and folds it
// into the weights, runs forward on [B, H, W, d] buffers, and prints the output shape, the time
// and the distance to the same layer recomputed in double. A sequence layer with a separate
// context and a rejected call close the tour.
#include <attnkit/attnkit.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

using attnkit::index_t;
using attnkit::lambda_position_kind;

/// ||a - b|| / ||b|| over two equally long arrays.
double relative_error(const std::vector<float>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

/// Copies one parameter of a float layer into the same parameter of a double layer.
template <std::size_t R>
void copy_param(attnkit::tensor_view<const float, R> from, attnkit::tensor_view<double, R> to) {
  for (index_t i = 0; i < from.size(); ++i) to.data()[i] = from.data()[i];  // both row-major, same shape
}

/// The best of a few runs of f, in milliseconds.
template <class F>
double time_ms(F&& f) {
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  return best;
}

int main() {
  const index_t B = 8, H = 14, W = 14, d = 64;
  std::vector<float> x(B * H * W * d);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& e : x) e = normal(rng);
  const auto xv = attnkit::tensor_view<const float, 4>::contiguous(x.data(), {B, H, W, d});
  const std::vector<double> xd(x.begin(), x.end());
  const auto xdv = attnkit::tensor_view<const double, 4>::contiguous(xd.data(), {B, H, W, d});

  struct term {
    const char* name;
    lambda_position_kind kind;
  };
  for (const term t :
       {term{"content only", lambda_position_kind::none}, term{"local 7 x 7", lambda_position_kind::local},
        term{"relative 27 x 27", lambda_position_kind::relative},
        term{"global [196, 196]", lambda_position_kind::global}}) {
    // The paper's ResNet setting: h = 4 heads of k = 16 queries, intra-depth u = 1, v = d / h.
    attnkit::lambda_layer_config c;
    c.d = d;
    c.heads = 4;
    c.k = 16;
    c.u = 1;  // v = 0: d_out / heads = 16, so out has h * v = 64 channels
    c.position = t.kind;
    c.grid = {H, W};  // relative and global: the positions of the map
    c.scope = 7;      // local: 7 x 7 on feature maps
    c.spatial = true;
    attnkit::lambda_layer<float> layer(c);

    // Parameters: W_q [d, h k], W_k [d, k u], W_v [d, v u], the position table, batch norms.
    // Write them through the views (query_weights() ...); here they come from a seed.
    layer.init(/*seed=*/7);
    std::vector<float> stats(4 * 64);  // gamma, beta, running mean, running var of 64 channels
    std::uniform_real_distribution<float> uni(0.5f, 1.5f);
    for (float& e : stats) e = uni(rng);
    auto stat = [&](int i, index_t ch) {
      return attnkit::tensor_view<const float, 1>::contiguous(&stats[i * 64], {ch});
    };
    const index_t hk = c.heads * c.k, vu = layer.config().v * c.u;
    layer.set_query_batch_norm(stat(0, hk), stat(1, hk), stat(2, hk), stat(3, hk), /*eps=*/1e-3);
    layer.set_value_batch_norm(stat(0, vu), stat(1, vu), stat(2, vu), stat(3, vu), 1e-3);
    const index_t C = layer.out_channels();
    std::vector<float> out(B * H * W * C), folded(out.size());
    const auto ov = attnkit::tensor_view<float, 4>::contiguous(out.data(), {B, H, W, C});
    layer.forward(xv, ov);
    // Folding the batch norms into W_q, W_v and their biases changes nothing (forward folds them
    // into its packed weights anyway); do it before exporting the weights to another runtime.
    layer.fold_batch_norm();
    layer.forward(xv, attnkit::tensor_view<float, 4>::contiguous(folded.data(), {B, H, W, C}));
    double fold_diff = 0;
    for (std::size_t i = 0; i < out.size(); ++i)
      fold_diff = std::max(fold_diff, double(std::fabs(out[i] - folded[i])));

    const double ms = time_ms([&] { layer.forward(xv, ov); });

    // The same layer in double: the distance is the float rounding of the whole layer.
    attnkit::lambda_layer<double> ref(c);
    const auto& lf = layer;  // const: read-only views
    copy_param(lf.query_weights(), ref.query_weights());
    copy_param(lf.key_weights(), ref.key_weights());
    copy_param(lf.value_weights(), ref.value_weights());
    copy_param(lf.query_bias(), ref.query_bias());
    copy_param(lf.value_bias(), ref.value_bias());
    copy_param(lf.query_scale(), ref.query_scale());  // identity after fold_batch_norm()
    copy_param(lf.query_shift(), ref.query_shift());
    copy_param(lf.value_scale(), ref.value_scale());
    copy_param(lf.value_shift(), ref.value_shift());
    copy_param(lf.position_table(), ref.position_table());
    std::vector<double> want(out.size());
    ref.forward(xdv, attnkit::tensor_view<double, 4>::contiguous(want.data(), {B, H, W, C}));

    const auto tab = lf.position_table().extents();
    std::printf(
        "%-18s x [%ld, %ld, %ld, %ld] -> out [%ld, %ld, %ld, %ld]  table [%ld, %ld, %ld, %ld]  %7.3f ms  "
        "vs double %.1e  folded BN max |diff| %.1e\n",
        t.name, long(B), long(H), long(W), long(d), long(B), long(H), long(W), long(C), long(tab[0]),
        long(tab[1]), long(tab[2]), long(tab[3]), ms, relative_error(out, want), fold_diff);
  }

  // Sequences with a context of their own: x [B, n, d] reads a context [B, m, d] (here with global
  // embeddings E [n, m, k, u] and intra-depth u = 4); key_lengths drop padded context positions.
  {
    const index_t n = 50, m = 120;
    attnkit::lambda_layer_config c;
    c.d = d;
    c.heads = 4;
    c.k = 16;
    c.u = 4;
    c.v = 16;
    c.position = lambda_position_kind::global;
    c.grid = {1, n};
    c.context = m;
    attnkit::lambda_layer<float> layer(c);
    layer.init(3);
    std::vector<float> q(B * n * d), ctx(B * m * d), out(B * n * layer.out_channels());
    for (auto* buf : {&q, &ctx})
      for (float& e : *buf) e = normal(rng);
    std::vector<std::int64_t> lengths(B, m);
    lengths[1] = 70;  // the context of example 1 ends early
    attnkit::lambda_options o;
    o.mask.key_lengths = attnkit::tensor_view<const std::int64_t, 1>::contiguous(lengths.data(), {B});
    layer.forward(attnkit::tensor_view<const float, 3>::contiguous(q.data(), {B, n, d}),
                  attnkit::tensor_view<const float, 3>::contiguous(ctx.data(), {B, m, d}),
                  attnkit::tensor_view<float, 3>::contiguous(out.data(), {B, n, layer.out_channels()}), o);
    std::printf(
        "sequence x [%ld, %ld, %ld], context [%ld, %ld, %ld] -> out [%ld, %ld, %ld]; scratch %zu bytes\n",
        long(B), long(n), long(d), long(B), long(m), long(d), long(B), long(n), long(layer.out_channels()),
        layer.scratch_bytes());

    // Every shape is checked before anything is written: a context of the wrong length is rejected.
    try {
      layer.forward(attnkit::tensor_view<const float, 3>::contiguous(q.data(), {B, n, d}),
                    attnkit::tensor_view<const float, 3>::contiguous(ctx.data(), {B, m - 1, d}),
                    attnkit::tensor_view<float, 3>::contiguous(out.data(), {B, n, layer.out_channels()}));
    } catch (const attnkit::invalid_argument& e) {
      std::printf("invalid_argument: %s\n", e.what());
    }
  }
  return 0;
}
