// Must not compile (warnings are errors): a ScopedRegistration made and
// dropped in one statement would unregister the callback at once.
#include <cbm/callback_group.hpp>

int main() {
    cbm::CallbackGroup<void()> group;
    cbm::ScopedRegistration(group.add([] {}));
}
