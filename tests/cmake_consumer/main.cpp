// Builds only if cbm::cbm carries the include path, C++20 and Threads.
#include <cbm/cbm.hpp>

int main() {
    cbm::CallbackGroup<void(int)> group;
    int sum = 0;
    auto registration = group.add([&sum](int x) { sum += x; });
    group.trigger(41);
    group.trigger(1);
    return sum == 42 && registration.unregister() ? 0 : 1;
}
