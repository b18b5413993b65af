// Prints the Prometheus text of a registry built to stress the exposition:
// unnamed callbacks sharing a key, named ones sharing a series, keys with
// quotes, backslashes, newlines and invalid UTF-8, user labels, a kept
// series of an unregistered callback, slow thresholds, exact and sampled
// latency, queue wait of trigger_async on a ThreadPool, and two pools'
// gauges told apart by a label. check_exposition.py parses it with the
// reference Python parser.
#include <cbm/callback_registry.hpp>
#include <cbm/event_bus.hpp>
#include <cbm/metrics.hpp>
#include <cbm/thread_pool.hpp>

#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>

// An event type that names itself, with a name that needs escaping.
struct Paid {
    static constexpr std::string_view event_name = "order \"paid\"";
    int n;
};

int main() {
    using namespace std::chrono_literals;
    cbm::CallbackRegistry<std::string, void(int)> registry(cbm::GroupOptions{.metrics = true});
    registry.add("orders", [](int) {});
    registry.add("orders", [](int) {});  // a second unnamed callback under the same key
    registry.add("orders", [](int) {}, {.name = "audit", .labels = {{"team", "pay\"ments\\"}}});
    registry.add("orders", [](int) {}, {.name = "audit", .labels = {{"team", "pay\"ments\\"}}});  // same series
    registry.add("orders", [](int x) { if (x < 0) throw std::runtime_error("negative"); },
                 {.name = "picky", .timeout = 1s, .slow_threshold = 50ms});
    registry.add(std::string("bad\xff\xfe utf8 \xe2\x82"), [](int) {}, {.name = "na\xc3\xafve\nname"});
    registry.add("multi\nline \"key\"", [](int) {}, {.name = "quote\"d"});
    cbm::Registration gone = registry.add("orders", [](int) {}, {.name = "gone"});
    for (int x : {1, -2, 3}) registry.trigger("orders", x);
    gone.unregister();  // its series stays
    registry.trigger(std::string("bad\xff\xfe utf8 \xe2\x82"), 1);
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 2});
    cbm::ThreadPool other({.min_threads = 1, .max_threads = 1});
    cbm::CallbackRegistry<std::string, void(int)> async_registry(
        cbm::GroupOptions{.metrics = true, .executor = pool.executor()});
    async_registry.add("async", [](int) {}, {.name = "queued"});
    for (int x : {1, 2, 3}) async_registry.trigger_async("async", x).wait();
    // An event bus: two types, a consumer group, a failure that is
    // dead-lettered, a queue wait, and labels that need escaping.
    cbm::EventBus bus({.metrics = true});
    bus.subscribe<Paid>([](const Paid&) {}, {.name = "billing-a", .labels = {{"team", "pay"}}, .group = "billing"});
    bus.subscribe<Paid>([](const Paid&) {}, {.name = "billing-b", .labels = {{"team", "pay"}}, .group = "billing"});
    bus.subscribe<int>([](const int& n) { if (n < 0) throw std::runtime_error("negative"); }, {.name = "picky"});
    bus.publish(Paid{1});
    bus.post(Paid{2});
    bus.post(-1);
    bus.process();
    const std::string text = cbm::to_prometheus(registry.metrics()) + cbm::to_prometheus(bus.metrics()) +
                             cbm::to_prometheus(async_registry.metrics(), "cbm_async_callback") +
                             cbm::to_prometheus(pool.metrics(), "cbm_pool", {{"pool", "main"}}) +
                             cbm::to_prometheus(other.metrics(), "cbm_pool", {{"pool", "other"}});
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
}
