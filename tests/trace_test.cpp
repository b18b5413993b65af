// Tests for cbm/trace.hpp: trace ids through contexts, triggers and after_func.
#include <cbm/callback_group.hpp>
#include <cbm/callback_registry.hpp>
#include <cbm/trace.hpp>

#include <catch2/catch.hpp>

#include <cstdio>
#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "test_support.hpp"

TEST_CASE("trace_id is empty on background and is the nearest id up the chain", "[trace]") {
    REQUIRE(cbm::trace_id(cbm::Context::background()).empty());
    REQUIRE(cbm::trace_id().empty());
    const cbm::Context outer = cbm::with_trace_id({}, "outer");
    auto [child, cancel] = cbm::with_cancel(outer);
    const cbm::Context inner = cbm::with_trace_id(child, "inner");
    REQUIRE(cbm::trace_id(child) == "outer");
    REQUIRE(cbm::trace_id(inner) == "inner");
    REQUIRE(cbm::trace_id(cbm::without_cancel(inner)) == "inner");
}

TEST_CASE("callbacks see the trigger's trace id, nested triggers their own, restored afterwards", "[trace]") {
    cbm::CallbackRegistry<std::string, void()> events;
    std::vector<std::string> log;
    events.add("payment", [&] { log.push_back("payment [" + std::string(cbm::trace_id()) + "]"); });
    events.add("order", [&] {
        log.push_back("order [" + std::string(cbm::trace_id()) + "]");
        events.trigger(cbm::current_context(), "payment");                       // same request
        events.trigger(cbm::with_trace_id(cbm::current_context(), "sub-1"), "payment");  // a child span
        log.push_back("order again [" + std::string(cbm::trace_id()) + "]");
    });
    events.trigger(cbm::with_trace_id({}, "req-42"), "order");
    events.trigger("order");  // no context: no id
    REQUIRE(log == std::vector<std::string>{"order [req-42]", "payment [req-42]", "payment [sub-1]",
                                            "order again [req-42]", "order []", "payment []", "payment [sub-1]",
                                            "order again []"});
    REQUIRE(cbm::trace_id().empty());
}

TEST_CASE("a callback triggered on another thread sees the trace id of its own trigger", "[trace][race]") {
    cbm::CallbackGroup<void(int)> group;
    std::atomic<int> mismatches{0};
    group.add([&](int i) {
        if (cbm::trace_id() != "t" + std::to_string(i)) mismatches.fetch_add(1);
    });
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            const cbm::Context ctx = cbm::with_trace_id({}, "t" + std::to_string(t));
            for (int i = 0; i < 1000; ++i) group.trigger(ctx, t);
        });
    }
    for (auto& t : threads) t.join();
    REQUIRE(mismatches.load() == 0);
}

TEST_CASE("an after_func's function runs under its context, so it sees the trace id", "[trace]") {
    auto [ctx, cancel] = cbm::with_cancel(cbm::with_trace_id({}, "req-7"));
    std::mutex mutex;
    std::string seen;
    std::atomic<bool> ran{false};
    auto stop = cbm::after_func(cbm::with_trace_id(ctx, "cleanup-of-req-7"), [&] {
        {
            std::lock_guard<std::mutex> lock(mutex);
            seen = std::string(cbm::trace_id());
        }
        ran = true;
    });
    cancel();
    REQUIRE(cbm_test::eventually([&] { return ran.load(); }));
    std::lock_guard<std::mutex> lock(mutex);
    REQUIRE(seen == "cleanup-of-req-7");
}

TEST_CASE("trace_id returns a std::string that prints as it is, empty without an id", "[trace]") {
    STATIC_REQUIRE(std::is_same_v<decltype(cbm::trace_id()), const std::string&>);
    CHECK(cbm::trace_id().empty());
    const cbm::Context ctx = cbm::with_trace_id(cbm::Context::background(), "req-7");
    char line[32];
    std::snprintf(line, sizeof line, "[%s]", cbm::trace_id(ctx).c_str());
    CHECK(std::string(line) == "[req-7]");
}
