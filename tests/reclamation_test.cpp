// Reclamation is scoped (detail/epoch.hpp, detail/thread_records.hpp): a
// thread parked inside one callback holds back only what it could still
// reach, removed callables go once their own invocations finish, and thread
// records are never leaked. Memory is counted in bytes live (a count, not a
// time): this program links live_bytes.cpp, which replaces the global
// operator new, so it is an executable of its own.
#include <cbm/callback_group.hpp>
#include <cbm/callback_registry.hpp>
#include <cbm/detail/block_cache.hpp>
#include <cbm/snapshot.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>
#include <thread>

#include <catch2/catch.hpp>

#include "live_bytes.hpp"
#include "test_support.hpp"

namespace {

using cbm_test::BlockingCallback;
using cbm_test::Counter;
using cbm_test::Tracked;
using cbm_test::Watchdog;

constexpr int kRemoved = 1000;
// A pass of reclamation runs once 64 callables are pending: at most about
// that many may still be alive, never all of them.
constexpr int kMostStillAlive = 128;

// Keeps one thread inside a callback of its own group until destroyed (only
// the first invocation parks; later triggers of the group pass through).
class ParkedTrigger {
public:
    ParkedTrigger() {
        group_.add([this] {
            if (!parked_.exchange(true)) body_.run();
        });
        thread_ = std::thread([this] { group_.trigger(); });
        body_.wait_until_running();
    }
    ~ParkedTrigger() {
        body_.release();
        thread_.join();
    }
    cbm::CallbackGroup<void()>& group() { return group_; }

private:
    cbm::CallbackGroup<void()> group_;
    std::atomic<bool> parked_{false};
    BlockingCallback body_;
    std::thread thread_;
};

}  // namespace

TEST_CASE("a thread parked inside a callback of one group does not keep another group's removed callables alive",
          "[reclamation][race]") {
    const Watchdog watchdog("parked thread, another group");
    const ParkedTrigger parked;
    cbm::CallbackGroup<void()> other;
    Counter counter;
    for (int i = 0; i < kRemoved; ++i) {
        auto registration = other.add([tracked = Tracked(counter)] {});
        other.trigger();
        registration.unregister_nowait();
    }
    CHECK(counter.alive() <= kMostStillAlive);
    CHECK(counter.errors.load() == 0);
}

TEST_CASE("a thread parked inside one callback does not keep the other removed callables of its group alive",
          "[reclamation][race]") {
    const Watchdog watchdog("parked thread, same group");
    ParkedTrigger parked;
    Counter counter;
    for (int i = 0; i < kRemoved; ++i) {
        auto registration = parked.group().add([tracked = Tracked(counter)] {});
        parked.group().trigger();
        registration.unregister_nowait();
    }
    CHECK(counter.alive() <= kMostStillAlive);
    CHECK(counter.errors.load() == 0);
}

TEST_CASE("a thread parked inside a callback of a group does not hold back the memory of transient registry keys",
          "[reclamation][race]") {
    const Watchdog watchdog("parked thread, transient keys");
    const ParkedTrigger parked;
    cbm::CallbackRegistry<int, void()> registry;
    registry.add(-1, [] {});  // the registry itself stays
    constexpr int kKeys = 20'000;
    const std::int64_t before = cbm_test::live_bytes();
    for (int key = 0; key < kKeys; ++key) {
        auto registration = registry.add(key, [] {});
        registry.trigger(key);
        registration.unregister();
    }
    const std::int64_t growth = cbm_test::live_bytes() - before;
    INFO("live bytes grew by " << growth << " over " << kKeys << " transient keys");
    // Each transient key allocates a few hundred bytes (entry, link, array,
    // node); held back, that is megabytes. Reclaimed in passes, what is still
    // pending is a few hundred objects.
    CHECK(growth < 1'000'000);
}

TEST_CASE("a removed callable that a parked thread is still running goes once that invocation finishes",
          "[reclamation][race]") {
    const Watchdog watchdog("parked inside a removed callable");
    cbm::CallbackGroup<void()> group;
    Counter counter;
    BlockingCallback body;
    auto registration = group.add([&body, tracked = Tracked(counter)] { body.run(); });
    std::thread parked([&] { group.trigger(); });
    body.wait_until_running();
    registration.unregister_nowait();
    // Enough other removals to start reclamation passes while it runs.
    Counter others;
    for (int i = 0; i < kRemoved; ++i) group.add([tracked = Tracked(others)] {}).unregister_nowait();
    CHECK(counter.alive() == 1);  // still running: never destroyed under it
    CHECK(others.alive() <= kMostStillAlive);
    body.release();
    parked.join();
    for (int i = 0; i < kRemoved; ++i) group.add([tracked = Tracked(others)] {}).unregister_nowait();
    CHECK(counter.alive() == 0);
    CHECK(counter.errors.load() == 0);
}

namespace {

// Triggers a group and loads a Snapshot from its destructor, which runs at
// thread exit after cbm's own per-thread state may already be gone.
struct UsesCbmAtThreadExit {
    cbm::CallbackGroup<void()>* group;
    cbm::Snapshot<int>* snapshot;
    ~UsesCbmAtThreadExit() {
        group->trigger();
        const auto handle = snapshot->load();
        (void)handle;
    }
};

}  // namespace

TEST_CASE("threads whose thread_local destructors trigger or load a Snapshot leave no thread record behind",
          "[reclamation][race]") {
    const Watchdog watchdog("thread records");
    cbm::CallbackGroup<void()> group;
    std::atomic<int> calls{0};
    group.add([&] { calls.fetch_add(1); });
    cbm::Snapshot<int> snapshot(7);
    group.trigger();  // this thread's record exists before counting
    const std::uint32_t created_before = cbm::detail::g_records.created.load();
    const std::uint32_t live_before = cbm::detail::g_records.live.load();
    constexpr int kThreads = 200;
    for (int i = 0; i < kThreads; ++i) {
        std::thread([&, i] {
            thread_local UsesCbmAtThreadExit at_exit{&group, &snapshot};
            // Half the threads also use cbm before exiting, so that their
            // record is taken before the thread_local above is destroyed.
            if (i % 2 == 0) group.trigger();
        }).join();
    }
    CHECK(calls.load() == 1 + kThreads + kThreads / 2);
    // Each exited thread gave its record back; the next one took it again.
    CHECK(cbm::detail::g_records.created.load() - created_before <= 2);
    CHECK(cbm::detail::g_records.live.load() == live_before);
}

TEST_CASE("a Snapshot value stays pinned by a read handle whose loading thread has exited", "[reclamation][race]") {
    const Watchdog watchdog("moved read handle");
    Counter counter;
    {
        cbm::Snapshot<Tracked> snapshot{Tracked(counter)};
        cbm::Snapshot<Tracked>::ReadHandle handle;
        // The loading thread exits, so its record goes back to the pool with
        // the slot that pins the value still set.
        std::thread([&] { handle = snapshot.load(); }).join();
        snapshot.store(Tracked(counter));
        CHECK(counter.alive() == 2);  // the value the handle pins, and the current one
        CHECK(handle->alive());
    }
    CHECK(counter.alive() == 0);
    CHECK(counter.errors.load() == 0);
}

TEST_CASE("adding and unregistering one named callback 100,000 times keeps the metrics' memory flat",
          "[metrics][retention]") {
    cbm::CallbackGroup<void()> group(cbm::GroupOptions{.metrics = true});
    auto cycle = [&](int rounds) {
        for (int i = 0; i < rounds; ++i) {
            cbm::Registration r = group.add([] {}, {.name = "x"});
            r.unregister();
        }
    };
    cycle(1000);
    const std::int64_t before = cbm_test::live_bytes();
    cycle(100'000);
    const std::int64_t growth = cbm_test::live_bytes() - before;
    INFO("live bytes grew " << growth);
    REQUIRE(growth < 64 * 1024);
    REQUIRE(group.metrics().callbacks.size() == 1);
}

TEST_CASE("blocks of trigger_async's per-thread cache freed on other threads, also after their owner exited, "
          "all come back to the heap",
          "[race]") {
    using cbm::detail::BlockCache;
    const std::int64_t before = cbm_test::live_bytes();
    for (int round = 0; round < 20; ++round) {
        std::vector<void*> blocks;
        std::mutex m;
        std::vector<std::thread> owners;
        for (int t = 0; t < 3; ++t) {
            owners.emplace_back([&] {
                std::vector<void*> mine;
                for (int i = 0; i < 300; ++i) {
                    void* p = BlockCache::allocate(200);
                    std::memset(p, 0xab, 200);
                    mine.push_back(p);
                }
                for (int i = 0; i < 100; ++i) {  // some freed by their owner
                    BlockCache::deallocate(mine.back());
                    mine.pop_back();
                }
                std::lock_guard<std::mutex> lock(m);
                blocks.insert(blocks.end(), mine.begin(), mine.end());
            });
        }
        for (auto& t : owners) t.join();  // the owners are gone
        std::vector<std::thread> freers;
        for (int t = 0; t < 2; ++t) {
            freers.emplace_back([&, t] {
                for (std::size_t i = static_cast<std::size_t>(t); i < blocks.size(); i += 2) {
                    BlockCache::deallocate(blocks[i]);
                }
            });
        }
        for (auto& t : freers) t.join();
    }
    void* big = BlockCache::allocate(4096);  // beyond a block: plain operator new
    CHECK(cbm_test::live_bytes() > before);
    BlockCache::deallocate(big);
    // Every cache belonged to a thread that has exited, and every block came
    // back: all of it is freed (a double free would crash, or be reported by
    // the sanitizers).
    CHECK(cbm_test::live_bytes() == before);
}

TEST_CASE("after a burst of trigger_async's blocks freed on another thread, their owner keeps at most 256 of them",
          "[reclamation]") {
    using cbm::detail::BlockCache;
    constexpr std::size_t kBurst = 5000;
    std::int64_t cached_after_burst = 0;
    std::thread owner([&] {
        void* warm = BlockCache::allocate(200);  // the cache itself, made before the baseline
        BlockCache::deallocate(warm);
        const std::int64_t before = cbm_test::live_bytes();
        std::vector<void*> burst;
        for (std::size_t i = 0; i < kBurst; ++i) burst.push_back(BlockCache::allocate(200));
        std::thread freer([&] {
            for (void* p : burst) BlockCache::deallocate(p);
        });
        freer.join();
        burst.clear();
        burst.shrink_to_fit();
        // The owner's next allocation takes the stack back and frees the excess.
        for (int i = 0; i < 3; ++i) BlockCache::deallocate(BlockCache::allocate(200));
        cached_after_burst = cbm_test::live_bytes() - before;
    });
    owner.join();
    INFO("the owner kept " << cached_after_burst << " bytes of blocks");
    // 256 blocks, and a little for the threads' own bookkeeping (the burst
    // itself is 2.5 MB).
    CHECK(cached_after_burst <= static_cast<std::int64_t>(BlockCache::kMaxOwned * BlockCache::kBlockBytes) + 16 * 1024);
}

TEST_CASE("a block cache keeps what a burst needed, up to its most, for the next burst, and lets it go again once "
          "bursts stop",
          "[reclamation]") {
#if defined(CBM_BLOCK_CACHE_OFF)
    WARN("the block cache is off in this build (AddressSanitizer): blocks are plain operator new");
    return;
#endif
    // A small cache of its own: 8 blocks kept in the steady state, 64 at most after bursts.
    using Cache = cbm::detail::BasicBlockCache<256, 8, 64>;
    std::int64_t after_burst = 0;
    std::int64_t after_big_burst = 0;
    std::int64_t after_quiet = 0;
    std::int64_t baseline_growth = 0;
    std::thread owner([&] {
        Cache::deallocate(Cache::allocate(100));  // the cache itself, made before the baseline
        const std::int64_t before = cbm_test::live_bytes();
        auto burst = [](std::size_t n) {
            std::vector<void*> blocks;
            for (std::size_t i = 0; i < n; ++i) blocks.push_back(Cache::allocate(100));
            std::thread freer([&] {
                for (void* p : blocks) Cache::deallocate(p);
            });
            freer.join();
            Cache::deallocate(Cache::allocate(100));  // takes the stack back
        };
        burst(40);
        after_burst = cbm_test::live_bytes() - before;
        // The same burst again is served from the cache: nothing new is made.
        const std::int64_t before_second = cbm_test::live_bytes();
        burst(40);
        baseline_growth = cbm_test::live_bytes() - before_second;
        burst(500);  // beyond the most it keeps
        after_big_burst = cbm_test::live_bytes() - before;
        // One block at a time for a long while: it halves what it keeps until the steady bound.
        for (int i = 0; i < 64 * 8 * 8; ++i) Cache::deallocate(Cache::allocate(100));
        after_quiet = cbm_test::live_bytes() - before;
    });
    owner.join();
    const auto block = static_cast<std::int64_t>(Cache::kBlockBytes);
    INFO("kept after a burst of 40: " << after_burst << " bytes; after 500: " << after_big_burst
                                      << "; after quiet: " << after_quiet);
    // (The live-byte count moves by a block or so with the runtime: under
    // ThreadSanitizer one block less shows. Far above the steady 8 either way.)
    CHECK(after_burst >= 36 * block);  // kept for the next burst
    CHECK(baseline_growth == 0);
    CHECK(after_big_burst <= 64 * block + 16 * 1024);
    CHECK(after_big_burst >= 56 * block);
    CHECK(after_quiet <= 8 * block + 16 * 1024);
}
