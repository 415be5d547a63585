// attnkit fingerprint: one 64-bit hash of the output bits of every operator on fixed inputs, per
// ISA the build has (scalar, avx2, avx512) and element type, one line each. A change that must not
// alter results (a refactor) prints the same lines before and after it:
//
//   cmake --build build --target attnkit_fingerprint
//   build/tests/attnkit_fingerprint > before.txt   # ... change ...
//   build/tests/attnkit_fingerprint | diff before.txt -
//
// The lines depend on the compiler and its flags (scalar code may be contracted to FMA), so compare
// two runs of one build configuration only. Inputs come from a fixed-seed generator; shapes are
// awkward on purpose (odd lengths, grouped heads, partial SIMD registers), and each operator runs
// with its masks and variants. Not a test: it asserts nothing (the tests compare with references).
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <attnkit/attnkit.hpp>

#include "reference/coatnet_ref.hpp"
#include "reference/common.hpp"
#include "reference/kernel_instances.hpp"

namespace {

using namespace attnkit_test;
template <class T, std::size_t R>
using tensor = attnkit::tensor<T, R>;

/// FNV-1a over the bytes of x's elements (row-major order of its extents).
template <class T, std::size_t R>
std::uint64_t hash_of(const attnkit::tensor_view<T, R>& x, std::uint64_t h = 1469598103934665603ull) {
  for_each_index(x.extents(), [&](const auto& ix) {
    unsigned char b[sizeof(T)];
    const auto e = std::apply([&](auto... i) { return x(i...); }, ix);
    std::memcpy(b, &e, sizeof(T));
    for (unsigned char c : b) h = (h ^ c) * 1099511628211ull;
  });
  return h;
}

/// The tests' generator with a fixed seed (seeded_rng reads Catch's --rng-seed; no Catch here).
test_rng fixed_rng(std::uint64_t salt) { return test_rng{salt * 0x9E3779B97F4A7C15ull + 1}; }

template <class T, std::size_t R>
tensor<T, R> random_tensor(const std::array<index_t, R>& e, std::uint64_t salt, double lo = -1,
                           double hi = 1) {
  tensor<T, R> t(e);
  test_rng g = fixed_rng(salt);
  fill_uniform(t.view(), g, lo, hi);
  return t;
}

void emit(const std::string& name, const char* arch, const char* type, std::uint64_t h) {
  std::printf("%-44s %-7s %-6s %016" PRIx64 "\n", name.c_str(), arch, type, h);
}

/// The attention-shaped operators of one (Arch, T).
template <class Arch, class T>
void attention_ops(const char* arch, const char* type) {
  const index_t B = 2, H = 4, Hkv = 2, L = 45, Lk = 61, dk = 19, dv = 13;
  const auto q = random_tensor<T, 4>({B, H, L, dk}, 1), k = random_tensor<T, 4>({B, Hkv, Lk, dk}, 2),
             v = random_tensor<T, 4>({B, Hkv, Lk, dv}, 3);
  const auto ks = random_tensor<T, 4>({B, Hkv, L, dk}, 4), vs = random_tensor<T, 4>({B, Hkv, L, dv}, 5);
  const auto bias = random_tensor<float, 4>({1, H, L, Lk}, 6);  // masks hold float
  const std::vector<std::int64_t> lens{Lk, 17};
  const auto lens_view = attnkit::tensor_view<const std::int64_t, 1>(lens.data(), {B}, {1});
  const std::vector<std::int64_t> self_lens{L, 29};
  const auto self_lens_view = attnkit::tensor_view<const std::int64_t, 1>(self_lens.data(), {B}, {1});
  auto out_of = [&](index_t Lq) { return tensor<T, 4>({B, H, Lq, dv}); };

  // exact attention: masks, decode (Lq = 1), threads
  struct full_case {
    const char* name;
    attnkit::causal_mode causal;
    bool lengths, with_bias;
    index_t Lq;
    int threads;
  };
  for (const full_case& c :
       {full_case{"full", attnkit::causal_mode::none, false, false, L, 0},
        full_case{"full top_left", attnkit::causal_mode::top_left, false, false, L, 0},
        full_case{"full bottom_right", attnkit::causal_mode::bottom_right, false, false, L, 0},
        full_case{"full key_lengths bias", attnkit::causal_mode::none, true, true, L, 0},
        full_case{"full threads=1", attnkit::causal_mode::none, false, false, L, 1},
        full_case{"full decode", attnkit::causal_mode::none, false, false, 1, 0},
        full_case{"full decode key_lengths", attnkit::causal_mode::none, true, false, 1, 0}}) {
    attnkit::attention_options o;
    o.mask.causal = c.causal;
    if (c.lengths) o.mask.key_lengths = lens_view;
    if (c.with_bias) o.mask.bias = bias.cview();
    o.threads = c.threads;
    auto out = out_of(c.Lq);
    const attnkit::tensor_view<const T, 4> qv(q.data(), {B, H, c.Lq, dk}, q.cview().strides());
    attnkit::full_attention<Arch, T>(qv, k.cview(), v.cview(), out.view(), o);
    emit(c.name, arch, type, hash_of(out.cview()));
  }

  // FAVOR+: kernels, causal, and the streaming decoder (prefill then steps)
  const auto feats = attnkit::random_features<T>::orthogonal(37, dk, 7);
  for (auto kernel : {attnkit::favor_kernel::softmax_positive, attnkit::favor_kernel::softmax_hyperbolic,
                      attnkit::favor_kernel::relu})
    for (bool causal : {false, true}) {
      attnkit::favor_options o;
      o.kernel = kernel;
      o.causal = causal;
      if (!causal) o.mask.key_lengths = lens_view;
      auto out = out_of(L);
      attnkit::favor_attention<Arch, T>(q.cview(), causal ? ks.cview() : k.cview(),
                                        causal ? vs.cview() : v.cview(), out.view(), feats, o);
      emit("favor kernel=" + std::to_string(static_cast<int>(kernel)) + (causal ? " causal" : " key_lengths"),
           arch, type, hash_of(out.cview()));
    }
  {
    attnkit::favor_decoder<T, Arch> dec(feats, B, H, Hkv, dv);
    auto out = out_of(L);
    const index_t pre = 20;
    auto rows = [&](const auto& x, index_t i0, index_t n) {
      const auto xv = x.cview();
      return attnkit::tensor_view<const T, 4>(xv.ptr(0, 0, i0, 0),
                                              {xv.extent(0), xv.extent(1), n, xv.extent(3)}, xv.strides());
    };
    dec.prefill(rows(q, 0, pre), rows(ks, 0, pre), rows(vs, 0, pre),
                attnkit::tensor_view<T, 4>(out.data(), {B, H, pre, dv}, out.view().strides()));
    for (index_t i = pre; i < L; ++i)
      dec.step(rows(q, i, 1), rows(ks, i, 1), rows(vs, i, 1),
               attnkit::tensor_view<T, 4>(out.view().ptr(0, 0, i, 0), {B, H, 1, dv}, out.view().strides()));
    emit("favor_decoder prefill+steps", arch, type, hash_of(out.cview()));
  }

  // Combiner: every plan, bidirectional and causal, both poolings, key lengths
  const index_t rows = 5, cols = 9;  // rows * cols == L
  std::vector<std::int32_t> ids(static_cast<std::size_t>(B * Hkv * L));
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>((i * 7 + i / 3) % 6);
  const auto centroids = random_tensor<float, 3>({Hkv, 5, dk}, 8);  // plans hold float
  auto run_plan = [&](const std::string& name, const auto& plan) {
    for (bool causal : {false, true})
      for (auto pooling : {attnkit::combiner_pooling::max, attnkit::combiner_pooling::mean}) {
        attnkit::combiner_options o;
        o.causal = causal;
        o.pooling = pooling;
        if (pooling == attnkit::combiner_pooling::mean) o.mask.key_lengths = self_lens_view;
        auto out = out_of(L);
        attnkit::combiner_attention<Arch, T>(q.cview(), ks.cview(), vs.cview(), out.view(), plan, o);
        emit("combiner " + name + (causal ? " causal" : "") +
                 (pooling == attnkit::combiner_pooling::mean ? " mean key_lengths" : " max"),
             arch, type, hash_of(out.cview()));
      }
  };
  run_plan("fixed", attnkit::combiner::fixed{});
  run_plan("fixed span=4", attnkit::combiner::fixed{4});
  run_plan("logsparse", attnkit::combiner::logsparse{});
  run_plan("axial row_major",
           attnkit::combiner::axial{rows, cols, attnkit::combiner::axial_order::row_major});
  run_plan("axial col_major",
           attnkit::combiner::axial{rows, cols, attnkit::combiner::axial_order::col_major});
  run_plan("axial mixture", attnkit::combiner::axial{rows, cols, attnkit::combiner::axial_order::mixture});
  {
    attnkit::combiner::learnable by_ids;
    by_ids.cluster_ids = attnkit::tensor_view<const std::int32_t, 3>::contiguous(ids.data(), {B, Hkv, L});
    run_plan("learnable ids", by_ids);
    attnkit::combiner::learnable by_centroids;
    by_centroids.centroids = centroids.cview();
    by_centroids.span = 6;
    run_plan("learnable centroids span=6", by_centroids);
  }

  // CoAtNet relative attention on a rows x cols grid
  const auto table = random_tensor<T, 3>({H, 2 * rows - 1, 2 * cols - 1}, 9);
  for (auto mode : {attnkit::relative_mode::pre_softmax, attnkit::relative_mode::post_softmax})
    for (auto off : {attnkit::relative_offset::key_minus_query, attnkit::relative_offset::query_minus_key}) {
      attnkit::relative_options o;
      o.mode = mode;
      o.offset = off;
      o.mask.key_lengths = self_lens_view;
      auto out = out_of(L);
      attnkit::relative_attention_2d<Arch, T>(q.cview(), ks.cview(), vs.cview(), table.cview(),
                                              attnkit::relative_grid{rows, cols}, out.view(), o);
      emit(std::string("relative_2d ") + (mode == attnkit::relative_mode::pre_softmax ? "pre" : "post") +
               (off == attnkit::relative_offset::key_minus_query ? " k-q" : " q-k"),
           arch, type, hash_of(out.cview()));
    }

  // lambda_attention: queries [B, n, h, k], keys [B, m, k, u], values [B, m, v, u]
  const index_t hq = 3, K = 6, U = 2, V = 11;
  const auto lq = random_tensor<T, 4>({B, L, hq, K}, 10), lk = random_tensor<T, 4>({B, L, K, U}, 11),
             lv = random_tensor<T, 4>({B, L, V, U}, 12);
  const auto emb = random_tensor<T, 4>({L, L, K, U}, 13);
  const auto rel = random_tensor<T, 4>({2 * rows - 1, 2 * cols - 1, K, U}, 14);
  const auto loc = random_tensor<T, 4>({3, 5, K, U}, 15);
  const attnkit::lambda_grid grid{rows, cols};
  using pos_t = attnkit::lambda_position<T>;
  const std::pair<const char*, pos_t> positions[] = {{"none", pos_t::none()},
                                                     {"global", pos_t::global(emb.cview())},
                                                     {"relative", pos_t::relative(rel.cview(), grid)},
                                                     {"local", pos_t::local(loc.cview(), grid)}};
  for (const auto& [pname, pos] : positions)
    for (bool causal : {false, true}) {
      attnkit::lambda_options o;
      o.causal = causal;
      if (!causal) o.mask.key_lengths = self_lens_view;
      tensor<T, 3> out({B, L, hq * V});
      attnkit::lambda_attention<Arch, T>(lq.cview(), lk.cview(), lv.cview(), pos, out.view(), o);
      emit(std::string("lambda ") + pname + (causal ? " causal" : " key_lengths"), arch, type,
           hash_of(out.cview()));
    }
}

/// The combiner oracle (double, native) and the operators that only build for the native ISA.
template <class T>
void native_ops(const char* type) {
  namespace cn = attnkit::coatnet;
  const char* arch = "native";
  const index_t B = 2, Hh = 7, Ww = 9, C = 12, Co = 20;
  const auto x = random_tensor<T, 4>({B, Hh, Ww, C}, 20);
  const auto w = random_tensor<T, 4>({Co, C, 3, 3}, 21, -0.3, 0.3);
  const auto bias = random_tensor<T, 1>({Co}, 22);
  for (int stride : {1, 2}) {
    const index_t oh = attnkit::detail::conv_extent(Hh, 3, stride, 1),
                  ow = attnkit::detail::conv_extent(Ww, 3, stride, 1);
    tensor<T, 4> out({B, oh, ow, Co});
    cn::conv2d<attnkit::simd::native, T>(x.cview(), w.cview(), bias.cview(), out.view(), stride, 1,
                                         cn::activation::gelu);
    emit("coatnet conv2d 3x3 gelu stride=" + std::to_string(stride), arch, type, hash_of(out.cview()));
  }
  {
    const auto dw = random_tensor<T, 4>({C, 1, 3, 3}, 23);
    tensor<T, 4> out({B, Hh, Ww, C});
    const auto dwb = random_tensor<T, 1>({C}, 34);
    cn::depthwise_conv2d<attnkit::simd::native, T>(x.cview(), dw.cview(), dwb.cview(), out.view(), 1, 1,
                                                   cn::activation::silu);
    emit("coatnet depthwise_conv2d 3x3 silu", arch, type, hash_of(out.cview()));
  }
  {
    const auto xl = random_tensor<T, 2>({B * Hh * Ww, C}, 24);
    const auto wl = random_tensor<T, 2>({Co, C}, 25);
    tensor<T, 2> out({B * Hh * Ww, Co});
    cn::linear<attnkit::simd::native, T>(xl.cview(), wl.cview(), bias.cview(), out.view(),
                                         cn::activation::gelu);
    emit("coatnet linear gelu", arch, type, hash_of(out.cview()));
  }
  for (auto act :
       {cn::activation::gelu, cn::activation::gelu_tanh, cn::activation::silu, cn::activation::relu}) {
    tensor<T, 4> out({B, Hh, Ww, C});
    cn::activate<attnkit::simd::native, T>(x.cview(), out.view(), act);
    emit("coatnet activate " + std::to_string(static_cast<int>(act)), arch, type, hash_of(out.cview()));
  }
  {
    const auto wr = random_tensor<T, 4>({3, C, 1, 1}, 26), we = random_tensor<T, 4>({C, 3, 1, 1}, 27);
    const auto br = random_tensor<T, 1>({3}, 28), be = random_tensor<T, 1>({C}, 29);
    tensor<T, 4> out({B, Hh, Ww, C});
    cn::squeeze_excitation<attnkit::simd::native, T>(x.cview(), wr.cview(), br.cview(), we.cview(),
                                                     be.cview(), out.view());
    emit("coatnet squeeze_excitation", arch, type, hash_of(out.cview()));
    const auto g = random_tensor<T, 1>({C}, 30, 0.5, 1.5);
    cn::layer_norm<T>(x.cview(), g.cview(), be.cview(), out.view());
    emit("coatnet layer_norm", arch, type, hash_of(out.cview()));
    tensor<T, 4> pooled({B, Hh / 2, Ww / 2, C});
    cn::avg_pool_2x2<T>(x.cview(), pooled.view());
    emit("coatnet avg_pool_2x2", arch, type, hash_of(pooled.cview()));
    tensor<T, 2> gp({B, C});
    cn::global_avg_pool<T>(x.cview(), gp.view());
    emit("coatnet global_avg_pool", arch, type, hash_of(gp.cview()));
  }
  // a whole small network of each layout (every MBConv and transformer block, the head)
  for (bool rw : {false, true}) {
    const cn::network_config c = tiny_config(rw);
    cn::network<T> net(c);
    std::uint64_t salt = 100;
    for (const auto& [name, shape] : net.parameters()) {
      test_rng g = fixed_rng(salt++);
      index_t n = 1;
      for (index_t e : shape) n *= e;
      const bool positive = name.find("running_var") != std::string::npos;
      std::vector<T> p(static_cast<std::size_t>(n));
      for (auto& e : p) e = static_cast<T>(positive ? g.uniform(0.5, 1.5) : g.uniform(-0.3, 0.3));
      net.set_parameter(name, p.data(), n);
    }
    const auto img = random_tensor<T, 4>({2, 64, 96, 3}, 31);
    std::vector<tensor<T, 4>> taps;
    tensor<T, 2> logits({2, 10});
    net.forward(img.cview(), logits.view(), 0, &taps);
    std::uint64_t h = hash_of(logits.cview());
    for (const auto& t : taps) h = hash_of(t.cview(), h);
    emit(std::string("coatnet network ") + (rw ? "rw" : "paper") + " taps+logits", arch, type, h);
  }
  // the lambda layer: a sequence with a local term, a feature map with a relative term
  for (bool map : {false, true}) {
    attnkit::lambda_layer_config c;
    c.d = 24;
    c.heads = 4;
    c.k = 8;
    c.u = map ? 1 : 3;
    c.position = map ? attnkit::lambda_position_kind::relative : attnkit::lambda_position_kind::local;
    c.grid = map ? attnkit::lambda_grid{5, 7} : attnkit::lambda_grid{1, 33};
    c.scope = map ? 0 : 7;
    c.spatial = map;
    attnkit::lambda_layer<T> layer(c);
    layer.init(41);
    if (map) {
      const auto xm = random_tensor<T, 4>({2, 5, 7, 24}, 32);
      tensor<T, 4> out({2, 5, 7, layer.out_channels()});
      layer.forward(xm.cview(), out.view());
      emit("lambda_layer map relative", arch, type, hash_of(out.cview()));
    } else {
      const auto xs = random_tensor<T, 3>({2, 33, 24}, 33);
      tensor<T, 3> out({2, 33, layer.out_channels()});
      layer.forward(xs.cview(), out.view());
      emit("lambda_layer sequence local", arch, type, hash_of(out.cview()));
    }
  }
}

template <class Arch>
void both_types(const char* arch) {
  attention_ops<Arch, float>(arch, "float");
  attention_ops<Arch, double>(arch, "double");
}

}  // namespace

int main() {
  both_types<attnkit::simd::scalar>("scalar");
#if ATTNKIT_HAS_AVX2
  both_types<attnkit::simd::avx2>("avx2");
#endif
#if ATTNKIT_HAS_AVX512
  both_types<attnkit::simd::avx512>("avx512");
#endif
  native_ops<float>("float");
  native_ops<double>("double");
  {  // the Combiner oracle (combiner_probabilities, double)
    const auto q = random_tensor<double, 4>({1, 2, 45, 19}, 50),
               k = random_tensor<double, 4>({1, 2, 45, 19}, 51);
    for (bool causal : {false, true}) {
      attnkit::combiner_options o;
      o.causal = causal;
      const auto p = attnkit::combiner_probabilities(q.cview(), k.cview(), attnkit::combiner::logsparse{}, o);
      emit(std::string("combiner_probabilities logsparse") + (causal ? " causal" : ""), "native", "double",
           hash_of(p.cview()));
    }
  }
  return 0;
}
