// attnkit benchmarks: the accuracy side of FAVOR+ — relative output error vs exact attention as a
// function of the number of random features m (the speed side is in bench_attention).
//
// q and k have i.i.d. N(0, sigma^2) entries (sigma = 1: unit variance), v ~ N(0, 1); d = 64,
// L = 1024, H = 8, fp32. For each m the error ||favor - exact||_F / ||exact||_F is averaged over
// 4 feature seeds (orthogonal features, chi norms), bidirectional and causal.
//
//   favor_error                 # sigma = 1 and 0.5, m in {16, 64, 256, 1024}
//   favor_error --L=4096 --seeds=8
#include <attnkit/attnkit.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

using attnkit::index_t;

int main(int argc, char** argv) {
  index_t L = 1024;
  int seeds = 4;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--L=", 4) == 0) L = std::atol(argv[i] + 4);
    if (std::strncmp(argv[i], "--seeds=", 8) == 0) seeds = std::atoi(argv[i] + 8);
  }
  const index_t B = 1, H = 8, d = 64;
  attnkit::tensor<float, 4> q({B, H, L, d}), k({B, H, L, d}), v({B, H, L, d}), out({B, H, L, d}),
      exact({B, H, L, d});
  std::printf("FAVOR+ relative error ||favor - exact|| / ||exact||, d=%ld L=%ld H=%ld, mean over %d seeds\n",
              static_cast<long>(d), static_cast<long>(L), static_cast<long>(H), seeds);
  std::printf("%-6s %-14s %10s %10s %10s %10s\n", "sigma", "mode", "m=16", "m=64", "m=256", "m=1024");
  for (double sigma : {1.0, 0.5}) {
    std::mt19937_64 gen(7);
    std::normal_distribution<float> nq(0.0f, static_cast<float>(sigma)), nv(0.0f, 1.0f);
    for (index_t i = 0; i < q.size(); ++i) {
      q.data()[i] = nq(gen);
      k.data()[i] = nq(gen);
      v.data()[i] = nv(gen);
    }
    for (bool causal : {false, true}) {
      attnkit::attention_options eo;
      if (causal) eo.mask.causal = attnkit::causal_mode::top_left;
      attnkit::full_attention(q.cview(), k.cview(), v.cview(), exact.view(), eo);
      double norm = 0;
      for (index_t i = 0; i < exact.size(); ++i) norm += double(exact.data()[i]) * exact.data()[i];
      std::printf("%-6.2f %-14s", sigma, causal ? "causal" : "bidirectional");
      for (index_t m : {16, 64, 256, 1024}) {
        double err = 0;
        for (int s = 0; s < seeds; ++s) {
          const auto rf =
              attnkit::random_features<float>::orthogonal(m, d, 100 + static_cast<std::uint64_t>(s));
          attnkit::favor_options fo;
          fo.causal = causal;
          attnkit::favor_attention(q.cview(), k.cview(), v.cview(), out.view(), rf, fo);
          double e2 = 0;
          for (index_t i = 0; i < out.size(); ++i) {
            const double dlt = double(out.data()[i]) - exact.data()[i];
            e2 += dlt * dlt;
          }
          err += std::sqrt(e2 / norm) / seeds;
        }
        std::printf(" %10.4f", err);
      }
      std::printf("\n");
    }
  }
  return 0;
}
