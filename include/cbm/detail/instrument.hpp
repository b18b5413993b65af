// cbm/detail/instrument.hpp - the instrumentation step: counts, sampled
// latency and the observer around one call, for callbacks of a group built
// with GroupOptions::metrics (nodes that have CallbackStats).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>

#include "callback_stats.hpp"
#include "group_state.hpp"
#include "invoke.hpp"
#include "tick_clock.hpp"
#include "typed_node.hpp"

namespace cbm::detail {

// An invocation counted, not timed: the trigger loop's inline path for
// instrumented callbacks, and the core of invoke_instrumented. Returns and
// stores as invoke_captured does. A failure is counted where it is
// reported (failure.hpp), once per invocation, after its retries.
template <class Signature, class... A>
[[gnu::always_inline]] inline bool invoke_counted(const Node<Signature>& node, std::uint32_t thread_index, std::exception_ptr& error,
                           A&... args) {
    const bool returned = invoke_captured(node, error, args...);
    node.stats->invoked.add_from(thread_index);
    return returned;
}

// Runs the callable with metrics, sampling and the observer where the node
// is instrumented (plainly otherwise). Returns the exception, if any.
// `sampled`: the caller already decided that this call is timed.
template <class Signature, class... A>
std::exception_ptr invoke_instrumented(const Node<Signature>& node, GroupState& group, std::uint32_t thread_index,
                                       bool sampled, A&... args) {
    std::exception_ptr error;
    if (node.stats == nullptr) {
        invoke_captured(node, error, args...);
        return error;
    }
    const CallbackStats& stats = *node.stats;
    CallbackObserver* observer = group.observer.load(std::memory_order_acquire);
    const bool timed =
        observer != nullptr || sampled || stats.exact_latency || sample_this_call(group.latency_sample_every);
    const CallbackEvent event{stats.key_text, node.name, stats.labels};
    std::uint64_t start = 0;
    if (timed) start = TickClock::now();
    if (observer != nullptr) observer->on_begin(event);
    invoke_counted(node, thread_index, error, args...);
    if (timed) {
        const std::chrono::nanoseconds duration = TickClock::between(start, TickClock::now());
        const auto ns = static_cast<std::uint64_t>(duration.count());
        node.stats->latency.record(ns);
        if (stats.slow_threshold_ns != 0 && ns > stats.slow_threshold_ns) CallbackStats::bump(node.stats->slow);
        if (observer != nullptr) observer->on_end(event, duration, error);
    }
    return error;
}

}  // namespace cbm::detail
