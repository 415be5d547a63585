#!/usr/bin/env bash
# attnkit's test command (CI runs it through .ci/run). Installs the dependencies, then builds and
# runs the tests in several configurations, and checks the CMake package from a consumer project:
#   clang-scalar-cxx20  clang++, ATTNKIT_SIMD=scalar, C++20 (g++ when clang is absent)
#   avx512|avx2   g++, the widest ISA the CPU has (AVX-512 F/DQ/BW/VL, else AVX2+FMA); tests every
#                 kernel up to it (scalar, avx2, avx512), compiles the benchmarks and examples,
#                 prints every operator's output fingerprint (tests/fingerprint.cpp)
#   asan-ubsan    ASan + UBSan, an ATTNKIT_SIMD=avx2 build (scalar without AVX2): tests -O0, kernels -O1
#   fuzz          clang (C++17): the libFuzzer targets of tests/fuzz (safetensors reader, operator
#                 argument checks) under ASan + UBSan, ATTNKIT_FUZZ_SECONDS each (skipped without clang)
#   consumer-install / consumer-subdir   tests/consumer against `cmake --install` and add_subdirectory
#   format        clang-format 14 --dry-run over include, tests, bench, examples
# So the suite runs in three ISA builds: scalar, avx2 (under the sanitizers) and avx512, with both
# compilers and both standards (g++ C++17, clang++ C++20 and C++17).
# Environment:
#   ATTNKIT_TEST_QUICK=1   only a native build (tests, benchmarks, examples) and the consumers
#   ATTNKIT_TEST_FORMAT=0  skip the clang-format check (format_check)
#   ATTNKIT_WERROR=1       build with -Werror
#   ATTNKIT_TEST_ONLY="asan-ubsan consumer-install"   run only the named stages (deps always runs)
#   ATTNKIT_JOBS=N         build parallelism (default 2)
#   ATTNKIT_FUZZ_SECONDS=N time each fuzz target runs (default 60)
# Build directories: build/ci-<name>. Exits nonzero when any stage fails.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
JOBS=${ATTNKIT_JOBS:-2}
FUZZ_SECONDS=${ATTNKIT_FUZZ_SECONDS:-60}
QUICK=${ATTNKIT_TEST_QUICK:-0}
FORMAT=${ATTNKIT_TEST_FORMAT:-1}
ONLY=${ATTNKIT_TEST_ONLY:-}
WERROR=$([ "${ATTNKIT_WERROR:-0}" = 1 ] && echo ON || echo OFF)
export CTEST_OUTPUT_ON_FAILURE=1

names=()
results=()
times=()
failed=0

# run_stage NAME CMD...: runs CMD with errexit in a subshell, records result and duration.
run_stage() {
  local name=$1 start=$SECONDS rc
  shift
  if [ -n "$ONLY" ] && [ "$name" != deps ] && [[ " $ONLY " != *" $name "* ]]; then
    skip_stage "$name" "not in ATTNKIT_TEST_ONLY"
    return 0
  fi
  echo
  echo "=================== [$name] $(date -u +%H:%M:%S) ==================="
  set +e
  (set -euo pipefail; "$@")
  rc=$?
  set -e
  names+=("$name")
  times+=($((SECONDS - start)))
  if [ $rc -eq 0 ]; then
    results+=("ok")
  else
    results+=("FAILED (exit $rc)")
    failed=$((failed + 1))
    echo "!!! [$name] FAILED (exit $rc)"
  fi
}

skip_stage() {
  names+=("$1")
  times+=(0)
  results+=("skipped: $2")
  echo
  echo "=================== [$1] skipped: $2 ==================="
}

cpu_has() {  # cpu_has FLAG...: true when /proc/cpuinfo lists every flag
  local f
  for f in "$@"; do grep -qw "$f" /proc/cpuinfo 2>/dev/null || return 1; done
}

# build_and_test NAME [cmake -D args...]: configure build/ci-NAME with Ninja, build, run ctest.
build_and_test() {
  local name=$1 dir="build/ci-$1"
  shift
  cmake -S . -B "$dir" -G Ninja -DATTNKIT_WERROR="$WERROR" "$@"
  cmake --build "$dir" -j "$JOBS" -- -k 0 2>&1 | tee "$dir/build.log"  # -k 0: every error at once
  echo "[$name] compiler warnings: $(grep -c 'warning:' "$dir/build.log" || true)"
  (cd "$dir" && ctest -j "$JOBS" --output-on-failure --no-tests=error)
}

# widest_build_and_test NAME [cmake -D args...]: build_and_test, then the output fingerprint of every
# operator per ISA (tests/fingerprint.cpp) into the log, so it keeps building and a run's bits are
# on record.
widest_build_and_test() {
  build_and_test "$@"
  cmake --build "build/ci-$1" --target attnkit_fingerprint
  "build/ci-$1/tests/attnkit_fingerprint"
}

# sanitized_build_and_test SIMD: ASan + UBSan build (the variables also reach the POST_BUILD
# test listing). Debug keeps the view bounds asserts; the tests are compiled at -O0 (fast to build
# with instrumentation), the kernels at -O1 (tests/CMakeLists.txt); -g1 keeps line numbers; the header
# check adds nothing under sanitizers (the other builds compile it). Tests tagged [slow] (long
# numeric sweeps) run in the other builds only.
sanitized_build_and_test() {
  export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1
  build_and_test asan -DATTNKIT_SIMD="$1" -DATTNKIT_CXX_STANDARD=17 -DATTNKIT_SANITIZE=ON \
    -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-g1 -O0" -DATTNKIT_HEADER_CHECK=OFF \
    -DATTNKIT_BUILD_BENCHMARKS=OFF -DATTNKIT_BUILD_EXAMPLES=OFF "-DATTNKIT_TEST_SPEC=~[slow]"
}

# fuzz: builds the libFuzzer targets with clang and runs each for FUZZ_SECONDS from the committed
# seed corpus (new inputs go to build/ci-fuzz/corpus-*; a crash leaves its input in build/ci-fuzz).
fuzz_targets() {
  local dir=build/ci-fuzz t
  cmake -S . -B "$dir" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Release -DATTNKIT_SIMD="$1" \
    -DATTNKIT_CXX_STANDARD=17 -DATTNKIT_WERROR="$WERROR" -DATTNKIT_BUILD_TESTS=OFF -DATTNKIT_BUILD_BENCHMARKS=OFF \
    -DATTNKIT_BUILD_EXAMPLES=OFF -DATTNKIT_INSTALL=OFF -DATTNKIT_BUILD_FUZZERS=ON
  cmake --build "$dir" -j "$JOBS"
  export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 OMP_NUM_THREADS=2
  for t in safetensors api; do
    mkdir -p "$dir/corpus-$t"
    # -max_len: a 200 KB header nests 100,000 arrays deep (tests/fuzz/README.md)
    (cd "$dir" && "./tests/fuzz/attnkit_fuzz_$t" -max_total_time="$FUZZ_SECONDS" -timeout=20 \
      -max_len=$([ $t = safetensors ] && echo 262144 || echo 4096) -print_final_stats=1 \
      "corpus-$t" "$ROOT/tests/fuzz/corpus/$t" 2>&1 | grep -v "^#[0-9]*.*\(NEW\|REDUCE\|pulse\)\|NEW_FUNC")
  done
}

consumer_install() {
  local dir=build/ci-install prefix
  prefix="$ROOT/build/ci-install/prefix"
  rm -rf "$dir" build/ci-consumer-install
  cmake -S . -B "$dir" -G Ninja -DATTNKIT_BUILD_TESTS=OFF -DATTNKIT_BUILD_BENCHMARKS=OFF \
    -DATTNKIT_BUILD_EXAMPLES=OFF -DATTNKIT_INSTALL=ON
  cmake --install "$dir" --prefix "$prefix"
  cmake -S tests/consumer -B build/ci-consumer-install -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
  cmake --build build/ci-consumer-install -j "$JOBS"
  build/ci-consumer-install/attnkit_consumer
}

consumer_subdir() {
  rm -rf build/ci-consumer-subdir
  # The consumer's own flags pick the ISA (the attnkit target adds none): exercise the native path.
  cmake -S tests/consumer -B build/ci-consumer-subdir -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DATTNKIT_CONSUMER_SUBDIR="$ROOT" -DCMAKE_CXX_FLAGS=-march=native
  cmake --build build/ci-consumer-subdir -j "$JOBS"
  build/ci-consumer-subdir/attnkit_consumer
}

format_check() {
  cmake -S . -B build/ci-format -G Ninja -DATTNKIT_BUILD_TESTS=OFF -DATTNKIT_BUILD_BENCHMARKS=OFF \
    -DATTNKIT_BUILD_EXAMPLES=OFF -DATTNKIT_INSTALL=OFF -DATTNKIT_FORMAT_CHECK=ON
  (cd build/ci-format && ctest --output-on-failure --no-tests=error -R '^format_check$')
}

total_start=$SECONDS
echo "attnkit scripts/test.sh: quick=$QUICK format=$FORMAT werror=$WERROR jobs=$JOBS only='$ONLY' CI=${CI:-}"
run_stage deps bash scripts/install_deps.sh
echo "machine: $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
echo "tools: $(c++ --version | head -1); $(cmake --version | head -1); ninja $(ninja --version)"

HAS_AVX2=0
HAS_AVX512=0
cpu_has avx2 fma && HAS_AVX2=1
cpu_has avx2 fma avx512f avx512dq avx512bw avx512vl && HAS_AVX512=1
echo "cpu: avx2+fma=$HAS_AVX2 avx512(f,dq,bw,vl)=$HAS_AVX512"

if [ "$QUICK" = 1 ]; then
  run_stage native build_and_test native -DATTNKIT_SIMD=native -DCMAKE_BUILD_TYPE=Release \
    -DATTNKIT_SANITIZE=OFF -DATTNKIT_CXX_STANDARD=17 \
    -DATTNKIT_BUILD_BENCHMARKS=ON -DATTNKIT_BUILD_EXAMPLES=ON
else
  # The widest ISA the host runs: its tests cover every narrower kernel as well (an avx512 build
  # tests the scalar, avx2 and avx512 kernels side by side), and it compiles the benchmarks and
  # examples. The scalar build covers C++20 and hosts without AVX2.
  SIMD=$([ $HAS_AVX512 = 1 ] && echo avx512 || ([ $HAS_AVX2 = 1 ] && echo avx2) || echo none)
  BENCH_IN_SCALAR=$([ "$SIMD" = none ] && echo ON || echo OFF)
  SCALAR_CXX=$(command -v clang++ || command -v c++)
  run_stage clang-scalar-cxx20 build_and_test clang-scalar-cxx20 -DCMAKE_CXX_COMPILER="$SCALAR_CXX" \
    -DATTNKIT_SIMD=scalar -DATTNKIT_CXX_STANDARD=20 -DCMAKE_BUILD_TYPE=Release -DATTNKIT_SANITIZE=OFF \
    -DATTNKIT_BUILD_BENCHMARKS=$BENCH_IN_SCALAR -DATTNKIT_BUILD_EXAMPLES=$BENCH_IN_SCALAR
  if [ "$SIMD" != none ]; then
    run_stage "$SIMD" widest_build_and_test "$SIMD" -DATTNKIT_SIMD="$SIMD" -DATTNKIT_CXX_STANDARD=17 \
      -DCMAKE_BUILD_TYPE=Release -DATTNKIT_SANITIZE=OFF \
      -DATTNKIT_BUILD_BENCHMARKS=ON -DATTNKIT_BUILD_EXAMPLES=ON
  else
    skip_stage simd "CPU lacks avx2/fma"
  fi
  SAN_SIMD=$([ $HAS_AVX2 = 1 ] && echo avx2 || echo scalar)
  run_stage asan-ubsan sanitized_build_and_test "$SAN_SIMD"
  if command -v clang++ >/dev/null 2>&1; then
    run_stage fuzz fuzz_targets "$SAN_SIMD"
  else
    skip_stage fuzz "clang++ not found"
  fi
fi
run_stage consumer-install consumer_install
run_stage consumer-subdir consumer_subdir
if [ "$FORMAT" = 1 ]; then
  run_stage format format_check
else
  skip_stage format "ATTNKIT_TEST_FORMAT=0"
fi

echo
echo "=================== attnkit test summary ==================="
passed=0
for i in "${!names[@]}"; do
  printf '  %-18s %-28s %5ss\n' "${names[$i]}" "${results[$i]}" "${times[$i]}"
  [ "${results[$i]}" = ok ] && passed=$((passed + 1))
done
echo "  total time: $((SECONDS - total_start))s"
echo "stages: $passed passed, $failed failed"
[ $failed -eq 0 ]
