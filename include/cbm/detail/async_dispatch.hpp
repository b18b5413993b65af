// cbm/detail/async_dispatch.hpp - trigger_async(): the walk that hands each
// callback to its executor as one task, and the task that runs it there.
//
// The walk runs on the caller, inside one read-side section of the group
// (TriggerScope), in priority order. A callback whose executor is empty or
// inline runs right there, exactly as in trigger(). Every other one becomes
// an InvocationTask: a reference to the shared AsyncState (the arguments,
// copied once, the context, the counts), a reference to the node, and the
// submission time. Three words, so that a Task holds it inline and the pool
// queues it without allocating.
//
// On the executor's thread the task does what the trigger loop does for one
// node: it opens a read-side section of the group, announces the node, reads
// its state, and runs the pipeline (filter, once claim, resilience,
// instrumentation, invoke) only if the node is still registered.
// That is what makes unregister honest for queued work:
// * a task that has not announced its node yet is invisible to unregister(),
//   which therefore does not wait for it, and it will read kUnregistered and
//   skip (the Dekker handshake of unregister.hpp: announce, then read the
//   state; set the state, then scan the announcements);
// * a task that announced it is waited for, like any trigger.
// The task's node reference keeps the node's memory (and through it the
// group's state) alive while queued; the callable itself may be destroyed
// meanwhile, since a task touches it only after finding the node
// registered, inside its section. The list pointer in the AsyncState is
// used under the same condition: a registered node is in its list, and the
// list's memory outlives every section that saw the node registered.
//
// A task destroyed without having run (an executor dropped it, a pool that
// could not start a thread) reports itself as the callback's failure
// (errc::task_dropped); one refused by execute() (queue full, shut down)
// is reported with that exception. Either way the AsyncResult completes.
//
// Memory ordering: as the trigger loop's (trigger_loop.hpp) for the walk
// and for each task's section; the AsyncState's in async_result.hpp.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../async_result.hpp"
#include "../context.hpp"
#include "../errc.hpp"
#include "../error_policy.hpp"
#include "../executor.hpp"
#include "barrier.hpp"
#include "callback_list.hpp"
#include "callback_stats.hpp"
#include "context_node.hpp"
#include "failure.hpp"
#include "group_state.hpp"
#include "node.hpp"
#include "pipeline.hpp"
#include "thread_records.hpp"
#include "trigger_loop.hpp"
#include "typed_node.hpp"
#include "unregister.hpp"

namespace cbm::detail {

// trigger_async copies its arguments once and lends them to every callback;
// a callback that takes a non-const reference would change the copy, not
// the caller's object.
template <class Arg>
inline constexpr bool kAsyncArgument =
    !std::is_rvalue_reference_v<Arg> &&
    (!std::is_lvalue_reference_v<Arg> || std::is_const_v<std::remove_reference_t<Arg>>);

template <class Signature>
struct AsyncState;

template <class... Args>
struct AsyncState<void(Args...)> final : AsyncStateBase {
    template <class... A>
    AsyncState(GroupState& g, Context ctx, A&&... a)
        : AsyncStateBase(g.policy), args(std::forward<A>(a)...), context(std::move(ctx)), group(&g) {
        group->add_ref();
    }
    ~AsyncState() override { group->release_ref(); }

    std::tuple<std::decay_t<Args>...> args;  // lent to every callback as lvalues
    const Context context;                   // current_context() in every task
    CallbackList* list = nullptr;            // the list walked (see the top of this file)
    GroupState* const group;                 // counted

    bool canceled() const noexcept {
        const CancelNode* c = ContextAccess::canceler(context);
        return c != nullptr && c->state() != kActive;
    }
};

inline std::int64_t steady_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// Announce in the scope's barrier mode.
inline void announce_in(TriggerScope& scope, const void* node) noexcept {
    if (scope.mode() == BarrierMode::membarrier) {
        scope.announce<BarrierMode::membarrier>(node);
    } else {
        scope.announce<BarrierMode::fence>(node);
    }
}
inline void withdraw_in(TriggerScope& scope) noexcept {
    if (scope.mode() == BarrierMode::membarrier) {
        scope.withdraw<BarrierMode::membarrier>();
    } else {
        scope.withdraw<BarrierMode::fence>();
    }
}

// Runs `node` (announced in `scope`) if it is registered: the trigger
// loop's body for one node, with the arguments of `state`. Adds to `part`.
template <class Signature>
Outcome run_announced(TriggerScope& scope, AsyncState<Signature>& state, Node<Signature>& node, TriggerResult& part) {
    if ((node.state.load(std::memory_order_acquire) & kUnregistered) != 0) {
        ++part.skipped;  // unregistered before its turn: canceled, not waited for
        return Outcome::skipped;
    }
    const PipelineContext p{*state.group, *state.list, part, scope.thread_index(), false};
    const Outcome outcome = std::apply([&](auto&... a) { return run_pipeline(node, p, a...); }, state.args);
    if (counts_as_invoked(outcome)) ++part.invoked;
    if (outcome == Outcome::skipped) ++part.skipped;
    return outcome;
}

// Where a submission stands while execute() runs: a task destroyed unrun
// during that call (refused, or dropped by the executor at once) hands its
// references here, and the submitting walk reports it.
struct SubmitWatch {
    const void* state;
    const void* node;
    bool dropped = false;

    static SubmitWatch*& current() noexcept {
        thread_local SubmitWatch* watch = nullptr;
        return watch;
    }
};

// One asynchronous invocation: see the top of this file.
template <class Signature>
class InvocationTask {
public:
    InvocationTask(AsyncState<Signature>* state, Node<Signature>* node, std::int64_t queued_at) noexcept
        : state_(state), node_(node), queued_at_(queued_at) {}
    InvocationTask(InvocationTask&& other) noexcept
        : state_(std::exchange(other.state_, nullptr)),
          node_(std::exchange(other.node_, nullptr)),
          queued_at_(other.queued_at_) {}
    InvocationTask& operator=(InvocationTask&&) = delete;
    ~InvocationTask() {
        if (node_ == nullptr) return;
        SubmitWatch* watch = SubmitWatch::current();
        if (watch != nullptr && watch->state == state_ && watch->node == node_) {
            watch->dropped = true;  // the walk reports it, with what execute() threw
            return;
        }
        settle(std::make_exception_ptr(
            std::system_error(make_error_code(errc::task_dropped), "cbm: the executor dropped the invocation")));
    }

    // Runs the invocation (once; a second call does nothing).
    void operator()() noexcept {
        if (node_ != nullptr) settle(nullptr);
    }

private:
    // Runs the callback (`dropped` null) or reports `dropped` as its failure,
    // if it is still registered and its trigger still wants it; then
    // finishes this task's part of the result.
    void settle(std::exception_ptr dropped) noexcept {
        AsyncState<Signature>& state = *std::exchange(state_, nullptr);
        Node<Signature>& node = *std::exchange(node_, nullptr);
        TriggerResult part;
        Outcome outcome = Outcome::skipped;
        try {
            const ContextScope context_scope(state.context);
            if (state.stop_requested() || state.canceled()) {
                // Not started: the trigger was cut short before its turn.
                ++part.skipped;
                part.stopped = true;
                if (state.canceled() && node.stats != nullptr && !node.unregistered()) {
                    CallbackStats::bump(node.stats->skipped_canceled);
                }
            } else {
                TriggerScope scope(state.group, state.group->fenced_entry);
                announce_in(scope, &node);
                if (dropped) {
                    if ((node.state.load(std::memory_order_acquire) & kUnregistered) != 0) {
                        ++part.skipped;
                    } else if (report_failure(part, *state.group, *state.list, node, dropped, false)) {
                        outcome = Outcome::stop;
                    }
                } else {
                    if (queued_at_ != 0 && node.stats != nullptr) {
                        const std::int64_t waited = steady_ns() - queued_at_;
                        node.stats->queue_wait.record(static_cast<std::uint64_t>(waited < 0 ? 0 : waited));
                    }
                    outcome = run_announced(scope, state, node, part);
                }
                withdraw_in(scope);
                if ((node.state.load(std::memory_order_relaxed) & kWaiter) != 0) notify_waiters(node);
            }
        } catch (...) {
            // Only cbm's own bookkeeping can throw here (out of memory):
            // the invocation counts as failed rather than vanish.
            ++part.failed;
        }
        if (stops_trigger(outcome)) state.request_stop();
        state.merge(std::move(part));
        node.release_ref();
        state.finish_one();  // may complete the result, and resume a coroutine here
        state.release_ref();
    }

    AsyncState<Signature>* state_;  // one reference; null once settled
    Node<Signature>* node_;         // one reference; null once settled
    std::int64_t queued_at_;        // steady_ns() at submission; 0 when not measured
};

// Hands `node` to `executor` as one task of `state`; a refusal is reported
// into `part` (the walk's own result) as the callback's failure. Returns
// whether the trigger stops (ErrorPolicy::stop).
template <class Signature>
bool submit(const AnyExecutor& executor, AsyncState<Signature>& state, Node<Signature>& node, TriggerResult& part) {
    node.add_ref();
    state.add_ref();
    state.add_pending();
    SubmitWatch watch{&state, &node};
    SubmitWatch* const outer = SubmitWatch::current();  // a task run inline may submit in turn
    SubmitWatch::current() = &watch;
    std::exception_ptr refused;
    try {
        executor.execute(Task(InvocationTask<Signature>(&state, &node, node.stats != nullptr ? steady_ns() : 0)));
    } catch (...) {
        refused = std::current_exception();
    }
    SubmitWatch::current() = outer;
    if (!watch.dropped) return false;  // the executor has it (or ran it)
    // Refused: report it here (the node is registered, and the walk's
    // section keeps its list).
    if (!refused) {
        refused = std::make_exception_ptr(
            std::system_error(make_error_code(errc::task_dropped), "cbm: the executor dropped the invocation"));
    }
    const bool stop = report_failure(part, *state.group, *state.list, node, refused, false);
    node.release_ref();
    state.finish_one();  // never the last: the walk holds its own
    state.release_ref();
    return stop;
}

// The walk of trigger_async over `list`, in the caller's `scope`, with
// `state`'s arguments and context. Adds what ran here (inline callbacks,
// refusals) to `part`.
template <class Signature>
void submit_list(TriggerScope& scope, CallbackList& list, AsyncState<Signature>& state, TriggerResult& part) {
    NodeArray* array = list.array.load(std::memory_order_acquire);
    if (array == nullptr) return;
    state.list = &list;
    std::atomic<NodeBase*>* slot = array->slots();
    std::atomic<NodeBase*>* const end = slot + array->count.load(std::memory_order_acquire);
    GroupState& group = *state.group;
    for (; slot != end; ++slot) {
        const bool canceled = state.canceled();
        if (canceled || state.stop_requested()) {
            part.stopped = true;
            part.skipped += count_unreached(slot, end, canceled);
            return;
        }
        auto& node = static_cast<Node<Signature>&>(*slot->load(std::memory_order_acquire));
        if ((node.state.load(std::memory_order_acquire) & kUnregistered) != 0) continue;  // a tombstone
        const AnyExecutor& executor = node.executor != nullptr ? *node.executor : group.executor;
        bool stop = false;
        if (!executor || executor.is_inline()) {
            announce_in(scope, &node);
            stop = stops_trigger(run_announced(scope, state, node, part));
            withdraw_in(scope);
            if ((node.state.load(std::memory_order_relaxed) & kWaiter) != 0) notify_waiters(node);
        } else {
            stop = submit(executor, state, node, part);
        }
        if (stop) state.request_stop();
    }
}

}  // namespace cbm::detail
