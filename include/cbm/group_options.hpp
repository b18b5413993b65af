// cbm/group_options.hpp - construction options of a CallbackGroup or a
// CallbackRegistry.
#pragma once

#include <cstdint>

#include "error_policy.hpp"
#include "executor.hpp"
#include "resilience.hpp"  // ResilienceClock

namespace cbm {

// Fields in this order for designated initializers:
// cbm::CallbackGroup<void(int)> g({.error_policy = cbm::ErrorPolicy::stop, .metrics = true});
struct GroupOptions {
    ErrorPolicy error_policy = ErrorPolicy::collect;
    // Count invocations, failures and skips per callback and sample their
    // latency; enables metrics() and observers (metrics.hpp). Off: no cost
    // on trigger.
    bool metrics = false;
    // Time one invocation in this many, per thread (1: every invocation).
    // Callbacks with a timeout, a circuit breaker or a slow_threshold are
    // timed on every invocation anyway (CallbackOptions).
    std::uint32_t latency_sample_every = 64;
    // The clock of timeouts, retry backoff and circuit cool-downs
    // (resilience.hpp); null: the steady clock. Must outlive the group.
    ResilienceClock* clock = nullptr;
    // How many metric series of callbacks that are gone metrics() keeps
    // reporting (metrics.hpp); past it the oldest are dropped and counted.
    std::uint32_t metrics_retention = 1024;
    // Where trigger_async() runs each callback (executor.hpp): one task per
    // invocation. Empty: on the calling thread, during trigger_async().
    // CallbackOptions::executor overrides it per callback. trigger() always
    // runs every callback on the calling thread.
    AnyExecutor executor = {};
};

}  // namespace cbm
