// Must not compile: the callbacks of one trigger share its arguments, so no
// parameter may be an rvalue reference.
#include <cbm/callback_group.hpp>

#include <string>

int main() {
    cbm::CallbackGroup<void(std::string&&)> group;
    group.trigger(std::string("taken"));
}
