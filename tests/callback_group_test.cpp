// Tests for cbm/callback_group.hpp: the contract of issue 2, part C.
#include <cbm/callback_group.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <functional>
#include <latch>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

using cbm::CallbackGroup;
using cbm::CallbackState;
using cbm::ErrorPolicy;
using cbm::Registration;
using cbm_test::Counter;
using cbm_test::eventually;
using cbm_test::BlockingCallback;
using cbm_test::Gate;
using cbm_test::Tracked;

namespace {
struct Order {
    int total = 0;
};
}  // namespace

// ---------------------------------------------------------------- order

TEST_CASE("callbacks run by descending priority, then in registration order", "[group][order]") {
    CallbackGroup<void(std::vector<int>&)> group;
    group.add([](std::vector<int>& out) { out.push_back(1); });
    group.add([](std::vector<int>& out) { out.push_back(2); }, {.priority = 10});
    group.add([](std::vector<int>& out) { out.push_back(3); }, {.priority = -5});
    group.add([](std::vector<int>& out) { out.push_back(4); });
    group.add([](std::vector<int>& out) { out.push_back(5); }, {.priority = 10});
    group.add([](std::vector<int>& out) { out.push_back(6); }, {.priority = -5});
    std::vector<int> seen;
    group.trigger(seen);
    REQUIRE(seen == std::vector<int>{2, 5, 1, 4, 3, 6});
}

TEST_CASE("unregistering some callbacks leaves the order of the others unchanged", "[group][order]") {
    CallbackGroup<void(std::vector<int>&)> group;
    std::vector<Registration> regs;
    for (int i = 0; i < 12; ++i) {
        regs.push_back(group.add([i](std::vector<int>& out) { out.push_back(i); }, {.priority = i % 3}));
    }
    regs[2].unregister();
    regs[5].unregister();
    regs[9].unregister();
    regs[10].unregister();
    group.add([](std::vector<int>& out) { out.push_back(100); }, {.priority = 1});
    std::vector<int> seen;
    group.trigger(seen);
    REQUIRE(seen == std::vector<int>{8, 11, 1, 4, 7, 100, 0, 3, 6});
}

TEST_CASE("the order matches a stable sort by priority after random adds and unregisters", "[group][order]") {
    std::mt19937 rng(12345);
    for (int round = 0; round < 50; ++round) {
        CallbackGroup<void(std::vector<int>&)> group;
        std::vector<std::pair<int, int>> model;  // (priority, id) in registration order
        std::vector<std::pair<int, Registration>> live;
        for (int id = 0; id < 60; ++id) {
            const int priority = static_cast<int>(rng() % 7) - 3;
            live.emplace_back(id, group.add([id](std::vector<int>& out) { out.push_back(id); }, {.priority = priority}));
            model.emplace_back(priority, id);
            if (rng() % 3 == 0 && !live.empty()) {
                const std::size_t victim = rng() % live.size();
                const int victim_id = live[victim].first;
                live[victim].second.unregister();
                live.erase(live.begin() + static_cast<std::ptrdiff_t>(victim));
                model.erase(std::find_if(model.begin(), model.end(), [&](auto& e) { return e.second == victim_id; }));
            }
        }
        std::stable_sort(model.begin(), model.end(), [](auto& a, auto& b) { return a.first > b.first; });
        std::vector<int> expected;
        for (auto& e : model) expected.push_back(e.second);
        std::vector<int> seen;
        group.trigger(seen);
        REQUIRE(seen == expected);
    }
}

// ---------------------------------------------------------------- results, filter, once

TEST_CASE("the designated-initializer options of the issue compile and apply", "[group][filter]") {
    CallbackGroup<void(const Order&)> on_order;
    int audited = 0;
    auto reg = on_order.add([&](const Order& o) { audited += o.total; },
                            {.priority = 10, .once = false, .name = "audit",
                             .filter = [](const Order& o) { return o.total > 100; }});
    cbm::TriggerResult r = on_order.trigger(Order{200});
    REQUIRE(r.invoked == 1);
    REQUIRE(r.skipped == 0);
    r = on_order.trigger(Order{50});
    REQUIRE(r.invoked == 0);
    REQUIRE(r.skipped == 1);
    REQUIRE(audited == 200);
    REQUIRE(reg.name() == "audit");
}

TEST_CASE("a once callback runs once, then is unregistered", "[group][once]") {
    CallbackGroup<void()> group;
    int runs = 0;
    auto reg = group.add([&] { ++runs; }, {.once = true});
    group.trigger();
    group.trigger();
    REQUIRE(runs == 1);
    REQUIRE(reg.state() == CallbackState::unregistered);
    REQUIRE(group.size() == 0);
    REQUIRE_FALSE(reg.unregister());
}

TEST_CASE("a once callback whose filter rejects an event is not used up", "[group][once][filter]") {
    CallbackGroup<void(int)> group;
    std::vector<int> seen;
    group.add([&](int x) { seen.push_back(x); }, {.once = true, .filter = [](int x) { return x > 2; }});
    for (int x = 0; x < 6; ++x) group.trigger(x);
    REQUIRE(seen == std::vector<int>{3});
}

TEST_CASE("a once callback runs exactly once when many threads trigger at the same instant", "[group][once][race]") {
    constexpr int kThreads = 8;
    constexpr int kRounds = 200;
    for (int round = 0; round < kRounds; ++round) {
        CallbackGroup<void()> group;
        std::atomic<int> runs{0};
        auto reg = group.add([&] { runs.fetch_add(1); }, {.once = true});
        std::latch start(kThreads);
        std::vector<std::jthread> threads;
        for (int t = 0; t < kThreads; ++t) {
            threads.emplace_back([&] {
                start.arrive_and_wait();
                group.trigger();
            });
        }
        threads.clear();
        REQUIRE(runs.load() == 1);
        REQUIRE(reg.state() == CallbackState::unregistered);
    }
}

// ---------------------------------------------------------------- errors

TEST_CASE("exceptions of any type never escape trigger under collect and never stop the others", "[group][errors]") {
    CallbackGroup<void(int)> group;
    std::vector<std::string> handled;
    group.set_error_handler([&](const cbm::Failure& f) { handled.push_back(f.name); });
    int ran_after = 0;
    group.add([](int) { throw 42; }, {.priority = 3, .name = "int-thrower"});
    group.add([](int) { throw std::runtime_error("boom"); }, {.priority = 2, .name = "runtime"});
    group.add([&](int) { ++ran_after; }, {.priority = 1, .name = "fine"});
    cbm::TriggerResult r;
    REQUIRE_NOTHROW(r = group.trigger(1));
    REQUIRE(r.invoked == 3);
    REQUIRE(r.failed == 2);
    REQUIRE(ran_after == 1);
    REQUIRE_FALSE(r.ok());
    REQUIRE(r.failures.size() == 2);
    REQUIRE(r.failures[0].name == "int-thrower");
    REQUIRE_THROWS_AS(std::rethrow_exception(r.failures[0].error), int);
    REQUIRE(r.failures[1].name == "runtime");
    REQUIRE_THROWS_WITH(std::rethrow_exception(r.failures[1].error), "boom");
    REQUIRE(handled == std::vector<std::string>{"int-thrower", "runtime"});
}

TEST_CASE("a throwing filter counts as failed, not invoked", "[group][errors][filter]") {
    CallbackGroup<void(int)> group;
    int ran = 0;
    group.add([&](int) { ++ran; }, {.name = "filtered", .filter = [](int) -> bool { throw std::logic_error("f"); }});
    auto r = group.trigger(1);
    REQUIRE(ran == 0);
    REQUIRE(r.invoked == 0);
    REQUIRE(r.failed == 1);
    REQUIRE(r.failures.at(0).in_filter);
    REQUIRE(r.failures.at(0).name == "filtered");
}

TEST_CASE("the stop policy stops at the first failure and counts the rest as skipped", "[group][errors]") {
    CallbackGroup<void()> group{ErrorPolicy::stop};
    int ran = 0;
    group.add([&] { ++ran; });
    group.add([] { throw 1; });
    group.add([&] { ++ran; });
    group.add([&] { ++ran; });
    auto r = group.trigger();
    REQUIRE(ran == 1);
    REQUIRE(r.invoked == 2);
    REQUIRE(r.failed == 1);
    REQUIRE(r.skipped == 2);
    REQUIRE(r.stopped);
}

TEST_CASE("the rethrow policy runs every callback, then rethrows the first exception", "[group][errors]") {
    CallbackGroup<void()> group{ErrorPolicy::rethrow};
    int ran = 0;
    group.add([] { throw std::runtime_error("first"); });
    group.add([&] { ++ran; });
    group.add([] { throw std::runtime_error("second"); });
    group.add([&] { ++ran; });
    REQUIRE_THROWS_WITH(group.trigger(), "first");
    REQUIRE(ran == 2);
}

TEST_CASE("an error handler that throws does not stop the other callbacks", "[group][errors]") {
    CallbackGroup<void()> group;
    group.set_error_handler([](const cbm::Failure&) { throw std::runtime_error("handler"); });
    int ran = 0;
    group.add([] { throw 1; });
    group.add([&] { ++ran; });
    auto r = group.trigger();
    REQUIRE(ran == 1);
    REQUIRE(r.failed == 1);
}

// ---------------------------------------------------------------- stop token

TEST_CASE("a stop token stops the trigger before the next callback", "[group][stop]") {
    CallbackGroup<void()> group;
    std::stop_source source;
    int ran = 0;
    group.add([&] { ++ran; });
    group.add([&] {
        ++ran;
        source.request_stop();
    });
    group.add([&] { ++ran; });
    group.add([&] { ++ran; });
    auto r = group.trigger(source.get_token());
    REQUIRE(ran == 2);
    REQUIRE(r.invoked == 2);
    REQUIRE(r.skipped == 2);
    REQUIRE(r.stopped);
    auto again = group.trigger(source.get_token());
    REQUIRE(again.invoked == 0);
    REQUIRE(again.skipped == 4);
}

// ---------------------------------------------------------------- snapshot semantics, re-entrancy

TEST_CASE("a callback added during a trigger is not run by that trigger", "[group][snapshot]") {
    CallbackGroup<void()> group;
    int late_runs = 0;
    std::vector<Registration> added;
    group.add([&] { added.push_back(group.add([&] { ++late_runs; }, {.priority = -1})); });
    group.trigger();
    REQUIRE(late_runs == 0);
    group.trigger();
    REQUIRE(late_runs == 1);
}

TEST_CASE("a callback unregistered during a trigger before being reached is not run", "[group][snapshot]") {
    CallbackGroup<void()> group;
    Registration victim;
    int victim_runs = 0;
    group.add([&] { REQUIRE(victim.unregister()); }, {.priority = 1});
    victim = group.add([&] { ++victim_runs; });
    auto r = group.trigger();
    REQUIRE(victim_runs == 0);
    REQUIRE(r.invoked == 1);
}

TEST_CASE("callbacks cleared during a trigger before being reached are not run", "[group][snapshot]") {
    CallbackGroup<void()> group;
    int later_runs = 0;
    group.add([&] { REQUIRE(group.clear() == 3); }, {.priority = 1});
    group.add([&] { ++later_runs; });
    group.add([&] { ++later_runs; });
    group.trigger();
    REQUIRE(later_runs == 0);
    REQUIRE(group.empty());
}

TEST_CASE("a callback may trigger, add to and unregister from its own group", "[group][reentrancy]") {
    CallbackGroup<void(int)> group;
    int depth_reached = 0;
    Registration self;
    self = group.add([&](int depth) {
        depth_reached = std::max(depth_reached, depth);
        if (depth < 40) group.trigger(depth + 1);  // deeper than one chunk of levels
        if (depth == 0) {
            auto extra = group.add([](int) {});
            REQUIRE(extra.unregister());
            REQUIRE(self.unregister());  // does not wait for itself
        }
    });
    group.trigger(0);
    REQUIRE(depth_reached == 40);
    REQUIRE(self.state() == CallbackState::unregistered);
    REQUIRE(group.trigger(0).invoked == 0);
}

// ---------------------------------------------------------------- bad input

TEST_CASE("adding an empty std::function or a null function pointer throws and registers nothing", "[group][input]") {
    CallbackGroup<void(int)> group;
    void (*null_fn)(int) = nullptr;
    REQUIRE_THROWS_AS(group.add(null_fn), std::invalid_argument);
    REQUIRE_THROWS_AS(group.add(std::function<void(int)>{}), std::invalid_argument);
    REQUIRE_THROWS_WITH(group.add(std::function<void(int)>{}), Catch::Contains("empty callable"));
    REQUIRE(group.size() == 0);
    REQUIRE(group.trigger(1).invoked == 0);
}

// ---------------------------------------------------------------- blocking unregister

TEST_CASE("unregister returns only after the callback finished running on another thread", "[group][unregister][race]") {
    for (int round = 0; round < 20; ++round) {
        CallbackGroup<void()> group;
        BlockingCallback blocking;
        auto reg = group.add([&] { blocking.run(); });
        std::jthread runner([&] { group.trigger(); });
        blocking.wait_until_running();
        REQUIRE(reg.state() == CallbackState::executing);
        bool won = false;
        // unregister() has begun once the state turned terminal; only then is the callback let go.
        REQUIRE(blocking.operation_waited([&] { won = reg.unregister(); },
                                          [&] { return reg.state() == CallbackState::unregistered; }));
        REQUIRE(won);
    }
}

TEST_CASE("an unregister that loses the race still waits for the running invocation", "[group][unregister][race]") {
    CallbackGroup<void()> group;
    Gate entered, release;
    std::atomic<bool> finished{false};
    auto reg = group.add([&] {
        entered.open();
        release.wait();
        finished.store(true);
    });
    std::jthread runner([&] { group.trigger(); });
    entered.wait();
    REQUIRE(reg.unregister_nowait());  // wins, does not wait
    REQUIRE_FALSE(finished.load());
    bool finished_when_returned = false;
    bool won = true;
    std::jthread loser([&] {
        won = reg.unregister();
        finished_when_returned = finished.load();
    });
    release.open();
    loser.join();
    REQUIRE_FALSE(won);
    REQUIRE(finished_when_returned);
}

TEST_CASE("unregister from inside the callback itself does not wait", "[group][unregister]") {
    CallbackGroup<void()> group;
    Registration reg;
    int runs = 0;
    reg = group.add([&] {
        ++runs;
        REQUIRE(reg.unregister());
        REQUIRE(reg.state() == CallbackState::unregistered);
    });
    group.trigger();
    group.trigger();
    REQUIRE(runs == 1);
}

TEST_CASE("a callback deep in another thread's nested triggers is waited for", "[group][unregister][race]") {
    CallbackGroup<void(int)> group;
    BlockingCallback blocking;
    auto recurse = group.add([&](int depth) {
        if (depth < 20) group.trigger(depth + 1);
    }, {.priority = 1});
    auto deep = group.add([&](int depth) {
        if (depth == 20) blocking.run();
    });
    std::jthread runner([&] { group.trigger(0); });
    REQUIRE(blocking.operation_waited([&] { deep.unregister(); },
                                      [&] { return deep.state() == CallbackState::unregistered; }));
}

TEST_CASE("clear waits for callbacks running on other threads", "[group][clear][race]") {
    CallbackGroup<void()> group;
    BlockingCallback blocking;
    auto reg = group.add([&] { blocking.run(); });
    std::jthread runner([&] { group.trigger(); });
    std::size_t cleared = 0;
    REQUIRE(blocking.operation_waited([&] { cleared = group.clear(); },
                                      [&] { return reg.state() == CallbackState::unregistered; }));
    REQUIRE(cleared == 1);
}

TEST_CASE("the group's destructor waits for another thread still inside trigger", "[group][lifetime][race]") {
    auto group = std::make_unique<CallbackGroup<void()>>();
    BlockingCallback blocking;
    auto reg = group->add([&] { blocking.run(); });
    std::jthread runner([&] { group->trigger(); });
    REQUIRE(blocking.operation_waited([&] { group.reset(); },
                                      [&] { return reg.state() == CallbackState::unregistered; }));
}

// ---------------------------------------------------------------- lifetimes

TEST_CASE("captured state is destroyed exactly once, right after a blocking unregister", "[group][lifetime]") {
    Counter counter;
    CallbackGroup<void()> group;
    auto reg = group.add([t = Tracked(counter)] { REQUIRE(t.alive()); });
    group.trigger();
    REQUIRE(counter.alive() == 1);
    reg.unregister();
    REQUIRE(counter.alive() == 0);
    REQUIRE(counter.errors == 0);
}

TEST_CASE("captured state is destroyed with its group at the latest", "[group][lifetime]") {
    Counter counter;
    Registration kept;
    {
        CallbackGroup<void()> group;
        kept = group.add([t = Tracked(counter)] {});
        group.add([t = Tracked(counter)] {});
        auto nowait = group.add([t = Tracked(counter)] {});
        nowait.unregister_nowait();
        group.add([t = Tracked(counter)] {}, {.once = true});
        group.trigger();
    }
    REQUIRE(counter.alive() == 0);
    REQUIRE(counter.errors == 0);
    REQUIRE(kept.state() == CallbackState::unregistered);
    REQUIRE_FALSE(kept.unregister());
}

TEST_CASE("clear destroys the captured state of every callback", "[group][lifetime]") {
    Counter counter;
    CallbackGroup<void()> group;
    for (int i = 0; i < 10; ++i) group.add([t = Tracked(counter)] {});
    REQUIRE(group.clear() == 10);
    REQUIRE(counter.alive() == 0);
}

TEST_CASE("a callable whose destructor unregisters another callback of the same group does not deadlock", "[group][lifetime][reentrancy]") {
    CallbackGroup<void()> group;
    auto other = std::make_shared<cbm::ScopedRegistration>(group.add([] {}));
    auto reg = group.add([other] {});
    other.reset();
    REQUIRE(reg.unregister());  // destroys the lambda, whose ScopedRegistration unregisters `other`
    REQUIRE(group.size() == 0);
}

// ---------------------------------------------------------------- the big race

TEST_CASE("add, unregister, trigger and clear race from many threads without leaks or double destruction", "[group][race]") {
    Counter counter;
    {
        CallbackGroup<void(int)> group;
        constexpr int kThreads = 6;
        constexpr int kRounds = 400;
        std::atomic<long> calls{0};
        std::atomic<int> violations{0};
        std::latch start(kThreads);
        std::vector<std::jthread> threads;
        for (int t = 0; t < kThreads; ++t) {
            threads.emplace_back([&, t] {
                std::mt19937 rng(static_cast<unsigned>(t) * 7919u + 1);
                std::vector<Registration> mine;
                start.arrive_and_wait();
                for (int i = 0; i < kRounds; ++i) {
                    switch (rng() % 8) {
                        case 0:
                        case 1:
                            mine.push_back(group.add(
                                [&calls, &violations, tracked = Tracked(counter)](int) {
                                    if (!tracked.alive()) violations.fetch_add(1);
                                    calls.fetch_add(1, std::memory_order_relaxed);
                                },
                                {.priority = static_cast<int>(rng() % 5) - 2, .once = rng() % 4 == 0}));
                            break;
                        case 2:
                            if (!mine.empty()) {
                                mine.back().unregister();
                                if (mine.back().state() != CallbackState::unregistered) violations.fetch_add(1);
                                mine.pop_back();
                            }
                            break;
                        case 3:
                            if (!mine.empty()) {
                                mine.front().unregister_nowait();
                                mine.erase(mine.begin());
                            }
                            break;
                        case 4:
                            if (i % 50 == 0) group.clear();
                            break;
                        default:
                            group.trigger(i);
                    }
                }
            });
        }
        threads.clear();
        group.clear();
        REQUIRE(violations.load() == 0);
        REQUIRE(calls.load() > 0);
        REQUIRE(counter.alive() == 0);
    }
    REQUIRE(counter.alive() == 0);
    REQUIRE(counter.errors == 0);
}

TEST_CASE("the state reads unregistered forever once it has read unregistered", "[group][state][race]") {
    for (int round = 0; round < 100; ++round) {
        CallbackGroup<void()> group;
        auto reg = group.add([] {});
        std::atomic<bool> stop{false};
        std::jthread trigger_thread([&] {
            while (!stop.load()) group.trigger();
        });
        std::jthread unregister_thread([&] { reg.unregister_nowait(); });
        bool seen_unregistered = false;
        for (int i = 0; i < 2000; ++i) {
            const CallbackState s = reg.state();
            if (seen_unregistered) REQUIRE(s == CallbackState::unregistered);
            if (s == CallbackState::unregistered) seen_unregistered = true;
        }
        unregister_thread.join();
        REQUIRE(reg.state() == CallbackState::unregistered);
        stop.store(true);
    }
}

TEST_CASE("under the stop policy a filtered callback that throws counts as invoked, a throwing filter does not", "[group][errors][filter]") {
    CallbackGroup<void()> group{ErrorPolicy::stop};
    group.add([] { throw 1; }, {.priority = 2, .filter = [] { return true; }});
    group.add([] {});
    auto r = group.trigger();
    REQUIRE(r.invoked == 1);
    REQUIRE(r.failed == 1);
    REQUIRE(r.skipped == 1);
    REQUIRE(r.stopped);

    CallbackGroup<void()> filters{ErrorPolicy::stop};
    filters.add([] {}, {.priority = 2, .filter = []() -> bool { throw 1; }});
    filters.add([] {});
    r = filters.trigger();
    REQUIRE(r.invoked == 0);
    REQUIRE(r.failed == 1);
    REQUIRE(r.skipped == 1);
}

TEST_CASE("replacing an error handler whose destructor sets the handler again does not deadlock", "[group][errors][reentrancy]") {
    CallbackGroup<void()> group;
    int destroyed = 0;
    std::shared_ptr<void> on_destroy(nullptr, [&](void*) {
        ++destroyed;
        group.set_error_handler({});
    });
    group.set_error_handler([on_destroy](const cbm::Failure&) {});
    on_destroy.reset();
    group.set_error_handler([](const cbm::Failure&) {});
    REQUIRE(destroyed == 1);
}

TEST_CASE("a once callback that throws under the stop policy is used up and stops the trigger", "[group][once][errors]") {
    CallbackGroup<void()> group{ErrorPolicy::stop};
    int later = 0;
    auto once = group.add([] { throw 1; }, {.priority = 1, .once = true});
    group.add([&] { ++later; });
    auto r = group.trigger();
    REQUIRE(r.stopped);
    REQUIRE(r.invoked == 1);
    REQUIRE(later == 0);
    REQUIRE(once.state() == CallbackState::unregistered);
    REQUIRE(group.size() == 1);
    group.trigger();
    REQUIRE(later == 1);
}

// ---------------------------------------------------------------- review regressions

TEST_CASE("unregistering a callback from inside itself keeps its captured state alive until it returns", "[group][lifetime][reentrancy]") {
    Counter counter;
    CallbackGroup<void()> group;
    auto self = std::make_shared<Registration>();
    bool alive_after_unregister = false;
    *self = group.add([self_weak = std::weak_ptr<Registration>(self), t = Tracked(counter), &alive_after_unregister] {
        if (auto reg = self_weak.lock()) reg->unregister();
        alive_after_unregister = t.alive();
    });
    group.trigger();
    REQUIRE(alive_after_unregister);
    REQUIRE(counter.alive() == 0);  // destroyed once the trigger returned
    REQUIRE(counter.errors == 0);
}

TEST_CASE("clearing the group from inside a callback keeps that callback's state alive until it returns", "[group][lifetime][reentrancy]") {
    Counter counter;
    CallbackGroup<void()> group;
    bool alive_after_clear = false;
    group.add([&group, t = Tracked(counter), &alive_after_clear] {
        group.clear();
        alive_after_clear = t.alive();
    });
    group.trigger();
    REQUIRE(alive_after_clear);
    REQUIRE(counter.alive() == 0);
    REQUIRE(counter.errors == 0);
}

TEST_CASE("the captured state of a once callback or an unregister_nowait goes without waiting for the group", "[group][lifetime]") {
    Counter counter;
    CallbackGroup<void()> group;
    group.add([] {});  // a permanent neighbour
    group.add([t = Tracked(counter)] {}, {.once = true});
    group.trigger();
    REQUIRE(counter.alive() == 0);
    auto r = group.add([t = Tracked(counter)] {});
    r.unregister_nowait();
    REQUIRE(counter.alive() == 0);
}

TEST_CASE("adding callbacks in ascending priority keeps the order and frees the replaced arrays", "[group][order][memory]") {
    CallbackGroup<void(std::vector<int>&)> group;
    constexpr int kCallbacks = 3000;
    for (int i = 0; i < kCallbacks; ++i) group.add([i](std::vector<int>& out) { out.push_back(i); }, {.priority = i});
    std::vector<int> seen;
    group.trigger(seen);
    REQUIRE(seen.size() == kCallbacks);
    REQUIRE(std::is_sorted(seen.rbegin(), seen.rend()));
}

// ---------------------------------------------------------------------------
// Contexts

namespace {
const cbm::ContextKey<std::string> request_id{"request_id"};
}

TEST_CASE("trigger(ctx) stops before the next callback once ctx is canceled, and says so", "[group][context]") {
    CallbackGroup<void()> group;
    auto [ctx, cancel] = cbm::with_cancel({});
    int second_runs = 0;
    group.add([cancel = cancel] { cancel(); });
    group.add([&] { ++second_runs; });
    group.add([&] { ++second_runs; });
    const cbm::TriggerResult result = group.trigger(ctx);
    REQUIRE(result.invoked == 1);
    REQUIRE(result.skipped == 2);
    REQUIRE(result.stopped);
    REQUIRE(second_runs == 0);
    // A canceled context runs nothing at all; background never stops.
    REQUIRE(group.trigger(ctx).invoked == 0);
    REQUIRE(group.trigger(cbm::Context::background()).invoked == 3);
}

TEST_CASE("while callbacks run, current_context() is the trigger's context, restored afterwards and when nested",
          "[group][context]") {
    CallbackGroup<void(int)> group;
    const cbm::Context outer = cbm::with_value({}, request_id, "outer");
    const cbm::Context inner = cbm::with_value({}, request_id, "inner");
    std::vector<std::string> seen;
    group.add([&](int depth) {
        const std::string* id = cbm::current_context().value(request_id);
        seen.push_back(id != nullptr ? *id : "none");
        if (depth == 0) {
            group.trigger(inner, 1);
            const std::string* again = cbm::current_context().value(request_id);
            seen.push_back(again != nullptr ? *again : "none");
        }
    });
    group.trigger(outer, 0);
    group.trigger(1);
    REQUIRE(seen == std::vector<std::string>{"outer", "inner", "outer", "none"});
    REQUIRE(cbm::current_context() == cbm::Context::background());
}

TEST_CASE("current_context() is restored when a callback throws", "[group][context]") {
    CallbackGroup<void()> group(ErrorPolicy::rethrow);
    const cbm::Context ctx = cbm::with_value({}, request_id, "abc");
    group.add([] { throw std::runtime_error("boom"); });
    REQUIRE_THROWS_AS(group.trigger(ctx), std::runtime_error);
    REQUIRE(cbm::current_context() == cbm::Context::background());
}

TEST_CASE("a callback added with .context is unregistered when that context is canceled", "[group][context]") {
    CallbackGroup<void()> group;
    auto [ctx, cancel] = cbm::with_cancel({});
    Counter counter;
    int runs = 0;
    Registration bound = group.add([&, t = Tracked(counter)] { ++runs; }, {.context = ctx});
    Registration unbound = group.add([&] { ++runs; });
    group.trigger();
    REQUIRE(runs == 2);
    cancel();
    REQUIRE(bound.state() == CallbackState::unregistered);
    REQUIRE(unbound.state() == CallbackState::registered);
    REQUIRE(group.size() == 1);
    group.trigger();
    REQUIRE(runs == 3);
    REQUIRE(eventually([&] { return counter.alive() == 0; }));  // the callable goes once no trigger can reach it
}

TEST_CASE("a callback added with an already canceled context is never registered", "[group][context]") {
    CallbackGroup<void()> group;
    auto [ctx, cancel] = cbm::with_cancel({});
    cancel();
    Counter counter;
    int runs = 0;
    Registration r = group.add([&, t = Tracked(counter)] { ++runs; }, {.name = "late", .context = ctx});
    REQUIRE(r.state() == CallbackState::unregistered);
    REQUIRE(r.name() == "late");
    REQUIRE(group.empty());
    REQUIRE(counter.alive() == 0);
    group.trigger();
    REQUIRE(runs == 0);
    REQUIRE_FALSE(r.unregister());
}

TEST_CASE("many short-lived callbacks bound to one long-lived context do not accumulate in it", "[group][context]") {
    CallbackGroup<void()> group;
    auto [ctx, cancel] = cbm::with_cancel({});
    for (int i = 0; i < 10'000; ++i) {
        Registration r = group.add([] {}, {.context = ctx});
        REQUIRE(r.unregister());
    }
    REQUIRE(cbm::detail::ContextAccess::canceler(ctx)->listener_count <= 32);
    cancel();
}

TEST_CASE("cancel racing with triggers and adds of bound callbacks leaves every bound callback unregistered",
          "[group][context][race]") {
    for (int round = 0; round < 100; ++round) {
        Counter counter;
        {
            CallbackGroup<void()> group;
            auto [ctx, cancel] = cbm::with_cancel({});
            std::atomic<bool> stop{false};
            std::atomic<int> runs{0};
            std::vector<Registration> bound;
            std::mutex bound_mutex;
            std::thread trigger_thread([&] {
                while (!stop.load()) group.trigger();
            });
            std::thread add_thread([&, ctx = ctx] {
                for (int i = 0; i < 20; ++i) {
                    Registration r = group.add([&runs, t = Tracked(counter)] { runs.fetch_add(1); }, {.context = ctx});
                    std::lock_guard<std::mutex> lock(bound_mutex);
                    bound.push_back(r);
                }
            });
            cancel();
            add_thread.join();
            stop = true;
            trigger_thread.join();
            REQUIRE(bound.size() == 20);
            for (Registration& r : bound) REQUIRE(r.state() == CallbackState::unregistered);
            REQUIRE(group.empty());
        }
        REQUIRE(counter.alive() == 0);
        REQUIRE(counter.errors.load() == 0);
    }
}

TEST_CASE("a callback bound to a context that is dropped without cancel stays registered and leaks nothing",
          "[group][context]") {
    CallbackGroup<void()> group;
    Counter counter;
    int runs = 0;
    Registration r;
    {
        auto [ctx, cancel] = cbm::with_cancel({});
        r = group.add([&, t = Tracked(counter)] { ++runs; }, {.context = ctx});
    }  // every handle of the context is gone: it can never be canceled
    group.trigger();
    REQUIRE(runs == 1);
    REQUIRE(r.state() == CallbackState::registered);
    REQUIRE(r.unregister());
    REQUIRE(counter.alive() == 0);
}

TEST_CASE("a callback that holds the only handle of its own binding context can be unregistered by that context",
          "[group][context]") {
    // On the heap: g++ 12 -O2 with ASan warns (falsely) that a local
    // std::stop_source "may be used uninitialized" in its own constructor.
    auto external = std::make_unique<std::stop_source>();
    CallbackGroup<void()> group;
    {
        auto [ctx, cancel] = cbm::with_stop_token({}, external->get_token());
        group.add([ctx = ctx] { (void)ctx.canceled(); }, {.context = ctx});
    }  // now the callable's captured copy is the last handle
    external->request_stop();  // unregisters the callback, whose destruction frees the context
    REQUIRE(group.empty());
}

TEST_CASE("ok() means everything ran and nothing failed: a trigger cut short by its context or token is not ok",
          "[group][result]") {
    CallbackGroup<void()> group;
    auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
    group.add([cancel = cancel] { cancel(); }, {.priority = 1});  // ends the trigger's context
    int later_runs = 0;
    group.add([&] { ++later_runs; });
    const cbm::TriggerResult cut = group.trigger(ctx);
    REQUIRE(cut.failed == 0);
    REQUIRE(cut.stopped);
    REQUIRE(cut.skipped == 1);
    REQUIRE_FALSE(cut.ok());
    REQUIRE(later_runs == 0);

    std::stop_source source;
    source.request_stop();
    REQUIRE_FALSE(group.trigger(source.get_token()).ok());

    // A callback's own filter skipping it is not "cut short".
    CallbackGroup<void(int)> filtered;
    filtered.add([](int) {}, {.filter = [](const int& x) { return x > 0; }});
    const cbm::TriggerResult skipped = filtered.trigger(-1);
    REQUIRE(skipped.skipped == 1);
    REQUIRE(skipped.ok());
    REQUIRE(filtered.trigger(1).ok());
}

TEST_CASE("Failure::what and cbm::describe give the message of any exception, nested ones included",
          "[group][errors]") {
    CHECK(cbm::describe(nullptr).empty());
    CHECK(cbm::describe(std::make_exception_ptr(std::runtime_error("boom"))) == "boom");
    CHECK(cbm::describe(std::make_exception_ptr(42)) == "unknown exception");
    std::exception_ptr nested;
    try {
        try {
            throw std::runtime_error("socket closed");
        } catch (...) {
            std::throw_with_nested(std::runtime_error("charge failed"));
        }
    } catch (...) {
        nested = std::current_exception();
    }
    CHECK(cbm::describe(nested) == "charge failed: socket closed");

    CallbackGroup<void()> group;
    group.add([] { throw std::invalid_argument("bad order"); }, {.name = "billing"});
    const cbm::TriggerResult r = group.trigger();
    REQUIRE(r.failures.size() == 1);
    CHECK(r.failures.front().what() == "bad order");
    CHECK(r.failures.front().name == "billing");
}
