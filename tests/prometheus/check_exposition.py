#!/usr/bin/env python3
"""Parses the Prometheus text a program prints with the reference parser
(prometheus_client.parser.text_string_to_metric_families, Debian's
python3-prometheus-client) and checks what cbm promises of it: it parses,
every sample's series (name and label set) is unique, every label value is
valid UTF-8, and the series the program set up are all there.

Usage: check_exposition.py PROGRAM"""
import subprocess
import sys

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    sys.exit("check_exposition.py: needs prometheus_client (apt-get install python3-prometheus-client)")


def main():
    raw = subprocess.run([sys.argv[1]], check=True, stdout=subprocess.PIPE).stdout
    text = raw.decode("utf-8")  # raises on invalid UTF-8: the test fails
    families = list(text_string_to_metric_families(text))
    seen = set()
    callbacks = set()
    for family in families:
        for s in family.samples:
            series = (s.name, tuple(sorted(s.labels.items())))
            if series in seen:
                sys.exit(f"duplicate series: {series}")
            seen.add(series)
            if "callback" in s.labels:
                callbacks.add((s.labels["key"], s.labels["callback"], s.labels.get("id", "")))
    names = {f.name for f in families}
    for expected in ("cbm_callback_invocations", "cbm_callback_failures", "cbm_callback_latency_seconds",
                     "cbm_callback_slow_calls", "cbm_callback_registered", "cbm_callback_series_dropped",
                     "cbm_async_callback_queue_wait_seconds", "cbm_pool_threads", "cbm_pool_queue_depth",
                     "cbm_pool_busy_threads", "cbm_pool_rejected", "cbm_bus_published", "cbm_bus_delivered",
                     "cbm_bus_dead_lettered", "cbm_bus_queue_wait_seconds", "cbm_bus_queue_depth", "cbm_bus_subscribed"):
        if expected not in names:
            sys.exit(f"missing family {expected}; have {sorted(names)}")
    unnamed_orders = [c for c in callbacks if c[0] == "orders" and c[1] == ""]
    if len(unnamed_orders) != 2 or len({c[2] for c in unnamed_orders}) != 2:
        sys.exit(f"two unnamed callbacks of 'orders' must be two series with distinct ids: {unnamed_orders}")
    if ("orders", "gone", "") not in callbacks:
        sys.exit("the unregistered callback's series is missing")
    replaced = [c for c in callbacks if c[0].startswith("bad")]
    if not replaced or "\ufffd" not in replaced[0][0]:
        sys.exit(f"invalid UTF-8 in a key must come out as U+FFFD: {replaced}")
    if ("multi\nline \"key\"", "quote\"d", "") not in callbacks:
        sys.exit("escaped key and name did not round-trip")
    pools = {s.labels.get("pool") for f in families if f.name == "cbm_pool_threads" for s in f.samples}
    if pools != {"main", "other"}:
        sys.exit(f"the two pools' gauges must be told apart by their label: {pools}")
    bus = {(s.labels.get("event"), s.labels.get("subscription"), s.labels.get("group"))
           for f in families if f.name == "cbm_bus_delivered" for s in f.samples}
    for expected in (('order "paid"', "billing-a", "billing"), ('order "paid"', "billing-b", "billing"),
                     ("int", "picky", "")):
        if expected not in bus:
            sys.exit(f"bus subscription series {expected} missing; have {sorted(bus)}")
    dead = [s.value for f in families if f.name == "cbm_bus_dead_lettered" for s in f.samples
            if s.labels.get("subscription") == "picky"]
    if dead != [1.0]:
        sys.exit(f"the failed int event must be dead-lettered once: {dead}")
    print(f"parsed {len(families)} families, {len(seen)} unique series, {len(callbacks)} callbacks")


main()
