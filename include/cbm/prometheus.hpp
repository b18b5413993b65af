// cbm/prometheus.hpp - cbm::to_prometheus: a MetricsSnapshot, or a
// ThreadPool's numbers, as Prometheus text.
//
//   std::string text = cbm::to_prometheus(group.metrics());
//   text += cbm::to_prometheus(pool.metrics(), "cbm_pool", {{"pool", "io"}});
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "detail/prometheus_text.hpp"
#include "metrics.hpp"

namespace cbm {

// Renders `snapshot` in the Prometheus text exposition format (version
// 0.0.4), one series per CallbackMetrics (metrics.hpp):
//   counters  <prefix>_invocations_total, <prefix>_failures_total (what the
//             error handler received: failed invocations, timeouts
//             included, and throwing filters), <prefix>_skips_total with
//             reason="filtered"|"canceled"|"circuit_open",
//             <prefix>_timeouts_total (attempts that overran, a breakdown
//             of failures and retries), <prefix>_retries_total, and, for
//             series with a slow_threshold, <prefix>_slow_calls_total;
//   gauges    <prefix>_registered (callbacks of the series registered now;
//             0 once they are gone and the series is kept),
//             <prefix>_circuit_open, and <prefix>_slow_threshold_seconds;
//   a summary <prefix>_latency_seconds with quantiles 0.5, 0.95 and 0.99,
//             _sum and _count (the number of timed invocations), labelled
//             sampled="true" where one invocation in latency_sample_every
//             was timed and "false" where every one was;
//   gauges    <prefix>_latency_max_seconds (exact series only) and
//             <prefix>_latency_sampled_max_seconds (the largest of the
//             sampled invocations: not the true maximum);
//   a summary <prefix>_queue_wait_seconds: trigger_async() to the start of
//             the callback on its executor (every such invocation; only
//             series that had one);
//   a counter <prefix>_series_dropped_total (series dropped past the
//             retention limit; no labels).
// Every series has the labels key and callback, id for an unnamed callback
// (so that two never collide), then the callback's own labels. Label values
// are escaped, and bytes that are not valid UTF-8 become U+FFFD.
// Throws: std::invalid_argument for a prefix Prometheus would reject (use
// [a-zA-Z_:][a-zA-Z0-9_:]*) or a label name it would reject or that
// collides with cbm's (key, callback, id, quantile, reason, sampled, le).
inline std::string to_prometheus(const MetricsSnapshot& snapshot, std::string_view prefix = "cbm_callback") {
    if (!detail::valid_metric_prefix(prefix)) {
        throw std::invalid_argument("cbm::to_prometheus: invalid metric name prefix \"" + std::string(prefix) +
                                    "\" (use [a-zA-Z_:][a-zA-Z0-9_:]*)");
    }
    for (const CallbackMetrics& m : snapshot.callbacks) {
        for (const auto& [name, value] : m.labels) {
            if (!detail::valid_label_name(name)) {
                throw std::invalid_argument("cbm::to_prometheus: invalid label name \"" + name + "\"");
            }
        }
    }
    std::string out;
    const std::string p(prefix);
    auto family = [&](const char* suffix, const char* type, const char* help) {
        out += "# HELP " + p + suffix + ' ' + help + '\n';
        out += "# TYPE " + p + suffix + ' ' + type + '\n';
    };
    auto labels_of = [](const CallbackMetrics& m) {
        return detail::SeriesLabels{m.key, m.name, m.id, &m.labels};
    };
    auto sample = [&](const char* suffix, const std::string& labels, const std::string& value) {
        out += p;
        out += suffix;
        out += labels;
        out += ' ';
        out += value;
        out += '\n';
    };
    auto counter = [&](const char* suffix, const char* help, auto value_of) {
        family(suffix, "counter", help);
        for (const CallbackMetrics& m : snapshot.callbacks) {
            sample(suffix, detail::label_set(labels_of(m)), std::to_string(value_of(m)));
        }
    };
    counter("_invocations_total", "Callback invocations started.", [](const CallbackMetrics& m) { return m.invoked; });
    counter("_failures_total",
            "Failures reported to the error handler: invocations that threw or overran their timeout (after "
            "retries), and filters that threw.",
            [](const CallbackMetrics& m) { return m.failed; });
    family("_skips_total", "counter", "Callbacks not run by a trigger, by reason.");
    for (const CallbackMetrics& m : snapshot.callbacks) {
        sample("_skips_total", detail::label_set(labels_of(m), "reason", "filtered"), std::to_string(m.skipped_filtered));
        sample("_skips_total", detail::label_set(labels_of(m), "reason", "canceled"), std::to_string(m.skipped_canceled));
        sample("_skips_total", detail::label_set(labels_of(m), "reason", "circuit_open"),
               std::to_string(m.skipped_circuit_open));
        sample("_skips_total", detail::label_set(labels_of(m), "reason", "blocked"), std::to_string(m.skipped_blocked));
    }
    counter("_timeouts_total", "Callback attempts that overran their timeout.",
            [](const CallbackMetrics& m) { return m.timed_out; });
    counter("_retries_total", "Callback attempts after the first.", [](const CallbackMetrics& m) { return m.retries; });
    family("_slow_calls_total", "counter", "Invocations longer than the callback's slow threshold (exact).");
    for (const CallbackMetrics& m : snapshot.callbacks) {
        if (m.slow_threshold.count() > 0) sample("_slow_calls_total", detail::label_set(labels_of(m)), std::to_string(m.slow));
    }
    family("_slow_threshold_seconds", "gauge", "The callback's slow threshold.");
    for (const CallbackMetrics& m : snapshot.callbacks) {
        if (m.slow_threshold.count() > 0) {
            sample("_slow_threshold_seconds", detail::label_set(labels_of(m)),
                   detail::seconds(static_cast<double>(m.slow_threshold.count())));
        }
    }
    family("_registered", "gauge", "Callbacks of this series registered now (0: kept after they were unregistered).");
    for (const CallbackMetrics& m : snapshot.callbacks) {
        sample("_registered", detail::label_set(labels_of(m)), std::to_string(m.registered));
    }
    family("_circuit_open", "gauge", "1 while the callback's circuit breaker is open or half open.");
    for (const CallbackMetrics& m : snapshot.callbacks) {
        sample("_circuit_open", detail::label_set(labels_of(m)), m.circuit_open ? "1" : "0");
    }
    family("_latency_seconds", "summary",
           "Callback latency: of every invocation (sampled=\"false\") or of one in latency_sample_every per thread "
           "(sampled=\"true\").");
    for (const CallbackMetrics& m : snapshot.callbacks) {
        const char* sampled = m.latency_sampled ? "true" : "false";
        for (const auto& [q, pct] : {std::pair{"0.5", 50.0}, std::pair{"0.95", 95.0}, std::pair{"0.99", 99.0}}) {
            sample("_latency_seconds", detail::label_set(labels_of(m), "sampled", sampled, "quantile", q),
                   detail::seconds(m.latency_ns.percentile(pct)));
        }
        const std::string labels = detail::label_set(labels_of(m), "sampled", sampled);
        sample("_latency_seconds_sum", labels, detail::seconds(static_cast<double>(m.latency_ns.sum())));
        sample("_latency_seconds_count", labels, std::to_string(m.latency_ns.count()));
    }
    family("_latency_max_seconds", "gauge", "Largest callback latency (every invocation timed).");
    for (const CallbackMetrics& m : snapshot.callbacks) {
        if (!m.latency_sampled) {
            sample("_latency_max_seconds", detail::label_set(labels_of(m)),
                   detail::seconds(static_cast<double>(m.latency_ns.max())));
        }
    }
    family("_latency_sampled_max_seconds", "gauge",
           "Largest latency among the sampled invocations (not the true maximum).");
    for (const CallbackMetrics& m : snapshot.callbacks) {
        if (m.latency_sampled) {
            sample("_latency_sampled_max_seconds", detail::label_set(labels_of(m)),
                   detail::seconds(static_cast<double>(m.latency_ns.max())));
        }
    }
    bool any_queued = false;
    for (const CallbackMetrics& m : snapshot.callbacks) any_queued = any_queued || m.queue_wait_ns.count() != 0;
    if (any_queued) {
        family("_queue_wait_seconds", "summary",
               "Time from trigger_async() to the start of the callback on its executor (every such invocation).");
    }
    for (const CallbackMetrics& m : snapshot.callbacks) {
        if (m.queue_wait_ns.count() == 0) continue;
        for (const auto& [q, pct] : {std::pair{"0.5", 50.0}, std::pair{"0.95", 95.0}, std::pair{"0.99", 99.0}}) {
            sample("_queue_wait_seconds", detail::label_set(labels_of(m), "quantile", q),
                   detail::seconds(m.queue_wait_ns.percentile(pct)));
        }
        const std::string labels = detail::label_set(labels_of(m));
        sample("_queue_wait_seconds_sum", labels, detail::seconds(static_cast<double>(m.queue_wait_ns.sum())));
        sample("_queue_wait_seconds_count", labels, std::to_string(m.queue_wait_ns.count()));
    }
    family("_series_dropped_total", "counter", "Series of unregistered callbacks dropped past the retention limit.");
    out += p + "_series_dropped_total " + std::to_string(snapshot.dropped_series) + '\n';
    return out;
}

// Renders a ThreadPool's numbers (metrics.hpp) in the same format:
//   gauges    <prefix>_threads, <prefix>_busy_threads, <prefix>_queue_depth,
//             <prefix>_queue_capacity, <prefix>_blocked_producers,
//             <prefix>_max_threads,
//             <prefix>_peak_threads;
//   counters  <prefix>_tasks_submitted_total, <prefix>_tasks_completed_total,
//             <prefix>_rejected_total (queue full, Overflow::reject),
//             <prefix>_caller_runs_total, <prefix>_task_errors_total,
//             <prefix>_threads_started_total.
// `labels` (for example {{"pool", "io"}}) go on every sample, so that the
// text of several pools can be concatenated.
// Throws: std::invalid_argument for a prefix or label name Prometheus would
// reject.
inline std::string to_prometheus(const ThreadPoolMetrics& pool, std::string_view prefix = "cbm_pool",
                                 const Labels& labels = {}) {
    if (!detail::valid_metric_prefix(prefix)) {
        throw std::invalid_argument("cbm::to_prometheus: invalid metric name prefix \"" + std::string(prefix) +
                                    "\" (use [a-zA-Z_:][a-zA-Z0-9_:]*)");
    }
    for (const auto& [name, value] : labels) {
        if (!detail::valid_label_name(name)) {
            throw std::invalid_argument("cbm::to_prometheus: invalid label name \"" + name + "\"");
        }
    }
    const std::string label_text = detail::plain_label_set(labels);
    std::string out;
    auto metric = [&](const char* suffix, const char* type, const char* help, auto value) {
        const std::string name = std::string(prefix) + suffix;
        out += "# HELP " + name + ' ' + help + '\n';
        out += "# TYPE " + name + ' ' + type + '\n';
        out += name + label_text + ' ' + std::to_string(value) + '\n';
    };
    metric("_threads", "gauge", "Threads of the pool running now.", pool.threads);
    metric("_busy_threads", "gauge", "Threads running a task now (callers running one included).", pool.busy);
    metric("_queue_depth", "gauge", "Tasks waiting in the queue now.", pool.queued);
    metric("_queue_capacity", "gauge", "Tasks the queue holds at most.", pool.queue_capacity);
    metric("_blocked_producers", "gauge", "Threads waiting for room in the queue now.", pool.blocked_producers);
    metric("_max_threads", "gauge", "Threads the pool grows to at most.", pool.max_threads);
    metric("_peak_threads", "gauge", "Most threads running at once so far.", pool.peak_threads);
    metric("_tasks_submitted_total", "counter", "Tasks queued.", pool.submitted);
    metric("_tasks_completed_total", "counter", "Tasks that ran, on the pool or on a caller.", pool.completed);
    metric("_rejected_total", "counter", "Tasks refused because the queue was full.", pool.rejected);
    metric("_caller_runs_total", "counter", "Tasks run by the submitting thread because the queue was full.",
           pool.ran_on_caller);
    metric("_task_errors_total", "counter", "Tasks that threw.", pool.task_errors);
    metric("_threads_started_total", "counter", "Threads started so far.", pool.threads_started);
    return out;
}

}  // namespace cbm
