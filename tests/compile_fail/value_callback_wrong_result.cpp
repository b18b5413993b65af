// Must not compile: a value group's callback must return something
// convertible to the group's result type.
#include <cbm/callback_group.hpp>

#include <string>

int main() {
    cbm::CallbackGroup<int(int)> group;
    group.add([](int) { return std::string("not an int"); });
}
