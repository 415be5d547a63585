// attnkit benchmarks (bench/measure.hpp): the Combiner plans the benchmarks and the tour run, and their cost.
#pragma once

#include "attention.hpp"

namespace attnkit_bench {
// ----------------------------------------------------------------------------------------------
// Combiner attention (combiner_attention): the plans the benchmarks and the tour run, their cost

/// The Combiner plans of the benchmarks and the tour (axial has three orders).
enum class combiner_kind { fixed, logsparse, axial_row, axial_col, axial_mixture, learnable };

/// Every combiner_kind, in the order the benchmarks and the tour list them.
inline std::vector<combiner_kind> combiner_kinds() {
  return {combiner_kind::fixed,     combiner_kind::logsparse,     combiner_kind::axial_row,
          combiner_kind::axial_col, combiner_kind::axial_mixture, combiner_kind::learnable};
}

/// "fixed", "logsparse", "axial_row", "axial_col", "axial_mixture", "learnable": the <plan> of the
/// benchmark names combiner/<plan>/d:64/L:.../causal:.../threads:...
inline const char* combiner_kind_name(combiner_kind k) {
  switch (k) {
    case combiner_kind::fixed:
      return "fixed";
    case combiner_kind::logsparse:
      return "logsparse";
    case combiner_kind::axial_row:
      return "axial_row";
    case combiner_kind::axial_col:
      return "axial_col";
    case combiner_kind::axial_mixture:
      return "axial_mixture";
    case combiner_kind::learnable:
      return "learnable";
  }
  return "?";
}

/// ceil(sqrt(n)) for n >= 1: the default span of fixed plans and the cluster count of the benchmarks.
inline index_t ceil_sqrt(index_t n) {
  index_t r = static_cast<index_t>(std::sqrt(static_cast<double>(n)));
  while (r * r < n) ++r;
  while (r > 1 && (r - 1) * (r - 1) >= n) --r;
  return std::max<index_t>(1, r);
}

/// The axial grid of the benchmarks for L: rows = the largest divisor of L not above sqrt(L),
/// cols = L / rows. For a power of two: rows = 2^floor(log2(L) / 2), so rows = cols = sqrt(L) when
/// L is a power of 4 (1024: 32 x 32), else cols = 2 rows (2048: 32 x 64).
inline std::pair<index_t, index_t> combiner_axial_grid(index_t L) {
  index_t rows = 1;
  for (index_t r = 1; r * r <= L; ++r)
    if (L % r == 0) rows = r;
  return {rows, L / std::max<index_t>(1, rows)};
}

/// One Combiner plan resolved for one problem [B, H, L, d]: span, grid and, for learnable, the
/// routing centroids and the clusters they give (the cost model reads them).
struct combiner_case {
  combiner_kind kind = combiner_kind::fixed;
  index_t L = 0;
  index_t span = 0;                      ///< fixed, causal learnable: the segment length, ceil(sqrt(L))
  index_t rows = 0, cols = 0;            ///< axial: the grid
  index_t clusters = 0;                  ///< learnable: C
  attnkit::tensor<float, 3> centroids;   ///< learnable: [Hkv, C, dk] (k-means of the keys)
  attnkit::tensor<std::int32_t, 3> ids;  ///< learnable: [B, Hkv, L] clusters of the keys

  /// "fixed s=32", "logsparse", "axial_row 32x64", "learnable C=32".
  std::string describe() const {
    std::string d = combiner_kind_name(kind);
    if (kind == combiner_kind::fixed) d += " s=" + std::to_string(span);
    if (rows > 0) d += " " + std::to_string(rows) + "x" + std::to_string(cols);
    if (kind == combiner_kind::learnable) d += " C=" + std::to_string(clusters);
    return d;
  }
};

/// Resolves `kind` for the keys of `p` (Lq == Lk). learnable: C = ceil(sqrt(L)) centroids from
/// combiner::kmeans(k, C, `iterations`, `seed`) over p.k (outside any timing), then the clusters
/// they route every key to.
inline std::shared_ptr<const combiner_case> make_combiner_case(combiner_kind kind, const attention_problem& p,
                                                               int iterations = 3, std::uint64_t seed = 1) {
  auto c = std::make_shared<combiner_case>();
  c->kind = kind;
  c->L = p.spec.Lk;
  c->span = ceil_sqrt(c->L);
  if (kind == combiner_kind::axial_row || kind == combiner_kind::axial_col ||
      kind == combiner_kind::axial_mixture) {
    const auto g = combiner_axial_grid(c->L);
    c->rows = g.first;
    c->cols = g.second;
  }
  if (kind == combiner_kind::learnable) {
    c->clusters = ceil_sqrt(c->L);
    c->centroids = attnkit::combiner::kmeans(p.k.cview(), c->clusters, iterations, seed);
    c->ids = attnkit::combiner::assign_clusters(p.k.cview(), c->centroids.cview());
  }
  return c;
}

/// (query, key or summary) pairs, members of pooled summaries and members of anchored summaries of
/// one query head: the counts combiner_flops weighs.
struct combiner_counts {
  double pairs = 0.0;     ///< (query i, direct key j in D_i) and (query i, group of i) pairs
  double pooled = 0.0;    ///< members of the distinct pooled groups some query uses (groups of >= 2)
  double anchored = 0.0;  ///< members of the distinct anchored (axial) groups some query uses
};

/// The counts of fixed(span s) over L positions (docs/design.md §4.3).
inline combiner_counts combiner_fixed_counts(index_t L, index_t s, bool causal) {
  combiner_counts r;
  const index_t nseg = (L + s - 1) / s;
  for (index_t a = 0; a < nseg; ++a) {
    const double n = static_cast<double>(std::min(L, (a + 1) * s) - a * s);
    if (causal) {
      r.pairs += n * (n + 1) / 2 + n * static_cast<double>(a);  // own segment up to i, earlier segments
      if (a + 1 < nseg && n >= 2) r.pooled += n;                // used by the later segments
    } else {
      r.pairs += n * (n + static_cast<double>(nseg - 1));
      if (nseg > 1 && n >= 2) r.pooled += n;
    }
  }
  return r;
}

/// The counts of logsparse over L positions: one direct key, one group per level c = 2^l where
/// floor(i/c) is odd (bidirectional also where it is even and the next block exists).
inline combiner_counts combiner_logsparse_counts(index_t L, bool causal) {
  combiner_counts r;
  r.pairs = static_cast<double>(L);
  for (index_t c = 1; c < L; c *= 2) {
    const index_t nblocks = (L + c - 1) / c;
    for (index_t t = 0; t < nblocks; ++t) {
      const index_t n = std::min(L, (t + 1) * c) - t * c;  // members of block t
      // queries of block t + 1 use block t when t is even; queries of block t - 1 use it when t is
      // odd (bidirectional)
      index_t users = 0;
      if (t % 2 == 0 && t + 1 < nblocks) users += std::min(L, (t + 2) * c) - (t + 1) * c;
      if (!causal && t % 2 == 1) users += c;
      r.pairs += static_cast<double>(users);
      if (users > 0 && n >= 2) r.pooled += static_cast<double>(n);
    }
  }
  return r;
}

/// The counts of axial(rows n, cols m) in one order (col_major: the transpose).
inline combiner_counts combiner_axial_counts(index_t n, index_t m, bool causal, bool col_major) {
  combiner_counts r;
  const double N = static_cast<double>(n), M = static_cast<double>(m), L = N * M;
  auto members = [](double groups, double size) { return size >= 2 ? groups * size : 0.0; };
  if (!col_major) {
    // D_i: row r (causal: columns <= c); groups: rows r' != r (causal: r' < r) seen from column c,
    // one anchored group per (row r', column c) that some query uses
    r.pairs = causal ? N * M * (M + 1) / 2 + M * N * (N - 1) / 2 : L * (M + N - 1);
    r.anchored = n < 2 ? 0.0 : members(causal ? (N - 1) * M : L, M);
  } else {
    // D_i: column c (causal: rows <= r); groups: columns c' != c seen from row r; causal: rows <= r
    // of columns c' < c (c groups), rows < r of columns c' > c (m - 1 - c groups when r > 0)
    r.pairs =
        causal ? M * N * (N + 1) / 2 + N * M * (M - 1) / 2 + (N - 1) * M * (M - 1) / 2 : L * (N + M - 1);
    if (m >= 2) {
      if (!causal) {
        r.anchored = members(L, N);
      } else {  // (row r, column c'): rows <= r of columns 0 .. m-2, rows < r of columns 1 .. m-1
        for (index_t row = 0; row < n; ++row)
          r.anchored +=
              members(M - 1, static_cast<double>(row + 1)) + members(M - 1, static_cast<double>(row));
      }
    }
  }
  return r;
}

/// The counts of learnable over the clusters id[0..L) of one (batch, kv head) (docs/design.md §4.3).
inline combiner_counts combiner_learnable_counts(const std::vector<std::int32_t>& id, index_t s,
                                                 bool causal) {
  combiner_counts r;
  const index_t L = static_cast<index_t>(id.size());
  std::int32_t nc = 0;
  for (auto c : id) nc = std::max(nc, c + 1);
  std::vector<double> size(static_cast<std::size_t>(nc), 0.0);
  if (!causal) {
    for (auto c : id) size[static_cast<std::size_t>(c)] += 1;
    double K = 0;
    for (double n : size) K += n > 0 ? 1 : 0;
    for (double n : size) {
      r.pairs += n * (n + K - 1);
      if (K > 1 && n >= 2) r.pooled += n;
    }
    return r;
  }
  const index_t nseg = (L + s - 1) / s;
  // pairs: own segment up to i + earlier positions of the own cluster + the earlier segments that
  // hold some other cluster (a segment made only of cluster c is no group of c's queries)
  std::vector<double> before(static_cast<std::size_t>(nc), 0.0), pure(static_cast<std::size_t>(nc), 0.0);
  std::vector<std::pair<std::int32_t, index_t>> seg;  // (cluster, count) of one segment
  auto segment_counts = [&](index_t a) {
    seg.clear();
    std::vector<std::int32_t> ids(id.begin() + a * s, id.begin() + std::min(L, (a + 1) * s));
    std::sort(ids.begin(), ids.end());
    for (auto c : ids)
      if (seg.empty() || seg.back().first != c)
        seg.emplace_back(c, 1);
      else
        ++seg.back().second;
  };
  for (index_t a = 0; a < nseg; ++a) {
    const index_t j0 = a * s, j1 = std::min(L, j0 + s);
    for (index_t i = j0; i < j1; ++i) {
      const auto c = static_cast<std::size_t>(id[static_cast<std::size_t>(i)]);
      r.pairs += static_cast<double>(i - j0 + 1) + before[c] + static_cast<double>(a) - pure[c];
    }
    segment_counts(a);
    for (const auto& e : seg) before[static_cast<std::size_t>(e.first)] += static_cast<double>(e.second);
    if (seg.size() == 1) pure[static_cast<std::size_t>(seg[0].first)] += 1;
  }
  // distinct groups: segment b minus cluster c for every cluster c of a later query; a c absent
  // from b leaves the whole segment (one group shared by all such c)
  std::vector<char> later(static_cast<std::size_t>(nc), 0);
  index_t nlater = 0;
  for (index_t b = nseg - 2; b >= 0; --b) {
    for (index_t j = (b + 1) * s; j < std::min(L, (b + 2) * s); ++j) {
      auto& f = later[static_cast<std::size_t>(id[static_cast<std::size_t>(j)])];
      if (!f) ++nlater;
      f = 1;
    }
    segment_counts(b);
    const index_t nb = std::min(L, (b + 1) * s) - b * s;
    index_t present_later = 0;
    for (const auto& e : seg) {
      if (!later[static_cast<std::size_t>(e.first)]) continue;
      ++present_later;
      if (nb - e.second >= 2) r.pooled += static_cast<double>(nb - e.second);
    }
    if (nlater > present_later && nb >= 2) r.pooled += static_cast<double>(nb);
  }
  return r;
}

/// FLOPs of combiner_attention under `c` over query heads [0, heads) (all batch entries; a
/// multiple of the group) of `s`:
///   2 (dk + dv)   per (query, direct key) and (query, summary) pair: the score and the value
///   2 (dk + dv)   per member of each distinct pooled group a query uses (fixed, logsparse,
///                 learnable): its local expectation e = sum_j softmax_j(q~ . k_j) v_j, per query head
///   (4 dk + 2 dv) per member of each distinct anchored group (axial): e and k~ = sum_j w_j k_j
///   2 dk C        per key (learnable): routing to C centroids, per (batch, kv head)
/// i.e. the products the plan needs (docs/design.md §4.3), whatever the kernel computes beyond them
/// (masked entries of whole blocks, summaries nobody uses). A one-member group is its member:
/// no products. Not counted: pooling, exponentials, masking, k-means (outside the call).
inline double combiner_flops(const attention_spec& s, const combiner_case& c, index_t heads) {
  const bool causal = s.is_causal();
  const double dk = static_cast<double>(s.dk), dv = static_cast<double>(s.dv);
  auto weigh = [&](const combiner_counts& n) {
    return 2.0 * (dk + dv) * (n.pairs + n.pooled) + (4.0 * dk + 2.0 * dv) * n.anchored;
  };
  const index_t L = s.Lq, G = std::max<index_t>(1, s.group());
  double per_head = 0.0;  // every query head costs the same (all but learnable)
  switch (c.kind) {
    case combiner_kind::fixed:
      per_head = weigh(combiner_fixed_counts(L, c.span, causal));
      break;
    case combiner_kind::logsparse:
      per_head = weigh(combiner_logsparse_counts(L, causal));
      break;
    case combiner_kind::axial_row:
    case combiner_kind::axial_col:
    case combiner_kind::axial_mixture:
      if (c.kind != combiner_kind::axial_col)
        per_head += weigh(combiner_axial_counts(c.rows, c.cols, causal, false));
      if (c.kind != combiner_kind::axial_row)
        per_head += weigh(combiner_axial_counts(c.rows, c.cols, causal, true));
      break;
    case combiner_kind::learnable: {
      double f = 0.0;
      std::vector<std::int32_t> id(static_cast<std::size_t>(L));
      for (index_t b = 0; b < s.B; ++b)
        for (index_t hk = 0; hk < heads / G; ++hk) {
          for (index_t j = 0; j < L; ++j) id[static_cast<std::size_t>(j)] = c.ids(b, hk, j);
          f += static_cast<double>(G) * weigh(combiner_learnable_counts(id, c.span, causal)) +
               2.0 * dk * static_cast<double>(c.clusters) * static_cast<double>(L);
        }
      return f;
    }
  }
  return per_head * static_cast<double>(heads * s.B);
}

/// combiner_flops as the cost model of plan_head_samples / register_attention.
inline head_flops_fn combiner_flops_fn(std::shared_ptr<const combiner_case> c) {
  return [c](const attention_spec& s, index_t heads) { return combiner_flops(s, *c, heads); };
}

/// combiner_attention<simd::native, float> under `c` as an attention_fn: causal, key_lengths, scale
/// and threads come from the attention_options of the call (a bias is rejected), pooling from
/// `base`. learnable routes with the centroids of the call's first k.extent(1) kv heads: the
/// slices of plan_head_samples start at head 0.
inline attention_fn combiner_attention_fn(std::shared_ptr<const combiner_case> c,
                                          const attnkit::combiner_options& base = {}) {
  return [c, base](const f4_cview& q, const f4_cview& k, const f4_cview& v, const f4_view& out,
                   const attnkit::attention_options& o) {
    attnkit::combiner_options co = base;
    co.causal = o.mask.causal != attnkit::causal_mode::none;
    co.mask = o.mask;
    co.mask.causal = attnkit::causal_mode::none;
    co.scale = o.scale;
    co.threads = o.threads;
    namespace cb = attnkit::combiner;
    switch (c->kind) {
      case combiner_kind::fixed:
        attnkit::combiner_attention(q, k, v, out, cb::fixed{c->span}, co);
        break;
      case combiner_kind::logsparse:
        attnkit::combiner_attention(q, k, v, out, cb::logsparse{}, co);
        break;
      case combiner_kind::axial_row:
        attnkit::combiner_attention(q, k, v, out, cb::axial{c->rows, c->cols, cb::axial_order::row_major},
                                    co);
        break;
      case combiner_kind::axial_col:
        attnkit::combiner_attention(q, k, v, out, cb::axial{c->rows, c->cols, cb::axial_order::col_major},
                                    co);
        break;
      case combiner_kind::axial_mixture:
        attnkit::combiner_attention(q, k, v, out, cb::axial{c->rows, c->cols, cb::axial_order::mixture}, co);
        break;
      case combiner_kind::learnable: {
        const auto& mu = c->centroids;
        cb::learnable plan;
        plan.centroids = attnkit::tensor_view<const float, 3>(
            mu.data(), {k.extent(1), mu.extent(1), mu.extent(2)}, mu.view().strides());
        attnkit::combiner_attention(q, k, v, out, plan, co);
        break;
      }
    }
  };
}

}  // namespace attnkit_bench
