// attnkit FAVOR+ example: linear-time softmax attention with positive orthogonal random features.
//
// Shows the feature matrix (draw it once from a seed, save it, restore it), bidirectional and
// causal favor_attention on [batch, seq, heads, dim] buffers through strided views, the error
// against exact attention, and the streaming decoder (prefill a prompt, then one token at a time).
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
  const index_t B = 1, S = 1024, H = 4, D = 64, m = 256;
  std::vector<float> q(B * S * H * D), k(q.size()), v(q.size()), out(q.size()), exact(q.size());
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.5f);  // |q|, |k| ~ 4: the estimator's useful range
  for (auto* buf : {&q, &k, &v})
    for (float& x : *buf) x = normal(rng);
  const auto qv = bshd_as_bhsd<const float>(q.data(), B, S, H, D);
  const auto kv = bshd_as_bhsd<const float>(k.data(), B, S, H, D);
  const auto vv = bshd_as_bhsd<const float>(v.data(), B, S, H, D);
  const auto ov = bshd_as_bhsd<float>(out.data(), B, S, H, D);
  const auto ev = bshd_as_bhsd<float>(exact.data(), B, S, H, D);

  // m orthogonal random features of dimension D, drawn once from a seed (the same bits on every
  // machine and thread count). Keep the matrix with the model: matrix() to save, from_matrix() to restore.
  auto features = attnkit::random_features<float>::orthogonal(m, D, /*seed=*/42);
  const auto saved = features.matrix();
  const auto restored = attnkit::random_features<float>::from_matrix(saved);

  for (bool causal : {false, true}) {
    attnkit::favor_options fo;
    fo.causal = causal;  // causal: query i sees keys j <= i (computed chunk-wise, linear in S)
    attnkit::favor_attention(qv, kv, vv, ov, restored, fo);
    attnkit::attention_options eo;
    if (causal) eo.mask.causal = attnkit::causal_mode::top_left;
    attnkit::full_attention(qv, kv, vv, ev, eo);
    std::printf("%-13s m=%ld: relative error vs exact attention %.3f\n", causal ? "causal" : "bidirectional",
                static_cast<long>(m), relative_error(out, exact));
  }

  // Streaming: prefill the first P tokens, then decode the rest one token at a time. The state is
  // (dv + 1) * m floats per (batch, kv head), whatever the length.
  const index_t P = 1000;
  attnkit::favor_decoder<float> decoder(features, B, H, /*kv_heads=*/H, /*dv=*/D);
  auto rows = [&](auto* data, index_t i0, index_t n) { return bshd_as_bhsd(data + i0 * H * D, B, n, H, D); };
  std::vector<float> streamed(q.size());
  decoder.prefill(rows(q.data(), 0, P), rows(k.data(), 0, P), rows(v.data(), 0, P),
                  rows(streamed.data(), 0, P));
  for (index_t t = P; t < S; ++t)
    decoder.step(rows(q.data(), t, 1), rows(k.data(), t, 1), rows(v.data(), t, 1),
                 rows(streamed.data(), t, 1));
  attnkit::favor_options fo;
  fo.causal = true;
  attnkit::favor_attention(qv, kv, vv, ov, features, fo);
  std::printf("decoder (%ld prompt + %ld steps) vs causal favor_attention: relative difference %.1e\n",
              static_cast<long>(P), static_cast<long>(S - P), relative_error(streamed, out));

  // A bias cannot be honoured by a feature map: it is rejected, never ignored.
  try {
    std::vector<float> bias(S * S);
    attnkit::favor_options bad;
    bad.mask.bias = attnkit::tensor_view<const float, 4>(bias.data(), {1, 1, S, S}, {0, 0, S, 1});
    attnkit::favor_attention(qv, kv, vv, ov, features, bad);
  } catch (const attnkit::invalid_argument& e) {
    std::printf("invalid_argument: %s\n", e.what());
  }
  return 0;
}
