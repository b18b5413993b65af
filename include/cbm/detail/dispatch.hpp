// cbm/detail/dispatch.hpp - typed callback nodes and the trigger loop.
//
// Memory ordering: see callback_list.hpp. The loop below is the reader side:
// it takes no lock and, apart from claiming a `once` callback, performs no
// read-modify-write on memory shared with other threads.
#pragma once

#include <atomic>
#include <cstddef>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <new>
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
    using Fn = Callback<Signature>;
    static_assert(sizeof(Fn) == kCallableBytes && alignof(Fn) <= alignof(void*),
                  "cbm: Callback layout changed; update kCallableBytes");

    typename FilterOf<Signature>::type filter;

    explicit Node(Fn&& f) noexcept { ::new (static_cast<void*>(callable)) Fn(std::move(f)); }
    ~Node() {
        fn().~Fn();
        delete stats;
    }

    const Fn& fn() const noexcept { return *std::launder(reinterpret_cast<const Fn*>(callable)); }
    Fn& fn() noexcept { return *std::launder(reinterpret_cast<Fn*>(callable)); }

    static void destroy_target_of(NodeBase* base) noexcept {
        auto* self = static_cast<Node*>(base);
        self->fn().reset();
        self->filter.reset();
    }
    static void delete_of(NodeBase* base) noexcept { delete static_cast<Node*>(base); }
};

// Builds a node for `anchor`, not yet linked. Throws std::invalid_argument for
// an empty callable, before anything is allocated.
template <class Signature, class F, class Options>
Node<Signature>* make_node(Anchor& anchor, F&& f, Options&& options, std::string key_text = {}) {
    Callback<Signature> fn(std::forward<F>(f));
    if (!fn) throw std::invalid_argument("cbm: cannot register an empty callable");
    std::unique_ptr<CallbackStats> stats;
    if (anchor.metrics) stats = std::make_unique<CallbackStats>(std::move(key_text), std::move(options.labels));
    auto* node = new Node<Signature>(std::move(fn));
    node->stats = stats.release();
    node->filter = std::move(options.filter);
    node->state.store((node->filter ? kFiltered : 0u) | (options.once ? kOnce : 0u) |
                          (node->stats != nullptr ? kMeasured : 0u),
                      std::memory_order_relaxed);
    node->priority = options.priority;
    node->name = std::move(options.name);
    node->destroy_target = &Node<Signature>::destroy_target_of;
    node->delete_node = &Node<Signature>::delete_of;
    node->anchor = &anchor;
    anchor.add_ref();
    return node;
}

// Records one exception (from the callback, or from its filter when
// `in_filter`) and reports it to the anchor's handler. Returns true when the
// policy says to stop. Kept out of line: the loop below stays small.
[[gnu::noinline]] inline bool record_failure(TriggerResult& result, Anchor& anchor, const NodeBase& node,
                                             std::exception_ptr error, bool in_filter) noexcept {
    ++result.failed;
    try {
        result.failures.push_back(Failure{node.name, std::move(error), in_filter});
        if (auto handler = anchor.error_handler(); handler && *handler) (*handler)(result.failures.back());
    } catch (...) {
        // The handler must not stop the other callbacks (error_policy.hpp).
    }
    return anchor.policy == ErrorPolicy::stop;
}

// What happened to one callback. `stop*`: the error policy ends the trigger.
enum class Outcome : std::uint8_t { invoked, invoked_once, skipped, failed_filter, stop_in_filter, stop, stop_once };

// Runs the callable of a node on the special path, with metrics, sampling
// and the observer where the node is instrumented. Returns the exception, if
// any.
// `sampled`: the caller already decided that this call is timed.
template <class Signature, class... A>
std::exception_ptr invoke_instrumented(Node<Signature>& node, Anchor& anchor, std::uint32_t thread_index,
                                       bool sampled, A&... args) {
    CallbackStats* stats = node.stats;
    std::exception_ptr error;
    if (stats == nullptr) {
        try {
            CallbackAccess::invoke(node.fn(), args...);
        } catch (...) {
            error = std::current_exception();
        }
        return error;
    }
    CallbackObserver* observer = anchor.observer.load(std::memory_order_acquire);
    if (observer == nullptr && !sampled && !sample_this_call(anchor.latency_sample_every)) {  // the common case
        try {
            CallbackAccess::invoke(node.fn(), args...);
        } catch (...) {
            error = std::current_exception();
            CallbackStats::bump(stats->failed);
        }
        stats->invoked.add_from(thread_index);
        return error;
    }
    const CallbackEvent event{stats->key_text, node.name, stats->labels};
    const auto start = std::chrono::steady_clock::now();
    if (observer != nullptr) observer->on_begin(event);
    try {
        CallbackAccess::invoke(node.fn(), args...);
    } catch (...) {
        error = std::current_exception();
        CallbackStats::bump(stats->failed);
    }
    stats->invoked.add_from(thread_index);
    const auto duration = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start);
    stats->latency.record(static_cast<std::uint64_t>(duration.count() < 0 ? 0 : duration.count()));
    if (observer != nullptr) observer->on_end(event, duration, error);
    return error;
}

// The rarely taken part of the loop: a filter, a `once` claim, or an
// instrumented callback.
template <class Signature, class... A>
Outcome run_special(Node<Signature>& node, Anchor& anchor, TriggerResult& result, std::uint32_t thread_index,
                    bool sampled, A&... args) {
    if ((node.state.load(std::memory_order_relaxed) & kFiltered) != 0) {
        bool selected = false;
        try {
            selected = node.filter(args...);
        } catch (...) {
            if (node.stats != nullptr) CallbackStats::bump(node.stats->failed);
            return record_failure(result, anchor, node, std::current_exception(), true) ? Outcome::stop_in_filter
                                                                                        : Outcome::failed_filter;
        }
        if (!selected) {
            if (node.stats != nullptr) node.stats->skipped_filtered.add_from(thread_index);
            return Outcome::skipped;
        }
    }
    const bool once = node.is_once();
    if (once && (node.state.fetch_or(kUnregistered, std::memory_order_acq_rel) & kUnregistered) != 0) {
        return Outcome::skipped;  // another thread claimed it
    }
    Outcome outcome = once ? Outcome::invoked_once : Outcome::invoked;
    if (std::exception_ptr error = invoke_instrumented(node, anchor, thread_index, sampled, args...)) {
        if (record_failure(result, anchor, node, std::move(error), false)) {
            outcome = once ? Outcome::stop_once : Outcome::stop;
        }
    }
    // Only the claiming thread ever runs a once callback's body, and it still
    // has the node announced (a blocking unregister waits for it), so its
    // captured state can go right now. The filter stays: other threads may
    // still be evaluating it; it goes when the node is reclaimed.
    if (once) node.fn().reset();
    return outcome;
}

// Counts the callbacks in slots [from, end) that a stopped trigger does not
// reach; `canceled`: stopped by its context or token (not by the policy).
inline std::size_t count_unreached(std::atomic<NodeBase*>* from, std::atomic<NodeBase*>* end, bool canceled) noexcept {
    std::size_t n = 0;
    for (; from != end; ++from) {
        NodeBase* node = from->load(std::memory_order_acquire);
        if ((node->state.load(std::memory_order_relaxed) & kUnregistered) == 0) {
            ++n;
            if (canceled && node->stats != nullptr) CallbackStats::bump(node->stats->skipped_canceled);
        }
    }
    return n;
}

// Runs the callbacks of `core` in order. `should_stop()` is checked before
// each callback. Runs inside the caller's TriggerScope for the domain, so that
// the registry's key lookup and the list walk are one read-side section.
// `Mode` is the barrier mode, fixed per call so the loop has no branch on it.
template <BarrierMode Mode, class Signature, class ShouldStop, class... A>
TriggerResult run_list_in(TriggerScope& scope, ListCore& core, Anchor& anchor, ShouldStop&& should_stop,
                          A&... args) {
    TriggerResult result;
    NodeArray* array = core.array.load(std::memory_order_acquire);
    if (array == nullptr) return result;
    std::size_t invoked = 0;
    std::size_t skipped = 0;
    std::atomic<NodeBase*>* slot = array->slots();
    std::atomic<NodeBase*>* const end = slot + array->count.load(std::memory_order_acquire);
    bool canceled = false;
    bool sampled = false;  // an instrumented call already chosen to be timed
    const std::uint32_t thread_index = scope.thread_index();
    for (; slot != end; ++slot) {
        if (should_stop()) {
            canceled = true;
            break;
        }
        auto& node = static_cast<Node<Signature>&>(*slot->load(std::memory_order_acquire));
        scope.announce<Mode>(&node);
        const std::uint32_t state = node.state.load(std::memory_order_acquire);
        Outcome outcome = Outcome::skipped;
        if (state == 0) {  // registered, no filter, not once: the common case
            outcome = Outcome::invoked;
            ++invoked;
            try {
                CallbackAccess::invoke(node.fn(), args...);
            } catch (...) {
                if (record_failure(result, anchor, node, std::current_exception(), false)) outcome = Outcome::stop;
            }
        } else if (state == kMeasured && !(sampled = anchor.observer.load(std::memory_order_relaxed) != nullptr ||
                                                     sample_this_call(anchor.latency_sample_every))) {
            // Instrumented, neither timed nor observed this time: count inline.
            outcome = Outcome::invoked;
            ++invoked;
            try {
                CallbackAccess::invoke(node.fn(), args...);
            } catch (...) {
                CallbackStats::bump(node.stats->failed);
                if (record_failure(result, anchor, node, std::current_exception(), false)) outcome = Outcome::stop;
            }
            node.stats->invoked.add_from(thread_index);
        } else if ((state & kUnregistered) == 0) {
            outcome = run_special(node, anchor, result, thread_index, sampled, args...);
            sampled = false;
            invoked += outcome == Outcome::invoked || outcome == Outcome::invoked_once || outcome == Outcome::stop ||
                       outcome == Outcome::stop_once;
            skipped += outcome == Outcome::skipped;
        }
        scope.withdraw<Mode>();
        if ((node.state.load(std::memory_order_relaxed) & kWaiter) != 0) notify_waiters(node);
        if (outcome != Outcome::invoked) [[unlikely]] {
            if (outcome == Outcome::invoked_once || outcome == Outcome::stop_once) detach(&node);
            if (outcome == Outcome::stop || outcome == Outcome::stop_in_filter || outcome == Outcome::stop_once) {
                ++slot;
                break;
            }
        }
    }
    if (slot != end) {  // stopped by the policy or the stop condition
        result.stopped = true;
        skipped += count_unreached(slot, end, canceled);
    }
    result.invoked = invoked;
    result.skipped = skipped;
    if (result.failed != 0 && anchor.policy == ErrorPolicy::rethrow && !result.failures.empty()) {
        std::rethrow_exception(result.failures.front().error);
    }
    return result;
}

template <class Signature, class ShouldStop, class... A>
TriggerResult run_list(TriggerScope& scope, ListCore& core, Anchor& anchor, ShouldStop&& should_stop,
                       A&... args) {
    if (scope.mode() == BarrierMode::membarrier) {
        return run_list_in<BarrierMode::membarrier, Signature>(scope, core, anchor, should_stop, args...);
    }
    return run_list_in<BarrierMode::fence, Signature>(scope, core, anchor, should_stop, args...);
}

struct NeverStop {
    constexpr bool operator()() const noexcept { return false; }
};

}  // namespace cbm::detail
