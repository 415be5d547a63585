// attnkit: what every Combiner plan runs with (docs/design.md §4.3): the per-thread workspace and
// its cache between calls, and the inputs of one (batch, head). One file per plan beside it
// (fixed.hpp, logsparse.hpp, axial.hpp, learnable.hpp); spec.hpp is the per-query statement of
// the same plans.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "engine.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// The scratch of combiner_logsparse, per thread, for chunks of C positions (nlv entries that
/// differ between the positions of a chunk, LC per-chunk levels, nl levels, ne_max entries):
/// named arrays laid out back to back in one buffer (neighbours in memory, as the kernel reads
/// them together).
template <class T>
struct logsparse_scratch {
  T *QR = nullptr, *KR = nullptr,
    *VR = nullptr;                 ///< a chunk's query, key and value rows, copied when strided
  T *QT = nullptr, *KT = nullptr;  ///< its queries and keys as panels (transposed)
  T *KP = nullptr, *VP = nullptr;  ///< key and value panels of the entries that differ between positions
  T* OT = nullptr;                 ///< the chunk's output, transposed
  T *SQ = nullptr, *SK = nullptr,
    *SE = nullptr;                ///< per-chunk levels: pooled queries, keys, local expectations
  T* OS = nullptr;                ///< running weighted values of the shared levels
  T* zero = nullptr;              ///< a row of zeros (padding positions)
  T *X = nullptr, *VM = nullptr;  ///< logits then probabilities per entry, and which lanes see it
  T *xb = nullptr, *sh = nullptr, *pb = nullptr;  ///< one entry's logits, shifts and probabilities
  void size(index_t C, index_t dk, index_t dv, index_t nlv, index_t LC, index_t nl, index_t ne_max) {
    const index_t dm = std::max(dk, dv);
    const std::pair<T**, index_t> parts[] = {{&QR, C * dk},
                                             {&KR, C * dk},
                                             {&VR, C * dv},
                                             {&QT, dk * C},
                                             {&KT, dk * C},
                                             {&KP, dk * C * nlv},
                                             {&VP, dv * C * nlv},
                                             {&OT, dv * C},
                                             {&SQ, LC * C * dk},
                                             {&SK, LC * C * dk},
                                             {&SE, LC * C * dv},
                                             {&OS, nl * dv},
                                             {&zero, dm},
                                             {&X, ne_max * C},
                                             {&VM, ne_max * C},
                                             {&xb, C},
                                             {&sh, C},
                                             {&pb, C}};
    index_t total = 0;
    for (const auto& p : parts) total += p.second;
    buf_.resize(static_cast<std::size_t>(total));
    T* at = buf_.data();
    for (const auto& p : parts) {
      *p.first = at;
      at += p.second;
    }
  }

 private:
  std::vector<T> buf_;
};

/// Per-thread scratch of the plans.
template <class Arch, class T>
struct combiner_workspace {
  combiner_block<Arch, T> blk;
  combiner_block<Arch, T> prefix;  ///< a causal query's prefix of a line, resumed from blk (axial)
  combiner_states<T> states;
  summary_scratch<T> sum;
  logsparse_scratch<T> logsparse;
  std::vector<T> ks, es, pk, pv;
  std::vector<index_t> idx;
  index_t dk, dv;
  combiner_workspace(index_t dk_, index_t dv_) : blk(dk_, dv_ + dk_), prefix(dk_, dv_), dk(dk_), dv(dv_) {}
};

/// Workspaces kept between calls: their buffers (up to L rows of saved states and summaries per
/// head) would otherwise be allocated, page-faulted and zeroed on every call. A call takes one
/// per thread (a matching one from the cache, else a new one) and gives them back at the end;
/// the cache keeps at most `keep` of them.
template <class Arch, class T>
class combiner_workspace_pool {
 public:
  using ws_t = combiner_workspace<Arch, T>;
  static constexpr std::size_t keep = 64;
  explicit combiner_workspace_pool(int n, index_t dk, index_t dv) {
    {
      std::lock_guard<std::mutex> lock(mutex());
      auto& c = cache();
      for (std::size_t i = c.size(); i-- > 0 && static_cast<int>(ws_.size()) < n;)
        if (c[i]->dk == dk && c[i]->dv == dv) {
          ws_.push_back(std::move(c[i]));
          c.erase(c.begin() + static_cast<std::ptrdiff_t>(i));
        }
    }
    while (static_cast<int>(ws_.size()) < n) ws_.push_back(std::make_unique<ws_t>(dk, dv));
  }
  ~combiner_workspace_pool() {
    std::lock_guard<std::mutex> lock(mutex());
    auto& c = cache();
    for (auto& w : ws_)
      if (c.size() < keep) c.push_back(std::move(w));
  }
  combiner_workspace_pool(const combiner_workspace_pool&) = delete;
  combiner_workspace_pool& operator=(const combiner_workspace_pool&) = delete;
  ws_t& operator[](int t) { return *ws_[static_cast<std::size_t>(t)]; }

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static std::vector<std::unique_ptr<ws_t>>& cache() {
    static std::vector<std::unique_ptr<ws_t>> c;
    return c;
  }
  std::vector<std::unique_ptr<ws_t>> ws_;
};

/// The inputs of one (batch b, head h) and where its output goes.
template <class T>
struct combiner_head {
  const attention_shape& s;
  const tensor_view<const T, 4>& q;
  const tensor_view<const T, 4>& k;
  const tensor_view<const T, 4>& v;
  row_view<T> out;
  index_t b, h, hkv, len;
  bool causal;
  combiner_pooling pooling;
  T scale, qscale;

  index_t L() const { return s.Lq; }
  const T* qrow(index_t i) const { return q.ptr(b, h, i, 0); }
  index_t qs() const { return q.stride(3); }
  /// Keys [j0, j0 + n) read in place (values: rows [0, dv) of O^T).
  template <class Arch>
  index_t add_keys(combiner_block<Arch, T>& blk, index_t j0, index_t n, index_t step = 1) const {
    const value_source<T> vs{v.ptr(b, hkv, j0, 0), v.stride(2) * step, v.stride(3), s.dv, 0};
    return blk.add(k.ptr(b, hkv, j0, 0), k.stride(2) * step, k.stride(3), vs, n);
  }
  /// Summary rows [g0, g0 + n) (stepping by `step`) of ks [*, dk] and es [*, dv].
  template <class Arch>
  index_t add_summaries(combiner_block<Arch, T>& blk, const T* ks, const T* es, index_t g0, index_t n,
                        index_t step = 1) const {
    const value_source<T> vs{es + g0 * s.dv, s.dv * step, 1, s.dv, 0};
    return blk.add(ks + g0 * s.dk, s.dk * step, 1, vs, n);
  }
  /// Starts a block over the queries qi(c), c < n, with vrows value rows (values: dv).
  template <class Arch, class Qi, class E>
  void begin(combiner_block<Arch, T>& blk, index_t n, Qi&& qi, E&& kend, index_t vrows = -1) const {
    blk.begin(
        n, [&](index_t c) { return qrow(qi(c)); }, qs(), qscale, kend, vrows < 0 ? s.dv : vrows);
  }
  /// Writes the outputs of the columns c < n to the queries idx(c).
  template <class Arch, class I>
  void finish_all(const combiner_block<Arch, T>& blk, index_t n, I&& idx) const {
    blk.finish_all(
        n, 0, s.dv, [&](index_t c) { return out.row(idx(c)); }, out.se);
  }
  /// The same, merged with the saved states sidx(c) of `st` whose output rows are at `rows`
  /// (combiner_states::finish_merged); with `blend`, averaged with what the outputs hold.
  template <class Arch, class I, class J>
  void finish_merged(const combiner_block<Arch, T>& blk, index_t n, const combiner_states<T>& st, J&& sidx,
                     const T* rows, I&& idx, bool blend = false) const {
    st.finish_merged(
        blk, n, sidx, rows, [&](index_t c) { return out.row(idx(c)); }, out.se, blend);
  }
};

/// Keys of query i in a causal prefix of the keys [j0, j0 + n): min(max(i + 1 - j0, 0), n).
inline index_t causal_count(index_t i, index_t j0, index_t n) {
  return std::clamp<index_t>(i + 1 - j0, 0, n);
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
