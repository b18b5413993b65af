// cbm/detail/resilience_steps.hpp - the resilience step of the invocation
// pipeline: circuit breaker admission, retries with backoff, and a timeout
// per attempt, around the instrumented invocation (instrument.hpp).
//
// Memory ordering: see resilience_state.hpp for the circuit state.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <system_error>

#include "../context.hpp"
#include "../errc.hpp"
#include "callback_stats.hpp"
#include "group_state.hpp"
#include "instrument.hpp"
#include "resilience_state.hpp"
#include "typed_node.hpp"

namespace cbm::detail {

// How the circuit breaker lets one invocation through.
enum class Admission : std::uint8_t { closed, trial, refused };

// Breaker, before the invocation: closed circuits admit; an open one refuses
// until its cool-down has passed, then admits exactly one trial.
inline Admission admit(Resilience& r, ResilienceClock& clock) noexcept {
    if (r.breaker.failures == 0) return Admission::closed;
    const std::int64_t until = r.open_until.load(std::memory_order_acquire);
    if (until == 0) return Admission::closed;
    if (ticks(clock.now()) < until || r.trial.exchange(true, std::memory_order_acq_rel)) return Admission::refused;
    return Admission::trial;  // half-open: this invocation decides
}

// Breaker, after the invocation (after its retries): `failed` or not.
inline void record_outcome(Resilience& r, ResilienceClock& clock, Admission admission, bool failed) noexcept {
    if (r.breaker.failures == 0) return;
    const bool trial = admission == Admission::trial;
    if (failed) {
        const std::uint32_t failures = r.consecutive_failures.fetch_add(1, std::memory_order_acq_rel) + 1;
        if (trial || failures >= r.breaker.failures) {
            r.open_until.store(ticks(clock.now() + r.breaker.cool_down), std::memory_order_release);
        }
    } else {
        r.consecutive_failures.store(0, std::memory_order_relaxed);
        if (trial || r.open_until.load(std::memory_order_relaxed) != 0) r.open_until.store(0, std::memory_order_release);
    }
    if (trial) r.trial.store(false, std::memory_order_release);
}

// One attempt of a callback with a timeout: under a child context with that
// deadline; an overrun (by the group's clock) is a deadline_exceeded failure.
template <class Signature, class... A>
std::exception_ptr attempt_with_timeout(const Node<Signature>& node, GroupState& group, std::uint32_t thread_index,
                                        bool sampled, A&... args) {
    const Resilience& r = *node.resilience;
    if (r.timeout.count() == 0) return invoke_instrumented(node, group, thread_index, sampled, args...);
    ResilienceClock& clock = clock_of(group);
    std::exception_ptr error;
    bool overran = false;
    try {
        auto [child, cancel] = with_timeout(current_context(), r.timeout);
        const ContextScope scope(child);
        const auto start = clock.now();
        error = invoke_instrumented(node, group, thread_index, sampled, args...);
        overran = clock.now() - start > r.timeout || child.err() == errc::deadline_exceeded;
        cancel();
    } catch (...) {
        return std::current_exception();  // the child context could not be made
    }
    if (overran) {
        if (node.stats != nullptr) CallbackStats::bump(node.stats->timed_out);
        if (!error) {
            error = std::make_exception_ptr(
                std::system_error(make_error_code(errc::deadline_exceeded), "cbm: callback overran its timeout"));
        }
    }
    return error;
}

// Timeout, retries and the circuit breaker around one invocation.
// Returns the final error (null on success) and sets `attempts`; sets
// `skipped` (running nothing) while the circuit is open.
template <class Signature, class... A>
std::exception_ptr run_resilient(const Node<Signature>& node, GroupState& group, std::uint32_t thread_index,
                                 bool sampled, std::uint32_t& attempts, bool& skipped, A&... args) {
    Resilience& r = *node.resilience;
    ResilienceClock& clock = clock_of(group);
    const Admission admission = admit(r, clock);
    if (admission == Admission::refused) {
        if (node.stats != nullptr) CallbackStats::bump(node.stats->skipped_circuit_open);
        skipped = true;
        return nullptr;
    }
    const Context& trigger_context = current_context();
    // No attempt starts once the callback is unregistered, by any path. A
    // `once` callback is unregistered by its own claim: its attempts all run
    // inside the one invocation that claimed it.
    const bool once = node.is_once();
    auto may_retry = [&] { return !trigger_context.canceled() && (once || !node.unregistered()); };
    std::exception_ptr error;
    for (attempts = 1;; ++attempts) {
        error = attempt_with_timeout(node, group, thread_index, sampled, args...);
        sampled = false;
        if (!error || attempts >= r.retry.attempts || !may_retry()) break;
        bool waited = false;
        try {
            waited = clock.sleep_for(backoff_after(r.retry, attempts), trigger_context);
        } catch (...) {
            waited = false;
        }
        if (!waited || !may_retry()) break;
        if (node.stats != nullptr) CallbackStats::bump(node.stats->retries);
    }
    record_outcome(r, clock, admission, static_cast<bool>(error));
    return error;
}

}  // namespace cbm::detail
