#!/usr/bin/env bash
# Quick start: builds cbm in Release (g++ -O2) and runs the bundled benchmarks
# against the unsynchronized floor and the peers, then prints one Markdown
# table per family with the ratios measured in the same run.
#
#   scripts/bench.sh           full run (medians of 9 repetitions interleaved at random, several minutes)
#   scripts/bench.sh --quick   quick run (1 repetition, short timings; the report says it is indicative)
#   scripts/bench.sh --token   every benchmark for a token duration (CI: they build and run)
#   --threads 1,2,4,8,16       (with any of those) the thread counts of emit and churn, for a
#                              machine with more cores (default: 1,2)
#
# Raw Google Benchmark JSON, the report (report.md: run details, a summary,
# then one table per family) and plots (emit.svg, churn.svg, bus_queued.svg:
# cost against N, a panel per thread count) go to build/release/bench-results/.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="full"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) mode="quick" ;;
    --token) mode="token" ;;
    --threads)
      [[ "${2:-}" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || { echo "$0: --threads wants a list such as 1,2,4,8" >&2; exit 2; }
      export CBM_BENCH_THREADS="$2"
      shift ;;
    *) echo "usage: $0 [--quick|--token] [--threads 1,2,4,...]" >&2; exit 2 ;;
  esac
  shift
done

bash scripts/ensure-packages.sh g++ cmake ninja-build catch2 libbenchmark-dev python3 \
  libboost-dev libsigc++-3.0-dev pkg-config libasio-dev libconcurrentqueue-dev libhiredis-dev redis-server
cmake --preset release -DCBM_BUILD_BENCHMARKS=ON >/dev/null
cmake --build --preset release --target emit_bench churn_bench snapshot_bench contention_bench once_bench context_bench read_mostly_bench metrics_bench async_bench bus_bench redis_bench >&2

case "$mode" in
  # Interleaved at random: on a shared machine that drifts between fast and
  # slow phases, every implementation of a family then sees the same phases.
  full)  flags=(--benchmark_repetitions=9 --benchmark_min_time=0.2 --benchmark_report_aggregates_only=true
                --benchmark_enable_random_interleaving=true) ;;
  quick) flags=(--benchmark_repetitions=1 --benchmark_min_time=0.05) ;;
  token) flags=(--benchmark_repetitions=1 --benchmark_min_time=0.001) ;;
esac

out=build/release/bench-results
mkdir -p "$out"
for bench in emit_bench churn_bench snapshot_bench contention_bench once_bench context_bench read_mostly_bench metrics_bench \
             async_bench bus_bench; do
  echo "== $bench ($mode)" >&2
  "build/release/bench/$bench" "${flags[@]}" --benchmark_format=json --benchmark_out="$out/$bench.json" \
    --benchmark_out_format=json >/dev/null
done
# The Redis bridge against a redis-server of its own on 127.0.0.1 (the test
# fixture's script; in memory: the numbers are the bridge's, not the disk's).
redis_dir="$out/redis-server"
bash tests/redis/redis_fixture.sh start "$redis_dir" memory
trap 'bash tests/redis/redis_fixture.sh stop "$redis_dir"' EXIT
echo "== redis_bench ($mode)" >&2
CBM_REDIS_PORT="$(cat "$redis_dir/port")" build/release/bench/redis_bench "${flags[@]}" --benchmark_format=json \
  --benchmark_out="$out/redis_bench.json" --benchmark_out_format=json >/dev/null
bash tests/redis/redis_fixture.sh stop "$redis_dir"
trap - EXIT
case "$mode" in
  full)  described="median of 9 repetitions, interleaved at random" ;;
  quick) described="quick run: 1 repetition, short timings" ;;
  token) described="token run: timings meaningless" ;;
esac
CBM_BENCH_COMPILER="$(g++ --version | head -n 1)" CBM_BENCH_FLAGS="-O2 -DNDEBUG (preset release)" \
  CBM_BENCH_MODE="$described" python3 bench/report.py "$out"/*.json | tee "$out/report.md"
for family in emit churn bus_queued; do
  python3 bench/plot.py "$out/$family.svg" --family "$family" "$out"/*.json
done
echo "" >&2
echo "Raw JSON, this report (report.md) and the plots (emit.svg, churn.svg, bus_queued.svg) are in $out/" >&2
