// README: exceptions in callbacks are isolated and reported.
#include <cbm/cbm.hpp>

#include <cstdio>
#include <stdexcept>

int main() {
    cbm::CallbackGroup<void(int)> group{cbm::ErrorPolicy::collect};  // or stop, or rethrow
    group.set_error_handler([](const cbm::Failure& f) {
        try {
            std::rethrow_exception(f.error);
        } catch (const std::exception& e) {
            std::printf("callback '%s' failed: %s\n", f.name.c_str(), e.what());
        } catch (...) {
            std::printf("callback '%s' threw a non-exception\n", f.name.c_str());
        }
    });
    group.add([](int) { throw std::runtime_error("disk full"); }, {.name = "writer"});
    group.add([](int) { throw 42; }, {.name = "legacy"});
    group.add([](int x) { std::printf("still runs with %d\n", x); }, {.name = "reader"});

    cbm::TriggerResult r = group.trigger(1);
    std::printf("invoked %zu, failed %zu, skipped %zu\n", r.invoked, r.failed, r.skipped);
    return r.invoked == 3 && r.failed == 2 ? 0 : 1;
}
