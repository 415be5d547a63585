// attnkit: what CoAtNet's blocks share (blocks.hpp): activation buffers, batch norms folded into
// packed convolutions, the pooled shortcut, the checked forward on views of any strides.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "../ops.hpp"
#include "../parameters.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// timm's make_divisible(v, 8): round to the nearest multiple of 8, at least 8, and not below 0.9 v.
inline std::int64_t make_divisible(double v, std::int64_t divisor = 8) {
  std::int64_t n = std::max<std::int64_t>(
      divisor, static_cast<std::int64_t>(v + static_cast<double>(divisor) / 2.0) / divisor * divisor);
  if (static_cast<double>(n) < 0.9 * v) n += divisor;
  return n;
}

/// A contiguous NHWC coatnet::activation in a workspace buffer.
template <class T>
struct act_t {
  T* p = nullptr;
  index_t B = 0, H = 0, W = 0, C = 0;
  tensor_view<T, 4> v() const { return tensor_view<T, 4>::contiguous(p, {B, H, W, C}); }
  tensor_view<const T, 4> cv() const { return tensor_view<const T, 4>::contiguous(p, {B, H, W, C}); }
  index_t pixels() const { return H * W; }
  index_t size() const { return B * H * W * C; }
};

/// Activation buffers shared by the blocks of a network (grown, never shrunk, so a second forward
/// pass allocates and zeroes nothing).
template <class T>
class workspace {
 public:
  enum role : int { x0, x1, a, b, c, d, count };
  act_t<T> make(int r, index_t B, index_t H, index_t W, index_t C) {
    std::vector<T>& v = buffers_[static_cast<std::size_t>(r)];
    const index_t n = B * H * W * C;
    if (v.size() < static_cast<std::size_t>(n)) v.resize(static_cast<std::size_t>(n));
    return act_t<T>{v.data(), B, H, W, C};
  }

 private:
  std::array<std::vector<T>, count> buffers_;
};

/// out = act(x * gate[b, c] * scale[c] + shift[c]) on contiguous NHWC [B, pixels, C] (gate may be
/// null: 1; out may be x). Tasks of 64 pixels.
template <class Arch, class T>
void scale_shift(const T* x, const T* gate, const std::vector<T>& scale, const std::vector<T>& shift,
                 coatnet::activation act, T* out, index_t B, index_t pixels, index_t C, int threads) {
  constexpr index_t chunk = 64;
  const index_t per_b = (pixels + chunk - 1) / chunk;
  parallel_for(B * per_b, resolve_threads(threads, B * per_b), [&](index_t task, int) {
    const index_t b = task / per_b, p0 = task % per_b * chunk, p1 = std::min(pixels, p0 + chunk);
    const T* g = gate ? gate + b * C : nullptr;
    const T* s = scale.data();
    const T* t = shift.data();
    for (index_t p = p0; p < p1; ++p) {
      const T* xr = x + (b * pixels + p) * C;
      T* o = out + (b * pixels + p) * C;
      if (g)
        for (index_t c = 0; c < C; ++c) o[c] = xr[c] * g[c] * s[c] + t[c];
      else
        for (index_t c = 0; c < C; ++c) o[c] = xr[c] * s[c] + t[c];
      activate_row<Arch>(act, o, C);
    }
  });
}

/// A batch norm as a per-channel affine map (computed in double).
template <class T>
struct affine {
  std::vector<T> scale, shift;
};
template <class T>
affine<T> batch_norm_affine(const coatnet::parameter_set<T>& ps, const std::string& p, double eps) {
  const std::vector<T>&g = ps.data(p + ".weight"), &b = ps.data(p + ".bias"),
        &m = ps.data(p + ".running_mean"), &v = ps.data(p + ".running_var");
  affine<T> a{std::vector<T>(g.size()), std::vector<T>(g.size())};
  for (std::size_t c = 0; c < g.size(); ++c) {
    const bn_coefficients bn =
        batch_norm_coefficients(static_cast<double>(g[c]), static_cast<double>(b[c]),
                                static_cast<double>(m[c]), static_cast<double>(v[c]), eps);
    a.scale[c] = static_cast<T>(bn.s);
    a.shift[c] = static_cast<T>(bn.t);
  }
  return a;
}

/// Convolution `conv` (".weight", optional ".bias") with batch norm `bn` folded in, packed.
template <class Arch, class T>
packed_weights<T> pack_folded(const coatnet::parameter_set<T>& ps, const std::string& conv,
                              const std::string& bn, double eps) {
  const coatnet::folded_conv<T> f = coatnet::fold_batch_norm<T>(
      ps.template view<4>(conv + ".weight"), ps.optional(conv + ".bias"), ps.template view<1>(bn + ".weight"),
      ps.template view<1>(bn + ".bias"), ps.template view<1>(bn + ".running_mean"),
      ps.template view<1>(bn + ".running_var"), eps);
  return detail::pack_conv<Arch, T>(f.weight.cview(), f.bias.cview());
}
template <class Arch, class T>
packed_weights<T> pack_plain(const coatnet::parameter_set<T>& ps, const std::string& conv) {
  return detail::pack_conv<Arch, T>(ps.template view<4>(conv + ".weight"), ps.optional(conv + ".bias"));
}

/// out = act(conv(x) + bias) [+ residual] with k x k packed weights, stride, padding k / 2.
template <class Arch, class T>
void conv(const act_t<T>& x, const packed_weights<T>& w, index_t k, int stride, coatnet::activation act,
          const act_t<T>& out, const T* residual, int threads) {
  detail::conv2d_packed<Arch, T>(x.cv(), w, k, k, stride, static_cast<int>(k / 2), act, out.v(), residual,
                                 threads);
}

/// The pooled shortcut of a downsampling block: y = expand(pool(x)) (or pool(x) when in == out).
template <class Arch, class T>
void pooled_shortcut(const act_t<T>& x, const packed_weights<T>* expand, const act_t<T>& y, workspace<T>& ws,
                     int r, int threads) {
  const act_t<T> p = ws.make(r, x.B, x.H / 2, x.W / 2, x.C);
  coatnet::avg_pool_2x2<T>(x.cv(), p.v(), threads);
  if (expand)
    conv<Arch>(p, *expand, 1, 1, coatnet::activation::none, y, static_cast<const T*>(nullptr), threads);
  else
    std::copy(p.p, p.p + p.size(), y.p);
}

/// Runs block.run(x, y) on views of any strides: x and out are copied through contiguous buffers
/// when they are not contiguous NHWC.
template <class Block, class T>
void forward_views(Block& block, const tensor_view<const T, 4>& x, const tensor_view<T, 4>& out,
                   workspace<T>& ws, std::vector<T>& xin, std::vector<T>& yout, int threads) {
  auto contiguous = [](const auto& v) {
    index_t s = 1;
    for (std::size_t d = 4; d-- > 0;) {
      if (v.extent(d) > 1 && v.stride(d) != s) return false;
      s *= v.extent(d);
    }
    return true;
  };
  act_t<T> a{nullptr, x.extent(0), x.extent(1), x.extent(2), x.extent(3)};
  if (contiguous(x)) {
    a.p = const_cast<T*>(x.data());  // Block::run only reads its input
  } else {
    xin.resize(static_cast<std::size_t>(a.size()));
    a.p = xin.data();
    for (index_t b = 0; b < a.B; ++b)
      for (index_t h = 0; h < a.H; ++h)
        for (index_t w = 0; w < a.W; ++w)
          for (index_t c = 0; c < a.C; ++c) a.p[((b * a.H + h) * a.W + w) * a.C + c] = x(b, h, w, c);
  }
  act_t<T> y{nullptr, out.extent(0), out.extent(1), out.extent(2), out.extent(3)};
  const bool direct = contiguous(out);
  if (direct) {
    y.p = out.data();
  } else {
    yout.resize(static_cast<std::size_t>(y.size()));
    y.p = yout.data();
  }
  block.run(a, y, ws, threads);
  if (!direct)
    for (index_t b = 0; b < y.B; ++b)
      for (index_t h = 0; h < y.H; ++h)
        for (index_t w = 0; w < y.W; ++w)
          for (index_t c = 0; c < y.C; ++c) out(b, h, w, c) = y.p[((b * y.H + h) * y.W + w) * y.C + c];
}

/// Checks a block's forward arguments: x [B, H, W, in] with H, W even when it downsamples, out
/// [B, H', W', out]; every parameter loaded.
template <class T>
void check_block_views(const tensor_view<const T, 4>& x, const tensor_view<T, 4>& out, index_t in,
                       index_t cout, bool down, const char* where) {
  require_view(x, where, "x");
  require(x.extent(3) == in && x.extent(1) >= 1 && x.extent(2) >= 1 &&
              (!down || (x.extent(1) % 2 == 0 && x.extent(2) % 2 == 0)),
          where, [&] {
            return "x has shape " + shape_string(x.extents()) + ", expected [B, H, W, " + std::to_string(in) +
                   "]" + (down ? " with H and W even (the block halves the grid)" : "");
          });
  const index_t oh = down ? x.extent(1) / 2 : x.extent(1), ow = down ? x.extent(2) / 2 : x.extent(2);
  check_shape(out, std::array<index_t, 4>{x.extent(0), oh, ow, cout}, where, "out");
  check_output(out, where, arg("x", x));
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
