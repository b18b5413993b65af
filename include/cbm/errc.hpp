// cbm/errc.hpp - the errors a cbm::Context reports: Go's context.Canceled and
// context.DeadlineExceeded as a std::error_code category.
//
//   std::error_code ec = ctx.err();
//   if (ec == cbm::errc::canceled) ...              // exactly this error
//   if (ec == std::errc::operation_canceled) ...    // portable condition: also true
//   if (ec == std::errc::timed_out) ...             // true for deadline_exceeded
#pragma once

#include <string>
#include <system_error>
#include <type_traits>

namespace cbm {

// Values start at 1: a value-initialized std::error_code means "no error".
enum class errc : int {
    canceled = 1,           // Go: context.Canceled
    deadline_exceeded = 2,  // Go: context.DeadlineExceeded
};

namespace detail {

class ContextErrorCategory final : public std::error_category {
public:
    const char* name() const noexcept override { return "cbm.context"; }

    std::string message(int value) const override {
        switch (static_cast<errc>(value)) {
            case errc::canceled: return "context canceled";
            case errc::deadline_exceeded: return "context deadline exceeded";
        }
        return "unknown cbm.context error";
    }

    // The portable conditions: canceled is operation_canceled, a missed
    // deadline is timed_out. This makes `ec == std::errc::timed_out` work.
    std::error_condition default_error_condition(int value) const noexcept override {
        switch (static_cast<errc>(value)) {
            case errc::canceled: return std::make_error_condition(std::errc::operation_canceled);
            case errc::deadline_exceeded: return std::make_error_condition(std::errc::timed_out);
        }
        return std::error_condition(value, *this);
    }
};

}  // namespace detail

// The category of cbm::errc. One object for the whole program (an inline
// function's static), so error codes compare equal across translation units.
// Never destroyed: error codes stay valid in static destructors.
inline const std::error_category& context_category() noexcept {
    static const detail::ContextErrorCategory* const category = new detail::ContextErrorCategory();
    return *category;
}

inline std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), context_category()}; }

}  // namespace cbm

template <>
struct std::is_error_code_enum<cbm::errc> : std::true_type {};
