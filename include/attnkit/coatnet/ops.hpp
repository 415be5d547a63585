// attnkit: CoAtNet's inference building blocks on NHWC tensors (docs/design.md §4.5): convolutions (dense,
// depthwise), batch-norm folding, activations, squeeze-excitation, layer norm, pooling and the
// linear head. PyTorch semantics throughout, so timm's weights load as they are: convolution
// weights [Cout, Cin / groups, kh, kw], linear weights [out, in], optional biases [Cout] (an empty
// view means none). Activations x [B, H, W, C] with any strides; out is caller memory that must not
// overlap the inputs (squeeze_excitation, layer_norm and activate also accept out == x).
// Padding is symmetric and explicit, as timm's coatnet_0_rw builds its convs (3x3 stride 1 or 2:
// padding 1; output extent floor((H + 2 padding - k) / stride) + 1). timm's padding='same' (the
// TF-ported weights) pads asymmetrically on stride 2 and is not supported here.
// Every op validates before it writes (invalid_argument naming the argument), takes threads
// (0: all) and gives the same bits for any thread count: work is split into fixed tasks.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "detail/ops_kernels.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// Inference batch norm of one channel as y = s x + t, in double: s = gamma / sqrt(var + eps),
/// t = (b - mean) s + beta for an input that already carries a bias b (0: none). Every folding of
/// a batch norm (into a convolution, or as a per-channel affine map) computes it here.
struct bn_coefficients {
  double s, t;
};
inline bn_coefficients batch_norm_coefficients(double gamma, double beta, double mean, double var, double eps,
                                               double b = 0.0) {
  const double s = gamma / std::sqrt(var + eps);
  return {s, (b - mean) * s + beta};
}

}  // namespace detail

namespace coatnet {

/// A convolution with batch norm folded in: weight [Cout, ...] as the convolution's, bias [Cout].
template <class T>
struct folded_conv {
  tensor<T, 4> weight;
  tensor<T, 1> bias;
};

/// Folds inference batch norm into the convolution before it (computed in double):
/// w' = w gamma / sqrt(var + eps), b' = (b - mean) gamma / sqrt(var + eps) + beta, per output
/// channel. bias may be empty (0); gamma, beta, mean, var are [Cout].
template <class T>
folded_conv<T> fold_batch_norm(tensor_view<const T, 4> weight, tensor_view<const T, 1> bias,
                               tensor_view<const T, 1> gamma, tensor_view<const T, 1> beta,
                               tensor_view<const T, 1> mean, tensor_view<const T, 1> var, double eps = 1e-5) {
  constexpr const char* where = "attnkit::coatnet::fold_batch_norm";
  detail::require_view(weight, where, "weight");
  const std::array<index_t, 1> c{weight.extent(0)};
  if (bias.data() || bias.extent(0) != 0) detail::check_shape(bias, c, where, "bias");
  detail::check_shape(gamma, c, where, "gamma");
  detail::check_shape(beta, c, where, "beta");
  detail::check_shape(mean, c, where, "mean");
  detail::check_shape(var, c, where, "var");
  detail::require(eps >= 0, where, "eps must be >= 0");
  folded_conv<T> f{tensor<T, 4>(weight.extents()), tensor<T, 1>({weight.extent(0)})};
  for (index_t o = 0; o < weight.extent(0); ++o) {
    const detail::bn_coefficients bn = detail::batch_norm_coefficients(
        static_cast<double>(gamma(o)), static_cast<double>(beta(o)), static_cast<double>(mean(o)),
        static_cast<double>(var(o)), eps, bias.data() ? static_cast<double>(bias(o)) : 0.0);
    const double s = bn.s;
    f.bias(o) = static_cast<T>(bn.t);
    for (index_t i = 0; i < weight.extent(1); ++i)
      for (index_t y = 0; y < weight.extent(2); ++y)
        for (index_t x = 0; x < weight.extent(3); ++x)
          f.weight(o, i, y, x) = static_cast<T>(static_cast<double>(weight(o, i, y, x)) * s);
  }
  return f;
}

}  // namespace coatnet

namespace detail {

inline index_t conv_extent(index_t in, index_t k, int stride, int padding) {
  const index_t span = in + 2 * padding - k;
  return span < 0 ? -1 : span / stride + 1;
}

template <class T>
void check_bias(const tensor_view<const T, 1>& bias, index_t n, const char* where) {
  if (bias.data() || bias.extent(0) != 0) check_shape(bias, std::array<index_t, 1>{n}, where, "bias");
}

/// Checks x, weight [Cout, cin_w, kh, kw], bias, stride, padding and out; returns out's extents.
template <class T>
void check_conv(const tensor_view<const T, 4>& x, const tensor_view<const T, 4>& w,
                const tensor_view<const T, 1>& bias, const tensor_view<T, 4>& out, int stride, int padding,
                index_t cin_w, index_t cout, const char* where) {
  require_view(x, where, "x");
  require(stride >= 1 && padding >= 0, where, [&] {
    return "stride = " + std::to_string(stride) + ", padding = " + std::to_string(padding) +
           " (expected stride >= 1, padding >= 0)";
  });
  require(w.extent(2) >= 1 && w.extent(3) >= 1, where,
          [&] { return "weight has shape " + shape_string(w.extents()) + ", expected kh, kw >= 1"; });
  check_shape(w, std::array<index_t, 4>{cout, cin_w, w.extent(2), w.extent(3)}, where, "weight");
  check_bias(bias, cout, where);
  const index_t oh = conv_extent(x.extent(1), w.extent(2), stride, padding);
  const index_t ow = conv_extent(x.extent(2), w.extent(3), stride, padding);
  require(oh >= 0 && ow >= 0, where, [&] {
    return "x has shape " + shape_string(x.extents()) + ": smaller than the kernel " +
           shape_string(w.extents()) + " with padding " + std::to_string(padding);
  });
  check_shape(out, std::array<index_t, 4>{x.extent(0), oh, ow, cout}, where, "out");
  check_output(out, where, arg("x", x), arg("weight", w), arg("bias", bias));
}

/// Convolution weights [Cout, Cin, kh, kw] and bias (empty: 0) packed in the im2col order of
/// conv2d_packed: product index p = (ky kw + kx) Cin + i.
template <class Arch, class T>
packed_weights<T> pack_conv(const tensor_view<const T, 4>& w, const tensor_view<const T, 1>& bias) {
  const index_t cin = w.extent(1), kw = w.extent(3);
  return pack_weights<Arch, T>(
      w.extent(0), cin * w.extent(2) * kw,
      [&](index_t o, index_t p) {
        const index_t kk = p / cin;
        return w(o, p % cin, kk / kw, kk % kw);
      },
      [&](index_t o) { return bias.data() ? bias(o) : T(0); });
}

/// Linear weights [out, in] and bias (empty: 0) packed for the block product.
template <class Arch, class T>
packed_weights<T> pack_linear(const tensor_view<const T, 2>& w, const tensor_view<const T, 1>& bias) {
  return pack_weights<Arch, T>(
      w.extent(0), w.extent(1), [&](index_t o, index_t i) { return w(o, i); },
      [&](index_t o) { return bias.data() ? bias(o) : T(0); });
}

/// True when the pixels of x (b, h, w) are equally spaced: a 1x1 convolution reads x in place.
template <class T>
bool uniform_pixels(const tensor_view<const T, 4>& x) {
  const index_t ps = x.stride(2);
  return (x.extent(1) <= 1 || x.stride(1) == x.extent(2) * ps) &&
         (x.extent(0) <= 1 || x.stride(0) == x.extent(1) * x.extent(2) * ps);
}

/// out = act(conv(x, pw) + bias) [+ residual]: the checked convolution of conv2d on packed weights
/// (kh x kw, stride, padding) over chunks of 64 output pixels (im2col of the chunk, or x in place
/// for a 1x1 convolution on equally spaced pixels). residual, when not null, is a contiguous
/// [B, OH, OW, Cout] buffer added after the activation (it may be out's own memory).
template <class Arch, class T>
void conv2d_packed(const tensor_view<const T, 4>& x, const packed_weights<T>& pw, index_t kh, index_t kw,
                   int stride, int padding, coatnet::activation act, const tensor_view<T, 4>& out,
                   const T* residual, int threads) {
  if (out.empty()) return;
  const index_t cin = x.extent(3), K = pw.k, cout = pw.n;
  const index_t B = x.extent(0), H = x.extent(1), Wd = x.extent(2);
  const index_t OH = out.extent(1), OW = out.extent(2), npix = B * OH * OW;
  const bool direct = kh == 1 && kw == 1 && stride == 1 && padding == 0 && uniform_pixels(x);
  constexpr index_t chunk = 64;
  const index_t nchunks = (npix + chunk - 1) / chunk;
  // Few pixels (the late stages at small batches): tasks also split the output channels, in blocks
  // of 256 (fixed, not by thread count; the bits do not depend on the split either).
  const index_t cb = nchunks >= 8 ? pw.np : std::min<index_t>(pw.np, 256);
  const index_t ncb = (pw.np + cb - 1) / cb, ntasks = nchunks * ncb;
  const int nt = resolve_threads(threads, ntasks);
  struct scratch {
    std::vector<T> a, c;
  };
  std::vector<scratch> ws(static_cast<std::size_t>(nt));
  parallel_for(ntasks, nt, [&](index_t task, int t) {
    scratch& s = ws[static_cast<std::size_t>(t)];
    const index_t p0 = task / ncb * chunk, rows = std::min(chunk, npix - p0);
    const index_t j0 = task % ncb * cb, j1 = std::min(pw.np, j0 + cb);
    const T* a = nullptr;
    index_t a_rs = K, a_cs = 1;
    if (direct) {
      a = x.ptr(p0 / (OH * OW), p0 / OW % OH, p0 % OW, 0);
      a_rs = x.stride(2);
      a_cs = x.stride(3);
    } else {
      s.a.resize(static_cast<std::size_t>(rows * K));
      for (index_t r = 0; r < rows; ++r) {
        const index_t p = p0 + r, b = p / (OH * OW), oy = p / OW % OH, ox = p % OW;
        T* ar = s.a.data() + r * K;
        for (index_t ky = 0; ky < kh; ++ky) {
          const index_t iy = oy * stride + ky - padding;
          for (index_t kx = 0; kx < kw; ++kx, ar += cin) {
            const index_t ix = ox * stride + kx - padding;
            if (iy < 0 || iy >= H || ix < 0 || ix >= Wd) {
              std::fill(ar, ar + cin, T(0));
              continue;
            }
            const T* src = x.ptr(b, iy, ix, 0);
            const index_t cs = x.stride(3);
            for (index_t i = 0; i < cin; ++i) ar[i] = src[i * cs];
          }
        }
      }
      a = s.a.data();
    }
    auto row_ptr = [&](index_t r) {
      const index_t p = p0 + r;
      return out.ptr(p / (OH * OW), p / OW % OH, p % OW, 0);
    };
    if (residual)
      packed_product<Arch>(
          rows, a, a_rs, a_cs, pw, act, s.c, row_ptr, out.stride(3),
          [&](index_t r) { return residual + (p0 + r) * cout; }, j0, j1);
    else
      packed_product<Arch>(rows, a, a_rs, a_cs, pw, act, s.c, row_ptr, out.stride(3), no_residual<T>{}, j0,
                           j1);
  });
}

/// The squeeze-excitation gates [B, C] of x (see squeeze_excitation): in double, per image.
template <class T>
std::vector<T> se_gates(const tensor_view<const T, 4>& x, const tensor_view<const T, 4>& w_reduce,
                        const tensor_view<const T, 1>& b_reduce, const tensor_view<const T, 4>& w_expand,
                        const tensor_view<const T, 1>& b_expand, coatnet::activation act, int threads) {
  const index_t B = x.extent(0), H = x.extent(1), Wd = x.extent(2), C = x.extent(3), R = w_reduce.extent(0);
  std::vector<T> gate(static_cast<std::size_t>(B * C));
  parallel_for(B, resolve_threads(threads, B), [&](index_t b, int) {
    std::vector<double> s(static_cast<std::size_t>(C), 0.0), r(static_cast<std::size_t>(R));
    for (index_t h = 0; h < H; ++h)
      for (index_t w = 0; w < Wd; ++w) {
        const T* p = x.ptr(b, h, w, 0);
        for (index_t c = 0; c < C; ++c)
          s[static_cast<std::size_t>(c)] += static_cast<double>(p[c * x.stride(3)]);
      }
    for (double& v : s) v /= static_cast<double>(H * Wd);
    for (index_t j = 0; j < R; ++j) {
      double a = static_cast<double>(b_reduce(j));
      for (index_t c = 0; c < C; ++c)
        a += static_cast<double>(w_reduce(j, c, 0, 0)) * s[static_cast<std::size_t>(c)];
      r[static_cast<std::size_t>(j)] = activate_scalar(act, a);
    }
    for (index_t c = 0; c < C; ++c) {
      double a = static_cast<double>(b_expand(c));
      for (index_t j = 0; j < R; ++j)
        a += static_cast<double>(w_expand(c, j, 0, 0)) * r[static_cast<std::size_t>(j)];
      gate[static_cast<std::size_t>(b * C + c)] = static_cast<T>(1.0 / (1.0 + std::exp(-a)));
    }
  });
  return gate;
}

}  // namespace detail

namespace coatnet {

/// Dense 2D convolution (groups = 1): out[b, oy, ox, o] = act(bias[o] + sum_{i, ky, kx}
/// weight[o, i, ky, kx] x[b, oy stride + ky - padding, ox stride + kx - padding, i]), zero padding.
/// x [B, H, W, Cin], weight [Cout, Cin, kh, kw], bias [Cout] or empty, out [B, OH, OW, Cout] with
/// OH = floor((H + 2 padding - kh) / stride) + 1 (likewise OW). A block product over chunks of 64
/// output pixels (im2col of the chunk, [64, kh kw Cin], times the repacked weights).
template <class Arch = simd::native, class T>
void conv2d(tensor_view<const detail::identity_t<T>, 4> x, tensor_view<const detail::identity_t<T>, 4> weight,
            tensor_view<const detail::identity_t<T>, 1> bias, tensor_view<T, 4> out, int stride, int padding,
            activation act = activation::none, int threads = 0) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "conv2d: float or double");
  constexpr const char* where = "attnkit::coatnet::conv2d";
  const index_t cin = x.extent(3), cout = weight.extent(0);
  detail::check_conv(x, weight, bias, out, stride, padding, cin, cout, where);
  detail::check_activation(act, where);
  detail::check_threads(threads, where);
  if (out.empty()) return;
  detail::conv2d_packed<Arch, T>(x, detail::pack_conv<Arch, T>(weight, bias), weight.extent(2),
                                 weight.extent(3), stride, padding, act, out, nullptr, threads);
}

/// Depthwise 2D convolution (groups = C): out[b, oy, ox, c] = act(bias[c] + sum_{ky, kx}
/// weight[c, 0, ky, kx] x[b, oy stride + ky - padding, ox stride + kx - padding, c]), zero padding.
/// x [B, H, W, C], weight [C, 1, kh, kw], bias [C] or empty, out [B, OH, OW, C] (OH, OW as conv2d).
/// Vectorized over channels; one task per output row.
template <class Arch = simd::native, class T>
void depthwise_conv2d(tensor_view<const detail::identity_t<T>, 4> x,
                      tensor_view<const detail::identity_t<T>, 4> weight,
                      tensor_view<const detail::identity_t<T>, 1> bias, tensor_view<T, 4> out, int stride,
                      int padding, activation act = activation::none, int threads = 0) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "depthwise_conv2d: float or double");
  constexpr const char* where = "attnkit::coatnet::depthwise_conv2d";
  const index_t C = x.extent(3);
  detail::check_conv(x, weight, bias, out, stride, padding, 1, C, where);
  detail::check_activation(act, where);
  detail::check_threads(threads, where);
  if (out.empty()) return;
  using Bt = simd::batch<T, Arch>;
  constexpr index_t W = Bt::size;
  const index_t kh = weight.extent(2), kw = weight.extent(3), CP = (C + W - 1) / W * W;
  std::vector<T> wp(static_cast<std::size_t>(kh * kw * CP), T(0)), bp(static_cast<std::size_t>(CP), T(0));
  for (index_t c = 0; c < C; ++c) {
    for (index_t ky = 0; ky < kh; ++ky)
      for (index_t kx = 0; kx < kw; ++kx)
        wp[static_cast<std::size_t>((ky * kw + kx) * CP + c)] = weight(c, 0, ky, kx);
    if (bias.data()) bp[static_cast<std::size_t>(c)] = bias(c);
  }
  const index_t B = x.extent(0), H = x.extent(1), Wd = x.extent(2), OH = out.extent(1), OW = out.extent(2);
  const index_t WP = Wd + 2 * padding;  // padded input row (pixels of CP channels)
  const index_t ntasks = B * OH;
  const int nt = resolve_threads(threads, ntasks);
  struct scratch {
    std::vector<T> in, row;
  };
  std::vector<scratch> ws(static_cast<std::size_t>(nt));
  parallel_for(ntasks, nt, [&](index_t task, int t) {
    scratch& s = ws[static_cast<std::size_t>(t)];
    const index_t b = task / OH, oy = task % OH;
    // the kh input rows of this output row, zero padded, channels contiguous
    s.in.assign(static_cast<std::size_t>(kh * WP * CP), T(0));
    for (index_t ky = 0; ky < kh; ++ky) {
      const index_t iy = oy * stride + ky - padding;
      if (iy < 0 || iy >= H) continue;
      for (index_t ix = 0; ix < Wd; ++ix) {
        T* dst = s.in.data() + (ky * WP + ix + padding) * CP;
        const T* src = x.ptr(b, iy, ix, 0);
        const index_t cs = x.stride(3);
        for (index_t c = 0; c < C; ++c) dst[c] = src[c * cs];
      }
    }
    s.row.resize(static_cast<std::size_t>(OW * CP));
    for (index_t ox = 0; ox < OW; ++ox) {
      for (index_t c0 = 0; c0 < CP; c0 += W) {
        Bt acc = Bt::load(bp.data() + c0);
        for (index_t ky = 0; ky < kh; ++ky) {
          const T* in = s.in.data() + (ky * WP + ox * stride) * CP + c0;
          const T* wk = wp.data() + ky * kw * CP + c0;
          for (index_t kx = 0; kx < kw; ++kx) acc = fma(Bt::load(in + kx * CP), Bt::load(wk + kx * CP), acc);
        }
        acc.store(s.row.data() + ox * CP + c0);
      }
    }
    for (index_t ox = 0; ox < OW; ++ox) {
      T* r = s.row.data() + ox * CP;
      detail::activate_row<Arch>(act, r, C);
      T* o = out.ptr(b, oy, ox, 0);
      const index_t os = out.stride(3);
      for (index_t c = 0; c < C; ++c) o[c * os] = r[c];
    }
  });
}

/// Linear layer (PyTorch nn.Linear): out[n, o] = act(bias[o] + sum_i weight[o, i] x[n, i]).
/// x [N, in], weight [out, in], bias [out] or empty, out [N, out]; any strides. A block product
/// over chunks of 64 rows of x read in place.
template <class Arch = simd::native, class T>
void linear(tensor_view<const detail::identity_t<T>, 2> x, tensor_view<const detail::identity_t<T>, 2> weight,
            tensor_view<const detail::identity_t<T>, 1> bias, tensor_view<T, 2> out,
            activation act = activation::none, int threads = 0) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "linear: float or double");
  constexpr const char* where = "attnkit::coatnet::linear";
  detail::require_view(x, where, "x");
  const index_t n = x.extent(0), in = x.extent(1), no = weight.extent(0);
  detail::check_shape(weight, std::array<index_t, 2>{no, in}, where, "weight");
  detail::check_bias(bias, no, where);
  detail::check_shape(out, std::array<index_t, 2>{n, no}, where, "out");
  detail::check_output(out, where, detail::arg("x", x), detail::arg("weight", weight),
                       detail::arg("bias", bias));
  detail::check_activation(act, where);
  detail::check_threads(threads, where);
  if (out.empty()) return;
  const detail::packed_weights<T> pw = detail::pack_linear<Arch, T>(weight, bias);
  constexpr index_t chunk = 64;
  const index_t ntasks = (n + chunk - 1) / chunk;
  const int nt = resolve_threads(threads, ntasks);
  std::vector<std::vector<T>> ws(static_cast<std::size_t>(nt));
  parallel_for(ntasks, nt, [&](index_t task, int t) {
    const index_t r0 = task * chunk, rows = std::min(chunk, n - r0);
    detail::packed_product<Arch>(
        rows, x.ptr(r0, 0), x.stride(0), x.stride(1), pw, act, ws[static_cast<std::size_t>(t)],
        [&](index_t r) { return out.ptr(r0 + r, 0); }, out.stride(1));
  });
}

/// out = act(x) elementwise; x, out [B, H, W, C] (out may be x itself). One task per row (b, h).
template <class Arch = simd::native, class T>
void activate(tensor_view<const detail::identity_t<T>, 4> x, tensor_view<T, 4> out, activation act,
              int threads = 0) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "activate: float or double");
  constexpr const char* where = "attnkit::coatnet::activate";
  detail::require_view(x, where, "x");
  detail::check_shape(out, x.extents(), where, "out");
  detail::check_output(out, where, detail::arg("x", detail::unless_in_place(x, out)));
  detail::check_activation(act, where);
  detail::check_threads(threads, where);
  if (out.empty()) return;
  const index_t B = x.extent(0), H = x.extent(1), Wd = x.extent(2), C = x.extent(3);
  const int nt = resolve_threads(threads, B * H);
  std::vector<std::vector<T>> ws(static_cast<std::size_t>(nt));
  parallel_for(B * H, nt, [&](index_t task, int t) {
    std::vector<T>& row = ws[static_cast<std::size_t>(t)];
    row.resize(static_cast<std::size_t>(Wd * C));
    const index_t b = task / H, h = task % H;
    for (index_t w = 0; w < Wd; ++w)
      for (index_t c = 0; c < C; ++c) row[static_cast<std::size_t>(w * C + c)] = x(b, h, w, c);
    detail::activate_row<Arch>(act, row.data(), Wd * C);
    for (index_t w = 0; w < Wd; ++w)
      for (index_t c = 0; c < C; ++c) out(b, h, w, c) = row[static_cast<std::size_t>(w * C + c)];
  });
}

/// Global average pooling: out[b, c] = (sum_{h, w} x[b, h, w, c]) / (H W), summed in double in
/// raster order. x [B, H, W, C] with H W >= 1, out [B, C].
template <class T>
void global_avg_pool(tensor_view<const detail::identity_t<T>, 4> x, tensor_view<T, 2> out, int threads = 0) {
  constexpr const char* where = "attnkit::coatnet::global_avg_pool";
  detail::require_view(x, where, "x");
  detail::require(x.extent(1) >= 1 && x.extent(2) >= 1, where, [&] {
    return "x has shape " + detail::shape_string(x.extents()) + ", expected H, W >= 1";
  });
  detail::check_shape(out, std::array<index_t, 2>{x.extent(0), x.extent(3)}, where, "out");
  detail::check_output(out, where, detail::arg("x", x));
  detail::check_threads(threads, where);
  const index_t H = x.extent(1), Wd = x.extent(2), C = x.extent(3);
  parallel_for(x.extent(0), resolve_threads(threads, x.extent(0)), [&](index_t b, int) {
    std::vector<double> s(static_cast<std::size_t>(C), 0.0);
    for (index_t h = 0; h < H; ++h)
      for (index_t w = 0; w < Wd; ++w) {
        const T* p = x.ptr(b, h, w, 0);
        for (index_t c = 0; c < C; ++c)
          s[static_cast<std::size_t>(c)] += static_cast<double>(p[c * x.stride(3)]);
      }
    const double inv = 1.0 / static_cast<double>(H * Wd);
    for (index_t c = 0; c < C; ++c) out(b, c) = static_cast<T>(s[static_cast<std::size_t>(c)] * inv);
  });
}

/// Squeeze-excitation as timm's SEModule (create_attn("se") in MbConvBlock): s = mean_{h, w} x,
/// r = act(w_reduce s + b_reduce), g = sigmoid(w_expand r + b_expand), out = x * g per channel.
/// x, out [B, H, W, C] (out may be x itself), w_reduce [R, C, 1, 1], b_reduce [R], w_expand
/// [C, R, 1, 1], b_expand [C]. act is the model's: timm's "_rw" coatnets use relu unless the
/// config sets conv_attn_act_layer (the paper-style configs: silu); R is the weights' (timm:
/// make_divisible(0.25 mid_chs)). The squeeze runs in double.
template <class Arch = simd::native, class T>
void squeeze_excitation(tensor_view<const detail::identity_t<T>, 4> x,
                        tensor_view<const detail::identity_t<T>, 4> w_reduce,
                        tensor_view<const detail::identity_t<T>, 1> b_reduce,
                        tensor_view<const detail::identity_t<T>, 4> w_expand,
                        tensor_view<const detail::identity_t<T>, 1> b_expand, tensor_view<T, 4> out,
                        activation act = activation::relu, int threads = 0) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "squeeze_excitation: float or double");
  constexpr const char* where = "attnkit::coatnet::squeeze_excitation";
  detail::require_view(x, where, "x");
  detail::require(x.extent(1) >= 1 && x.extent(2) >= 1, where, [&] {
    return "x has shape " + detail::shape_string(x.extents()) + ", expected H, W >= 1";
  });
  const index_t B = x.extent(0), H = x.extent(1), Wd = x.extent(2), C = x.extent(3), R = w_reduce.extent(0);
  detail::check_shape(w_reduce, std::array<index_t, 4>{R, C, 1, 1}, where, "w_reduce");
  detail::check_shape(b_reduce, std::array<index_t, 1>{R}, where, "b_reduce");
  detail::check_shape(w_expand, std::array<index_t, 4>{C, R, 1, 1}, where, "w_expand");
  detail::check_shape(b_expand, std::array<index_t, 1>{C}, where, "b_expand");
  detail::check_shape(out, x.extents(), where, "out");
  detail::check_output(out, where, detail::arg("x", detail::unless_in_place(x, out)),
                       detail::arg("w_reduce", w_reduce), detail::arg("b_reduce", b_reduce),
                       detail::arg("w_expand", w_expand), detail::arg("b_expand", b_expand));
  detail::check_activation(act, where);
  detail::check_threads(threads, where);
  if (out.empty()) return;
  // every gate first (out may be x), then the scaling
  const std::vector<T> gate = detail::se_gates(x, w_reduce, b_reduce, w_expand, b_expand, act, threads);
  parallel_for(B * H, resolve_threads(threads, B * H), [&](index_t task, int) {
    const index_t b = task / H, h = task % H;
    const T* g = gate.data() + b * C;
    for (index_t w = 0; w < Wd; ++w) {
      const T* p = x.ptr(b, h, w, 0);
      T* o = out.ptr(b, h, w, 0);
      for (index_t c = 0; c < C; ++c) o[c * out.stride(3)] = p[c * x.stride(3)] * g[c];
    }
  });
}

/// Layer norm over the channels (nn.LayerNorm(C, eps)): per pixel, mean and biased variance over
/// C, out = (x - mean) / sqrt(var + eps) gamma + beta. x, out [B, H, W, C] (out may be x itself),
/// gamma, beta [C]. PyTorch's default eps is 1e-5; timm's coatnet transformer blocks use 1e-5 or
/// 1e-6 by config: pass it. Statistics in double.
template <class T>
void layer_norm(tensor_view<const detail::identity_t<T>, 4> x,
                tensor_view<const detail::identity_t<T>, 1> gamma,
                tensor_view<const detail::identity_t<T>, 1> beta, tensor_view<T, 4> out, double eps = 1e-5,
                int threads = 0) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "layer_norm: float or double");
  constexpr const char* where = "attnkit::coatnet::layer_norm";
  detail::require_view(x, where, "x");
  const index_t B = x.extent(0), H = x.extent(1), Wd = x.extent(2), C = x.extent(3);
  detail::check_shape(gamma, std::array<index_t, 1>{C}, where, "gamma");
  detail::check_shape(beta, std::array<index_t, 1>{C}, where, "beta");
  detail::check_shape(out, x.extents(), where, "out");
  detail::check_output(out, where, detail::arg("x", detail::unless_in_place(x, out)),
                       detail::arg("gamma", gamma), detail::arg("beta", beta));
  detail::require(eps > 0 || (eps == 0 && C > 0), where, "eps must be > 0");
  detail::check_threads(threads, where);
  if (out.empty()) return;
  parallel_for(B * H, resolve_threads(threads, B * H), [&](index_t task, int) {
    const index_t b = task / H, h = task % H;
    for (index_t w = 0; w < Wd; ++w) {
      const T* p = x.ptr(b, h, w, 0);
      T* o = out.ptr(b, h, w, 0);
      const index_t xs = x.stride(3), os = out.stride(3);
      double m = 0, v = 0;
      for (index_t c = 0; c < C; ++c) m += static_cast<double>(p[c * xs]);
      m /= static_cast<double>(C);
      for (index_t c = 0; c < C; ++c) {
        const double d = static_cast<double>(p[c * xs]) - m;
        v += d * d;
      }
      const double inv = 1.0 / std::sqrt(v / static_cast<double>(C) + eps);
      for (index_t c = 0; c < C; ++c)
        o[c * os] =
            static_cast<T>((static_cast<double>(p[c * xs]) - m) * inv * static_cast<double>(gamma(c)) +
                           static_cast<double>(beta(c)));
    }
  });
}

/// 2x2 average pooling, stride 2 (nn.AvgPool2d(2, 2): no padding, ceil_mode false, so
/// count_include_pad never matters): out[b, i, j, c] = (x[2i, 2j] + x[2i, 2j+1] + x[2i+1, 2j] +
/// x[2i+1, 2j+1]) / 4 summed in that order in T. x [B, H, W, C], out [B, H / 2, W / 2, C] (floor:
/// an odd last row or column is dropped).
template <class T>
void avg_pool_2x2(tensor_view<const detail::identity_t<T>, 4> x, tensor_view<T, 4> out, int threads = 0) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "avg_pool_2x2: float or double");
  constexpr const char* where = "attnkit::coatnet::avg_pool_2x2";
  detail::require_view(x, where, "x");
  const index_t B = x.extent(0), OH = x.extent(1) / 2, OW = x.extent(2) / 2, C = x.extent(3);
  detail::check_shape(out, std::array<index_t, 4>{B, OH, OW, C}, where, "out");
  detail::check_output(out, where, detail::arg("x", x));
  detail::check_threads(threads, where);
  if (out.empty()) return;
  parallel_for(B * OH, resolve_threads(threads, B * OH), [&](index_t task, int) {
    const index_t b = task / OH, i = task % OH, xs = x.stride(3), os = out.stride(3);
    for (index_t j = 0; j < OW; ++j) {
      const T* p00 = x.ptr(b, 2 * i, 2 * j, 0);
      const T* p01 = x.ptr(b, 2 * i, 2 * j + 1, 0);
      const T* p10 = x.ptr(b, 2 * i + 1, 2 * j, 0);
      const T* p11 = x.ptr(b, 2 * i + 1, 2 * j + 1, 0);
      T* o = out.ptr(b, i, j, 0);
      for (index_t c = 0; c < C; ++c)
        o[c * os] = (p00[c * xs] + p01[c * xs] + p10[c * xs] + p11[c * xs]) * T(0.25);
    }
  });
}

}  // namespace coatnet
ATTNKIT_END_NAMESPACE
