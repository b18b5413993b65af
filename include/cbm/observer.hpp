// cbm/observer.hpp - metric labels, and the observer an instrumented group
// or registry (GroupOptions::metrics) tells about every invocation.
//
//   struct Log final : cbm::CallbackObserver {
//       void on_begin(const cbm::CallbackEvent& e) noexcept override { ... }
//       void on_end(const cbm::CallbackEvent& e, std::chrono::nanoseconds d,
//                   const std::exception_ptr& error) noexcept override { ... }
//   };
//   group.set_observer(std::make_shared<Log>());
#pragma once

#include <chrono>
#include <exception>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cbm {

// Metric labels of one callback, for example {{"team", "payments"}}.
using Labels = std::vector<std::pair<std::string, std::string>>;

// What an observer is told about one invocation.
struct CallbackEvent {
    std::string_view key;   // the registry key as text ("" for a group)
    std::string_view name;  // CallbackOptions::name
    const Labels& labels;   // CallbackOptions::labels
};

// Notified around every invocation of a callback of an instrumented group
// or registry (GroupOptions::metrics), on the triggering thread: a bridge to
// a logger or to OpenTelemetry spans. Must not throw; should be quick (it
// runs inline, twice per callback).
class CallbackObserver {
public:
    virtual ~CallbackObserver() = default;
    virtual void on_begin(const CallbackEvent& event) noexcept = 0;
    // `error` is null unless the callback threw.
    virtual void on_end(const CallbackEvent& event, std::chrono::nanoseconds duration,
                        const std::exception_ptr& error) noexcept = 0;
};

}  // namespace cbm
