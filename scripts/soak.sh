#!/usr/bin/env bash
# The soak: cbm_stress (tests/stress/stress.cpp) with transient keys on every
# core for a long time (default 600 s), RSS sampled once a second into
# build/soak/rss.csv, then a check that the resident set at the end is within
# 10% of its value after warm-up (the first 10% of the run, at least 30 s).
# Usage: scripts/soak.sh [seconds]. Release build (g++ -O2).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
bash scripts/ensure-packages.sh g++ cmake ninja-build catch2 libbenchmark-dev python3
cmake --preset release >/dev/null
cmake --build --preset release --target cbm_stress
mkdir -p build/soak
threads="$(nproc)"
build/release/tests/cbm_stress --seconds "$seconds" --threads "$threads" --transient-keys \
  --rss-log build/soak/rss.csv --stall-seconds 120
python3 - "$seconds" build/soak/rss.csv <<'PY'
import csv, sys
seconds = float(sys.argv[1])
rows = [(int(r["second"]), int(r["rss_kib"]), int(r["adds"])) for r in csv.DictReader(open(sys.argv[2]))]
if len(rows) < 3:
    sys.exit("soak: too few RSS samples")
warm = max(1, min(len(rows) - 1, max(30, int(seconds * 0.1))))
after_warm_up = rows[warm - 1][1]
end = rows[-1][1]
peak = max(r[1] for r in rows)
growth = (end - after_warm_up) / after_warm_up
print(f"soak: RSS after warm-up ({warm} s) {after_warm_up} KiB, at the end {end} KiB "
      f"({growth:+.1%}), peak {peak} KiB, {rows[-1][2]} adds")
step = max(1, len(rows) // 20)
for second, rss, adds in rows[::step]:
    print(f"  {second:5d} s  {rss:8d} KiB  {'#' * max(1, rss * 50 // peak)}")
if growth > 0.10:
    sys.exit("soak: RSS grew by more than 10% after warm-up")
PY
