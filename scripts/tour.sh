#!/usr/bin/env bash
# Builds and runs the attnkit tour: every attention operator at one shape, side by side.
# Usage: scripts/tour.sh [--L 2048] [--d 64] [--heads 8] [--batch 1] [--threads 0] [--samples 20]
# (arguments go to attnkit_tour unchanged). Release build in build/tour, ATTNKIT_SIMD=native.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build/tour"

"$root/scripts/install_deps.sh"

gen=()
if [ ! -f "$build/CMakeCache.txt" ] && command -v ninja >/dev/null 2>&1; then
  gen=(-G Ninja)
fi
cmake -S "$root" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DATTNKIT_SIMD=native \
  -DATTNKIT_BUILD_TESTS=OFF -DATTNKIT_BUILD_BENCHMARKS=OFF -DATTNKIT_BUILD_EXAMPLES=ON >/dev/null
cmake --build "$build" --target attnkit_tour -j2
exec "$build/examples/attnkit_tour" "$@"
