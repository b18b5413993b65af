// cbm/self.hpp - cbm::Self: a callback's own handle, passed to a callback
// that asks for it, so that it can unregister itself without keeping its
// Registration somewhere it can reach.
//
//   group.add([](cbm::Self& self, const Order& o) {
//       if (o.last) self.unregister();  // no further invocation starts
//   });
//
// A callable whose first parameter is `cbm::Self&` (or `const cbm::Self&`)
// and whose other parameters match the group's receives it; every other
// callable is called with the group's arguments alone.
//
// Either kind may report failure without throwing by returning a
// std::error_code: a non-zero one counts as a failure everywhere an
// exception does (the Failure's error is a std::system_error with that
// code; Failure::code() gives it back). The handle costs the
// callable one pointer of storage and nothing per call beyond passing it.
#pragma once

#include <functional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

#include "callback.hpp"
#include "detail/node.hpp"
#include "detail/unregister.hpp"
#include "registration.hpp"

namespace cbm {

// The handle a callback receives on each invocation: valid only during that
// invocation (keep registration() to hold on to it).
// Thread safety: as Registration's; concurrent invocations each get their own.
class Self {
public:
    Self(const Self&) = delete;
    Self& operator=(const Self&) = delete;

    // Effect: no further invocation of this callback starts, on any thread.
    // It does not wait: this invocation is still running, and so may be
    // others on other threads (a Registration's unregister() waits for
    // those). The callable is destroyed once every invocation has returned.
    // Returns: true only for the call that unregistered it (false when it was
    // unregistered already).
    // Never blocks on user code (it takes the group's writer lock briefly).
    bool unregister() const { return detail::unregister_node(*node_, false); }

    // True once the callback was unregistered, by any path.
    bool unregistered() const noexcept { return node_->unregistered(); }

    // A counted handle to this callback, which may outlive the invocation.
    Registration registration() const noexcept {
        node_->add_ref();
        return Registration(node_);
    }

    // The name given in CallbackOptions.
    const std::string& name() const noexcept { return node_->name; }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

    explicit Self(detail::NodeBase& node) noexcept : node_(&node) {}

private:
    detail::NodeBase* node_;
};

namespace detail {

// A callable that takes its own handle first: cbm calls it with a Self made
// from the node that stores it (set by make_node through bind_node, before
// the node can be triggered).
template <class F>
struct SelfBound {
    F f;
    NodeBase* node = nullptr;

    void bind_node(NodeBase* n) noexcept { node = n; }

    template <class... A>
    decltype(auto) operator()(A&&... a) {
        Self self(*node);
        return std::invoke(f, self, std::forward<A>(a)...);
    }
};

// A callable that reports failure by returning a std::error_code: a
// non-zero code is thrown as std::system_error, so it counts as a failure
// everywhere an exception does (failed, handlers, retry, breaker, dead
// letters, metrics), and the Failure's error holds the code.
template <class F>
struct ErrorReturning {
    F f;

    void bind_node(NodeBase* n) noexcept
        requires requires(F& inner, NodeBase* p) { inner.bind_node(p); }
    {
        f.bind_node(n);
    }

    template <class... A>
    void operator()(A&&... a) {
        const std::error_code ec = std::invoke(f, std::forward<A>(a)...);
        if (ec) throw std::system_error(ec);
    }
};

template <class F, class... Args>
inline constexpr bool takes_plain_arguments = std::is_invocable_v<std::decay_t<F>&, Args...>;
template <class F, class... Args>
inline constexpr bool takes_self = !takes_plain_arguments<F, Args...> && std::is_invocable_v<std::decay_t<F>&, Self&, Args...>;

template <class R>
inline constexpr bool returns_error_code = std::is_same_v<std::remove_cvref_t<R>, std::error_code>;

// What add() stores for `f`, in a group whose callbacks take Args...: `f`
// itself, or `f` bound to its own handle, and in either case checked for a
// returned std::error_code. A callable that fits neither is
// rejected here, with a message that says what fits.
// Throws: std::invalid_argument for an empty callable.
template <class... Args, class F>
decltype(auto) adapt_callable(F&& f) {
    static_assert(takes_plain_arguments<F, Args...> || takes_self<F, Args...>,
                  "cbm: this callback must be callable with the group's argument types, as R(Args...) for the "
                  "group's void(Args...) (any return type; the value is discarded), or as R(cbm::Self&, "
                  "Args...) to receive its own handle; check its parameter list and their constness");
    if constexpr (takes_self<F, Args...>) {
        if (is_empty_callable(f)) throw std::invalid_argument("cbm: cannot register an empty callable");
        using Bound = SelfBound<std::decay_t<F>>;
        if constexpr (returns_error_code<std::invoke_result_t<std::decay_t<F>&, Self&, Args...>>) {
            return ErrorReturning<Bound>{Bound{std::forward<F>(f)}};
        } else {
            return Bound{std::forward<F>(f)};
        }
    } else if constexpr (returns_error_code<std::invoke_result_t<std::decay_t<F>&, Args...>>) {
        if (is_empty_callable(f)) throw std::invalid_argument("cbm: cannot register an empty callable");
        return ErrorReturning<std::decay_t<F>>{std::forward<F>(f)};
    } else {
        return std::forward<F>(f);
    }
}

}  // namespace detail
}  // namespace cbm
