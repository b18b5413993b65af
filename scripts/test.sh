#!/usr/bin/env bash
# Quick start: builds cbm's tests, examples and package checks (g++, Debug)
# and runs them all through CTest. Installs missing Debian packages as root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-packages.sh g++ cmake ninja-build catch2 libbenchmark-dev python3 python3-prometheus-client \
  libasio-dev pkg-config libhiredis-dev redis-server nlohmann-json3-dev
cmake --preset debug -DCBM_BUILD_TESTS=ON
cmake --build --preset debug
ctest --preset debug -j "$(nproc)"
