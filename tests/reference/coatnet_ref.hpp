// attnkit tests: naive fp64 references of CoAtNet's ops and blocks on NHWC tensors, written from
// the PyTorch / timm definitions (nn.Conv2d with zero padding and groups, inference BatchNorm2d,
// activations, timm's SEModule, LayerNorm over channels, AvgPool2d(2, 2), MbConvBlock and
// TransformerBlock2d with RelPosBias), one loop per definition, no folding or fusion.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include <attnkit/coatnet/blocks.hpp>
#include <attnkit/coatnet/network.hpp>

#include "common.hpp"

namespace attnkit_test {

using dtensor = attnkit::tensor<double, 4>;
using dvec = attnkit::tensor<double, 1>;

/// A tensor of uniform values in [lo, hi) that floats represent exactly (the same inputs in every
/// precision).
template <std::size_t R>
attnkit::tensor<double, R> rnd(const std::array<index_t, R>& e, test_rng& g, double lo = -1, double hi = 1) {
  attnkit::tensor<double, R> t(e);
  for (index_t i = 0; i < t.size(); ++i)
    t.data()[i] = static_cast<double>(static_cast<float>(g.uniform(lo, hi)));
  return t;
}

inline double act_ref(attnkit::coatnet::activation a, double x) {
  using attnkit::coatnet::activation;
  switch (a) {
    case activation::none:
      return x;
    case activation::relu:
      return std::max(x, 0.0);
    case activation::silu:
      return x / (1 + std::exp(-x));
    case activation::gelu:
      return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
    case activation::gelu_tanh:
      return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case activation::sigmoid:
      return 1 / (1 + std::exp(-x));
    case activation::tanh:
      return std::tanh(x);
  }
  return x;
}

/// nn.Conv2d(groups) on NHWC x, weight [Cout, Cin / groups, kh, kw], zero padding, then act.
inline dtensor conv_ref(const dtensor& x, const dtensor& w, const dvec* bias, int stride, int pad, int groups,
                        attnkit::coatnet::activation act = attnkit::coatnet::activation::none) {
  const index_t B = x.extent(0), H = x.extent(1), W = x.extent(2);
  const index_t Co = w.extent(0), cg = w.extent(1), kh = w.extent(2), kw = w.extent(3);
  const index_t OH = (H + 2 * pad - kh) / stride + 1, OW = (W + 2 * pad - kw) / stride + 1;
  const index_t opg = Co / groups;
  dtensor o({B, OH, OW, Co});
  for_each_index(o.extents(), [&](const std::array<index_t, 4>& ix) {
    const index_t b = ix[0], oy = ix[1], ox = ix[2], co_ = ix[3], g = co_ / opg;
    double s = bias ? (*bias)(co_) : 0.0;
    for (index_t i = 0; i < cg; ++i)
      for (index_t ky = 0; ky < kh; ++ky)
        for (index_t kx = 0; kx < kw; ++kx) {
          const index_t iy = oy * stride + ky - pad, ixx = ox * stride + kx - pad;
          if (iy < 0 || iy >= H || ixx < 0 || ixx >= W) continue;
          s += w(co_, i, ky, kx) * x(b, iy, ixx, g * cg + i);
        }
    o(b, oy, ox, co_) = act_ref(act, s);
  });
  return o;
}

/// Mean over the pixels: [B, C].
inline attnkit::tensor<double, 2> global_pool_ref(const dtensor& x) {
  const index_t H = x.extent(1), W = x.extent(2);
  attnkit::tensor<double, 2> gp({x.extent(0), x.extent(3)});
  for_each_index(x.extents(), [&](const std::array<index_t, 4>& ix) {
    gp(ix[0], ix[3]) += at(x.cview(), ix) / static_cast<double>(H * W);
  });
  return gp;
}

/// timm's SEModule: x * sigmoid(fc2(act(fc1(mean(x))))), fc1 [R, C, 1, 1], fc2 [C, R, 1, 1].
inline dtensor se_ref(const dtensor& x, const dtensor& w1, const dvec& b1, const dtensor& w2, const dvec& b2,
                      attnkit::coatnet::activation act) {
  const index_t B = x.extent(0), C = x.extent(3), R = w1.extent(0);
  const attnkit::tensor<double, 2> gp = global_pool_ref(x);
  dtensor o(x.extents());
  for (index_t b = 0; b < B; ++b) {
    std::vector<double> r(static_cast<std::size_t>(R)), gate(static_cast<std::size_t>(C));
    for (index_t j = 0; j < R; ++j) {
      double s = b1(j);
      for (index_t c = 0; c < C; ++c) s += w1(j, c, 0, 0) * gp(b, c);
      r[static_cast<std::size_t>(j)] = act_ref(act, s);
    }
    for (index_t c = 0; c < C; ++c) {
      double s = b2(c);
      for (index_t j = 0; j < R; ++j) s += w2(c, j, 0, 0) * r[static_cast<std::size_t>(j)];
      gate[static_cast<std::size_t>(c)] = 1 / (1 + std::exp(-s));
    }
    for (index_t y = 0; y < x.extent(1); ++y)
      for (index_t xx = 0; xx < x.extent(2); ++xx)
        for (index_t c = 0; c < C; ++c) o(b, y, xx, c) = x(b, y, xx, c) * gate[static_cast<std::size_t>(c)];
  }
  return o;
}

/// LayerNorm over the channels of every pixel (biased variance).
inline dtensor ln_ref(const dtensor& x, const dvec& gamma, const dvec& beta, double eps) {
  const index_t C = x.extent(3);
  dtensor o(x.extents());
  for (index_t b = 0; b < x.extent(0); ++b)
    for (index_t y = 0; y < x.extent(1); ++y)
      for (index_t xx = 0; xx < x.extent(2); ++xx) {
        double m = 0, v = 0;
        for (index_t c = 0; c < C; ++c) m += x(b, y, xx, c) / static_cast<double>(C);
        for (index_t c = 0; c < C; ++c)
          v += (x(b, y, xx, c) - m) * (x(b, y, xx, c) - m) / static_cast<double>(C);
        for (index_t c = 0; c < C; ++c)
          o(b, y, xx, c) = (x(b, y, xx, c) - m) / std::sqrt(v + eps) * gamma(c) + beta(c);
      }
  return o;
}

/// AvgPool2d(2, 2) (floor).
inline dtensor pool_ref(const dtensor& x) {
  dtensor o({x.extent(0), x.extent(1) / 2, x.extent(2) / 2, x.extent(3)});
  for_each_index(o.extents(), [&](const std::array<index_t, 4>& ix) {
    const index_t b = ix[0], y = ix[1], xx = ix[2], c = ix[3];
    o(b, y, xx, c) = (x(b, 2 * y, 2 * xx, c) + x(b, 2 * y, 2 * xx + 1, c) + x(b, 2 * y + 1, 2 * xx, c) +
                      x(b, 2 * y + 1, 2 * xx + 1, c)) /
                     4;
  });
  return o;
}

/// Per-channel inference batch norm, then act.
inline dtensor bn_ref(const dtensor& x, const dvec& g, const dvec& b, const dvec& m, const dvec& v,
                      double eps, attnkit::coatnet::activation act = attnkit::coatnet::activation::none) {
  dtensor o(x.extents());
  for_each_index(x.extents(), [&](const std::array<index_t, 4>& ix) {
    const index_t c = ix[3];
    at(o.view(), ix) = act_ref(act, (at(x.cview(), ix) - m(c)) / std::sqrt(v(c) + eps) * g(c) + b(c));
  });
  return o;
}

/// Named fp64 parameters of a block (timm names inside the block), shaped as PyTorch's.
struct block_params {
  std::map<std::string, attnkit::tensor<double, 4>> t;  // every parameter as rank 4 (padded with 1s)
  const dtensor& operator[](const std::string& n) const {
    const auto it = t.find(n);
    if (it == t.end()) FAIL("block_params: no parameter " << n);
    return it->second;
  }
  bool has(const std::string& n) const { return t.count(n) != 0; }
  dvec vec(const std::string& n) const {
    const dtensor& a = (*this)[n];
    dvec v({a.size()});
    std::copy(a.data(), a.data() + a.size(), v.data());
    return v;
  }
  dtensor bn(const dtensor& x, const std::string& p, double eps, attnkit::coatnet::activation act) const {
    return bn_ref(x, vec(p + ".weight"), vec(p + ".bias"), vec(p + ".running_mean"), vec(p + ".running_var"),
                  eps, act);
  }
  dtensor conv(const dtensor& x, const std::string& p, int stride, int groups,
               attnkit::coatnet::activation act = attnkit::coatnet::activation::none) const {
    const dvec b = has(p + ".bias") ? vec(p + ".bias") : dvec();
    const dtensor& w = (*this)[p + ".weight"];
    return conv_ref(x, w, has(p + ".bias") ? &b : nullptr, stride, static_cast<int>(w.extent(2) / 2), groups,
                    act);
  }
};

inline dtensor add_ref(const dtensor& a, const dtensor& b) {
  dtensor o(a.extents());
  for (index_t i = 0; i < a.size(); ++i) o.data()[i] = a.data()[i] + b.data()[i];
  return o;
}

/// timm's MbConvBlock.forward with the given config (in, out from x and the parameters).
inline dtensor mbconv_ref(const dtensor& x, const block_params& p, const attnkit::coatnet::mbconv_config& c,
                          bool down) {
  using attnkit::coatnet::activation;
  const double eps = c.norm_eps;
  dtensor shortcut = x;
  if (down) {
    shortcut = pool_ref(x);
    if (p.has("shortcut.expand.weight")) shortcut = p.conv(shortcut, "shortcut.expand", 1, 1);
  }
  dtensor t = p.bn(x, "pre_norm", eps, c.pre_norm_act ? c.act : activation::none);
  if (down && c.stride == attnkit::coatnet::stride_placement::pool) t = pool_ref(t);
  t = p.bn(p.conv(t, "conv1_1x1", 1, 1), "norm1", eps, c.act);
  const int dw_stride = down && c.stride == attnkit::coatnet::stride_placement::depthwise ? 2 : 1;
  t = p.conv(t, "conv2_kxk", dw_stride, static_cast<int>(t.extent(3)));
  const std::string se = c.se_early ? "se_early" : "se";
  auto apply_se = [&](const dtensor& v) {
    return se_ref(v, p[se + ".fc1.weight"], p.vec(se + ".fc1.bias"), p[se + ".fc2.weight"],
                  p.vec(se + ".fc2.bias"), c.se_act);
  };
  if (c.se_early) t = apply_se(t);
  t = p.bn(t, "norm2", eps, c.act);
  if (!c.se_early) t = apply_se(t);
  return add_ref(p.conv(t, "conv3_1x1", 1, 1), shortcut);
}

/// timm's TransformerBlock2d.forward (Attention2d head-first, RelPosBias query minus key).
inline dtensor transformer_ref(const dtensor& x, const block_params& p,
                               const attnkit::coatnet::transformer_config& c, bool down) {
  using attnkit::coatnet::activation;
  dtensor shortcut = x, a;
  if (down) {
    shortcut = pool_ref(x);
    if (p.has("shortcut.expand.weight")) shortcut = p.conv(shortcut, "shortcut.expand", 1, 1);
    a = pool_ref(ln_ref(x, p.vec("norm1.norm.weight"), p.vec("norm1.norm.bias"), c.norm_eps));
  } else {
    a = ln_ref(x, p.vec("norm1.weight"), p.vec("norm1.bias"), c.norm_eps);
  }
  const dtensor qkv = p.conv(a, "attn.qkv", 1, 1);
  const index_t B = a.extent(0), H = a.extent(1), W = a.extent(2), L = H * W;
  const index_t A = qkv.extent(3) / 3, dh = c.dim_head, heads = A / dh;
  const dtensor& table = p["attn.rel_pos.relative_position_bias_table"];  // [(2H-1)(2W-1), heads, 1, 1]
  dtensor att({B, H, W, A});
  const double scale = 1 / std::sqrt(static_cast<double>(dh));
  std::vector<double> s(static_cast<std::size_t>(L));
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < heads; ++h)
      for (index_t i = 0; i < L; ++i) {
        const index_t yi = i / W, xi = i % W;
        double mx = -1e300, z = 0;
        for (index_t j = 0; j < L; ++j) {
          const index_t yj = j / W, xj = j % W;
          double d = 0;
          for (index_t e = 0; e < dh; ++e)
            d += qkv(b, yi, xi, h * 3 * dh + e) * qkv(b, yj, xj, h * 3 * dh + dh + e);
          const index_t idx = (yi - yj + H - 1) * (2 * W - 1) + (xi - xj + W - 1);
          s[static_cast<std::size_t>(j)] = d * scale + table(idx, h, 0, 0);
          mx = std::max(mx, s[static_cast<std::size_t>(j)]);
        }
        for (double& v : s) z += (v = std::exp(v - mx));
        for (index_t e = 0; e < dh; ++e) {
          double o = 0;
          for (index_t j = 0; j < L; ++j)
            o += s[static_cast<std::size_t>(j)] * qkv(b, j / W, j % W, h * 3 * dh + 2 * dh + e);
          att(b, yi, xi, h * dh + e) = o / z;
        }
      }
  const dtensor y = add_ref(shortcut, p.conv(att, "attn.proj", 1, 1));
  const dtensor n = ln_ref(y, p.vec("norm2.weight"), p.vec("norm2.bias"), c.norm_eps);
  return add_ref(y, p.conv(p.conv(n, "mlp.fc1", 1, 1, c.act), "mlp.fc2", 1, 1));
}

/// The reduced configs of tools/coatnet_golden.py (see tests/data/coatnet_golden.md).
inline attnkit::coatnet::network_config tiny_config(bool rw) {
  attnkit::coatnet::network_config c = rw ? attnkit::coatnet::network_config::coatnet_0_rw_224()
                                          : attnkit::coatnet::network_config::coatnet_0();
  c.image_rows = 64;
  c.image_cols = 96;
  c.num_classes = 10;
  c.widths = {16, 24, 32, 48};
  c.depths = {2, 2, 2, 2};
  c.stem_width = rw ? std::array<std::int64_t, 2>{8, 16} : std::array<std::int64_t, 2>{16, 16};
  c.transformer.dim_head = 8;
  if (!rw) c.head_hidden = 48;
  return c;
}

}  // namespace attnkit_test
