// cbm/detail/group_state.hpp - what one CallbackGroup, or one
// CallbackRegistry with all its keys, shares among its callbacks: the writer
// mutex, the retire list, the settings and the handlers.
//
// Counted: the group holds one reference and every node one, so a
// Registration that outlives its group can still lock the mutex and learn
// that the group is gone (`alive`).
// Memory ordering: the reference count is released with acq_rel (the last
// holder sees every write); `observer` is published with release and read
// with acquire by triggers; everything else is immutable or under a mutex.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "../error_policy.hpp"
#include "../executor.hpp"
#include "../observer.hpp"
#include "epoch.hpp"
#include "metric_series.hpp"
#include "tick_clock.hpp"

namespace cbm {
class ResilienceClock;
}  // namespace cbm

namespace cbm::detail {

struct GroupState {
    GroupState(ErrorPolicy p, bool instrumented, std::uint32_t sample_every, ResilienceClock* c,
               std::uint32_t metrics_retention = 1024, AnyExecutor default_executor = {}) noexcept
        : policy(p),
          metrics(instrumented),
          latency_sample_every(sample_every == 0 ? 1 : sample_every),
          clock(c),
          series(metrics_retention),
          executor(std::move(default_executor)) {
        if (instrumented) TickClock::calibrate();  // once per process; never on a trigger
    }
    GroupState(const GroupState&) = delete;
    GroupState& operator=(const GroupState&) = delete;

    std::mutex mutex;                         // the writer lock: add, unregister, clear, erase
    std::atomic<std::uint32_t> refs{1};
    bool alive = true;                        // under mutex; false once the owner started destruction
    RetireList retired{this, &fast_writes, &fast_writers};  // under mutex; `this` is the domain triggers publish
    const ErrorPolicy policy;
    const bool metrics;                       // nodes get CallbackStats
    const std::uint32_t latency_sample_every; // time one invocation in this many, per thread
    ResilienceClock* const clock;             // timeouts, backoff, cool-downs; null: the steady clock
    SeriesTable series;                       // the metric series (metric_series.hpp); empty without metrics
    const AnyExecutor executor;               // trigger_async's default (GroupOptions::executor); empty: inline

    std::atomic<CallbackObserver*> observer{nullptr};  // read by triggers

    // Write-heavy mode (unregister.hpp, "fast blocking waits"): while
    // `fenced_entry` is set, every trigger of the group runs a full fence on
    // entry; once `fast_writes` is set too, a blocking unregister may settle
    // with a fence and a short wait instead of a heavy barrier.
    // The flags read by triggers and writers have a line of their own; the
    // counters writers update have another, so no write to them costs a
    // trigger a cache miss.
    alignas(64) std::atomic<bool> fenced_entry{false};  // read by every trigger
    std::atomic<bool> fast_writes{false};               // changed under mutex
    alignas(64) std::atomic<std::uint32_t> fast_writers{0};  // writers now settling without a heavy barrier
    std::atomic<std::uint32_t> contended_waits{0};      // blocking waits in a row that found a trigger inside
    std::atomic<std::uint32_t> quiet_waits{0};          // fast waits in a row that found none
    std::atomic<std::uint32_t> settle_timeouts{0};      // fast waits in a row whose settle timed out
    std::atomic<std::uint32_t> contended_waits_to_enter{8};  // doubles each time settles kept timing out
    char pad_after_counters[64 - 5 * sizeof(std::atomic<std::uint32_t>)] = {};

    void add_ref() noexcept { refs.fetch_add(1, std::memory_order_relaxed); }
    void release_ref() noexcept {
        if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }

    // Observers stay alive until the group state goes: a trigger may still
    // be calling the previous one.
    void set_observer(std::shared_ptr<CallbackObserver> o) {
        std::lock_guard<std::mutex> lock(handler_mutex_);
        if (o) observers_.push_back(o);
        observer.store(o.get(), std::memory_order_release);
    }
    std::shared_ptr<const DeadLetterHandler> dead_letter_handler() { return read_locked(dead_letter_); }
    void set_dead_letter_handler(DeadLetterHandler h) { replace_locked(dead_letter_, std::move(h)); }
    std::shared_ptr<const ErrorHandler> error_handler() { return read_locked(error_handler_); }
    void set_error_handler(ErrorHandler h) { replace_locked(error_handler_, std::move(h)); }
    std::shared_ptr<const CircuitChangeHandler> circuit_change_handler() { return read_locked(circuit_change_); }
    void set_circuit_change_handler(CircuitChangeHandler h) { replace_locked(circuit_change_, std::move(h)); }

private:
    ~GroupState() = default;

    template <class F>
    std::shared_ptr<const F> read_locked(const std::shared_ptr<const F>& slot) {
        std::lock_guard<std::mutex> lock(handler_mutex_);
        return slot;
    }
    template <class F>
    void replace_locked(std::shared_ptr<const F>& slot, F h) {
        auto shared = h ? std::make_shared<const F>(std::move(h)) : nullptr;
        {
            std::lock_guard<std::mutex> lock(handler_mutex_);
            slot.swap(shared);
        }
        // `shared` now holds the old handler: destroyed here, unlocked, since
        // its destructor is user code.
    }

    std::mutex handler_mutex_;
    std::shared_ptr<const ErrorHandler> error_handler_;        // under handler_mutex_
    std::shared_ptr<const DeadLetterHandler> dead_letter_;     // under handler_mutex_
    std::shared_ptr<const CircuitChangeHandler> circuit_change_;  // under handler_mutex_
    std::vector<std::shared_ptr<CallbackObserver>> observers_; // under handler_mutex_: every one ever set
};

}  // namespace cbm::detail
