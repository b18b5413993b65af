// cbm/subscribe_options.hpp - how an EventBus is built (EventBusOptions) and
// how one subscription is made (SubscribeOptions<E>): every option a
// CallbackGroup callback takes, then those of queued delivery (max
// deliveries, redelivery backoff, ack mode and timeout) and of consumer
// groups (group, weight).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "callback.hpp"
#include "context.hpp"
#include "executor.hpp"
#include "delivery.hpp"
#include "observer.hpp"
#include "resilience.hpp"
#include "thread_pool.hpp"  // Overflow

namespace cbm {

// Fields in this order for designated initializers:
// cbm::EventBus bus({.executor = pool.executor(), .queue_capacity = 100'000});
struct EventBusOptions {
    // Where posted events are delivered: one task per event, which delivers
    // it to every subscription in turn. Empty: by process() or run(ctx) on
    // whichever thread calls them.
    AnyExecutor executor = {};
    // Posted events waiting to be delivered, at most (>= 1). Redeliveries do
    // not count against it: they are never refused.
    std::size_t queue_capacity = 100'000;
    // What post() does when the queue is full: wait for room (block), throw
    // std::system_error(errc::queue_full) (reject), or deliver the event on
    // the posting thread now (caller_runs).
    Overflow overflow = Overflow::block;
    // Count per event type and subscription (metrics(), to_prometheus),
    // including each subscription's callback metrics, and time queue waits.
    // Off: publish() counts nothing; queued paths still count what they
    // refuse, drop or dead-letter.
    bool metrics = false;
    // The clock of redelivery backoff and ack timeouts, and of each
    // subscription's timeout, retry and breaker (resilience.hpp); null: the
    // steady clock. Must outlive the bus. Waiting redeliveries are found by
    // process() and run() by this clock; with an executor, a timer thread
    // looks for them by the steady clock.
    ResilienceClock* clock = nullptr;
};

// The wait before a redelivery: initial * multiplier^(n-1) before the
// (n+1)-th delivery, at most `max`, scaled by a random factor in
// [1 - jitter, 1 + jitter]. A nack(delay) waits `delay` instead.
struct RedeliveryBackoff {
    std::chrono::nanoseconds initial = std::chrono::milliseconds(100);
    double multiplier = 2.0;
    std::chrono::nanoseconds max = std::chrono::seconds(30);
    double jitter = 0.2;
};

// Fields in this order for designated initializers:
// {.priority = 5, .name = "billing", .max_deliveries = 5, .group = "billing", .weight = 3}.
// subscribe() throws std::invalid_argument for settings that make no sense
// (see each field), and nothing is subscribed then.
template <class E>
struct SubscribeOptions {
    // As CallbackOptions (callback_options.hpp): higher priority runs first
    // (a consumer group runs at its highest member's priority); `once`: one
    // delivery at most, then the subscription ends; the name is reported in
    // failures, dead letters and metrics; the filter sees the event (an
    // event it rejects is not delivered and is not redelivered); the
    // context ends the subscription when canceled.
    int priority = 0;
    bool once = false;
    std::string name = {};
    Callback<bool(const E&)> filter = {};
    Context context = {};
    Labels labels = {};
    // Per delivery attempt, as CallbackOptions: a deadline, in-call retries,
    // a circuit breaker (an event that finds the circuit open is redelivered
    // later, or goes to another member of the group), slow calls counted.
    std::chrono::nanoseconds timeout{0};
    RetryOptions retry = {};
    CircuitBreakerOptions circuit_breaker = {};
    std::chrono::nanoseconds slow_threshold{0};
    // Where queued deliveries to this subscription run (one task each),
    // instead of the bus's executor or the thread that runs process().
    // publish() always runs it on the calling thread.
    AnyExecutor executor = {};

    // Deliveries of one event to this subscription (or its group), the first
    // included (>= 1). A delivery that fails (throws, returns an error,
    // nacks, times out unacked, or finds every member blocked or its circuit
    // open) is redelivered after the backoff while deliveries remain, then
    // dead-lettered. 1: dead-lettered at the first failure.
    std::uint32_t max_deliveries = 1;
    RedeliveryBackoff redelivery_backoff = {};
    // automatic: return acks, a throw fails. manual: the handler, which
    // must take a cbm::Delivery<E>&, calls ack() or nack(); ack_timeout
    // (> 0) bounds how long a delivery may stay unsettled.
    AckMode ack = AckMode::automatic;
    std::chrono::nanoseconds ack_timeout = std::chrono::seconds(30);

    // A consumer group (non-empty): the subscriptions of one event type with
    // the same group share its events, each event going to one member,
    // chosen by weighted round robin on `weight` (>= 1), and to another
    // member when that one fails, has its circuit open, is blocked, filters
    // it out or is gone. Members should agree on priority, max_deliveries,
    // backoff and ack settings: a redelivery follows the member that failed.
    std::string group = {};
    std::uint32_t weight = 1;
};

}  // namespace cbm
