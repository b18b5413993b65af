// Must not compile: the member function does not take the group's argument.
#include <cbm/callback_group.hpp>

#include <string>

struct Service {
    void on(const std::string&) {}
};

int main() {
    cbm::CallbackGroup<void(int)> group;
    Service svc;
    group.add(&Service::on, &svc);
}
