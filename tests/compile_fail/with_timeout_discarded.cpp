// Must not compile (warnings are errors): a discarded with_timeout() cancels
// nothing anyone can see, and its cancel function is lost.
#include <cbm/context.hpp>

#include <chrono>

int main() {
    cbm::with_timeout(cbm::Context::background(), std::chrono::seconds(1));
}
