// Must not compile: a handler that takes neither the event nor a Delivery of
// it is rejected at subscribe<E>() with cbm's message.
#include <cbm/event_bus.hpp>

#include <string>

struct OrderPaid {
    std::string id;
};

int main() {
    cbm::EventBus bus;
    bus.subscribe<OrderPaid>([](const std::string&) {});
}
