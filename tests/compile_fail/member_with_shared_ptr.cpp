// Must not compile: a shared_ptr would keep the object alive while registered.
#include <cbm/callback_group.hpp>

#include <memory>

struct Service {
    void on(int) {}
};

int main() {
    cbm::CallbackGroup<void(int)> group;
    auto svc = std::make_shared<Service>();
    group.add(&Service::on, svc);
}
