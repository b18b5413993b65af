// A context tree is freed once nothing can reach it any more - no Context,
// CancelFunc, deadline timer, after_func or bound callback - also when it
// was never canceled; and whatever can still reach a node keeps it
// cancelable by its parent. Memory is counted in bytes live (live_bytes.cpp
// replaces the global operator new), so this is an executable of its own.
#include <cbm/callback_group.hpp>
#include <cbm/context.hpp>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "live_bytes.hpp"
#include "context_probe.hpp"
#include "test_support.hpp"

namespace {

using cbm::Context;
using cbm_test::children_held;
using cbm_test::Counter;
using cbm_test::eventually;
using cbm_test::live_bytes;
using cbm_test::Tracked;
using namespace std::chrono_literals;

const cbm::ContextKey<Tracked> tracked_key{"tracked"};

// Resident set size in bytes (/proc/self/statm), 0 where unreadable.
std::int64_t resident_bytes() {
    std::ifstream statm("/proc/self/statm");
    std::int64_t pages_total = 0;
    std::int64_t pages_resident = 0;
    if (!(statm >> pages_total >> pages_resident)) return 0;
    return pages_resident * static_cast<std::int64_t>(sysconf(_SC_PAGESIZE));
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif


}  // namespace

TEST_CASE("a million parent/child pairs dropped without cancel are freed: bytes live and RSS stay flat",
          "[context][lifetime]") {
    auto make_and_drop_pairs = [](int pairs) {
        for (int i = 0; i < pairs; ++i) {
            auto [parent, cancel_parent] = cbm::with_cancel({});
            auto [child, cancel_child] = cbm::with_cancel(parent);
            // Neither is canceled; both handles go here.
        }
    };
    make_and_drop_pairs(10'000);  // warm the allocator's caches
    const std::int64_t bytes_before = live_bytes();
    const std::int64_t rss_before = resident_bytes();
    make_and_drop_pairs(1'000'000);
    const std::int64_t bytes_growth = live_bytes() - bytes_before;
    const std::int64_t rss_growth = resident_bytes() - rss_before;
    std::printf("1,000,000 dropped pairs: bytes live grew %lld, RSS grew %lld KiB\n",
                static_cast<long long>(bytes_growth), static_cast<long long>(rss_growth / 1024));
    REQUIRE(bytes_growth < 4096);
    // Sanitizers quarantine freed memory, which RSS then shows.
    if (!kSanitized) REQUIRE(rss_growth < 8 * 1024 * 1024);
}

TEST_CASE("a dropped grandchild chain under a live parent is freed, node by node", "[context][lifetime]") {
    auto [root, cancel_root] = cbm::with_cancel({});
    Counter counter;
    const std::int64_t before = live_bytes();
    for (int i = 0; i < 10'000; ++i) {
        auto [child, cancel_child] = cbm::with_cancel(root);
        auto [grandchild, cancel_grandchild] = cbm::with_cancel(child);
        const Context valued = cbm::with_value(grandchild, tracked_key, Tracked(counter));
    }
    REQUIRE(counter.alive() == 0);
    REQUIRE(counter.errors.load() == 0);
    REQUIRE(children_held(root) == 0);
    REQUIRE(live_bytes() - before < 4096);
    REQUIRE_FALSE(root.canceled());
}

TEST_CASE("a dropped context with a deadline lives until its timer fires, then is freed", "[context][lifetime]") {
    auto [root, cancel_root] = cbm::with_cancel({});
    std::stop_token token;
    {
        auto [timed, cancel_timed] = cbm::with_timeout(root, 1ms);
        token = timed.done();
    }
    // The timer is a handle: the deadline still fires, and reaches the token.
    REQUIRE(eventually([&] { return token.stop_requested(); }));
    REQUIRE(eventually([&root = root] { return children_held(root) == 0; }));
}

TEST_CASE("a callback bound to a dropped child context is still unregistered when the parent is canceled",
          "[context][lifetime]") {
    auto [parent, cancel_parent] = cbm::with_cancel({});
    cbm::CallbackGroup<void()> group;
    Counter counter;
    cbm::Registration registration;
    {
        auto [child, cancel_child] = cbm::with_cancel(parent);
        registration = group.add([t = Tracked(counter)] {}, {.context = child});
        // The child's Context and CancelFunc go here; the binding keeps it.
    }
    REQUIRE(children_held(parent) == 1);
    REQUIRE(registration.state() == cbm::CallbackState::registered);
    cancel_parent();
    REQUIRE(registration.state() == cbm::CallbackState::unregistered);
    REQUIRE(counter.alive() == 0);
    REQUIRE(group.size() == 0);
}

TEST_CASE("a callback bound to a context and unregistered lets the dropped context go: 10,000 rounds stay flat",
          "[context][lifetime]") {
    auto [parent, cancel_parent] = cbm::with_cancel({});
    cbm::CallbackGroup<void()> group;
    auto bind_and_unregister = [&group, &parent = parent](int rounds) {
        for (int i = 0; i < rounds; ++i) {
            cbm::Registration registration;
            {
                auto [child, cancel_child] = cbm::with_cancel(parent);
                registration = group.add([] {}, {.context = child});
            }
            registration.unregister();
        }
    };
    bind_and_unregister(100);
    const std::int64_t before = live_bytes();
    bind_and_unregister(10'000);
    REQUIRE(children_held(parent) == 0);
    REQUIRE(live_bytes() - before < 16 * 1024);
}

TEST_CASE("a callback bound to a context lets it go when its group is destroyed", "[context][lifetime]") {
    auto [parent, cancel_parent] = cbm::with_cancel({});
    {
        cbm::CallbackGroup<void()> group;
        for (int i = 0; i < 100; ++i) {
            auto [child, cancel_child] = cbm::with_cancel(parent);
            group.add([] {}, {.context = child});
        }
        REQUIRE(children_held(parent) == 100);
    }
    REQUIRE(children_held(parent) == 0);
}

TEST_CASE("an after_func on a dropped child context still runs when the parent is canceled", "[context][lifetime]") {
    auto [parent, cancel_parent] = cbm::with_cancel({});
    std::atomic<bool> ran{false};
    {
        auto [child, cancel_child] = cbm::with_cancel(parent);
        cbm::after_func(child, [&ran] { ran.store(true); });
    }
    REQUIRE(children_held(parent) == 1);
    cancel_parent();
    REQUIRE(eventually([&] { return ran.load(); }));
    REQUIRE(eventually([&parent = parent] { return children_held(parent) == 0; }));
}

TEST_CASE("threads dropping children race a cancellation of their parent: every node freed once",
          "[context][lifetime][race]") {
    Counter counter;
    for (int round = 0; round < 200; ++round) {
        auto [parent, cancel_parent] = cbm::with_cancel({});
        constexpr int kThreads = 3;
        std::vector<std::vector<Context>> held(kThreads);
        for (auto& contexts : held) {
            for (int i = 0; i < 20; ++i) {
                contexts.push_back(cbm::with_value(cbm::with_cancel(parent).first, tracked_key, Tracked(counter)));
            }
        }
        std::atomic<int> ready{0};
        std::vector<std::thread> droppers;
        for (auto& contexts : held) {
            droppers.emplace_back([&ready, &contexts] {
                ready.fetch_add(1);
                while (ready.load() <= kThreads) {
                }
                contexts.clear();  // may reach zero while the parent's cancellation takes the child
            });
        }
        while (ready.load() < kThreads) {
        }
        ready.fetch_add(1);
        cancel_parent();
        for (std::thread& t : droppers) t.join();
        REQUIRE(children_held(parent) == 0);
    }
    REQUIRE(counter.alive() == 0);
    REQUIRE(counter.errors.load() == 0);
}
