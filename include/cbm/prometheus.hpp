// cbm/prometheus.hpp - cbm::to_prometheus: a MetricsSnapshot as Prometheus
// text.
//
//   std::string text = cbm::to_prometheus(group.metrics());
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include "detail/prometheus_text.hpp"
#include "metrics.hpp"

namespace cbm {

// Renders `snapshot` in the Prometheus text exposition format (version
// 0.0.4): counters <prefix>_invocations_total, <prefix>_failures_total,
// <prefix>_skips_total{reason="filtered"|"canceled"|"circuit_open"},
// <prefix>_timeouts_total and <prefix>_retries_total; a gauge
// <prefix>_circuit_open; a summary
// <prefix>_latency_seconds with quantiles 0.5, 0.95 and 0.99 of the sampled
// latency (its _count is the number of samples); and a gauge
// <prefix>_latency_max_seconds. Every series has the labels key and
// callback, then the callback's own labels; label values are escaped.
inline std::string to_prometheus(const MetricsSnapshot& snapshot, std::string_view prefix = "cbm_callback") {
    std::string out;
    const std::string p(prefix);
    auto family = [&](const char* suffix, const char* type, const char* help) {
        out += "# HELP " + p + suffix + ' ' + help + '\n';
        out += "# TYPE " + p + suffix + ' ' + type + '\n';
    };
    family("_invocations_total", "counter", "Callback invocations started.");
    for (const auto& m : snapshot.callbacks) out += p + "_invocations_total" + detail::label_set(m.key, m.name, m.labels) + ' ' + std::to_string(m.invoked) + '\n';
    family("_failures_total", "counter", "Callback invocations (or filters) that threw.");
    for (const auto& m : snapshot.callbacks) out += p + "_failures_total" + detail::label_set(m.key, m.name, m.labels) + ' ' + std::to_string(m.failed) + '\n';
    family("_skips_total", "counter", "Callbacks not run by a trigger, by reason.");
    for (const auto& m : snapshot.callbacks) {
        out += p + "_skips_total" + detail::label_set(m.key, m.name, m.labels, "reason", "filtered") + ' ' + std::to_string(m.skipped_filtered) + '\n';
        out += p + "_skips_total" + detail::label_set(m.key, m.name, m.labels, "reason", "canceled") + ' ' + std::to_string(m.skipped_canceled) + '\n';
        out += p + "_skips_total" + detail::label_set(m.key, m.name, m.labels, "reason", "circuit_open") + ' ' +
               std::to_string(m.skipped_circuit_open) + '\n';
    }
    family("_timeouts_total", "counter", "Callback attempts that overran their timeout.");
    for (const auto& m : snapshot.callbacks) out += p + "_timeouts_total" + detail::label_set(m.key, m.name, m.labels) + ' ' + std::to_string(m.timed_out) + '\n';
    family("_retries_total", "counter", "Callback attempts after the first.");
    for (const auto& m : snapshot.callbacks) out += p + "_retries_total" + detail::label_set(m.key, m.name, m.labels) + ' ' + std::to_string(m.retries) + '\n';
    family("_circuit_open", "gauge", "1 while the callback's circuit breaker is open.");
    for (const auto& m : snapshot.callbacks) out += p + "_circuit_open" + detail::label_set(m.key, m.name, m.labels) + ' ' + (m.circuit_open ? "1" : "0") + '\n';
    family("_latency_seconds", "summary", "Sampled callback latency.");
    for (const auto& m : snapshot.callbacks) {
        for (const auto& [q, pct] : {std::pair{"0.5", 50.0}, std::pair{"0.95", 95.0}, std::pair{"0.99", 99.0}}) {
            out += p + "_latency_seconds" + detail::label_set(m.key, m.name, m.labels, "quantile", q) + ' ' +
                   detail::seconds(m.latency_ns.percentile(pct)) + '\n';
        }
        out += p + "_latency_seconds_sum" + detail::label_set(m.key, m.name, m.labels) + ' ' +
               detail::seconds(static_cast<double>(m.latency_ns.sum())) + '\n';
        out += p + "_latency_seconds_count" + detail::label_set(m.key, m.name, m.labels) + ' ' + std::to_string(m.latency_ns.count()) + '\n';
    }
    family("_latency_max_seconds", "gauge", "Largest sampled callback latency.");
    for (const auto& m : snapshot.callbacks) {
        out += p + "_latency_max_seconds" + detail::label_set(m.key, m.name, m.labels) + ' ' +
               detail::seconds(static_cast<double>(m.latency_ns.max())) + '\n';
    }
    return out;
}

}  // namespace cbm
