// cbm/detail/async_dispatch.hpp - trigger_async(): the walk that hands each
// callback to its executor as one task, and the task that runs it there.
//
// The walk runs on the caller, inside one read-side section of the group
// (TriggerScope), in priority order. A callback whose executor is empty or
// inline runs right there, exactly as in trigger(). Every other one becomes
// an InvocationTask: a share of the AsyncState's pending count (the state
// holds the arguments, copied once, the context and the counts), a
// reference to the node, and the submission time. Three words, so that a Task holds it inline and the pool
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
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../async_result.hpp"
#include "../context.hpp"
#include "../errc.hpp"
#include "../error_policy.hpp"
#include "../executor.hpp"
#include "async_runner.hpp"
#include "barrier.hpp"
#include "callback_list.hpp"
#include "callback_stats.hpp"
#include "context_node.hpp"
#include "failure.hpp"
#include "group_state.hpp"
#include "node.hpp"
#include "pipeline.hpp"
#include "resilience_state.hpp"
#include "resilience_steps.hpp"
#include "thread_records.hpp"
#include "timer_service.hpp"
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
        : AsyncStateBase(g.policy), args(std::forward<A>(a)...), context(std::move(ctx)), group(&g) {}

    std::tuple<std::decay_t<Args>...> args;  // lent to every callback as lvalues
    const Context context;                   // current_context() in every task
    CallbackList* list = nullptr;            // the list walked (see the top of this file)
    // Not counted: used only by the walk, whose caller holds the group, and
    // by tasks, whose node holds it. A result may outlive its group.
    GroupState* const group;

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

template <class Signature>
class InvocationTask;

// Where a submission stands while execute() runs: a task destroyed unrun
// during that call (refused, or dropped by the executor at once) hands its
// references here, and the submitter settles it with what execute() threw.
struct SubmitWatch {
    const void* state;
    const void* node;
    bool dropped = false;
    void* retry = nullptr;  // the dropped task's RetryWait, if it had one

    static SubmitWatch*& current() noexcept {
        thread_local SubmitWatch* watch = nullptr;
        return watch;
    }
};

inline std::exception_ptr task_dropped_error() {
    return std::make_exception_ptr(
        std::system_error(make_error_code(errc::task_dropped), "cbm: the executor dropped the invocation"));
}

// Retries of trigger_async wait on the timer service, not on a thread of
// the executor, where the group uses the steady clock. (An injected
// ResilienceClock waits in its sleep_for, on the task's thread; and a
// `once` callback's attempts all run inside the invocation that claimed it,
// which must stay announced.)
inline bool retries_on_timer(const NodeBase& node, const GroupState& group) noexcept {
    return node.resilience != nullptr && node.resilience->retry.attempts > 1 && !node.is_once() &&
           group.clock == nullptr;
}

// Where an invocation waits between two attempts: a timer entry, then a
// runner task (the timer thread never runs user code, and execute() may),
// which hands the invocation back to its executor. Owned by the invocation
// (InvocationTask::retry_) from its first failed attempt to its end.
template <class Signature>
struct RetryWait final : TimerEntry, RunnerTask {
    std::exception_ptr last_error;  // of the last attempt: final if no other attempt runs
    std::string key;                // the registry key as text (the list may go meanwhile)
    std::uint32_t attempts = 0;     // made so far
    Admission admission = Admission::closed;
    std::optional<InvocationTask<Signature>> parked;  // the invocation, during the wait

    RetryWait() noexcept { expire = &on_expire; }

    static void on_expire(TimerEntry* e) noexcept { AsyncRunner::shared().post(static_cast<RetryWait*>(e)); }
    void run() noexcept override;
    void discard() noexcept override;
};

// Hands `task` to `executor`; a refusal settles it here as the
// invocation's failure (the exception execute() threw, or task_dropped).
template <class Signature>
void submit(const AnyExecutor& executor, InvocationTask<Signature>&& task) noexcept;

// One asynchronous invocation: see the top of this file.
template <class Signature>
class InvocationTask {
public:
    InvocationTask(AsyncState<Signature>* state, Node<Signature>* node, std::int64_t queued_at,
                   RetryWait<Signature>* retry = nullptr) noexcept
        : state_(state), node_(node), queued_at_(queued_at), retry_(retry) {}
    InvocationTask(InvocationTask&& other) noexcept
        : state_(std::exchange(other.state_, nullptr)),
          node_(std::exchange(other.node_, nullptr)),
          queued_at_(other.queued_at_),
          retry_(std::exchange(other.retry_, nullptr)) {}
    InvocationTask& operator=(InvocationTask&&) = delete;
    ~InvocationTask() {
        if (node_ == nullptr) return;
        SubmitWatch* watch = SubmitWatch::current();
        if (watch != nullptr && watch->state == state_ && watch->node == node_) {
            watch->dropped = true;  // the submitter settles it, with what execute() threw
            watch->retry = retry_;
            return;
        }
        settle(task_dropped_error());
    }

    // Runs the invocation (once; a second call does nothing).
    void operator()() noexcept {
        if (node_ != nullptr) settle(nullptr);
    }

    // Runs the callback (`dropped` null) or reports `dropped` as its failure,
    // if it is still registered and its trigger still wants it; then
    // finishes this task's part of the result, unless it waits for a retry.
    void settle(std::exception_ptr dropped) noexcept {
        AsyncState<Signature>& state = *state_;
        Node<Signature>& node = *node_;
        RetryWait<Signature>* retry = retry_;
        state_ = nullptr;
        node_ = nullptr;
        retry_ = nullptr;
        TriggerResult part;
        Outcome outcome = Outcome::skipped;
        bool waits = false;  // another attempt follows, after a backoff
        try {
            const ContextScope context_scope(state.context);
            const bool cut = state.stop_requested() || state.canceled();
            if (cut && retry == nullptr) {
                // Not started: the trigger was cut short before its turn.
                ++part.skipped;
                part.stopped = true;
                if (state.canceled() && node.stats != nullptr && !node.unregistered()) {
                    CallbackStats::bump(node.stats->skipped_canceled);
                }
            } else {
                TriggerScope scope(state.group, state.group->fenced_entry);
                announce_in(scope, &node);
                const bool registered = (node.state.load(std::memory_order_acquire) & kUnregistered) == 0;
                if (retry != nullptr && !registered) {
                    // Unregistered during the backoff: no further attempt, and
                    // the last failure is final. unregister() (or the group's
                    // destruction) did not wait for a backoff and has returned,
                    // so the group's handlers hear nothing more of this
                    // callback: the failure reaches the result and metrics.
                    record_final_quietly(node, part, retry->last_error);
                } else if (retry != nullptr && (cut || dropped)) {
                    // No further attempt (as in trigger(): a canceled trigger
                    // stops retrying): the last attempt's failure is final.
                    outcome = finish(state, node, part, KeyOf{nullptr, &retry->key}, retry->last_error,
                                     retry->attempts, retry->admission);
                    part.stopped = part.stopped || cut;
                } else if (!registered) {
                    ++part.skipped;  // unregistered before its turn: canceled, not waited for
                } else if (dropped) {
                    if (report_failure(part, *state.group, *state.list, node, dropped, false)) outcome = Outcome::stop;
                } else {
                    if (queued_at_ != 0 && node.stats != nullptr) {
                        const std::int64_t waited = steady_ns() - queued_at_;
                        node.stats->queue_wait.record(static_cast<std::uint64_t>(waited < 0 ? 0 : waited));
                    }
                    if (retry != nullptr || retries_on_timer(node, *state.group)) {
                        outcome = attempt(scope, state, node, part, retry, waits);
                    } else {
                        outcome = run_announced(scope, state, node, part);
                    }
                }
                withdraw_in(scope);
                if ((node.state.load(std::memory_order_relaxed) & kWaiter) != 0) notify_waiters(node);
            }
        } catch (...) {
            // Only cbm's own bookkeeping can throw here (out of memory):
            // the invocation counts as failed rather than vanish.
            ++part.failed;
            waits = false;
        }
        if (waits) {
            retry->parked.emplace(&state, &node, 0, retry);
            wait_then_resubmit(*retry);
            return;
        }
        delete retry;
        if (stops_trigger(outcome)) state.request_stop();
        node.release_ref();
        state.finish_task(std::move(part));  // may complete the result, resume a coroutine here, and free the state
    }

private:
    friend struct RetryWait<Signature>;
    friend void submit<Signature>(const AnyExecutor&, InvocationTask<Signature>&&) noexcept;

    // One attempt of a callback that retries on the timer (the first one
    // also passes its filter and the breaker). Sets `waits` when another
    // attempt follows; `retry` is then the RetryWait that holds the state.
    Outcome attempt(TriggerScope& scope, AsyncState<Signature>& state, Node<Signature>& node, TriggerResult& part,
                    RetryWait<Signature>*& retry, bool& waits) {
        GroupState& group = *state.group;
        Resilience& r = *node.resilience;
        ResilienceClock& clock = clock_of(group);
        Admission admission = Admission::closed;
        std::uint32_t attempts = 1;
        if (retry == nullptr) {
            const PipelineContext p{group, *state.list, part, scope.thread_index(), false};
            if (skips_blocked(node, p)) {
                ++part.skipped;
                return Outcome::skipped;
            }
            Outcome filtered = Outcome::skipped;
            const bool selected =
                std::apply([&](auto&... a) { return passes_filter(node, p, filtered, a...); }, state.args);
            if (!selected) {
                if (filtered == Outcome::skipped) ++part.skipped;
                return filtered;
            }
            admission = admit(r, clock);
            if (admission == Admission::refused) {
                if (node.stats != nullptr) CallbackStats::bump(node.stats->skipped_circuit_open);
                ++part.skipped;
                return Outcome::skipped;
            }
            if (admission == Admission::trial) report_circuit_change(group, KeyOf{state.list, nullptr}, node, CircuitState::half_open);
        } else {
            admission = retry->admission;
            attempts = retry->attempts + 1;
            if (node.stats != nullptr) CallbackStats::bump(node.stats->retries);
        }
        std::exception_ptr error = std::apply(
            [&](auto&... a) { return attempt_with_timeout(node, group, scope.thread_index(), false, a...); },
            state.args);
        if (error && attempts < r.retry.attempts && !state.canceled() && !node.unregistered()) {
            if (retry == nullptr) {
                auto fresh = std::make_unique<RetryWait<Signature>>();
                fresh->key = state.list->key_text();
                retry = fresh.release();
            }
            retry->last_error = std::move(error);
            retry->attempts = attempts;
            retry->admission = admission;
            retry->due = TimerEntry::clock::now() + backoff_after(r.retry, attempts);
            waits = true;
            return Outcome::invoked;
        }
        const KeyOf key = retry != nullptr ? KeyOf{nullptr, &retry->key} : KeyOf{state.list, nullptr};
        return finish(state, node, part, key, std::move(error), attempts, admission);
    }

    // The end of an invocation that retried on the timer (or could have):
    // the breaker learns the outcome, and a failure is reported as final.
    static Outcome finish(AsyncState<Signature>& state, Node<Signature>& node, TriggerResult& part, KeyOf key,
                          std::exception_ptr error, std::uint32_t attempts, Admission admission) noexcept {
        GroupState& group = *state.group;
        ++part.invoked;
        if (const std::optional<CircuitState> entered =
                record_outcome(*node.resilience, clock_of(group), admission, static_cast<bool>(error))) {
            report_circuit_change(group, key, node, *entered);
        }
        if (error && report_failure(part, group, key, node, std::move(error), false, attempts)) return Outcome::stop;
        return Outcome::invoked;
    }

    // The final failure of a callback that left its group during a backoff.
    static void record_final_quietly(Node<Signature>& node, TriggerResult& part, std::exception_ptr error) noexcept {
        ++part.invoked;
        ++part.failed;
        if (node.stats != nullptr) node.stats->failed.fetch_add(1, std::memory_order_relaxed);
        try {
            part.failures.push_back(Failure{node.name, std::move(error), false});
        } catch (...) {
            // Out of memory: it stays counted in `failed`.
        }
    }

    // Waits for `retry.due` on the timer service; then a runner thread hands
    // the invocation back to its executor. Without a timer (the process is
    // exiting), at once.
    static void wait_then_resubmit(RetryWait<Signature>& retry) noexcept {
        bool scheduled = false;
        try {
            scheduled = TimerService::shared().schedule(&retry);
        } catch (...) {
            scheduled = false;
        }
        if (!scheduled) AsyncRunner::shared().post(&retry);
    }

    AsyncState<Signature>* state_;  // one share of its pending count; null once settled
    Node<Signature>* node_;         // one reference; null once settled
    std::int64_t queued_at_;        // steady_ns() at submission; 0 when not measured
    RetryWait<Signature>* retry_;   // owned; null before a first failed attempt that retries
};

template <class Signature>
void RetryWait<Signature>::run() noexcept {
    InvocationTask<Signature> task = std::move(*parked);
    parked.reset();
    Node<Signature>& node = *task.node_;
    // The executor lives in the node or in its group's state; the task may
    // finish (and drop its references) before execute() returns, so this
    // thread holds the node, and through it the group's state, meanwhile.
    node.add_ref();
    const AnyExecutor& executor = node.executor != nullptr ? *node.executor : node.group->executor;
    submit(executor, std::move(task));
    node.release_ref();
}

template <class Signature>
void RetryWait<Signature>::discard() noexcept {
    InvocationTask<Signature> task = std::move(*parked);
    parked.reset();
    task.settle(task_dropped_error());
}

template <class Signature>
void submit(const AnyExecutor& executor, InvocationTask<Signature>&& task) noexcept {
    SubmitWatch watch{task.state_, task.node_};
    SubmitWatch* const outer = SubmitWatch::current();  // a task run inline may submit in turn
    SubmitWatch::current() = &watch;
    std::exception_ptr refused;
    try {
        executor.execute(Task(std::move(task)));
    } catch (...) {
        refused = std::current_exception();
    }
    SubmitWatch::current() = outer;
    if (!watch.dropped) return;  // the executor has it, or ran it
    InvocationTask<Signature> back(static_cast<AsyncState<Signature>*>(const_cast<void*>(watch.state)),
                                   static_cast<Node<Signature>*>(const_cast<void*>(watch.node)), 0,
                                   static_cast<RetryWait<Signature>*>(watch.retry));
    try {
        if (!refused) refused = task_dropped_error();
    } catch (...) {
        // Out of memory even for the error: the invocation runs here instead.
    }
    back.settle(refused);
}

// The walk of trigger_async over `list`, in the caller's `scope`, with
// `state`'s arguments and context. Adds what ran here (inline callbacks,
// refusals) to `part`, and one to `tasks` for each task it made (even if
// it throws later).
template <class Signature>
void submit_list(TriggerScope& scope, CallbackList& list, AsyncState<Signature>& state, TriggerResult& part,
                 std::uint64_t& tasks) {
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
            node.add_ref();
            ++tasks;  // the task calls state.finish_task() once, whatever becomes of it
            submit(executor, InvocationTask<Signature>(&state, &node, node.stats != nullptr ? steady_ns() : 0));
        }
        if (stop) state.request_stop();
    }
}

}  // namespace cbm::detail
