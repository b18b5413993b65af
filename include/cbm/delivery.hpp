// cbm/delivery.hpp - cbm::Delivery<E>: one delivery of an event to one
// subscription of an EventBus (event_bus.hpp), for handlers that settle it
// themselves or want to know how often it came; and cbm::AckMode.
//
//   bus.subscribe<OrderPaid>(
//       [](cbm::Delivery<OrderPaid>& d) {
//           if (ship(d.event())) d.ack(); else d.nack(100ms);
//       },
//       {.ack = cbm::AckMode::manual, .ack_timeout = 5s});
//
// A Delivery is a counted handle: copy it to settle the delivery later, on
// any thread (until its ack_timeout). Delivery is at least once: a handler
// may see an event again (after a failure, a nack or an ack timeout), and
// delivery_count() says how often it came, for idempotency.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "detail/delivery_state.hpp"
#include "detail/intrusive_ref.hpp"

namespace cbm {

// How a delivery is acknowledged.
enum class AckMode : std::uint8_t {
    // A handler that returns acknowledges it; one that throws (or returns a
    // non-zero std::error_code) fails it. A handler taking a Delivery may
    // still nack() it.
    automatic,
    // The handler must call ack() or nack() on the Delivery, during its call
    // or later on a copy; a delivery settled by neither within ack_timeout
    // is redelivered as if it had failed (errc::ack_timeout).
    manual,
};

namespace detail {
template <class E>
class DeliveryState : public DeliveryStateBase {
public:
    DeliveryState(const E& event, const std::string& subscription, std::uint32_t delivery, bool manual) noexcept
        : DeliveryStateBase(subscription, delivery, manual), event_(&event) {}
    const E& event() const noexcept { return *event_; }

protected:
    // The bus points it at its own copy when a published event is parked.
    void repoint(const E& event) noexcept { event_ = &event; }

private:
    const E* event_;
};
}  // namespace detail

// Thread safety: copies may be used on any threads at once; ack() and nack()
// settle the delivery exactly once whoever calls them first (the others,
// and calls after the ack timeout, return false).
template <class E>
class Delivery {
public:
    // The event. For a queued event (EventBus::post) it stays valid as long
    // as this Delivery (or a copy) lives; for a published one
    // (EventBus::publish, which passes the caller's object) only during the
    // handler's call.
    const E& event() const noexcept { return state()->event(); }

    // 1 for the first delivery of this event to this subscription, 2 for the
    // first redelivery, ... (across the members of a consumer group).
    std::uint32_t delivery_count() const noexcept { return state()->delivery(); }
    bool redelivered() const noexcept { return delivery_count() > 1; }

    // The subscription's name (SubscribeOptions::name).
    const std::string& subscription() const noexcept { return state()->subscription(); }

    // Effect: acknowledges the delivery: it is done.
    // Returns: true if this call settled it.
    bool ack() noexcept { return state_->settle(detail::DeliveryStatus::acked); }

    // Effect: asks for a redelivery after `delay` (counted against
    // max_deliveries; past it the event is dead-lettered with errc::nacked).
    // Returns: true if this call settled it.
    bool nack(std::chrono::nanoseconds delay = std::chrono::nanoseconds(0)) noexcept {
        return state_->settle(detail::DeliveryStatus::nacked, delay);
    }

    // True once acked, nacked, failed or timed out.
    bool settled() const noexcept { return state_->status() != detail::DeliveryStatus::pending; }
    bool acked() const noexcept { return state_->final_status() == detail::DeliveryStatus::acked; }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

    explicit Delivery(detail::DeliveryState<E>* adopted) noexcept : state_(Ref::adopt(adopted)) {}

private:
    using Ref = detail::DeliveryStateRef;
    const detail::DeliveryState<E>* state() const noexcept {
        return static_cast<const detail::DeliveryState<E>*>(state_.get());
    }
    Ref state_;
};

}  // namespace cbm
