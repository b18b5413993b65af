// README: cut a trigger short with a std::stop_token (for example a std::jthread's).
#include <cbm/cbm.hpp>

#include <cstdio>
#include <stop_token>

int main() {
    cbm::CallbackGroup<void(int)> steps;
    std::stop_source cancel;
    steps.add([](int job) { std::printf("step 1 of job %d\n", job); });
    steps.add([&cancel](int) { cancel.request_stop(); });  // e.g. the user pressed cancel
    steps.add([](int job) { std::printf("step 3 of job %d (not reached)\n", job); });

    cbm::TriggerResult r = steps.trigger(cancel.get_token(), 7);
    std::printf("stopped: %s, invoked %zu, skipped %zu\n", r.stopped ? "yes" : "no", r.invoked, r.skipped);
    return r.stopped && r.skipped == 1 ? 0 : 1;
}
