// attnkit: argument checks of lambda_attention, and the resolved form of a call.
#pragma once

#include <string>

#include "../../core/attention_args.hpp"
#include "../options.hpp"

ATTNKIT_BEGIN_NAMESPACE
namespace detail {

/// The sizes of one lambda call: Q [B, n, h, k], K [B, m, k, u], V [B, m, v, u], Y [B, n, h * v].
struct lambda_shape {
  index_t B = 0, n = 0, m = 0, h = 0, k = 0, u = 0, v = 0;
  index_t rows = 1, cols = 0;  ///< relative / local: the grid of the n == m positions
  index_t rh = 0, rw = 0;      ///< table extents of a relative / local term
  bool causal = false;
};

template <class T>
lambda_shape check_lambda(const char* where, const tensor_view<const T, 4>& q,
                          const tensor_view<const T, 4>& k, const tensor_view<const T, 4>& v,
                          const lambda_position<T>& pos, const tensor_view<T, 3>& out,
                          const lambda_options& o) {
  lambda_shape s;
  s.B = q.extent(0);
  s.n = q.extent(1);
  s.h = q.extent(2);
  s.k = q.extent(3);
  s.m = k.extent(1);
  s.u = k.extent(3);
  s.v = v.extent(2);
  for (std::size_t d = 0; d < 4; ++d)
    require(q.extent(d) >= 0 && k.extent(d) >= 0 && v.extent(d) >= 0 && (d == 3 || out.extent(d) >= 0), where,
            [&] {
              return std::string("negative extent: queries " + shape_string(q.extents()) + ", keys " +
                                 shape_string(k.extents()) + ", values " + shape_string(v.extents()) +
                                 ", out " + shape_string(out.extents()));
            });
  const std::array<index_t, 4> want_k{s.B, s.m, s.k, s.u};
  require(k.extent(0) == s.B && k.extent(2) == s.k, where, [&] {
    return std::string("keys have shape " + shape_string(k.extents()) +
                       ", expected [b=" + std::to_string(s.B) + ", m, k=" + std::to_string(s.k) +
                       ", u] for queries " + shape_string(q.extents()) + " [b, n, h, k]");
  });
  require(v.extent(0) == s.B && v.extent(1) == s.m && v.extent(3) == s.u, where, [&] {
    return std::string("values have shape " + shape_string(v.extents()) +
                       ", expected [b=" + std::to_string(s.B) + ", m=" + std::to_string(s.m) +
                       ", v, u=" + std::to_string(s.u) + "] for keys " + shape_string(want_k));
  });
  const index_t hv = checked_product(s.h, s.v);  // -1 (no view has it) when h * v overflows
  const std::array<index_t, 3> want_o{s.B, s.n, hv};
  require(out.extents() == want_o, where, [&] {
    return std::string("out has shape " + shape_string(out.extents()) + ", expected " + shape_string(want_o) +
                       " [b, n, h * v]");
  });
  require_view(q, where, "queries");
  require_view(k, where, "keys");
  require_view(v, where, "values");
  check_mask(o.mask, where, s.B, 1, s.n, s.m, /*allow_bias=*/false);
  check_threads(o.threads, where);
  s.causal = o.causal || o.mask.causal != causal_mode::none;
  require(!(o.causal && o.mask.causal == causal_mode::bottom_right && s.n != s.m), where, [&] {
    return std::string(
        "options.causal (top_left) and mask.causal = bottom_right disagree for n = " + std::to_string(s.n) +
        " queries over m = " + std::to_string(s.m) + " context positions");
  });
  switch (pos.kind) {
    case lambda_position_kind::none:
      break;
    case lambda_position_kind::global: {
      const auto& e = pos.embeddings;
      const std::array<index_t, 4> want{s.n, s.m, s.k, s.u};
      require(e.extents() == want, where, [&] {
        return std::string("global embeddings have shape " + shape_string(e.extents()) + ", expected " +
                           shape_string(want) + " [n, m, k, u]");
      });
      require_view(e, where, "global embeddings");
      break;
    }
    case lambda_position_kind::relative:
    case lambda_position_kind::local: {
      const bool rel = pos.kind == lambda_position_kind::relative;
      const char* name = rel ? "relative" : "local";
      require(s.n == s.m, where, [&] {
        return std::string(name) +
               " position term needs the queries and the context on the same positions, got n = " +
               std::to_string(s.n) + " and m = " + std::to_string(s.m);
      });
      s.rows = pos.grid.rows;
      s.cols = pos.grid.cols == 0 && pos.grid.rows == 1 ? s.n : pos.grid.cols;
      require(s.rows >= 1 && grid_covers(s.rows, s.cols, s.n), where, [&] {
        return std::string(name) + " position term has a grid of rows = " + std::to_string(pos.grid.rows) +
               " and cols = " + std::to_string(pos.grid.cols) +
               ": rows * cols must equal n = " + std::to_string(s.n);
      });
      const auto& t = pos.table;
      s.rh = t.extent(0);
      s.rw = t.extent(1);
      if (rel) {
        const std::array<index_t, 4> want{2 * s.rows - 1, std::max<index_t>(2 * s.cols - 1, 0), s.k, s.u};
        require(t.extents() == want, where, [&] {
          return std::string("relative table has shape " + shape_string(t.extents()) + ", expected " +
                             shape_string(want) + " [2H - 1, 2W - 1, k, u] for a " + std::to_string(s.rows) +
                             " x " + std::to_string(s.cols) + " grid");
        });
      } else {
        require(s.rh >= 1 && s.rh % 2 == 1 && s.rw >= 1 && s.rw % 2 == 1 && t.extent(2) == s.k &&
                    t.extent(3) == s.u,
                where, [&] {
                  return std::string("local table has shape " + shape_string(t.extents()) +
                                     ", expected [rh, rw, k=" + std::to_string(s.k) +
                                     ", u=" + std::to_string(s.u) +
                                     "] with odd scopes rh, rw >= 1 (1D: [1, r, k, u])");
                });
      }
      require_view(t, where, rel ? "relative table" : "local table");
      break;
    }
    default:
      require(false, where, "position.kind is not a lambda_position_kind value");
  }
  require_output(where, arg("out", out), arg("queries", q), arg("keys", k), arg("values", v),
                 arg("position embeddings", pos.embeddings), arg("position table", pos.table),
                 arg("mask.key_lengths", o.mask.key_lengths));
  return s;
}

}  // namespace detail
ATTNKIT_END_NAMESPACE
