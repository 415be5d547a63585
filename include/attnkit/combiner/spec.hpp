// attnkit: the Combiner plans written out per query (docs/design.md §4.3), the readable specification.
//
// For query i of a sequence of L positions whose first `len` are keys (the rest padding), each
// plan names its direct positions D_i and its groups. These functions build the sets literally,
// position by position; combiner_probabilities uses them to build the explicit distribution and
// the tests use that as the oracle of the fast path (combiner/detail/), which never calls them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/config.hpp"
#include "options.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// One group of query i: its member positions and, for axial plans, the anchor position whose query
/// is the summary query (-1: the summary query and key are pooled from the members).
struct combiner_group {
  std::vector<index_t> members;
  index_t anchor = -1;
};

/// D_i and the groups of one query, every set restricted to the key positions [0, len).
struct combiner_sets {
  std::vector<index_t> direct;
  std::vector<combiner_group> groups;

  void add_direct(index_t j, index_t len) {
    if (j < len) direct.push_back(j);
  }
  /// Adds the group of the positions [lo, hi) (stepping by `step`) that are keys; empty groups are dropped.
  void add_range(index_t lo, index_t hi, index_t len, index_t step = 1, index_t anchor = -1) {
    combiner_group g;
    g.anchor = anchor;
    for (index_t j = lo; j < hi && j < len; j += step) g.members.push_back(j);
    if (!g.members.empty()) groups.push_back(std::move(g));
  }
};

/// The default span of fixed and causal learnable plans: ceil(sqrt(L)) (>= 1).
inline index_t combiner_default_span(index_t L) {
  index_t s = static_cast<index_t>(std::sqrt(static_cast<double>(L)));
  while (s * s < L) ++s;
  while (s > 1 && (s - 1) * (s - 1) >= L) --s;
  return std::max<index_t>(1, s);
}

/// fixed(span s): segment a(j) = floor(j / s). Causal: D_i = own segment up to i, groups = earlier
/// segments. Bidirectional: D_i = own segment, groups = every other segment.
inline combiner_sets fixed_sets(index_t i, index_t L, index_t len, bool causal, index_t s) {
  combiner_sets r;
  const index_t a = i / s, nseg = (L + s - 1) / s;
  for (index_t j = a * s; j < std::min(L, (a + 1) * s) && (!causal || j <= i); ++j) r.add_direct(j, len);
  for (index_t b = 0; b < nseg; ++b)
    if (b < a || (!causal && b > a)) r.add_range(b * s, std::min(L, (b + 1) * s), len);
  return r;
}

/// logsparse: D_i = {i}; for each level c = 2^l with floor(i/c) odd, the block
/// [(floor(i/c) - 1) c, floor(i/c) c). Bidirectional adds, for each level with floor(i/c) even,
/// the block [(floor(i/c) + 1) c, (floor(i/c) + 2) c) clipped to L.
inline combiner_sets logsparse_sets(index_t i, index_t L, index_t len, bool causal) {
  combiner_sets r;
  r.add_direct(i, len);
  for (index_t c = 1; c < 2 * L; c *= 2) {
    const index_t f = i / c;
    if (f % 2 == 1)
      r.add_range((f - 1) * c, f * c, len);
    else if (!causal && (f + 1) * c < L)
      r.add_range((f + 1) * c, std::min(L, (f + 2) * c), len);
  }
  return r;
}

/// axial(rows n, cols m), position i = r m + c. Row-major: D_i = row r (causal: columns <= c);
/// groups = the rows r' < r (causal) or r' != r, each anchored at (r', c). Column-major: the
/// transpose; D_i = column c (causal: rows <= r); groups = columns c' != c anchored at (r, c'),
/// causal restricting column c' to rows <= r when c' < c and rows < r when c' > c, the latter
/// anchored at their last row (r - 1, c'): an anchor after i would make out_i depend on a later query.
inline combiner_sets axial_sets(index_t i, index_t n, index_t m, index_t len, bool causal, bool col_major) {
  combiner_sets s;
  const index_t r = i / m, c = i % m;
  if (!col_major) {
    for (index_t t = 0; t < m && (!causal || t <= c); ++t) s.add_direct(r * m + t, len);
    for (index_t q = 0; q < n; ++q)
      if (q < r || (!causal && q > r)) s.add_range(q * m, (q + 1) * m, len, 1, q * m + c);
  } else {
    for (index_t t = 0; t < n && (!causal || t <= r); ++t) s.add_direct(t * m + c, len);
    for (index_t q = 0; q < m; ++q) {
      if (q == c) continue;
      const index_t rows = !causal ? n : (q < c ? r + 1 : r);
      s.add_range(q, rows * m, len, m, (rows == r ? r - 1 : r) * m + q);
    }
  }
  return s;
}

/// learnable(ids, span s): id[j] is position j's cluster (-1: none, as for padding). Bidirectional:
/// D_i = {j : id[j] = id[i]}, groups = the other clusters. Causal: D_i = own segment up to i plus
/// earlier positions of the own cluster; groups = each earlier segment minus the own cluster.
inline combiner_sets learnable_sets(index_t i, index_t L, index_t len, bool causal, index_t s,
                                    const std::vector<std::int32_t>& id) {
  combiner_sets r;
  const std::int32_t ci = id[static_cast<std::size_t>(i)];
  auto same = [&](index_t j) { return ci >= 0 && id[static_cast<std::size_t>(j)] == ci; };
  if (!causal) {
    for (index_t j = 0; j < len; ++j)
      if (same(j)) r.add_direct(j, len);
    std::int32_t most = -1;
    for (index_t j = 0; j < len; ++j) most = std::max(most, id[static_cast<std::size_t>(j)]);
    for (std::int32_t c = 0; c <= most; ++c) {
      if (c == ci) continue;
      combiner_group g;
      for (index_t j = 0; j < len; ++j)
        if (id[static_cast<std::size_t>(j)] == c) g.members.push_back(j);
      if (!g.members.empty()) r.groups.push_back(std::move(g));
    }
    return r;
  }
  const index_t a = i / s;
  for (index_t j = 0; j < a * s; ++j)
    if (same(j)) r.add_direct(j, len);
  for (index_t j = a * s; j <= i; ++j) r.add_direct(j, len);
  for (index_t b = 0; b < a; ++b) {
    combiner_group g;
    for (index_t j = b * s; j < (b + 1) * s && j < len; ++j)
      if (!same(j)) g.members.push_back(j);
    if (!g.members.empty()) r.groups.push_back(std::move(g));
  }
  (void)L;
  return r;
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
