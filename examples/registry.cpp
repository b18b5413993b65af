// README: callbacks under event keys.
#include <cbm/cbm.hpp>

#include <cstdio>
#include <string>

int main() {
    cbm::CallbackRegistry<std::string, void(int)> events;
    auto a = events.add("order.shipped", [](int id) { std::printf("notify customer %d\n", id); });
    auto b = events.add("order.shipped", [](int id) { std::printf("update stock for %d\n", id); });
    events.add("order.paid", [](int id) { std::printf("paid %d\n", id); });

    events.trigger("order.shipped", 7);                  // runs both, in registration order
    auto none = events.trigger("order.cancelled", 7);     // unknown key: nothing created, nothing run
    std::printf("keys: %zu, invoked for unknown key: %zu\n", events.key_count(), none.invoked);

    a.unregister();
    b.unregister();                                       // the key goes with its last callback
    std::size_t removed = events.erase("order.paid");     // erase returns how many it removed
    std::printf("keys: %zu, erased: %zu\n", events.key_count(), removed);
    return events.key_count() == 0 ? 0 : 1;
}
