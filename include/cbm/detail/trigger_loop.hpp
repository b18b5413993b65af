// cbm/detail/trigger_loop.hpp - the trigger loop: walk one list and run each
// callback, the plain case inline, everything else through the pipeline.
//
// Memory ordering: this is the reader side of callback_list.hpp (the array
// and its count are read with acquire, once) and of unregister.hpp (each
// node is announced before its state is read, and withdrawn after). It takes
// no lock and, apart from claiming a `once` callback, performs no
// read-modify-write on memory shared with other threads.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <stop_token>
#include <utility>

#include "../error_policy.hpp"
#include "barrier.hpp"
#include "callback_list.hpp"
#include "callback_stats.hpp"
#include "context_node.hpp"
#include "failure.hpp"
#include "group_state.hpp"
#include "instrument.hpp"
#include "invoke.hpp"
#include "node.hpp"
#include "pipeline.hpp"
#include "thread_records.hpp"
#include "typed_node.hpp"
#include "unregister.hpp"

namespace cbm::detail {

// When a trigger stops early: checked before each callback.
struct NeverStop {
    constexpr bool operator()() const noexcept { return false; }
};
struct StopWhenRequested {
    const std::stop_token& token;
    bool operator()() const noexcept { return token.stop_requested(); }
};
struct StopWhenCanceled {
    const CancelNode* context;
    bool operator()() const noexcept { return context->state() != kActive; }
};

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

inline bool stops_trigger(Outcome o) noexcept {
    return o == Outcome::stop || o == Outcome::stop_in_filter || o == Outcome::stop_once;
}
inline bool counts_as_invoked(Outcome o) noexcept {
    return o == Outcome::invoked || o == Outcome::invoked_once || o == Outcome::stop || o == Outcome::stop_once;
}

// The plain case's failure: reports it and says whether the trigger stops.
inline Outcome failed_call(TriggerResult& result, GroupState& group, const CallbackList& list, const NodeBase& node,
                           std::exception_ptr& error) noexcept {
    return report_failure(result, group, list, node, std::move(error), false) ? Outcome::stop : Outcome::invoked;
}

// ErrorPolicy::rethrow: the trigger's last step (the throw out of line).
[[noreturn, gnu::noinline, gnu::cold]] inline void rethrow_first(const TriggerResult& result) {
    std::rethrow_exception(result.failures.front().error);
}
[[gnu::always_inline]] inline void rethrow_if_asked(const TriggerResult& result, const GroupState& group) {
    if (result.failed != 0 && group.policy == ErrorPolicy::rethrow && !result.failures.empty()) [[unlikely]] {
        rethrow_first(result);
    }
}

// Runs the callbacks of `list` in order. `should_stop()` is checked before
// each callback. Runs inside the caller's TriggerScope for the group, so
// that the registry's key lookup and the list walk are one read-side
// section. `Mode` is the barrier mode, fixed per call so the loop has no
// branch on it. `array` and `count` are the list's array and its count as
// the caller read them (acquire, once; see trigger_list_lone). Fills
// `result`, which must be empty (a parameter rather than the return value,
// so that every caller builds the one result its own caller receives).
template <BarrierMode Mode, class Signature, class ShouldStop, class... A>
void trigger_list_in(TriggerResult& result, TriggerScope& scope, CallbackList& list, NodeArray& array,
                     std::uint32_t count, GroupState& group, ShouldStop&& should_stop, A&... args) {
    std::size_t invoked = 0;
    std::size_t skipped = 0;
    std::atomic<NodeBase*>* slot = array.slots();
    std::atomic<NodeBase*>* const end = slot + count;
    bool canceled = false;
    bool sampled = false;  // an instrumented call already chosen to be timed
    const std::uint32_t thread_index = scope.thread_index();
    std::exception_ptr error;  // what the plain case's last failed call threw
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
            if (!invoke_captured(node, error, args...)) [[unlikely]] {
                outcome = failed_call(result, group, list, node, error);
            }
        } else if (state == kMeasured && !(sampled = group.observer.load(std::memory_order_relaxed) != nullptr ||
                                                     sample_this_call(group.latency_sample_every))) {
            // Instrumented, neither timed nor observed this time: count inline.
            outcome = Outcome::invoked;
            ++invoked;
            if (!invoke_counted(node, thread_index, error, args...)) [[unlikely]] {
                outcome = failed_call(result, group, list, node, error);
            }
        } else if ((state & kUnregistered) == 0) {
            outcome = run_pipeline(node, PipelineContext{group, list, result, thread_index, sampled}, args...);
            sampled = false;
            invoked += counts_as_invoked(outcome);
            skipped += outcome == Outcome::skipped;
        }
        scope.withdraw<Mode>();
        if ((node.state.load(std::memory_order_relaxed) & kWaiter) != 0) notify_waiters(node);
        // One compare in the common case: only a non-plain outcome can stop.
        if (outcome != Outcome::invoked && stops_trigger(outcome)) [[unlikely]] {
            // Stopped by the policy: reported whether or not callbacks remain
            // (the array's tail may hold only tombstones, which are invisible).
            result.stopped = true;
            ++slot;
            break;
        }
    }
    if (slot != end) {  // stopped by the policy or the stop condition
        result.stopped = true;
        skipped += count_unreached(slot, end, canceled);
    }
    result.invoked = invoked;
    result.skipped = skipped;
    rethrow_if_asked(result, group);
}

template <class Signature, class ShouldStop, class... A>
void trigger_list(TriggerResult& result, TriggerScope& scope, CallbackList& list, NodeArray& array,
                  std::uint32_t count, GroupState& group, ShouldStop&& should_stop, A&... args) {
    if (scope.mode() == BarrierMode::membarrier) {
        trigger_list_in<BarrierMode::membarrier, Signature>(result, scope, list, array, count, group, should_stop,
                                                            args...);
    } else {
        trigger_list_in<BarrierMode::fence, Signature>(result, scope, list, array, count, group, should_stop,
                                                       args...);
    }
}

// trigger_list, with the commonest small case inline at the trigger site: a
// list of one plain callback (registered, no filter, not once, no metrics)
// under membarrier (where the reader's barriers are compiler fences). It
// makes the same reads in the same order as the loop (array, count, slot,
// announce, state, withdraw, waiter check), so the guarantees are the
// loop's; it only saves the loop's call, its frame and its bookkeeping.
// Any other case, or a node whose state is not plain when read, goes to the
// loop (after this path's withdrawal and waiter check, having run nothing)
// with the array and count read here, and the loop reads each slot and
// state again.
template <class Signature, class ShouldStop, class... A>
[[gnu::always_inline]] inline TriggerResult trigger_list_lone(TriggerScope& scope, CallbackList& list, GroupState& group,
                                                             ShouldStop&& should_stop, A&... args) {
    TriggerResult result;  // the one returned object (built in the caller's slot)
    NodeArray* array = list.array.load(std::memory_order_acquire);
    if (array == nullptr) return result;
    const std::uint32_t count = array->count.load(std::memory_order_acquire);
    // Under ThreadSanitizer the mode is tsan, whose barriers ignore the mode
    // argument, so the sanitizer checks this path too.
    const BarrierMode mode = scope.mode();
    if (count == 1 && (mode == BarrierMode::membarrier || mode == BarrierMode::tsan) && !should_stop()) [[likely]] {
        auto& node = static_cast<Node<Signature>&>(*array->slots()->load(std::memory_order_acquire));
        scope.announce<BarrierMode::membarrier>(&node);
        if (node.state.load(std::memory_order_acquire) == 0) [[likely]] {
            result.invoked = 1;
            std::exception_ptr error;
            if (!invoke_captured(node, error, args...)) [[unlikely]] {
                // One callback: when the policy stops, nothing is left unreached.
                if (failed_call(result, group, list, node, error) == Outcome::stop) result.stopped = true;
            }
            scope.withdraw<BarrierMode::membarrier>();
            if ((node.state.load(std::memory_order_relaxed) & kWaiter) != 0) [[unlikely]] notify_waiters(node);
            rethrow_if_asked(result, group);
            return result;
        }
        scope.withdraw<BarrierMode::membarrier>();
        if ((node.state.load(std::memory_order_relaxed) & kWaiter) != 0) notify_waiters(node);
    }
    trigger_list<Signature>(result, scope, list, *array, count, group, should_stop, args...);
    return result;
}

}  // namespace cbm::detail
