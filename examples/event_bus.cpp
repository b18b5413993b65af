// examples/event_bus.cpp
#include <cbm/event_bus.hpp>
#include <cbm/thread_pool.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>

using namespace std::chrono_literals;

struct OrderPaid {
    std::string id;
    double total;
};

int main() {
    cbm::ThreadPool pool({.min_threads = 2, .max_threads = 4});
    cbm::EventBus bus({.executor = pool.executor(), .queue_capacity = 10'000, .overflow = cbm::Overflow::block});

    // Consumer group "billing": each order goes to one of its members, three
    // times as often to the first. A failure is redelivered (to the other
    // member) after a backoff, up to 3 deliveries in all.
    std::atomic<int> billed{0};
    auto bill = [&](const OrderPaid& e) {
        if (e.total < 0) throw std::invalid_argument("negative total");
        billed.fetch_add(1);
    };
    bus.subscribe<OrderPaid>(bill, {.name = "billing-a", .max_deliveries = 3,
                                    .redelivery_backoff = {.initial = 1ms}, .group = "billing", .weight = 3});
    bus.subscribe<OrderPaid>(bill, {.name = "billing-b", .max_deliveries = 3,
                                    .redelivery_backoff = {.initial = 1ms}, .group = "billing", .weight = 1});

    // Consumer group "shipping", acknowledging by hand: at least once, so a
    // redelivery is told by its count.
    std::atomic<int> shipped{0};
    bus.subscribe<OrderPaid>(
        [&](cbm::Delivery<OrderPaid>& d) {
            if (d.redelivered()) std::printf("shipping %s again (delivery %u)\n", d.event().id.c_str(), d.delivery_count());
            shipped.fetch_add(1);
            d.ack();
        },
        {.name = "shipping", .ack = cbm::AckMode::manual, .ack_timeout = 5s, .group = "shipping"});

    // What could not be done, after every redelivery, ends here: never lost.
    std::atomic<int> dead{0};
    bus.set_dead_letter_handler([&](const cbm::DeadLetter& d) {
        std::printf("dead letter: %s to %s after %u deliveries: %s\n", d.key.c_str(), d.name.c_str(), d.attempts,
                    d.what().c_str());
        dead.fetch_add(1);
    });

    bus.publish(OrderPaid{"o1", 120.0});  // now, on this thread
    for (int i = 2; i <= 100; ++i) bus.post(OrderPaid{"o" + std::to_string(i), i * 1.5});  // on the pool
    bus.post(OrderPaid{"bad", -1.0});     // fails 3 times, then reaches the dead-letter handler
    bus.drain();                          // everything delivered, acked or dead-lettered

    std::printf("billed %d, shipped %d, dead letters %d\n", billed.load(), shipped.load(), dead.load());
    return billed == 100 && shipped == 101 && dead == 1 ? 0 : 1;
}
