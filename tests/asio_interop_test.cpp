// asio's own executors, as they are (with <cbm/interop/asio.hpp>), run
// trigger_async's callbacks with cbm's guarantees: real asio::thread_pool
// and asio::io_context, no wrappers.
#include <asio.hpp>
#include <cbm/callback_group.hpp>
#include <cbm/context.hpp>
#include <cbm/interop/asio.hpp>
#include <cbm/trace.hpp>

#include <atomic>
#include <optional>
#include <string>
#include <thread>

#include <catch2/catch.hpp>

#include "test_support.hpp"

using cbm_test::code_of;
using cbm_test::Counter;
using cbm_test::Tracked;

static_assert(cbm::Executor<asio::thread_pool::executor_type>);
static_assert(cbm::Executor<asio::io_context::executor_type>);
static_assert(cbm::Executor<asio::strand<asio::io_context::executor_type>>);

TEST_CASE("asio::thread_pool's executor runs trigger_async's callbacks on its threads, with the trigger's context") {
    asio::thread_pool io(2);
    cbm::CallbackGroup<void(int)> g({.executor = io.get_executor()});
    std::atomic<int> sum{0};
    std::atomic<bool> on_other_thread{false};
    std::string trace;
    g.add([&](int x) {
        sum += x;
        on_other_thread = std::this_thread::get_id() != std::thread::id{};
        trace = std::string(cbm::trace_id());
    });
    const cbm::Context ctx = cbm::with_trace_id(cbm::Context::background(), "asio-7");
    const cbm::TriggerResult res = g.trigger_async(ctx, 5).get();
    CHECK(res.invoked == 1);
    CHECK(sum.load() == 5);
    CHECK(trace == "asio-7");
    io.join();
}

TEST_CASE("a callback unregistered while its invocation waits in an io_context never runs") {
    asio::io_context io;
    Counter counter;
    cbm::CallbackGroup<void()> g({.executor = io.get_executor()});
    std::atomic<int> ran{0};
    cbm::Registration reg = g.add([&, t = Tracked(counter)] { ++ran; });
    cbm::AsyncResult r = g.trigger_async();
    reg.unregister();  // the io_context has not run: nothing to wait for
    CHECK(counter.alive() == 0);
    io.run();
    CHECK(ran.load() == 0);
    REQUIRE(r.ready());
    CHECK(r.get().skipped == 1);
}

TEST_CASE("an io_context destroyed with invocations queued reports each as failed with errc::task_dropped") {
    cbm::CallbackGroup<void()> g;
    std::atomic<int> dead{0};
    g.set_dead_letter_handler([&](const cbm::DeadLetter& d) { dead += code_of(d.error) == cbm::errc::task_dropped; });
    std::atomic<int> ran{0};
    std::optional<asio::io_context> io;
    io.emplace();
    g.add([&] { ++ran; }, {.executor = io->get_executor()});
    g.add([&] { ++ran; }, {.executor = io->get_executor()});
    cbm::AsyncResult r = g.trigger_async();
    CHECK_FALSE(r.ready());
    io.reset();  // never run
    REQUIRE(r.ready());
    const auto res = r.get();
    CHECK(res.failed == 2);
    CHECK(ran.load() == 0);
    CHECK(dead.load() == 2);
}
