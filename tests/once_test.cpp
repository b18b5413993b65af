// Tests for cbm/once.hpp.
#include <cbm/once.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <functional>
#include <latch>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "test_support.hpp"

using cbm::Once;
using cbm::OnceValue;
using cbm_test::BlockingCallback;
using cbm_test::Counter;
using cbm_test::eventually;
using cbm_test::Tracked;

TEST_CASE("a Once runs its function once, and done() reports it", "[once]") {
    Once once;
    int runs = 0;
    REQUIRE_FALSE(once.done());
    once.call([&] { ++runs; });
    once.call([&] { ++runs; });
    REQUIRE(runs == 1);
    REQUIRE(once.done());
}

TEST_CASE("a Once called from 16 threads at once runs once and every caller sees its effect", "[once][race]") {
    for (int round = 0; round < 100; ++round) {
        Once once;
        std::atomic<int> runs{0};
        int value = 0;  // written by the one run, read by every caller after call()
        constexpr int kThreads = 16;
        std::atomic<int> saw_value{0};
        std::latch start(kThreads);
        {
            std::vector<std::jthread> threads;
            for (int t = 0; t < kThreads; ++t) {
                threads.emplace_back([&] {
                    start.arrive_and_wait();
                    once.call([&] {
                        runs.fetch_add(1);
                        value = 42;
                    });
                    if (value == 42) saw_value.fetch_add(1);
                });
            }
        }
        REQUIRE(runs.load() == 1);
        REQUIRE(saw_value.load() == kThreads);
    }
}

TEST_CASE("an exception leaves the Once not done, so the next call retries", "[once][errors]") {
    Once once;
    int attempts = 0;
    auto flaky = [&] {
        if (++attempts < 3) throw std::runtime_error("not yet");
    };
    REQUIRE_THROWS_WITH(once.call(flaky), "not yet");
    REQUIRE_FALSE(once.done());
    REQUIRE_THROWS_AS(once.call(flaky), std::runtime_error);
    REQUIRE_NOTHROW(once.call(flaky));
    REQUIRE(once.done());
    once.call(flaky);
    REQUIRE(attempts == 3);
}

TEST_CASE("calling a Once from inside its own function throws resource_deadlock_would_occur", "[once][errors]") {
    Once once;
    std::error_code inner;
    once.call([&] {
        try {
            once.call([] {});
        } catch (const std::system_error& e) {
            inner = e.code();
        }
    });
    REQUIRE(inner == std::errc::resource_deadlock_would_occur);
    REQUIRE(once.done());
}

TEST_CASE("reset makes the next call run again and waits for a run in progress", "[once][race]") {
    Once once;
    int runs = 0;
    once.call([&] { ++runs; });
    once.reset();
    REQUIRE_FALSE(once.done());
    once.call([&] { ++runs; });
    REQUIRE(runs == 2);

    Once slow;
    BlockingCallback blocking;
    std::jthread runner([&] { slow.call([&] { blocking.run(); }); });
    std::atomic<bool> reset_started{false};
    REQUIRE(blocking.operation_waited(
        [&] {
            reset_started.store(true);
            slow.reset();
        },
        [&] { return reset_started.load(); }));
}

TEST_CASE("Once rejects an empty callable with invalid_argument", "[once][input]") {
    Once once;
    void (*null_fn)() = nullptr;
    REQUIRE_THROWS_AS(once.call(null_fn), std::invalid_argument);
    REQUIRE_THROWS_AS(once.call(std::function<void()>{}), std::invalid_argument);
    REQUIRE_FALSE(once.done());
}

TEST_CASE("OnceValue computes once, caches the value and returns the same reference", "[once][value]") {
    OnceValue<std::string> config;
    int loads = 0;
    const std::string& a = config.get([&] {
        ++loads;
        return std::string("loaded");
    });
    const std::string& b = config.get([&] {
        ++loads;
        return std::string("again");
    });
    REQUIRE(&a == &b);
    REQUIRE(a == "loaded");
    REQUIRE(loads == 1);
    REQUIRE(config.has_value());
}

TEST_CASE("OnceValue retries after an exception and destroys its value exactly once", "[once][value][lifetime]") {
    Counter counter;
    {
        OnceValue<Tracked> value;
        REQUIRE_THROWS(value.get([&]() -> Tracked { throw std::runtime_error("x"); }));
        REQUIRE_FALSE(value.has_value());
        value.get([&] { return Tracked(counter); });
        REQUIRE(counter.alive() == 1);
        value.reset();
        REQUIRE(counter.alive() == 0);
        value.get([&] { return Tracked(counter); });
        REQUIRE(counter.alive() == 1);
    }
    REQUIRE(counter.alive() == 0);
    REQUIRE(counter.errors == 0);
}

TEST_CASE("OnceValue from many threads computes once", "[once][value][race]") {
    for (int round = 0; round < 50; ++round) {
        OnceValue<std::vector<int>> value;
        std::atomic<int> computations{0};
        std::atomic<int> wrong{0};
        std::latch start(8);
        {
            std::vector<std::jthread> threads;
            for (int t = 0; t < 8; ++t) {
                threads.emplace_back([&] {
                    start.arrive_and_wait();
                    const auto& v = value.get([&] {
                        computations.fetch_add(1);
                        return std::vector<int>(100, 7);
                    });
                    if (v.size() != 100 || v[99] != 7) wrong.fetch_add(1);
                });
            }
        }
        REQUIRE(computations.load() == 1);
        REQUIRE(wrong.load() == 0);
    }
}

TEST_CASE("once_func runs its function once and returns its value to every call", "[once][func]") {
    int runs = 0;
    auto f = cbm::once_func([&] { return ++runs * 10; });
    auto copy = f;
    REQUIRE(f() == 10);
    REQUIRE(copy() == 10);
    REQUIRE(runs == 1);
}

TEST_CASE("once_func rethrows the same exception on every call, as Go's OnceFunc re-panics", "[once][func][errors]") {
    int runs = 0;
    auto f = cbm::once_func([&]() -> int {
        ++runs;
        throw std::runtime_error("boom");
    });
    std::exception_ptr first;
    std::exception_ptr second;
    try {
        f();
    } catch (...) {
        first = std::current_exception();
    }
    try {
        f();
    } catch (...) {
        second = std::current_exception();
    }
    REQUIRE(runs == 1);
    REQUIRE(first != nullptr);
    REQUIRE(first == second);
}

TEST_CASE("once_func releases its function and captures right after the one run", "[once][func][lifetime]") {
    Counter counter;
    auto f = cbm::once_func([t = Tracked(counter)] { (void)t; });
    REQUIRE(counter.alive() == 1);
    f();
    REQUIRE(counter.alive() == 0);
    f();
    REQUIRE(counter.errors == 0);
}

TEST_CASE("once_func called from inside its own function throws resource_deadlock_would_occur", "[once][func][errors]") {
    std::function<void()> self;
    std::error_code inner;
    auto f = cbm::once_func([&] {
        try {
            self();
        } catch (const std::system_error& e) {
            inner = e.code();
        }
    });
    self = f;
    f();
    REQUIRE(inner == std::errc::resource_deadlock_would_occur);
}

TEST_CASE("once_func rejects an empty callable", "[once][func][input]") {
    REQUIRE_THROWS_AS(cbm::once_func(std::function<int()>{}), std::invalid_argument);
    int (*null_fn)() = nullptr;
    REQUIRE_THROWS_AS(cbm::once_func(null_fn), std::invalid_argument);
}

TEST_CASE("once_func from many threads runs once", "[once][func][race]") {
    for (int round = 0; round < 50; ++round) {
        std::atomic<int> runs{0};
        auto f = cbm::once_func([&] { return runs.fetch_add(1) + 1; });
        std::atomic<int> wrong{0};
        std::latch start(8);
        {
            std::vector<std::jthread> threads;
            for (int t = 0; t < 8; ++t) {
                threads.emplace_back([&, f] {
                    start.arrive_and_wait();
                    if (f() != 1) wrong.fetch_add(1);
                });
            }
        }
        REQUIRE(runs.load() == 1);
        REQUIRE(wrong.load() == 0);
    }
}
