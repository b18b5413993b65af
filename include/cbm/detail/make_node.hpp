// cbm/detail/make_node.hpp - building the node of one add(), not yet linked
// into any list.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "../callback.hpp"
#include "callback_stats.hpp"
#include "group_state.hpp"
#include "resilience_state.hpp"
#include "typed_node.hpp"
#include "validate.hpp"

namespace cbm::detail {

// Builds a node for `group` from `f` and `options` (a CallbackOptions), with
// one reference for the list and one for the first handle.
// The labels were checked already (GroupCore::prepare).
// Throws: std::invalid_argument for an empty callable or bad resilience
// settings; std::bad_alloc. Nothing is left behind then.
template <class Signature, class F, class Options>
Node<Signature>* make_node(GroupState& group, F&& f, Options&& options, std::string key_text = {}) {
    Callback<Signature> fn(std::forward<F>(f));
    if (!fn) throw std::invalid_argument("cbm: cannot register an empty callable");
    check_resilience(options);
    std::unique_ptr<Resilience> resilience;
    if (wants_resilience(options)) {
        resilience = std::make_unique<Resilience>();
        resilience->timeout = options.timeout;
        resilience->retry = options.retry;
        resilience->breaker = options.circuit_breaker;
    }
    if (options.slow_threshold.count() < 0) {
        throw std::invalid_argument("cbm: CallbackOptions::slow_threshold must not be negative");
    }
    if (options.slow_threshold.count() > 0 && !group.metrics) {
        throw std::logic_error("cbm: CallbackOptions::slow_threshold needs an instrumented group "
                               "(GroupOptions{.metrics = true})");
    }
    std::unique_ptr<AnyExecutor> executor;
    if (options.executor) executor = std::make_unique<AnyExecutor>(std::move(options.executor));
    CallbackStats* stats = nullptr;
    if (group.metrics) {
        // Every invocation of a callback that is timed anyway (timeout,
        // breaker) or asks for it (slow_threshold) is recorded.
        const SeriesSettings settings{
            .exact_latency = group.latency_sample_every == 1 || options.timeout.count() > 0 ||
                             options.circuit_breaker.failures > 0 || options.slow_threshold.count() > 0,
            .slow_threshold_ns = static_cast<std::uint64_t>(options.slow_threshold.count())};
        stats = group.series.attach(std::move(key_text), options.name, std::move(options.labels), settings);
    }
    Node<Signature>* node = nullptr;
    try {
        node = new Node<Signature>(std::move(fn));
    } catch (...) {
        if (stats != nullptr) {
            group.series.abandon(stats);
            stats->release_ref();
        }
        throw;
    }
    // A callable that takes its own handle (cbm::Self) learns its node
    // here, before any trigger can reach it.
    using Stored = std::decay_t<F>;
    if constexpr (requires(Stored& s, NodeBase* n) { s.bind_node(n); }) {
        CallbackAccess::target<Stored>(node->fn())->bind_node(node);
    }
    node->stats = stats;
    node->resilience = resilience.release();
    node->executor = executor.release();
    node->filter = std::move(options.filter);
    const bool timed_always = node->stats != nullptr && node->stats->exact_latency && group.latency_sample_every != 1;
    node->state.store((node->filter ? kFiltered : 0u) | (options.once ? kOnce : 0u) |
                          (node->stats != nullptr ? kMeasured : 0u) | (node->resilience != nullptr ? kResilient : 0u) |
                          (timed_always ? kTimed : 0u),
                      std::memory_order_relaxed);
    node->priority = options.priority;
    node->name = std::move(options.name);
    node->group = &group;
    group.add_ref();
    return node;
}

}  // namespace cbm::detail
