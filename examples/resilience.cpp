// README: a flaky partner callback behind a timeout, retries and a circuit
// breaker, with a dead-letter handler so that no failure goes unseen.
#include <cbm/cbm.hpp>

#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>

using namespace std::chrono_literals;

int main() {
    cbm::CallbackRegistry<std::string, void(int)> events(cbm::GroupOptions{.metrics = true});
    events.set_dead_letter_handler([](const cbm::DeadLetter& d) {
        std::printf("dead letter: %s/%s failed after %u attempts: %s\n", d.key.c_str(), d.name.c_str(), d.attempts,
                    d.what().c_str());
    });

    events.set_circuit_change_handler([](const cbm::CircuitChange& c) {
        std::printf("circuit of %s/%s is now %s\n", c.key.c_str(), c.name.c_str(), cbm::to_string(c.state));  // alert here
    });

    int calls = 0;
    events.add("order.placed", [&calls](int order) {
        if (++calls % 3 != 0) throw std::runtime_error("partner unavailable");  // fails twice, then works
        std::printf("partner notified of order %d\n", order);
    }, {.name = "notify_partner",
        .timeout = 200ms,                                        // each attempt, cooperatively
        .retry = {.attempts = 3, .initial_backoff = 1ms},        // 1 ms, then about 2 ms
        .circuit_breaker = {.failures = 2, .cool_down = 30s}});  // two failed invocations open it
    events.add("order.placed", [](int) { throw std::logic_error("bug in audit"); }, {.name = "audit"});

    events.trigger("order.placed", 1);  // notify_partner succeeds on its third attempt; audit dead-letters
    const cbm::CallbackMetrics* partner = nullptr;
    const cbm::MetricsSnapshot snapshot = events.metrics();
    for (const auto& m : snapshot.callbacks) {
        if (m.name == "notify_partner") partner = &m;
    }
    std::printf("notify_partner: %llu attempts, %llu retries, circuit %s\n",
                static_cast<unsigned long long>(partner->invoked), static_cast<unsigned long long>(partner->retries),
                partner->circuit_open ? "open" : "closed");
    return partner->retries == 2 && !partner->circuit_open ? 0 : 1;
}
