// cbm/errc.hpp - the errors cbm reports as std::error_code: a Context's
// (Go's context.Canceled and context.DeadlineExceeded), an executor's (a
// full queue, a shut-down pool, a task dropped unrun) and an event bus's
// (closed; a delivery nacked, not acked in time, or that no subscriber
// could take).
//
//   std::error_code ec = ctx.err();
//   if (ec == cbm::errc::canceled) ...              // exactly this error
//   if (ec == std::errc::operation_canceled) ...    // portable condition: also true
//   if (ec == std::errc::timed_out) ...             // true for deadline_exceeded
//   catch (const std::system_error& e) { if (e.code() == cbm::errc::queue_full) ... }
#pragma once

#include <string>
#include <system_error>
#include <type_traits>

namespace cbm {

// Values start at 1: a value-initialized std::error_code means "no error".
enum class errc : int {
    canceled = 1,            // Go: context.Canceled
    deadline_exceeded = 2,   // Go: context.DeadlineExceeded
    queue_full = 3,          // an executor's queue had no room (Overflow::reject)
    executor_shut_down = 4,  // the executor was shut down and takes no more work
    task_dropped = 5,        // the executor destroyed the task without running it
    bus_closed = 6,          // the EventBus was closed (or destroyed) and takes no more events
    nacked = 7,              // a subscriber negatively acknowledged the delivery (Delivery::nack)
    ack_timeout = 8,         // a manual-ack delivery was not acknowledged within its ack_timeout
    undeliverable = 9,       // every subscriber that could take the event was blocked or had its circuit open
};

namespace detail {

class ErrorCategory final : public std::error_category {
public:
    const char* name() const noexcept override { return "cbm"; }

    std::string message(int value) const override {
        switch (static_cast<errc>(value)) {
            case errc::canceled: return "context canceled";
            case errc::deadline_exceeded: return "context deadline exceeded";
            case errc::queue_full: return "executor queue full";
            case errc::executor_shut_down: return "executor shut down";
            case errc::task_dropped: return "task dropped by its executor without running";
            case errc::bus_closed: return "event bus closed";
            case errc::nacked: return "delivery negatively acknowledged";
            case errc::ack_timeout: return "delivery not acknowledged in time";
            case errc::undeliverable: return "no subscriber could take the event (blocked or circuit open)";
        }
        return "unknown cbm error";
    }

    // The portable conditions: canceled is operation_canceled, a missed
    // deadline is timed_out (so `ec == std::errc::timed_out` works), a full
    // queue is resource_unavailable_try_again; a shut-down executor, a
    // dropped task and a closed bus are operation_canceled; an ack timeout
    // is timed_out.
    std::error_condition default_error_condition(int value) const noexcept override {
        switch (static_cast<errc>(value)) {
            case errc::canceled: return std::make_error_condition(std::errc::operation_canceled);
            case errc::deadline_exceeded: return std::make_error_condition(std::errc::timed_out);
            case errc::queue_full: return std::make_error_condition(std::errc::resource_unavailable_try_again);
            case errc::executor_shut_down:
            case errc::task_dropped:
            case errc::bus_closed: return std::make_error_condition(std::errc::operation_canceled);
            case errc::ack_timeout: return std::make_error_condition(std::errc::timed_out);
            case errc::nacked:
            case errc::undeliverable: break;
        }
        return std::error_condition(value, *this);
    }
};

}  // namespace detail

// The category of cbm::errc. One object for the whole program (an inline
// function's static), so error codes compare equal across translation units.
// Never destroyed: error codes stay valid in static destructors.
inline const std::error_category& error_category() noexcept {
    static const detail::ErrorCategory* const category = new detail::ErrorCategory();
    return *category;
}

// The name this category had when it held only a context's errors.
inline const std::error_category& context_category() noexcept { return error_category(); }

inline std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), error_category()}; }

}  // namespace cbm

template <>
struct std::is_error_code_enum<cbm::errc> : std::true_type {};
