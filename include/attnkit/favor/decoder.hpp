// attnkit: streaming FAVOR+ decoding (docs/design.md §4.2): a per-(batch, kv head) state S = sum phi(k) v^T,
// z = sum phi(k) that grows one token at a time.
#pragma once

#include <string>
#include <vector>

#include "attention.hpp"

ATTNKIT_BEGIN_NAMESPACE

/// Causal FAVOR+ one token at a time. prefill() runs a prompt and keeps its state; step() appends
/// one token per (batch, head) and writes its output. The outputs equal causal favor_attention over
/// the concatenated sequence (up to rounding). The state of a kv head is shared by the H / Hkv
/// query heads of its group, so it costs (dv + 1) * m floats per (batch, kv head) whatever the length.
template <class T, class Arch = simd::native>
class favor_decoder {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "favor_decoder: float or double");

 public:
  /// A decoder for `batch` sequences with `heads` query heads over `kv_heads` key/value heads of
  /// value width dv; features.dim() is dk. options: kernel, scale, relu_epsilon, threads (the mask
  /// and causal fields are given per call / implied). Throws invalid_argument on bad sizes.
  favor_decoder(const random_features<T>& features, index_t batch, index_t heads, index_t kv_heads,
                index_t dv, const favor_options& options = {})
      : options_(options) {
    constexpr const char* where = "attnkit::favor_decoder";
    detail::require(
        batch >= 0 && kv_heads >= 1 && heads >= 1 && heads % kv_heads == 0 && dv >= 0, where, [&] {
          return std::string("batch = " + std::to_string(batch) + ", heads = " + std::to_string(heads) +
                             ", kv_heads = " + std::to_string(kv_heads) + ", dv = " + std::to_string(dv) +
                             ": need batch, dv >= 0 and heads a positive multiple of kv_heads >= 1");
        });
    detail::require(!options.mask.bias && options.mask.bias.size() == 0 && !options.mask.key_lengths, where,
                    "options.mask must be empty: pass key_lengths to prefill");
    shape_.B = batch;
    shape_.H = heads;
    shape_.Hkv = kv_heads;
    shape_.dk = features.dim();
    shape_.dv = dv;
    scale_ = detail::check_favor(where, shape_, features, options);
    w_ = detail::prepare_weights<Arch>(features, options.kernel, scale_, options.relu_epsilon);
    for (index_t i = 0; i < batch * kv_heads; ++i) states_.emplace_back(dv, w_.mpad);
  }

  /// Forgets every token.
  void reset() {
    for (auto& st : states_) st.reset();
    tokens_ = 0;
  }

  /// reset(), then causal attention over the prompt: q [B, H, L, dk], k [B, Hkv, L, dk],
  /// v [B, Hkv, L, dv], out [B, H, L, dv]. key_lengths (optional, [B]) marks the prompt keys
  /// j >= key_lengths[b] as padding: they never enter the state (their queries still get outputs).
  void prefill(tensor_view<const T, 4> q, tensor_view<const T, 4> k, tensor_view<const T, 4> v,
               tensor_view<T, 4> out, tensor_view<const std::int64_t, 1> key_lengths = {}) {
    check("attnkit::favor_decoder::prefill", q, k, v, out, key_lengths, -1);
    reset();
    run(q, k, v, out, key_lengths);
  }

  /// Appends one token: q [B, H, 1, dk], k [B, Hkv, 1, dk], v [B, Hkv, 1, dv], out [B, H, 1, dv].
  void step(tensor_view<const T, 4> q, tensor_view<const T, 4> k, tensor_view<const T, 4> v,
            tensor_view<T, 4> out) {
    check("attnkit::favor_decoder::step", q, k, v, out, {}, 1);
    run(q, k, v, out, {});
  }

  /// Tokens consumed since the last reset (padding included).
  index_t tokens() const { return tokens_; }

 private:
  void check(const char* where, const tensor_view<const T, 4>& q, const tensor_view<const T, 4>& k,
             const tensor_view<const T, 4>& v, const tensor_view<T, 4>& out,
             const tensor_view<const std::int64_t, 1>& key_lengths, index_t want_len) const {
    mask m;
    m.key_lengths = key_lengths;
    const detail::attention_shape s = detail::check_attention_views(where, q, k, v, out, m, false);
    const std::array<index_t, 4> want{shape_.B, shape_.H, want_len < 0 ? s.Lk : want_len, shape_.dk};
    detail::require(
        s.B == shape_.B && s.H == shape_.H && s.Hkv == shape_.Hkv && s.dk == shape_.dk && s.dv == shape_.dv &&
            s.Lq == s.Lk && (want_len < 0 || s.Lq == want_len),
        where, [&] {
          return std::string("q has shape " + detail::shape_string(q.extents()) + ", k " +
                             detail::shape_string(k.extents()) + ", v " + detail::shape_string(v.extents()) +
                             "; this decoder expects q " + detail::shape_string(want) +
                             ", Hkv = " + std::to_string(shape_.Hkv) + ", dv = " + std::to_string(shape_.dv) +
                             " and as many keys as queries");
        });
  }

  void run(const tensor_view<const T, 4>& q, const tensor_view<const T, 4>& k,
           const tensor_view<const T, 4>& v, const tensor_view<T, 4>& out,
           const tensor_view<const std::int64_t, 1>& key_lengths) {
    using tl = detail::favor_tiling<T, Arch>;
    const index_t n = q.extent(2), bhkv = shape_.B * shape_.Hkv;
    const int nt = resolve_threads(options_.threads, bhkv);
    while (static_cast<int>(ws_.size()) < nt)
      ws_.emplace_back(tl::chunk, shape_.dk, shape_.dv, w_.mf, w_.mpad);
    // Short calls go token by token (matrix-vector work); longer ones in chunks of block products.
    const bool by_token = 4 * n < tl::chunk;
    parallel_for(bhkv, nt, [&](index_t task, int thread) {
      const index_t b = task / shape_.Hkv, hkv = task % shape_.Hkv;
      const index_t len = key_lengths ? static_cast<index_t>(key_lengths(b)) : n;
      detail::favor_causal<Arch>(w_, states_[static_cast<std::size_t>(task)],
                                 ws_[static_cast<std::size_t>(thread)], shape_.group(), q, k, v, out, b, hkv,
                                 n, len, by_token);
    });
    tokens_ += n;
  }

  favor_options options_;
  detail::attention_shape shape_;
  double scale_ = 0;
  detail::favor_weights<T> w_;
  std::vector<detail::favor_state<T>> states_;
  std::vector<detail::favor_workspace<T>> ws_;
  index_t tokens_ = 0;
};

ATTNKIT_END_NAMESPACE
