// Must not compile: the key comes first, then the callbacks' arguments.
#include <cbm/callback_registry.hpp>

#include <string>

int main() {
    cbm::CallbackRegistry<std::string, void(int)> registry;
    registry.trigger(7, "orders");
}
