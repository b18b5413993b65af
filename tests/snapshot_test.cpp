// Tests for cbm/snapshot.hpp.
#include <cbm/snapshot.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <latch>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "test_support.hpp"

using cbm::Snapshot;
using cbm_test::Counter;
using cbm_test::Tracked;

namespace {
// Not default-constructible, and two fields a torn read would make differ.
struct Pair {
    Pair(long v, Counter& c) : a(v), b(v), tracked(c) {}
    long a;
    long b;
    Tracked tracked;
};
}  // namespace

TEST_CASE("load returns the stored value and store replaces it", "[snapshot]") {
    Snapshot<std::string> s{std::string("one")};
    REQUIRE(*s.load() == "one");
    s.store("two");
    REQUIRE(*s.load() == "two");
    s.emplace(3, 'x');
    REQUIRE(*s.load() == "xxx");
}

TEST_CASE("a read handle stays valid across stores", "[snapshot]") {
    Counter counter;
    Snapshot<Pair> s{std::in_place, 1, counter};
    auto handle = s.load();
    for (long v = 2; v < 50; ++v) s.emplace(v, counter);
    REQUIRE(handle->a == 1);
    REQUIRE(handle->tracked.alive());
    REQUIRE(s.load()->a == 49);
}

TEST_CASE("a replaced value is destroyed exactly once, as soon as no handle pins it", "[snapshot][lifetime]") {
    Counter counter;
    {
        Snapshot<Pair> s{std::in_place, 1, counter};
        REQUIRE(counter.alive() == 1);
        s.emplace(2, counter);
        REQUIRE(counter.alive() == 1);  // nothing pinned value 1: destroyed by store
        auto pin = s.load();
        s.emplace(3, counter);
        REQUIRE(counter.alive() == 2);  // value 2 is pinned
        REQUIRE(s.retired_count() == 1);
        pin.reset();
        REQUIRE(counter.alive() == 1);  // released: destroyed by the handle, not at destruction
        REQUIRE(s.retired_count() == 0);
    }
    REQUIRE(counter.alive() == 0);
    REQUIRE(counter.errors == 0);
}

TEST_CASE("a thread may hold many handles at once", "[snapshot]") {
    Snapshot<int> s{0};
    std::vector<Snapshot<int>::ReadHandle> handles;
    for (int i = 0; i < 40; ++i) {
        handles.push_back(s.load());
        s.store(i + 1);
    }
    for (int i = 0; i < 40; ++i) REQUIRE(*handles[static_cast<std::size_t>(i)] == i);
    handles.clear();
    REQUIRE(s.retired_count() == 0);
}

TEST_CASE("a handle may be released on another thread", "[snapshot]") {
    Counter counter;
    Snapshot<Pair> s{std::in_place, 1, counter};
    auto handle = s.load();
    s.emplace(2, counter);
    REQUIRE(counter.alive() == 2);
    std::thread([h = std::move(handle)]() mutable { h.reset(); }).join();
    REQUIRE(counter.alive() == 1);
}

TEST_CASE("readers never see a torn or destroyed value while writers store", "[snapshot][race]") {
    Counter counter;
    {
        Snapshot<Pair> s{std::in_place, 0, counter};
        constexpr int kReaders = 4;
        constexpr int kWriters = 2;
        constexpr int kStores = 2000;
        std::atomic<int> writers_done{0};
        std::atomic<int> violations{0};
        std::latch start(kReaders + kWriters);
        {
            std::vector<std::jthread> threads;
            for (int r = 0; r < kReaders; ++r) {
                threads.emplace_back([&] {
                    start.arrive_and_wait();
                    long last = -1;
                    std::vector<Snapshot<Pair>::ReadHandle> held;
                    while (writers_done.load() < kWriters) {
                        auto h = s.load();
                        if (h->a != h->b || !h->tracked.alive()) violations.fetch_add(1);
                        if (h->a < 0) violations.fetch_add(1);
                        last = h->a;
                        if (held.size() < 3) {
                            held.push_back(std::move(h));
                        } else {
                            held.erase(held.begin());
                        }
                    }
                    (void)last;
                });
            }
            for (int w = 0; w < kWriters; ++w) {
                threads.emplace_back([&, w] {
                    start.arrive_and_wait();
                    for (long i = 1; i <= kStores; ++i) s.emplace(i * kWriters + w, counter);
                    writers_done.fetch_add(1);
                });
            }
        }
        REQUIRE(violations.load() == 0);
        REQUIRE(s.retired_count() == 0);
        REQUIRE(counter.alive() == 1);
    }
    REQUIRE(counter.alive() == 0);
    REQUIRE(counter.errors == 0);
}

TEST_CASE("a value replaced while a reader was loading is freed once that reader lets go", "[snapshot][lifetime][race]") {
    for (int trial = 0; trial < 300; ++trial) {
        Snapshot<std::vector<int>> s{std::vector<int>(4, trial)};
        std::atomic<bool> stop{false};
        std::atomic<bool> started{false};
        std::thread reader([&] {
            while (!stop.load(std::memory_order_relaxed)) {
                auto h = s.load();
                started.store(true);
                (void)h->size();
            }
        });
        while (!started.load()) std::this_thread::yield();
        s.store(std::vector<int>(4, -trial));
        stop.store(true);
        reader.join();
        REQUIRE(s.retired_count() == 0);
    }
}
