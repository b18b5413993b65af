// README: the one-screen example.
#include <cbm/cbm.hpp>

#include <cstdio>
#include <thread>
#include <vector>

struct Order {
    int id;
    double total;
};

int main() {
    cbm::CallbackGroup<void(const Order&)> on_order;

    // Higher priority runs first; a filter decides per event.
    auto audit = on_order.add([](const Order& o) { std::printf("audit order %d\n", o.id); },
                              {.priority = 10, .name = "audit",
                               .filter = [](const Order& o) { return o.total > 100; }});
    auto ship = on_order.add([](const Order& o) { std::printf("ship order %d\n", o.id); },
                             {.name = "ship"});

    // Trigger from any threads: no lock, no shared counter touched.
    std::vector<std::jthread> workers;
    for (int id = 1; id <= 3; ++id) {
        workers.emplace_back([&on_order, id] {
            cbm::TriggerResult r = on_order.trigger(Order{id, id * 60.0});
            if (!r.ok()) std::printf("%zu callbacks failed\n", r.failed);
        });
    }
    workers.clear();  // join

    // When unregister() returns, "audit" is not running anywhere and never will again.
    audit.unregister();
    on_order.trigger(Order{4, 500.0});  // prints only "ship order 4"
    return audit.state() == cbm::CallbackState::unregistered ? 0 : 1;
}
