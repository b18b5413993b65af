// README: a request id flowing from an entry point through two levels of
// callbacks into log lines, without being passed along.
#include <cbm/cbm.hpp>

#include <cstdio>
#include <string>

// A logger that knows nothing about requests: it asks the current context.
void log_line(const char* message) {
    std::printf("[%s] %s\n", cbm::trace_id().c_str(), message);
}

int main() {
    cbm::CallbackRegistry<std::string, void(int)> events;
    events.add("payment.charged", [](int cents) {
        log_line(cents > 10'000 ? "large charge: notify fraud team" : "charge recorded");
    });
    events.add("order.placed", [&events](int cents) {
        log_line("order placed; charging");
        events.trigger(cbm::current_context(), "payment.charged", cents);  // second level, same request
    });

    // The entry point (say, an HTTP handler) starts the request.
    for (const char* request : {"req-1", "req-2"}) {
        const cbm::Context ctx = cbm::with_trace_id(cbm::Context::background(), request);
        events.trigger(ctx, "order.placed", request[4] == '1' ? 2'500 : 25'000);
    }
    return cbm::trace_id().empty() ? 0 : 1;  // nothing leaks out of the triggers
}
