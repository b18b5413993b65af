// cbm/detail/failure.hpp - the one place where a failed invocation is
// reported: into the TriggerResult, to the error handler and, for a
// callback's final failure, to the dead-letter handler.
#pragma once

#include <cstdint>
#include <exception>
#include <string>
#include <utility>

#include "../error_policy.hpp"
#include "callback_list.hpp"
#include "group_state.hpp"
#include "node.hpp"

namespace cbm::detail {

// Records one exception (from the callback, or from its filter when
// `in_filter`), counts it in the callback's `failed` metric and reports it
// to the group's error handler. A callback's failure (not its filter's) is
// final - after its retries, a timeout overrun included - and also goes to
// the dead-letter handler, with `attempts`. So failures_total, the error
// handler and (without filters) the dead-letter handler see the same
// failures. Handlers that throw stop nothing. Returns true when the error
// policy says to stop the trigger. Kept out of line: the trigger loop stays
// small.
//
// `key` names the registry key for the dead letter: the callback's list, or
// the key's text itself (a retry of trigger_async, after its list may have
// gone).
struct KeyOf {
    const CallbackList* list = nullptr;
    const std::string* text = nullptr;
    std::string get() const { return list != nullptr ? list->key_text() : text != nullptr ? *text : std::string(); }
};

[[gnu::noinline]] inline bool report_failure(TriggerResult& result, GroupState& group, KeyOf key, const NodeBase& node,
                                             std::exception_ptr error, bool in_filter,
                                             std::uint32_t attempts = 1) noexcept {
    ++result.failed;
    if (node.stats != nullptr) node.stats->failed.fetch_add(1, std::memory_order_relaxed);
    try {
        result.failures.push_back(Failure{node.name, error, in_filter});
        if (auto handler = group.error_handler(); handler && *handler) (*handler)(result.failures.back());
    } catch (...) {
        // The handler must not stop the other callbacks (error_policy.hpp).
    }
    if (!in_filter) {
        try {
            if (auto letters = group.dead_letter_handler(); letters && *letters) {
                (*letters)(DeadLetter{key.get(), node.name, error, attempts});
            }
        } catch (...) {
            // Likewise: a throwing dead-letter handler stops nothing.
        }
    }
    return group.policy == ErrorPolicy::stop;
}

// Out of line too, as before the key had two forms: the trigger loop's
// failure path stays one call.
[[gnu::noinline]] inline bool report_failure(TriggerResult& result, GroupState& group, const CallbackList& list,
                                             const NodeBase& node, std::exception_ptr error, bool in_filter,
                                             std::uint32_t attempts = 1) noexcept {
    return report_failure(result, group, KeyOf{&list, nullptr}, node, std::move(error), in_filter, attempts);
}

}  // namespace cbm::detail
