// Program exit with contexts still pending: a timer armed for an hour, an
// after_func not yet run, a context canceled from a static destructor that
// runs after the services were shut down, and an after_func blocked in its
// function. The process must exit with status 0, neither crashing nor
// hanging (CTest enforces a timeout).
#include <cbm/context.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <tuple>

using namespace std::chrono_literals;

namespace {

// Constructed before main, so destroyed after the services' exit guards
// (which are constructed on first use inside main).
struct CancelAtExit {
    cbm::Context ctx;
    cbm::CancelFunc cancel;
    cbm::StopFunc stop;
    ~CancelAtExit() {
        cancel();  // removes its timer from a stopped timer service; its after_func is discarded
        if (!ctx.canceled()) std::abort();
    }
};
CancelAtExit at_exit;

std::atomic<bool> started_blocking{false};

}  // namespace

int main() {
    std::tie(at_exit.ctx, at_exit.cancel) = cbm::with_timeout(cbm::Context::background(), 1h);
    at_exit.stop = cbm::after_func(at_exit.ctx, [] { std::puts("must not run after shutdown"); });

    // An hour-long timeout that is still pending at exit.
    static auto pending = cbm::with_timeout(cbm::Context::background(), 1h);

    // An after_func that is running (and blocked for a moment) when main returns.
    auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
    (void)cbm::after_func(ctx, [] {
        started_blocking = true;
        std::this_thread::sleep_for(50ms);  // simulated work, not synchronisation
    });
    cancel();
    const auto give_up = std::chrono::steady_clock::now() + 10s;
    while (!started_blocking.load() && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
    return started_blocking.load() ? 0 : 1;
}
