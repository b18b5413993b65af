#!/usr/bin/env python3
"""Turns Google Benchmark JSON from cbm's benchmarks into Markdown tables.

Each family (the first part of a benchmark name) becomes one table: a row per
implementation, a column per argument/thread count, each cell "ns (ratio)",
where the ratio is to the family's baseline measured in the same run:
the row whose name starts with "floor", else the first cbm row.
Multi-threaded cells show the cost per operation per thread
(Google Benchmark's real time per iteration times the thread count), except
for benchmarks that report an `ns_per_op` counter (read_mostly): they time
their own threads, and the cell is wall time divided by all operations.
"""
import json
import os
import sys
from collections import OrderedDict

UNIT = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}


LATENCY_COUNTERS = ("p50_ns", "p99_ns", "max_ns")
latencies = OrderedDict()  # (family, impl, counter) -> [ns, ...]
MEMORY_COUNTERS = ("bytes_rss", "bytes_heap")
# Per-operation counters shown in their own table after the timings.
RATIO_COUNTERS = OrderedDict([
    ("mops_per_s", "throughput, millions of operations per second (all threads)"),
    ("allocs_per_op", "allocations per operation (counted by a replaced operator new)"),
    ("churns_per_emit", "add + unregister operations the other thread completed per emit (how hard it churned)"),
])
extra = OrderedDict()  # (family, counter, impl, column) -> [value, ...]
wall_families = set()  # families whose cells are wall ns per operation (ns_per_op counters)
memory = OrderedDict()  # (family, impl, counter) -> [bytes, ...]


def load(paths):
    context = None
    cells = OrderedDict()  # (family, impl, column) -> [ns, ...]
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        context = context or data.get("context", {})
        for b in data.get("benchmarks", []):
            aggregate = b.get("aggregate_name")
            if b.get("run_type") == "aggregate" and aggregate != "median":
                continue
            parts = b["run_name"].split("/")
            family, impl = parts[0], parts[1]
            threads = int(b.get("threads", 1))
            args = [p for p in parts[2:] if p not in ("real_time", "manual_time")
                    and not p.startswith("threads:") and not p.startswith("iterations:")]
            labels = [f"{a.split(':')[1]} {a.split(':')[0]}" if ":" in a else "N=" + a for a in args]
            column = "/".join(labels + ([f"{threads} thr"] if threads > 1 or "threads:" in b["run_name"] else []))
            if "ns_per_op" in b:  # benchmarks that time their own threads: wall time per operation
                ns = float(b["ns_per_op"])
                wall_families.add(family)
            else:
                ns = float(b["real_time"]) * UNIT[b.get("time_unit", "ns")] * threads
            for counter in RATIO_COUNTERS:
                if counter in b:
                    extra.setdefault((family, counter, impl, column or "-"), []).append(float(b[counter]))
            cells.setdefault((family, impl, column or "-"), []).append(ns)
            for counter in LATENCY_COUNTERS:
                if counter in b:
                    latencies.setdefault((family, impl, counter), []).append(float(b[counter]))
            for counter in MEMORY_COUNTERS:
                if counter in b:
                    memory.setdefault((family, impl, counter), []).append(float(b[counter]))
    return context, cells


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(paths):
    context, cells = load(paths)
    print(f"Machine: {cpu_model()}, {context.get('num_cpus', '?')} cores at {context.get('mhz_per_cpu', '?')} MHz; "
          f"compiler: {os.environ.get('CBM_BENCH_COMPILER', '?')}, flags: {os.environ.get('CBM_BENCH_FLAGS', '?')}; "
          f"{os.environ.get('CBM_BENCH_MODE', '')}")
    print("Multi-threaded columns: all threads trigger the same group at once; with 2 cores, "
          "2 threads use both cores.")
    families = OrderedDict()
    latency_families = {family for (family, _, _) in latencies}
    memory_families = {family for (family, _, _) in memory}
    for (family, impl, column), values in cells.items():
        if family in latency_families or family in memory_families:
            continue
        families.setdefault(family, OrderedDict()).setdefault(impl, OrderedDict())[column] = median(values)
    for family, impls in families.items():
        columns = []
        for row in impls.values():
            for c in row:
                if c not in columns:
                    columns.append(c)
        baseline = next((i for i in impls if i.startswith("floor")), None) or next(
            (i for i in impls if i.startswith("cbm")), next(iter(impls)))
        wall = family in wall_families
        unit = "wall ns per operation, all threads together" if wall else "ns per operation per thread"
        print(f"\n### {family} ({unit}; ratio to `{baseline}`)\n")
        print("| implementation | " + " | ".join(columns) + " |")
        print("|---|" + "---:|" * len(columns))
        for impl, row in impls.items():
            out = []
            for c in columns:
                if c not in row:
                    out.append("n/a")
                    continue
                base = impls[baseline].get(c)
                ratio = f" ({row[c] / base:.2f}x)" if base else ""
                out.append(f"{row[c]:.1f}{ratio}")
            print(f"| {impl} | " + " | ".join(out) + " |")
    for family in sorted(latency_families):
        print(f"\n### {family} (ns per call; median over repetitions of each percentile)\n")
        print("| implementation | " + " | ".join(LATENCY_COUNTERS) + " |")
        print("|---|" + "---:|" * len(LATENCY_COUNTERS))
        impls = OrderedDict()
        for (fam, impl, counter), values in latencies.items():
            if fam == family:
                impls.setdefault(impl, {})[counter] = median(values)
        for impl, row in impls.items():
            print(f"| {impl} | " + " | ".join(f"{row.get(c, float('nan')):.0f}" for c in LATENCY_COUNTERS) + " |")

    tables = OrderedDict()
    for (family, counter, impl, column), values in extra.items():
        tables.setdefault((family, counter), OrderedDict()).setdefault(impl, OrderedDict())[column] = median(values)
    for (family, counter), impls in tables.items():
        columns = list(OrderedDict.fromkeys(c for row in impls.values() for c in row))
        print(f"\n### {family}: {RATIO_COUNTERS[counter]}\n")
        print("| implementation | " + " | ".join(columns) + " |")
        print("|---|" + "---:|" * len(columns))
        for impl, row in impls.items():
            fmt = "{:.0f}" if counter == "mops_per_s" else "{:.2g}"
            print(f"| {impl} | " + " | ".join(fmt.format(row[c]) if c in row else "n/a" for c in columns) + " |")
    for family in sorted(memory_families):
        print(f"\n### {family} (bytes per live object: resident set delta and heap bytes in use)\n")
        print("| implementation | " + " | ".join(MEMORY_COUNTERS) + " |")
        print("|---|" + "---:|" * len(MEMORY_COUNTERS))
        impls = OrderedDict()
        for (fam, impl, counter), values in memory.items():
            if fam == family:
                impls.setdefault(impl, {})[counter] = median(values)
        for impl, row in impls.items():
            print(f"| {impl} | " + " | ".join(f"{row.get(c, float('nan')):.0f}" for c in MEMORY_COUNTERS) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: report.py RESULT.json...")
    main(sys.argv[1:])
