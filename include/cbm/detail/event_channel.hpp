// cbm/detail/event_channel.hpp - the typed side of an EventBus: one Channel
// per event type, holding its subscriptions as routes (a consumer group, or
// one subscription alone), and everything that happens to one delivery:
// the attempt, then acked, redelivered after a backoff, parked until a
// manual ack, or dead-lettered.
//
// A subscription is a CallbackGroup of one callback underneath
// (`Subscription::inner`), so every guarantee of a callback holds for it:
// unregister() waits for a running delivery and no delivery starts after
// it returns, once, filters, contexts, timeout, retry, circuit breaker and
// metrics all work as for any callback. The channel decides only which
// subscription gets an event and what happens after the attempt.
//
// Synchronisation: the routes are a Snapshot (wait-free to read, replaced
// whole under `write_` when a subscription comes or a gone one is pruned).
// When the routes hold one subscription alone, `lone_` points at it
// (release after the Snapshot store, acquire in publish()): publish() then
// triggers it without loading the view, and goes through the view only if
// the delivery needs more than a return (a failure, a manual ack, a
// filter, a subscription gone), matching its attempt to the route that
// holds it; a stale `lone_` is harmless because no subscription is freed
// before the channel's subscriptions end.
// A consumer group's round-robin position is one relaxed atomic counter.
// Counters are relaxed atomics. No cbm lock is held while a handler runs.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "../callback_group.hpp"
#include "../delivery.hpp"
#include "../errc.hpp"
#include "../error_policy.hpp"
#include "../self.hpp"
#include "../snapshot.hpp"
#include "../subscribe_options.hpp"
#include "bus_core.hpp"
#include "intrusive_ref.hpp"

namespace cbm::detail {

template <class E>
class Channel;
template <class E>
class Subscription;

// A posted event.
template <class E>
class Envelope final : public EnvelopeBase {
public:
    template <class T>
    Envelope(ChannelBase* owner, Context ctx, std::chrono::steady_clock::time_point posted, T&& value)
        : EnvelopeBase(owner, std::move(ctx), posted), event(std::forward<T>(value)) {}
    const E event;
};

// What a subscription's inner callback receives for one delivery.
template <class E>
struct DeliveryArg {
    const E* event;
    std::uint32_t delivery;
    Subscription<E>* subscription;
    EnvelopeBase* envelope = nullptr;  // a posted event's (a Delivery<E> keeps it); null when published
    mutable bool filtered = false;  // set when the subscription's own filter said no
    // Set when the handler returned (not threw). The fast paths test this
    // and `failed` rather than the whole result: one load, where testing
    // two adjacent counts made the compiler load them as one 16-byte word
    // just written by two 8-byte stores, which stalls store forwarding.
    bool completed = false;
    // The handler's Delivery state, if its handler takes one.
    DeliveryStateRef state = {};
};

// The counts of one subscription (relaxed atomics).
struct SubscriptionCounters {
    std::atomic<std::uint64_t> delivered{0};      // handler calls (redeliveries included)
    std::atomic<std::uint64_t> acked{0};          // deliveries that ended acked
    std::atomic<std::uint64_t> failed{0};         // deliveries that threw or returned an error
    std::atomic<std::uint64_t> nacked{0};         // deliveries the handler nacked
    std::atomic<std::uint64_t> ack_timeouts{0};   // manual deliveries not settled within ack_timeout
    std::atomic<std::uint64_t> undeliverable{0};  // events its group could not take (blocked, circuit open)
    std::atomic<std::uint64_t> redelivered{0};    // deliveries after the first
    std::atomic<std::uint64_t> dead_lettered{0};  // events given up on (sent to the dead-letter handler)
};

// What happened to one attempt.
enum class AttemptOutcome : std::uint8_t {
    acked, failed, nacked, pending, canceled,  // the subscription took it (settled or not)
    filtered, blocked, circuit_open, gone,      // it did not: another member may
};

// The route a delivery follows (a consumer group, or one subscription):
// stable across the channel's snapshots, so that a redelivery finds its
// route again.
struct RouteState : SelfCounted<RouteState> {
    explicit RouteState(std::string g) : group(std::move(g)) {}

    const std::string group;  // "" for a subscription alone
    std::atomic<std::uint64_t> next{0};  // the weighted round robin's position
};

using RouteRef = IntrusiveRef<RouteState, MemberRefOps>;

template <class E>
class Subscription : public SelfCounted<Subscription<E>> {
public:
    using Inner = CallbackGroup<void(DeliveryArg<E>&)>;

    Subscription(const SubscribeOptions<E>& o, const GroupOptions& group_options, std::uint64_t order_)
        : name(o.name),
          group(o.group),
          labels(o.labels),
          priority(o.priority),
          weight(o.weight),
          max_deliveries(o.max_deliveries),
          backoff(o.redelivery_backoff),
          manual(o.ack == AckMode::manual),
          ack_timeout(o.ack_timeout),
          executor(o.executor),
          order(order_),
          inner(group_options) {}

    // Effect: runs this subscription's handler for `event` (its
    // delivery-th delivery), under `ctx` when given (a posted event's
    // context), adding the trigger's numbers to `result` when given.
    // `error` receives the failure, if any.
    AttemptOutcome attempt(const E& event, std::uint32_t delivery, EnvelopeBase* envelope, const Context* ctx,
                           TriggerResult* result, std::exception_ptr& error,
                           DeliveryStateRef& state) {
        DeliveryArg<E> arg{&event, delivery, this, envelope};
        TriggerResult r = ctx != nullptr ? inner.trigger(*ctx, arg) : inner.trigger(arg);
        return classify(r, arg, result, error, state);
    }

    // What the trigger `r` of an attempt (with `arg`) came to; adds its
    // numbers to `result` when given.
    AttemptOutcome classify(TriggerResult& r, DeliveryArg<E>& arg, TriggerResult* result, std::exception_ptr& error,
                            DeliveryStateRef& state) {
        for (const Failure& f : r.failures) core_of_channel->report_failure(f);
        const bool invoked = r.invoked != 0;
        const bool failed = r.failed != 0;
        const bool stopped = r.stopped;
        const bool blocked = r.blocked != 0;
        if (failed) error = r.failures.front().error;
        if (result != nullptr) merge(*result, std::move(r));
        state = std::move(arg.state);
        if (!invoked) {
            if (failed) return AttemptOutcome::failed;  // its filter threw
            if (stopped) return AttemptOutcome::canceled;
            if (arg.filtered) return AttemptOutcome::filtered;
            if (blocked) return AttemptOutcome::blocked;
            if (inner.empty()) return AttemptOutcome::gone;
            return AttemptOutcome::circuit_open;
        }
        if (core_of_channel->metrics_on()) counters.delivered.fetch_add(1, std::memory_order_relaxed);
        if (failed) {
            // A handler that settled its delivery and then threw ends as it
            // settled it (the failure is reported all the same).
            if (!state || state->settle(DeliveryStatus::failed)) return AttemptOutcome::failed;
            return outcome_of(state->final_status());
        }
        if (!state) return AttemptOutcome::acked;
        if (!manual) state->settle(DeliveryStatus::acked);  // a return acks, unless the handler nacked first
        return outcome_of(state->final_status());
    }

    static AttemptOutcome outcome_of(DeliveryStatus status) noexcept {
        switch (status) {
            case DeliveryStatus::acked: return AttemptOutcome::acked;
            case DeliveryStatus::nacked: return AttemptOutcome::nacked;
            case DeliveryStatus::pending: return AttemptOutcome::pending;
            case DeliveryStatus::settling:  // (final_status() waits it out)
            case DeliveryStatus::timed_out:
            case DeliveryStatus::failed: break;
        }
        return AttemptOutcome::failed;
    }

    bool alive() const noexcept { return !inner.empty(); }

    static void merge(TriggerResult& into, TriggerResult&& r) {
        if (into.invoked == 0 && into.skipped == 0 && into.failures.empty()) {
            into = std::move(r);
            return;
        }
        into.invoked += r.invoked;
        into.failed += r.failed;
        into.skipped += r.skipped;
        into.blocked += r.blocked;
        into.stopped = into.stopped || r.stopped;
        for (Failure& f : r.failures) into.failures.push_back(std::move(f));
    }

    const std::string name;
    const std::string group;
    const Labels labels;
    const int priority;
    const std::uint32_t weight;
    const std::uint32_t max_deliveries;
    const RedeliveryBackoff backoff;
    const bool manual;
    const std::chrono::nanoseconds ack_timeout;
    const AnyExecutor executor;
    const std::uint64_t order;  // subscription order in its channel
    BusCore* core_of_channel = nullptr;
    SubscriptionCounters counters;
    Inner inner;
    Registration registration;

private:
    friend class SelfCounted<Subscription<E>>;
    ~Subscription() = default;
};

template <class E>
using SubscriptionRef = IntrusiveRef<Subscription<E>, MemberRefOps>;

template <class E>
SubscriptionRef<E> share(Subscription<E>* s) noexcept {
    s->add_ref();
    return SubscriptionRef<E>::adopt(s);
}

// One delivery of an event to a route: what the channel carries from the
// attempt to its conclusion.
template <class E>
struct Attempt {
    const E* event = nullptr;
    // The posted event's envelope (null for a published event until it must
    // outlive publish()): borrowed while the delivering thread holds it,
    // owned (`owned`) once the attempt waits or moves to another thread.
    EnvelopeBase* envelope = nullptr;
    EnvelopeRef owned = {};
    // The route: pinned by the channel's view while the attempt runs; owned
    // (`kept`) once the attempt waits (a redelivery, a parked delivery).
    RouteState* route = nullptr;
    RouteRef kept = {};
    std::uint32_t delivery = 1;
    const Subscription<E>* avoid = nullptr;  // the member that failed it last (redeliveries)
    TriggerResult* result = nullptr;         // publish(): the caller's numbers
    bool queued = false;                     // run under the envelope's context, executors used
};

// A Delivery<E>'s state, which can also wait parked (after a manual-ack
// handler returned without settling) until an ack, a nack or its deadline.
//
// A Delivery of a posted event keeps the event's envelope from the start,
// so that a copy kept past the handler's call reads a live event whatever
// happened to the delivery meanwhile; a parked one also keeps the bus core
// (and with it its channel) alive for the settlement that may come late,
// from any thread, even while the bus goes.
template <class E>
class ParkedDelivery final : public DeliveryState<E> {
public:
    ParkedDelivery(const DeliveryArg<E>& arg)
        : DeliveryState<E>(*arg.event, arg.subscription->name, arg.delivery, arg.subscription->manual),
          member(share(arg.subscription)) {
        if (arg.envelope != nullptr) hold(arg.envelope);
    }

    // Points the delivery at `event`, the copy in `envelope` (a published
    // event that now waits), and keeps that.
    void repoint_to(const E& event, EnvelopeBase* envelope) noexcept {
        this->repoint(event);
        if (envelope != nullptr && envelope_.get() != envelope) hold(envelope);
    }

    SubscriptionRef<E> member;
    BusCoreRef core;                        // set when parked
    Channel<E>* channel = nullptr;          // set when parked
    Attempt<E> attempt;                     // set when parked
    const DelayedWork* deadline = nullptr;  // its AckDeadline while that lives (under the core's mutex)

private:
    void hold(EnvelopeBase* envelope) noexcept {
        envelope->add_ref();
        envelope_ = EnvelopeRef::adopt(envelope);
    }
    void finish_parked(DeliveryStatus status) noexcept override { channel->finish_parked(*this, status); }

    EnvelopeRef envelope_;
};

// Waits for a parked delivery's ack deadline.
template <class E>
class AckDeadline final : public DelayedWork {
public:
    explicit AckDeadline(ParkedDelivery<E>* parked) noexcept : parked_(parked) { parked_->add_ref(); }
    ~AckDeadline() override {
        parked_->channel->core().forget(&parked_->deadline);
        parked_->release_ref();
    }
    void run() noexcept override { parked_->settle(DeliveryStatus::timed_out); }
    void discard() noexcept override { parked_->settle(DeliveryStatus::timed_out); }
    bool live() const noexcept override { return parked_->status() == DeliveryStatus::pending; }

private:
    ParkedDelivery<E>* parked_;
};

// A redelivery, due after its backoff.
template <class E>
class Redelivery final : public DelayedWork {
public:
    Redelivery(Channel<E>& channel, SubscriptionRef<E> failed_by) noexcept
        : channel_(&channel), failed_by_(std::move(failed_by)) {}

    // Takes over the attempt, as the next delivery of its event.
    void take(Attempt<E>&& attempt) noexcept {
        attempt_ = std::move(attempt);
        attempt_.delivery += 1;
        attempt_.avoid = failed_by_.get();
        attempt_.result = nullptr;
        attempt_.queued = true;
    }
    void run() noexcept override { channel_->redeliver(std::move(attempt_), failed_by_); }
    void discard() noexcept override {
        channel_->give_up(attempt_, *failed_by_,
                          std::make_exception_ptr(std::system_error(make_error_code(errc::bus_closed),
                                                                    "cbm::EventBus closed before the redelivery")));
        channel_->core().end_work();
    }

private:
    Channel<E>* channel_;
    Attempt<E> attempt_;
    SubscriptionRef<E> failed_by_;
};

// Adapts a subscriber's handler to the inner group's signature
// void(Self&, DeliveryArg<E>&): it may take the event or a Delivery<E>&,
// with or without a leading Self&, and may return a std::error_code.
template <class E, class F>
struct EventHandler {
    F f;

    static constexpr bool takes_self_event = std::is_invocable_v<F&, Self&, const E&>;
    static constexpr bool takes_event = std::is_invocable_v<F&, const E&>;
    static constexpr bool takes_self_delivery = std::is_invocable_v<F&, Self&, Delivery<E>&>;
    static constexpr bool takes_delivery = std::is_invocable_v<F&, Delivery<E>&>;
    static constexpr bool fits = takes_self_event || takes_event || takes_self_delivery || takes_delivery;
    static constexpr bool wants_delivery = !takes_event && !takes_self_event && (takes_delivery || takes_self_delivery);

    void operator()(Self& self, DeliveryArg<E>& arg) {
        if constexpr (wants_delivery) {
            // In-call retries of one delivery share its state: a copy the
            // first try kept settles the delivery the last try made.
            if (!arg.state) arg.state = DeliveryStateRef::adopt(new ParkedDelivery<E>(arg));
            auto* state = static_cast<ParkedDelivery<E>*>(arg.state.get());
            state->add_ref();
            Delivery<E> delivery(state);
            if constexpr (takes_delivery) {
                check_result([&] { return std::invoke(f, delivery); });
            } else {
                check_result([&] { return std::invoke(f, self, delivery); });
            }
        } else if constexpr (takes_event) {
            check_result([&] { return std::invoke(f, *arg.event); });
        } else {
            check_result([&] { return std::invoke(f, self, *arg.event); });
        }
        arg.completed = true;
    }

private:
    template <class Call>
    static void check_result(Call&& call) {
        if constexpr (std::is_void_v<decltype(call())>) {
            call();
        } else {
            check(call());
        }
    }
    template <class R>
    static void check(R&& r) {
        if constexpr (std::is_same_v<std::remove_cvref_t<R>, std::error_code>) {
            if (r) throw std::system_error(r);
        }
    }
};

template <class E>
class Channel final : public ChannelBase {
    struct Route {
        RouteRef state;
        int priority = 0;
        std::uint64_t order = 0;
        std::vector<SubscriptionRef<E>> members;
        std::vector<std::uint64_t> weight_ends;  // cumulative weights, for the round robin
    };
    using View = std::vector<Route>;

public:
    Channel(std::string type_name, BusCore& core)
        : ChannelBase(std::move(type_name), core, core.metrics_on()), routes_(View{}) {}

    ~Channel() override = default;

    // Effect: adds `sub` (owned by the caller's reference) to its route.
    void add(Subscription<E>* sub) {
        std::lock_guard<std::mutex> lock(write_);
        View next = *routes_.load();
        Route* route = nullptr;
        if (!sub->group.empty()) {
            for (Route& r : next) {
                if (r.state->group == sub->group) route = &r;
            }
        }
        if (route == nullptr) {
            next.push_back(Route{RouteRef::adopt(new RouteState(sub->group)), sub->priority, sub->order, {}, {}});
            route = &next.back();
        }
        route->members.push_back(share(sub));
        publish_view(std::move(next));
    }

    // A first attempt made already (deliver_route's fast path), for
    // deliver_members to conclude.
    struct Made {
        TriggerResult result;
        DeliveryArg<E> arg;
    };

    // ---- publish ---------------------------------------------------------------

    TriggerResult publish(const E& event) {
        if (metrics_on()) counters.published.fetch_add(1, std::memory_order_relaxed);
        if (Subscription<E>* m = lone_.load(std::memory_order_acquire)) return publish_lone(event, *m);
        return publish_routes(event, nullptr);
    }

    // publish() to one subscription alone (the common case): its trigger's
    // result is the answer, unless it did anything but take the event and
    // return; no view is loaded. One named result returned on every path,
    // so that the compiler builds it in the caller's slot (with a second
    // return expression g++ gives that up and pays a move and two vector
    // destructions per call).
    TriggerResult publish_lone(const E& event, Subscription<E>& m) {
        DeliveryArg<E> arg{&event, 1, &m};
        TriggerResult r = m.inner.trigger(arg);
        if (arg.completed && r.failed == 0 && !arg.state) [[likely]] {
            if (metrics_on()) {
                m.counters.delivered.fetch_add(1, std::memory_order_relaxed);
                m.counters.acked.fetch_add(1, std::memory_order_relaxed);
            }
        } else {
            Made made{std::move(r), std::move(arg)};
            r = publish_routes(event, &made);
        }
        return r;
    }

    // publish() through the routes: `made` (if any) is the attempt the fast
    // path already made for its lone subscription, concluded in that
    // subscription's route (or given up on, if it was pruned meanwhile).
    TriggerResult publish_routes(const E& event, Made* made) {
        TriggerResult result;
        auto view = routes_.load();
        for (const Route& route : *view) {
            Attempt<E> a;
            a.event = &event;
            a.route = route.state.get();
            a.result = &result;
            if (made != nullptr) {
                const auto& ms = route.members;
                const auto it = std::find_if(ms.begin(), ms.end(),
                                             [&](const SubscriptionRef<E>& x) { return x.get() == made->arg.subscription; });
                if (it != ms.end()) {
                    deliver_members(std::span<const SubscriptionRef<E>>(ms), static_cast<std::size_t>(it - ms.begin()),
                                    ms.size(), std::move(a), nullptr, made);
                    made = nullptr;
                    continue;
                }
            }
            deliver_route(route, std::move(a));
        }
        if (made != nullptr) conclude_without_route(event, *made, result);
        return result;
    }

    // ---- queued ----------------------------------------------------------------

    void deliver_posted(EnvelopeRef* envelopes, std::size_t count) noexcept override {
        auto view = routes_.load();  // once for the whole run of events
        for (std::size_t i = 0; i < count; ++i) {
            EnvelopeBase* envelope = envelopes[i].get();
            if (view->empty()) {
                counters.unrouted.fetch_add(1, std::memory_order_relaxed);
                continue;
            }
            const E& event = static_cast<const Envelope<E>&>(*envelope).event;
            bool reached = false;
            for (const Route& route : *view) {
                Attempt<E> a;
                a.event = &event;
                a.envelope = envelope;
                a.route = route.state.get();
                a.queued = true;
                reached = deliver_route(route, std::move(a)) || reached;
            }
            // Every subscription went before it came (not yet pruned).
            if (!reached) counters.unrouted.fetch_add(1, std::memory_order_relaxed);
        }
    }

    void discard_posted(EnvelopeRef envelope, std::exception_ptr why) noexcept override {
        auto view = routes_.load();
        if (view->empty()) {
            counters.unrouted.fetch_add(1, std::memory_order_relaxed);
            return;
        }
        const E& event = static_cast<const Envelope<E>&>(*envelope).event;
        for (const Route& route : *view) {
            if (route.members.empty()) continue;
            Attempt<E> a;
            a.event = &event;
            a.envelope = envelope.get();
            a.route = route.state.get();
            give_up(a, *route.members.front(), why);
        }
    }

    // A Redelivery that came due (or a failover from an executor task).
    void redeliver(Attempt<E>&& a, const SubscriptionRef<E>& failed_by) noexcept {
        {
            auto view = routes_.load();
            const Route* route = nullptr;
            for (const Route& r : *view) {
                if (r.state.get() == a.route) route = &r;
            }
            if (route == nullptr) {
                // Every member of its route is gone: nobody is left to take it.
                give_up(a, *failed_by, gone_error());
            } else {
                deliver_route(*route, std::move(a));
            }
        }
        core().end_work();
    }

    // A parked delivery settled late (an ack, a nack, or its deadline).
    void finish_parked(ParkedDelivery<E>& parked, DeliveryStatus status) noexcept {
        Subscription<E>& member = *parked.member;
        switch (status) {
            case DeliveryStatus::acked:
                if (metrics_on()) member.counters.acked.fetch_add(1, std::memory_order_relaxed);
                break;
            case DeliveryStatus::nacked:
                member.counters.nacked.fetch_add(1, std::memory_order_relaxed);
                retry_or_give_up(parked.attempt, member, parked.nack_delay(), true,
                                 std::make_exception_ptr(std::system_error(make_error_code(errc::nacked))));
                break;
            case DeliveryStatus::timed_out:
                if (core().closed()) {  // timed out by close(), not by its deadline
                    give_up(parked.attempt, member,
                            std::make_exception_ptr(std::system_error(make_error_code(errc::bus_closed),
                                                                      "cbm::EventBus closed before the ack")));
                    break;
                }
                member.counters.ack_timeouts.fetch_add(1, std::memory_order_relaxed);
                retry_or_give_up(parked.attempt, member, {}, false,
                                 std::make_exception_ptr(std::system_error(make_error_code(errc::ack_timeout))));
                break;
            case DeliveryStatus::failed:
            case DeliveryStatus::pending:
            case DeliveryStatus::settling: break;
        }
        // The deadline goes now, not when it is due: it holds the parked
        // delivery, and with it the event (which Delivery copies may still
        // read: the event goes with the last of them).
        if (status != DeliveryStatus::timed_out) core().cancel(&parked.deadline);
        core().end_work();  // the parked work
    }

    // Gives the event up for `member`'s route: the dead-letter handler.
    void give_up(const Attempt<E>& a, Subscription<E>& member, std::exception_ptr why) noexcept {
        member.counters.dead_lettered.fetch_add(1, std::memory_order_relaxed);
        try {
            DeadLetter letter{type_name(), member.name, std::move(why), a.delivery};
            core().report_dead_letter(letter);
            std::shared_ptr<const std::function<void(const DeadLetter&, const E&)>> typed;
            {
                std::lock_guard<std::mutex> lock(write_);
                typed = typed_dead_letter_;
            }
            if (typed && a.event != nullptr) (*typed)(letter, *a.event);
        } catch (...) {  // a handler that throws (or no memory for the letter) stops nothing
        }
    }

    void end_subscriptions() noexcept override {
        View gone_view;
        std::vector<SubscriptionRef<E>> gone;
        {
            std::lock_guard<std::mutex> lock(write_);
            try {
                gone_view = *routes_.load();
                lone_.store(nullptr, std::memory_order_release);
                routes_.store(View{});
            } catch (...) {  // no memory for an empty view: they end with the channel
            }
            gone.swap(gone_);
        }
        // Dropped here, outside the lock: each subscription that goes
        // unregisters its callback, waiting for a delivery still running.
    }

    void set_typed_dead_letter_handler(std::function<void(const DeadLetter&, const E&)> handler) {
        auto fresh = handler ? std::make_shared<const std::function<void(const DeadLetter&, const E&)>>(std::move(handler))
                             : nullptr;
        std::lock_guard<std::mutex> lock(write_);
        typed_dead_letter_ = std::move(fresh);
    }

    // Every subscription there is now (for metrics), in route order.
    std::vector<SubscriptionRef<E>> subscriptions() const {
        std::vector<SubscriptionRef<E>> out;
        auto view = routes_.load();
        for (const Route& r : *view) {
            for (const auto& m : r.members) out.push_back(m);
        }
        std::lock_guard<std::mutex> lock(write_);
        for (const auto& m : gone_) out.push_back(m);
        return out;
    }

    std::size_t subscriber_count() const {
        std::size_t n = 0;
        auto view = routes_.load();
        for (const Route& r : *view) {
            for (const auto& m : r.members) n += m->alive() ? 1 : 0;
        }
        return n;
    }

private:
    // The fast path's attempt for a subscription that left every route
    // before it could be concluded there (unsubscribed and pruned in
    // between): acked if it succeeded, else given up on (no route is left
    // to redeliver to).
    void conclude_without_route(const E& event, Made& made, TriggerResult& result) noexcept {
        Subscription<E>& m = *made.arg.subscription;
        std::exception_ptr error;
        DeliveryStateRef state;
        AttemptOutcome outcome = AttemptOutcome::gone;
        try {
            outcome = m.classify(made.result, made.arg, &result, error, state);
        } catch (...) {
            error = std::current_exception();
            outcome = AttemptOutcome::failed;
        }
        if (outcome == AttemptOutcome::acked) {
            if (metrics_on()) m.counters.acked.fetch_add(1, std::memory_order_relaxed);
            return;
        }
        if (outcome == AttemptOutcome::filtered || outcome == AttemptOutcome::gone) return;  // it was never its event
        if (state) state->settle(DeliveryStatus::failed);
        Attempt<E> a;
        a.event = &event;
        give_up(a, m, error ? error : gone_error());
    }

    void publish_view(View&& next) {
        for (Route& r : next) {
            r.priority = r.members.empty() ? 0 : r.members.front()->priority;
            r.weight_ends.clear();
            std::uint64_t total = 0;
            for (const auto& m : r.members) {
                r.priority = std::max(r.priority, m->priority);
                total += m->weight;
                r.weight_ends.push_back(total);
            }
        }
        std::stable_sort(next.begin(), next.end(), [](const Route& a, const Route& b) {
            return a.priority != b.priority ? a.priority > b.priority : a.order < b.order;
        });
        Subscription<E>* lone = next.size() == 1 && next.front().members.size() == 1 ? next.front().members.front().get()
                                                                                   : nullptr;
        routes_.store(std::move(next));
        lone_.store(lone, std::memory_order_release);
    }

    // Removes members that are gone (unregistered, or a once that ran);
    // their numbers stay for metrics.
    void prune() {
        std::lock_guard<std::mutex> lock(write_);
        View next = *routes_.load();
        bool changed = false;
        for (Route& r : next) {
            auto keep = std::stable_partition(r.members.begin(), r.members.end(),
                                              [](const SubscriptionRef<E>& m) { return m->alive(); });
            if (keep != r.members.end()) {
                changed = true;
                for (auto it = keep; it != r.members.end(); ++it) gone_.push_back(*it);
                r.members.erase(keep, r.members.end());
            }
        }
        if (!changed) return;
        std::erase_if(next, [](const Route& r) { return r.members.empty(); });
        publish_view(std::move(next));
    }

    // The member to try first: for a first delivery, the weighted round
    // robin's next; for a redelivery, the member after the one that failed.
    static std::size_t first_member(const Route& route, const Attempt<E>& a) noexcept {
        const std::size_t n = route.members.size();
        if (n == 1) return 0;
        if (a.avoid != nullptr) {
            for (std::size_t i = 0; i < n; ++i) {
                if (route.members[i].get() == a.avoid) return (i + 1) % n;
            }
        }
        const std::uint64_t total = route.weight_ends.back();
        const std::uint64_t spot = route.state->next.fetch_add(1, std::memory_order_relaxed) % total;
        return static_cast<std::size_t>(
            std::upper_bound(route.weight_ends.begin(), route.weight_ends.end(), spot) - route.weight_ends.begin());
    }

    // Returns: false if every member of the route was gone.
    bool deliver_route(const Route& route, Attempt<E>&& a) noexcept {
        const std::size_t n = route.members.size();
        if (n == 0) return false;
        if (n == 1 && a.delivery == 1 && !(a.queued && route.members.front()->executor)) {
            // The common case, a subscription alone that takes a first
            // delivery and returns: one trigger, nothing else.
            Subscription<E>& m = *route.members.front();
            std::optional<Made> made;
            try {
                made.emplace(Made{TriggerResult{}, DeliveryArg<E>{a.event, 1, &m, a.envelope}});
                made->result = a.queued ? m.inner.trigger(a.envelope->context, made->arg) : m.inner.trigger(made->arg);
            } catch (...) {  // no memory for a result: the general path tries again
                made.reset();
            }
            if (made && made->arg.completed && made->result.failed == 0 && !made->arg.state) [[likely]] {
                if (metrics_on()) {
                    m.counters.delivered.fetch_add(1, std::memory_order_relaxed);
                    m.counters.acked.fetch_add(1, std::memory_order_relaxed);
                }
                if (a.result != nullptr) Subscription<E>::merge(*a.result, std::move(made->result));
                return true;
            }
            if (made) return deliver_members(std::span<const SubscriptionRef<E>>(route.members), 0, 1, std::move(a), nullptr, &*made);
        }
        return deliver_members(std::span<const SubscriptionRef<E>>(route.members), first_member(route, a), n, std::move(a),
                        nullptr);
    }

    // Tries `count` members from `start` (cyclically) until one takes the
    // event. `on` is the member whose executor runs this call (it is not
    // handed to its executor again).
    // Returns: false if every member tried was gone.
    bool deliver_members(std::span<const SubscriptionRef<E>> members, std::size_t start, std::size_t count,
                         Attempt<E>&& a, const Subscription<E>* on, Made* made = nullptr) noexcept {
        const std::size_t n = members.size();
        Subscription<E>* skipped_by = nullptr;
        bool filtered = false;
        bool pruned = false;
        for (std::size_t i = 0; i < count; ++i) {
            Subscription<E>& m = *members[(start + i) % n];
            if (a.queued && m.executor && &m != on) {
                hand_to_executor(members, (start + i) % n, count - i, std::move(a), m);
                return true;
            }
            std::exception_ptr error;
            DeliveryStateRef state;
            if (a.delivery > 1) m.counters.redelivered.fetch_add(1, std::memory_order_relaxed);
            AttemptOutcome outcome;
            try {
                if (i == 0 && made != nullptr) {
                    outcome = m.classify(made->result, made->arg, a.result, error, state);
                } else {
                    outcome = m.attempt(*a.event, a.delivery, a.envelope, a.queued ? &a.envelope->context : nullptr,
                                        a.result, error, state);
                }
            } catch (...) {  // no memory for the result: count it as the attempt's failure
                error = std::current_exception();
                outcome = AttemptOutcome::failed;
            }
            switch (outcome) {
                case AttemptOutcome::acked:
                    if (metrics_on()) m.counters.acked.fetch_add(1, std::memory_order_relaxed);
                    return true;
                case AttemptOutcome::failed:
                    m.counters.failed.fetch_add(1, std::memory_order_relaxed);
                    retry_or_give_up(a, m, {}, false, error);
                    return true;
                case AttemptOutcome::nacked:
                    m.counters.nacked.fetch_add(1, std::memory_order_relaxed);
                    retry_or_give_up(a, m, state->nack_delay(), true,
                                     std::make_exception_ptr(std::system_error(make_error_code(errc::nacked))));
                    return true;
                case AttemptOutcome::pending:
                    park(std::move(a), m, std::move(state));
                    return true;
                case AttemptOutcome::canceled:
                    give_up(a, m, std::make_exception_ptr(std::system_error(
                                      a.envelope ? a.envelope->context.err() : make_error_code(errc::canceled),
                                      "cbm::EventBus: the event's context ended before its delivery")));
                    return true;
                case AttemptOutcome::filtered: filtered = true; break;  // not for this member: maybe for another
                case AttemptOutcome::blocked:
                case AttemptOutcome::circuit_open: skipped_by = &m; break;
                case AttemptOutcome::gone:
                    if (!pruned) {
                        pruned = true;
                        try {
                            prune();
                        } catch (...) {  // pruned later
                        }
                    }
                    break;
            }
        }
        if (skipped_by != nullptr) {
            skipped_by->counters.undeliverable.fetch_add(1, std::memory_order_relaxed);
            retry_or_give_up(a, *skipped_by, {}, false,
                             std::make_exception_ptr(std::system_error(make_error_code(errc::undeliverable))));
        } else if (!filtered && a.delivery > 1) {
            // A redelivery whose every member went meanwhile: given up, not lost.
            give_up(a, *members[start % n], gone_error());
        } else if (!filtered) {
            return false;  // every member unsubscribed before it came
        }
        return true;
    }

    // Hands the rest of a route's members to `m`'s executor: one task that
    // delivers there (and goes on to the next member if `m` does not take
    // it). Registered with the bus core until the task claims it, so that
    // close() dead-letters it if the executor has not run it by then.
    class HandOff final : public HandedWork {
    public:
        HandOff(Channel& channel, std::vector<SubscriptionRef<E>> members, Attempt<E>&& a) noexcept
            : channel_(&channel), members_(std::move(members)), attempt_(std::move(a)) {}

        void run() noexcept override {
            channel_->deliver_members(std::span<const SubscriptionRef<E>>(members_), 0, members_.size(),
                                      std::move(attempt_), members_.front().get());
        }
        void discard(bool closing, std::exception_ptr why) noexcept override {
            Subscription<E>& first = *members_.front();
            if (closing) {
                channel_->give_up(attempt_, first, std::move(why));
            } else {
                first.counters.failed.fetch_add(1, std::memory_order_relaxed);
                channel_->retry_or_give_up(attempt_, first, {}, false, std::move(why));
            }
            // The event and the subscriptions go now, not with the task
            // (which an executor may keep long after).
            attempt_ = Attempt<E>{};
            members_.clear();
        }

    private:
        Channel* channel_;  // the core, which the task holds, owns it
        std::vector<SubscriptionRef<E>> members_;
        Attempt<E> attempt_;
    };

    void hand_to_executor(std::span<const SubscriptionRef<E>> members, std::size_t from, std::size_t count,
                          Attempt<E>&& a, Subscription<E>& m) noexcept {
        std::vector<SubscriptionRef<E>> rest;
        try {
            rest.reserve(count);
            for (std::size_t i = 0; i < count; ++i) rest.push_back(members[(from + i) % members.size()]);
        } catch (...) {
            retry_or_give_up(a, m, {}, false, std::current_exception());
            return;
        }
        std::exception_ptr why;
        if (!keep(a, m, why)) {
            retry_or_give_up(a, m, {}, false, why);
            return;
        }
        HandOff* hand_off = nullptr;
        try {
            hand_off = new HandOff(*this, std::move(rest), std::move(a));
        } catch (...) {
            retry_or_give_up(a, m, {}, false, std::current_exception());
            return;
        }
        core().hand_to(m.executor, HandedRef::adopt(hand_off));
    }

    // After a failed, nacked, timed-out or undeliverable delivery: again
    // after the backoff (or the nack's delay) while deliveries remain, else
    // the dead-letter handler.
    void retry_or_give_up(Attempt<E>& a, Subscription<E>& member, std::chrono::nanoseconds nack_delay, bool nacked,
                          std::exception_ptr why) noexcept {
        if (a.delivery >= member.max_deliveries || !keep(a, member, why)) {
            give_up(a, member, std::move(why));
            return;
        }
        std::unique_ptr<Redelivery<E>> work;
        try {
            work = std::make_unique<Redelivery<E>>(*this, share(&member));
        } catch (...) {
            give_up(a, member, std::move(why));
            return;
        }
        const auto wait = nacked ? nack_delay : redelivery_wait(member.backoff, a.delivery);
        if (!a.kept) a.kept = share_route(a.route);
        work->take(std::move(a));
        work->due = core().clock().now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(wait);
        core().begin_work();
        core().schedule(std::move(work));
    }

    // Makes sure the event outlives publish(): copies a published event into
    // an envelope of its own. False if it cannot (a type that cannot be
    // copied; `why` then says so).
    bool keep(Attempt<E>& a, Subscription<E>&, std::exception_ptr& why) noexcept {
        if (a.owned) return true;
        if (a.envelope != nullptr) {
            a.envelope->add_ref();
            a.owned = EnvelopeRef::adopt(a.envelope);
            return true;
        }
        if constexpr (std::is_copy_constructible_v<E>) {
            try {
                auto* envelope = new Envelope<E>(this, current_context(), core().clock().now(), *a.event);
                a.owned = EnvelopeRef::adopt(envelope);
                a.envelope = envelope;
                a.event = &envelope->event;
                a.queued = true;
                return true;
            } catch (...) {
                why = std::current_exception();
                return false;
            }
        } else {
            why = std::make_exception_ptr(std::logic_error(
                "cbm::EventBus: a published event of a type that cannot be copied cannot wait for a "
                "redelivery or an ack; post() it instead"));
            return false;
        }
    }

    // A manual-ack delivery that returned unsettled: waits for its ack, nack
    // or deadline.
    void park(Attempt<E>&& a, Subscription<E>& member, DeliveryStateRef state) noexcept {
        auto* parked = static_cast<ParkedDelivery<E>*>(state.get());
        // It cannot wait: failed, unless the handler's copy settled it first.
        auto cannot_wait = [&](std::exception_ptr why) {
            if (!parked->settle(DeliveryStatus::failed) && parked->final_status() == DeliveryStatus::acked) {
                if (metrics_on()) member.counters.acked.fetch_add(1, std::memory_order_relaxed);
            } else {
                give_up(a, member, std::move(why));
            }
        };
        std::exception_ptr why;
        if (!keep(a, member, why)) {
            cannot_wait(why);
            return;
        }
        parked->repoint_to(*a.event, a.envelope);
        parked->core = BusCoreRef::adopt((core().add_ref(), &core()));
        parked->channel = this;
        std::unique_ptr<AckDeadline<E>> deadline;
        try {
            deadline = std::make_unique<AckDeadline<E>>(parked);
        } catch (...) {
            cannot_wait(std::current_exception());
            return;
        }
        deadline->due = core().clock().now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(member.ack_timeout);
        if (!a.kept) a.kept = share_route(a.route);
        parked->attempt = std::move(a);
        parked->deadline = deadline.get();
        core().begin_work();  // ended by finish_parked
        // Scheduled before the hand-over, so that a settlement made meanwhile
        // finds the deadline to cancel; a deadline that fires first settles
        // it as timed_out, which the hand-over then sees.
        core().schedule(std::move(deadline));
        bool mine = false;
        const DeliveryStatus seen = parked->hand_over(mine);
        if (mine) finish_parked(*parked, seen);  // settled while we parked it
    }

    static RouteRef share_route(RouteState* r) noexcept {
        r->add_ref();
        return RouteRef::adopt(r);
    }

    static std::exception_ptr gone_error() noexcept {
        return std::make_exception_ptr(std::system_error(
            make_error_code(errc::undeliverable), "cbm::EventBus: every subscription that could take the event is gone"));
    }

    Snapshot<View> routes_;
    // The subscription of a view that has just one (one route, one
    // member), for publish() to reach without loading the view. Read with
    // no protection: a subscription that was ever in a view stays alive
    // while the channel's subscriptions do (a pruned one waits in gone_),
    // which end only when the bus goes.
    std::atomic<Subscription<E>*> lone_{nullptr};
    mutable std::mutex write_;                    // writers of routes_; gone_; the typed handler
    std::vector<SubscriptionRef<E>> gone_;        // pruned members, kept for their numbers
    std::shared_ptr<const std::function<void(const DeadLetter&, const E&)>> typed_dead_letter_;
};

}  // namespace cbm::detail
