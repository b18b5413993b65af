// cbm/detail/invoke.hpp - the last step of every invocation: call the user's
// callable and capture what it throws. The only try/catch around user code
// in the invocation pipeline (filters have their own step, pipeline.hpp).
#pragma once

#include <exception>
#include <utility>

#include "../callback.hpp"
#include "typed_node.hpp"

namespace cbm::detail {

// Calls the node's callable with `args`. An exception does not propagate:
// `on_error(std::exception_ptr)` receives it. On the path that does not
// throw this is exactly the call (the trigger loop uses it inline).
template <class Signature, class OnError, class... A>
void invoke_captured(const Node<Signature>& node, OnError&& on_error, A&... args) {
    try {
        CallbackAccess::invoke(node.fn(), args...);
    } catch (...) {
        on_error(std::current_exception());
    }
}

// The same, returning the exception (null when the call returned).
template <class Signature, class... A>
std::exception_ptr invoke_returning_error(const Node<Signature>& node, A&... args) {
    std::exception_ptr error;
    invoke_captured(node, [&error](std::exception_ptr e) noexcept { error = std::move(e); }, args...);
    return error;
}

}  // namespace cbm::detail
