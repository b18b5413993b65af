// README "Self, member functions and tracking": a callback that unregisters
// itself, a member function on a plain pointer, and one tracked by weak_ptr.
#include <cbm/cbm.hpp>

#include <cstdio>
#include <memory>

struct Order {
    int id;
    bool last;
};

class Billing {
public:
    void on_order(const Order& o) { std::printf("bill order %d\n", o.id); }
};

class Audit {
public:
    void on_order(const Order& o) const { std::printf("audit order %d\n", o.id); }
};

int main() {
    cbm::CallbackGroup<void(const Order&)> orders;

    // Takes its own handle: unregisters itself after the last order.
    orders.add([](cbm::Self& self, const Order& o) {
        std::printf("stream order %d\n", o.id);
        if (o.last) self.unregister();  // no further invocation starts
    });

    Audit audit;                                  // outlives the registration
    orders.add(&Audit::on_order, &audit);         // a member function on a pointer

    auto billing = std::make_shared<Billing>();
    cbm::Registration tracked = orders.add(&Billing::on_order, std::weak_ptr<Billing>(billing));

    orders.trigger(Order{1, false});
    orders.trigger(Order{2, true});               // the stream callback goes after this one
    billing.reset();                              // Billing dies; it is never called again
    orders.trigger(Order{3, false});              // finds it gone and unregisters it

    std::printf("%zu callbacks left; tracked one %s\n", orders.size(),
                tracked.state() == cbm::CallbackState::unregistered ? "unregistered" : "still there");
    return orders.size() == 1 && tracked.state() == cbm::CallbackState::unregistered ? 0 : 1;
}
