// cbm/detail/resilience_steps.hpp - the resilience step of the invocation
// pipeline: circuit breaker admission, retries with backoff, and a timeout
// per attempt, around the instrumented invocation (instrument.hpp).
//
// Memory ordering: see resilience_state.hpp for the circuit state.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <system_error>

#include "../context.hpp"
#include "../errc.hpp"
#include "callback_list.hpp"
#include "callback_stats.hpp"
#include "failure.hpp"
#include "group_state.hpp"
#include "instrument.hpp"
#include "resilience_state.hpp"
#include "typed_node.hpp"

namespace cbm::detail {

// How the circuit breaker lets one invocation through.
enum class Admission : std::uint8_t { closed, trial, refused };

// Breaker, before the invocation: a closed circuit admits; an open one
// refuses until its cool-down has passed, then the one trigger whose
// compare-exchange moves it from that open value to half-open runs the
// trial. A trigger that lost the race sees the new state and decides again
// (closed once a trial closed it, refused while one runs or it reopened).
inline Admission admit(Resilience& r, ResilienceClock& clock) noexcept {
    if (r.breaker.failures == 0) return Admission::closed;
    std::int64_t seen = r.circuit.load(std::memory_order_acquire);
    for (;;) {
        if (seen == kCircuitClosed) return Admission::closed;
        if (seen == kHalfOpen || clock.now().time_since_epoch().count() < seen) return Admission::refused;
        if (r.circuit.compare_exchange_weak(seen, kHalfOpen, std::memory_order_acq_rel, std::memory_order_acquire)) {
            return Admission::trial;
        }
    }
}

// Breaker, after the invocation (after its retries): `failed` or not.
// Returns the state the circuit entered, if this call moved it.
inline std::optional<CircuitState> record_outcome(Resilience& r, ResilienceClock& clock, Admission admission,
                                                  bool failed) noexcept {
    if (r.breaker.failures == 0) return std::nullopt;
    if (admission == Admission::trial) {
        // Only the trial moves the circuit off half-open.
        if (failed) {
            r.circuit.store(open_until_tick(clock.now(), r.breaker.cool_down), std::memory_order_release);
            return CircuitState::open;
        }
        r.consecutive_failures.store(0, std::memory_order_relaxed);
        r.circuit.store(kCircuitClosed, std::memory_order_release);
        return CircuitState::closed;
    }
    // Admitted while closed. A success only resets the count: the circuit
    // may have opened meanwhile, and then only a trial closes it.
    if (!failed) {
        r.consecutive_failures.store(0, std::memory_order_relaxed);
        return std::nullopt;
    }
    const std::uint32_t failures = r.consecutive_failures.fetch_add(1, std::memory_order_acq_rel) + 1;
    if (failures < r.breaker.failures) return std::nullopt;
    std::int64_t expected = kCircuitClosed;
    if (!r.circuit.compare_exchange_strong(expected, open_until_tick(clock.now(), r.breaker.cool_down),
                                           std::memory_order_acq_rel, std::memory_order_relaxed)) {
        return std::nullopt;  // opened already, by another failure or a trial
    }
    r.consecutive_failures.store(0, std::memory_order_relaxed);
    return CircuitState::open;
}

// Reports a transition to the group's circuit-change handler (no lock held;
// a handler that throws stops nothing).
inline void report_circuit_change(GroupState& group, KeyOf key, const NodeBase& node, CircuitState entered) noexcept {
    try {
        if (auto handler = group.circuit_change_handler(); handler && *handler) {
            (*handler)(CircuitChange{key.get(), node.name, entered});
        }
    } catch (...) {
        // As for the other handlers: reporting never stops a trigger.
    }
}

// One attempt of a callback with a timeout: under a child context with that
// deadline; an overrun of its own timeout (by the group's clock) is a
// deadline_exceeded failure. The trigger's context can end sooner: then the
// child inherits that earlier deadline, and its expiry is the trigger's
// context stopping the trigger (trigger_loop.hpp), not this callback's
// overrun.
template <class Signature, class... A>
std::exception_ptr attempt_with_timeout(const Node<Signature>& node, GroupState& group, std::uint32_t thread_index,
                                        bool sampled, A&... args) {
    const Resilience& r = *node.resilience;
    if (r.timeout.count() == 0) return invoke_instrumented(node, group, thread_index, sampled, args...);
    ResilienceClock& clock = clock_of(group);
    std::exception_ptr error;
    bool overran = false;
    try {
        const Context& outer = current_context();
        auto [child, cancel] = with_timeout(outer, r.timeout);
        // with_timeout gives the child a deadline of its own only when it
        // comes before the outer one; otherwise the child's is inherited.
        const bool own_deadline = child.deadline() != outer.deadline();
        const ContextScope scope(child);
        const auto start = clock.now();
        error = invoke_instrumented(node, group, thread_index, sampled, args...);
        // Its own deadline comes first, so a deadline_exceeded child was
        // expired by its own timer (the outer one ends later, or was canceled).
        overran = clock.now() - start > r.timeout || (own_deadline && child.err() == errc::deadline_exceeded);
        cancel();
        if (overran && !error) {
            error = std::make_exception_ptr(
                std::system_error(make_error_code(errc::deadline_exceeded), "cbm: callback overran its timeout"));
        }
    } catch (...) {
        // The child context or the error could not be made: that is the failure.
        if (!error) error = std::current_exception();
    }
    if (overran && node.stats != nullptr) CallbackStats::bump(node.stats->timed_out);
    return error;
}

// Timeout, retries and the circuit breaker around one invocation of `node`
// (of `list`). Returns the final error (null on success) and sets
// `attempts`; sets `skipped` (running nothing) while the circuit is open.
template <class Signature, class... A>
std::exception_ptr run_resilient(const Node<Signature>& node, GroupState& group, const CallbackList& list,
                                 std::uint32_t thread_index, bool sampled, std::uint32_t& attempts, bool& skipped,
                                 A&... args) {
    Resilience& r = *node.resilience;
    ResilienceClock& clock = clock_of(group);
    const Admission admission = admit(r, clock);
    if (admission == Admission::refused) {
        if (node.stats != nullptr) CallbackStats::bump(node.stats->skipped_circuit_open);
        skipped = true;
        return nullptr;
    }
    if (admission == Admission::trial) report_circuit_change(group, KeyOf{&list, nullptr}, node, CircuitState::half_open);
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
    if (const std::optional<CircuitState> entered = record_outcome(r, clock, admission, static_cast<bool>(error))) {
        report_circuit_change(group, KeyOf{&list, nullptr}, node, *entered);
    }
    return error;
}

}  // namespace cbm::detail
