#!/usr/bin/env python3
"""Turns Google Benchmark JSON from cbm's benchmarks into a Markdown report.

The report opens with the run's details (machine, compiler, flags, and
whether the run was a full one or only indicative), then a summary: one
line per family saying how cbm compares with the best peer measured in the
same run. Then each family (the first part of a benchmark name) becomes one
table: a row per implementation under a plain name, a column per argument
or thread count. Every timing table says what it measures, its unit, and
that lower is better. One baseline rule holds everywhere: a cell's ratio is
to the family's floor (the row whose name starts with "floor", named in the
table's heading), measured in the same run; a family without a floor shows
no ratios, and its comparison is the summary's.
Multi-threaded cells show the cost per operation per thread
(Google Benchmark's real time per iteration times the thread count), except
for benchmarks that report an `ns_per_op` counter (read_mostly, bus_queued):
they time their own threads, and the cell is wall time divided by all
operations.
"""
import json
import os
import sys
from collections import OrderedDict

UNIT = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}

# Plain names for implementations; a name not listed is shown with its
# underscores as spaces.
PLAIN = {
    "floor_std_function_loop": "std::function loop (not thread-safe)",
    "floor_std_function_loop_no_churn": "std::function loop, nobody churning (not thread-safe)",
    "floor_std_function_call": "one std::function call (not thread-safe)",
    "floor_atomic_bool": "an atomic<bool> flag check",
    "floor_atomic_pointer": "an atomic pointer load (no reclamation)",
    "floor_unsynchronized": "plain reads (not thread-safe)",
    "floor_stop_source": "std::stop_source::request_stop",
    "floor_std_stop_callbacks": "std::stop_source with std::stop_callbacks",
    "floor_hiredis_pipelined_64": "raw hiredis, pipelined XADD + XREADGROUP + XACK",
    "floor_hiredis_xadd_xreadgroup": "raw hiredis XADD + XREADGROUP on one thread",
    "cbm_group": "cbm::CallbackGroup::trigger",
    "cbm_registry": "cbm::CallbackRegistry::trigger (one key)",
    "cbm_group_unregister": "cbm: add + blocking unregister",
    "cbm_group_unregister_nowait": "cbm: add + unregister_nowait",
    "cbm_registry_new_key": "cbm registry: add under a new key + unregister",
    "cbm_trigger_async": "cbm::CallbackGroup::trigger_async on cbm::ThreadPool",
    "cbm_trigger_async_3_callbacks": "cbm trigger_async, 3 callbacks",
    "cbm_thread_pool_execute": "cbm::ThreadPool::execute",
    "cbm_bus_post_run": "cbm::EventBus post, run() on the consumer",
    "cbm_bus_publish_1_subscriber": "cbm::EventBus::publish, 1 subscriber",
    "cbm_bus_publish_unsubscribed_type": "cbm::EventBus::publish, type nobody subscribed to",
    "cbm_group_trigger_1_callback": "cbm::CallbackGroup::trigger, 1 callback",
    "cbm_bus_post": "cbm::EventBus::post (queued, not consumed)",
    "cbm_bridge_batch_64": "cbm::redis::Bridge publish_batch(64), handled and acked",
    "cbm_bridge_publish_to_handler": "cbm::redis::Bridge publish to handler",
    "cbm_part_result": "std::function call + a TriggerResult",
    "cbm_part_result_scope": "... + the thread's trigger level (record, epoch, domain)",
    "cbm_part_result_scope_announce": "... + the node announced, state read, withdrawn, waiter check",
    "cbm_once": "cbm::Once",
    "cbm_once_value": "cbm::OnceValue",
    "cbm_snapshot": "cbm::Snapshot",
    "std_call_once": "std::call_once",
    "boost_signals2": "Boost.Signals2",
    "sigcpp_single_threaded": "libsigc++ (single-threaded only)",
    "shared_mutex_vector": "std::shared_mutex + std::vector<std::function>",
    "shared_mutex_map": "std::shared_mutex + std::map",
    "atomic_shared_ptr": "std::atomic<std::shared_ptr>",
    "asio_post": "asio::thread_pool + asio::post",
    "mutex_deque_pool": "std::mutex + std::deque pool",
    "mutex_deque": "std::mutex + std::condition_variable + std::deque",
    "moodycamel_pool": "pool on moodycamel::BlockingConcurrentQueue",
    "moodycamel_blocking_queue": "moodycamel::BlockingConcurrentQueue",
    "std_stop_source_and_callback": "std::stop_source + std::stop_callback",
}

# What each family measures (the heading of its table).
FAMILY = {
    "emit": "trigger of N callbacks while nobody changes the group (N=callbacks)",
    "churn": "add one callback and unregister it, in a group of N, while other threads trigger (N=callbacks)",
    "contention": "trigger of 8 callbacks while another thread adds and unregisters",
    "snapshot_read": "read of a shared value another thread replaces",
    "read_mostly": "lookup in a read-mostly table",
    "once_done": "a once-check after the work is done",
    "cancel_one": "cancel a context",
    "cancel_tree": "cancel a tree of contexts",
    "timeout": "make a context with a deadline and cancel it",
    "trigger_ctx": "trigger under a Context",
    "metrics": "trigger of 8 callbacks with metrics off and on",
    "trigger_parts": "where a 1-callback trigger's time goes: each row adds one part of the trigger's protocol",
    "async_throughput": "one task, submitted to handled",
    "bus_publish": "publish of one event",
    "bus_queued": "post of one event, to handled on a consumer thread (N=producer threads)",
    "redis_throughput": "one event, published to handled and acknowledged (batches of 64)",
}


def plain(impl):
    return PLAIN.get(impl, impl.replace("_", " "))


def is_cbm(impl):
    return impl.startswith("cbm")


def is_peer(impl):
    return not is_cbm(impl) and not impl.startswith("floor")


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



def in_registration_order(benchmarks):
    """The runs in the order the benchmarks were registered: a full run
    interleaves repetitions at random (scripts/bench.sh), and Google
    Benchmark then reports each benchmark's aggregates when its last
    repetition ends. Stable, so the aggregates of one benchmark keep theirs."""
    return sorted(benchmarks, key=lambda b: (b.get("family_index", 0), b.get("per_family_instance_index", 0)))

def load(paths):
    context = None
    cells = OrderedDict()  # (family, impl, column) -> [ns, ...]
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        context = context or data.get("context", {})
        for b in in_registration_order(data.get("benchmarks", [])):
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


def geometric_mean(values):
    product = 1.0
    for v in values:
        product *= v
    return product ** (1.0 / len(values))


def summary_line(family, impls):
    """cbm's fastest row against the fastest peer, column by column, over
    the columns both have."""
    cbm_rows = [i for i in impls if is_cbm(i)]
    peers = [i for i in impls if is_peer(i)]
    if not cbm_rows or not peers:
        return None
    columns = list(OrderedDict.fromkeys(c for i in cbm_rows for c in impls[i]))
    ratios = []
    used_cbm, used_peer = [], []
    for column in columns:
        mine = [(impls[i][column], i) for i in cbm_rows if column in impls[i]]
        theirs = [(impls[p][column], p) for p in peers if column in impls[p]]
        if not mine or not theirs:
            continue
        (cbm_ns, cbm_impl), (peer_ns, peer_impl) = min(mine), min(theirs)
        if cbm_ns <= 0:
            continue
        ratios.append(peer_ns / cbm_ns)  # > 1: cbm is faster
        used_cbm.append(cbm_impl)
        used_peer.append(peer_impl)
    if not ratios:
        return None
    g = geometric_mean(ratios)
    cbm_text = " / ".join(plain(i) for i in OrderedDict.fromkeys(used_cbm))
    peer_text = " / ".join(plain(p) for p in OrderedDict.fromkeys(used_peer))
    verdict = f"{g:.2f}x faster than" if g >= 1 else f"{1 / g:.2f}x slower than"
    spread = f"; per column {min(ratios):.2f}x to {max(ratios):.2f}x" if len(ratios) > 1 else ""
    return (f"- **{family}**: cbm ({cbm_text}) is {verdict} the best peer ({peer_text}): geometric mean over "
            f"{len(ratios)} column(s){spread} (peer time / cbm time, same run).")


def main(paths):
    context, cells = load(paths)
    mode = os.environ.get("CBM_BENCH_MODE", "")
    print("## Run details\n")
    print(f"- Machine: {cpu_model()}, {context.get('num_cpus', '?')} cores at {context.get('mhz_per_cpu', '?')} MHz")
    print(f"- Compiler: {os.environ.get('CBM_BENCH_COMPILER', '?')}; flags: {os.environ.get('CBM_BENCH_FLAGS', '?')}")
    print(f"- Date: {context.get('date', '?')}; run: {mode or 'unknown'}")
    if mode and not mode.startswith("median"):
        print("- **Indicative only:** this was not a full run; its numbers may contradict the README's.")
    print(f"- Thread counts of emit and churn: {os.environ.get('CBM_BENCH_THREADS') or '1,2'} "
          "(scripts/bench.sh --threads); all threads run the same operation at once, and a count above "
          f"the {context.get('num_cpus', '?')} cores shares them.")
    families = OrderedDict()
    latency_families = {family for (family, _, _) in latencies}
    memory_families = {family for (family, _, _) in memory}
    for (family, impl, column), values in cells.items():
        if family in latency_families or family in memory_families:
            continue
        families.setdefault(family, OrderedDict()).setdefault(impl, OrderedDict())[column] = median(values)
    print("\n## Summary (lower time is better; cbm against the fastest peer in the same run)\n")
    lines = [summary_line(family, impls) for family, impls in families.items()]
    lines = [line for line in lines if line]
    print("\n".join(lines) if lines else "- no family has both a cbm row and a peer")
    for family, impls in families.items():
        columns = []
        for row in impls.values():
            for c in row:
                if c not in columns:
                    columns.append(c)
        floor = next((i for i in impls if i.startswith("floor")), None)
        wall = family in wall_families
        unit = "wall ns per operation, all threads together" if wall else "ns per operation per thread"
        what = FAMILY.get(family, family.replace("_", " "))
        ratio_rule = (f"in brackets: ratio to the floor, {plain(floor)}" if floor
                      else "no floor in this family, so no ratios: see the summary")
        print(f"\n### {family}: {what}\n")
        print(f"Unit: {unit}; lower is better; {ratio_rule}.\n")
        headers = ["time" if c == "-" else c for c in columns]
        print("| implementation | " + " | ".join(headers) + " |")
        print("|---|" + "---:|" * len(columns))
        for impl, row in impls.items():
            out = []
            for c in columns:
                if c not in row:
                    out.append("n/a")
                    continue
                base = impls[floor].get(c) if floor else None
                ratio = f" ({row[c] / base:.2f}x)" if base else ""
                out.append(f"{row[c]:.1f}{ratio}")
            print(f"| {plain(impl)} | " + " | ".join(out) + " |")
    for family in sorted(latency_families):
        print(f"\n### {family}: latency percentiles\n")
        print("Unit: ns per call (median over repetitions of each percentile); lower is better.\n")
        print("| implementation | " + " | ".join(LATENCY_COUNTERS) + " |")
        print("|---|" + "---:|" * len(LATENCY_COUNTERS))
        impls = OrderedDict()
        for (fam, impl, counter), values in latencies.items():
            if fam == family:
                impls.setdefault(impl, {})[counter] = median(values)
        for impl, row in impls.items():
            print(f"| {plain(impl)} | " + " | ".join(f"{row.get(c, float('nan')):.0f}" for c in LATENCY_COUNTERS) + " |")

    tables = OrderedDict()
    for (family, counter, impl, column), values in extra.items():
        tables.setdefault((family, counter), OrderedDict()).setdefault(impl, OrderedDict())[column] = median(values)
    for (family, counter), impls in tables.items():
        columns = list(OrderedDict.fromkeys(c for row in impls.values() for c in row))
        better = "higher is better" if counter == "mops_per_s" else (
            "higher means harder churn" if counter == "churns_per_emit" else "lower is better")
        print(f"\n### {family}: {RATIO_COUNTERS[counter]}\n")
        print(f"{better[0].upper() + better[1:]}.\n")
        print("| implementation | " + " | ".join(columns) + " |")
        print("|---|" + "---:|" * len(columns))
        for impl, row in impls.items():
            fmt = "{:.0f}" if counter == "mops_per_s" else "{:.2g}"
            print(f"| {plain(impl)} | " + " | ".join(fmt.format(row[c]) if c in row else "n/a" for c in columns) + " |")
    for family in sorted(memory_families):
        print(f"\n### {family}: memory\n")
        print("Unit: bytes per live object (resident set delta, and heap bytes in use); lower is better.\n")
        print("| implementation | " + " | ".join(MEMORY_COUNTERS) + " |")
        print("|---|" + "---:|" * len(MEMORY_COUNTERS))
        impls = OrderedDict()
        for (fam, impl, counter), values in memory.items():
            if fam == family:
                impls.setdefault(impl, {})[counter] = median(values)
        for impl, row in impls.items():
            print(f"| {plain(impl)} | " + " | ".join(f"{row.get(c, float('nan')):.0f}" for c in MEMORY_COUNTERS) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: report.py RESULT.json...")
    main(sys.argv[1:])
