// cbm/callback_options.hpp - cbm::CallbackOptions<Signature>: how one
// callback is registered (priority, once, name, filter, context, labels,
// timeout, retry, circuit breaker, slow threshold, executor). The same type serves CallbackGroup and
// CallbackRegistry (their `options_type`).
#pragma once

#include <chrono>
#include <string>

#include "context.hpp"
#include "executor.hpp"
#include "detail/typed_node.hpp"
#include "observer.hpp"
#include "resilience.hpp"

namespace cbm {

// Fields are declared in this order so that designated initializers work:
// {.priority = 10, .once = true, .name = "audit", .filter = f,
//  .context = ctx, .labels = {{"team", "payments"}}, .timeout = 50ms}.
template <class Signature>
struct CallbackOptions {
    int priority = 0;       // higher runs first; equal priorities run in registration order
    bool once = false;      // run at most once across all threads, then become unregistered
    std::string name = {};  // reported in Failure::name, metrics and dead letters
    typename detail::FilterOf<Signature>::type filter = {};  // run only where this returns true
    // Unregistered (as by unregister_nowait) when this context is canceled;
    // never registered if it is canceled already. Background: no effect.
    Context context = {};
    // Metric labels (instrumented groups export them; see metrics.hpp).
    // Throws std::invalid_argument from add() for a name Prometheus rejects.
    Labels labels = {};
    // Resilience (resilience.hpp): a deadline per attempt (0: none), retries
    // with backoff, a circuit breaker. add() throws std::invalid_argument for
    // settings that make no sense (negative times, 0 attempts, a multiplier
    // below 1, jitter outside [0, 1], a breaker on a `once` callback).
    std::chrono::nanoseconds timeout{0};
    RetryOptions retry = {};
    CircuitBreakerOptions circuit_breaker = {};
    // Instrumented groups: time every invocation and count those that take
    // longer than this exactly (slow_calls_total; metrics.hpp). 0: off.
    // Costs two clock reads per invocation. add() throws
    // std::invalid_argument for a negative threshold, or std::logic_error
    // when the group has no metrics.
    std::chrono::nanoseconds slow_threshold{0};
    // Where trigger_async() runs this callback, instead of the group's
    // GroupOptions::executor; cbm::inline_executor(): on the calling thread.
    // Empty: the group's. trigger() always runs it on the calling thread.
    AnyExecutor executor = {};
};

}  // namespace cbm
