// README: per-callback metrics, an observer bridged to a plain logger, and
// the Prometheus text a /metrics endpoint would serve.
#include <cbm/cbm.hpp>

#include <chrono>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>

// Bridges every invocation to a logger (it could open OpenTelemetry spans).
class LoggingObserver final : public cbm::CallbackObserver {
public:
    void on_begin(const cbm::CallbackEvent&) noexcept override {}
    void on_end(const cbm::CallbackEvent& e, std::chrono::nanoseconds took, const std::exception_ptr& error) noexcept override {
        std::printf("%.*s/%.*s took %lld ns%s\n", static_cast<int>(e.key.size()), e.key.data(),
                    static_cast<int>(e.name.size()), e.name.data(), static_cast<long long>(took.count()),
                    error ? " and threw" : "");
    }
};

using namespace std::chrono_literals;

int main() {
    cbm::CallbackRegistry<std::string, void(int)> events(cbm::GroupOptions{.metrics = true});
    events.add("order.placed", [](int) {}, {.name = "ship", .labels = {{"team", "logistics"}}});
    events.add("order.placed", [](int total) { if (total < 0) throw std::invalid_argument("negative total"); },
               {.name = "charge", .labels = {{"team", "payments"}},
            .slow_threshold = 30ms});  // every call timed; those over 30 ms counted exactly

    events.set_observer(std::make_shared<LoggingObserver>());
    events.trigger("order.placed", 120);
    events.trigger("order.placed", -1);  // "charge" throws: counted, logged, the others still run

    const cbm::MetricsSnapshot snapshot = events.metrics();
    std::printf("%s", cbm::to_prometheus(snapshot).c_str());
    for (const cbm::CallbackMetrics& m : snapshot.callbacks) {
        if (m.name == "charge" && (m.invoked != 2 || m.failed != 1)) return 1;
    }
    return 0;
}
