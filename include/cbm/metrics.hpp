// cbm/metrics.hpp - what an instrumented group or registry reports about its
// callbacks (GroupOptions::metrics), and its Prometheus text rendering.
//
//   cbm::CallbackGroup<void(int)> group({.metrics = true});
//   group.add(f, {.name = "charge", .labels = {{"team", "payments"}}});
//   ...
//   std::string text = cbm::to_prometheus(group.metrics());
//
// Counts are exact. Latency is sampled: each thread times one invocation in
// GroupOptions::latency_sample_every (every one while an observer is set),
// and percentiles come from a log-linear histogram within 1/32 of the exact
// sampled value (histogram.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "detail/callback_stats.hpp"
#include "histogram.hpp"

namespace cbm {

// One callback's numbers at one moment.
struct CallbackMetrics {
    std::string key;   // the registry key as text; empty for a group
    std::string name;  // CallbackOptions::name
    Labels labels;     // CallbackOptions::labels
    std::uint64_t invoked = 0;           // started (its filter passed), including those that threw
    std::uint64_t failed = 0;            // threw, in the callback or in its filter
    std::uint64_t skipped_filtered = 0;  // its filter returned false
    std::uint64_t skipped_canceled = 0;  // not reached: the trigger's context or stop token ended it first
    std::uint64_t skipped_circuit_open = 0;  // skipped while its circuit breaker was open
    std::uint64_t timed_out = 0;         // attempts that overran CallbackOptions::timeout
    std::uint64_t retries = 0;           // attempts after the first
    bool circuit_open = false;           // its circuit breaker is open now
    HistogramSnapshot latency_ns;        // sampled invocations
};

// The registered callbacks of one group or registry. Each callback's numbers
// are read without stopping triggers: each counter is a value it had during
// the call (not one global instant).
struct MetricsSnapshot {
    std::vector<CallbackMetrics> callbacks;

    // One entry per key (in order of first appearance; one entry for a
    // group): counts summed and latency merged over its callbacks. The name
    // is empty; labels are those every callback of the key shares.
    std::vector<CallbackMetrics> by_key() const {
        std::vector<CallbackMetrics> totals;
        for (const CallbackMetrics& m : callbacks) {
            CallbackMetrics* total = nullptr;
            for (CallbackMetrics& t : totals) {
                if (t.key == m.key) total = &t;
            }
            if (total == nullptr) {
                totals.push_back(CallbackMetrics{});
                total = &totals.back();
                total->key = m.key;
                total->labels = m.labels;
            } else {
                std::erase_if(total->labels, [&](const auto& label) {
                    return std::find(m.labels.begin(), m.labels.end(), label) == m.labels.end();
                });
            }
            total->invoked += m.invoked;
            total->failed += m.failed;
            total->skipped_filtered += m.skipped_filtered;
            total->skipped_canceled += m.skipped_canceled;
            total->skipped_circuit_open += m.skipped_circuit_open;
            total->timed_out += m.timed_out;
            total->retries += m.retries;
            total->circuit_open = total->circuit_open || m.circuit_open;
            total->latency_ns.merge(m.latency_ns);
        }
        return totals;
    }
};

namespace detail {

inline bool valid_label_name(std::string_view n) noexcept {
    if (n.empty() || (n.size() >= 2 && n[0] == '_' && n[1] == '_')) return false;
    for (std::size_t i = 0; i < n.size(); ++i) {
        const char c = n[i];
        const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        if (!letter && !(i > 0 && c >= '0' && c <= '9')) return false;
    }
    return n != "key" && n != "callback" && n != "quantile" && n != "reason" && n != "le";
}

// Throws std::invalid_argument naming the first label that cannot be a
// Prometheus label (or collides with one cbm adds).
inline void check_labels(const Labels& labels) {
    for (std::size_t i = 0; i < labels.size(); ++i) {
        if (!valid_label_name(labels[i].first)) {
            throw std::invalid_argument("cbm: invalid metric label name \"" + labels[i].first +
                                        "\" (use [a-zA-Z_][a-zA-Z0-9_]*, not starting with __, and not key, "
                                        "callback, quantile, reason or le)");
        }
        for (std::size_t j = 0; j < i; ++j) {
            if (labels[j].first == labels[i].first) {
                throw std::invalid_argument("cbm: duplicate metric label \"" + labels[i].first + "\"");
            }
        }
    }
}

inline CallbackMetrics read_stats(const CallbackStats& s, const std::string& name, bool circuit_open) {
    CallbackMetrics m;
    m.key = s.key_text;
    m.name = name;
    m.labels = s.labels;
    m.invoked = s.invoked.read();
    m.failed = s.failed.load(std::memory_order_relaxed);
    m.skipped_filtered = s.skipped_filtered.read();
    m.skipped_canceled = s.skipped_canceled.load(std::memory_order_relaxed);
    m.skipped_circuit_open = s.skipped_circuit_open.load(std::memory_order_relaxed);
    m.timed_out = s.timed_out.load(std::memory_order_relaxed);
    m.retries = s.retries.load(std::memory_order_relaxed);
    m.circuit_open = circuit_open;
    m.latency_ns = s.latency.snapshot();
    return m;
}

// Prometheus label value escaping: backslash, double quote and newline.
inline void append_escaped(std::string& out, std::string_view value) {
    for (char c : value) {
        switch (c) {
            case '\\': out += "\\\\"; break;
            case '"': out += "\\\""; break;
            case '\n': out += "\\n"; break;
            default: out += c;
        }
    }
}

inline std::string label_set(const CallbackMetrics& m, std::string_view extra_name = {}, std::string_view extra = {}) {
    std::string out = "{key=\"";
    append_escaped(out, m.key);
    out += "\",callback=\"";
    append_escaped(out, m.name);
    out += '"';
    for (const auto& [name, value] : m.labels) {
        out += ',';
        out += name;
        out += "=\"";
        append_escaped(out, value);
        out += '"';
    }
    if (!extra_name.empty()) {
        out += ',';
        out += extra_name;
        out += "=\"";
        out += extra;
        out += '"';
    }
    out += '}';
    return out;
}

// Seconds from nanoseconds, printed so that Prometheus parses it.
inline std::string seconds(double ns) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.9g", ns * 1e-9);
    return buffer;
}

}  // namespace detail

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
    for (const auto& m : snapshot.callbacks) out += p + "_invocations_total" + detail::label_set(m) + ' ' + std::to_string(m.invoked) + '\n';
    family("_failures_total", "counter", "Callback invocations (or filters) that threw.");
    for (const auto& m : snapshot.callbacks) out += p + "_failures_total" + detail::label_set(m) + ' ' + std::to_string(m.failed) + '\n';
    family("_skips_total", "counter", "Callbacks not run by a trigger, by reason.");
    for (const auto& m : snapshot.callbacks) {
        out += p + "_skips_total" + detail::label_set(m, "reason", "filtered") + ' ' + std::to_string(m.skipped_filtered) + '\n';
        out += p + "_skips_total" + detail::label_set(m, "reason", "canceled") + ' ' + std::to_string(m.skipped_canceled) + '\n';
        out += p + "_skips_total" + detail::label_set(m, "reason", "circuit_open") + ' ' +
               std::to_string(m.skipped_circuit_open) + '\n';
    }
    family("_timeouts_total", "counter", "Callback attempts that overran their timeout.");
    for (const auto& m : snapshot.callbacks) out += p + "_timeouts_total" + detail::label_set(m) + ' ' + std::to_string(m.timed_out) + '\n';
    family("_retries_total", "counter", "Callback attempts after the first.");
    for (const auto& m : snapshot.callbacks) out += p + "_retries_total" + detail::label_set(m) + ' ' + std::to_string(m.retries) + '\n';
    family("_circuit_open", "gauge", "1 while the callback's circuit breaker is open.");
    for (const auto& m : snapshot.callbacks) out += p + "_circuit_open" + detail::label_set(m) + ' ' + (m.circuit_open ? "1" : "0") + '\n';
    family("_latency_seconds", "summary", "Sampled callback latency.");
    for (const auto& m : snapshot.callbacks) {
        for (const auto& [q, pct] : {std::pair{"0.5", 50.0}, std::pair{"0.95", 95.0}, std::pair{"0.99", 99.0}}) {
            out += p + "_latency_seconds" + detail::label_set(m, "quantile", q) + ' ' +
                   detail::seconds(m.latency_ns.percentile(pct)) + '\n';
        }
        out += p + "_latency_seconds_sum" + detail::label_set(m) + ' ' +
               detail::seconds(static_cast<double>(m.latency_ns.sum())) + '\n';
        out += p + "_latency_seconds_count" + detail::label_set(m) + ' ' + std::to_string(m.latency_ns.count()) + '\n';
    }
    family("_latency_max_seconds", "gauge", "Largest sampled callback latency.");
    for (const auto& m : snapshot.callbacks) {
        out += p + "_latency_max_seconds" + detail::label_set(m) + ' ' +
               detail::seconds(static_cast<double>(m.latency_ns.max())) + '\n';
    }
    return out;
}

}  // namespace cbm
