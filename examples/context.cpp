// README: Go's context in C++20 - cancellation trees, deadlines, causes,
// values, after_func, and the std::stop_token every context is.
#include <cbm/cbm.hpp>

#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>

using namespace std::chrono_literals;

static const cbm::ContextKey<std::string> trace_id{"trace_id"};

// A worker that honours any context: it polls nothing, it just waits.
bool fetch(const cbm::Context& ctx) {
    const std::string* id = ctx.value(trace_id);
    std::printf("[%s] fetching\n", id != nullptr ? id->c_str() : "-");
    return !ctx.wait_for(20ms);  // true if it finished before being canceled
}

int main() {
    auto [request, cancel_request] = cbm::with_cancel_cause(cbm::Context::background());
    cbm::Context traced = cbm::with_value(request, trace_id, std::string("req-42"));
    auto [call, cancel_call] = cbm::with_timeout(traced, 1ms);  // the deadline fires first

    std::jthread worker([&call = call] { fetch(call); });
    call.wait();  // returns once the deadline passes
    std::printf("call: %s\n", call.err().message().c_str());  // "context deadline exceeded"

    // after_func runs on another thread once the request is canceled.
    auto stop_cleanup = cbm::after_func(request, [] { std::printf("cleanup after cancel\n"); });

    // A std::stop_callback on done() runs inline, inside cancel.
    std::stop_callback on_stop(request.done(), [] { std::printf("request stop requested\n"); });
    cancel_request(std::make_exception_ptr(std::runtime_error("client went away")));

    try {
        std::rethrow_exception(cbm::cause(request));
    } catch (const std::exception& e) {
        std::printf("cause: %s\n", e.what());
    }
    cbm::Context detached = cbm::without_cancel(traced);  // keeps the trace id, never canceled
    std::printf("detached: canceled=%d trace=%s\n", detached.canceled(), detached.value(trace_id)->c_str());
    return call.err() == std::errc::timed_out && request.err() == cbm::errc::canceled ? 0 : 1;
}
