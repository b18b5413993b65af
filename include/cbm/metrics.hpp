// cbm/metrics.hpp - what an instrumented group or registry reports about its
// callbacks (GroupOptions::metrics). Its Prometheus text rendering is in
// prometheus.hpp, included at the end.
//
//   cbm::CallbackGroup<void(int)> group({.metrics = true});
//   group.add(f, {.name = "charge", .labels = {{"team", "payments"}}});
//   ...
//   std::string text = cbm::to_prometheus(group.metrics());
//
// One entry per metric series. A named callback's series is its (key, name,
// labels): callbacks that share them add to one series, and a callback
// added again under them continues it. An unnamed callback has a series of
// its own, told apart by `id`. A series stays after its callbacks are gone
// (registered == 0), with its counts, until the group or registry is
// destroyed: Prometheus never sees a counter reset. At most
// GroupOptions::metrics_retention such series are kept; the oldest go first
// and are counted in MetricsSnapshot::dropped_series.
//
// Counts are exact. Latency is exact (every invocation timed) for series
// whose first callback has a timeout, a circuit breaker or a slow_threshold,
// and in groups with latency_sample_every == 1; otherwise it is sampled,
// each thread timing one invocation in latency_sample_every, and the export
// says so (latency_sampled). Percentiles come from a log-linear histogram
// within 1/32 of the exact value (histogram.hpp). With a slow_threshold,
// `slow` counts every invocation longer than it, exactly.
#pragma once

#include <chrono>
#include <cstddef>
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
    std::uint64_t id = 0;  // an unnamed callback's series number in its group (0 when named)
    Labels labels;     // CallbackOptions::labels
    std::uint32_t registered = 0;  // callbacks of this series registered now (0: kept after they went)
    std::uint64_t invoked = 0;           // started (its filter passed), including those that threw
    // Failures as reported to the error handler: invocations that failed
    // for good (threw or overran their timeout, after their retries), and
    // filters that threw. Also counted, though no handler hears of them:
    // trigger_async invocations whose callback was unregistered during a
    // retry backoff (unregister() does not wait for a backoff).
    std::uint64_t failed = 0;
    std::uint64_t skipped_filtered = 0;  // its filter returned false
    std::uint64_t skipped_blocked = 0;   // a cbm::Blocker (Registration::block()) blocked it
    std::uint64_t skipped_canceled = 0;  // not reached: the trigger's context or stop token ended it first
    std::uint64_t skipped_circuit_open = 0;  // skipped while its circuit breaker was open
    std::uint64_t timed_out = 0;         // attempts that overran CallbackOptions::timeout (a breakdown)
    std::uint64_t retries = 0;           // attempts after the first
    std::uint64_t slow = 0;              // invocations longer than slow_threshold (exact)
    std::chrono::nanoseconds slow_threshold{0};  // 0: slow calls not counted
    bool circuit_open = false;           // its circuit breaker is not closed now (open or half open)
    CircuitState circuit = CircuitState::closed;  // where its circuit breaker is now
    bool latency_sampled = true;         // latency_ns holds one invocation in latency_sample_every
    HistogramSnapshot latency_ns;        // timed invocations
    // Invocations of trigger_async() that an executor ran: the time from
    // submission to start, every one (latency_ns is the run time).
    HistogramSnapshot queue_wait_ns;
};

// The registered callbacks of one group or registry. Each callback's numbers
// are read without stopping triggers: each counter is a value it had during
// the call (not one global instant).
struct MetricsSnapshot {
    std::vector<CallbackMetrics> callbacks;  // one per series, in order of creation
    std::uint64_t dropped_series = 0;        // series dropped past GroupOptions::metrics_retention

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
                total->latency_sampled = false;  // sampled if any part is
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
            total->skipped_blocked += m.skipped_blocked;
            total->timed_out += m.timed_out;
            total->retries += m.retries;
            total->slow += m.slow;
            total->registered += m.registered;
            total->latency_sampled = total->latency_sampled || m.latency_sampled;
            total->circuit_open = total->circuit_open || m.circuit_open;
            if (m.circuit > total->circuit) total->circuit = m.circuit;
            total->latency_ns.merge(m.latency_ns);
            total->queue_wait_ns.merge(m.queue_wait_ns);
        }
        return totals;
    }
};

// A ThreadPool's numbers at one moment (thread_pool.hpp), all read under
// its lock.
struct ThreadPoolMetrics {
    std::size_t threads = 0;         // running now
    std::size_t busy = 0;            // running a task now (pool threads, and callers running one)
    std::size_t queued = 0;          // tasks waiting now
    std::size_t queue_capacity = 0;
    std::size_t blocked_producers = 0;  // threads waiting in execute() for room (Overflow::block)
    std::size_t min_threads = 0;
    std::size_t max_threads = 0;
    std::size_t peak_threads = 0;    // most threads running at once so far
    std::uint64_t threads_started = 0;
    std::uint64_t submitted = 0;     // tasks queued
    std::uint64_t completed = 0;     // tasks that ran (on the pool or on a caller)
    std::uint64_t rejected = 0;      // refused because the queue was full (Overflow::reject)
    std::uint64_t ran_on_caller = 0; // run by the submitting thread (caller_runs, or a full queue seen by a pool task)
    std::uint64_t task_errors = 0;   // tasks that threw
    bool shut_down = false;
};

}  // namespace cbm

// to_prometheus(MetricsSnapshot) belongs with the snapshot it renders.
#include "prometheus.hpp"
