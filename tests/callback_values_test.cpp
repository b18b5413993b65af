// Tests for cbm/callback_values.hpp: groups and registries of callbacks that
// return values.
#include <cbm/callback_group.hpp>
#include <cbm/callback_registry.hpp>
#include <cbm/callback_values.hpp>
#include <cbm/context.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <latch>
#include <memory>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "test_support.hpp"

using cbm::CallbackGroup;
using cbm::CallbackRegistry;
using cbm::CallbackValue;
using cbm::ValueResult;

namespace {

struct Carrier {
    double base;
    double quote(int kg) const { return base + kg; }
};

std::vector<std::pair<std::string, int>> pairs_of(const ValueResult<int>& r) {
    std::vector<std::pair<std::string, int>> out;
    for (const auto& v : r.values) out.emplace_back(v.name, v.value);
    return out;
}

}  // namespace

TEST_CASE("a value group gives every callback's value with its name, in call order", "[values]") {
    CallbackGroup<int(int)> group;
    group.add([](int x) { return x + 1; }, {.name = "plus"});
    group.add([](int x) { return x * 10; }, {.priority = 5, .name = "times"});
    group.add([](int x) -> short { return static_cast<short>(-x); }, {.name = "negate"});  // converts to int
    const ValueResult<int> r = group.trigger(3);
    CHECK(r.invoked == 3);
    CHECK(r.ok());
    CHECK(pairs_of(r) == std::vector<std::pair<std::string, int>>{{"times", 30}, {"plus", 4}, {"negate", -3}});
}

TEST_CASE("a value callback that throws, is filtered or blocked gives no value and is counted", "[values]") {
    CallbackGroup<int(int)> group;
    group.add([](int) -> int { throw std::runtime_error("down"); }, {.name = "broken"});
    group.add([](int x) { return x; }, {.name = "odd only", .filter = [](const int& x) { return x % 2 == 1; }});
    const cbm::Registration blocked = group.add([](int x) { return x; }, {.name = "blocked"});
    group.add([](int x) { return 2 * x; }, {.name = "double"});
    const cbm::Blocker b = blocked.block();
    const ValueResult<int> r = group.trigger(4);
    CHECK(r.failed == 1);
    CHECK(r.failures.at(0).what() == "down");
    CHECK(r.skipped == 2);
    CHECK(r.blocked == 1);
    CHECK(pairs_of(r) == std::vector<std::pair<std::string, int>>{{"double", 8}});
}

TEST_CASE("collect hands values over one by one and stops the trigger when told", "[values]") {
    CallbackGroup<int()> group({.metrics = true});
    for (int i = 1; i <= 5; ++i) group.add([i] { return i; }, {.name = "n" + std::to_string(i)});
    std::vector<int> seen;
    const cbm::TriggerResult r = group.collect(
        [&](CallbackValue<int>&& v) {
            seen.push_back(v.value);
            return v.value < 3;  // stop after the first value >= 3
        });
    CHECK(seen == std::vector<int>{1, 2, 3});
    CHECK(r.invoked == 3);
    CHECK(r.skipped == 2);
    CHECK(r.stopped);
}

TEST_CASE("a value group takes member functions, Self, contexts, stop tokens and retries", "[values]") {
    CallbackGroup<double(int)> group;
    Carrier ups{10.0};
    group.add(&Carrier::quote, &ups, {.name = "ups"});
    auto dhl = std::make_shared<Carrier>(Carrier{20.0});
    const cbm::Registration tracked = group.add(&Carrier::quote, std::weak_ptr<Carrier>(dhl), {.name = "dhl"});
    int attempts = 0;
    group.add(
        [&](cbm::Self& self, int kg) {
            if (++attempts < 2) throw std::runtime_error("busy");
            self.unregister();
            return 0.5 * kg;
        },
        {.name = "flaky", .retry = {.attempts = 2, .initial_backoff = std::chrono::nanoseconds(1), .jitter = 0.0}});
    ValueResult<double> r = group.trigger(2);
    REQUIRE(r.values.size() == 3);
    CHECK(r.values[0].value == 12.0);
    CHECK(r.values[1].value == 22.0);
    CHECK(r.values[2].value == 1.0);
    CHECK(group.size() == 2);  // flaky unregistered itself

    dhl.reset();
    r = group.trigger(2);  // dhl is gone: no value, and it unregisters
    CHECK(r.values.size() == 1);
    CHECK(tracked.state() == cbm::CallbackState::unregistered);

    std::stop_source stop;
    stop.request_stop();
    r = group.trigger(stop.get_token(), 2);
    CHECK(r.values.empty());
    CHECK(r.stopped);

    auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
    bool inside = false;
    group.add([&, c = ctx](int) {
        inside = cbm::current_context() == c;
        return 0.0;
    });
    r = group.trigger(ctx, 1);
    CHECK(inside);
    CHECK(r.values.size() == 2);
    cancel();
    CHECK(group.trigger(ctx, 1).values.empty());
}

TEST_CASE("a value registry gives the values of one key, looked up by string_view", "[values][registry]") {
    CallbackRegistry<std::string, std::string(int)> registry;
    registry.add("greet", [](int n) { return std::string(static_cast<std::size_t>(n), '!'); }, {.name = "bang"});
    registry.add("greet", [](int n) { return std::to_string(n); }, {.name = "digits"});
    registry.add("other", [](int) { return std::string("no"); });
    const std::string_view key = "greet";
    const ValueResult<std::string> r = registry.trigger(key, 3);
    REQUIRE(r.values.size() == 2);
    CHECK(r.values[0].value == "!!!");
    CHECK(r.values[1].value == "3");
    CHECK(registry.trigger("nobody", 1).values.empty());
    int count = 0;
    CHECK(registry.collect("greet", [&](CallbackValue<std::string>&&) { return ++count < 1; }, 1).stopped);
    CHECK(count == 1);
    CHECK(registry.size(key) == 2);
    CHECK(registry.erase(key) == 2);
    CHECK(registry.key_count() == 1);
}

TEST_CASE("value triggers on many threads each get their own values, and unregister waits", "[values][race]") {
    const cbm_test::Watchdog watchdog("value group race");
    CallbackGroup<int(int)> group;
    std::atomic<int> running{0};
    std::atomic<int> calls{0};
    cbm::Registration r = group.add([&](int x) {
        calls.fetch_add(1);
        running.fetch_add(1);
        const int v = x * 2;
        running.fetch_sub(1);
        return v;
    });
    std::atomic<int> wrong{0};
    std::latch start(4);
    std::vector<std::jthread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            start.arrive_and_wait();
            for (int i = 0; i < 2000; ++i) {
                const ValueResult<int> res = group.trigger(t * 10000 + i);
                if (!res.values.empty() && res.values.front().value != 2 * (t * 10000 + i)) wrong.fetch_add(1);
            }
        });
    }
    CHECK(cbm_test::eventually([&] { return calls.load() >= 100; }));  // unregister while triggers run
    r.unregister();
    const int after = running.load();  // nothing runs it once unregister() returned
    threads.clear();
    CHECK(after == 0);
    CHECK(wrong.load() == 0);
}
