// Tests for cbm/callback_registry.hpp.
#include <cbm/callback_registry.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <functional>
#include <string_view>
#include <type_traits>
#include <latch>
#include <malloc.h>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

using cbm::CallbackRegistry;
using cbm::CallbackState;
using cbm::Registration;
using cbm_test::Counter;
using cbm_test::BlockingCallback;
using cbm_test::Tracked;

namespace {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

struct Order {
    int total = 0;
};
}  // namespace

TEST_CASE("callbacks run only for the key they were added under", "[registry]") {
    CallbackRegistry<std::string, void(const Order&)> registry;
    int shipped = 0;
    int paid = 0;
    registry.add("order.shipped", [&](const Order& o) { shipped += o.total; });
    registry.add("order.paid", [&](const Order& o) { paid += o.total; });
    registry.add("order.paid", [&](const Order& o) { paid += o.total; });
    REQUIRE(registry.trigger("order.paid", Order{5}).invoked == 2);
    REQUIRE(paid == 10);
    REQUIRE(shipped == 0);
    REQUIRE(registry.size("order.paid") == 2);
    REQUIRE(registry.key_count() == 2);
}

TEST_CASE("triggering an unknown key creates nothing and invokes nothing", "[registry]") {
    CallbackRegistry<std::string, void(int)> registry;
    registry.add("known", [](int) {});
    auto r = registry.trigger("unknown", 1);
    REQUIRE(r.invoked == 0);
    REQUIRE(r.ok());
    REQUIRE(registry.key_count() == 1);
    REQUIRE_FALSE(registry.contains("unknown"));
}

TEST_CASE("a key disappears as soon as its last callback goes", "[registry]") {
    CallbackRegistry<int, void()> registry;
    auto a = registry.add(7, [] {});
    auto b = registry.add(7, [] {}, {.once = true});
    REQUIRE(registry.key_count() == 1);
    a.unregister();
    REQUIRE(registry.key_count() == 1);
    registry.trigger(7);  // the once callback runs and goes
    REQUIRE(registry.key_count() == 0);
    REQUIRE(registry.size(7) == 0);
    REQUIRE(b.state() == CallbackState::unregistered);
}

TEST_CASE("erase returns how many callbacks it removed and removes the key", "[registry]") {
    Counter counter;
    CallbackRegistry<std::string, void()> registry;
    auto kept = registry.add("a", [t = Tracked(counter)] {});
    registry.add("a", [t = Tracked(counter)] {});
    registry.add("b", [t = Tracked(counter)] {});
    REQUIRE(registry.erase("a") == 2);
    REQUIRE(registry.erase("a") == 0);
    REQUIRE(registry.erase("missing") == 0);
    REQUIRE(registry.key_count() == 1);
    REQUIRE(counter.alive() == 1);
    REQUIRE(kept.state() == CallbackState::unregistered);
    REQUIRE(registry.clear() == 1);
    REQUIRE(registry.key_count() == 0);
    REQUIRE(counter.alive() == 0);
}

TEST_CASE("adding an empty callable throws and creates no key", "[registry][input]") {
    CallbackRegistry<std::string, void(int)> registry;
    REQUIRE_THROWS_AS(registry.add("k", std::function<void(int)>{}), std::invalid_argument);
    void (*null_fn)(int) = nullptr;
    REQUIRE_THROWS_AS(registry.add("k", null_fn), std::invalid_argument);
    REQUIRE(registry.key_count() == 0);
    REQUIRE(registry.keys().empty());
}

TEST_CASE("a throwing hash leaves the registry unchanged", "[registry][input]") {
    struct PickyHash {
        std::size_t operator()(int k) const {
            if (k < 0) throw std::domain_error("negative key");
            return std::hash<int>{}(k);
        }
    };
    CallbackRegistry<int, void(), PickyHash> registry;
    REQUIRE_THROWS_AS(registry.add(-1, [] {}), std::domain_error);
    REQUIRE(registry.key_count() == 0);
    registry.add(1, [] {});
    REQUIRE(registry.trigger(1).invoked == 1);
}

TEST_CASE("the registry's error policy and handler apply to every key", "[registry][errors]") {
    CallbackRegistry<std::string, void()> registry{cbm::ErrorPolicy::stop};
    std::vector<std::string> reported;
    registry.set_error_handler([&](const cbm::Failure& f) { reported.push_back(f.name); });
    int ran = 0;
    registry.add("k", [] { throw 1; }, {.priority = 1, .name = "thrower"});
    registry.add("k", [&] { ++ran; });
    auto r = registry.trigger("k");
    REQUIRE(ran == 0);
    REQUIRE(r.failed == 1);
    REQUIRE(r.skipped == 1);
    REQUIRE(reported == std::vector<std::string>{"thrower"});
    REQUIRE(registry.error_policy() == cbm::ErrorPolicy::stop);
}

TEST_CASE("a registry trigger stops before the next callback once stop is requested", "[registry][stop]") {
    CallbackRegistry<int, void()> registry;
    std::stop_source source;
    int ran = 0;
    registry.add(1, [&] {
        ++ran;
        source.request_stop();
    });
    registry.add(1, [&] { ++ran; });
    auto r = registry.trigger(source.get_token(), 1);
    REQUIRE(ran == 1);
    REQUIRE(r.stopped);
    REQUIRE(r.skipped == 1);
}

TEST_CASE("a callback may add, erase and trigger keys of its own registry", "[registry][reentrancy]") {
    CallbackRegistry<int, void(int)> registry;
    std::vector<int> seen;
    registry.add(0, [&](int depth) {
        seen.push_back(depth);
        if (depth < 3) {
            registry.add(depth + 1, [&](int d) { seen.push_back(100 + d); });
            registry.trigger(depth + 1, depth + 1);
            registry.trigger(0, depth + 1);
        } else {
            registry.erase(0);
        }
    });
    registry.trigger(0, 0);
    REQUIRE(registry.size(0) == 0);
    REQUIRE(seen == std::vector<int>{0, 101, 1, 102, 2, 103, 3});
}

TEST_CASE("adding and unregistering under a million distinct keys leaves no key and no memory behind", "[registry][memory]") {
    const int kKeys = kSanitized ? 100'000 : 1'000'000;
    CallbackRegistry<int, void()> registry;
    const std::size_t before = mallinfo2().uordblks;
    {
        std::vector<Registration> regs;
        regs.reserve(static_cast<std::size_t>(kKeys));
        for (int k = 0; k < kKeys; ++k) regs.push_back(registry.add(k, [] {}));
        REQUIRE(registry.key_count() == static_cast<std::size_t>(kKeys));
        for (auto& r : regs) r.unregister();
        REQUIRE(registry.key_count() == 0);
    }
    registry.clear();  // reclaims what no trigger can reach
    const std::size_t after = mallinfo2().uordblks;
    if (!kSanitized) {  // sanitizer allocators do not report through mallinfo
        INFO("heap in use before " << before << " after " << after);
        REQUIRE(after < before + 64 * 1024);
    }
}

TEST_CASE("erase waits for a callback of that key running on another thread", "[registry][race]") {
    CallbackRegistry<std::string, void()> registry;
    BlockingCallback blocking;
    auto reg = registry.add("slow", [&] { blocking.run(); });
    std::jthread runner([&] { registry.trigger("slow"); });
    std::size_t erased = 0;
    REQUIRE(blocking.operation_waited([&] { erased = registry.erase("slow"); },
                                      [&] { return reg.state() == CallbackState::unregistered; }));
    REQUIRE(erased == 1);
}

TEST_CASE("the registry's destructor waits for triggers and destroys every callable", "[registry][lifetime][race]") {
    Counter counter;
    auto registry = std::make_unique<CallbackRegistry<int, void()>>();
    BlockingCallback blocking;
    auto reg = registry->add(1, [&, t = Tracked(counter)] { blocking.run(); });
    registry->add(2, [t = Tracked(counter)] {});
    std::jthread runner([&] { registry->trigger(1); });
    REQUIRE(blocking.operation_waited([&] { registry.reset(); },
                                      [&] { return reg.state() == CallbackState::unregistered; }));
    REQUIRE(counter.alive() == 0);
    REQUIRE_FALSE(reg.unregister());
}

TEST_CASE("add, unregister, trigger, erase and clear race on a registry without leaks", "[registry][race]") {
    Counter counter;
    {
        CallbackRegistry<int, void(int)> registry;
        constexpr int kThreads = 6;
        constexpr int kRounds = 400;
        std::atomic<int> violations{0};
        std::atomic<long> calls{0};
        std::latch start(kThreads);
        std::vector<std::jthread> threads;
        for (int t = 0; t < kThreads; ++t) {
            threads.emplace_back([&, t] {
                std::mt19937 rng(static_cast<unsigned>(t) * 104729u + 3);
                std::vector<Registration> mine;
                start.arrive_and_wait();
                for (int i = 0; i < kRounds; ++i) {
                    const int key = static_cast<int>(rng() % 40);
                    switch (rng() % 10) {
                        case 0:
                        case 1:
                        case 2:
                            mine.push_back(registry.add(key, [&, tracked = Tracked(counter)](int) {
                                if (!tracked.alive()) violations.fetch_add(1);
                                calls.fetch_add(1, std::memory_order_relaxed);
                            }, {.once = rng() % 3 == 0}));
                            break;
                        case 3:
                            if (!mine.empty()) {
                                mine.back().unregister();
                                mine.pop_back();
                            }
                            break;
                        case 4:
                            if (!mine.empty()) {
                                mine.front().unregister_nowait();
                                mine.erase(mine.begin());
                            }
                            break;
                        case 5:
                            registry.erase(key);
                            break;
                        case 6:
                            if (i % 100 == 0) registry.clear();
                            break;
                        default:
                            registry.trigger(key, i);
                    }
                }
            });
        }
        threads.clear();
        REQUIRE(violations.load() == 0);
        REQUIRE(calls.load() > 0);
        registry.clear();
        REQUIRE(registry.key_count() == 0);
        REQUIRE(counter.alive() == 0);
    }
    REQUIRE(counter.errors == 0);
}

TEST_CASE("with cbm::string_hash a registry of string keys is triggered by string_view and literals", "[registry][lookup]") {
    CallbackRegistry<std::string, void(int&), cbm::string_hash, std::equal_to<>> registry;
    registry.add("order.shipped", [](int& hits) { ++hits; });
    int hits = 0;
    const std::string_view key = "order.shipped";
    REQUIRE(registry.trigger(key, hits).invoked == 1);
    REQUIRE(registry.trigger("order.shipped", hits).invoked == 1);
    REQUIRE(registry.trigger(std::string("order.shipped"), hits).invoked == 1);
    REQUIRE(registry.trigger(std::string_view("order.paid"), hits).invoked == 0);
    std::stop_source stopped;
    stopped.request_stop();
    REQUIRE(registry.trigger(stopped.get_token(), key, hits).stopped);
    REQUIRE(hits == 3);
}

TEST_CASE("random operations on a registry match a simple model", "[registry][model]") {
    struct Live {
        int key;
        int priority;
        Registration handle;
    };
    std::mt19937 rng(2026);
    for (int round = 0; round < 20; ++round) {
        CallbackRegistry<int, void(std::vector<int>&)> registry;
        std::map<int, Live> live;  // id -> callback; ids grow in registration order
        int next_id = 0;
        for (int step = 0; step < 400; ++step) {
            const int key = static_cast<int>(rng() % 6);
            switch (rng() % 6) {
                case 0:
                case 1: {
                    const int id = next_id++;
                    const int priority = static_cast<int>(rng() % 3);
                    auto handle = registry.add(key, [id](std::vector<int>& out) { out.push_back(id); },
                                               {.priority = priority});
                    live.emplace(id, Live{key, priority, std::move(handle)});
                    break;
                }
                case 2:
                    if (!live.empty()) {
                        auto it = std::next(live.begin(), static_cast<std::ptrdiff_t>(rng() % live.size()));
                        REQUIRE(it->second.handle.unregister());
                        live.erase(it);
                    }
                    break;
                case 3: {
                    std::vector<Registration> erased;
                    for (auto it = live.begin(); it != live.end();) {
                        if (it->second.key == key) {
                            erased.push_back(it->second.handle);
                            it = live.erase(it);
                        } else {
                            ++it;
                        }
                    }
                    REQUIRE(registry.erase(key) == erased.size());
                    for (auto& r : erased) REQUIRE(r.state() == CallbackState::unregistered);
                    break;
                }
                default: {
                    std::vector<std::pair<int, int>> entries;  // (priority, id)
                    for (auto& [id, l] : live) {
                        if (l.key == key) entries.emplace_back(l.priority, id);
                    }
                    std::stable_sort(entries.begin(), entries.end(), [](auto& x, auto& y) { return x.first > y.first; });
                    std::vector<int> expected;
                    for (auto& e : entries) expected.push_back(e.second);
                    std::vector<int> seen;
                    REQUIRE(registry.trigger(key, seen).invoked == expected.size());
                    REQUIRE(seen == expected);
                }
            }
            std::map<int, std::size_t> sizes;
            for (auto& [id, l] : live) ++sizes[l.key];
            REQUIRE(registry.key_count() == sizes.size());
            for (int k = 0; k < 6; ++k) REQUIRE(registry.size(k) == (sizes.count(k) ? sizes[k] : 0u));
        }
    }
}

TEST_CASE("registry trigger(ctx, key) stops once ctx is canceled and exposes ctx as current_context()",
          "[registry][context]") {
    static const cbm::ContextKey<int> user{"user"};
    cbm::CallbackRegistry<std::string, void(), cbm::string_hash, std::equal_to<>> registry;
    auto [ctx, cancel] = cbm::with_cancel(cbm::with_value({}, user, 42));
    std::vector<int> seen;
    registry.add("login", [&, cancel = cancel] {
        seen.push_back(*cbm::current_context().value(user));
        cancel();
    });
    registry.add("login", [&] { seen.push_back(-1); });
    const cbm::TriggerResult first = registry.trigger(ctx, std::string("login"));
    REQUIRE(first.stopped);
    REQUIRE(first.skipped == 1);
    REQUIRE(seen == std::vector<int>{42});
    REQUIRE(registry.trigger(ctx, std::string_view("login")).invoked == 0);
    REQUIRE(cbm::current_context() == cbm::Context::background());
}

TEST_CASE("registry callbacks added with .context leave their key when the context is canceled",
          "[registry][context]") {
    cbm::CallbackRegistry<int, void()> registry;
    auto [ctx, cancel] = cbm::with_cancel({});
    int runs = 0;
    registry.add(1, [&] { ++runs; }, {.context = ctx});
    registry.add(2, [&] { ++runs; });
    REQUIRE(registry.key_count() == 2);
    cancel();
    REQUIRE(registry.key_count() == 1);
    registry.trigger(1);
    REQUIRE(runs == 0);
    cancel();
    Registration late = registry.add(3, [&] { ++runs; }, {.context = ctx});
    REQUIRE(late.state() == cbm::CallbackState::unregistered);
    REQUIRE(registry.key_count() == 1);
}

TEST_CASE("a registry with std::string keys takes std::string_view and literals for every key, by default",
          "[registry][keys]") {
    using Registry = cbm::CallbackRegistry<std::string, void(int)>;
    STATIC_REQUIRE(std::is_same_v<Registry, cbm::CallbackRegistry<std::string, void(int), cbm::string_hash, std::equal_to<>>>);
    Registry registry;
    int total = 0;
    registry.add("orders", [&](int x) { total += x; });
    registry.add(std::string("orders"), [&](int x) { total += 10 * x; });
    const std::string_view key = "orders";
    CHECK(registry.trigger(key, 1).invoked == 2);
    CHECK(registry.trigger("orders", 2).invoked == 2);
    CHECK(total == 33);
    CHECK(registry.size(key) == 2);
    CHECK(registry.contains("orders"));
    CHECK_FALSE(registry.contains(std::string_view("other")));
    CHECK(registry.erase(key) == 2);
    CHECK(registry.size("orders") == 0);
}
