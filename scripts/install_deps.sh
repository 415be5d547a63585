#!/usr/bin/env bash
# Installs attnkit's build and test dependencies from Debian packages when they are missing.
# Usage: scripts/install_deps.sh            (as root, or with sudo available)
set -euo pipefail
# clang, its OpenMP and its sanitizer/libFuzzer runtimes: the clang build of the tests and the fuzz targets.
pkgs=(cmake g++ make ninja-build libeigen3-dev nlohmann-json3-dev libpng-dev catch2 libbenchmark-dev clang-format git
      clang libomp-dev libclang-rt-14-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "attnkit: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
