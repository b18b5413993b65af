// cbm/callback_group.hpp - cbm::CallbackGroup<void(Args...)>: an ordered set
// of callbacks that any thread may add to, trigger and unregister from.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <type_traits>
#include <utility>

#include "callback.hpp"
#include "context.hpp"
#include "detail/callback_list.hpp"
#include "detail/context_binding.hpp"
#include "detail/dispatch.hpp"
#include "error_policy.hpp"
#include "group_options.hpp"
#include "metrics.hpp"
#include "resilience.hpp"
#include "registration.hpp"

namespace cbm {

// Per-callback options. Fields are declared in this order so that designated
// initializers work: {.priority = 10, .once = true, .name = "audit", .filter = f,
// .context = ctx, .labels = {{"team", "payments"}}}.
template <class Signature>
struct CallbackOptions {
    int priority = 0;    // higher runs first; equal priorities run in registration order
    bool once = false;   // run at most once across all threads, then become unregistered
    std::string name = {};  // reported in Failure::name
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
};

template <class Signature>
class CallbackGroup;

// Thread safety: every member may be called concurrently from any thread,
// also from inside a callback of this group (no cbm lock is held while user
// code runs). Destroying the group while another thread may still call
// add/trigger on it is the caller's race, as for any object.
template <class... Args>
class CallbackGroup<void(Args...)> {
    static_assert(((std::is_reference_v<Args> || std::is_copy_constructible_v<Args>) && ...),
                  "cbm::CallbackGroup: every by-value argument must be copyable, since each "
                  "callback receives its own copy");

public:
    using signature = void(Args...);
    using options_type = CallbackOptions<signature>;

    // Effect: an empty group with the given error policy (see ErrorPolicy).
    explicit CallbackGroup(ErrorPolicy policy = ErrorPolicy::collect) : anchor_(new detail::Anchor(policy)) {}
    // Effect: an empty group with these options (error policy, metrics).
    explicit CallbackGroup(GroupOptions options)
        : anchor_(new detail::Anchor(options.error_policy, options.metrics, options.latency_sample_every,
                                     options.clock)) {}
    CallbackGroup(const CallbackGroup&) = delete;
    CallbackGroup& operator=(const CallbackGroup&) = delete;

    // Effect: unregisters every callback, then waits until no other thread is
    // inside trigger() on this group, then destroys every callable.
    // Handles that outlive the group report `unregistered`.
    // Blocks: while other threads run callbacks of this group.
    // Precondition: not called from inside a callback of this group.
    ~CallbackGroup() {
        detail::shut_down(anchor_, [this](detail::TakenNodes& taken) { taken.take_all(*anchor_, core_); });
    }

    // Effect: registers `f` (anything callable as void(Args...)) with `options`.
    // It is not run by triggers already in progress.
    // Returns: the handle; dropping it does not unregister (see ScopedRegistration).
    // Throws: std::invalid_argument for an empty callable (null function
    // pointer, empty std::function) or empty filter-less nothing; std::bad_alloc.
    // Nothing is registered when it throws.
    // Blocks: never on user code; takes the group's writer lock briefly.
    template <class F>
        requires std::is_invocable_v<std::decay_t<F>&, Args...>
    Registration add(F&& f, options_type options = {}) {
        detail::check_labels(options.labels);
        const Context bound = std::move(options.context);
        detail::ContextBinding binding(bound);
        auto* node = detail::make_node<signature>(*anchor_, std::forward<F>(f), std::move(options));
        if (binding.already_canceled()) return Registration(detail::make_unregistered(node));
        detail::ReclaimBatch batch;
        try {
            std::lock_guard<std::mutex> lock(anchor_->mutex);
            core_.insert(node, anchor_->retired);
            anchor_->retired.maybe_reclaim(batch);
        } catch (...) {
            node->refs.store(1, std::memory_order_relaxed);
            node->release_ref();
            throw;
        }
        Registration registration(node);
        binding.attach(registration);
        return registration;
    }

    // Effect: runs every registered callback in order (priority, then
    // registration) with `args`, on the calling thread. Callbacks added during
    // the call are not run by it; callbacks unregistered before being reached
    // are not run. Exceptions are handled per the group's ErrorPolicy.
    // Blocks: only inside the callbacks themselves; takes no lock (except to
    // retire a `once` callback after its run).
    TriggerResult trigger(Args... args) { return run(detail::NeverStop{}, args...); }

    // Effect: as trigger(args...), but checks `token` before each callback:
    // once stop is requested, the remaining callbacks count as skipped and the
    // result has stopped == true.
    TriggerResult trigger(const std::stop_token& token, Args... args) {
        return run([&token] { return token.stop_requested(); }, args...);
    }

    // Effect: as trigger(args...), but checks `ctx` before each callback:
    // once it is canceled, the remaining callbacks count as skipped and the
    // result has stopped == true. While the callbacks run,
    // cbm::current_context() on this thread is `ctx` (restored afterwards).
    TriggerResult trigger(const Context& ctx, Args... args) {
        const ContextScope scope(ctx);
        if (const detail::CancelNode* c = detail::ContextAccess::canceler(ctx)) {
            return run([c] { return c->state() != detail::kActive; }, args...);
        }
        return run(detail::NeverStop{}, args...);
    }

    // Effect: unregisters every callback and waits until none runs on another
    // thread (see Registration::unregister), then also destroys callables left
    // by earlier unregister_nowait() and `once` runs that no trigger can still
    // reach. Returns how many it unregistered.
    // Blocks: while callbacks of this group run on other threads.
    std::size_t clear() {
        detail::TakenNodes taken;
        std::size_t removed = 0;
        {
            detail::ReclaimBatch batch;
            std::lock_guard<std::mutex> lock(anchor_->mutex);
            removed = taken.take_all(*anchor_, core_);
            detail::reclaim_soon(*anchor_, batch);
            anchor_->retired.reclaim_unreachable(batch);
        }
        taken.wait_and_destroy();
        return removed;
    }

    // Number of registered callbacks (a moment's value).
    std::size_t size() const noexcept { return core_.count(); }
    bool empty() const noexcept { return size() == 0; }

    ErrorPolicy error_policy() const noexcept { return anchor_->policy; }

    // The numbers of every registered callback (see metrics.hpp). Takes the
    // writer lock briefly; triggers go on meanwhile.
    // Throws: std::logic_error unless constructed with GroupOptions::metrics.
    MetricsSnapshot metrics() const {
        require_metrics("metrics");
        MetricsSnapshot snapshot;
        std::lock_guard<std::mutex> lock(anchor_->mutex);
        core_.for_each_node([&](detail::NodeBase* n) {
            if (n->core == &core_ && n->stats != nullptr) {
                snapshot.callbacks.push_back(
                    detail::read_stats(*n->stats, n->name, n->resilience != nullptr && n->resilience->circuit_open()));
            }
        });
        return snapshot;
    }

    // Effect: `handler` receives every callback invocation that fails for
    // good (after its retries): key "", name, error, attempts. Pass {} to
    // remove. A handler that throws stops nothing.
    void set_dead_letter_handler(DeadLetterHandler handler) { anchor_->set_dead_letter_handler(std::move(handler)); }

    // Effect: `observer` is told about every invocation from now on (null
    // removes it). Observers set before stay alive until the group goes, as
    // a trigger may still be calling one.
    // Throws: std::logic_error unless constructed with GroupOptions::metrics.
    void set_observer(std::shared_ptr<CallbackObserver> observer) {
        require_metrics("set_observer");
        anchor_->set_observer(std::move(observer));
    }

    // Effect: `handler` receives every Failure from now on (pass {} to remove).
    // Safety: may be called while triggers run; a trigger uses the handler it
    // saw at its first failure.
    void set_error_handler(ErrorHandler handler) { anchor_->set_error_handler(std::move(handler)); }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

private:
    void require_metrics(const char* what) const {
        if (!anchor_->metrics) {
            throw std::logic_error(std::string("cbm::CallbackGroup::") + what +
                                   ": metrics are off; construct the group with GroupOptions{.metrics = true}");
        }
    }

    template <class ShouldStop>
    TriggerResult run(ShouldStop&& should_stop, Args&... args) {
        detail::TriggerScope scope(anchor_);
        return detail::run_list<signature>(scope, core_, *anchor_, should_stop, args...);
    }

    detail::Anchor* anchor_;
    detail::ListCore core_;
};

}  // namespace cbm
