// Tests for cbm/registration.hpp: the handle types and the state machine.
#include <cbm/callback_group.hpp>
#include <cbm/registration.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <latch>
#include <memory>
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
