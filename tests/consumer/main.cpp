// attnkit_consumer: calls full_attention as a user would and checks it against the reference.
// Exits 0 when the largest absolute difference is at most 1e-4, 1 otherwise.
#include <attnkit/attnkit.hpp>
#include <cmath>
#include <cstdio>
#include <random>

int main() {
  const attnkit::index_t B = 2, H = 4, Hkv = 2, Lq = 33, Lk = 47, dk = 24, dv = 16;
  attnkit::tensor<float, 4> q({B, H, Lq, dk}), k({B, Hkv, Lk, dk}), v({B, Hkv, Lk, dv});
  attnkit::tensor<float, 4> out({B, H, Lq, dv}), ref({B, H, Lq, dv});
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (auto* t : {&q, &k, &v})
    for (attnkit::index_t i = 0; i < t->size(); ++i) t->data()[i] = normal(rng);

  attnkit::attention_options options;
  options.mask.causal = attnkit::causal_mode::bottom_right;
  attnkit::full_attention(q.cview(), k.cview(), v.cview(), out.view(), options);
  attnkit::reference::attention(q.cview(), k.cview(), v.cview(), ref.view(), options);

  double worst = 0.0;
  for (attnkit::index_t i = 0; i < out.size(); ++i) {
    const double d = std::abs(double(out.data()[i]) - double(ref.data()[i]));
    if (!(d <= worst)) worst = d;  // also catches NaN
  }
  const char* isa = ATTNKIT_HAS_AVX512 ? "avx512" : (ATTNKIT_HAS_AVX2 ? "avx2" : "scalar");
  std::printf("attnkit %d.%d.%d consumer: isa=%s openmp=%d max |full - reference| = %.3g\n",
              ATTNKIT_VERSION_MAJOR, ATTNKIT_VERSION_MINOR, ATTNKIT_VERSION_PATCH, isa, ATTNKIT_HAS_OPENMP,
              worst);
  if (!(worst <= 1e-4)) {
    std::printf("FAILED: difference above 1e-4\n");
    return 1;
  }
  return 0;
}
