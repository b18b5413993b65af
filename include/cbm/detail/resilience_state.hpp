// cbm/detail/resilience_state.hpp - the resilience settings and circuit
// state of one callback, the backoff schedule, and the default clock.
//
// Memory ordering: the circuit state is three atomics. `open_until` is
// stored with release and read with acquire; `trial` is claimed with an
// acq_rel exchange, so at most one invocation runs the half-open trial;
// `consecutive_failures` is a plain counter (acq_rel increments).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

#include "../context.hpp"
#include "../resilience.hpp"
#include "group_state.hpp"

namespace cbm::detail {

class SteadyResilienceClock final : public ResilienceClock {
public:
    std::chrono::steady_clock::time_point now() noexcept override { return std::chrono::steady_clock::now(); }
    bool sleep_for(std::chrono::nanoseconds d, const Context& ctx) override {
        if (!ctx.done().stop_possible()) {
            std::this_thread::sleep_for(d);
            return true;
        }
        return !ctx.wait_for(d);
    }
};

inline ResilienceClock& steady_resilience_clock() noexcept {
    static SteadyResilienceClock* const clock = new SteadyResilienceClock();
    return *clock;
}

// The resilience settings and circuit state of one callback.
struct Resilience {
    std::chrono::nanoseconds timeout{0};
    RetryOptions retry;
    CircuitBreakerOptions breaker;
    std::atomic<std::uint32_t> consecutive_failures{0};
    std::atomic<std::int64_t> open_until{0};  // clock ticks since its epoch; 0: closed
    std::atomic<bool> trial{false};           // a half-open trial invocation is running

    bool circuit_open() const noexcept { return open_until.load(std::memory_order_acquire) != 0; }
};

inline std::int64_t ticks(std::chrono::steady_clock::time_point t) noexcept {
    const std::int64_t n = t.time_since_epoch().count();
    return n == 0 ? 1 : n;  // 0 means "closed"
}

// The wait before attempt `attempt + 1`.
inline std::chrono::nanoseconds backoff_after(const RetryOptions& r, std::uint32_t attempt) noexcept {
    double d = static_cast<double>(r.initial_backoff.count());
    for (std::uint32_t i = 1; i < attempt && d < static_cast<double>(r.max_backoff.count()); ++i) d *= r.multiplier;
    if (d > static_cast<double>(r.max_backoff.count())) d = static_cast<double>(r.max_backoff.count());
    thread_local std::uint64_t state = 0x9E3779B97F4A7C15ull ^ reinterpret_cast<std::uintptr_t>(&state);
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    const double unit = static_cast<double>(state >> 11) / static_cast<double>(std::uint64_t{1} << 53);  // [0, 1)
    d *= 1.0 + r.jitter * (2.0 * unit - 1.0);
    return std::chrono::nanoseconds(static_cast<std::int64_t>(d < 0 ? 0 : d));
}

// The clock a group's resilience uses (GroupOptions::clock, else steady).
inline ResilienceClock& clock_of(const GroupState& group) noexcept {
    return group.clock != nullptr ? *group.clock : steady_resilience_clock();
}

}  // namespace cbm::detail
