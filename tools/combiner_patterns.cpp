// combiner_patterns: pictures of the attention patterns of the Combiner plans.
//
//   combiner_patterns                      # L = 64, d = 16: text pictures of every plan
//   combiner_patterns --L 16               # the small pictures of the README
//   combiner_patterns --L 64 out/          # and out/<plan>_<mode>.pgm, 4 x 4 pixels per cell
//
// For each plan (fixed with span ceil(sqrt L), logsparse, axial row_major / col_major / mixture on
// the grid rows x cols with rows the largest divisor of L not above sqrt(L), learnable with given
// cluster_ids: ceil(sqrt L) clusters drawn at random) and each mode (bidirectional, causal), on one
// head of random q and k (N(0, 1) entries, seeded):
// * the structure comes from the plan's sets (attnkit/combiner/spec.hpp, detail::*_sets): which keys
//   a query attends to directly (D_i) and which it reaches through a group summary;
// * the intensities come from combiner_probabilities: the explicit distribution p(j|i) that
//   combiner_attention implies.
// Text: one line per query i, one character per key j: '#' j in D_i (p(j|i) = e^{s_ij} / Z_i),
// '+' j reached through a summary (p(j|i) = the group's share times j's weight inside the group),
// '.' p(j|i) = 0. A cell where the sets and p disagree (p > 0 outside the sets, or p == 0 inside)
// prints '!' and makes the program exit with status 1 (docs/design.md §4.3: p(j|i) > 0 exactly on V_i).
// PGM (binary P5, row i = query i, column j = key j): black where p = 0, else grey levels on a log
// scale from the picture's smallest p > 0 (dark grey) to its largest p (white).
#include <attnkit/attnkit.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

using attnkit::index_t;
namespace cb = attnkit::combiner;
namespace detail = attnkit::detail;

namespace {

struct options {
  index_t L = 64, d = 16;
  std::uint64_t seed = 1;
  int scale = 4;    ///< PGM pixels per cell side
  int text = -1;    ///< -1: text pictures when L <= 64
  int columns = 2;  ///< text pictures side by side
  std::string dir;  ///< PGM output directory (none: text only)
};

/// What key j is to query i under a plan: not seen, in a group, or direct.
enum cell : char { none = 0, group = 1, direct = 2 };

/// One picture: p(j|i) of one head and the structure of the plan's sets, both L x L.
struct pattern {
  std::string name, mode;
  std::string note;  ///< e.g. the grid or the clusters
  std::string title() const { return note.empty() ? name : name + " " + note; }
  std::vector<double> p;
  std::vector<char> kind;
};

/// Marks the sets of query i in row i of `kind` (direct wins over group when plans are mixed).
void mark(const detail::combiner_sets& s, index_t i, index_t L, std::vector<char>& kind) {
  char* row = kind.data() + i * L;
  for (const auto& g : s.groups)
    for (index_t j : g.members) row[j] = std::max<char>(row[j], group);
  for (index_t j : s.direct) row[j] = direct;
}

/// The largest divisor of L not above sqrt(L): the rows of the axial grid.
index_t grid_rows(index_t L) {
  index_t rows = 1;
  for (index_t r = 1; r * r <= L; ++r)
    if (L % r == 0) rows = r;
  return rows;
}

/// Text: pictures side by side under two header lines (plan, mode), one line per query.
void print_text(const std::vector<const pattern*>& pics, index_t L) {
  std::size_t w = static_cast<std::size_t>(L);
  for (const pattern* pic : pics) w = std::max({w, pic->title().size(), pic->mode.size()});
  auto put = [&](std::string& line, std::string cell) {
    if (!line.empty()) line += "   ";
    cell.resize(w, ' ');
    line += cell;
  };
  auto print = [](std::string line) {
    while (!line.empty() && line.back() == ' ') line.pop_back();
    std::printf("%s\n", line.c_str());
  };
  std::string title, mode;
  for (const pattern* pic : pics) {
    put(title, pic->title());
    put(mode, pic->mode);
  }
  print(title);
  print(mode);
  for (index_t i = 0; i < L; ++i) {
    std::string line;
    for (const pattern* pic : pics) {
      std::string row;
      for (index_t j = 0; j < L; ++j) {
        const double p = pic->p[static_cast<std::size_t>(i * L + j)];
        const char k = pic->kind[static_cast<std::size_t>(i * L + j)];
        row += (k == none) != (p == 0.0) ? '!' : k == direct ? '#' : k == group ? '+' : '.';
      }
      put(line, row);
    }
    print(line);
  }
}

/// Writes p as a binary PGM, `scale` x `scale` pixels per cell, log-scale grey levels.
bool write_pgm(const std::string& path, const pattern& pic, index_t L, int scale) {
  double lo = 1.0, hi = 0.0;
  for (double p : pic.p)
    if (p > 0) {
      lo = std::min(lo, p);
      hi = std::max(hi, p);
    }
  const double span = hi > lo ? std::log(hi / lo) : 1.0;
  const index_t W = L * scale;
  std::vector<unsigned char> img(static_cast<std::size_t>(W * W));
  for (index_t i = 0; i < L; ++i)
    for (index_t j = 0; j < L; ++j) {
      const double p = pic.p[static_cast<std::size_t>(i * L + j)];
      const unsigned char g =
          p > 0 ? static_cast<unsigned char>(std::lround(48.0 + 207.0 * std::log(p / lo) / span)) : 0;
      for (int y = 0; y < scale; ++y) std::fill_n(img.begin() + (i * scale + y) * W + j * scale, scale, g);
    }
  std::ofstream f(path, std::ios::binary);
  f << "P5\n# combiner " << pic.name << " " << pic.mode << ": p(j|i), log scale " << lo << " .. " << hi
    << "\n"
    << W << " " << W << "\n255\n";
  f.write(reinterpret_cast<const char*>(img.data()), static_cast<std::streamsize>(img.size()));
  return static_cast<bool>(f);
}

[[noreturn]] void usage(const char* argv0, int code) {
  std::fprintf(
      code ? stderr : stdout,
      "usage: %s [--L 64] [--d 16] [--seed 1] [--scale 4] [--text 0|1] [--columns 2] [OUTDIR]\n"
      "  Text pictures ('#' direct key, '+' key reached through a summary, '.' p = 0; text by\n"
      "  default when L <= 64) and, with OUTDIR, OUTDIR/<plan>_<mode>.pgm (log-scale p(j|i))\n"
      "  of every Combiner plan, bidirectional and causal (text: --columns pictures side by side).\n",
      argv0);
  std::exit(code);
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") usage(argv[0], 0);
    if (a.rfind("--", 0) != 0) {
      if (!o.dir.empty()) usage(argv[0], 2);
      o.dir = a;
      continue;
    }
    if (i + 1 >= argc) usage(argv[0], 2);
    char* end = nullptr;
    const long long v = std::strtoll(argv[++i], &end, 10);
    if (*end != '\0') usage(argv[0], 2);
    if (a == "--L")
      o.L = v;
    else if (a == "--d")
      o.d = v;
    else if (a == "--seed")
      o.seed = static_cast<std::uint64_t>(v);
    else if (a == "--scale")
      o.scale = static_cast<int>(v);
    else if (a == "--text")
      o.text = static_cast<int>(v);
    else if (a == "--columns")
      o.columns = static_cast<int>(v);
    else
      usage(argv[0], 2);
  }
  if (o.L < 1 || o.L > 4096 || o.d < 1 || o.scale < 1 || o.scale > 64 || o.columns < 1) usage(argv[0], 2);
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const options o = parse(argc, argv);
  const index_t L = o.L, d = o.d;
  attnkit::random_generator rng(o.seed);
  attnkit::tensor<double, 4> q({1, 1, L, d}), k({1, 1, L, d});
  for (auto* t : {&q, &k})
    for (index_t n = 0; n < t->size(); ++n) t->data()[n] = rng.normal();
  // learnable: ceil(sqrt L) clusters, each position's drawn at random
  const index_t span = detail::combiner_default_span(L), C = span;
  attnkit::tensor<std::int32_t, 3> ids({1, 1, L});
  std::vector<std::int32_t> id(static_cast<std::size_t>(L));
  for (index_t j = 0; j < L; ++j)
    id[static_cast<std::size_t>(j)] = ids(0, 0, j) = static_cast<std::int32_t>(rng.below(C));
  const index_t rows = grid_rows(L), cols = L / rows;

  const char* plans[] = {"fixed", "logsparse", "axial_row", "axial_col", "axial_mixture", "learnable"};
  std::vector<pattern> pics;
  for (const char* name : plans)
    for (bool causal : {false, true}) {
      pattern pic;
      pic.name = name;
      pic.mode = causal ? "causal" : "bidirectional";
      pic.kind.assign(static_cast<std::size_t>(L * L), none);
      attnkit::combiner_options co;
      co.causal = causal;
      const std::string plan = name;
      attnkit::tensor<double, 4> p;
      if (plan == "fixed") {
        pic.note = "s=" + std::to_string(span);
        p = attnkit::combiner_probabilities(q.cview(), k.cview(), cb::fixed{}, co);
        for (index_t i = 0; i < L; ++i) mark(detail::fixed_sets(i, L, L, causal, span), i, L, pic.kind);
      } else if (plan == "logsparse") {
        p = attnkit::combiner_probabilities(q.cview(), k.cview(), cb::logsparse{}, co);
        for (index_t i = 0; i < L; ++i) mark(detail::logsparse_sets(i, L, L, causal), i, L, pic.kind);
      } else if (plan.rfind("axial", 0) == 0) {
        pic.note = std::to_string(rows) + "x" + std::to_string(cols);
        const auto order = plan == "axial_row"   ? cb::axial_order::row_major
                           : plan == "axial_col" ? cb::axial_order::col_major
                                                 : cb::axial_order::mixture;
        p = attnkit::combiner_probabilities(q.cview(), k.cview(), cb::axial{rows, cols, order}, co);
        for (index_t i = 0; i < L; ++i) {
          if (order != cb::axial_order::col_major)
            mark(detail::axial_sets(i, rows, cols, L, causal, false), i, L, pic.kind);
          if (order != cb::axial_order::row_major)
            mark(detail::axial_sets(i, rows, cols, L, causal, true), i, L, pic.kind);
        }
      } else {
        cb::learnable lp;
        lp.cluster_ids = ids.cview();
        pic.note = "C=" + std::to_string(C) + (causal ? " s=" + std::to_string(span) : "");
        p = attnkit::combiner_probabilities(q.cview(), k.cview(), lp, co);
        for (index_t i = 0; i < L; ++i)
          mark(detail::learnable_sets(i, L, L, causal, span, id), i, L, pic.kind);
      }
      pic.p.assign(p.data(), p.data() + L * L);
      pics.push_back(std::move(pic));
    }

  int bad = 0;
  for (const auto& pic : pics)
    for (index_t n = 0; n < L * L; ++n)
      bad += (pic.kind[static_cast<std::size_t>(n)] == none) != (pic.p[static_cast<std::size_t>(n)] == 0.0);

  const bool text = o.text < 0 ? L <= 64 : o.text != 0;
  if (text) {
    std::printf(
        "Combiner patterns, L = %ld, d = %ld: row i = query i, column j = key j;\n"
        "'#' direct key, '+' key reached through a group summary, '.' p(j|i) = 0\n",
        static_cast<long>(L), static_cast<long>(d));
    std::string line;
    for (index_t j = 0; j < L; ++j)
      line += "0123456789abcdefghijklmnopqrstuvwxyz"[id[static_cast<std::size_t>(j)] % 36];
    std::printf("s: span, RxC: axial grid, C: clusters; the keys' clusters (learnable): %s\n", line.c_str());
    const std::size_t per = static_cast<std::size_t>(o.columns);
    for (std::size_t n = 0; n < pics.size(); n += per) {
      std::vector<const pattern*> block;
      for (std::size_t m = n; m < std::min(pics.size(), n + per); ++m) block.push_back(&pics[m]);
      std::printf("\n");
      print_text(block, L);
    }
  }
  if (!o.dir.empty()) {
    std::filesystem::create_directories(o.dir);
    for (const auto& pic : pics) {
      const std::string path = (std::filesystem::path(o.dir) / (pic.name + "_" + pic.mode + ".pgm")).string();
      if (!write_pgm(path, pic, L, o.scale)) {
        std::fprintf(stderr, "cannot write %s\n", path.c_str());
        return 2;
      }
    }
    std::printf("%swrote %zu PGM pictures (%ld x %ld pixels) to %s\n", text ? "\n" : "", pics.size(),
                static_cast<long>(L * o.scale), static_cast<long>(L * o.scale), o.dir.c_str());
  }
  if (bad > 0) {
    std::fprintf(stderr, "%d cells where p(j|i) > 0 does not match the plan's sets (marked '!')\n", bad);
    return 1;
  }
  return 0;
}
