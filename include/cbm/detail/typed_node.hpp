// cbm/detail/typed_node.hpp - Node<Signature>: a NodeBase with the user's
// callable (a Callback<Signature>, stored in NodeBase::callable so that the
// trigger loop reads it at a fixed offset) and filter.
#pragma once

#include <new>
#include <type_traits>
#include <utility>

#include "../callback.hpp"
#include "callback_stats.hpp"
#include "node.hpp"
#include "resilience_state.hpp"

namespace cbm::detail {

// The filter of a callback with arguments Args...: it sees each argument as
// a const reference and says whether the callback runs.
template <class Signature>
struct FilterOf;
template <class R, class... Args>
struct FilterOf<R(Args...)> {
    using type = Callback<bool(const std::remove_cvref_t<Args>&...)>;
};

template <class Signature>
struct Node final : NodeBase {
    using Fn = Callback<Signature>;
    static_assert(sizeof(Fn) == kCallableBytes && alignof(Fn) <= alignof(void*),
                  "cbm: Callback layout changed; update kCallableBytes");

    typename FilterOf<Signature>::type filter;

    explicit Node(Fn&& f) noexcept { ::new (static_cast<void*>(callable)) Fn(std::move(f)); }

    const Fn& fn() const noexcept { return *std::launder(reinterpret_cast<const Fn*>(callable)); }
    Fn& fn() noexcept { return *std::launder(reinterpret_cast<Fn*>(callable)); }

private:
    ~Node() override {
        fn().~Fn();
        if (stats != nullptr) {
            // A node never registered (add failed) never destroyed its target.
            if (!target_destroyed.load(std::memory_order_relaxed)) group->series.abandon(stats);
            stats->release_ref();
        }
        delete resilience;
        delete executor;
    }
    void destroy_target() noexcept override {
        fn().reset();
        filter.reset();
    }
};

}  // namespace cbm::detail
