// Tests for the rules of cbm's blocking waits (detail/unregister.hpp, as
// documented in registration.hpp and the README): unregister(), a
// ScopedRegistration's reset, clear() and erase() never wait for an
// invocation the calling thread is inside, and never deadlock on a wait
// cycle. Every test runs under a watchdog: a deadlock fails the program
// instead of hanging it.
#include <cbm/callback_group.hpp>
#include <cbm/callback_registry.hpp>
#include <cbm/registration.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <latch>
#include <memory>
#include <string>
#include <thread>

#include "test_support.hpp"

using cbm::CallbackGroup;
using cbm::CallbackRegistry;
using cbm::CallbackState;
using cbm::Registration;
using cbm::ScopedRegistration;
using cbm_test::Watchdog;

namespace {
constexpr int kRounds = 200;

// Runs `a` and `b` on two threads at once and joins both.
template <class A, class B>
void on_two_threads(A&& a, B&& b) {
    std::thread first(std::forward<A>(a));
    std::thread second(std::forward<B>(b));
    first.join();
    second.join();
}
}  // namespace

TEST_CASE("two threads inside one callback that both unregister it both return, and exactly one wins",
          "[blocking][race]") {
    const Watchdog watchdog("two threads unregister the callback they are both inside");
    CallbackGroup<void()> group;
    for (int round = 0; round < kRounds; ++round) {
        std::latch both_inside(2);
        std::atomic<int> wins{0};
        std::atomic<int> runs{0};
        Registration r;
        r = group.add([&] {
            runs.fetch_add(1);
            both_inside.arrive_and_wait();
            if (r.unregister()) wins.fetch_add(1);
        });
        on_two_threads([&] { group.trigger(); }, [&] { group.trigger(); });
        REQUIRE(runs.load() == 2);
        REQUIRE(wins.load() == 1);
        REQUIRE(r.state() == CallbackState::unregistered);
        group.trigger();  // no new invocation starts
        REQUIRE(runs.load() == 2);
    }
}

TEST_CASE("two scoped registrations of one callback, each reset inside it on its own thread, both return",
          "[blocking][race]") {
    const Watchdog watchdog("two threads reset scoped registrations of the callback they are inside");
    CallbackGroup<void(int)> group;
    for (int round = 0; round < kRounds; ++round) {
        std::latch both_inside(2);
        Registration r;
        ScopedRegistration owners[2];
        r = group.add([&](int who) {
            both_inside.arrive_and_wait();
            owners[who].reset();
        });
        owners[0] = ScopedRegistration(r);
        owners[1] = ScopedRegistration(r);
        on_two_threads([&] { group.trigger(0); }, [&] { group.trigger(1); });
        REQUIRE(r.state() == CallbackState::unregistered);
        REQUIRE_FALSE(owners[0]);
        REQUIRE_FALSE(owners[1]);
    }
}

TEST_CASE("a callback's own unregister racing clear() called from another invocation of it: both return",
          "[blocking][race]") {
    const Watchdog watchdog("unregister against clear from inside the same callback");
    CallbackGroup<void(int)> group;
    for (int round = 0; round < kRounds; ++round) {
        std::latch both_inside(2);
        std::atomic<int> removed_by_clear{-1};
        std::atomic<bool> unregister_won{false};
        Registration r;
        r = group.add([&](int who) {
            both_inside.arrive_and_wait();
            if (who == 0) {
                unregister_won.store(r.unregister());
            } else {
                removed_by_clear.store(static_cast<int>(group.clear()));
            }
        });
        on_two_threads([&] { group.trigger(0); }, [&] { group.trigger(1); });
        REQUIRE(r.state() == CallbackState::unregistered);
        REQUIRE((unregister_won.load() ? 1 : 0) + removed_by_clear.load() == 1);  // exactly one removed it
        REQUIRE(group.empty());
    }
}

TEST_CASE("a callback's own unregister racing erase() of its key called from another invocation: both return",
          "[blocking][race]") {
    const Watchdog watchdog("unregister against erase from inside the same callback");
    CallbackRegistry<std::string, void(int)> registry;
    for (int round = 0; round < kRounds; ++round) {
        std::latch both_inside(2);
        std::atomic<int> removed_by_erase{-1};
        std::atomic<bool> unregister_won{false};
        Registration r;
        r = registry.add("k", [&](int who) {
            both_inside.arrive_and_wait();
            if (who == 0) {
                unregister_won.store(r.unregister());
            } else {
                removed_by_erase.store(static_cast<int>(registry.erase("k")));
            }
        });
        on_two_threads([&] { registry.trigger("k", 0); }, [&] { registry.trigger("k", 1); });
        REQUIRE((unregister_won.load() ? 1 : 0) + removed_by_erase.load() == 1);
        REQUIRE_FALSE(registry.contains("k"));
    }
}

TEST_CASE("a wait cycle across two callbacks is cut: each unregisters the other from inside its own, both return",
          "[blocking][race]") {
    const Watchdog watchdog("callback A waits for B while B waits for A");
    CallbackGroup<void()> group_a;
    CallbackGroup<void()> group_b;
    for (int round = 0; round < kRounds; ++round) {
        std::latch both_inside(2);
        std::atomic<int> wins{0};
        Registration a;
        Registration b;
        a = group_a.add([&] {
            both_inside.arrive_and_wait();
            wins.fetch_add(b.unregister() ? 1 : 0);
        });
        b = group_b.add([&] {
            both_inside.arrive_and_wait();
            wins.fetch_add(a.unregister() ? 1 : 0);
        });
        on_two_threads([&] { group_a.trigger(); }, [&] { group_b.trigger(); });
        REQUIRE(wins.load() == 2);
        REQUIRE(a.state() == CallbackState::unregistered);
        REQUIRE(b.state() == CallbackState::unregistered);
    }
}

TEST_CASE("a wait cycle through three threads is cut as well", "[blocking][race]") {
    const Watchdog watchdog("three callbacks wait for each other in a ring");
    CallbackGroup<void(int)> group;
    for (int round = 0; round < kRounds / 4; ++round) {
        std::latch all_inside(3);
        Registration ring[3];
        std::atomic<int> wins{0};
        for (int i = 0; i < 3; ++i) {
            ring[i] = group.add(
                [&, i](int who) {
                    if (who != i) return;
                    all_inside.arrive_and_wait();
                    wins.fetch_add(ring[(i + 1) % 3].unregister() ? 1 : 0);
                },
                {.filter = [i](int who) { return who == i; }});
        }
        std::thread t0([&] { group.trigger(0); });
        std::thread t1([&] { group.trigger(1); });
        std::thread t2([&] { group.trigger(2); });
        t0.join();
        t1.join();
        t2.join();
        REQUIRE(wins.load() == 3);
        REQUIRE(group.empty());
    }
}

TEST_CASE("after a cut wait the callable is destroyed only once no thread runs it", "[blocking][race][lifetime]") {
    const Watchdog watchdog("lifetime of a callable whose wait was cut");
    CallbackGroup<void()> group_a;
    CallbackGroup<void()> group_b;
    for (int round = 0; round < kRounds; ++round) {
        cbm_test::Counter counter;
        std::atomic<int> dead_inside{0};  // a callable found destroyed while its invocation ran
        {
            std::latch both_inside(2);
            Registration a;
            Registration b;
            a = group_a.add([&, tracked = cbm_test::Tracked(counter)] {
                both_inside.arrive_and_wait();
                b.unregister();
                if (!tracked.alive()) dead_inside.fetch_add(1);
            });
            b = group_b.add([&, tracked = cbm_test::Tracked(counter)] {
                both_inside.arrive_and_wait();
                a.unregister();
                if (!tracked.alive()) dead_inside.fetch_add(1);
            });
            on_two_threads([&] { group_a.trigger(); }, [&] { group_b.trigger(); });
        }
        group_a.clear();  // also reclaims what no trigger can reach any more
        group_b.clear();
        REQUIRE(dead_inside.load() == 0);
        REQUIRE(counter.errors.load() == 0);
        REQUIRE(counter.alive() == 0);
    }
}

namespace {

// Starts `remove_first` and then `operation` on other threads while a
// callback is blocked on its own thread (`start_callback` triggers it), and
// returns whether the callback had finished when `operation` returned: true
// when the operation waited for it. The callback is released once the
// operation returns or 200 ms have passed (a bound on how long a wrong
// implementation gets to return early, not a synchronisation: a right one
// passes whatever the delay).
template <class Start, class RemoveFirst, class Operation>
bool waited_for_blocked_callback(cbm_test::BlockingCallback& blocking, Start&& start_callback,
                                 RemoveFirst&& remove_first, Operation&& operation) {
    std::thread callback_thread(std::forward<Start>(start_callback));
    blocking.wait_until_running();
    std::atomic<bool> first_done{false};
    std::thread first([&] {
        remove_first();
        first_done.store(true);
    });
    std::atomic<bool> operation_done{false};
    bool finished_on_return = false;
    std::thread second([&] {
        operation();
        finished_on_return = blocking.finished();
        operation_done.store(true);
    });
    cbm_test::eventually([&] { return operation_done.load(); }, std::chrono::milliseconds(200));
    blocking.release();
    second.join();
    first.join();
    callback_thread.join();
    return finished_on_return;
}

}  // namespace

TEST_CASE("a second clear() waits for a callback the first clear() took and that still runs elsewhere",
          "[blocking][race]") {
    const Watchdog watchdog("second clear");
    for (int round = 0; round < 20; ++round) {
        CallbackGroup<void()> group;
        cbm_test::BlockingCallback blocking;
        group.add([&] { blocking.run(); });
        std::atomic<bool> first_started{false};
        REQUIRE(waited_for_blocked_callback(
            blocking, [&] { group.trigger(); },
            [&] {
                first_started.store(true);
                group.clear();
            },
            [&] {
                cbm_test::eventually([&] { return first_started.load() && group.empty(); });
                group.clear();
            }));
    }
}

TEST_CASE("clear() waits for a callback unregistered without waiting, by unregister_nowait or its context",
          "[blocking][race]") {
    const Watchdog watchdog("clear after unregister_nowait");
    for (const bool by_context : {false, true}) {
        INFO((by_context ? "context canceled" : "unregister_nowait"));
        for (int round = 0; round < 20; ++round) {
            CallbackGroup<void()> group;
            cbm_test::BlockingCallback blocking;
            auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
            Registration r = group.add([&] { blocking.run(); }, {.context = ctx});
            REQUIRE(waited_for_blocked_callback(
                blocking, [&] { group.trigger(); },
                [&, cancel = cancel] {
                    if (by_context) {
                        cancel();
                    } else {
                        r.unregister_nowait();
                    }
                },
                [&] {
                    cbm_test::eventually([&] { return group.empty(); });
                    group.clear();
                }));
        }
    }
}

TEST_CASE("a second erase() of a key waits for a callback of it that still runs elsewhere", "[blocking][race]") {
    const Watchdog watchdog("second erase");
    for (int round = 0; round < 20; ++round) {
        CallbackRegistry<std::string, void()> registry;
        cbm_test::BlockingCallback blocking;
        Registration r = registry.add("k", [&] { blocking.run(); });
        registry.add("other", [] {});
        REQUIRE(waited_for_blocked_callback(
            blocking, [&] { registry.trigger("k"); }, [&] { r.unregister_nowait(); },
            [&] {
                cbm_test::eventually([&] { return !registry.contains("k"); });
                registry.erase("k");
            }));
        REQUIRE(registry.contains("other"));
    }
}

TEST_CASE("erase() of another key does not wait for a callback removed from this one", "[blocking][race]") {
    const Watchdog watchdog("erase of another key");
    CallbackRegistry<std::string, void()> registry;
    cbm_test::BlockingCallback blocking;
    Registration r = registry.add("k", [&] { blocking.run(); });
    registry.add("other", [] {});
    std::thread callback_thread([&] { registry.trigger("k"); });
    blocking.wait_until_running();
    r.unregister_nowait();
    REQUIRE(registry.erase("other") == 1);  // returns while "k"'s callback still runs
    REQUIRE_FALSE(blocking.finished());
    blocking.release();
    callback_thread.join();
}

TEST_CASE("a blocking unregister in a group other threads keep triggering returns only once the callback runs "
          "nowhere, and destroys it (the write-heavy mode, entered, left and entered again)",
          "[blocking][race][lifetime]") {
    const Watchdog watchdog("write-heavy mode");
    CallbackGroup<void()> group;
    for (int i = 0; i < 8; ++i) group.add([] {});
    cbm_test::Counter counter;
    std::atomic<int> late_runs{0};
    std::atomic<long> emits{0};
    // Adds and unregisters `pairs` callbacks, checking after each unregister
    // that it runs nowhere and that its callable is gone.
    auto churn = [&](int pairs, bool triggered) {
        for (int i = 0; i < pairs; ++i) {
            auto removed = std::make_shared<std::atomic<bool>>(false);
            std::atomic<int> inside{0};
            auto registration = group.add([&inside, &late_runs, removed, tracked = cbm_test::Tracked(counter)] {
                inside.fetch_add(1);
                if (removed->load()) late_runs.fetch_add(1);
                for (int spin = 0; spin < 50; ++spin) cbm::detail::cpu_relax();
                inside.fetch_sub(1);
            });
            if (triggered && i % 2 == 0) {  // let the emitters reach it at least once
                const long seen = emits.load();
                cbm_test::eventually([&] { return emits.load() > seen + 2; });
            }
            registration.unregister();
            removed->store(true);
            REQUIRE(inside.load() == 0);
            REQUIRE(counter.alive() == 0);
        }
    };
    // Runs `body` while two threads trigger the group.
    auto while_triggered = [&](auto&& body) {
        std::atomic<bool> stop{false};
        auto emitter = [&] {
            while (!stop.load(std::memory_order_relaxed)) {
                group.trigger();
                emits.fetch_add(1, std::memory_order_relaxed);
            }
        };
        std::thread first(emitter);
        std::thread second(emitter);
        body();
        stop.store(true);
        first.join();
        second.join();
    };
    const bool membarrier = cbm::detail::ensure_barrier_mode() == cbm::detail::BarrierMode::membarrier;

    // Whether settles succeed depends on scheduling (a trigger preempted
    // inside makes them time out, and the group then leaves the mode), so
    // only entering and leaving are checked, never how often it paid off.
    const std::uint64_t entries_before = cbm::detail::g_fast_mode_entries.load();
    const std::uint64_t exits_before = cbm::detail::g_fast_mode_exits.load();
    while_triggered([&] { churn(2'000, true); });
    if (membarrier) CHECK(cbm::detail::g_fast_mode_entries.load() > entries_before);  // the mode engaged

    churn(1'100, false);  // quiet: the group leaves the mode
    CHECK(cbm::detail::g_fast_mode_entries.load() - entries_before ==
          cbm::detail::g_fast_mode_exits.load() - exits_before);

    while_triggered([&] { churn(2'000, true); });  // and may enter it again
    CHECK(late_runs.load() == 0);
    CHECK(counter.errors.load() == 0);
}
