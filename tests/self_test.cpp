// Tests for cbm/self.hpp: a callback that receives its own handle, and the
// callables add() accepts.
#include <cbm/callback_group.hpp>
#include <cbm/callback_registry.hpp>
#include <cbm/self.hpp>
#include <cbm/thread_pool.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <system_error>
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

using cbm::CallbackGroup;
using cbm::CallbackState;
using cbm::Registration;
using cbm::Self;

TEST_CASE("a callback that takes cbm::Self unregisters itself, and no later trigger runs it", "[self]") {
    CallbackGroup<void(int)> group;
    std::vector<int> seen;
    const Registration r = group.add([&](Self& self, int x) {
        seen.push_back(x);
        if (x == 2) CHECK(self.unregister());
        CHECK(self.unregistered() == (x >= 2));
    });
    for (int i = 1; i <= 4; ++i) group.trigger(i);
    CHECK(seen == std::vector<int>{1, 2});
    CHECK(r.state() == CallbackState::unregistered);
    CHECK(group.size() == 0);
}

TEST_CASE("Self::unregister returns false when the callback was unregistered already", "[self]") {
    CallbackGroup<void()> group;
    int calls = 0;
    group.add([&](const Self& self) {
        ++calls;
        CHECK(self.unregister());
        CHECK_FALSE(self.unregister());
    });
    group.trigger();
    group.trigger();
    CHECK(calls == 1);
}

TEST_CASE("Self gives the callback's name and a handle that outlives the invocation", "[self]") {
    CallbackGroup<void()> group;
    Registration kept;
    std::string name;
    const Registration r = group.add(
        [&](Self& self) {
            name = self.name();
            kept = self.registration();
        },
        {.name = "audit"});
    group.trigger();
    CHECK(name == "audit");
    CHECK(kept == r);
    CHECK(kept.state() == CallbackState::registered);
    CHECK(kept.unregister());
    CHECK(r.state() == CallbackState::unregistered);
}

TEST_CASE("callbacks unregistering themselves on many threads at once neither deadlock nor run again", "[self][race]") {
    const cbm_test::Watchdog watchdog("self-unregister race");
    for (int round = 0; round < 200; ++round) {
        CallbackGroup<void()> group;
        cbm_test::Counter lifetimes;
        std::atomic<int> after{0};
        std::atomic<bool> unregistered{false};
        std::atomic<int> dead_calls{0};  // Catch's assertions are not for other threads
        group.add([&, t = cbm_test::Tracked(lifetimes)](Self& self) {
            if (!t.alive()) dead_calls.fetch_add(1);
            if (unregistered.load()) after.fetch_add(1);  // started after another call returned from unregister
            self.unregister();
            unregistered.store(true);
        });
        std::latch start(4);
        std::vector<std::jthread> threads;
        for (int i = 0; i < 4; ++i) {
            threads.emplace_back([&] {
                start.arrive_and_wait();
                for (int k = 0; k < 5; ++k) group.trigger();
            });
        }
        threads.clear();
        // A trigger that started before the first unregister may still run
        // it; none that began after the flag was set and seen may, except
        // those that were already past their state check. So only count
        // runs, and require that the callable was destroyed exactly once.
        CHECK(group.size() == 0);
        CHECK(dead_calls.load() == 0);
        CHECK(after.load() <= 3);
        group.clear();
        CHECK(lifetimes.alive() == 0);
        CHECK(lifetimes.errors.load() == 0);
    }
}

TEST_CASE("a registry callback and a trigger_async callback receive Self too", "[self]") {
    cbm::CallbackRegistry<std::string, void(int)> registry;
    int calls = 0;
    registry.add("k", [&](Self& self, int) {
        ++calls;
        self.unregister();
    });
    registry.trigger("k", 1);
    registry.trigger("k", 2);
    CHECK(calls == 1);
    CHECK(registry.size("k") == 0);

    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 1});
    CallbackGroup<void(int)> group({.executor = pool.executor()});
    std::atomic<int> async_calls{0};
    group.add([&](Self& self, int) {
        async_calls.fetch_add(1);
        self.unregister();
    });
    CHECK(group.trigger_async(1).get().invoked == 1);
    CHECK(group.trigger_async(2).get().invoked == 0);
    CHECK(async_calls.load() == 1);
}

TEST_CASE("a value-returning callable in a void group is accepted and its value discarded", "[self][callable]") {
    CallbackGroup<void(int)> group;
    int doubled = 0;
    group.add([&](int x) { return doubled = 2 * x; });
    group.add([](Self&, int x) { return std::to_string(x); });
    CHECK(group.trigger(21).invoked == 2);
    CHECK(doubled == 42);
}

TEST_CASE("a generic callable is called with the group's arguments, not with Self", "[self][callable]") {
    CallbackGroup<void(int)> group;
    int got = 0;
    group.add([&](auto x) { got = x; });
    group.trigger(7);
    CHECK(got == 7);
}

TEST_CASE("an empty callable that would take Self is refused, and nothing is registered", "[self][callable]") {
    CallbackGroup<void(int)> group;
    void (*none)(Self&, int) = nullptr;
    CHECK_THROWS_AS(group.add(none), std::invalid_argument);
    CHECK(group.size() == 0);
}

TEST_CASE("a callback that returns a non-zero std::error_code fails as if it had thrown", "[self][errors]") {
    CallbackGroup<void(int)> group({.metrics = true});
    std::vector<std::string> handled;
    std::vector<std::string> letters;
    group.set_error_handler([&](const cbm::Failure& f) { handled.push_back(f.name + ": " + f.what()); });
    group.set_dead_letter_handler([&](const cbm::DeadLetter& d) { letters.push_back(d.name); });
    group.add([](int x) { return x < 0 ? std::make_error_code(std::errc::invalid_argument) : std::error_code(); },
              {.name = "validate"});
    int attempts = 0;
    group.add(
        [&](Self&, int) {
            ++attempts;
            return attempts < 3 ? std::make_error_code(std::errc::resource_unavailable_try_again) : std::error_code();
        },
        {.name = "flaky", .retry = {.attempts = 3, .initial_backoff = std::chrono::nanoseconds(1), .jitter = 0.0}});

    const cbm::TriggerResult fine = group.trigger(1);  // validate passes; flaky succeeds on its third attempt
    CHECK(fine.ok());
    CHECK(attempts == 3);

    const cbm::TriggerResult bad = group.trigger(-1);
    CHECK(bad.failed == 1);
    REQUIRE(bad.failures.size() == 1);
    CHECK(bad.failures.front().code() == std::errc::invalid_argument);
    CHECK(handled == std::vector<std::string>{"validate: " + std::make_error_code(std::errc::invalid_argument).message()});
    CHECK(letters == std::vector<std::string>{"validate"});
    for (const auto& m : group.metrics().callbacks) {
        if (m.name == "validate") CHECK(m.failed == 1);
        if (m.name == "flaky") CHECK(m.retries == 2);
    }
}

TEST_CASE("Failure::code is empty for an error that is not a std::system_error", "[self][errors]") {
    CallbackGroup<void()> group;
    group.add([] { throw std::runtime_error("plain"); });
    const cbm::TriggerResult r = group.trigger();
    REQUIRE(r.failures.size() == 1);
    CHECK_FALSE(r.failures.front().code());
}
