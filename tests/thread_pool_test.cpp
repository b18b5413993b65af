// cbm::ThreadPool: growth and shrinking, the three overflow behaviours,
// drain, shutdown, errors, and executors that outlive their pool.
#include <cbm/thread_pool.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <set>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "test_support.hpp"

using namespace std::chrono_literals;
using cbm_test::eventually;
using cbm_test::Gate;

namespace {

// Fills every thread of `pool` with a task that waits for `gate`; returns
// once all of them run.
void occupy_threads(cbm::ThreadPool& pool, std::size_t threads, Gate& gate, std::atomic<int>& running) {
    auto ex = pool.executor();
    for (std::size_t i = 0; i < threads; ++i) {
        ex.execute([&] {
            ++running;
            gate.wait();
        });
    }
    REQUIRE(eventually([&] { return running.load() == static_cast<int>(threads); }));
}

// A pool of one thread and a queue of one: the thread is held by `gate`
// and the queue is full, so the next execute() meets the overflow policy.
struct FullPool {
    explicit FullPool(cbm::Overflow overflow)
        : pool({.min_threads = 1, .max_threads = 1, .queue_capacity = 1, .overflow = overflow}) {
        occupy_threads(pool, 1, gate, running);
        pool.executor().execute([] {});  // fills the queue
    }
    FullPool(const FullPool&) = delete;
    FullPool& operator=(const FullPool&) = delete;
    ~FullPool() { gate.open(); }

    Gate gate;
    std::atomic<int> running{0};
    cbm::ThreadPool pool;
};

}  // namespace

TEST_CASE("a task runs on a thread of the pool, not on the caller") {
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 1});
    std::atomic<std::thread::id> ran_on{};
    std::atomic<bool> in_pool{false};
    auto ex = pool.executor();
    ex.execute([&] {
        in_pool = ex.running_in_this_thread();
        ran_on = std::this_thread::get_id();
    });
    pool.drain();
    CHECK(ran_on.load() != std::this_thread::get_id());
    CHECK(ran_on.load() != std::thread::id{});
    CHECK(in_pool.load());
    CHECK_FALSE(ex.running_in_this_thread());
}

TEST_CASE("the pool grows from min to max threads while tasks wait, and shrinks back after idle_timeout") {
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 4, .idle_timeout = 20ms});
    CHECK(pool.metrics().threads == 1);
    Gate gate;
    std::atomic<int> running{0};
    occupy_threads(pool, 4, gate, running);
    CHECK(pool.metrics().threads == 4);
    CHECK(pool.metrics().busy == 4);
    // A fifth task waits: the pool is at max_threads.
    std::atomic<bool> fifth{false};
    pool.executor().execute([&] { fifth = true; });
    CHECK(pool.metrics().threads == 4);
    CHECK(pool.metrics().queued == 1);
    gate.open();
    pool.drain();
    CHECK(fifth.load());
    CHECK(pool.metrics().peak_threads == 4);
    // The three threads beyond min_threads exit once idle for idle_timeout.
    CHECK(eventually([&] { return pool.metrics().threads == 1; }));
    // And the pool grows again when needed (exited threads are joined).
    Gate second;
    std::atomic<int> running_again{0};
    occupy_threads(pool, 3, second, running_again);
    CHECK(pool.metrics().threads == 3);
    second.open();
}

TEST_CASE("a full queue with Overflow::reject throws queue_full, counts it, and keeps the task unrun") {
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 1, .queue_capacity = 1, .overflow = cbm::Overflow::reject});
    Gate gate;
    std::atomic<int> running{0};
    occupy_threads(pool, 1, gate, running);
    std::atomic<int> ran{0};
    pool.executor().execute([&] { ++ran; });  // fills the queue
    bool rejected = false;
    try {
        pool.executor().execute([&] { ran += 100; });
    } catch (const std::system_error& e) {
        rejected = e.code() == cbm::errc::queue_full;
        CHECK(std::string(e.what()).find("queue_capacity 1") != std::string::npos);
    }
    CHECK(rejected);
    CHECK(pool.metrics().rejected == 1);
    gate.open();
    pool.drain();
    CHECK(ran.load() == 1);
}

TEST_CASE("a full queue with Overflow::caller_runs runs the task on the calling thread") {
    FullPool full(cbm::Overflow::caller_runs);
    cbm::ThreadPool& pool = full.pool;
    Gate& gate = full.gate;
    std::thread::id ran_on{};
    pool.executor().execute([&] { ran_on = std::this_thread::get_id(); });
    CHECK(ran_on == std::this_thread::get_id());
    CHECK(pool.metrics().ran_on_caller == 1);
    gate.open();
}

TEST_CASE("a full queue with Overflow::block makes execute wait for room") {
    FullPool full(cbm::Overflow::block);
    cbm::ThreadPool& pool = full.pool;
    Gate& gate = full.gate;
    std::atomic<bool> returned{false};
    std::atomic<bool> ran{false};
    std::thread producer([&] {
        pool.executor().execute([&] { ran = true; });
        returned = true;
    });
    // The producer is inside execute(), waiting for room.
    REQUIRE(eventually([&] { return pool.metrics().blocked_producers == 1; }));
    CHECK_FALSE(returned.load());
    gate.open();
    producer.join();
    CHECK(returned.load());
    pool.drain();
    CHECK(ran.load());
}

TEST_CASE("a task that submits to its own full pool (Overflow::block) runs the new task itself: no deadlock") {
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 1, .queue_capacity = 1, .overflow = cbm::Overflow::block});
    auto ex = pool.executor();
    std::atomic<int> inner_ran{0};
    std::atomic<std::thread::id> outer_thread{};
    std::atomic<std::thread::id> inner_thread{};
    ex.execute([&] {
        outer_thread = std::this_thread::get_id();
        ex.execute([&] { ++inner_ran; });  // fills the queue (the only thread is this one)
        ex.execute([&] {                   // full: runs here
            inner_thread = std::this_thread::get_id();
            ++inner_ran;
        });
    });
    pool.drain();
    CHECK(inner_ran.load() == 2);
    CHECK(inner_thread.load() == outer_thread.load());
}

TEST_CASE("drain() waits until the queue is empty and no task runs") {
    cbm::ThreadPool pool({.min_threads = 2, .max_threads = 2});
    std::atomic<int> done{0};
    for (int i = 0; i < 100; ++i) {
        pool.executor().execute([&] {
            std::this_thread::yield();
            ++done;
        });
    }
    pool.drain();
    CHECK(done.load() == 100);
    const auto m = pool.metrics();
    CHECK(m.queued == 0);
    CHECK(m.busy == 0);
    CHECK(m.completed == 100);
}

TEST_CASE("drain() and shutdown() called from a task of the pool throw std::logic_error instead of deadlocking") {
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 1});
    std::atomic<int> logic_errors{0};
    pool.executor().execute([&] {
        try {
            pool.drain();
        } catch (const std::logic_error&) {
            ++logic_errors;
        }
        try {
            pool.shutdown();
        } catch (const std::logic_error&) {
            ++logic_errors;
        }
    });
    pool.drain();
    CHECK(logic_errors.load() == 2);
}

TEST_CASE("shutdown() runs every queued task, refuses new ones with executor_shut_down, and joins") {
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 1});
    Gate gate;
    std::atomic<int> running{0};
    occupy_threads(pool, 1, gate, running);
    std::atomic<int> ran{0};
    std::atomic<int> refused_inside{0};
    auto ex = pool.executor();
    for (int i = 0; i < 10; ++i) {
        ex.execute([&, ex] {
            ++ran;
            try {
                ex.execute([&] { ran += 1000; });  // submitted while shutting down: refused
            } catch (const std::system_error& e) {
                if (e.code() == cbm::errc::executor_shut_down) ++refused_inside;
            }
        });
    }
    std::thread closer([&] { pool.shutdown(); });
    REQUIRE(eventually([&] { return pool.metrics().shut_down; }));
    gate.open();
    closer.join();
    // Every queued task ran; none runs after shutdown returned.
    CHECK(ran.load() == 10);
    CHECK(refused_inside.load() == 10);
    CHECK(pool.metrics().threads == 0);
    bool refused = false;
    try {
        ex.execute([&] { ran += 1'000'000; });
    } catch (const std::system_error& e) {
        refused = e.code() == cbm::errc::executor_shut_down;
    }
    CHECK(refused);
    CHECK(ran.load() == 10);
    pool.shutdown();  // idempotent
}

TEST_CASE("an executor that outlives its pool refuses work with executor_shut_down") {
    std::optional<cbm::ThreadPool::Executor> ex;
    {
        cbm::ThreadPool pool({.min_threads = 1, .max_threads = 2});
        ex.emplace(pool.executor());
    }
    bool refused = false;
    try {
        ex->execute([] {});
    } catch (const std::system_error& e) {
        refused = e.code() == cbm::errc::executor_shut_down;
    }
    CHECK(refused);
}

TEST_CASE("a task that throws is counted and its exception reaches on_task_error") {
    std::atomic<int> reported{0};
    cbm::ThreadPool pool({.min_threads = 1,
                          .max_threads = 1,
                          .on_task_error = [&](std::exception_ptr e) {
                              try {
                                  std::rethrow_exception(e);
                              } catch (const std::runtime_error&) {
                                  ++reported;
                              }
                          }});
    pool.executor().execute([] { throw std::runtime_error("task failed"); });
    pool.executor().execute([] {});
    pool.drain();
    CHECK(reported.load() == 1);
    CHECK(pool.metrics().task_errors == 1);
    CHECK(pool.metrics().completed == 2);
}

TEST_CASE("bad ThreadPool options are refused with std::invalid_argument") {
    CHECK_THROWS_AS(cbm::ThreadPool({.max_threads = 0}), std::invalid_argument);
    CHECK_THROWS_AS(cbm::ThreadPool({.min_threads = 3, .max_threads = 2}), std::invalid_argument);
    CHECK_THROWS_AS(cbm::ThreadPool({.queue_capacity = 0}), std::invalid_argument);
    CHECK_THROWS_AS(cbm::ThreadPool({.idle_timeout = 0ms}), std::invalid_argument);
}

TEST_CASE("ThreadPool::Executor and cbm::AnyExecutor satisfy cbm::Executor") {
    STATIC_REQUIRE(cbm::Executor<cbm::ThreadPool::Executor>);
    STATIC_REQUIRE(cbm::Executor<cbm::AnyExecutor>);
    STATIC_REQUIRE(cbm::Executor<cbm::InlineExecutor>);
    STATIC_REQUIRE_FALSE(cbm::Executor<int>);
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 1});
    cbm::AnyExecutor any = pool.executor();
    REQUIRE(any.target<cbm::ThreadPool::Executor>() != nullptr);
    CHECK(*any.target<cbm::ThreadPool::Executor>() == pool.executor());
    std::atomic<bool> ran{false};
    any.execute([&] { ran = true; });
    pool.drain();
    CHECK(ran.load());
}

TEST_CASE("cbm::Task stores small functions inline, larger ones on the heap, and destroys each capture once",
          "[race]") {
    cbm_test::Counter counter;
    {
        cbm_test::Tracked small(counter);
        cbm::Task a([t = small] { (void)t; });
        struct Big {
            cbm_test::Tracked t;
            char pad[128];
        };
        cbm::Task b([big = Big{small, {}}] { (void)big; });
        cbm::Task c = std::move(b);
        CHECK_FALSE(static_cast<bool>(b));
        c();
        a();
    }
    CHECK(counter.alive() == 0);
    CHECK(counter.errors.load() == 0);
}

TEST_CASE("many producers, many tasks: every task runs exactly once and every capture is destroyed once", "[race]") {
    cbm_test::Counter counter;
    constexpr int kProducers = 4;
    constexpr int kTasks = 5000;
    std::vector<std::atomic<int>> runs(kProducers * kTasks);
    {
        cbm::ThreadPool pool({.min_threads = 1, .max_threads = 4, .queue_capacity = 64, .idle_timeout = 1ms});
        std::vector<std::thread> producers;
        for (int p = 0; p < kProducers; ++p) {
            producers.emplace_back([&, p] {
                auto ex = pool.executor();
                for (int i = 0; i < kTasks; ++i) {
                    ex.execute([&runs, index = p * kTasks + i, t = cbm_test::Tracked(counter)] { ++runs[index]; });
                }
            });
        }
        for (auto& t : producers) t.join();
        pool.drain();
        CHECK(pool.metrics().completed == static_cast<std::uint64_t>(kProducers * kTasks));
    }
    int wrong = 0;
    for (auto& r : runs) wrong += r.load() != 1;
    CHECK(wrong == 0);
    CHECK(counter.alive() == 0);
    CHECK(counter.errors.load() == 0);
}

TEST_CASE("a task that destroys its own ThreadPool: its thread finishes that task, then the ones still queued") {
    Gate queued;
    std::atomic<bool> destroyed{false};
    std::atomic<bool> later_ran{false};
    auto* pool = new cbm::ThreadPool({.min_threads = 1, .max_threads = 1});
    auto ex = pool->executor();
    ex.execute([&] {
        queued.wait();
        delete pool;  // from inside: this thread is not joined
        destroyed = true;
    });
    ex.execute([&] { later_ran = true; });
    queued.open();
    CHECK(eventually([&] { return destroyed.load() && later_ran.load(); }));
}

TEST_CASE("drain() and shutdown() from a task that a full pool ran on its caller throw std::logic_error") {
    FullPool full(cbm::Overflow::caller_runs);
    cbm::ThreadPool& pool = full.pool;
    Gate& gate = full.gate;
    int logic_errors = 0;
    pool.executor().execute([&] {  // runs here, on the caller
        try {
            pool.drain();
        } catch (const std::logic_error&) {
            ++logic_errors;
        }
        try {
            pool.shutdown();
        } catch (const std::logic_error&) {
            ++logic_errors;
        }
    });
    CHECK(logic_errors == 2);
    gate.open();
}

TEST_CASE("shutdown() returns only once the tasks its callers run (caller_runs) have finished") {
    FullPool full(cbm::Overflow::caller_runs);
    cbm::ThreadPool& pool = full.pool;
    Gate& gate = full.gate;
    Gate caller_task_running;
    Gate caller_task_release;
    std::thread caller([&] {
        pool.executor().execute([&] {
            caller_task_running.open();
            caller_task_release.wait();
        });
    });
    caller_task_running.wait();
    gate.open();  // the pool's own thread can finish
    std::atomic<bool> returned{false};
    std::thread closer([&] {
        pool.shutdown();
        returned = true;
    });
    // It cannot return while the caller's task runs (a shutdown that did
    // would be seen here, unless the machine stalls for the whole bound).
    CHECK_FALSE(eventually([&] { return returned.load(); }, 200ms));
    caller_task_release.open();
    caller.join();
    closer.join();
    CHECK(returned.load());
}
