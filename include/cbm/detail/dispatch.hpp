// cbm/detail/dispatch.hpp - typed callback nodes and the trigger loop.
//
// Memory ordering: see callback_list.hpp. The loop below is the reader side:
// it takes no lock and, apart from claiming a `once` callback, performs no
// read-modify-write on memory shared with other threads.
#pragma once

#include <cstdint>
#include <exception>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "../callback.hpp"
#include "../error_policy.hpp"
#include "callback_list.hpp"

namespace cbm::detail {

template <class Signature>
struct FilterOf;
template <class R, class... Args>
struct FilterOf<R(Args...)> {
    using type = Callback<bool(const std::remove_cvref_t<Args>&...)>;
};

template <class Signature>
struct Node final : NodeBase {
    Callback<Signature> fn;
    typename FilterOf<Signature>::type filter;

    static void destroy_target_of(NodeBase* base) noexcept {
        auto* self = static_cast<Node*>(base);
        self->fn.reset();
        self->filter.reset();
    }
    static void delete_of(NodeBase* base) noexcept { delete static_cast<Node*>(base); }
};

// Builds a node for `anchor`, not yet linked. Throws std::invalid_argument for
// an empty callable, before anything is allocated.
template <class Signature, class F, class Options>
Node<Signature>* make_node(Anchor& anchor, F&& f, Options&& options) {
    Callback<Signature> fn(std::forward<F>(f));
    if (!fn) throw std::invalid_argument("cbm: cannot register an empty callable");
    auto* node = new Node<Signature>;
    node->fn = std::move(fn);
    node->filter = std::move(options.filter);
    node->priority = options.priority;
    node->once = options.once;
    node->name = std::move(options.name);
    node->destroy_target = &Node<Signature>::destroy_target_of;
    node->delete_node = &Node<Signature>::delete_of;
    node->anchor = &anchor;
    anchor.add_ref();
    return node;
}

inline void record_failure(TriggerResult& result, const std::shared_ptr<const ErrorHandler>& handler,
                           const NodeBase& node, std::exception_ptr error, bool in_filter) noexcept {
    ++result.failed;
    try {
        result.failures.push_back(Failure{node.name, std::move(error), in_filter});
        if (handler && *handler) (*handler)(result.failures.back());
    } catch (...) {
        // The handler must not stop the other callbacks (error_policy.hpp).
    }
}

// Runs the callbacks of `core` in order. `should_stop()` is checked before
// each callback. Runs with the caller's TriggerScope already entered for the
// domain, so that the registry's key lookup and the list walk are one
// read-side section.
template <class Signature, class ShouldStop, class... A>
TriggerResult run_list(TriggerScope& scope, ListCore& core, Anchor& anchor, ShouldStop&& should_stop,
                       A&... args) {
    TriggerResult result;
    std::shared_ptr<const ErrorHandler> handler;
    bool handler_loaded = false;
    bool halted = false;
    const std::uint32_t limit = core.published_seq.load(std::memory_order_acquire);
    for (NodeBase* base = core.head.load(std::memory_order_acquire); base != nullptr;
         base = base->next.load(std::memory_order_acquire)) {
        if (static_cast<std::int32_t>(base->seq - limit) > 0) continue;  // added after we started
        if (halted || should_stop()) {
            if ((base->state.load(std::memory_order_relaxed) & kUnregistered) == 0) ++result.skipped;
            halted = true;
            result.stopped = true;
            continue;
        }
        auto* node = static_cast<Node<Signature>*>(base);
        scope.announce(node);
        bool claimed_once = false;
        if ((node->state.load(std::memory_order_acquire) & kUnregistered) == 0) {
            bool selected = true;
            std::exception_ptr error;
            bool in_filter = false;
            if (node->filter) {
                try {
                    selected = node->filter(args...);
                } catch (...) {
                    error = std::current_exception();
                    in_filter = true;
                    selected = false;
                }
            }
            if (selected && node->once) {
                claimed_once = (node->state.fetch_or(kUnregistered, std::memory_order_acq_rel) &
                                kUnregistered) == 0;
                selected = claimed_once;
            }
            if (selected) {
                ++result.invoked;
                try {
                    node->fn(args...);
                } catch (...) {
                    error = std::current_exception();
                }
            } else if (!error) {
                ++result.skipped;
            }
            if (error) {
                if (!handler_loaded) {
                    handler = anchor.error_handler();
                    handler_loaded = true;
                }
                record_failure(result, handler, *node, std::move(error), in_filter);
                if (anchor.policy == ErrorPolicy::stop) {
                    halted = true;
                    result.stopped = true;
                }
            }
        }
        scope.withdraw();
        if ((node->state.load(std::memory_order_relaxed) & kWaiter) != 0) notify_waiters(*node);
        if (claimed_once) detach(node);
    }
    if (anchor.policy == ErrorPolicy::rethrow && !result.failures.empty()) {
        std::rethrow_exception(result.failures.front().error);
    }
    return result;
}

struct NeverStop {
    constexpr bool operator()() const noexcept { return false; }
};

}  // namespace cbm::detail
