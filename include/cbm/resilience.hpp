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
//   triggering thread; it stops early when the trigger's context is canceled
//   or the callback is unregistered (a `once` callback's attempts all run in
//   the one invocation that claimed it).
// * circuit breaker: after `failures` consecutive failed invocations (each
//   after its retries) the circuit opens and the callback is skipped for
//   `cool_down`; then exactly one trial invocation (half-open) closes the
//   circuit (success) or opens it again. The transitions are linearizable
//   (one atomic word): a trigger that saw the circuit open can no longer
//   claim a trial once another trial has closed it. Each transition is
//   reported to the circuit-change handler (CircuitChange, in
//   error_policy.hpp with the other reports).
// * time arithmetic saturates: a cool-down, backoff or timeout too large for
//   the clock means "as long as the clock can count", never an overflow.
// * dead letter: every invocation that fails for good (after its retries)
//   reaches the group's or registry's dead-letter handler, with the key,
//   the callback's name, the error and the number of attempts (DeadLetter and
//   DeadLetterHandler are declared in error_policy.hpp, with the other
//   failure reports).
#pragma once

#include <chrono>
#include <cstdint>

#include "context.hpp"
#include "error_policy.hpp"

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

}  // namespace cbm
