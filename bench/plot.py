#!/usr/bin/env python3
"""Draws one benchmark family's cost against its argument N (callbacks, or
producer threads), one panel per thread count, as an SVG file, from Google
Benchmark JSON written by cbm's benchmarks.

Usage: plot.py OUT.svg [--family F] RESULT.json...   (F: emit by default)

Needs nothing beyond Python 3: the SVG is written by hand. Each line is one
implementation; y is ns per operation per thread, or wall ns per operation
for benchmarks that time their own threads (median over repetitions), log
scale; x is N, log scale.
"""
import html
import json
import math
import os
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import plain  # noqa: E402  (the report's plain names)

UNIT = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}
COLORS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]



def in_registration_order(benchmarks):
    """The runs in the order the benchmarks were registered: a full run
    interleaves repetitions at random (scripts/bench.sh), and Google
    Benchmark then reports each benchmark's aggregates when its last
    repetition ends. Stable, so the aggregates of one benchmark keep theirs."""
    return sorted(benchmarks, key=lambda b: (b.get("family_index", 0), b.get("per_family_instance_index", 0)))

def load(paths, family="emit"):
    series = OrderedDict()  # threads -> impl -> {n: [ns]}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for b in in_registration_order(data.get("benchmarks", [])):
            if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
                continue
            parts = b["run_name"].split("/")
            if parts[0] != family:
                continue
            threads = int(b.get("threads", 1))
            if len(parts) < 3 or not parts[2].isdigit():
                continue  # no numeric argument to plot against
            n = int(parts[2])
            if "ns_per_op" in b:  # it timed its own threads: wall ns per operation
                ns = float(b["ns_per_op"])
            else:
                ns = float(b["real_time"]) * UNIT[b.get("time_unit", "ns")] * threads
            series.setdefault(threads, OrderedDict()).setdefault(parts[1], {}).setdefault(n, []).append(ns)
    return series


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


X_LABEL = {"emit": "callbacks (N)", "churn": "callbacks in the group (N)", "bus_queued": "producer threads (N)"}
TITLE = {
    "emit": "emit: ns per trigger per thread (log scale), lower is better",
    "churn": "churn: ns per add + unregister per thread (log scale), lower is better",
    "bus_queued": "bus_queued: wall ns per event, post to handled (log scale), lower is better",
}


def panel(out, x0, y0, width, height, title, impls, y_lo, y_hi, colors, x_label):
    ns = sorted({n for points in impls.values() for n in points})
    x_lo, x_hi = math.log10(min(ns)), math.log10(max(ns))

    def px(n):
        return x0 + (math.log10(n) - x_lo) / ((x_hi - x_lo) or 1) * width

    def py(v):
        return y0 + height - (math.log10(v) - y_lo) / ((y_hi - y_lo) or 1) * height

    out.append(f'<text x="{x0 + width / 2}" y="{y0 - 10}" text-anchor="middle" font-weight="bold">{title}</text>')
    out.append(f'<rect x="{x0}" y="{y0}" width="{width}" height="{height}" fill="none" stroke="#999"/>')
    for n in ns:
        out.append(f'<line x1="{px(n)}" y1="{y0 + height}" x2="{px(n)}" y2="{y0 + height + 5}" stroke="#999"/>')
        out.append(f'<text x="{px(n)}" y="{y0 + height + 18}" text-anchor="middle">{n}</text>')
    decade = math.floor(y_lo)
    while decade <= math.ceil(y_hi):
        for mult in (1, 2, 5):
            v = mult * 10 ** decade
            if y_lo <= math.log10(v) <= y_hi:
                y = py(v)
                out.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + width}" y2="{y}" stroke="#eee"/>')
                out.append(f'<text x="{x0 - 6}" y="{y + 4}" text-anchor="end">{v:g}</text>')
        decade += 1
    out.append(f'<text x="{x0 + width / 2}" y="{y0 + height + 36}" text-anchor="middle">{x_label}</text>')
    for impl, points in impls.items():
        color = colors[impl]
        coords = [(px(n), py(median(points[n]))) for n in sorted(points)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in coords:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')


def main(out_path, paths, family="emit"):
    series = load(paths, family)
    if not series:
        sys.exit(f"plot.py: no {family} results with a numeric argument in the given files")
    all_impls = list(OrderedDict.fromkeys(i for impls in series.values() for i in impls))
    colors = {impl: COLORS[k % len(COLORS)] for k, impl in enumerate(all_impls)}
    values = [median(v) for impls in series.values() for pts in impls.values() for v in pts.values()]
    y_lo, y_hi = math.log10(min(values)) - 0.1, math.log10(max(values)) + 0.1
    width, height, margin = 360, 280, 70
    total_w = margin + len(series) * (width + margin)
    total_h = 110 + height + 60 + 18 * len(all_impls)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{total_w}" height="{total_h}" fill="white"/>',
           f'<text x="{total_w / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">'
           f'{TITLE.get(family, family + ": ns per operation (log scale), lower is better")}</text>']
    for k, (threads, impls) in enumerate(sorted(series.items())):
        title = f"{threads} thread{'s' if threads > 1 else ''}" + (" (same group)" if threads > 1 else "")
        panel(out, margin + k * (width + margin), 70, width, height, title, impls, y_lo, y_hi, colors,
              X_LABEL.get(family, "N"))
    legend_y = 70 + height + 60
    for k, impl in enumerate(all_impls):
        y = legend_y + 18 * k
        out.append(f'<line x1="{margin}" y1="{y}" x2="{margin + 24}" y2="{y}" stroke="{colors[impl]}" stroke-width="3"/>')
        out.append(f'<text x="{margin + 32}" y="{y + 4}">{html.escape(plain(impl))}</text>')
    out.append("</svg>")
    with open(out_path, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    args = sys.argv[1:]
    family = "emit"
    if len(args) >= 3 and args[1] == "--family":
        family = args[2]
        del args[1:3]
    if len(args) < 2:
        sys.exit("usage: plot.py OUT.svg [--family F] RESULT.json...")
    main(args[0], args[1:], family)
