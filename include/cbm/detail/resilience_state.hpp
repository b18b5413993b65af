// cbm/detail/resilience_state.hpp - the resilience settings and circuit
// state of one callback, the backoff schedule, and the default clock.
//
// Memory ordering: the circuit state is one atomic word, `circuit`: closed
// (0), open until a clock tick (positive or negative, never the two
// sentinels), or half-open (kHalfOpen). Every transition is one atomic step
// on that word, so the breaker is linearizable: closed -> open and
// open -> half-open are compare-exchanges (acq_rel) against the value the
// thread saw, and only the thread that moved it to half-open (the trial)
// moves it on, with a release store. `consecutive_failures` is a counter
// beside it (acq_rel increments); it decides when to open, not the state.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <thread>
#include <type_traits>

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

inline constexpr std::int64_t kCircuitClosed = 0;
inline constexpr std::int64_t kHalfOpen = std::numeric_limits<std::int64_t>::min();

// The resilience settings and circuit state of one callback.
struct Resilience {
    std::chrono::nanoseconds timeout{0};
    RetryOptions retry;
    CircuitBreakerOptions breaker;
    std::atomic<std::uint32_t> consecutive_failures{0};
    std::atomic<std::int64_t> circuit{kCircuitClosed};  // see the top

    CircuitState circuit_state() const noexcept {
        const std::int64_t c = circuit.load(std::memory_order_acquire);
        if (c == kCircuitClosed) return CircuitState::closed;
        return c == kHalfOpen ? CircuitState::half_open : CircuitState::open;
    }
    bool circuit_open() const noexcept { return circuit_state() != CircuitState::closed; }
};

static_assert(std::is_same_v<std::chrono::steady_clock::duration, std::chrono::nanoseconds>,
              "cbm: the circuit breaker counts steady_clock ticks as nanoseconds");

// `t + d` as an open-circuit tick: saturated at the clock's ends instead of
// overflowing, and never one of the two sentinels.
inline std::int64_t open_until_tick(std::chrono::steady_clock::time_point t, std::chrono::nanoseconds d) noexcept {
    const std::int64_t now = t.time_since_epoch().count();
    const std::int64_t add = d.count();
    std::int64_t sum = 0;
    if (__builtin_add_overflow(now, add, &sum)) sum = add > 0 ? std::numeric_limits<std::int64_t>::max() : kHalfOpen + 1;
    if (sum == kCircuitClosed) return 1;
    return sum == kHalfOpen ? kHalfOpen + 1 : sum;
}

// `d` nanoseconds (a double) as a duration, saturated at both ends (a NaN
// is zero): the cast of a double too large for int64 would be undefined.
inline std::chrono::nanoseconds saturating_nanoseconds(double d) noexcept {
    constexpr double kLimit = 9.2e18;  // below 2^63, so the cast is defined
    if (!(d > 0)) return std::chrono::nanoseconds(0);
    if (d >= kLimit) return std::chrono::nanoseconds::max();
    return std::chrono::nanoseconds(static_cast<std::int64_t>(d));
}

// The wait before attempt `attempt + 1`: initial * multiplier^(attempt-1),
// at most max_backoff, scaled by the jitter; saturated, never overflowing.
inline std::chrono::nanoseconds backoff_after(const RetryOptions& r, std::uint32_t attempt) noexcept {
    const double most = static_cast<double>(r.max_backoff.count());
    double d = static_cast<double>(r.initial_backoff.count());
    for (std::uint32_t i = 1; i < attempt && d < most; ++i) d *= r.multiplier;
    if (d > most) d = most;
    thread_local std::uint64_t state = 0x9E3779B97F4A7C15ull ^ reinterpret_cast<std::uintptr_t>(&state);
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    const double unit = static_cast<double>(state >> 11) / static_cast<double>(std::uint64_t{1} << 53);  // [0, 1)
    d *= 1.0 + r.jitter * (2.0 * unit - 1.0);
    return saturating_nanoseconds(d);
}

// The clock a group's resilience uses (GroupOptions::clock, else steady).
inline ResilienceClock& clock_of(const GroupState& group) noexcept {
    return group.clock != nullptr ? *group.clock : steady_resilience_clock();
}

}  // namespace cbm::detail
