#!/usr/bin/env bash
# Fuzzes the model-based target (tests/fuzz/model_fuzz.cpp) for a bounded
# time, starting from the committed corpus (left untouched: new inputs go to
# a scratch directory). Usage: scripts/fuzz.sh [seconds, default 60].
# A mismatch with the model, a crash or a sanitizer report fails the run and
# leaves the input in build/fuzz/artifacts/; add it to tests/fuzz/corpus
# with a name that says what it caught once the bug is fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
bash scripts/ensure-packages.sh clang libclang-rt-14-dev catch2 cmake ninja-build
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cp tests/fuzz/corpus/* "$scratch"/
mkdir -p build/fuzz/artifacts
build/fuzz/tests/model_fuzz -max_total_time="$seconds" -max_len=512 -print_final_stats=1 \
  -artifact_prefix=build/fuzz/artifacts/ "$scratch"
