// cbm/detail/make_node.hpp - building the node of one add(), not yet linked
// into any list.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
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
    std::unique_ptr<CallbackStats> stats;
    if (group.metrics) stats = std::make_unique<CallbackStats>(std::move(key_text), std::move(options.labels));
    auto* node = new Node<Signature>(std::move(fn));
    node->stats = stats.release();
    node->resilience = resilience.release();
    node->filter = std::move(options.filter);
    node->state.store((node->filter ? kFiltered : 0u) | (options.once ? kOnce : 0u) |
                          (node->stats != nullptr ? kMeasured : 0u) | (node->resilience != nullptr ? kResilient : 0u),
                      std::memory_order_relaxed);
    node->priority = options.priority;
    node->name = std::move(options.name);
    node->group = &group;
    group.add_ref();
    return node;
}

}  // namespace cbm::detail
