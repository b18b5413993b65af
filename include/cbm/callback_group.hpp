// cbm/callback_group.hpp - cbm::CallbackGroup<void(Args...)>: an ordered set
// of callbacks that any thread may add to, trigger and unregister from.
#pragma once

#include <cstddef>
#include <memory>
#include <stop_token>
#include <string>
#include <type_traits>
#include <utility>

#include "async_result.hpp"
#include "callback_values.hpp"
#include "callback_options.hpp"
#include "context.hpp"
#include "detail/callback_list.hpp"
#include "detail/group_core.hpp"
#include "detail/trigger_loop.hpp"
#include "detail/unregister.hpp"
#include "error_policy.hpp"
#include "group_options.hpp"
#include "metrics.hpp"
#include "observer.hpp"
#include "registration.hpp"
#include "self.hpp"
#include "track.hpp"

namespace cbm {

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
    static_assert(!(std::is_rvalue_reference_v<Args> || ...),
                  "cbm::CallbackGroup: a parameter may not be an rvalue reference (T&&): every callback sees "
                  "the same arguments, so none may take them over; use const T& (or T, each callback getting "
                  "a copy)");

public:
    using signature = void(Args...);
    using options_type = CallbackOptions<signature>;

    // Effect: an empty group with the given error policy (see ErrorPolicy).
    explicit CallbackGroup(ErrorPolicy policy = ErrorPolicy::collect)
        : CallbackGroup(GroupOptions{.error_policy = policy}) {}
    // Effect: an empty group with these options (error policy, metrics).
    explicit CallbackGroup(GroupOptions options) : core_(options, "CallbackGroup", "group") {}
    CallbackGroup(const CallbackGroup&) = delete;
    CallbackGroup& operator=(const CallbackGroup&) = delete;

    // Effect: unregisters every callback, then waits until no other thread is
    // inside trigger() on this group, then destroys every callable.
    // Handles that outlive the group report `unregistered`.
    // Blocks: while other threads run callbacks of this group.
    // Precondition: not called from inside a callback of this group.
    ~CallbackGroup() {
        core_.shut_down([this](detail::TakenNodes& taken) { taken.take_all(core_.state(), list_); });
    }

    // Effect: registers `f` (anything callable as void(Args...)) with `options`.
    // It is not run by triggers already in progress.
    // Returns: the handle; dropping it does not unregister (see ScopedRegistration).
    // Throws: std::invalid_argument for an empty callable (null function
    // pointer, empty std::function) or empty filter-less nothing; std::bad_alloc.
    // Nothing is registered when it throws.
    // Blocks: never on user code; takes the group's writer lock briefly.
    template <class F>
    Registration add(F&& f, options_type options = {}) {
        auto pending = core_.prepare(detail::adapt_callable<Args...>(std::forward<F>(f)), std::move(options),
                                     [] { return std::string(); });
        return Registration(core_.commit(std::move(pending), [this](detail::NodeBase* node) {
            list_.insert(node, core_.state().retired);
        }));
    }

    // Effect: registers the member function `method` called on `object`: a
    // raw pointer (the object must outlive the registration) or a
    // std::weak_ptr (tracked: see cbm/track.hpp). As add(f, options)
    // otherwise.
    template <class M, class C, class Object>
    Registration add(M C::*method, Object&& object, options_type options = {}) {
        return add(detail::bind_member<Args...>(method, std::forward<Object>(object)), std::move(options));
    }

    // Effect: runs every registered callback in order (priority, then
    // registration) with `args`, on the calling thread. Callbacks added during
    // the call are not run by it; callbacks unregistered before being reached
    // are not run. Exceptions are handled per the group's ErrorPolicy.
    // Blocks: only inside the callbacks themselves; takes no lock (except to
    // retire a `once` callback after its run).
    // (Always inlined, as run() is: the loop stays the one call. Out of line
    // it cost EventBus::publish about 1 ns of 10; emit is unchanged.)
    [[gnu::always_inline]] TriggerResult trigger(Args... args) { return run(detail::NeverStop{}, args...); }

    // Effect: as trigger(args...), but checks `token` before each callback:
    // once stop is requested, the remaining callbacks count as skipped and the
    // result has stopped == true.
    TriggerResult trigger(const std::stop_token& token, Args... args) {
        return run(detail::StopWhenRequested{token}, args...);
    }

    // Effect: as trigger(args...), but checks `ctx` before each callback:
    // once it is canceled, the remaining callbacks count as skipped and the
    // result has stopped == true. While the callbacks run,
    // cbm::current_context() on this thread is `ctx` (restored afterwards).
    TriggerResult trigger(const Context& ctx, Args... args) {
        return core_.trigger_in(ctx, [&](auto should_stop) { return run(should_stop, args...); });
    }

    // Effect: runs every registered callback with a copy of `args` (made once,
    // shared by all), each as one task on its executor (CallbackOptions::
    // executor, else GroupOptions::executor), submitted in priority order;
    // callbacks without an executor, or with inline_executor(), run here,
    // during the call, in their turn. Inside every callback,
    // cbm::current_context() is the caller's current_context() (trace ids
    // travel). A callback unregistered before its task starts never starts
    // (it counts as skipped); unregister() waits only for tasks already
    // running it. Failures reach the error policy, the handlers, metrics and
    // the AsyncResult as with trigger(); an executor that refuses a task
    // (errc::queue_full, errc::executor_shut_down) or drops it
    // (errc::task_dropped) fails that invocation.
    // Returns: the AsyncResult, ready when every callback has finished.
    // Blocks: only in an executor's execute() (a full ThreadPool with
    // Overflow::block) and in callbacks that run here.
    // Compile-time: arguments are taken by value or const reference (a
    // callback taking a non-const reference would change the copy).
    AsyncResult trigger_async(Args... args) { return run_async(current_context(), args...); }

    // Effect: as trigger_async(args...), with `ctx` as current_context() in
    // every callback. Once `ctx` is canceled, tasks not yet started are
    // skipped (counted as skipped_canceled, and the result is stopped);
    // running ones see it through current_context().
    AsyncResult trigger_async(const Context& ctx, Args... args) { return run_async(ctx, args...); }

    // Effect: unregisters every callback and waits until none runs on another
    // thread (see Registration::unregister), also none removed earlier by any
    // path (unregister_nowait, a context, a once run, another clear), then
    // also destroys callables left
    // by earlier unregister_nowait() and `once` runs that no trigger can still
    // reach. Returns how many it unregistered.
    // Blocks: while callbacks of this group run on other threads (never on a
    // wait cycle: see Registration::unregister).
    std::size_t clear() {
        return core_.take_and_wait([this](detail::TakenNodes& taken) { return taken.take_all(core_.state(), list_); },
                                   [](const detail::NodeBase&) { return true; },  // the group's only list
                                   detail::AfterTaking::reclaim_unreachable_now);
    }

    // Number of registered callbacks (a moment's value).
    std::size_t size() const noexcept { return list_.count(); }
    bool empty() const noexcept { return size() == 0; }

    ErrorPolicy error_policy() const noexcept { return core_.error_policy(); }

    // The numbers of every registered callback (see metrics.hpp). Takes the
    // writer lock briefly; triggers go on meanwhile.
    // Throws: std::logic_error unless constructed with GroupOptions::metrics.
    MetricsSnapshot metrics() const {
        return core_.metrics([this](auto&& visit) { visit(list_); });
    }

    // Effect: `handler` receives every callback invocation that fails for
    // good (after its retries): key "", name, error, attempts. Pass {} to
    // remove. A handler that throws stops nothing.
    void set_dead_letter_handler(DeadLetterHandler handler) { core_.set_dead_letter_handler(std::move(handler)); }

    // Effect: `handler` is told of every transition of a callback's circuit
    // breaker (CircuitChange: key "", name, the state entered: open,
    // half_open, closed), on the thread that made it. Pass {} to remove. A
    // handler that throws stops nothing.
    void set_circuit_change_handler(CircuitChangeHandler handler) {
        core_.set_circuit_change_handler(std::move(handler));
    }

    // Effect: `observer` is told about every invocation from now on (null
    // removes it). Observers set before stay alive until the group goes, as
    // a trigger may still be calling one.
    // Throws: std::logic_error unless constructed with GroupOptions::metrics.
    void set_observer(std::shared_ptr<CallbackObserver> observer) {
        core_.set_observer(std::move(observer));
    }

    // Effect: `handler` receives every Failure from now on (pass {} to remove).
    // Safety: may be called while triggers run; a trigger uses the handler it
    // saw at its first failure.
    void set_error_handler(ErrorHandler handler) { core_.set_error_handler(std::move(handler)); }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

private:
    template <class S>
    friend class CallbackGroup;  // a value group runs its void group with a stop of its own

    template <class ShouldStop>
    // Always inlined (with GroupCore::trigger and TriggerScope): the loop is
    // the one call a trigger makes.
    [[gnu::always_inline]] TriggerResult run(ShouldStop&& should_stop, Args&... args) {
        return core_.trigger([this] { return &list_; }, should_stop, args...);
    }

    AsyncResult run_async(const Context& ctx, Args&... args) {
        static_assert((detail::kAsyncArgument<Args> && ...),
                      "cbm::CallbackGroup::trigger_async: the arguments are copied once and shared by the "
                      "callbacks, so each parameter must be a value or a const reference; pass a pointer (or "
                      "std::reference_wrapper) to let callbacks change the caller's object");
        return core_.trigger_async([this] { return &list_; }, ctx, std::move(args)...);
    }

    detail::GroupCore<signature> core_;
    detail::CallbackList list_;
};

// A group of callbacks that return values (see callback_values.hpp): the
// same members as CallbackGroup<void(Args...)>, with the same blocking and
// thread-safety rules, except that the triggers give the values back and
// there is no trigger_async.
template <class R, class... Args>
    requires(!std::is_void_v<R>)
class CallbackGroup<R(Args...)>
    : public detail::ForwardedControls<CallbackGroup<R(Args...)>, CallbackGroup<void(detail::ValueSink<R>&, Args...)>> {
    using Sink = detail::ValueSink<R>;
    using Inner = CallbackGroup<void(Sink&, Args...)>;

public:
    using signature = R(Args...);
    using options_type = CallbackOptions<signature>;
    using value_type = R;

    explicit CallbackGroup(ErrorPolicy policy = ErrorPolicy::collect) : inner_(policy) {
        detail::check_value_type<R>();
    }
    explicit CallbackGroup(GroupOptions options) : inner_(std::move(options)) { detail::check_value_type<R>(); }
    CallbackGroup(const CallbackGroup&) = delete;
    CallbackGroup& operator=(const CallbackGroup&) = delete;

    // Effect: registers `f`, callable as R(Args...) or R(cbm::Self&,
    // Args...) with a result convertible to R. As CallbackGroup::add.
    template <class F>
    Registration add(F&& f, options_type options = {}) {
        return inner_.add(detail::produce<R, Args...>(std::forward<F>(f)), detail::rebind_options(std::move(options)));
    }
    // Effect: registers a member function on a pointer or a tracked
    // std::weak_ptr (see cbm/track.hpp; a callback whose object is gone
    // gives no value).
    template <class M, class C, class Object>
    Registration add(M C::*method, Object&& object, options_type options = {}) {
        return inner_.add(detail::produce_member<R, Args...>(method, std::forward<Object>(object)),
                          detail::rebind_options(std::move(options)));
    }

    // Effect: as CallbackGroup::trigger; the result also holds every value,
    // with its callback's name, in call order.
    ValueResult<R> trigger(Args... args) { return gather(detail::NeverStop{}, args...); }
    ValueResult<R> trigger(const std::stop_token& token, Args... args) {
        return gather(detail::StopWhenRequested{token}, args...);
    }
    ValueResult<R> trigger(const Context& ctx, Args... args) {
        ValueResult<R> result;
        Sink sink(result.values);
        static_cast<TriggerResult&>(result) = inner_.core_.trigger_in(ctx, [&](auto should_stop) {
            return inner_.run(detail::StopWhenCollected<R, decltype(should_stop)>{should_stop, sink}, sink, args...);
        });
        return result;
    }

    // Effect: as trigger(args...), handing each value to `collector` as it
    // comes (a CallbackValue<R>&&, on this thread); when the collector
    // returns false, the trigger stops: the callbacks not reached count as
    // skipped and the result has stopped == true.
    template <class Collector>
        requires std::is_invocable_r_v<bool, Collector&, CallbackValue<R>&&>
    TriggerResult collect(Collector&& collector, Args... args) {
        Sink sink(collector);
        return inner_.run(detail::StopWhenCollected<R, detail::NeverStop>{detail::NeverStop{}, sink}, sink, args...);
    }

    std::size_t clear() { return inner_.clear(); }
    std::size_t size() const noexcept { return inner_.size(); }
    bool empty() const noexcept { return inner_.empty(); }
    // error_policy(), metrics() and the handler setters: as the void one's
    // (ForwardedControls).

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

private:
    template <class ShouldStop>
    ValueResult<R> gather(ShouldStop&& should_stop, Args&... args) {
        ValueResult<R> result;
        Sink sink(result.values);
        static_cast<TriggerResult&>(result) =
            inner_.run(detail::StopWhenCollected<R, std::decay_t<ShouldStop>>{should_stop, sink}, sink, args...);
        return result;
    }

    friend class detail::ForwardedControls<CallbackGroup, Inner>;
    Inner inner_;
};

}  // namespace cbm
