// Must not compile: the callback's parameter does not take the group's argument.
#include <cbm/callback_group.hpp>

#include <string>

int main() {
    cbm::CallbackGroup<void(int)> group;
    group.add([](const std::string&) {});
}
