// One consumer of the "billing" group: run it twice (two processes) and
// each order is billed by one of them. Stops on SIGTERM or SIGINT,
// finishing and acknowledging the orders in hand, and prints how many it
// billed.
//   redis_consumer [PORT] [TOPIC] [NAME]
#include <cbm/redis/bridge.hpp>
#include <cbm/trace.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "redis_orders.hpp"

namespace {
std::atomic<bool> stop_requested{false};
extern "C" void on_signal(int) { stop_requested.store(true); }
}  // namespace

int main(int argc, char** argv) {
    const int port = argc > 1 ? std::atoi(argv[1]) : 6379;
    const std::string topic = argc > 2 ? argv[2] : "orders";
    const std::string name = argc > 3 ? argv[3] : "";
    std::signal(SIGTERM, on_signal);
    std::signal(SIGINT, on_signal);

    cbm::redis::Bridge bridge({.endpoint = {.host = "127.0.0.1", .port = port}});
    bridge.set_dead_letter_handler([](const cbm::DeadLetter& d) {
        std::fprintf(stderr, "gave up on an order after %u deliveries: %s\n", d.attempts, d.what().c_str());
    });
    std::atomic<int> billed{0};
    auto consumer = bridge.subscribe<OrderPaid>(
        topic,
        [&](const cbm::redis::Message<OrderPaid>& m) {
            // At least once: an order may come again (m.redelivered()); billing
            // must be idempotent on m.event.id.
            std::printf("[%s] billed %s (%.2f)%s\n", cbm::trace_id().c_str(), m.event.id.c_str(), m.event.total,
                        m.redelivered() ? " again" : "");
            billed.fetch_add(1);
        },
        {.group = "billing", .consumer = name, .ack_timeout = std::chrono::seconds(5), .from_beginning = true});

    while (!stop_requested.load()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    consumer.stop();
    std::printf("consumer %s billed %d orders\n", consumer.name().c_str(), billed.load());
}
