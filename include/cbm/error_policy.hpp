// cbm/error_policy.hpp - what trigger() does when a callback throws, and what
// it reports: Failure per exception, TriggerResult per trigger, DeadLetter per
// invocation that failed for good (after its retries; see resilience.hpp),
// CircuitChange per circuit breaker transition.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace cbm {

// How trigger() treats an exception thrown by a callback or its filter.
enum class ErrorPolicy {
    collect,  // record it, report it to the error handler, run the remaining callbacks
    stop,     // record and report it, then stop: callbacks not reached count as skipped
    rethrow,  // run all callbacks, then rethrow the first exception from trigger()
};

// The message of `error`: what() of a std::exception (or of one nested in
// it, innermost last, joined by ": "), "unknown exception" for anything
// else thrown (`throw 42`), and "" for no exception. Never throws on the
// error's account: a what() that throws gives "unknown exception".
inline std::string describe(const std::exception_ptr& error) {
    if (!error) return std::string();
    std::string text;
    std::exception_ptr current = error;
    while (current) {
        std::exception_ptr next;
        try {
            std::rethrow_exception(current);
        } catch (const std::exception& e) {
            if (!text.empty()) text += ": ";
            try {
                text += e.what();
                std::rethrow_if_nested(e);
            } catch (...) {
                next = std::current_exception();
            }
        } catch (...) {
            if (!text.empty()) text += ": ";
            text += "unknown exception";
        }
        if (next == current) break;
        current = next;
    }
    return text;
}

// One exception caught by trigger().
struct Failure {
    std::string name;          // the callback's CallbackOptions::name (may be empty)
    std::exception_ptr error;  // what it threw (any type: also `throw 42`)
    bool in_filter = false;    // true when the filter threw, not the callback

    // The message of `error` (see describe()).
    std::string what() const { return describe(error); }
    // The code of a std::system_error (which is what a callback's returned
    // std::error_code becomes); an empty code for any other error.
    std::error_code code() const noexcept {
        try {
            if (error) std::rethrow_exception(error);
        } catch (const std::system_error& e) {
            return e.code();
        } catch (...) {
        }
        return std::error_code();
    }
};

// Called once per Failure, on the triggering thread, with no cbm lock held.
// An exception thrown by the handler itself is swallowed: it must not stop
// the remaining callbacks.
using ErrorHandler = std::function<void(const Failure&)>;

// What one trigger() call did.
struct TriggerResult {
    std::size_t invoked = 0;  // callback bodies that ran, including those that threw
    std::size_t failed = 0;   // callbacks or filters that threw
    std::size_t skipped = 0;  // filtered out, blocked, or not reached (stop policy, stop token, context)
    std::size_t blocked = 0;  // of `skipped`: blocked by a cbm::Blocker (Registration::block())
    bool stopped = false;     // cut short by ErrorPolicy::stop, a stop token or a context
    std::vector<Failure> failures;  // one entry per failure, in call order

    // True when everything ran that should have and nothing failed: no
    // callback or filter threw, and the trigger was not cut short (by
    // ErrorPolicy::stop, a stop token, or its context's cancellation or
    // deadline). Callbacks skipped by their own filter or an open circuit
    // do not make a trigger not ok.
    bool ok() const noexcept { return failed == 0 && !stopped; }
};

// A callback invocation that failed for good.
struct DeadLetter {
    std::string key;   // the registry key as text ("" for a group)
    std::string name;  // CallbackOptions::name
    std::exception_ptr error;
    std::uint32_t attempts = 0;

    // The message of `error` (see describe()).
    std::string what() const { return describe(error); }
};
using DeadLetterHandler = std::function<void(const DeadLetter&)>;

// Where a circuit breaker is.
enum class CircuitState : std::uint8_t {
    closed,     // calls run
    open,       // calls are skipped until the cool-down has passed
    half_open,  // one trial call runs; the others are skipped
};

inline const char* to_string(CircuitState s) noexcept {
    switch (s) {
        case CircuitState::closed: return "closed";
        case CircuitState::open: return "open";
        case CircuitState::half_open: return "half_open";
    }
    return "?";
}

// One transition of a callback's circuit breaker, reported to the handler
// set with set_circuit_change_handler(): on the triggering thread that made
// the transition, right after it, with no cbm lock held. Transitions made
// by different threads may reach the handler out of order; each reports
// the state it entered.
struct CircuitChange {
    std::string key;     // the registry key as text ("" for a group)
    std::string name;    // CallbackOptions::name
    CircuitState state;     // the state entered
};
using CircuitChangeHandler = std::function<void(const CircuitChange&)>;

}  // namespace cbm
