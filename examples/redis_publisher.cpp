// Publishes orders to a Redis stream, each under a trace id of its own.
//   redis_publisher [PORT] [TOPIC] [COUNT]
#include <cbm/redis/bridge.hpp>
#include <cbm/trace.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "redis_orders.hpp"

int main(int argc, char** argv) {
    const int port = argc > 1 ? std::atoi(argv[1]) : 6379;
    const std::string topic = argc > 2 ? argv[2] : "orders";
    const int count = argc > 3 ? std::atoi(argv[3]) : 10;

    cbm::redis::Bridge bridge({.endpoint = {.host = "127.0.0.1", .port = port}});
    for (int i = 0; i < count; ++i) {
        const cbm::Context checkout = cbm::with_trace_id(cbm::Context::background(), "checkout-" + std::to_string(i));
        cbm::ContextScope scope(checkout);
        bridge.publish(topic, OrderPaid{"o-" + std::to_string(i), 10.0 + i}, {.max_len = 100'000});
    }
    std::printf("published %d orders to %s\n", count, topic.c_str());
}
