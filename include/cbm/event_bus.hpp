// cbm/event_bus.hpp - cbm::EventBus: typed events published now or posted
// for later, to subscriptions with ack, redelivery with backoff and dead
// letters, consumer groups with weighted routing, a bounded queue and
// per-type metrics. The seed's event-driven model, in one process.
//
//   struct OrderPaid { std::string id; double total; };
//   cbm::EventBus bus({.executor = pool.executor(), .queue_capacity = 100'000});
//   auto billing = bus.subscribe<OrderPaid>([](const OrderPaid& e) { bill(e); },
//                                           {.name = "billing", .max_deliveries = 5,
//                                            .group = "billing", .weight = 3});
//   bus.publish(OrderPaid{"o1", 120.0});  // now, on this thread: a TriggerResult
//   bus.post(OrderPaid{"o2", 80.0});      // queued: on the executor, or by process()/run(ctx)
//   bus.drain();
//
// Routing. Events are routed by their C++ type, through a dense index the
// type gets on first use: no hashing, no RTTI. A type nobody subscribed to
// costs an index load and a compare. Each event reaches every route in
// priority order; a route is a subscription alone, or a consumer group
// (SubscribeOptions::group): the subscriptions of one type that share a
// group name, of which each event reaches exactly one, chosen by weighted
// round robin, and another when that one fails, is blocked, has its circuit
// open, filters the event out or is gone.
//
// Delivery is at least once. A delivery ends acked (a handler that returns,
// or ack() in manual mode), or fails (a throw, a non-zero std::error_code, a
// nack, an ack timeout, or no member able to take it); a failed one is
// redelivered after the subscription's backoff while max_deliveries allows,
// then it reaches the dead-letter handler. Every event a subscription
// receives is acked or dead-lettered; none disappears. Handlers see
// Delivery::delivery_count() to be idempotent.
//
// Ordering. Events posted by one thread reach each subscription in posting
// order when one thread delivers them: process() or run() on one thread, or
// an executor with one thread. On a multi-thread executor (one task per
// event), on subscriptions with their own executor, and for redeliveries
// (which wait for their backoff), events may arrive out of order.
//
// Unsubscribing. subscribe() returns a cbm::Registration: unregister()
// waits for a running delivery to that subscription, and no delivery
// starts after it returns (also not of events queued before): a consumer
// group gives them to another member.
//
// Thread safety: every member may be called from any thread at once, also
// from inside a handler, except drain() and the destructor (which would
// wait for themselves). No cbm lock is held while a handler runs.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "callback_group.hpp"
#include "context.hpp"
#include "delivery.hpp"
#include "detail/bus_core.hpp"
#include "detail/event_channel.hpp"
#include "detail/event_type.hpp"
#include "detail/prometheus_text.hpp"
#include "error_policy.hpp"
#include "metrics.hpp"
#include "registration.hpp"
#include "subscribe_options.hpp"

namespace cbm {

// One subscription's numbers.
struct SubscriptionMetrics {
    std::string name;
    std::string group;  // "" for a subscription alone
    Labels labels;
    bool active = false;              // still subscribed
    std::uint64_t delivered = 0;      // handler calls (redeliveries included)
    std::uint64_t acked = 0;          // deliveries that ended acked
    std::uint64_t failed = 0;         // deliveries that threw or returned an error
    std::uint64_t nacked = 0;         // deliveries the handler nacked
    std::uint64_t ack_timeouts = 0;   // manual deliveries not settled in time
    std::uint64_t undeliverable = 0;  // events it (or its whole group) could not take: blocked, circuit open
    std::uint64_t redelivered = 0;    // deliveries after the first
    std::uint64_t dead_lettered = 0;  // events given up on
    // Its callback's numbers, as a CallbackGroup reports them (latency,
    // skips, timeouts, retries; metrics on only).
    CallbackMetrics callback;
};

// One event type's numbers.
struct EventTypeMetrics {
    std::string type;              // the type's name (or its static `event_name`)
    std::uint64_t published = 0;   // publish() calls (metrics on)
    std::uint64_t posted = 0;      // events post() queued (or delivered on the caller)
    std::uint64_t rejected = 0;    // post() calls refused: queue full, or bus closed
    std::uint64_t unrouted = 0;    // events that found no subscription to take them
    std::uint64_t queued = 0;      // posted, waiting now
    HistogramSnapshot queue_wait_ns;  // post() to the start of delivery (metrics on)
    std::vector<SubscriptionMetrics> subscriptions;
};

struct EventBusMetrics {
    std::vector<EventTypeMetrics> types;  // in order of first use
    std::size_t queued = 0;               // posted events waiting now, all types
    std::size_t queue_capacity = 0;
    std::size_t waiting = 0;              // redeliveries and manual acks waiting now
    std::size_t outstanding = 0;          // what drain() would wait for
    std::size_t blocked_producers = 0;    // post() calls waiting for room now
    bool closed = false;
};

class EventBus {
public:
    // Throws: std::invalid_argument for a queue_capacity of 0.
    explicit EventBus(EventBusOptions options = {})
        : core_(detail::BusCoreRef::adopt(new detail::BusCore(options))),
          clock_(options.clock),
          metrics_(options.metrics),
          table_(new Table(16)) {}
    EventBus(const EventBus&) = delete;
    EventBus& operator=(const EventBus&) = delete;

    // Effect: close(): posts fail from now on; deliveries of posted events
    // running on other threads finish; then every event not delivered yet
    // (queued, waiting for a redelivery, for a manual ack, or for a
    // subscription's executor to run its task) is dead-lettered with
    // errc::bus_closed. Call drain() first to deliver them. Then every
    // subscription ends (as by unregister()). Executor tasks of the bus that
    // run later find it closed and do nothing.
    // Precondition: not called from inside a handler of this bus; no other
    // thread calls publish() or subscribe() meanwhile.
    ~EventBus() {
        core_->close();
        core_->end_subscriptions();
        delete table_.load(std::memory_order_relaxed);
    }

    // Effect: subscribes `handler` to events of type E. The handler may take
    // the event (const E&), or a cbm::Delivery<E>& (required in manual ack
    // mode), in either case optionally after a cbm::Self& (its own handle),
    // and may return a std::error_code (non-zero: failed).
    // Returns: the subscription's handle (unregister() ends it; see the
    // header comment). Dropping it does not unsubscribe.
    // Throws: std::invalid_argument for options that make no sense (see
    // SubscribeOptions) or an empty handler; nothing is subscribed then.
    template <class E, class F>
    Registration subscribe(F&& handler, SubscribeOptions<E> options = {}) {
        static_assert(std::is_same_v<E, std::remove_cvref_t<E>>,
                      "cbm::EventBus::subscribe<E>: name the event type itself, without const or &");
        using Handler = detail::EventHandler<E, std::decay_t<F>>;
        static_assert(Handler::fits,
                      "cbm::EventBus::subscribe<E>: the handler must be callable as f(const E&) or "
                      "f(cbm::Delivery<E>&), optionally with a cbm::Self& first");
        validate(options, Handler::wants_delivery);
        if (detail::is_empty_callable(handler)) {
            throw std::invalid_argument("cbm::EventBus::subscribe: cannot subscribe an empty handler");
        }
        detail::Channel<E>& channel = channel_for<E>();
        GroupOptions inner_options{.error_policy = ErrorPolicy::collect, .metrics = metrics_, .clock = clock_};
        auto* sub = new detail::Subscription<E>(options, inner_options, next_order_.fetch_add(1));
        detail::SubscriptionRef<E> owner = detail::SubscriptionRef<E>::adopt(sub);
        sub->core_of_channel = core_.get();
        typename detail::Subscription<E>::Inner::options_type callback{
            .priority = 0,
            .once = options.once,
            .name = options.name,
            .filter = {},
            .context = options.context,
            .labels = options.labels,
            .timeout = options.timeout,
            .retry = options.retry,
            .circuit_breaker = options.circuit_breaker,
            .slow_threshold = options.slow_threshold,
            .executor = {},
        };
        if (options.filter) {
            callback.filter = [filter = std::move(options.filter)](const detail::DeliveryArg<E>& arg) {
                if (filter(*arg.event)) return true;
                arg.filtered = true;
                return false;
            };
        }
        sub->registration = sub->inner.add(Handler{std::forward<F>(handler)}, std::move(callback));
        if (sub->registration.state() == CallbackState::unregistered) return sub->registration;  // its context ended already
        channel.add(sub);
        return sub->registration;
    }

    // Effect: delivers `event` now, on this thread, to every route (as
    // trigger() runs callbacks): each subscription's handler, or one member
    // of each consumer group. A delivery that fails is reported here and,
    // while max_deliveries allows, redelivered later as if posted (a copy of
    // the event waits; a type that cannot be copied is dead-lettered at
    // once); a manual-ack delivery left unsettled waits for its ack likewise.
    // Returns: the numbers of these first deliveries (invoked, failed,
    // skipped: filtered, blocked, circuit open; failures in call order).
    // Blocks: only inside handlers.
    template <class E>
    TriggerResult publish(const E& event) {
        detail::Channel<E>* channel = find<E>();
        if (channel == nullptr) return {};
        return channel->publish(event);
    }

    // Effect: queues `event` (moved or copied once) for delivery on the
    // executor, or by process()/run(). The poster's current_context() goes
    // with it: handlers run under it (its trace id, values, deadline), and
    // an event whose context ended before its delivery is dead-lettered with
    // the context's error. When the queue is full: see EventBusOptions::
    // overflow.
    // Throws: std::system_error with errc::queue_full (Overflow::reject) or
    // errc::bus_closed; the event is counted as rejected and not queued.
    // Blocks: with Overflow::block, until there is room (a handler of this
    // bus that posts to a full queue delivers the event itself instead, as
    // with caller_runs, since it may be the thread that would make room).
    template <class T>
    void post(T&& event) {
        using E = std::remove_cvref_t<T>;
        detail::Channel<E>& channel = channel_for<E>();
        // The clock is read only when queue waits are timed (metrics).
        const auto posted = metrics_ ? core_->clock().now() : std::chrono::steady_clock::time_point{};
        auto* envelope = new detail::Envelope<E>(&channel, current_context(), posted, std::forward<T>(event));
        core_->post(detail::EnvelopeRef::adopt(envelope));
    }

    // Effect: delivers, on this thread, every posted event queued now and
    // every redelivery or ack deadline that is due (by the bus clock).
    // Returns: how many it delivered.
    std::size_t process() { return core_->process(); }

    // Effect: delivers as process() does and waits for more, until `ctx` is
    // canceled or the bus is closed. Several threads may run() at once.
    // Returns: how many it delivered.
    std::size_t run(const Context& ctx) { return core_->run(ctx); }

    // Effect: returns once every posted event has been delivered and every
    // delivery settled: acked, or dead-lettered after its redeliveries
    // (waiting for their backoff and for manual acks). Without an executor
    // it delivers on this thread meanwhile.
    // Throws: std::logic_error from inside a handler of this bus.
    void drain() { core_->drain(); }

    // Effect: see the destructor; the bus stays usable for publish() and
    // metrics(). Idempotent; several threads (handlers too) may close at
    // once. A publish() running on another thread is not waited for: its
    // failed deliveries are dead-lettered (errc::bus_closed) when it
    // returns.
    // Blocks: until deliveries of posted events on other threads finish.
    void close() noexcept { core_->close(); }

    // Effect: `handler` receives every event given up on: key = the event
    // type's name, name = the subscription's, the error, attempts = the
    // deliveries made. Pass {} to remove. A handler that throws stops
    // nothing.
    void set_dead_letter_handler(DeadLetterHandler handler) { core_->set_dead_letter_handler(std::move(handler)); }

    // Effect: as set_dead_letter_handler, for events of type E only, with
    // the event itself (after the bus-wide handler).
    template <class E>
    void set_dead_letter_handler(std::function<void(const DeadLetter&, const E&)> handler) {
        channel_for<E>().set_typed_dead_letter_handler(std::move(handler));
    }

    // Effect: `handler` receives every Failure of every delivery (name = the
    // subscription's), on the delivering thread. Pass {} to remove.
    void set_error_handler(ErrorHandler handler) { core_->set_error_handler(std::move(handler)); }

    // Subscriptions of type E registered now.
    template <class E>
    std::size_t subscriber_count() const {
        const detail::Channel<E>* channel = find<E>();
        return channel == nullptr ? 0 : channel->subscriber_count();
    }

    // The numbers of every event type used so far.
    EventBusMetrics metrics() const {
        EventBusMetrics out;
        const auto numbers = core_->numbers();
        out.queued = numbers.queued;
        out.queue_capacity = core_->capacity();
        out.waiting = numbers.waiting;
        out.outstanding = numbers.outstanding;
        out.blocked_producers = numbers.blocked_producers;
        out.closed = numbers.closed;
        std::vector<detail::ChannelBase*> channels;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            channels = channels_;
        }
        for (detail::ChannelBase* c : channels) out.types.push_back(type_metrics_[c](*c));
        return out;
    }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

private:
    // The channels by type index: readers load the table and a slot; a
    // bigger table replaces it when a type's index does not fit, and the old
    // one is kept until the bus goes (readers may still hold it).
    struct Table {
        explicit Table(std::size_t n) : size(n), slots(new std::atomic<detail::ChannelBase*>[n]) {
            for (std::size_t i = 0; i < n; ++i) slots[i].store(nullptr, std::memory_order_relaxed);
        }
        const std::size_t size;
        std::unique_ptr<std::atomic<detail::ChannelBase*>[]> slots;
    };

    template <class E>
    detail::Channel<E>* find() const noexcept {
        const std::size_t index = detail::event_type_index<E>();
        const Table* table = table_.load(std::memory_order_acquire);
        if (index >= table->size) return nullptr;
        return static_cast<detail::Channel<E>*>(table->slots[index].load(std::memory_order_acquire));
    }

    template <class E>
    detail::Channel<E>& channel_for() {
        if (detail::Channel<E>* found = find<E>()) return *found;
        std::lock_guard<std::mutex> lock(mutex_);
        if (detail::Channel<E>* found = find<E>()) return *found;
        const std::size_t index = detail::event_type_index<E>();
        Table* table = table_.load(std::memory_order_relaxed);
        auto channel = std::make_unique<detail::Channel<E>>(detail::readable_event_type_name<E>(), *core_);
        type_metrics_.reserve(type_metrics_.size() + 1);
        channels_.reserve(channels_.size() + 1);
        if (index >= table->size) {
            auto bigger = std::make_unique<Table>(std::max(index + 1, 2 * table->size));
            for (std::size_t i = 0; i < table->size; ++i) {
                bigger->slots[i].store(table->slots[i].load(std::memory_order_relaxed), std::memory_order_relaxed);
            }
            old_tables_.emplace_back(table);
            table = bigger.release();
            table_.store(table, std::memory_order_release);
        }
        detail::Channel<E>* raw = channel.get();
        core_->adopt_channel(std::move(channel));  // (bad_alloc: nothing changed but the reservations)
        type_metrics_.emplace(raw, &metrics_of<E>);
        channels_.push_back(raw);
        table->slots[index].store(raw, std::memory_order_release);
        return *raw;
    }

    template <class E>
    static EventTypeMetrics metrics_of(detail::ChannelBase& base) {
        auto& channel = static_cast<detail::Channel<E>&>(base);
        EventTypeMetrics m;
        m.type = channel.type_name();
        m.published = channel.counters.published.load(std::memory_order_relaxed);
        m.unrouted = channel.counters.unrouted.load(std::memory_order_relaxed);
        {
            const auto counts = channel.core().type_counts(channel);
            m.posted = counts.posted;
            m.rejected = counts.rejected;
            m.queued = counts.queued;
        }
        m.queue_wait_ns = channel.counters.queue_wait_ns.snapshot();
        for (const auto& sub : channel.subscriptions()) {
            SubscriptionMetrics s;
            s.name = sub->name;
            s.group = sub->group;
            s.labels = sub->labels;
            s.active = sub->alive();
            const auto& c = sub->counters;
            s.delivered = c.delivered.load(std::memory_order_relaxed);
            s.acked = c.acked.load(std::memory_order_relaxed);
            s.failed = c.failed.load(std::memory_order_relaxed);
            s.nacked = c.nacked.load(std::memory_order_relaxed);
            s.ack_timeouts = c.ack_timeouts.load(std::memory_order_relaxed);
            s.undeliverable = c.undeliverable.load(std::memory_order_relaxed);
            s.redelivered = c.redelivered.load(std::memory_order_relaxed);
            s.dead_lettered = c.dead_lettered.load(std::memory_order_relaxed);
            if (channel.core().metrics_on()) {
                MetricsSnapshot inner = sub->inner.metrics();
                if (!inner.callbacks.empty()) s.callback = std::move(inner.callbacks.front());
                s.callback.key = m.type;
            }
            m.subscriptions.push_back(std::move(s));
        }
        return m;
    }

    template <class E>
    static void validate(const SubscribeOptions<E>& o, bool handler_takes_delivery) {
        auto fail = [](const std::string& what) {
            throw std::invalid_argument("cbm::EventBus::subscribe: " + what);
        };
        if (o.max_deliveries == 0) fail("max_deliveries must be at least 1 (1: no redelivery)");
        if (o.weight == 0) fail("weight must be at least 1");
        if (o.ack == AckMode::manual && !handler_takes_delivery) {
            fail("a subscription with ack = cbm::AckMode::manual needs a handler that takes a cbm::Delivery<E>& "
                 "(to call ack() or nack() on)");
        }
        if (o.ack == AckMode::manual && o.ack_timeout.count() <= 0) fail("ack_timeout must be positive");
        const RedeliveryBackoff& b = o.redelivery_backoff;
        if (b.initial.count() < 0 || b.max.count() < 0) fail("redelivery_backoff times must not be negative");
        if (!(b.multiplier >= 1.0)) fail("redelivery_backoff.multiplier must be at least 1");
        if (!(b.jitter >= 0.0 && b.jitter <= 1.0)) fail("redelivery_backoff.jitter must be within [0, 1]");
        for (const auto& [name, value] : o.labels) {
            if (name == "event" || name == "subscription" || name == "group") {
                fail("label name \"" + name + "\" is reserved for the bus's own labels");
            }
        }
    }

    detail::BusCoreRef core_;
    ResilienceClock* const clock_;
    const bool metrics_;
    std::atomic<Table*> table_;
    std::atomic<std::uint64_t> next_order_{0};
    mutable std::mutex mutex_;  // channel creation; channels_, old_tables_, type_metrics_
    std::vector<detail::ChannelBase*> channels_;  // owned by the core (tasks may outlive the bus)
    std::vector<std::unique_ptr<Table>> old_tables_;
    mutable std::unordered_map<const detail::ChannelBase*, EventTypeMetrics (*)(detail::ChannelBase&)> type_metrics_;
};

namespace detail {
// One counter family of the exposition: its name suffix, help text, and
// the field of `Metrics` it reads.
template <class Metrics>
struct CounterFamily {
    const char* suffix;
    const char* help;
    std::uint64_t Metrics::*field;
};
}  // namespace detail

// Renders an EventBus's numbers (Prometheus text exposition format 0.0.4):
//   per event type (label event):   <prefix>_published_total, <prefix>_posted_total,
//       <prefix>_rejected_total, <prefix>_unrouted_total (counters),
//       <prefix>_queue_depth (gauge), <prefix>_queue_wait_seconds (summary);
//   per subscription (labels event, subscription, group, and its own):
//       <prefix>_delivered_total, _acked_total, _failed_total, _nacked_total,
//       _ack_timeouts_total, _undeliverable_total, _redelivered_total,
//       _dead_lettered_total (counters), <prefix>_subscribed (gauge: 1 or 0);
//   the bus: <prefix>_queue_capacity, <prefix>_waiting, <prefix>_blocked_producers (gauges).
// Each subscription's callback numbers render with to_prometheus of a
// MetricsSnapshot, if wanted.
// Throws: std::invalid_argument for a prefix Prometheus would reject.
inline std::string to_prometheus(const EventBusMetrics& bus, std::string_view prefix = "cbm_bus") {
    if (!detail::valid_metric_prefix(prefix)) {
        throw std::invalid_argument("cbm::to_prometheus: invalid metric name prefix \"" + std::string(prefix) +
                                    "\" (use [a-zA-Z_:][a-zA-Z0-9_:]*)");
    }
    const std::string p(prefix);
    std::string out;
    auto family = [&](const char* suffix, const char* type, const char* help) {
        out += "# HELP " + p + suffix + ' ' + help + '\n';
        out += "# TYPE " + p + suffix + ' ' + type + '\n';
    };
    auto event_label = [](const EventTypeMetrics& t) {
        std::string l = "{";
        detail::append_label(l, "event", t.type, true);
        return l + '}';
    };
    auto sub_label = [](const EventTypeMetrics& t, const SubscriptionMetrics& s, std::string_view q = {}) {
        std::string l = "{";
        detail::append_label(l, "event", t.type, true);
        detail::append_label(l, "subscription", s.name);
        detail::append_label(l, "group", s.group);
        for (const auto& [name, value] : s.labels) detail::append_label(l, name, value);
        if (!q.empty()) detail::append_label(l, "quantile", q);
        return l + '}';
    };
    using TypeCounter = detail::CounterFamily<EventTypeMetrics>;
    for (const TypeCounter c : {TypeCounter{"_published_total", "Events published (delivered at once).", &EventTypeMetrics::published},
                                TypeCounter{"_posted_total", "Events posted (queued).", &EventTypeMetrics::posted},
                                TypeCounter{"_rejected_total", "Posts refused: queue full or bus closed.", &EventTypeMetrics::rejected},
                                TypeCounter{"_unrouted_total", "Events that found no subscription to take them.", &EventTypeMetrics::unrouted}}) {
        family(c.suffix, "counter", c.help);
        for (const auto& t : bus.types) out += p + c.suffix + event_label(t) + ' ' + std::to_string(t.*c.field) + '\n';
    }
    family("_queue_depth", "gauge", "Posted events waiting to be delivered now.");
    for (const auto& t : bus.types) out += p + "_queue_depth" + event_label(t) + ' ' + std::to_string(t.queued) + '\n';
    family("_queue_wait_seconds", "summary", "Time from post() to the start of the event's delivery.");
    for (const auto& t : bus.types) {
        if (t.queue_wait_ns.count() == 0) continue;
        for (const auto& [q, pct] : {std::pair{"0.5", 50.0}, std::pair{"0.99", 99.0}}) {
            std::string l = "{";
            detail::append_label(l, "event", t.type, true);
            detail::append_label(l, "quantile", q);
            out += p + "_queue_wait_seconds" + l + "} " + detail::seconds(t.queue_wait_ns.percentile(pct)) + '\n';
        }
        out += p + "_queue_wait_seconds_sum" + event_label(t) + ' ' +
               detail::seconds(static_cast<double>(t.queue_wait_ns.sum())) + '\n';
        out += p + "_queue_wait_seconds_count" + event_label(t) + ' ' + std::to_string(t.queue_wait_ns.count()) + '\n';
    }
    using SubCounter = detail::CounterFamily<SubscriptionMetrics>;
    for (const SubCounter c : {SubCounter{"_delivered_total", "Handler calls, redeliveries included.", &SubscriptionMetrics::delivered},
                               SubCounter{"_acked_total", "Deliveries that ended acknowledged.", &SubscriptionMetrics::acked},
                               SubCounter{"_failed_total", "Deliveries that threw or returned an error.", &SubscriptionMetrics::failed},
                               SubCounter{"_nacked_total", "Deliveries negatively acknowledged.", &SubscriptionMetrics::nacked},
                               SubCounter{"_ack_timeouts_total", "Manual deliveries not acknowledged in time.", &SubscriptionMetrics::ack_timeouts},
                               SubCounter{"_undeliverable_total", "Events no member could take (blocked, circuit open).", &SubscriptionMetrics::undeliverable},
                               SubCounter{"_redelivered_total", "Deliveries after the first.", &SubscriptionMetrics::redelivered},
                               SubCounter{"_dead_lettered_total", "Events given up on and sent to the dead-letter handler.", &SubscriptionMetrics::dead_lettered}}) {
        family(c.suffix, "counter", c.help);
        for (const auto& t : bus.types) {
            for (const auto& s : t.subscriptions) out += p + c.suffix + sub_label(t, s) + ' ' + std::to_string(s.*c.field) + '\n';
        }
    }
    family("_subscribed", "gauge", "1 while the subscription is registered, 0 after.");
    for (const auto& t : bus.types) {
        for (const auto& s : t.subscriptions) out += p + "_subscribed" + sub_label(t, s) + (s.active ? " 1\n" : " 0\n");
    }
    family("_queue_capacity", "gauge", "Posted events the queue holds at most.");
    out += p + "_queue_capacity " + std::to_string(bus.queue_capacity) + '\n';
    family("_waiting", "gauge", "Redeliveries and manual acknowledgements waiting now.");
    out += p + "_waiting " + std::to_string(bus.waiting) + '\n';
    family("_blocked_producers", "gauge", "post() calls waiting for room now.");
    out += p + "_blocked_producers " + std::to_string(bus.blocked_producers) + '\n';
    return out;
}

}  // namespace cbm
