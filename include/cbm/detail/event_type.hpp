// cbm/detail/event_type.hpp - what an EventBus knows of an event type
// without RTTI or hashing: a dense index, given out once per type on first
// use (a function-local static: one guarded load per publish), and a
// readable name taken from the compiler's signature of a template function
// at compile time, or from the type's own `static constexpr
// std::string_view event_name`.
#pragma once

#include <atomic>
#include <cstddef>
#include <string>
#include <string_view>
#include <type_traits>

namespace cbm::detail {

inline std::size_t allocate_event_type_index() noexcept {
    static std::atomic<std::size_t> next{0};
    return next.fetch_add(1, std::memory_order_relaxed);
}

// The same number for E in every translation unit (an inline function's
// static), told apart from every other type's; small and dense, so a bus
// can index an array with it.
template <class E>
std::size_t event_type_index() noexcept {
    static const std::size_t index = allocate_event_type_index();
    return index;
}

template <class E>
concept names_itself = requires {
    { E::event_name } -> std::convertible_to<std::string_view>;
};

// The type's name as the compiler spells it ("OrderPaid", "shop::OrderPaid"):
// the text after "E = " in __PRETTY_FUNCTION__ (g++ and clang++ both write
// "[with E = T; ...]" or "[E = T]").
template <class E>
constexpr std::string_view spelled_type_name() noexcept {
    constexpr std::string_view signature = __PRETTY_FUNCTION__;
    constexpr std::string_view marker = "E = ";
    constexpr std::size_t start = signature.find(marker);
    if constexpr (start == std::string_view::npos) {
        return signature;  // an unknown compiler: the whole signature still names the type uniquely
    } else {
        constexpr std::size_t from = start + marker.size();
        constexpr std::size_t end = signature.find_first_of(";]", from);
        return signature.substr(from, end - from);
    }
}

template <class E>
constexpr std::string_view event_type_name() noexcept {
    if constexpr (names_itself<E>) {
        return std::string_view(E::event_name);
    } else {
        return spelled_type_name<E>();
    }
}

// The name a bus reports (metrics, dead letters): event_type_name without
// the compilers' spelling of anonymous namespaces ("{anonymous}::" for g++,
// "(anonymous namespace)::" for clang++), which only adds noise there.
template <class E>
std::string readable_event_type_name() {
    std::string name(event_type_name<E>());
    for (std::string_view noise : {std::string_view("{anonymous}::"), std::string_view("(anonymous namespace)::")}) {
        for (std::size_t at = name.find(noise); at != std::string::npos; at = name.find(noise, at)) {
            name.erase(at, noise.size());
        }
    }
    return name;
}

}  // namespace cbm::detail
