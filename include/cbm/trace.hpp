// cbm/trace.hpp - a trace id that travels in a Context.
//
//   cbm::Context request = cbm::with_trace_id(cbm::Context::background(), "req-42");
//   registry.trigger(request, "order.created", order);
//   ...
//   // deep inside a callback, without passing anything along:
//   log("[{}] charging", cbm::trace_id());   // "req-42"
//
// trigger(ctx, ...) makes ctx the thread's cbm::current_context() while the
// callbacks run (nested triggers see their own), and after_func runs its
// function under its context, so the id follows work that cbm starts.
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include "context.hpp"

namespace cbm {

// The key of the trace id. One object for the whole program.
inline const ContextKey<std::string>& trace_id_key() noexcept {
    static const ContextKey<std::string> key{"cbm.trace_id"};
    return key;
}

// A child of `parent` carrying `id` (Go: context.WithValue(parent, traceKey, id)).
[[nodiscard]] inline Context with_trace_id(const Context& parent, std::string id) {
    return with_value(parent, trace_id_key(), std::move(id));
}

// The nearest trace id on `ctx`'s chain (by default the thread's current
// context), or "" if none: a std::string, so that it prints as it is
// (`printf("%s", cbm::trace_id().c_str())`, `std::cout << cbm::trace_id()`).
// The reference is valid while `ctx` (or the trigger that set the current
// context) is; copy it to keep it longer.
inline const std::string& trace_id(const Context& ctx = current_context()) noexcept {
    static const std::string none;
    const std::string* id = ctx.value(trace_id_key());
    return id != nullptr ? *id : none;
}

}  // namespace cbm
