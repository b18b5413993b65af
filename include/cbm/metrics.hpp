// cbm/metrics.hpp - what an instrumented group or registry reports about its
// callbacks (GroupOptions::metrics). Its Prometheus text rendering is in
// prometheus.hpp, included at the end.
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

#include <cstdint>
#include <string>
#include <vector>

#include "error_policy.hpp"
#include "histogram.hpp"
#include "observer.hpp"

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
    bool circuit_open = false;           // its circuit breaker is not closed now (open or half open)
    CircuitState circuit = CircuitState::closed;  // where its circuit breaker is now
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
                    for (const auto& mine : m.labels) {
                        if (mine == label) return false;
                    }
                    return true;  // not shared by this callback
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

}  // namespace cbm

// to_prometheus(MetricsSnapshot) belongs with the snapshot it renders.
#include "prometheus.hpp"
