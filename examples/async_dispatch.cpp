// README "Asynchronous dispatch": callbacks on a ThreadPool, one task per
// invocation, with the caller's trace id on the pool's threads, a callback
// kept on the caller, and a result to wait for (or co_await).
#include <cbm/cbm.hpp>

#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>

using namespace std::chrono_literals;

struct Order {
    std::string id;
    double total;
};

int main() {
    cbm::ThreadPool pool({.min_threads = 2, .max_threads = 8, .queue_capacity = 10'000,
                          .overflow = cbm::Overflow::block, .idle_timeout = 30s});
    cbm::CallbackGroup<void(const Order&)> orders({.metrics = true, .executor = pool.executor()});
    orders.set_dead_letter_handler([](const cbm::DeadLetter& d) {
        std::printf("dead letter: %s after %u attempts: %s\n", d.name.c_str(), d.attempts, d.what().c_str());
    });

    orders.add([](const Order& o) {  // on a pool thread, under the caller's context
        std::printf("[%s] billing %s: %.2f\n", cbm::trace_id().c_str(), o.id.c_str(), o.total);
    }, {.name = "billing"});
    orders.add([](const Order& o) { std::printf("audit %s on the caller\n", o.id.c_str()); },
               {.name = "audit", .executor = cbm::inline_executor()});
    int attempts = 0;
    orders.add([&attempts](const Order&) {  // its backoff waits on the timer, not on a pool thread
        if (++attempts < 2) throw std::runtime_error("partner busy");
    }, {.name = "partner", .retry = {.attempts = 3, .initial_backoff = 1ms}});

    const cbm::Context request = cbm::with_trace_id(cbm::Context::background(), "req-7");
    cbm::AsyncResult r = orders.trigger_async(request, Order{"o1", 120.0});  // returns at once
    const cbm::TriggerResult res = r.get();  // or r.wait_for(10ms), or co_await r
    std::printf("invoked %zu, failed %zu\n", res.invoked, res.failed);

    const auto queued = orders.metrics().callbacks.front().queue_wait_ns;
    std::printf("billing waited %.0f ns in the queue\n", queued.percentile(50));
    pool.drain();     // the queue is empty and nothing runs
    pool.shutdown();  // finishes what is queued, takes nothing new, joins
    return res.ok() ? 0 : 1;
}
