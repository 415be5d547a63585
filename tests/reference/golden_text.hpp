// attnkit tests: the text format of the golden files tools/*.py write (tests/data/*.txt). A case
// is a header line whose first word is a name (e.g. "resize", "case"), then one line of values per
// tensor, row-major, printed with 17 significant digits ("inf" and "-inf" allowed).
#pragma once

#include <array>
#include <cctype>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common.hpp"

#ifndef ATTNKIT_TEST_DATA_DIR
#error "ATTNKIT_TEST_DATA_DIR: the directory of tests/data (set by tests/CMakeLists.txt)"
#endif

namespace attnkit_test {

/// One case of a golden file: its header words and its value lines.
struct golden_case {
  std::vector<std::string> head;
  std::vector<std::vector<double>> data;
  index_t word(std::size_t i) const { return std::stol(head.at(i)); }
};

/// Reads tests/data/<name>.
inline std::vector<golden_case> read_golden(const std::string& name) {
  std::ifstream f(std::string(ATTNKIT_TEST_DATA_DIR) + "/" + name);
  INFO("golden file tests/data/" << name);
  REQUIRE(f.good());
  std::vector<golden_case> cases;
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream is(line);
    std::string first;
    if (!(is >> first)) continue;
    const bool header =
        std::isalpha(static_cast<unsigned char>(first[0])) && first != "inf" && first != "nan";
    if (header) {
      cases.emplace_back();
      cases.back().head.push_back(first);
      for (std::string w; is >> w;) cases.back().head.push_back(w);
    } else {
      REQUIRE(!cases.empty());
      std::vector<double> v{std::stod(first)};  // stod reads "inf" and "-inf", operator>> does not
      for (std::string w; is >> w;) v.push_back(std::stod(w));
      cases.back().data.push_back(std::move(v));
    }
  }
  return cases;
}

/// A tensor of extents `ext` holding the values v (converted to T).
template <class T, std::size_t R>
attnkit::tensor<T, R> tensor_of(const std::vector<double>& v, const std::array<index_t, R>& ext) {
  attnkit::tensor<T, R> t(ext);
  REQUIRE(static_cast<index_t>(v.size()) == t.size());
  for (std::size_t i = 0; i < v.size(); ++i) t.data()[i] = static_cast<T>(v[i]);
  return t;
}

}  // namespace attnkit_test
