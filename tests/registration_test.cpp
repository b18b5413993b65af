// Tests for cbm/registration.hpp: the handle types and the state machine.
#include <cbm/callback_group.hpp>
#include <cbm/registration.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <latch>
#include <memory>
#include <optional>
#include <thread>
#include <type_traits>
#include <vector>

#include "test_support.hpp"

using cbm::CallbackGroup;
using cbm::CallbackState;
using cbm::Registration;
using cbm::ScopedRegistration;
using cbm_test::eventually;
using cbm_test::Gate;

TEST_CASE("handle types have the documented copy and move rules", "[registration]") {
    STATIC_REQUIRE(std::is_copy_constructible_v<Registration>);
    STATIC_REQUIRE(std::is_nothrow_move_constructible_v<Registration>);
    STATIC_REQUIRE_FALSE(std::is_copy_constructible_v<ScopedRegistration>);
    STATIC_REQUIRE(std::is_nothrow_move_constructible_v<ScopedRegistration>);
    STATIC_REQUIRE(std::is_convertible_v<Registration, ScopedRegistration>);
}

TEST_CASE("a default-constructed handle is idle and unregisters nothing", "[registration][state]") {
    Registration r;
    REQUIRE(r.state() == CallbackState::idle);
    REQUIRE_FALSE(r.unregister());
    REQUIRE_FALSE(r.unregister_nowait());
    REQUIRE_FALSE(r);
    REQUIRE(r.name().empty());
}

TEST_CASE("the state goes registered, executing, unregistered", "[registration][state]") {
    CallbackGroup<void()> group;
    Registration r;
    CallbackState inside = CallbackState::idle;
    r = group.add([&] { inside = r.state(); });
    REQUIRE(r.state() == CallbackState::registered);
    group.trigger();
    REQUIRE(inside == CallbackState::executing);
    REQUIRE(r.state() == CallbackState::registered);
    REQUIRE(r.unregister());
    REQUIRE(r.state() == CallbackState::unregistered);
}

TEST_CASE("a callback blocked on another thread reads executing, and unregistered wins while it finishes", "[registration][state][race]") {
    CallbackGroup<void()> group;
    Gate entered, release;
    auto r = group.add([&] {
        entered.open();
        release.wait();
    });
    std::jthread runner([&] { group.trigger(); });
    entered.wait();
    REQUIRE(r.state() == CallbackState::executing);
    REQUIRE(r.unregister_nowait());
    REQUIRE(r.state() == CallbackState::unregistered);  // terminal, though still running
    release.open();
    runner.join();
    REQUIRE(r.state() == CallbackState::unregistered);
}

TEST_CASE("copies of a registration share one callback and only one unregister wins", "[registration][race]") {
    for (int round = 0; round < 200; ++round) {
        CallbackGroup<void()> group;
        auto r = group.add([] {});
        constexpr int kThreads = 4;
        std::vector<Registration> copies(kThreads, r);
        std::atomic<int> wins{0};
        std::latch start(kThreads);
        {
            std::vector<std::jthread> threads;
            for (int t = 0; t < kThreads; ++t) {
                threads.emplace_back([&, t] {
                    start.arrive_and_wait();
                    if (t % 2 == 0 ? copies[static_cast<std::size_t>(t)].unregister()
                                   : copies[static_cast<std::size_t>(t)].unregister_nowait()) {
                        wins.fetch_add(1);
                    }
                });
            }
        }
        REQUIRE(wins.load() == 1);
        REQUIRE(group.size() == 0);
    }
}

TEST_CASE("a registration that outlives its group reads unregistered and unregisters nothing", "[registration][lifetime]") {
    Registration r;
    {
        CallbackGroup<void()> group;
        r = group.add([] {}, {.name = "orphan"});
    }
    REQUIRE(r.state() == CallbackState::unregistered);
    REQUIRE_FALSE(r.unregister());
    REQUIRE_FALSE(r.unregister_nowait());
    REQUIRE(r.name() == "orphan");
}

TEST_CASE("a scoped registration unregisters when destroyed or reassigned", "[registration][scoped]") {
    CallbackGroup<void()> group;
    int runs = 0;
    Registration observer;
    {
        ScopedRegistration scoped = group.add([&] { ++runs; });
        observer = scoped.get();
        group.trigger();
        REQUIRE(observer.state() == CallbackState::registered);
    }
    REQUIRE(observer.state() == CallbackState::unregistered);
    group.trigger();
    REQUIRE(runs == 1);

    ScopedRegistration a = group.add([] {});
    Registration first = a.get();
    a = group.add([] {});
    REQUIRE(first.state() == CallbackState::unregistered);
    REQUIRE(group.size() == 1);
    Registration kept = a.release();
    REQUIRE_FALSE(a);
    REQUIRE(kept.state() == CallbackState::registered);
}

TEST_CASE("a scoped registration moved elsewhere unregisters once, at its final owner", "[registration][scoped]") {
    CallbackGroup<void()> group;
    Registration observer;
    std::vector<ScopedRegistration> owners;
    {
        ScopedRegistration scoped = group.add([] {});
        observer = scoped.get();
        owners.push_back(std::move(scoped));
    }
    REQUIRE(observer.state() == CallbackState::registered);
    owners.clear();
    REQUIRE(observer.state() == CallbackState::unregistered);
}

TEST_CASE("a blocked callback is skipped and counted as blocked until its last Blocker goes", "[registration][block]") {
    CallbackGroup<void()> group({.metrics = true});
    int calls = 0;
    const Registration r = group.add([&] { ++calls; }, {.name = "audit"});
    group.add([] {});
    {
        const cbm::Blocker first = r.block();
        cbm::Blocker second = r.block();
        CHECK(first.blocking());
        const cbm::TriggerResult res = group.trigger();
        CHECK(res.invoked == 1);
        CHECK(res.skipped == 1);
        CHECK(res.blocked == 1);
        CHECK(res.ok());
        second.unblock();
        CHECK_FALSE(second.blocking());
        CHECK(group.trigger().blocked == 1);  // `first` still blocks it
        CHECK(calls == 0);
        CHECK(r.state() == CallbackState::registered);
    }
    CHECK(group.trigger().blocked == 0);
    CHECK(calls == 1);
    const auto m = group.metrics();
    REQUIRE(m.callbacks.size() == 2);
    for (const auto& c : m.callbacks) {
        if (c.name == "audit") CHECK(c.skipped_blocked == 2);
    }
}

TEST_CASE("a moved Blocker keeps blocking, and an idle handle's Blocker blocks nothing", "[registration][block]") {
    CallbackGroup<void()> group;
    int calls = 0;
    const Registration r = group.add([&] { ++calls; });
    cbm::Blocker moved;
    {
        cbm::Blocker b = r.block();
        moved = std::move(b);
    }
    group.trigger();
    CHECK(calls == 0);
    moved = cbm::Blocker();  // assigning over a Blocker ends its block
    group.trigger();
    CHECK(calls == 1);
    const Registration idle;
    CHECK_FALSE(idle.block().blocking());
}

TEST_CASE("a blocked once callback is not claimed: it runs once after it is unblocked", "[registration][block]") {
    CallbackGroup<void()> group;
    int calls = 0;
    const Registration r = group.add([&] { ++calls; }, {.once = true});
    {
        const cbm::Blocker b = r.block();
        group.trigger();
        CHECK(r.state() == CallbackState::registered);
    }
    group.trigger();
    group.trigger();
    CHECK(calls == 1);
}

TEST_CASE("Blockers made and dropped on many threads never unblock a callback that another Blocker holds",
          "[registration][block][race]") {
    const cbm_test::Watchdog watchdog("blocker race");
    for (int round = 0; round < 50; ++round) {
        CallbackGroup<void()> group;
        std::atomic<int> calls{0};
        const Registration r = group.add([&] { calls.fetch_add(1); });
        std::optional<cbm::Blocker> held(r.block());  // alive throughout: the callback must never run
        std::atomic<bool> stop{false};
        std::latch start(5);
        std::vector<std::jthread> threads;
        for (int i = 0; i < 3; ++i) {
            threads.emplace_back([&] {
                start.arrive_and_wait();
                for (int k = 0; k < 300; ++k) {
                    const cbm::Blocker b = r.block();
                    cbm::Blocker c = r.block();
                    c.unblock();
                }
            });
        }
        for (int i = 0; i < 2; ++i) {
            threads.emplace_back([&] {
                start.arrive_and_wait();
                while (!stop.load()) group.trigger();
            });
        }
        threads[0].join();
        threads[1].join();
        threads[2].join();
        stop.store(true);
        threads.clear();
        CHECK(calls.load() == 0);
        held.reset();
        group.trigger();
        CHECK(calls.load() == 1);
    }
}
