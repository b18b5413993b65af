// cbm/detail/group_core.hpp - GroupCore<Signature>: everything CallbackGroup
// and CallbackRegistry share (adding, clearing, triggering, metrics,
// handlers, shutdown), so that each public class is a thin facade over one
// or many CallbackLists.
//
// The facade says which list: a group has one, a registry finds or creates
// the key's list (key_table.hpp). GroupCore holds the counted GroupState.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../async_result.hpp"
#include "../context.hpp"
#include "../error_policy.hpp"
#include "../group_options.hpp"
#include "../metrics.hpp"
#include "../observer.hpp"
#include "async_dispatch.hpp"
#include "callback_list.hpp"
#include "callback_stats.hpp"
#include "context_binding.hpp"
#include "context_node.hpp"
#include "epoch.hpp"
#include "group_state.hpp"
#include "make_node.hpp"
#include "node.hpp"
#include "resilience_state.hpp"
#include "thread_records.hpp"
#include "trigger_loop.hpp"
#include "unregister.hpp"
#include "validate.hpp"

namespace cbm::detail {

// How clear() and erase() treat memory retired earlier: clear() also
// reclaims what no trigger can reach any more, now.
enum class AfterTaking { reclaim_soon, reclaim_unreachable_now };

template <class Signature>
class GroupCore;

template <class... Args>
class GroupCore<void(Args...)> {
public:
    using signature = void(Args...);

    // `owner` and `noun` name the facade in error messages
    // ("CallbackGroup", "group").
    GroupCore(const GroupOptions& options, const char* owner, const char* noun)
        : state_(new GroupState(options.error_policy, options.metrics, options.latency_sample_every, options.clock,
                                options.metrics_retention, options.executor)),
          owner_(owner),
          noun_(noun) {}
    GroupCore(const GroupCore&) = delete;
    GroupCore& operator=(const GroupCore&) = delete;

    GroupState& state() const noexcept { return *state_; }

    // One add(), after its checks and before its insertion: the node is
    // built and bound to its context, owned here until committed.
    class PendingAdd {
    public:
        PendingAdd(PendingAdd&& other) noexcept
            : bound_(std::move(other.bound_)),
              binding_(std::move(other.binding_)),
              node_(std::exchange(other.node_, nullptr)) {}
        PendingAdd& operator=(PendingAdd&&) = delete;
        ~PendingAdd() {
            if (node_ != nullptr) {
                node_->refs.store(1, std::memory_order_relaxed);  // never linked: only this reference
                node_->release_ref();
            }
        }
        // True when the bound context was canceled already: the callback is
        // never inserted (commit() returns it unregistered).
        bool born_unregistered() const noexcept { return binding_.already_canceled(); }

    private:
        friend class GroupCore;
        explicit PendingAdd(Context bound) : bound_(std::move(bound)), binding_(ContextAccess::canceler(bound_)) {}

        Context bound_;  // keeps the binding's context alive
        ContextBinding binding_;
        NodeBase* node_ = nullptr;
    };

    // add(), step 1: checks `options` (a CallbackOptions<signature>) and
    // builds the node for `f`; `key_text()` names the registry key for
    // metrics (called only when metrics are on).
    // Throws: std::invalid_argument for bad input; std::bad_alloc; nothing
    // is registered then.
    template <class F, class Options, class KeyText>
    PendingAdd prepare(F&& f, Options&& options, KeyText&& key_text) {
        check_labels(options.labels);
        PendingAdd pending(std::move(options.context));
        std::string text = state_->metrics ? std::string(key_text()) : std::string();
        pending.node_ = make_node<signature>(*state_, std::forward<F>(f), std::move(options), std::move(text));
        return pending;
    }

    // add(), step 2: inserts the node with `insert_locked(node)`, under the
    // writer lock (it undoes its own changes if it throws), then binds it to
    // its context. Returns the node with one reference for the caller's
    // handle.
    // Throws: what `insert_locked` throws; nothing is registered then.
    template <class InsertLocked>
    NodeBase* commit(PendingAdd&& pending, InsertLocked&& insert_locked) {
        if (pending.born_unregistered()) return make_unregistered(std::exchange(pending.node_, nullptr));
        {
            ReclaimBatch batch;
            std::lock_guard<std::mutex> lock(state_->mutex);
            insert_locked(pending.node_);
            state_->retired.maybe_reclaim(batch);
        }
        NodeBase* node = std::exchange(pending.node_, nullptr);
        pending.binding_.attach(node);
        return node;
    }

    // Runs the callbacks of the list `find_list()` returns (null: none),
    // inside one read-side section, checking `should_stop` before each.
    // Always inlined into the facade, as TriggerScope is; so is the case of
    // one plain callback (trigger_list_lone), and otherwise the loop
    // (trigger_list_in) is the one call a trigger makes.
    template <class FindList, class ShouldStop>
    [[gnu::always_inline]] TriggerResult trigger(FindList&& find_list, ShouldStop&& should_stop, Args&... args) {
        TriggerScope scope(state_, state_->fenced_entry);
        CallbackList* list = find_list();
        if (list == nullptr) return TriggerResult{};
        return trigger_list_lone<signature>(scope, *list, *state_, should_stop, args...);
    }

    // trigger(ctx, ...): `ctx` is current_context() while `run(stop)` runs,
    // and `stop` says when it is canceled.
    template <class Run>
    TriggerResult trigger_in(const Context& ctx, Run&& run) {
        const ContextScope scope(ctx);
        if (const CancelNode* c = ContextAccess::canceler(ctx)) return run(StopWhenCanceled{c});
        return run(NeverStop{});
    }

    // trigger_async: walks the list `find_list()` returns (null: none) with
    // `ctx` and a copy of `args`, running each callback inline or handing it
    // to its executor (async_dispatch.hpp). The result is ready once every
    // task has finished.
    template <class FindList, class... A>
    AsyncResult trigger_async(FindList&& find_list, Context ctx, A&&... args) {
        auto* state = new AsyncState<signature>(*state_, std::move(ctx), std::forward<A>(args)...);
        AsyncResult result(state);  // adopts the first reference
        TriggerResult part;
        std::uint64_t tasks = 0;
        try {
            const ContextScope context_scope(state->context);
            TriggerScope scope(state_, state_->fenced_entry);
            if (CallbackList* list = find_list()) submit_list(scope, *list, *state, part, tasks);
        } catch (...) {
            // Only cbm's bookkeeping throws here (out of memory); what was
            // submitted completes, and the result says the walk was cut.
            part.stopped = true;
        }
        state->merge(std::move(part));
        state->finish_submission(tasks);
        return result;
    }

    // Takes callbacks out with `take_locked(TakenNodes&)` (under the lock;
    // returns how many it unregistered), then waits until none of them runs
    // on another thread and destroys their callables. It also waits for the
    // callbacks detached earlier, by any path, that `was_taken_from(node)`
    // says come from the same lists and that may still run.
    template <class TakeLocked, class WasTakenFrom>
    std::size_t take_and_wait(TakeLocked&& take_locked, WasTakenFrom&& was_taken_from, AfterTaking after) {
        TakenNodes taken;
        std::size_t removed = 0;
        {
            ReclaimBatch batch;
            std::lock_guard<std::mutex> lock(state_->mutex);
            taken.take_detached(*state_, was_taken_from);
            removed = take_locked(taken);
            reclaim_soon(*state_, batch);
            if (after == AfterTaking::reclaim_unreachable_now) state_->retired.reclaim_unreachable(batch);
        }
        taken.wait_and_destroy();
        return removed;
    }

    // The destructor of the facade: see unregister.hpp's shut_down. The
    // GroupCore must not be used afterwards.
    template <class TakeLocked>
    void shut_down(TakeLocked&& take_locked) {
        detail::shut_down(state_, std::forward<TakeLocked>(take_locked));
        state_ = nullptr;
    }

    // The numbers of every metric series (metric_series.hpp): those of
    // registered callbacks and those kept after their callbacks went. The
    // circuit state comes from the registered callbacks of the lists
    // `for_each_list` visits (under the writer lock).
    template <class ForEachList>
    MetricsSnapshot metrics(ForEachList&& for_each_list) const {
        require_metrics("metrics");
        MetricsSnapshot snapshot;
        // Held while the nodes are matched to them below: a series dropped
        // meanwhile must not be freed and its address reused.
        std::vector<CallbackStats*> held;
        std::unordered_map<const CallbackStats*, std::size_t> index_of;
        struct Release {
            std::vector<CallbackStats*>& series;
            ~Release() {
                for (CallbackStats* s : series) s->release_ref();
            }
        } release{held};
        held.reserve(state_->series.size());
        state_->series.for_each([&](CallbackStats& s) {
            if (held.size() == held.capacity()) return;  // made after the reserve: next time
            s.add_ref();
            held.push_back(&s);
            index_of.emplace(&s, snapshot.callbacks.size());
            snapshot.callbacks.push_back(metrics_of(s));
        });
        snapshot.dropped_series = state_->series.dropped();
        std::lock_guard<std::mutex> lock(state_->mutex);
        for_each_list([&](const CallbackList& list) {
            list.for_each_live_node([&](const NodeBase* n) {
                if (n->stats == nullptr || n->resilience == nullptr) return;
                const auto found = index_of.find(n->stats);
                if (found == index_of.end()) return;  // added after the series were read
                CallbackMetrics& m = snapshot.callbacks[found->second];
                // Of several callbacks in one series, the least closed state shows.
                const CircuitState state = n->resilience->circuit_state();
                if (state > m.circuit) m.circuit = state;
                m.circuit_open = m.circuit != CircuitState::closed;
            });
        });
        return snapshot;
    }

    void set_observer(std::shared_ptr<CallbackObserver> observer) {
        require_metrics("set_observer");
        state_->set_observer(std::move(observer));
    }
    void set_error_handler(ErrorHandler handler) { state_->set_error_handler(std::move(handler)); }
    void set_dead_letter_handler(DeadLetterHandler handler) { state_->set_dead_letter_handler(std::move(handler)); }
    void set_circuit_change_handler(CircuitChangeHandler handler) {
        state_->set_circuit_change_handler(std::move(handler));
    }
    ErrorPolicy error_policy() const noexcept { return state_->policy; }

private:
    void require_metrics(const char* what) const {
        if (!state_->metrics) {
            throw std::logic_error(std::string("cbm::") + owner_ + "::" + what + ": metrics are off; construct the " +
                                   noun_ + " with GroupOptions{.metrics = true}");
        }
    }

    // Under the series table's mutex (the bookkeeping fields).
    static CallbackMetrics metrics_of(const CallbackStats& s) {
        CallbackMetrics m;
        m.key = s.key_text;
        m.name = s.name;
        m.id = s.id;
        m.labels = s.labels;
        m.registered = s.registered;
        m.invoked = s.invoked.read();
        m.failed = s.failed.load(std::memory_order_relaxed);
        m.skipped_filtered = s.skipped_filtered.read();
        m.skipped_blocked = s.skipped_blocked.read();
        m.skipped_canceled = s.skipped_canceled.load(std::memory_order_relaxed);
        m.skipped_circuit_open = s.skipped_circuit_open.load(std::memory_order_relaxed);
        m.timed_out = s.timed_out.load(std::memory_order_relaxed);
        m.retries = s.retries.load(std::memory_order_relaxed);
        m.slow = s.slow.load(std::memory_order_relaxed);
        m.slow_threshold = std::chrono::nanoseconds(static_cast<std::int64_t>(s.slow_threshold_ns));
        m.latency_sampled = !s.exact_latency;
        m.latency_ns = s.latency.snapshot();
        m.queue_wait_ns = s.queue_wait.snapshot();
        return m;
    }

    GroupState* state_;  // counted; null after shut_down
    const char* owner_;
    const char* noun_;
};

}  // namespace cbm::detail
