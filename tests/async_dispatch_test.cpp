// trigger_async(): one task per invocation on its executor, the context
// that travels, unregister honoured for queued work, failures never lost,
// back-pressure, and the AsyncResult (wait, get, co_await).
#include <cbm/async_result.hpp>
#include <cbm/callback_group.hpp>
#include <cbm/callback_registry.hpp>
#include <cbm/context.hpp>
#include <cbm/executor.hpp>
#include <cbm/thread_pool.hpp>
#include <cbm/trace.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <coroutine>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "test_support.hpp"

using namespace std::chrono_literals;
using cbm_test::BlockingCallback;
using cbm_test::code_of;
using cbm_test::Counter;
using cbm_test::eventually;
using cbm_test::Gate;
using cbm_test::Tracked;

namespace {

// An executor that keeps its tasks until the test runs or drops them: the
// test decides when a queued invocation starts.
class ManualExecutor {
public:
    ManualExecutor() : queue_(std::make_shared<Queue>()) {}

    void execute(cbm::Task&& task) const {
        std::lock_guard<std::mutex> lock(queue_->mutex);
        queue_->tasks.push_back(std::move(task));
    }
    template <class F>
    void execute(F&& f) const {
        execute(cbm::Task(std::forward<F>(f)));
    }

    std::size_t queued() const {
        std::lock_guard<std::mutex> lock(queue_->mutex);
        return queue_->tasks.size();
    }
    // Runs the queued tasks in order, on this thread.
    void run_all() const {
        for (;;) {
            cbm::Task t;
            {
                std::lock_guard<std::mutex> lock(queue_->mutex);
                if (queue_->tasks.empty()) return;
                t = std::move(queue_->tasks.front());
                queue_->tasks.pop_front();
            }
            t();
        }
    }
    // Destroys the queued tasks without running them.
    void drop_all() const {
        std::deque<cbm::Task> dropped;
        {
            std::lock_guard<std::mutex> lock(queue_->mutex);
            dropped.swap(queue_->tasks);
        }
    }

private:
    struct Queue {
        std::mutex mutex;
        std::deque<cbm::Task> tasks;
    };
    std::shared_ptr<Queue> queue_;
};

// An executor that refuses everything.
struct RefusingExecutor {
    void execute(cbm::Task&&) const { throw std::runtime_error("refused by the executor"); }
    template <class F>
    void execute(F&&) const {
        throw std::runtime_error("refused by the executor");
    }
};

// Counts copies of itself.
struct CopyCounted {
    explicit CopyCounted(std::atomic<int>& c) : copies(&c) {}
    CopyCounted(const CopyCounted& o) : copies(o.copies) { ++*copies; }
    CopyCounted(CopyCounted&& o) noexcept : copies(o.copies) {}
    CopyCounted& operator=(const CopyCounted&) = delete;
    std::atomic<int>* copies;
};

// A coroutine that starts at once and records what its co_await gave.
struct Detached {
    struct promise_type {
        Detached get_return_object() noexcept { return {}; }
        std::suspend_never initial_suspend() noexcept { return {}; }
        std::suspend_never final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        void unhandled_exception() noexcept { std::terminate(); }
    };
};

Detached await_result(cbm::AsyncResult r, std::optional<cbm::TriggerResult>& out, std::atomic<std::thread::id>& on) {
    cbm::TriggerResult res = co_await r;
    out = std::move(res);
    on = std::this_thread::get_id();  // last: a thread that sees it set may read `out`
}

}  // namespace

TEST_CASE("trigger_async runs each callback as its own task: a slow one delays neither the others nor the caller") {
    cbm::ThreadPool pool({.min_threads = 2, .max_threads = 4});
    cbm::CallbackGroup<void(int)> g({.executor = pool.executor()});
    BlockingCallback slow;
    std::atomic<int> fast_ran{0};
    g.add([&](int) { slow.run(); }, {.priority = 10});
    g.add([&](int x) { fast_ran += x; });
    cbm::AsyncResult r = g.trigger_async(7);  // returns while the slow callback blocks
    slow.wait_until_running();
    CHECK(eventually([&] { return fast_ran.load() == 7; }));
    CHECK_FALSE(r.ready());
    CHECK_FALSE(r.wait_for(1ms));
    slow.release();
    const cbm::TriggerResult res = r.get();
    CHECK(r.ready());
    CHECK(res.invoked == 2);
    CHECK(res.ok());
}

TEST_CASE("trigger_async copies the arguments once into shared state, not once per callback") {
    ManualExecutor ex;
    cbm::CallbackGroup<void(const CopyCounted&)> g({.executor = ex});
    std::atomic<int> seen{0};
    for (int i = 0; i < 3; ++i) g.add([&](const CopyCounted&) { ++seen; });
    std::atomic<int> copies{0};
    const CopyCounted arg(copies);
    cbm::AsyncResult r = g.trigger_async(arg);
    CHECK(copies.load() == 1);
    ex.run_all();
    CHECK(seen.load() == 3);
    CHECK(copies.load() == 1);
    CHECK(r.get().invoked == 3);
}

TEST_CASE("priority decides the order in which trigger_async submits the tasks") {
    ManualExecutor ex;
    cbm::CallbackGroup<void()> g({.executor = ex});
    std::vector<int> order;
    g.add([&] { order.push_back(1); }, {.priority = 1});
    g.add([&] { order.push_back(3); }, {.priority = 3});
    g.add([&] { order.push_back(2); }, {.priority = 2});
    auto r = g.trigger_async();
    CHECK(ex.queued() == 3);
    ex.run_all();
    CHECK(order == std::vector<int>{3, 2, 1});
    CHECK(r.ready());
}

TEST_CASE("a callback with inline_executor() runs on the caller during trigger_async, the others on the group's "
          "executor") {
    ManualExecutor ex;
    cbm::CallbackGroup<void()> g({.executor = ex});
    std::thread::id inline_on{};
    std::atomic<bool> queued_ran{false};
    g.add([&] { inline_on = std::this_thread::get_id(); }, {.executor = cbm::inline_executor()});
    g.add([&] { queued_ran = true; });
    auto r = g.trigger_async();
    CHECK(inline_on == std::this_thread::get_id());
    CHECK(ex.queued() == 1);
    CHECK_FALSE(r.ready());
    ex.run_all();
    CHECK(queued_ran.load());
    CHECK(r.get().invoked == 2);
}

TEST_CASE("a group without an executor runs trigger_async's callbacks inline and returns a ready result") {
    cbm::CallbackGroup<void(int)> g;
    int sum = 0;
    g.add([&](int x) { sum += x; });
    auto r = g.trigger_async(4);
    CHECK(r.ready());
    CHECK(sum == 4);
    CHECK(r.get().invoked == 1);
}

TEST_CASE("the trigger's context is current_context() inside every task, and restored afterwards") {
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 1});
    cbm::CallbackGroup<void()> g({.executor = pool.executor()});
    std::string seen_trace;
    std::atomic<bool> pool_thread_restored{false};
    g.add([&] { seen_trace = std::string(cbm::trace_id(cbm::current_context())); });
    auto [ctx, cancel] = cbm::with_cancel(cbm::with_trace_id(cbm::Context::background(), "trace-42"));
    SECTION("given explicitly") { g.trigger_async(ctx).wait(); }
    SECTION("taken from the caller's current_context()") {
        const cbm::ContextScope scope(ctx);
        g.trigger_async().wait();
    }
    CHECK(seen_trace == "trace-42");
    pool.executor().execute([&] { pool_thread_restored = cbm::trace_id(cbm::current_context()).empty(); });
    pool.drain();
    CHECK(pool_thread_restored.load());
    cancel();
}

TEST_CASE("once the trigger's context is canceled, tasks not yet started are skipped and counted") {
    ManualExecutor ex;
    cbm::CallbackGroup<void()> g({.metrics = true, .executor = ex});
    std::atomic<int> ran{0};
    g.add([&] { ++ran; }, {.name = "a"});
    g.add([&] { ++ran; }, {.name = "b"});
    auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
    auto r = g.trigger_async(ctx);
    cancel();
    ex.run_all();
    const cbm::TriggerResult res = r.get();
    CHECK(ran.load() == 0);
    CHECK(res.invoked == 0);
    CHECK(res.skipped == 2);
    CHECK(res.stopped);
    for (const auto& m : g.metrics().callbacks) CHECK(m.skipped_canceled == 1);
}

TEST_CASE("a running task sees its trigger's cancellation through current_context()") {
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 1});
    cbm::CallbackGroup<void()> g({.executor = pool.executor()});
    Gate started;
    std::atomic<bool> saw_cancel{false};
    g.add([&] {
        started.open();
        saw_cancel = cbm::current_context().wait_for(20s);
    });
    auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
    auto r = g.trigger_async(ctx);
    started.wait();
    cancel();
    r.wait();
    CHECK(saw_cancel.load());
}

TEST_CASE("a queued invocation of a callback unregistered before it starts never starts, and unregister does not "
          "wait for it") {
    ManualExecutor ex;
    Counter counter;
    cbm::CallbackGroup<void()> g({.metrics = true, .executor = ex});
    std::atomic<int> ran{0};
    cbm::Registration reg = g.add([&, t = Tracked(counter)] { ++ran; });
    auto r = g.trigger_async();
    REQUIRE(ex.queued() == 1);
    reg.unregister();  // returns at once: nothing runs it
    CHECK(counter.alive() == 0);  // and its callable is already gone
    ex.run_all();
    CHECK(ran.load() == 0);
    const auto res = r.get();
    CHECK(res.invoked == 0);
    CHECK(res.skipped == 1);
    CHECK(counter.errors.load() == 0);
}

TEST_CASE("unregister() returns only when no invocation of the callback runs on a pool thread") {
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 2});
    cbm::CallbackGroup<void()> g({.executor = pool.executor()});
    BlockingCallback blocking;
    cbm::Registration reg = g.add([&] { blocking.run(); });
    auto r = g.trigger_async();
    CHECK(blocking.operation_waited([&] { reg.unregister(); }, [] { return true; }));
    r.wait();
}

TEST_CASE("clear(), erase() and the destructor cancel queued invocations; the tasks never touch freed memory") {
    ManualExecutor ex;
    Counter counter;
    std::atomic<int> ran{0};
    cbm::AsyncResult r;
    SECTION("clear") {
        cbm::CallbackGroup<void()> g({.executor = ex});
        g.add([&, t = Tracked(counter)] { ++ran; });
        r = g.trigger_async();
        CHECK(g.clear() == 1);
        CHECK(counter.alive() == 0);
        ex.run_all();
    }
    SECTION("erase") {
        cbm::CallbackRegistry<std::string, void()> reg({.executor = ex});
        reg.add("k", [&, t = Tracked(counter)] { ++ran; });
        r = reg.trigger_async("k");
        CHECK(reg.erase("k") == 1);
        CHECK(counter.alive() == 0);
        ex.run_all();
    }
    SECTION("destructor of a group") {
        {
            cbm::CallbackGroup<void()> g({.executor = ex});
            g.add([&, t = Tracked(counter)] { ++ran; });
            r = g.trigger_async();
        }
        CHECK(counter.alive() == 0);
        ex.run_all();  // the group is gone: the task must only find its node unregistered
    }
    SECTION("destructor of a registry") {
        {
            cbm::CallbackRegistry<std::string, void()> reg({.executor = ex});
            reg.add("k", [&, t = Tracked(counter)] { ++ran; });
            r = reg.trigger_async("k");
        }
        CHECK(counter.alive() == 0);
        ex.run_all();
    }
    CHECK(ran.load() == 0);
    REQUIRE(r.ready());
    CHECK(r.get().skipped == 1);
    CHECK(counter.errors.load() == 0);
}

TEST_CASE("an exception in a task reaches the AsyncResult, the error handler, the dead-letter handler and metrics") {
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 2});
    cbm::CallbackGroup<void()> g({.metrics = true, .executor = pool.executor()});
    std::atomic<int> handled{0};
    std::atomic<int> dead{0};
    g.set_error_handler([&](const cbm::Failure& f) { handled += f.name == "thrower"; });
    g.set_dead_letter_handler([&](const cbm::DeadLetter& d) { dead += d.name == "thrower"; });
    g.add([] { throw std::runtime_error("boom"); }, {.name = "thrower"});
    g.add([] {}, {.name = "fine"});
    const cbm::TriggerResult res = g.trigger_async().get();
    CHECK(res.invoked == 2);
    CHECK(res.failed == 1);
    REQUIRE(res.failures.size() == 1);
    CHECK(res.failures[0].name == "thrower");
    CHECK_FALSE(res.ok());
    CHECK(handled.load() == 1);
    CHECK(dead.load() == 1);
    for (const auto& m : g.metrics().callbacks) CHECK(m.failed == (m.name == "thrower" ? 1u : 0u));
}

TEST_CASE("get() rethrows the first failure under ErrorPolicy::rethrow") {
    ManualExecutor ex;
    cbm::CallbackGroup<void()> g({.error_policy = cbm::ErrorPolicy::rethrow, .executor = ex});
    g.add([] { throw std::runtime_error("boom"); });
    auto r = g.trigger_async();  // never throws itself
    ex.run_all();
    CHECK_THROWS_AS(r.get(), std::runtime_error);
}

TEST_CASE("under ErrorPolicy::stop, tasks not started after a failure are skipped") {
    ManualExecutor ex;
    cbm::CallbackGroup<void()> g({.error_policy = cbm::ErrorPolicy::stop, .executor = ex});
    std::atomic<int> ran{0};
    g.add([] { throw std::runtime_error("boom"); }, {.priority = 1});
    g.add([&] { ++ran; });
    auto r = g.trigger_async();
    ex.run_all();
    const auto res = r.get();
    CHECK(ran.load() == 0);
    CHECK(res.failed == 1);
    CHECK(res.skipped == 1);
    CHECK(res.stopped);
}

TEST_CASE("a full pool with Overflow::reject fails the invocation with errc::queue_full, counted and reported") {
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 1, .queue_capacity = 1, .overflow = cbm::Overflow::reject});
    Gate gate;
    Gate running;
    pool.executor().execute([&] {
        running.open();
        gate.wait();
    });
    running.wait();
    pool.executor().execute([] {});  // the queue is full now
    cbm::CallbackGroup<void()> g({.metrics = true, .executor = pool.executor()});
    std::atomic<int> reported{0};
    std::atomic<int> dead{0};
    g.set_error_handler([&](const cbm::Failure& f) { reported += code_of(f.error) == cbm::errc::queue_full; });
    g.set_dead_letter_handler([&](const cbm::DeadLetter& d) { dead += code_of(d.error) == cbm::errc::queue_full; });
    std::atomic<int> ran{0};
    g.add([&] { ++ran; }, {.name = "refused"});
    auto r = g.trigger_async();
    REQUIRE(r.ready());  // nothing was queued
    const auto res = r.get();
    CHECK(res.failed == 1);
    CHECK(res.invoked == 0);
    REQUIRE(res.failures.size() == 1);
    CHECK(code_of(res.failures[0].error) == cbm::errc::queue_full);
    CHECK(reported.load() == 1);
    CHECK(dead.load() == 1);
    CHECK(g.metrics().callbacks.at(0).failed == 1);
    CHECK(pool.metrics().rejected == 1);
    gate.open();
    pool.drain();
    CHECK(ran.load() == 0);
}

TEST_CASE("an executor that throws from execute() fails that invocation with its exception") {
    cbm::CallbackGroup<void()> g({.executor = RefusingExecutor{}});
    std::atomic<int> ran{0};
    g.add([&] { ++ran; });
    const auto res = g.trigger_async().get();
    CHECK(res.failed == 1);
    REQUIRE(res.failures.size() == 1);
    CHECK_THROWS_WITH(std::rethrow_exception(res.failures[0].error), "refused by the executor");
    CHECK(ran.load() == 0);
}

TEST_CASE("a task that its executor destroys without running reports errc::task_dropped") {
    ManualExecutor ex;
    cbm::CallbackGroup<void()> g({.executor = ex});
    std::atomic<int> dropped{0};
    g.set_dead_letter_handler([&](const cbm::DeadLetter& d) { dropped += code_of(d.error) == cbm::errc::task_dropped; });
    g.add([] {});
    auto r = g.trigger_async();
    ex.drop_all();
    REQUIRE(r.ready());
    const auto res = r.get();
    CHECK(res.failed == 1);
    CHECK(dropped.load() == 1);
    REQUIRE(res.failures.size() == 1);
    CHECK(code_of(res.failures[0].error) == cbm::errc::task_dropped);
}

TEST_CASE("co_await on an AsyncResult resumes the coroutine with the TriggerResult") {
    ManualExecutor ex;
    cbm::CallbackGroup<void()> g({.executor = ex});
    g.add([] {});
    std::optional<cbm::TriggerResult> out;
    std::atomic<std::thread::id> resumed_on{};
    SECTION("suspended until the last task finishes") {
        await_result(g.trigger_async(), out, resumed_on);
        CHECK_FALSE(out.has_value());
        std::thread runner([&] { ex.run_all(); });
        runner.join();
        REQUIRE(out.has_value());
        CHECK(resumed_on.load() != std::this_thread::get_id());  // on the thread that finished the task
    }
    SECTION("ready already: not suspended") {
        auto r = g.trigger_async();
        ex.run_all();
        await_result(r, out, resumed_on);
        REQUIRE(out.has_value());
        CHECK(resumed_on.load() == std::this_thread::get_id());
    }
    CHECK(out->invoked == 1);
}

TEST_CASE("queue wait and run time are recorded separately for each callback") {
    ManualExecutor ex;
    cbm::CallbackGroup<void()> g({.metrics = true, .latency_sample_every = 1, .executor = ex});
    g.add([] {}, {.name = "queued"});
    for (int i = 0; i < 5; ++i) g.trigger_async();
    ex.run_all();
    g.trigger();  // a synchronous trigger adds run time, no queue wait
    const auto m = g.metrics().callbacks.at(0);
    CHECK(m.queue_wait_ns.count() == 5);
    CHECK(m.latency_ns.count() == 6);
}

TEST_CASE("a once callback run by trigger_async runs at most once across concurrent triggers", "[race]") {
    cbm::ThreadPool pool({.min_threads = 2, .max_threads = 4});
    for (int round = 0; round < 50; ++round) {
        cbm::CallbackGroup<void()> g({.executor = pool.executor()});
        std::atomic<int> ran{0};
        g.add([&] { ++ran; }, {.once = true});
        std::vector<cbm::AsyncResult> results;
        std::mutex m;
        std::vector<std::thread> producers;
        for (int p = 0; p < 3; ++p) {
            producers.emplace_back([&] {
                auto r = g.trigger_async();
                std::lock_guard<std::mutex> lock(m);
                results.push_back(std::move(r));
            });
        }
        for (auto& t : producers) t.join();
        for (auto& r : results) r.wait();
        CHECK(ran.load() == 1);
    }
}

TEST_CASE("registry trigger_async runs a key's callbacks, by key or by string_view") {
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 2});
    cbm::CallbackRegistry<std::string, void(int), cbm::string_hash, std::equal_to<>> reg({.executor = pool.executor()});
    std::atomic<int> sum{0};
    reg.add("a", [&](int x) { sum += x; });
    reg.add("b", [&](int x) { sum += 100 * x; });
    CHECK(reg.trigger_async(std::string("a"), 1).get().invoked == 1);
    CHECK(reg.trigger_async(std::string_view("b"), 2).get().invoked == 1);
    CHECK(reg.trigger_async(std::string_view("none"), 3).get().invoked == 0);
    CHECK(sum.load() == 201);
}

TEST_CASE("trigger_async from many threads while callbacks are unregistered: no invocation runs after its "
          "unregister returned, every callable is destroyed once",
          "[race]") {
    Counter counter;
    cbm::ThreadPool pool({.min_threads = 2, .max_threads = 4, .queue_capacity = 256});
    for (int round = 0; round < 40; ++round) {
        cbm::CallbackGroup<void()> g({.executor = pool.executor()});
        constexpr int kCallbacks = 4;
        std::atomic<bool> gone[kCallbacks];
        std::atomic<int> late_runs{0};
        std::vector<cbm::Registration> regs;
        for (int i = 0; i < kCallbacks; ++i) {
            gone[i] = false;
            regs.push_back(g.add([&late_runs, flag = &gone[i], t = Tracked(counter)] {
                if (flag->load()) ++late_runs;
            }));
        }
        std::atomic<bool> stop{false};
        std::vector<std::thread> producers;
        for (int p = 0; p < 2; ++p) {
            producers.emplace_back([&] {
                while (!stop.load()) g.trigger_async();
            });
        }
        for (int i = 0; i < kCallbacks; ++i) {
            regs[static_cast<std::size_t>(i)].unregister();
            gone[i] = true;  // from now on, a run of callback i would be a broken promise
        }
        stop = true;
        for (auto& t : producers) t.join();
        pool.drain();
        CHECK(late_runs.load() == 0);
    }
    CHECK(counter.alive() == 0);
    CHECK(counter.errors.load() == 0);
}

TEST_CASE("groups destroyed while their tasks are queued on a pool: the tasks never touch freed memory", "[race]") {
    Counter counter;
    cbm::ThreadPool pool({.min_threads = 2, .max_threads = 2, .queue_capacity = 100'000});
    std::atomic<int> ran{0};
    std::vector<cbm::AsyncResult> results;
    for (int round = 0; round < 200; ++round) {
        cbm::CallbackGroup<void(const std::string&)> g({.metrics = true, .executor = pool.executor()});
        g.add([&, t = Tracked(counter)](const std::string& s) { ran += static_cast<int>(s.size()); });
        for (int i = 0; i < 5; ++i) results.push_back(g.trigger_async(std::string("x")));
    }
    pool.drain();
    std::size_t accounted = 0;
    for (auto& r : results) {
        REQUIRE(r.ready());
        const auto res = r.get();
        accounted += res.invoked + res.skipped;
    }
    CHECK(accounted == results.size());
    CHECK(counter.alive() == 0);
    CHECK(counter.errors.load() == 0);
}

TEST_CASE("a retry of trigger_async waits on the timer and holds no pool thread meanwhile") {
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 1});
    cbm::CallbackGroup<void()> g({.metrics = true, .executor = pool.executor()});
    std::mutex m;
    std::vector<std::string> order;
    auto note = [&](std::string s) {
        std::lock_guard<std::mutex> lock(m);
        order.push_back(std::move(s));
    };
    std::atomic<int> attempts{0};
    g.add(
        [&] {
            const int n = ++attempts;
            note("retrying attempt " + std::to_string(n));
            if (n == 1) throw std::runtime_error("first attempt fails");
        },
        {.priority = 1, .name = "retrying", .retry = {.attempts = 2, .initial_backoff = 1ms, .jitter = 0}});
    g.add([&] { note("other"); });
    // One thread: had the backoff slept on it, the second attempt would
    // come before the other callback, which was queued behind the first.
    const cbm::TriggerResult res = g.trigger_async().get();
    CHECK(order == std::vector<std::string>{"retrying attempt 1", "other", "retrying attempt 2"});
    CHECK(res.invoked == 2);
    CHECK(res.failed == 0);
    for (const auto& cb : g.metrics().callbacks) CHECK(cb.retries == (cb.name == "retrying" ? 1u : 0u));
}

TEST_CASE("a trigger_async invocation that fails every attempt is reported once, as final, with its attempts") {
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 2});
    cbm::CallbackGroup<void()> g({.metrics = true, .executor = pool.executor()});
    std::atomic<std::uint32_t> dead_attempts{0};
    std::atomic<int> handled{0};
    g.set_dead_letter_handler([&](const cbm::DeadLetter& d) { dead_attempts = d.attempts; });
    g.set_error_handler([&](const cbm::Failure&) { ++handled; });
    std::atomic<int> calls{0};
    g.add(
        [&] {
            ++calls;
            throw std::runtime_error("always");
        },
        {.name = "failing", .retry = {.attempts = 3, .initial_backoff = 1ms, .jitter = 0}});
    const auto res = g.trigger_async().get();
    CHECK(calls.load() == 3);
    CHECK(res.invoked == 1);
    CHECK(res.failed == 1);
    CHECK(handled.load() == 1);
    CHECK(dead_attempts.load() == 3);
    const auto m = g.metrics().callbacks.at(0);
    CHECK(m.retries == 2);
    CHECK(m.failed == 1);
}

TEST_CASE("a callback unregistered during its retry backoff gets no further attempt; its failure is final") {
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 2});
    cbm::CallbackGroup<void()> g({.executor = pool.executor()});
    std::atomic<std::uint32_t> dead_attempts{0};
    g.set_dead_letter_handler([&](const cbm::DeadLetter& d) { dead_attempts = d.attempts; });
    std::atomic<int> calls{0};
    auto reg = std::make_shared<cbm::Registration>();
    *reg = g.add(
        [&calls, reg] {
            ++calls;
            reg->unregister();  // from inside: does not wait
            throw std::runtime_error("fails, then is gone");
        },
        {.retry = {.attempts = 5, .initial_backoff = 1ms, .jitter = 0}});
    const auto res = g.trigger_async().get();
    CHECK(calls.load() == 1);
    CHECK(res.failed == 1);
    CHECK(dead_attempts.load() == 1);
    reg.reset();
}

TEST_CASE("a trigger canceled before its retry stops retrying; the last failure is final") {
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 2});
    cbm::CallbackGroup<void()> g({.executor = pool.executor()});
    auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
    std::atomic<int> calls{0};
    Gate first_attempt_done;
    SECTION("canceled by the attempt itself") {
        g.add(
            [&calls, cancel = cancel] {
                ++calls;
                cancel();
                throw std::runtime_error("fails, and cancels its trigger");
            },
            {.retry = {.attempts = 5, .initial_backoff = 1ms, .jitter = 0}});
        const auto res = g.trigger_async(ctx).get();
        CHECK(res.failed == 1);
    }
    SECTION("canceled from outside, during the backoff (or just before it)") {
        g.add(
            [&] {
                ++calls;
                first_attempt_done.open();
                throw std::runtime_error("fails");
            },
            {.retry = {.attempts = 5, .initial_backoff = 200ms, .jitter = 0}});
        auto r = g.trigger_async(ctx);
        first_attempt_done.wait();
        cancel();
        const auto res = r.get();
        CHECK(res.failed == 1);
    }
    CHECK(calls.load() == 1);
}

namespace {

// Runs tasks on a thread of its own; execute() waits until the task it
// queued has finished and then touches its own state, as executors that
// keep statistics do. The executor lives in the group's state.
class SelfTouchingExecutor {
public:
    struct Worker {
        std::mutex mutex;
        std::condition_variable cv;
        std::deque<cbm::Task> tasks;
        std::atomic<int> finished{0};
        std::atomic<int> returned{0};  // execute() calls that returned
        bool stop = false;
        std::thread thread{[this] { loop(); }};
        ~Worker() {
            {
                std::lock_guard<std::mutex> lock(mutex);
                stop = true;
            }
            cv.notify_all();
            thread.join();
        }
        void loop() {
            std::unique_lock<std::mutex> lock(mutex);
            for (;;) {
                cv.wait(lock, [&] { return stop || !tasks.empty(); });
                if (tasks.empty()) return;
                cbm::Task t = std::move(tasks.front());
                tasks.pop_front();
                lock.unlock();
                t();
                t.reset();
                ++finished;
                lock.lock();
            }
        }
    };
    explicit SelfTouchingExecutor(Worker& w) : worker_(&w) {}
    void execute(cbm::Task&& task) {
        const int before = worker_->finished.load();
        {
            std::lock_guard<std::mutex> lock(worker_->mutex);
            worker_->tasks.push_back(std::move(task));
        }
        worker_->cv.notify_one();
        eventually([&] { return worker_->finished.load() > before; });
        ++submitted_;  // touches the executor after its task is done
        ++worker_->returned;
    }
    template <class F>
    void execute(F&& f) {
        execute(cbm::Task(std::forward<F>(f)));
    }

private:
    Worker* worker_;
    long submitted_ = 0;
};

}  // namespace

TEST_CASE("a group destroyed during a retry backoff: the retry touches nothing freed and reports to no handler") {
    SelfTouchingExecutor::Worker worker;
    std::atomic<int> attempts{0};
    std::atomic<bool> destroyed{false};
    std::atomic<int> handled_after_destruction{0};
    Gate first_attempt_failed;
    {
        auto g = std::make_unique<cbm::CallbackGroup<void()>>(cbm::GroupOptions{.executor = SelfTouchingExecutor(worker)});
        g->set_error_handler([&](const cbm::Failure&) { handled_after_destruction += destroyed.load(); });
        g->set_dead_letter_handler([&](const cbm::DeadLetter&) { handled_after_destruction += destroyed.load(); });
        g->add(
            [&] {
                ++attempts;
                first_attempt_failed.open();
                throw std::runtime_error("fails");
            },
            {.retry = {.attempts = 3, .initial_backoff = 100ms, .jitter = 0}});
        g->trigger_async();  // the result is dropped: nothing but the parked retry holds the group's state
        first_attempt_failed.wait();
        g.reset();
        destroyed = true;
    }
    // The retry wakes, finds its callback gone, and ends: two tasks in all.
    CHECK(eventually([&] { return worker.finished.load() == 2 && worker.returned.load() == 2; }));
    CHECK(attempts.load() == 1);
    CHECK(handled_after_destruction.load() == 0);
}

TEST_CASE("a callback unregistered during its retry backoff: no handler hears of it after unregister returned") {
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 1});
    cbm::CallbackGroup<void()> g({.executor = pool.executor()});
    std::atomic<bool> unregistered{false};
    std::atomic<int> handled_after{0};
    g.set_error_handler([&](const cbm::Failure&) { handled_after += unregistered.load(); });
    Gate first_attempt_failed;
    cbm::Registration reg = g.add(
        [&] {
            first_attempt_failed.open();
            throw std::runtime_error("fails");
        },
        {.retry = {.attempts = 3, .initial_backoff = 100ms, .jitter = 0}});
    auto r = g.trigger_async();
    first_attempt_failed.wait();
    reg.unregister();
    unregistered = true;
    const auto res = r.get();
    CHECK(res.failed == 1);  // the result still has it
    CHECK(handled_after.load() == 0);
}

TEST_CASE("two coroutines awaiting one AsyncResult are both resumed when it is ready") {
    ManualExecutor ex;
    cbm::CallbackGroup<void()> g({.executor = ex});
    g.add([] {});
    cbm::AsyncResult r = g.trigger_async();
    std::optional<cbm::TriggerResult> first;
    std::optional<cbm::TriggerResult> second;
    std::atomic<std::thread::id> first_on{};
    std::atomic<std::thread::id> second_on{};
    await_result(r, first, first_on);
    await_result(r, second, second_on);  // must suspend too, not block this thread
    CHECK_FALSE(first.has_value());
    CHECK_FALSE(second.has_value());
    ex.run_all();
    REQUIRE(first.has_value());
    REQUIRE(second.has_value());
    CHECK(first->invoked == 1);
    CHECK(second->invoked == 1);
}


TEST_CASE("threads that wait, get and await one AsyncResult while its tasks finish and fail all see the whole result",
          "[async][race]") {
    // The result's watch (mutex, condition variable, failure list) is made by
    // whichever needs it first: a waiter, an awaiter or a failing task, racing
    // each other and the completion.
    cbm_test::Watchdog watchdog("waiters racing the completion of one AsyncResult");
    cbm::ThreadPool pool({.min_threads = 2, .max_threads = 2});
    cbm::CallbackGroup<void(int)> g({.executor = pool.executor()});
    g.add([](int) {});
    g.add([](int round) {
        if (round % 2 == 0) throw std::runtime_error("even round");
    });
    g.add([](int) {});
    g.add([](int round) {
        if (round % 3 == 0) throw std::runtime_error("third round");
    });
    constexpr int kRounds = 300;
    constexpr int kWaiters = 3;
    for (int round = 0; round < kRounds; ++round) {
        const std::size_t failures = (round % 2 == 0 ? 1u : 0u) + (round % 3 == 0 ? 1u : 0u);
        std::atomic<int> ready_waiters{0};
        std::atomic<bool> go{false};
        cbm::AsyncResult shared;
        std::vector<std::thread> waiters;
        std::atomic<int> whole{0};
        for (int w = 0; w < kWaiters; ++w) {
            waiters.emplace_back([&, w] {
                ready_waiters.fetch_add(1);
                while (!go.load()) std::this_thread::yield();
                const cbm::AsyncResult r = shared;  // a copy: the same state
                if (w == 0) r.wait();
                if (w == 1) {
                    while (!r.wait_for(std::chrono::microseconds(50))) {
                    }
                }
                const cbm::TriggerResult res = r.get();
                if (res.invoked == 4 && res.failed == failures && res.failures.size() == failures) whole.fetch_add(1);
            });
        }
        while (ready_waiters.load() < kWaiters) std::this_thread::yield();
        shared = g.trigger_async(round);
        std::optional<cbm::TriggerResult> awaited;
        std::atomic<std::thread::id> awaited_on{};
        go.store(true);
        await_result(shared, awaited, awaited_on);
        for (std::thread& t : waiters) t.join();
        REQUIRE(whole.load() == kWaiters);
        shared.wait();
        // The coroutine is resumed by the last task, possibly after wait()
        // returned on this thread: wait for it (bounded by the watchdog).
        while (awaited_on.load() == std::thread::id{}) std::this_thread::yield();
        REQUIRE(awaited.has_value());
        REQUIRE(awaited->failed == failures);
        REQUIRE(awaited->failures.size() == failures);
    }
}

TEST_CASE("a queued invocation of a blocked callback is skipped and counted as blocked", "[async][block]") {
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 1});
    cbm::CallbackGroup<void(int)> group({.executor = pool.executor()});
    std::atomic<int> calls{0};
    const cbm::Registration r = group.add([&](int) { calls.fetch_add(1); });
    const cbm::Registration retried = group.add([&](int) { calls.fetch_add(1); }, {.retry = {.attempts = 3}});
    {
        const cbm::Blocker a = r.block();
        const cbm::Blocker b = retried.block();
        const cbm::TriggerResult res = group.trigger_async(1).get();
        CHECK(res.invoked == 0);
        CHECK(res.skipped == 2);
        CHECK(res.blocked == 2);
    }
    CHECK(group.trigger_async(2).get().invoked == 2);
    CHECK(calls.load() == 2);
}
