// attnkit basic example: exact attention on your own memory, without copies.
//
// The projections of a transformer usually leave Q, K and V as [batch, seq, heads, dim] arrays.
// attnkit's operators take [batch, heads, seq, dim] views; a view is a pointer + extents +
// strides (in elements), so the other layout is just other strides. This example also shows
// grouped-query attention (8 query heads share 2 key/value heads), a causal mask, per-sequence
// key lengths (padding) and the error attnkit throws on inconsistent shapes.
#include <attnkit/attnkit.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

using attnkit::index_t;

/// Views [B, S, H, D] row-major memory as [B, H, S, D]: extents and strides of axes 1 and 2 swap.
template <class T>
attnkit::tensor_view<T, 4> bshd_as_bhsd(T* data, index_t B, index_t S, index_t H, index_t D) {
  return attnkit::tensor_view<T, 4>(data, {B, H, S, D}, {S * H * D, D, H * D, 1});
}

int main() {
  const index_t B = 2, S = 100, H = 8, Hkv = 2, D = 64;  // 4 query heads per key/value head

  // Your buffers, [batch, seq, heads, dim] row-major (any allocator; no alignment required).
  std::vector<float> q(B * S * H * D), k(B * S * Hkv * D), v(B * S * Hkv * D), out(B * S * H * D);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto* buf : {&q, &k, &v})
    for (float& x : *buf) x = normal(rng);

  // [B, H, S, D] views of them; inputs are views of const float.
  const auto qv = bshd_as_bhsd<const float>(q.data(), B, S, H, D);
  const auto kv = bshd_as_bhsd<const float>(k.data(), B, S, Hkv, D);
  const auto vv = bshd_as_bhsd<const float>(v.data(), B, S, Hkv, D);
  const auto ov = bshd_as_bhsd<float>(out.data(), B, S, H, D);

  // Batch entry 0 is 100 tokens long, entry 1 only 73: its keys 73..99 are padding, never read.
  std::vector<std::int64_t> lengths{100, 73};

  attnkit::attention_options opt;
  opt.mask.causal = attnkit::causal_mode::top_left;  // query i sees keys j <= i
  opt.mask.key_lengths = attnkit::tensor_view<const std::int64_t, 1>(lengths.data(), {B}, {1});
  opt.threads = 0;  // 0: all OpenMP threads; results are the same bits for any count
  // opt.scale = 0 (default) means 1/sqrt(D).

  attnkit::full_attention(qv, kv, vv, ov, opt);

  // out[b=1][s=80][h=5][0..3]: the query at position 80 of entry 1 sees keys 0..72 only.
  std::printf("out[1, s=80, h=5, :4] =");
  for (index_t e = 0; e < 4; ++e) std::printf(" %+.5f", static_cast<double>(ov(1, 5, 80, e)));
  std::printf("\n");

  // The same through the naive reference (materializes S x S scores per head): a sanity check.
  std::vector<float> ref(out.size());
  attnkit::reference::attention(qv, kv, vv, bshd_as_bhsd<float>(ref.data(), B, S, H, D), opt);
  double max_diff = 0.0;
  for (std::size_t i = 0; i < out.size(); ++i) max_diff = std::fmax(max_diff, std::fabs(out[i] - ref[i]));
  std::printf("max |full_attention - reference| = %.2e\n", max_diff);

  // Inconsistent shapes throw attnkit::invalid_argument naming the argument, and write nothing.
  try {
    const auto bad_v = bshd_as_bhsd<const float>(v.data(), B, S - 1, Hkv, D);  // one key short
    attnkit::full_attention(qv, kv, bad_v, ov, opt);
  } catch (const attnkit::invalid_argument& e) {
    std::printf("invalid_argument: %s\n", e.what());
  }
  return 0;
}
