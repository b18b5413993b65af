// cbm/detail/invoke.hpp - the last step of every invocation: call the user's
// callable and capture what it throws. The only try/catch around a callable
// in the invocation pipeline (filters have their own step, pipeline.hpp).
#pragma once

#include <exception>

#include "../callback.hpp"
#include "typed_node.hpp"

namespace cbm::detail {

// Calls the node's callable with `args`. Returns true when it returned; when
// it threw, stores the exception in `error` and returns false. On the path
// that does not throw this is exactly the call, with no store: the trigger
// loop uses it inline, with one `error` for the whole trigger (always
// inlined: the loop calls it from two places and must not pay a call).
template <class Signature, class... A>
[[gnu::always_inline]] inline bool invoke_captured(const Node<Signature>& node, std::exception_ptr& error, A&... args) {
    try {
        CallbackAccess::invoke(node.fn(), args...);
        return true;
    } catch (...) {
        error = std::current_exception();
        return false;
    }
}

}  // namespace cbm::detail
