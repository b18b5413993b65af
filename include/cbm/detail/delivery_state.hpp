// cbm/detail/delivery_state.hpp - the shared state behind cbm::Delivery:
// how one delivery of an event to one subscription is settled (acked,
// nacked, timed out, failed), exactly once, by whichever thread gets there
// first.
//
// Memory ordering. Two parties race: the subscriber (ack()/nack() on any
// thread, during or after its call) and the bus (after the call returns:
// it either saw the delivery settled, or it parks it: stores what a late
// settlement needs, then sets `handed_over_`). The subscriber CASes
// `status_` then loads `handed_over_`; the bus stores `handed_over_` then
// loads `status_`; all four are seq_cst, so at least one of them sees the
// other's write (store-load ordering, as in Dekker's algorithm). Either may
// then want to finish the settlement; `claimed_` (exchange) lets exactly
// one of them do it. The bus's timer settles a parked delivery the same
// way (timed_out), so an ack that comes after the timeout returns false.
//
// A settlement takes two steps: a CAS from pending to `settling` decides
// who settles (the losers return false and write nothing), then the winner
// writes the nack delay and stores the final status. A bus that loads
// `settling` in hand_over() does not finish the settlement: the settler's
// final store comes after that load in the single total order of seq_cst
// operations, so its load of `handed_over_` sees true and it finishes.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>

#include "intrusive_ref.hpp"

namespace cbm::detail {

enum class DeliveryStatus : std::uint8_t {
    pending,    // not settled yet
    acked,      // the subscriber (or, automatically, its return) acknowledged it
    nacked,     // the subscriber asked for a redelivery (after nack_delay())
    timed_out,  // a manual-ack delivery was not settled within ack_timeout
    failed,     // the handler threw (or returned an error)
    settling,   // being settled by another thread (for an instant): see final_status()
};

class DeliveryStateBase : public SelfCounted<DeliveryStateBase> {
public:
    DeliveryStateBase(const std::string& subscription, std::uint32_t delivery, bool manual) noexcept
        : subscription_(&subscription), delivery_(delivery), manual_(manual) {}

    // Effect: settles the delivery as `to`, if nothing settled it before.
    // Returns: true if this call settled it.
    bool settle(DeliveryStatus to, std::chrono::nanoseconds delay = {}) noexcept {
        DeliveryStatus expected = DeliveryStatus::pending;
        if (!status_.compare_exchange_strong(expected, DeliveryStatus::settling, std::memory_order_acquire)) {
            return false;
        }
        // Published by the store of the final status below.
        if (to == DeliveryStatus::nacked) nack_delay_.store(delay.count(), std::memory_order_relaxed);
        status_.store(to, std::memory_order_seq_cst);
        if (handed_over_.load(std::memory_order_seq_cst) && claim()) finish_parked(to);
        return true;
    }

    // By the bus, once its call returned and it stored what finish_parked
    // needs. Returns the status it then saw: pending (a later settle() will
    // finish it), or the one a settle() made meanwhile, which the caller
    // must finish itself when this returns true in `mine`.
    DeliveryStatus hand_over(bool& mine) noexcept {
        handed_over_.store(true, std::memory_order_seq_cst);
        const DeliveryStatus seen = status_.load(std::memory_order_seq_cst);
        mine = seen != DeliveryStatus::pending && seen != DeliveryStatus::settling && claim();
        return seen;
    }

    // The status now: pending, settling (another thread is storing its
    // settlement), or final.
    DeliveryStatus status() const noexcept { return status_.load(std::memory_order_acquire); }

    // The status once no settlement is in progress: pending or final. Spins
    // while another thread settles (a few instructions of its own).
    DeliveryStatus final_status() const noexcept {
        for (;;) {
            const DeliveryStatus s = status_.load(std::memory_order_acquire);
            if (s != DeliveryStatus::settling) return s;
            std::this_thread::yield();
        }
    }
    std::chrono::nanoseconds nack_delay() const noexcept {
        return std::chrono::nanoseconds(nack_delay_.load(std::memory_order_relaxed));
    }
    const std::string& subscription() const noexcept { return *subscription_; }
    std::uint32_t delivery() const noexcept { return delivery_; }
    bool manual() const noexcept { return manual_; }

protected:
    friend class SelfCounted<DeliveryStateBase>;
    virtual ~DeliveryStateBase() = default;

    // A settlement that came after the bus parked the delivery (a late
    // ack()/nack(), or the ack timeout): run by the thread that made it.
    virtual void finish_parked(DeliveryStatus) noexcept {}

private:
    bool claim() noexcept { return !claimed_.exchange(true, std::memory_order_acq_rel); }

    std::atomic<DeliveryStatus> status_{DeliveryStatus::pending};
    std::atomic<bool> handed_over_{false};
    std::atomic<bool> claimed_{false};
    std::atomic<std::int64_t> nack_delay_{0};
    const std::string* subscription_;  // the subscription's name; it outlives every delivery to it
    std::uint32_t delivery_;
    bool manual_;
};

using DeliveryStateRef = IntrusiveRef<DeliveryStateBase, MemberRefOps>;

}  // namespace cbm::detail
