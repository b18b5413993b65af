// Tests for cbm/track.hpp: member functions as callbacks, and callbacks
// tracked by weak_ptr.
#include <cbm/callback_group.hpp>
#include <cbm/callback_registry.hpp>
#include <cbm/track.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <latch>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

using cbm::CallbackGroup;
using cbm::CallbackState;
using cbm::Registration;

namespace {

struct Service {
    std::atomic<int> total{0};
    std::atomic<bool>* destroyed = nullptr;
    std::atomic<int>* misuse = nullptr;

    void on(int x) {
        if (destroyed != nullptr && destroyed->load()) misuse->fetch_add(1);
        total.fetch_add(x);
    }
    int peek(int x) const { return total.load() + x; }
    ~Service() {
        if (destroyed != nullptr) destroyed->store(true);
    }
};

}  // namespace

TEST_CASE("a member function registered with a pointer is called on that object", "[track]") {
    CallbackGroup<void(int)> group;
    Service svc;
    group.add(&Service::on, &svc);
    group.trigger(5);
    group.trigger(6);
    CHECK(svc.total.load() == 11);
}

TEST_CASE("a const member function is called on a const object, its value discarded", "[track]") {
    CallbackGroup<void(int)> group;
    const Service svc;
    CHECK(group.add(&Service::peek, &svc));
    CHECK(group.trigger(1).invoked == 1);
}

TEST_CASE("a null member or a null object is refused, and nothing is registered", "[track]") {
    CallbackGroup<void(int)> group;
    Service svc;
    void (Service::*none)(int) = nullptr;
    CHECK_THROWS_AS(group.add(none, &svc), std::invalid_argument);
    CHECK_THROWS_AS(group.add(&Service::on, static_cast<Service*>(nullptr)), std::invalid_argument);
    CHECK(group.size() == 0);
}

TEST_CASE("a member function tracked by weak_ptr is not called after its object died, and unregisters itself",
          "[track]") {
    CallbackGroup<void(int)> group;
    auto svc = std::make_shared<Service>();
    const Registration r = group.add(&Service::on, std::weak_ptr<Service>(svc));
    group.trigger(3);
    CHECK(svc->total.load() == 3);
    std::weak_ptr<Service> watch = svc;
    svc.reset();
    CHECK(watch.expired());  // the registration did not keep it alive
    CHECK(r.state() == CallbackState::registered);
    group.trigger(4);  // finds it gone
    CHECK(r.state() == CallbackState::unregistered);
    CHECK(group.size() == 0);
}

TEST_CASE("cbm::tracked binds any callable to an object's lifetime, in groups and registries", "[track]") {
    cbm::CallbackRegistry<std::string, void(int)> registry;
    auto owner = std::make_shared<int>(0);
    int calls = 0;
    registry.add("k", cbm::tracked(std::weak_ptr<int>(owner), [&](int x) { calls += x; }));
    registry.add("k", &Service::on, std::weak_ptr<Service>());  // never alive: gone at the first trigger
    registry.trigger("k", 2);
    CHECK(calls == 2);
    CHECK(registry.size("k") == 1);
    owner.reset();
    registry.trigger("k", 2);
    CHECK(calls == 2);
    CHECK(registry.size("k") == 0);
}

TEST_CASE("while threads trigger, the tracked object dies: no call runs on a destroyed object, and the callback "
          "unregisters itself",
          "[track][race]") {
    const cbm_test::Watchdog watchdog("tracked object race");
    for (int round = 0; round < 100; ++round) {
        CallbackGroup<void(int)> group;
        std::atomic<bool> destroyed{false};
        std::atomic<int> misuse{0};
        auto svc = std::make_shared<Service>();
        svc->destroyed = &destroyed;
        svc->misuse = &misuse;
        Registration r = group.add(&Service::on, std::weak_ptr<Service>(svc));
        std::latch start(3);
        std::atomic<bool> stop{false};
        std::vector<std::jthread> threads;
        for (int i = 0; i < 2; ++i) {
            threads.emplace_back([&] {
                start.arrive_and_wait();
                while (!stop.load()) group.trigger(1);
            });
        }
        start.arrive_and_wait();
        svc.reset();  // the last call holding it destroys it when it returns
        CHECK(cbm_test::eventually([&] { return r.state() == CallbackState::unregistered; }));
        r.unregister();
        stop.store(true);
        threads.clear();
        CHECK(destroyed.load());
        CHECK(misuse.load() == 0);
    }
}
