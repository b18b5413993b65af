// cbm/resilience.hpp - per-callback timeout, retry and circuit breaker, the
// dead-letter handler, and the clock they use (injectable for tests).
//
//   group.add(call_partner, {.name = "partner",
//                            .timeout = 50ms,
//                            .retry = {.attempts = 3, .initial_backoff = 1ms},
//                            .circuit_breaker = {.failures = 5, .cool_down = 10s}});
//   group.set_dead_letter_handler([](const cbm::DeadLetter& d) { log(d); });
//
// * timeout: each attempt runs under a child of the trigger's context with
//   that deadline (cooperative: the callback sees it as
//   cbm::current_context()). An attempt that takes longer (by the group's
//   clock) fails with std::system_error(cbm::errc::deadline_exceeded), also
//   if it returned normally.
// * retry: up to `attempts` attempts in all, waiting initial_backoff *
//   multiplier^(n-1) (at most max_backoff, +/- jitter) between them, on the
//   triggering thread; it stops early when the trigger's context is canceled.
// * circuit breaker: after `failures` consecutive failed invocations (each
//   after its retries) the callback is skipped for `cool_down`; then one
//   trial invocation closes the circuit (success) or opens it again.
// * dead letter: every invocation that fails for good (after its retries)
//   reaches the group's or registry's dead-letter handler, with the key,
//   the callback's name, the error and the number of attempts.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <string_view>
#include <thread>

#include "context.hpp"

namespace cbm {

struct RetryOptions {
    std::uint32_t attempts = 1;  // in all, the first included (1: no retry)
    std::chrono::nanoseconds initial_backoff = std::chrono::milliseconds(1);
    double multiplier = 2.0;
    std::chrono::nanoseconds max_backoff = std::chrono::seconds(1);
    double jitter = 0.2;  // each wait is scaled by a random factor in [1 - jitter, 1 + jitter]
};

struct CircuitBreakerOptions {
    std::uint32_t failures = 0;  // consecutive failures that open the circuit (0: no breaker)
    std::chrono::nanoseconds cool_down = std::chrono::seconds(1);
};

// Time for timeouts, backoff and cool-downs. The default is the steady clock
// and real waiting; tests inject a clock that advances by hand.
class ResilienceClock {
public:
    virtual ~ResilienceClock() = default;
    virtual std::chrono::steady_clock::time_point now() noexcept = 0;
    // Waits `d`, or less if `ctx` is canceled first. Returns false if canceled.
    virtual bool sleep_for(std::chrono::nanoseconds d, const Context& ctx) = 0;
};

// A callback invocation that failed for good.
struct DeadLetter {
    std::string_view key;   // the registry key as text ("" for a group)
    std::string_view name;  // CallbackOptions::name
    std::exception_ptr error;
    std::uint32_t attempts;
};
using DeadLetterHandler = std::function<void(const DeadLetter&)>;

namespace detail {

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
    d = std::min(d, static_cast<double>(r.max_backoff.count()));
    thread_local std::uint64_t state = 0x9E3779B97F4A7C15ull ^ reinterpret_cast<std::uintptr_t>(&state);
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    const double unit = static_cast<double>(state >> 11) / static_cast<double>(std::uint64_t{1} << 53);  // [0, 1)
    d *= 1.0 + r.jitter * (2.0 * unit - 1.0);
    return std::chrono::nanoseconds(static_cast<std::int64_t>(d < 0 ? 0 : d));
}

}  // namespace detail
}  // namespace cbm
