// attnkit benchmarks (bench/measure.hpp): attention problems, their FLOP counts and sampled timing; FAVOR+
// counts.
#pragma once

#include <map>
#include <memory>
#include <tuple>

#include "timing.hpp"

namespace attnkit_bench {
// ----------------------------------------------------------------------------------------------
// Attention problems, FLOP counts and sampled timing

/// The sizes of one attention call: q [B, H, Lq, dk], k [B, Hkv, Lk, dk], v [B, Hkv, Lk, dv].
struct attention_spec {
  index_t B = 1, H = 8, Hkv = 8, Lq = 0, Lk = 0, dk = 64, dv = 64;
  attnkit::causal_mode causal = attnkit::causal_mode::none;

  /// Self-attention [B, H, L, d] with H == Hkv and dk == dv.
  static attention_spec self(index_t L, index_t d, index_t H = 8,
                             attnkit::causal_mode c = attnkit::causal_mode::none, index_t B = 1) {
    attention_spec s;
    s.B = B;
    s.H = s.Hkv = H;
    s.Lq = s.Lk = L;
    s.dk = s.dv = d;
    s.causal = c;
    return s;
  }
  index_t group() const { return Hkv > 0 ? H / Hkv : 1; }
  bool is_causal() const { return causal != attnkit::causal_mode::none; }
  /// Keys query i sees (causal masks only; key_lengths are not modelled here).
  index_t keys_of(index_t i) const {
    if (!is_causal()) return Lk;
    const index_t off = causal == attnkit::causal_mode::bottom_right ? Lk - Lq : 0;
    return std::clamp<index_t>(i + off + 1, 0, Lk);
  }
  /// "B1 H8 L2048 d64" (or with Hkv / Lq != Lk / dv when they differ).
  std::string str() const {
    std::string s = "B" + std::to_string(B) + " H" + std::to_string(H);
    if (Hkv != H) s += "/" + std::to_string(Hkv) + "kv";
    s += Lq == Lk ? " L" + std::to_string(Lq) : " Lq" + std::to_string(Lq) + " Lk" + std::to_string(Lk);
    s += " d" + std::to_string(dk);
    if (dv != dk) s += "/" + std::to_string(dv);
    return s;
  }
};

/// FLOPs of exact attention over query rows [r0, r1) of `heads` heads (all batch entries):
/// 2*(dk + dv) per visible (query, key) pair, i.e. 4*Lq*Lk*d per head when nothing is masked.
inline double attention_flops(const attention_spec& s, index_t heads, index_t r0, index_t r1) {
  double pairs = 0.0;
  if (!s.is_causal()) {
    pairs = static_cast<double>(r1 - r0) * static_cast<double>(s.Lk);
  } else {
    for (index_t i = r0; i < r1; ++i) pairs += static_cast<double>(s.keys_of(i));
  }
  return 2.0 * static_cast<double>(s.dk + s.dv) * pairs * static_cast<double>(heads * s.B);
}
/// FLOPs of the whole call (causal: only the visible pairs).
inline double attention_flops(const attention_spec& s) { return attention_flops(s, s.H, 0, s.Lq); }
/// FLOPs of the whole call as if nothing were masked (4*Lq*Lk*d per head for dk == dv).
inline double dense_attention_flops(const attention_spec& s) {
  return 2.0 * static_cast<double>(s.dk + s.dv) * static_cast<double>(s.Lq) * static_cast<double>(s.Lk) *
         static_cast<double>(s.H * s.B);
}
/// Bytes of K and V (fp32) one call reads at least once.
inline double kv_bytes(const attention_spec& s) {
  return 4.0 * static_cast<double>(s.B * s.Hkv * s.Lk * (s.dk + s.dv));
}

/// Owning, contiguous [B, H, L, D] inputs filled with uniform values in [-1, 1) and the output.
struct attention_problem {
  attention_spec spec;
  attnkit::tensor<float, 4> q, k, v, out;
  explicit attention_problem(const attention_spec& s, std::uint64_t seed = 42)
      : spec(s),
        q({s.B, s.H, s.Lq, s.dk}),
        k({s.B, s.Hkv, s.Lk, s.dk}),
        v({s.B, s.Hkv, s.Lk, s.dv}),
        out({s.B, s.H, s.Lq, s.dv}) {
    fill_uniform(q, seed);
    fill_uniform(k, seed + 1);
    fill_uniform(v, seed + 2);
  }
  /// True when `s` has the same tensor extents (the mask may differ).
  bool fits(const attention_spec& s) const {
    return s.B == spec.B && s.H == spec.H && s.Hkv == spec.Hkv && s.Lq == spec.Lq && s.Lk == spec.Lk &&
           s.dk == spec.dk && s.dv == spec.dv;
  }
};

/// Every operator with the attention signature (inputs, output, options), e.g. full_attention.
using attention_fn = std::function<void(const f4_cview& q, const f4_cview& k, const f4_cview& v,
                                        const f4_view& out, const attnkit::attention_options& opt)>;

/// Which independent parts of a call may be timed alone and scaled up.
enum class slicing {
  none,            ///< time whole calls only
  heads,           ///< heads are independent and cost the same (true of every attention operator)
  heads_and_rows,  ///< query rows too: the cost of a row is its visible keys (exact attention, reference)
};

/// Heads [h0, h0 + nh) (all batch entries) and query rows [r0, r0 + nr) of one call.
struct attention_slice {
  index_t h0 = 0, nh = 0, r0 = 0, nr = 0;
};

/// The slices one timing sample runs, their FLOPs and the FLOPs of the whole call.
struct sample_plan {
  attention_spec spec;
  std::vector<attention_slice> slices;
  double sample_flops = 0.0, full_flops = 0.0;
  bool whole() const { return slices.size() == 1 && slices[0].nh == spec.H && slices[0].nr == spec.Lq; }
  /// Time of the whole call estimated from the time of one sample.
  double scale_to_whole(double sample_seconds) const {
    return sample_flops > 0 ? sample_seconds * full_flops / sample_flops : sample_seconds;
  }
  /// "whole call" or e.g. "sample 4x96 rows x 2/8 heads".
  std::string describe() const {
    if (whole()) return "whole call";
    std::string d = "sample ";
    if (slices[0].nr != spec.Lq)
      d += (slices.size() > 1 ? std::to_string(slices.size()) + "x" : std::string()) +
           std::to_string(slices[0].nr) + " rows x ";
    return d + std::to_string(slices[0].nh) + "/" + std::to_string(spec.H) + " heads";
  }
};

/// Query rows of one task of the tiled kernel (two column blocks, which share each K/V block), per
/// kv head group: samples made of whole tasks run the kernel as the whole call does.
inline index_t attention_row_quantum(index_t group = 1) {
  constexpr index_t cols = 2 * attnkit::detail::flash_tiling<float, attnkit::simd::native>::NV *
                           attnkit::simd::batch<float, attnkit::simd::native>::size;
  return cols / std::gcd(cols, std::max<index_t>(1, group));
}

/// Chooses what one timing sample of `s` runs so that it costs about `target_flops` (a few ms):
/// the whole call when it is cheap enough; otherwise all heads (or fewer, a multiple of the group)
/// over blocks of `quantum` query rows (0: attention_row_quantum). Non-causal rows all cost the
/// same, so one block of rows is representative; causal rows cost their visible keys, so `strata`
/// blocks centred in equal parts of the sequence are taken (exact for a cost linear in the keys;
/// the FLOPs count them exactly). Each slice keeps at least `min_tiles` tiles (quantum rows x one
/// kv head group), e.g. 2 per thread, so that no thread idles.
inline sample_plan plan_samples(const attention_spec& s, double target_flops,
                                slicing how = slicing::heads_and_rows, int strata = 4, index_t quantum = 0,
                                index_t min_tiles = 1) {
  if (quantum <= 0) quantum = attention_row_quantum(s.group());
  sample_plan p;
  p.spec = s;
  p.full_flops = attention_flops(s);
  const index_t G = std::max<index_t>(1, s.group());
  auto round_heads = [&](double want) {
    index_t nh = static_cast<index_t>(std::ceil(want));
    nh = (nh + G - 1) / G * G;
    return std::clamp<index_t>(nh, G, s.H);
  };
  index_t nh = s.H, nr = s.Lq;
  int K = 1;
  if (how != slicing::none && p.full_flops > 1.5 * target_flops && s.H > 0 && s.Lq > 0) {
    const double per_row_head = p.full_flops / static_cast<double>(s.H * s.Lq);
    const double row_heads = target_flops / std::max(per_row_head, 1.0);
    bool rows = how == slicing::heads_and_rows && (!s.is_causal() || s.Lq == s.Lk);
    if (rows) {
      K = s.is_causal() ? std::max(1, strata) : 1;
      const double want = row_heads / static_cast<double>(s.H * K);
      nr = std::max<index_t>(quantum,
                             (static_cast<index_t>(std::ceil(want)) + quantum - 1) / quantum * quantum);
      if (nr == quantum) nh = round_heads(row_heads / static_cast<double>(K * quantum));
      if (static_cast<index_t>(K) * nr >= s.Lq) rows = false;
    }
    if (!rows) {
      K = 1;
      nr = s.Lq;
      nh = round_heads(row_heads / static_cast<double>(s.Lq));
    }
    // Enough tiles per slice: more heads first, then more rows.
    auto tiles = [&] { return (nh / G) * ((nr + quantum - 1) / quantum); };
    while (tiles() < min_tiles && nh < s.H) nh = std::min(s.H, nh + G);
    while (tiles() < min_tiles && static_cast<index_t>(K) * (nr + quantum) < s.Lq) nr += quantum;
  }
  for (int k = 0; k < K; ++k) {
    attention_slice sl;
    sl.nh = nh;
    sl.nr = nr;
    if (nr < s.Lq) {
      const index_t centre = (2 * k + 1) * s.Lq / (2 * K);
      sl.r0 = std::clamp<index_t>((centre - nr / 2) / quantum * quantum, 0, s.Lq - nr);
    }
    p.slices.push_back(sl);
    p.sample_flops += attention_flops(s, nh, sl.r0, sl.r0 + nr);
  }
  return p;
}

/// FLOPs of `heads` query heads (all batch entries, every row; a multiple of the group) of one call
/// of `s`: the cost model of an operator that is timed on slices of heads (see plan_head_samples).
using head_flops_fn = std::function<double(const attention_spec& s, index_t heads)>;

/// Chooses the heads one timing sample of `s` runs for an operator that can only be sliced by heads
/// (e.g. FAVOR+, whose key pass runs over all keys before any query: no block of query rows is
/// representative) and costs `flops`: the whole call when how == none or it costs at most 1.5 x
/// `target_flops`; otherwise the fewest heads that cost `target_flops`, a multiple of the group and
/// of `head_quantum` (e.g. the thread count, so that every thread gets as many heads as in a whole
/// call when the operator parallelizes over heads).
inline sample_plan plan_head_samples(const attention_spec& s, double target_flops, const head_flops_fn& flops,
                                     slicing how = slicing::heads, index_t head_quantum = 1) {
  sample_plan p;
  p.spec = s;
  p.full_flops = flops(s, s.H);
  index_t nh = s.H;
  if (how != slicing::none && p.full_flops > 1.5 * target_flops && s.H > 0) {
    const index_t G = std::max<index_t>(1, s.group());
    const index_t q = std::lcm(G, std::max<index_t>(1, head_quantum));
    const double per_head = p.full_flops / static_cast<double>(s.H);
    nh = static_cast<index_t>(std::ceil(target_flops / std::max(per_head, 1.0)));
    nh = std::min(s.H, std::max<index_t>(q, (nh + q - 1) / q * q));
    if (nh % G != 0) nh = s.H;  // the quantum exceeds H: only whole calls are representative
  }
  attention_slice sl;
  sl.nh = nh;
  sl.nr = s.Lq;
  p.slices.push_back(sl);
  p.sample_flops = nh == s.H ? p.full_flops : flops(s, nh);
  return p;
}

/// Views of one slice of a problem and the mask that gives its rows the same visible keys as in
/// the whole call (a causal row block [r0, r0+nr) is a bottom-right causal call over keys [0, r0+nr)).
struct slice_views {
  f4_cview q, k, v;
  f4_view out;
  attnkit::causal_mode causal = attnkit::causal_mode::none;
};

/// `s` is the spec of the call (its mask may differ from p.spec; its extents must not).
inline slice_views make_slice(attention_problem& p, const attention_spec& s, const attention_slice& sl) {
  const index_t G = std::max<index_t>(1, s.group());
  const index_t hk0 = sl.h0 / G, nhk = std::max<index_t>(1, sl.nh / G);
  index_t lk = s.Lk;
  slice_views r;
  r.causal = s.causal;
  if (sl.nr != s.Lq && s.is_causal()) {
    lk = sl.r0 + sl.nr;  // plan_samples slices causal rows only when Lq == Lk
    r.causal = attnkit::causal_mode::bottom_right;
  }
  auto sub = [](auto view, index_t h0, index_t nh, index_t r0, index_t nr) {
    auto e = view.extents();
    auto st = view.strides();
    e[1] = nh;
    e[2] = nr;
    using V = decltype(view);
    return V(view.data() + h0 * st[1] + r0 * st[2], e, st);
  };
  r.q = sub(f4_cview(p.q.view()), sl.h0, sl.nh, sl.r0, sl.nr);
  r.out = sub(p.out.view(), sl.h0, sl.nh, sl.r0, sl.nr);
  r.k = sub(f4_cview(p.k.view()), hk0, nhk, 0, lk);
  r.v = sub(f4_cview(p.v.view()), hk0, nhk, 0, lk);
  return r;
}

/// Runs the slices of one sample of plan.spec (on the tensors of `p`, which must fit it) back to
/// back and returns their wall time in seconds.
inline double run_sample(attention_problem& p, const sample_plan& plan, const attention_fn& fn,
                         const attnkit::attention_options& opt) {
  if (!p.fits(plan.spec))
    throw std::invalid_argument("run_sample: the problem does not fit " + plan.spec.str());
  std::vector<slice_views> views;
  views.reserve(plan.slices.size());
  for (const auto& sl : plan.slices) views.push_back(make_slice(p, plan.spec, sl));
  attnkit::attention_options o = opt;
  const double t0 = now_seconds();
  for (const auto& sv : views) {
    o.mask.causal = sv.causal;
    fn(sv.q, sv.k, sv.v, sv.out, o);
  }
  return now_seconds() - t0;
}

/// Estimates the time of one whole call: the minimum over `samples` samples, scaled to the whole.
inline double estimate_call_seconds(attention_problem& p, const sample_plan& plan, const attention_fn& fn,
                                    const attnkit::attention_options& opt, int samples) {
  return plan.scale_to_whole(min_time_of([&] { run_sample(p, plan, fn, opt); }, samples));
}

/// full_attention<simd::native, float> as an attention_fn.
inline attention_fn full_attention_fn() {
  return [](const f4_cview& q, const f4_cview& k, const f4_cview& v, const f4_view& out,
            const attnkit::attention_options& o) { attnkit::full_attention(q, k, v, out, o); };
}
/// reference::attention<float> as an attention_fn: materializes Lq x Lk per head, serial loops.
/// Its Eigen products would run on Eigen's own OpenMP threads; `eigen_threads` (default 1) fixes
/// their number for the call, so the strawman is a well-defined single-threaded program.
inline attention_fn reference_attention_fn(int eigen_threads = 1) {
  return [eigen_threads](const f4_cview& q, const f4_cview& k, const f4_cview& v, const f4_view& out,
                         const attnkit::attention_options& o) {
    const int saved = Eigen::nbThreads();
    Eigen::setNbThreads(eigen_threads);
    attnkit::reference::attention(q, k, v, out, o);
    Eigen::setNbThreads(saved);
  };
}

/// What a training benchmark of exact attention times.
enum class training_step {
  forward_lse,  ///< full_attention with the log-sum-exp output (4 Lq Lk d FLOPs per head)
  backward,     ///< full_attention_backward alone, from a forward run once per slice (10 Lq Lk d)
  both          ///< forward with lse, then backward (14 Lq Lk d)
};
/// Exact attention's FLOPs of one step, as a multiple of the forward's.
inline double training_flop_factor(training_step s) {
  return s == training_step::forward_lse ? 1.0 : s == training_step::backward ? 2.5 : 3.5;
}

/// An operator's forward with its log-sum-exp and its backward, as the training benchmarks call them.
struct training_ops {
  std::function<void(const f4_cview& q, const f4_cview& k, const f4_cview& v, const f4_view& out,
                     const attnkit::tensor_view<float, 3>& lse, const attnkit::attention_options& o)>
      forward;
  std::function<void(const f4_cview& q, const f4_cview& k, const f4_cview& v, const f4_cview& out,
                     const attnkit::tensor_view<const float, 3>& lse, const f4_cview& dout, const f4_view& dq,
                     const f4_view& dk, const f4_view& dv, const attnkit::attention_options& o)>
      backward;
};

/// full_attention(..., lse) and full_attention_backward.
inline training_ops exact_training_ops() {
  training_ops ops;
  ops.forward = [](const f4_cview& q, const f4_cview& k, const f4_cview& v, const f4_view& out,
                   const attnkit::tensor_view<float, 3>& lse,
                   const attnkit::attention_options& o) { attnkit::full_attention(q, k, v, out, lse, o); };
  ops.backward = [](const f4_cview& q, const f4_cview& k, const f4_cview& v, const f4_cview& out,
                    const attnkit::tensor_view<const float, 3>& lse, const f4_cview& dout, const f4_view& dq,
                    const f4_view& dk, const f4_view& dv, const attnkit::attention_options& o) {
    attnkit::full_attention_backward(q, k, v, out, lse, dout, dq, dk, dv, o);
  };
  return ops;
}

/// A training step of `ops` (default: exact attention) as an attention_fn: per slice of the
/// sample (told apart by the address of its q and its keys), the buffers of lse, dout and the
/// gradients are made on its first call (and, for `backward`, out and lse by one forward), so the
/// timed calls allocate nothing.
inline attention_fn training_fn(training_step step, training_ops ops = exact_training_ops()) {
  struct slice_state {
    attnkit::tensor<float, 4> out, dout, dq, dk, dv;
    attnkit::tensor<float, 3> lse;
  };
  auto tag = std::make_shared<int>(0);  // tells this function's slices from other benchmarks'
  return [step, ops, tag](const f4_cview& q, const f4_cview& k, const f4_cview& v, const f4_view& out,
                          const attnkit::attention_options& o) {
    // shared by every training benchmark, and emptied when it holds more than one sample's
    // slices: the buffers of earlier benchmarks do not pile up
    using key = std::tuple<const int*, int, const float*, std::array<index_t, 4>, index_t>;
    static std::map<key, slice_state> states;
    const key id{tag.get(), static_cast<int>(step), q.data(), q.extents(), k.extent(2)};
    if (states.size() >= 8 && states.find(id) == states.end()) states.clear();
    auto [it, fresh] = states.try_emplace(id);
    slice_state& s = it->second;
    if (fresh) {
      s.lse = attnkit::tensor<float, 3>({q.extent(0), q.extent(1), q.extent(2)});
      if (step != training_step::forward_lse) {
        s.out = attnkit::tensor<float, 4>(out.extents());
        s.dout = attnkit::tensor<float, 4>(out.extents());
        fill_uniform(s.dout, 7);
        s.dq = attnkit::tensor<float, 4>(q.extents());
        s.dk = attnkit::tensor<float, 4>(k.extents());
        s.dv = attnkit::tensor<float, 4>(v.extents());
        ops.forward(q, k, v, s.out.view(), s.lse.view(), o);
      }
    }
    if (step != training_step::backward) ops.forward(q, k, v, out, s.lse.view(), o);
    if (step == training_step::forward_lse) return;
    const f4_cview o_used = step == training_step::both ? f4_cview(out) : s.out.cview();
    ops.backward(q, k, v, o_used, s.lse.cview(), s.dout.cview(), s.dq.view(), s.dk.view(), s.dv.view(), o);
  };
}

/// Tokens of one chunk of causal FAVOR+ (and of one query block of bidirectional FAVOR+).
/// Reads an internal of the kernel.
inline index_t favor_chunk() { return attnkit::detail::favor_tiling<float, attnkit::simd::native>::chunk; }

/// FLOPs of the feature and state products of favor_attention over `heads` query heads (a multiple
/// of the group) of `s`, with mf features per token (m for softmax_positive and relu, 2m for
/// softmax_hyperbolic); see favor/detail/kernel.hpp for the products:
///   per (batch, kv head)   key features  U = K F^T           2 * Lk * dk * mf
///                          state         S^T += V^T Phi_K    2 * Lk * mf * dv
///   per (batch, query head) query features U^T = F Q^T       2 * Lq * dk * mf
///                          output        [S^T; z^T] Phi_Q^T  2 * Lq * mf * (dv + 1)
///   causal, per query head intra-chunk   A^T = Phi_K Phi_Q^T 2 * L * C * mf
///                          and           O += V^T A^T        2 * L * C * dv
/// with C = favor_chunk(). The intra-chunk products are counted over the whole C x C block, as the
/// kernel computes it (only the part on and below the diagonal is needed: about half). Not counted:
/// z += colsum(Phi_K) (Lk * mf adds), the exponentials, stabilizers, masking and normalization.
inline double favor_flops(const attention_spec& s, index_t mf, index_t heads) {
  const double kv_heads = static_cast<double>(heads / std::max<index_t>(1, s.group()) * s.B);
  const double q_heads = static_cast<double>(heads * s.B);
  const double Lq = static_cast<double>(s.Lq), Lk = static_cast<double>(s.Lk), f = static_cast<double>(mf);
  const double dk = static_cast<double>(s.dk), dv = static_cast<double>(s.dv);
  double per_q = 2.0 * Lq * dk * f + 2.0 * Lq * f * (dv + 1.0);
  if (s.is_causal()) per_q += 2.0 * Lq * static_cast<double>(favor_chunk()) * (f + dv);
  return kv_heads * (2.0 * Lk * dk * f + 2.0 * Lk * f * dv) + q_heads * per_q;
}
/// favor_flops as the cost model of plan_head_samples / register_attention.
inline head_flops_fn favor_flops_fn(index_t mf) {
  return [mf](const attention_spec& s, index_t heads) { return favor_flops(s, mf, heads); };
}

/// favor_attention<simd::native, float> with `features` as an attention_fn: the mask (causal,
/// key_lengths), scale and threads come from the attention_options of the call, the rest (kernel,
/// relu_epsilon) from `base`.
inline attention_fn favor_attention_fn(std::shared_ptr<const attnkit::random_features<float>> features,
                                       const attnkit::favor_options& base = {}) {
  return [features, base](const f4_cview& q, const f4_cview& k, const f4_cview& v, const f4_view& out,
                          const attnkit::attention_options& o) {
    attnkit::favor_options fo = base;
    fo.mask = o.mask;
    fo.scale = o.scale;
    fo.threads = o.threads;
    attnkit::favor_attention(q, k, v, out, *features, fo);
  };
}

}  // namespace attnkit_bench
