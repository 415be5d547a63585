// attnkit tests: one exact-attention problem (sizes, masks, scale, memory layouts) and its
// inputs, shared by the forward and backward tests.
#pragma once

#include <array>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include <attnkit/full/options.hpp>

#include "common.hpp"

namespace attnkit_test {

using attnkit::causal_mode;

enum class bias_kind {
  none,
  b1_1_q_k,  // [1, 1, Lq, Lk]
  b_1_q_k,   // [B, 1, Lq, Lk]
  b1_h_q_k,  // [1, H, Lq, Lk]
  b_h_q_k,   // [B, H, Lq, Lk]
  b_1_1_k,   // [B, 1, 1, Lk]  (key padding as a bias)
  b1_1_1_1,  // [1, 1, 1, 1]
  b1_1_q_1,  // [1, 1, Lq, 1]
};
inline const char* bias_name(bias_kind b) {
  switch (b) {
    case bias_kind::none:
      return "none";
    case bias_kind::b1_1_q_k:
      return "[1,1,Lq,Lk]";
    case bias_kind::b_1_q_k:
      return "[B,1,Lq,Lk]";
    case bias_kind::b1_h_q_k:
      return "[1,H,Lq,Lk]";
    case bias_kind::b_h_q_k:
      return "[B,H,Lq,Lk]";
    case bias_kind::b_1_1_k:
      return "[B,1,1,Lk]";
    case bias_kind::b1_1_1_1:
      return "[1,1,1,1]";
    case bias_kind::b1_1_q_1:
      return "[1,1,Lq,1]";
  }
  return "?";
}
inline const char* causal_name(causal_mode c) {
  switch (c) {
    case causal_mode::none:
      return "none";
    case causal_mode::top_left:
      return "top_left";
    case causal_mode::bottom_right:
      return "bottom_right";
  }
  return "?";
}

/// One attention problem: sizes, mask, scale, memory layouts.
struct spec {
  index_t B = 1, H = 1, Hkv = 1, Lq = 1, Lk = 1, dk = 16, dv = 16;
  causal_mode causal = causal_mode::none;
  std::vector<std::int64_t> key_lengths;  // empty: no key_lengths
  bool strided_lengths = false;           // key_lengths view with stride 2
  bias_kind bias = bias_kind::none;
  layout bias_layout = layout::contiguous;
  double scale = 0;
  layout lq = layout::contiguous, lk = layout::contiguous, lv = layout::contiguous, lo = layout::contiguous;
  double range = 1;  // q and k uniform in [-range, range)
};

inline std::string describe(const spec& s) {
  std::ostringstream os;
  os << "B=" << s.B << " H=" << s.H << " Hkv=" << s.Hkv << " Lq=" << s.Lq << " Lk=" << s.Lk << " dk=" << s.dk
     << " dv=" << s.dv << " causal=" << causal_name(s.causal) << " key_lengths=";
  if (s.key_lengths.empty()) os << "none";
  for (std::size_t b = 0; b < s.key_lengths.size(); ++b) os << (b ? "," : "") << s.key_lengths[b];
  os << " bias=" << bias_name(s.bias) << "(" << layout_name(s.bias_layout) << ") scale=" << s.scale
     << " layouts q/k/v/out=" << layout_name(s.lq) << "/" << layout_name(s.lk) << "/" << layout_name(s.lv)
     << "/" << layout_name(s.lo) << " range=" << s.range;
  return os.str();
}

inline std::array<index_t, 4> bias_extents(const spec& s) {
  switch (s.bias) {
    case bias_kind::none:
      return {0, 0, 0, 0};
    case bias_kind::b1_1_q_k:
      return {1, 1, s.Lq, s.Lk};
    case bias_kind::b_1_q_k:
      return {s.B, 1, s.Lq, s.Lk};
    case bias_kind::b1_h_q_k:
      return {1, s.H, s.Lq, s.Lk};
    case bias_kind::b_h_q_k:
      return {s.B, s.H, s.Lq, s.Lk};
    case bias_kind::b_1_1_k:
      return {s.B, 1, 1, s.Lk};
    case bias_kind::b1_1_1_1:
      return {1, 1, 1, 1};
    case bias_kind::b1_1_q_1:
      return {1, 1, s.Lq, 1};
  }
  return {0, 0, 0, 0};
}

/// Inputs and options of one problem; the options point into the problem's own storage (heap
/// blocks survive moves of the problem).
template <class T>
struct problem {
  spec sp;
  strided_buffer<T> q, k, v;
  strided_buffer<float> bias;
  std::vector<std::int64_t> lens;
  attnkit::attention_options opt;
};

template <class T>
problem<T> make_problem(const spec& sp, std::uint64_t salt) {
  problem<T> p;
  p.sp = sp;
  auto gen = seeded_rng(salt);
  p.q = make_buffer<T>({sp.B, sp.H, sp.Lq, sp.dk}, sp.lq);
  p.k = make_buffer<T>({sp.B, sp.Hkv, sp.Lk, sp.dk}, sp.lk);
  p.v = make_buffer<T>({sp.B, sp.Hkv, sp.Lk, sp.dv}, sp.lv);
  fill_uniform(p.q.v, gen, -sp.range, sp.range);
  fill_uniform(p.k.v, gen, -sp.range, sp.range);
  fill_uniform(p.v.v, gen, -1.0, 1.0);
  p.opt.scale = sp.scale;
  p.opt.mask.causal = sp.causal;
  if (!sp.key_lengths.empty()) {
    const index_t st = sp.strided_lengths ? 2 : 1;
    p.lens.assign(sp.key_lengths.size() * static_cast<std::size_t>(st), -99);
    for (std::size_t b = 0; b < sp.key_lengths.size(); ++b)
      p.lens[b * static_cast<std::size_t>(st)] = sp.key_lengths[b];
    p.opt.mask.key_lengths =
        view<const std::int64_t, 1>(p.lens.data(), {static_cast<index_t>(sp.key_lengths.size())}, {st});
  }
  if (sp.bias != bias_kind::none) {
    p.bias = make_buffer<float>(bias_extents(sp), sp.bias_layout);
    fill_uniform(p.bias.v, gen, -2.0, 2.0);
    p.opt.mask.bias = p.bias.cv();
  }
  return p;
}

}  // namespace attnkit_test
