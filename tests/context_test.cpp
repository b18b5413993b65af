// Tests for cbm/context.hpp and cbm/errc.hpp.
#include <cbm/context.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "context_probe.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using cbm_test::code_of;
using cbm::Context;
using cbm_test::children_held;
using cbm_test::Counter;
using cbm_test::eventually;
using cbm_test::Gate;
using cbm_test::Tracked;
using cbm_test::Watchdog;

namespace {

const cbm::ContextKey<std::string> trace_id{"trace_id"};
const cbm::ContextKey<std::string> other_trace_id{"trace_id"};  // same name, different key
const cbm::ContextKey<int> attempt{"attempt"};
const cbm::ContextKey<Tracked> tracked_key{"tracked"};


std::size_t thread_count() {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/task")) ++n;
    return n;
}

// The message of the exception an exception_ptr holds.
std::string what_of(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        return ex.what();
    }
}


}  // namespace

// ---------------------------------------------------------------------------
// errc

TEST_CASE("errc::canceled equals std::errc::operation_canceled and deadline_exceeded equals timed_out", "[errc]") {
    const std::error_code canceled = cbm::errc::canceled;
    const std::error_code deadline = cbm::errc::deadline_exceeded;
    REQUIRE(canceled == std::errc::operation_canceled);
    REQUIRE(deadline == std::errc::timed_out);
    REQUIRE(canceled != std::errc::timed_out);
    REQUIRE(deadline != std::errc::operation_canceled);
    REQUIRE(canceled != deadline);
    REQUIRE(std::string(canceled.category().name()) == "cbm");
    REQUIRE(canceled.message() == "context canceled");
    REQUIRE(deadline.message() == "context deadline exceeded");
    REQUIRE_FALSE(std::error_code{});
}

// ---------------------------------------------------------------------------
// background and the handle

TEST_CASE("a default-constructed context is background: never canceled, no deadline, no values", "[context]") {
    const Context ctx;
    REQUIRE(ctx == Context::background());
    REQUIRE_FALSE(ctx.err());
    REQUIRE_FALSE(ctx.canceled());
    REQUIRE_FALSE(ctx.deadline());
    REQUIRE_FALSE(ctx.done().stop_possible());
    REQUIRE(ctx.value(trace_id) == nullptr);
    REQUIRE(cbm::cause(ctx) == nullptr);
    REQUIRE_FALSE(ctx.wait_for(1ms));
    REQUIRE_THROWS_AS(ctx.wait(), std::logic_error);
}

TEST_CASE("a moved-from context is background", "[context]") {
    auto [ctx, cancel] = cbm::with_cancel({});
    Context moved = std::move(ctx);
    REQUIRE(ctx == Context::background());  // NOLINT(bugprone-use-after-move): the contract under test
    REQUIRE(moved.done().stop_possible());
    cancel();
    REQUIRE(moved.canceled());
    REQUIRE_FALSE(ctx.canceled());  // NOLINT(bugprone-use-after-move)
}

TEST_CASE("a context handle and its cancel function are cheap copyable values", "[context]") {
    STATIC_REQUIRE(sizeof(Context) == sizeof(void*));
    STATIC_REQUIRE(std::is_nothrow_copy_constructible_v<Context>);
    STATIC_REQUIRE(std::is_nothrow_move_constructible_v<Context>);
    STATIC_REQUIRE(std::is_nothrow_copy_constructible_v<cbm::CancelFunc>);
    STATIC_REQUIRE(std::is_nothrow_invocable_v<const cbm::CancelFunc&>);
    STATIC_REQUIRE(std::is_nothrow_invocable_v<const cbm::StopFunc&>);
    STATIC_REQUIRE(!std::is_copy_constructible_v<cbm::ContextKey<int>>);
    cbm::CancelFunc nothing;
    nothing();  // a default-constructed CancelFunc does nothing
    REQUIRE_FALSE(cbm::StopFunc{}());
}

// ---------------------------------------------------------------------------
// cancellation

TEST_CASE("cancel sets err to canceled, requests stop on done(), and is idempotent", "[context]") {
    auto [ctx, cancel] = cbm::with_cancel(Context::background());
    const std::stop_token token = ctx.done();
    REQUIRE(token.stop_possible());
    REQUIRE_FALSE(token.stop_requested());
    REQUIRE_FALSE(ctx.err());
    cancel();
    REQUIRE(token.stop_requested());
    REQUIRE(ctx.err() == cbm::errc::canceled);
    REQUIRE(ctx.err() == std::errc::operation_canceled);
    cancel();
    auto copy = cancel;
    copy();
    REQUIRE(ctx.err() == cbm::errc::canceled);
    REQUIRE(ctx.wait_for(0ms));
    ctx.wait();  // returns at once
}

TEST_CASE("cancelling a parent cancels every descendant before cancel returns", "[context]") {
    auto [root, cancel_root] = cbm::with_cancel({});
    auto [a, cancel_a] = cbm::with_cancel(root);
    Context a_value = cbm::with_value(a, attempt, 1);
    auto [b, cancel_b] = cbm::with_timeout(a_value, 1h);
    auto [c, cancel_c] = cbm::with_cancel_cause(root);
    std::vector<Context> all{a, a_value, b, c};
    int callbacks_run = 0;  // plain int: the std::stop_callbacks must run on this thread, inside cancel
    std::vector<std::unique_ptr<std::stop_callback<std::function<void()>>>> callbacks;
    for (const Context& ctx : all) {
        callbacks.push_back(std::make_unique<std::stop_callback<std::function<void()>>>(
            ctx.done(), std::function<void()>([&] { ++callbacks_run; })));
    }

    cancel_root();
    REQUIRE(callbacks_run == 4);
    for (const Context& ctx : all) REQUIRE(ctx.err() == cbm::errc::canceled);
    REQUIRE(children_held(root) == 0);
}

TEST_CASE("cancelling a child never affects its parent or siblings", "[context]") {
    auto [parent, cancel_parent] = cbm::with_cancel({});
    auto [child, cancel_child] = cbm::with_cancel(parent);
    auto [sibling, cancel_sibling] = cbm::with_cancel(parent);
    auto [grandchild, cancel_grandchild] = cbm::with_cancel(child);
    cancel_child();
    REQUIRE(child.canceled());
    REQUIRE(grandchild.canceled());
    REQUIRE_FALSE(parent.canceled());
    REQUIRE_FALSE(sibling.canceled());
    REQUIRE(children_held(parent) == 1);
    cancel_parent();
    REQUIRE(sibling.canceled());
}

TEST_CASE("a child of an already canceled parent is born canceled with the parent's error and cause", "[context]") {
    auto [parent, cancel_parent] = cbm::with_cancel_cause({});
    cancel_parent(std::make_exception_ptr(std::runtime_error("shutting down")));
    auto [child, cancel_child] = cbm::with_cancel(parent);
    auto [timed, cancel_timed] = cbm::with_timeout(parent, 1h);
    REQUIRE(child.err() == cbm::errc::canceled);
    REQUIRE(child.done().stop_requested());
    REQUIRE(what_of(cbm::cause(child)) == "shutting down");
    REQUIRE(timed.err() == cbm::errc::canceled);
    REQUIRE(children_held(parent) == 0);
}

TEST_CASE("the first cancellation wins: later cancels, parent cancels and deadlines change neither err nor cause",
          "[context]") {
    auto [parent, cancel_parent] = cbm::with_cancel_cause({});
    auto [child, cancel_child] = cbm::with_cancel_cause(parent);
    cancel_child(std::make_exception_ptr(std::runtime_error("first")));
    cancel_child(std::make_exception_ptr(std::runtime_error("second")));
    cancel_parent(std::make_exception_ptr(std::runtime_error("parent")));
    REQUIRE(child.err() == cbm::errc::canceled);
    REQUIRE(what_of(cbm::cause(child)) == "first");
    REQUIRE(what_of(cbm::cause(parent)) == "parent");

    auto [timed, cancel_timed] = cbm::with_timeout({}, 1ms);
    REQUIRE(timed.wait_for(10s));
    cancel_timed();
    REQUIRE(timed.err() == cbm::errc::deadline_exceeded);
}

TEST_CASE("whoever sees done().stop_requested() also sees a non-empty err()", "[context][race]") {
    for (int round = 0; round < 200; ++round) {
        auto [ctx, cancel] = cbm::with_cancel({});
        std::atomic<bool> violated{false};
        std::thread watcher([&, ctx = ctx] {
            const std::stop_token token = ctx.done();
            while (!token.stop_requested()) std::this_thread::yield();
            if (!ctx.err()) violated = true;
        });
        cancel();
        watcher.join();
        REQUIRE_FALSE(violated.load());
    }
}

TEST_CASE("cancel of a parent returns while another thread's cancellation of a child is still inside a stop_callback, "
          "and the grandchild is canceled by then",
          "[context][race]") {
    auto [parent, cancel_parent] = cbm::with_cancel({});
    auto [child, cancel_child] = cbm::with_cancel(parent);
    auto [grandchild, cancel_grandchild] = cbm::with_cancel(child);
    Gate in_callback;
    Gate release_callback;
    // Thread B cancels the child and is held inside a stop_callback on the
    // child's token. Its bookkeeping ran first: the grandchild is marked.
    std::stop_callback hold(child.done(), [&] {
        in_callback.open();
        release_callback.wait();
    });
    std::thread b([cancel_child = cancel_child] { cancel_child(); });
    in_callback.wait();
    REQUIRE(grandchild.canceled());
    {
        // B stays inside until this thread releases it, after cancel_parent:
        // a cancel that waited for B would never return.
        const Watchdog watchdog("cancel_parent while B is inside a stop_callback");
        cancel_parent();
    }
    const bool grandchild_canceled_at_return = grandchild.canceled();
    release_callback.open();
    b.join();
    REQUIRE(grandchild_canceled_at_return);
    REQUIRE(parent.canceled());
}

TEST_CASE("a cancel that finds its context being canceled by another thread returns only once every descendant's "
          "err() is set",
          "[context][race]") {
    int early_returns = 0;
    for (int round = 0; round < 10; ++round) {
        auto [root, cancel_root] = cbm::with_cancel({});
        std::vector<Context> children;
        for (int i = 0; i < 50'000; ++i) children.push_back(cbm::with_cancel(root).first);
        std::atomic<bool> go{false};
        std::thread other([&go, cancel_root = cancel_root] {
            while (!go.load()) {
            }
            cancel_root();
        });
        go.store(true);
        while (!root.canceled()) {
        }
        cancel_root();  // the other thread's call is the one that cancels
        if (!children.back().canceled()) ++early_returns;
        other.join();
    }
    REQUIRE(early_returns == 0);
}

TEST_CASE("a stop_callback that waits for a worker which itself calls cancel() completes (no deadlock)",
          "[context][race]") {
    for (int round = 0; round < 200; ++round) {
        auto [parent, cancel_parent] = cbm::with_cancel({});
        auto [ctx, cancel] = cbm::with_cancel(parent);
        Gate worker_go;
        Gate worker_done;
        std::thread worker([&, cancel = cancel, cancel_parent = cancel_parent] {
            worker_go.wait();
            cancel();         // already canceled by the main thread: returns at once
            cancel_parent();  // a parent whose child is mid-cancellation: returns too
            worker_done.open();
        });
        std::stop_callback waits_for_worker(ctx.done(), [&] {
            worker_go.open();
            worker_done.wait();
        });
        {
            const Watchdog watchdog("a stop_callback waiting for a worker that cancels");
            cancel();
        }
        worker.join();
        REQUIRE(ctx.err() == cbm::errc::canceled);
        REQUIRE(parent.err() == cbm::errc::canceled);
    }
}

TEST_CASE("a cancel made from a stop_callback during another cancellation on the same thread does not wait for itself",
          "[context]") {
    auto [parent, cancel_parent] = cbm::with_cancel({});
    auto [child, cancel_child] = cbm::with_cancel(parent);
    auto [grandchild, cancel_grandchild] = cbm::with_cancel(child);
    bool reentered = false;
    std::stop_callback on_parent(parent.done(), [&, cancel_child = cancel_child, cancel_grandchild = cancel_grandchild] {
        cancel_child();  // the child is not canceled yet: this call does it
        cancel_grandchild();
        reentered = true;
    });
    std::stop_callback on_grandchild(grandchild.done(), [&, cancel_parent = cancel_parent] {
        cancel_parent();  // already canceled by this thread's outer call: must return, not wait
    });
    cancel_parent();
    REQUIRE(reentered);
    REQUIRE(grandchild.canceled());
}

TEST_CASE("a context whose last handle is dropped by its own cancellation is not used after it is freed",
          "[context]") {
    // Only a stop_callback's captured copy keeps the context alive; the
    // external stop request cancels it, and the callback drops that copy.
    std::stop_source external;
    auto holder = std::make_unique<Context>(cbm::with_stop_token({}, external.get_token()).first);
    std::unique_ptr<std::stop_callback<std::function<void()>>> drop_on_stop;
    drop_on_stop = std::make_unique<std::stop_callback<std::function<void()>>>(
        holder->done(), std::function<void()>([&holder] { holder.reset(); }));
    external.request_stop();  // ASan reports a use after free if the cancellation holds no reference
    REQUIRE(holder == nullptr);
    drop_on_stop.reset();
}

TEST_CASE("a canceled child detaches: a million children created and canceled leave the parent holding none",
          "[context]") {
    auto [parent, cancel_parent] = cbm::with_cancel({});
    Counter counter;
    constexpr int kChildren = 1'000'000;
    for (int i = 0; i < kChildren; ++i) {
        auto [child, cancel_child] = cbm::with_cancel(parent);
        if (i % 1000 == 0) REQUIRE(children_held(parent) == 1);
        if (i % 100'000 == 0) {
            // Also check that the nodes are freed: a value on the child dies with it.
            Context v = cbm::with_value(child, tracked_key, Tracked(counter));
            REQUIRE(counter.alive() == 1);
        }
        cancel_child();
    }
    REQUIRE(children_held(parent) == 0);
    REQUIRE(counter.alive() == 0);
    REQUIRE(counter.errors.load() == 0);
    REQUIRE_FALSE(parent.canceled());
}

TEST_CASE("a child dropped without cancel is freed and leaves its parent's list; its done() token can no longer stop",
          "[context][lifetime]") {
    auto [parent, cancel_parent] = cbm::with_cancel({});
    Counter counter;
    std::stop_token orphan_token;
    {
        auto [child, cancel_child] = cbm::with_cancel(parent);
        Context v = cbm::with_value(child, tracked_key, Tracked(counter));
        orphan_token = child.done();
        REQUIRE(children_held(parent) == 1);
        // All handles dropped without cancel: nothing can cancel the child
        // but its parent, and nothing can observe it but the bare token.
    }
    REQUIRE(children_held(parent) == 0);
    REQUIRE(counter.alive() == 0);
    REQUIRE_FALSE(orphan_token.stop_possible());
    cancel_parent();
    REQUIRE_FALSE(orphan_token.stop_requested());
}

TEST_CASE("a chain of 100,000 nested contexts cancels and is destroyed without deep recursion", "[context]") {
    auto [root, cancel_root] = cbm::with_cancel({});
    Context leaf = root;
    for (int i = 0; i < 100'000; ++i) leaf = cbm::with_cancel(leaf).first;
    cancel_root();
    REQUIRE(leaf.err() == cbm::errc::canceled);
    leaf = Context();  // releases the whole chain
    REQUIRE(children_held(root) == 0);
}

// ---------------------------------------------------------------------------
// deadlines

TEST_CASE("with_timeout cancels with deadline_exceeded through the shared timer thread", "[context][deadline]") {
    auto [ctx, cancel] = cbm::with_timeout({}, 5ms);
    const auto deadline = ctx.deadline();
    REQUIRE(deadline.has_value());
    REQUIRE(ctx.wait_for(10s));
    REQUIRE(ctx.err() == cbm::errc::deadline_exceeded);
    REQUIRE(ctx.err() == std::errc::timed_out);
    REQUIRE(std::chrono::steady_clock::now() >= *deadline);
    REQUIRE(code_of(cbm::cause(ctx)) == cbm::errc::deadline_exceeded);
}

TEST_CASE("a deadline at or before now gives a context that is already deadline_exceeded", "[context][deadline]") {
    auto [past, cancel_past] = cbm::with_deadline({}, std::chrono::steady_clock::now() - 1s);
    REQUIRE(past.err() == cbm::errc::deadline_exceeded);
    auto [zero, cancel_zero] = cbm::with_timeout({}, 0s);
    REQUIRE(zero.err() == cbm::errc::deadline_exceeded);
    auto [negative, cancel_negative] = cbm::with_timeout({}, -5min);
    REQUIRE(negative.err() == cbm::errc::deadline_exceeded);
    REQUIRE(negative.done().stop_requested());
    auto [very_negative, cancel_very_negative] = cbm::with_timeout({}, std::chrono::hours::min());
    REQUIRE(very_negative.err() == cbm::errc::deadline_exceeded);
    cancel_zero();
    REQUIRE(zero.err() == cbm::errc::deadline_exceeded);
}

TEST_CASE("a huge timeout saturates to no deadline instead of overflowing", "[context][deadline]") {
    auto [ctx, cancel] = cbm::with_timeout({}, std::chrono::hours::max());
    REQUIRE_FALSE(ctx.deadline());
    REQUIRE_FALSE(ctx.canceled());
    cancel();
}

TEST_CASE("a child's deadline is the earlier of its own and its parent's", "[context][deadline]") {
    const auto now = std::chrono::steady_clock::now();
    auto [parent, cancel_parent] = cbm::with_deadline({}, now + 1h);
    auto [later, cancel_later] = cbm::with_deadline(parent, now + 2h);
    auto [earlier, cancel_earlier] = cbm::with_deadline(parent, now + 30min);
    Context value = cbm::with_value(earlier, attempt, 3);
    auto [plain, cancel_plain] = cbm::with_cancel(parent);
    REQUIRE(*later.deadline() == now + 1h);
    REQUIRE(*earlier.deadline() == now + 30min);
    REQUIRE(*value.deadline() == now + 30min);
    REQUIRE(*plain.deadline() == now + 1h);
    cancel_parent();
    REQUIRE(later.err() == cbm::errc::canceled);
    REQUIRE(earlier.err() == cbm::errc::canceled);
}

TEST_CASE("a parent's deadline reaches children that have no timer of their own", "[context][deadline]") {
    auto [parent, cancel_parent] = cbm::with_timeout({}, 5ms);
    auto [child, cancel_child] = cbm::with_timeout(parent, 1h);  // later: inherits the parent's
    REQUIRE(child.deadline() == parent.deadline());
    REQUIRE(child.wait_for(10s));
    REQUIRE(child.err() == cbm::errc::deadline_exceeded);
}

TEST_CASE("with_timeout_cause reports its cause only when the deadline fires", "[context][deadline]") {
    auto cause = std::make_exception_ptr(std::runtime_error("backend too slow"));
    auto [fired, cancel_fired] = cbm::with_timeout_cause({}, 2ms, cause);
    auto [child, cancel_child] = cbm::with_cancel(fired);
    REQUIRE(fired.wait_for(10s));
    REQUIRE(fired.err() == cbm::errc::deadline_exceeded);
    REQUIRE(what_of(cbm::cause(fired)) == "backend too slow");
    REQUIRE(what_of(cbm::cause(child)) == "backend too slow");

    auto [early, cancel_early] = cbm::with_timeout_cause({}, 1h, cause);
    cancel_early();
    REQUIRE(early.err() == cbm::errc::canceled);
    REQUIRE(code_of(cbm::cause(early)) == cbm::errc::canceled);

    auto [expired, cancel_expired] = cbm::with_deadline_cause({}, std::chrono::steady_clock::now(), cause);
    REQUIRE(what_of(cbm::cause(expired)) == "backend too slow");
}

TEST_CASE("10,000 pending timeouts add no threads, and cancelling them empties the timer", "[context][deadline]") {
    auto warm = cbm::with_timeout({}, 1h);  // the timer thread exists from here on
    const std::size_t threads_before = thread_count();
    const std::size_t pending_before = cbm::detail::TimerService::shared().pending();
    std::vector<std::pair<Context, cbm::CancelFunc>> timeouts;
    timeouts.reserve(10'000);
    for (int i = 0; i < 10'000; ++i) timeouts.push_back(cbm::with_timeout({}, std::chrono::seconds(60 + i % 600)));
    REQUIRE(thread_count() == threads_before);
    REQUIRE(cbm::detail::TimerService::shared().pending() == pending_before + 10'000);
    // Cancel in a shuffled order: removal from the middle of the heap.
    std::mt19937 random(7);
    std::shuffle(timeouts.begin(), timeouts.end(), random);
    for (auto& [ctx, cancel] : timeouts) cancel();
    REQUIRE(cbm::detail::TimerService::shared().pending() == pending_before);
    warm.second();
}

TEST_CASE("the timer fires deadlines in due order", "[context][deadline]") {
    const int due[] = {5, 1, 4, 2, 3, 0};
    const auto base = std::chrono::steady_clock::now() + 200ms;
    std::vector<std::pair<Context, cbm::CancelFunc>> timeouts;
    for (int d : due) timeouts.push_back(cbm::with_deadline({}, base + std::chrono::milliseconds(d)));
    // Record the firing order on the timer thread itself, through stop callbacks.
    std::mutex order_mutex;
    std::vector<int> order;
    std::vector<std::unique_ptr<std::stop_callback<std::function<void()>>>> callbacks;
    for (std::size_t i = 0; i < timeouts.size(); ++i) {
        callbacks.push_back(std::make_unique<std::stop_callback<std::function<void()>>>(
            timeouts[i].first.done(), std::function<void()>([&, d = due[i]] {
                std::lock_guard<std::mutex> lock(order_mutex);
                order.push_back(d);
            })));
    }
    for (auto& t : timeouts) REQUIRE(t.first.wait_for(10s));
    std::lock_guard<std::mutex> lock(order_mutex);
    REQUIRE(order == std::vector<int>{0, 1, 2, 3, 4, 5});
}

// ---------------------------------------------------------------------------
// causes

TEST_CASE("cause is empty while active, the given cause when canceled with one, else an error equal to err()",
          "[context][cause]") {
    auto [ctx, cancel] = cbm::with_cancel_cause({});
    REQUIRE(cbm::cause(ctx) == nullptr);
    auto [child, cancel_child] = cbm::with_cancel(ctx);
    cancel(std::make_exception_ptr(std::runtime_error("disk full")));
    REQUIRE(what_of(cbm::cause(ctx)) == "disk full");
    REQUIRE(what_of(cbm::cause(child)) == "disk full");  // descendants report the ancestor's cause

    auto [plain, cancel_plain] = cbm::with_cancel({});
    cancel_plain();
    REQUIRE(code_of(cbm::cause(plain)) == cbm::errc::canceled);

    auto [no_cause, cancel_no_cause] = cbm::with_cancel_cause({});
    cancel_no_cause(nullptr);  // Go: cancel(nil) reports Canceled
    REQUIRE(code_of(cbm::cause(no_cause)) == cbm::errc::canceled);

    auto [coded, cancel_coded] = cbm::with_cancel_cause({});
    cancel_coded(std::make_error_code(std::errc::connection_reset));
    REQUIRE(coded.err() == cbm::errc::canceled);
    REQUIRE(code_of(cbm::cause(coded)) == std::errc::connection_reset);

    REQUIRE(cbm::cause(cbm::without_cancel(ctx)) == nullptr);
}

// ---------------------------------------------------------------------------
// values

TEST_CASE("the nearest value binding wins, and keys with equal names never collide", "[context][value]") {
    Context outer = cbm::with_value({}, trace_id, std::string("outer"));
    auto [mid, cancel_mid] = cbm::with_cancel(outer);
    Context inner = cbm::with_value(mid, trace_id, "inner");
    Context other = cbm::with_value(inner, other_trace_id, "other");
    REQUIRE(*outer.value(trace_id) == "outer");
    REQUIRE(*mid.value(trace_id) == "outer");
    REQUIRE(*inner.value(trace_id) == "inner");
    REQUIRE(*other.value(trace_id) == "inner");
    REQUIRE(*other.value(other_trace_id) == "other");
    REQUIRE(inner.value(other_trace_id) == nullptr);
    REQUIRE(other.value(attempt) == nullptr);
    REQUIRE(other_trace_id.name() == trace_id.name());
}

TEST_CASE("a value lives as long as some context can reach it, and is destroyed once", "[context][value]") {
    Counter counter;
    {
        Context v = cbm::with_value({}, tracked_key, Tracked(counter));
        REQUIRE(counter.alive() == 1);
        auto [child, cancel] = cbm::with_cancel(v);
        v = Context();
        REQUIRE(counter.alive() == 1);
        REQUIRE(child.value(tracked_key)->alive());
        cancel();
        REQUIRE(child.value(tracked_key)->alive());
    }
    REQUIRE(counter.alive() == 0);
    REQUIRE(counter.errors.load() == 0);
}

template <class V>
concept can_bind_attempt = requires(const Context& c, V v) { cbm::with_value(c, attempt, std::move(v)); };

TEST_CASE("with_value rejects a value of the wrong type for its key at compile time", "[context][value]") {
    STATIC_REQUIRE(can_bind_attempt<int>);
    STATIC_REQUIRE(can_bind_attempt<short>);
    STATIC_REQUIRE_FALSE(can_bind_attempt<std::string>);
    STATIC_REQUIRE_FALSE(can_bind_attempt<const char*>);
}

// ---------------------------------------------------------------------------
// without_cancel

TEST_CASE("without_cancel keeps the values but is never canceled and has no deadline", "[context]") {
    auto [parent, cancel] = cbm::with_timeout(cbm::with_value({}, trace_id, "abc"), 1h);
    Context detached = cbm::without_cancel(parent);
    REQUIRE(*detached.value(trace_id) == "abc");
    REQUIRE_FALSE(detached.deadline());
    REQUIRE_FALSE(detached.done().stop_possible());
    cancel();
    REQUIRE(parent.canceled());
    REQUIRE_FALSE(detached.err());
    REQUIRE(cbm::cause(detached) == nullptr);
    auto [child, cancel_child] = cbm::with_cancel(detached);
    REQUIRE_FALSE(child.canceled());  // not born canceled: the parent's cancellation does not pass
    REQUIRE(*child.value(trace_id) == "abc");
    cancel_child();
}

// ---------------------------------------------------------------------------
// after_func

TEST_CASE("after_func runs once after cancel, on another thread, and cancel does not wait for it",
          "[context][after_func]") {
    auto [ctx, cancel] = cbm::with_cancel({});
    Gate release_f;
    std::atomic<int> runs{0};
    std::atomic<std::thread::id> ran_on{};
    auto stop = cbm::after_func(ctx, [&] {
        ran_on = std::this_thread::get_id();
        release_f.wait();  // f may block: cancel() must already have returned
        runs.fetch_add(1);
    });
    REQUIRE(runs.load() == 0);
    cancel();  // would hang (and the gate time out) if cancel waited for f
    release_f.open();
    REQUIRE(eventually([&] { return runs.load() == 1; }));
    REQUIRE(ran_on.load() != std::this_thread::get_id());
    cancel();
    REQUIRE_FALSE(stop());  // f has run
    REQUIRE(runs.load() == 1);
}

TEST_CASE("after_func on an already canceled context runs promptly, but not inline", "[context][after_func]") {
    auto [ctx, cancel] = cbm::with_cancel({});
    cancel();
    std::atomic<std::thread::id> ran_on{};
    std::atomic<bool> ran{false};
    auto stop = cbm::after_func(ctx, [&] {
        ran_on = std::this_thread::get_id();
        ran = true;
    });
    REQUIRE(eventually([&] { return ran.load(); }));
    REQUIRE(ran_on.load() != std::this_thread::get_id());
}

TEST_CASE("stop() returns true only when it prevented f, and f's captures are released", "[context][after_func]") {
    auto [ctx, cancel] = cbm::with_cancel({});
    Counter counter;
    std::atomic<int> runs{0};
    auto stop = cbm::after_func(ctx, [&, t = Tracked(counter)] { runs.fetch_add(1); });
    REQUIRE(counter.alive() == 1);
    REQUIRE(stop());
    REQUIRE_FALSE(stop());
    REQUIRE(counter.alive() == 0);  // f is gone: it can never run
    cancel();
    REQUIRE(runs.load() == 0);
    REQUIRE(counter.errors.load() == 0);
}

TEST_CASE("dropping the StopFunc does not unregister f", "[context][after_func]") {
    auto [ctx, cancel] = cbm::with_cancel({});
    std::atomic<int> runs{0};
    { (void)cbm::after_func(ctx, [&] { runs.fetch_add(1); }); }
    cancel();
    REQUIRE(eventually([&] { return runs.load() == 1; }));
}

TEST_CASE("after_func on a context that can never be canceled never runs f; stop() reports that once",
          "[context][after_func]") {
    Counter counter;
    auto stop = cbm::after_func(Context::background(), [t = Tracked(counter)] {});
    REQUIRE(counter.alive() == 1);
    REQUIRE(stop());
    REQUIRE_FALSE(stop());
    REQUIRE(counter.alive() == 0);
}

TEST_CASE("after_func rejects an empty callable with std::invalid_argument", "[context][after_func]") {
    auto [ctx, cancel] = cbm::with_cancel({});
    std::function<void()> empty;
    void (*null)() = nullptr;
    REQUIRE_THROWS_AS(cbm::after_func(ctx, empty), std::invalid_argument);
    REQUIRE_THROWS_AS(cbm::after_func(ctx, null), std::invalid_argument);
}

TEST_CASE("functions that block do not hold up other after_funcs", "[context][after_func]") {
    auto [ctx, cancel] = cbm::with_cancel({});
    Gate release;
    std::atomic<int> blocked{0};
    std::atomic<int> finished{0};
    std::atomic<bool> quick_ran{false};
    std::vector<cbm::StopFunc> stops;
    for (int i = 0; i < 3; ++i) {
        stops.push_back(cbm::after_func(ctx, [&] {
            blocked.fetch_add(1);
            release.wait();
            finished.fetch_add(1);
        }));
    }
    stops.push_back(cbm::after_func(ctx, [&] { quick_ran = true; }));
    cancel();
    const bool quick = eventually([&] { return quick_ran.load() && blocked.load() == 3; });
    release.open();
    REQUIRE(eventually([&] { return finished.load() == 3; }));  // before the gate goes out of scope
    REQUIRE(quick);
}

TEST_CASE("many short-lived after_funcs on a long-lived context do not accumulate", "[context][after_func]") {
    auto [ctx, cancel] = cbm::with_cancel({});
    Counter counter;
    for (int i = 0; i < 10'000; ++i) {
        auto stop = cbm::after_func(ctx, [t = Tracked(counter)] {});
        REQUIRE(stop());
    }
    REQUIRE(counter.alive() == 0);
    REQUIRE(cbm::detail::ContextAccess::canceler(ctx)->listener_count == 0);
}

// ---------------------------------------------------------------------------
// std::stop_token interop

TEST_CASE("done() drives std::stop_callback, std::jthread and std::condition_variable_any", "[context][interop]") {
    auto [ctx, cancel] = cbm::with_cancel({});
    bool callback_ran = false;
    std::stop_callback on_done(ctx.done(), [&] { callback_ran = true; });

    std::atomic<bool> worker_saw_stop{false};
    std::mutex mutex;
    std::condition_variable_any cv;
    std::jthread worker([&, token = ctx.done()] {
        std::unique_lock<std::mutex> lock(mutex);
        cv.wait(lock, token, [] { return false; });  // woken only by the stop request
        worker_saw_stop = token.stop_requested();
    });
    cancel();
    REQUIRE(callback_ran);
    worker.join();
    REQUIRE(worker_saw_stop.load());
}

TEST_CASE("with_stop_token derives a context that a std::jthread's stop request cancels", "[context][interop]") {
    auto [root, cancel_root] = cbm::with_cancel({});
    std::atomic<bool> child_canceled{false};
    Gate has_context;
    Context from_thread;
    std::jthread worker([&, root = root](std::stop_token token) {
        auto [ctx, cancel] = cbm::with_stop_token(root, std::move(token));
        from_thread = ctx;
        has_context.open();
        ctx.wait();
        child_canceled = ctx.err() == cbm::errc::canceled;
    });
    has_context.wait();
    REQUIRE_FALSE(from_thread.canceled());
    worker.request_stop();
    worker.join();
    REQUIRE(child_canceled.load());
    REQUIRE_FALSE(root.canceled());
    REQUIRE(children_held(root) == 0);

    std::stop_source stopped;
    stopped.request_stop();
    auto [born, cancel_born] = cbm::with_stop_token({}, stopped.get_token());
    REQUIRE(born.canceled());

    std::stop_source source;
    auto [linked, cancel_linked] = cbm::with_stop_token(root, source.get_token());
    cancel_root();
    REQUIRE(linked.canceled());  // the parent still cancels it
    source.request_stop();       // no effect on an already canceled context
    REQUIRE(linked.err() == cbm::errc::canceled);
}

// ---------------------------------------------------------------------------
// wait

TEST_CASE("wait_for and wait_until return false on timeout and true once another thread cancels", "[context]") {
    auto [ctx, cancel] = cbm::with_cancel({});
    REQUIRE_FALSE(ctx.wait_for(1ms));
    REQUIRE_FALSE(ctx.wait_until(std::chrono::system_clock::now() + 1ms));
    std::thread canceller([cancel = cancel] { cancel(); });
    REQUIRE(ctx.wait_for(10s));
    canceller.join();
    REQUIRE(ctx.wait_until(std::chrono::steady_clock::now()));
}

// ---------------------------------------------------------------------------
// current_context

TEST_CASE("current_context is background unless a ContextScope sets it; scopes nest and restore", "[context]") {
    REQUIRE(cbm::current_context() == Context::background());
    Context a = cbm::with_value({}, attempt, 1);
    Context b = cbm::with_value({}, attempt, 2);
    {
        cbm::ContextScope outer(a);
        REQUIRE(*cbm::current_context().value(attempt) == 1);
        {
            cbm::ContextScope inner(b);
            REQUIRE(*cbm::current_context().value(attempt) == 2);
            bool other_thread_sees_background = false;
            std::thread other([&] { other_thread_sees_background = cbm::current_context() == Context::background(); });
            other.join();
            REQUIRE(other_thread_sees_background);
        }
        REQUIRE(cbm::current_context() == a);
    }
    REQUIRE(cbm::current_context() == Context::background());
}

// ---------------------------------------------------------------------------
// races

TEST_CASE("concurrent cancels across a tree of 100 contexts in random order leave every context canceled once",
          "[context][race]") {
    constexpr int kNodes = 100;
    constexpr int kThreads = 4;
    for (int round = 0; round < 200; ++round) {
        std::mt19937 random(static_cast<unsigned>(round));
        std::vector<Context> contexts;
        std::vector<cbm::CancelFunc> cancels;
        std::vector<int> parent_of;
        contexts.reserve(kNodes);
        auto [root, cancel_root] = cbm::with_cancel({});
        contexts.push_back(root);
        cancels.push_back(cancel_root);
        parent_of.push_back(-1);
        for (int i = 1; i < kNodes; ++i) {
            const int parent = static_cast<int>(random() % static_cast<unsigned>(i));
            Context base = contexts[static_cast<std::size_t>(parent)];
            if (random() % 4 == 0) base = cbm::with_value(base, attempt, i);
            auto [ctx, cancel] = (random() % 3 == 0) ? cbm::with_timeout(base, 1h) : cbm::with_cancel(base);
            contexts.push_back(ctx);
            cancels.push_back(cancel);
            parent_of.push_back(parent);
        }
        std::vector<std::atomic<int>> stops(kNodes);
        std::vector<std::unique_ptr<std::stop_callback<std::function<void()>>>> callbacks;
        for (int i = 0; i < kNodes; ++i) {
            callbacks.push_back(std::make_unique<std::stop_callback<std::function<void()>>>(
                contexts[static_cast<std::size_t>(i)].done(),
                std::function<void()>([&stops, i] { stops[static_cast<std::size_t>(i)].fetch_add(1); })));
        }
        std::atomic<int> ready{0};
        std::vector<std::thread> threads;
        for (int t = 0; t < kThreads; ++t) {
            std::vector<int> order(kNodes);
            for (int i = 0; i < kNodes; ++i) order[static_cast<std::size_t>(i)] = i;
            std::shuffle(order.begin(), order.end(), random);
            order.resize(kNodes / 2);
            threads.emplace_back([&, order] {
                ready.fetch_add(1);
                while (ready.load() < kThreads) {
                }
                for (int i : order) cancels[static_cast<std::size_t>(i)]();
            });
        }
        for (auto& t : threads) t.join();
        cancel_root();
        for (int i = 0; i < kNodes; ++i) {
            REQUIRE(contexts[static_cast<std::size_t>(i)].err() == cbm::errc::canceled);
            REQUIRE(stops[static_cast<std::size_t>(i)].load() == 1);
            if (parent_of[static_cast<std::size_t>(i)] >= 0) {
                REQUIRE(children_held(contexts[static_cast<std::size_t>(parent_of[static_cast<std::size_t>(i)])]) == 0);
            }
        }
    }
}

TEST_CASE("a child created while its parent is being canceled always ends up canceled", "[context][race]") {
    for (int round = 0; round < 500; ++round) {
        auto [parent, cancel_parent] = cbm::with_cancel({});
        std::atomic<int> ready{0};
        Context child;
        Context timed_child;
        std::thread creator([&, parent = parent] {
            ready.fetch_add(1);
            while (ready.load() < 2) {
            }
            child = cbm::with_cancel(parent).first;
            timed_child = cbm::with_timeout(parent, 1h).first;
        });
        ready.fetch_add(1);
        while (ready.load() < 2) {
        }
        cancel_parent();
        creator.join();
        REQUIRE(child.err() == cbm::errc::canceled);
        REQUIRE(child.done().stop_requested());
        REQUIRE(timed_child.err() == cbm::errc::canceled);
        REQUIRE(children_held(parent) == 0);
    }
}

TEST_CASE("cancel racing with after_func stop: f runs exactly when stop() returns false", "[context][race]") {
    for (int round = 0; round < 500; ++round) {
        auto [ctx, cancel] = cbm::with_cancel({});
        std::atomic<int> runs{0};
        auto stop = cbm::after_func(ctx, [&] { runs.fetch_add(1); });
        std::atomic<int> ready{0};
        bool stopped = false;
        std::thread stopper([&] {
            ready.fetch_add(1);
            while (ready.load() < 2) {
            }
            stopped = stop();
        });
        ready.fetch_add(1);
        while (ready.load() < 2) {
        }
        cancel();
        stopper.join();
        if (stopped) {
            // f's captured state is gone, so it can never run.
            REQUIRE(runs.load() == 0);
        } else {
            REQUIRE(eventually([&] { return runs.load() == 1; }));
        }
        REQUIRE_FALSE(stop());
    }
}

TEST_CASE("a cancel, a parent cancel and a deadline racing agree on one error, and free everything",
          "[context][race]") {
    Counter counter;
    for (int round = 0; round < 300; ++round) {
        auto [parent, cancel_parent] = cbm::with_cancel({});
        auto [ctx, cancel] = cbm::with_timeout(cbm::with_value(parent, tracked_key, Tracked(counter)),
                                               std::chrono::microseconds(round % 50));
        std::atomic<int> ready{0};
        std::thread a([&, cancel = cancel] {
            ready.fetch_add(1);
            while (ready.load() < 3) {
            }
            cancel();
        });
        std::thread b([&, cancel_parent = cancel_parent] {
            ready.fetch_add(1);
            while (ready.load() < 3) {
            }
            cancel_parent();
        });
        ready.fetch_add(1);
        while (ready.load() < 3) {
        }
        const std::error_code first_seen = ctx.err();
        a.join();
        b.join();
        const std::error_code settled = ctx.err();
        REQUIRE(settled);
        if (first_seen) REQUIRE(first_seen == settled);
        REQUIRE(ctx.err() == settled);
    }
    // Timers that have not fired yet hold their nodes; wait for them to be removed.
    REQUIRE(eventually([&] { return counter.alive() == 0; }));
    REQUIRE(counter.errors.load() == 0);
}

TEST_CASE("an external stop request racing with cancel and the context's destruction is safe", "[context][race]") {
    for (int round = 0; round < 300; ++round) {
        std::stop_source source;
        auto [root, cancel_root] = cbm::with_cancel({});
        auto made = cbm::with_stop_token(root, source.get_token());
        std::atomic<int> ready{0};
        std::thread stopper([&] {
            ready.fetch_add(1);
            while (ready.load() < 3) {
            }
            source.request_stop();
        });
        std::thread canceller([&, cancel_root = cancel_root] {
            ready.fetch_add(1);
            while (ready.load() < 3) {
            }
            cancel_root();
        });
        ready.fetch_add(1);
        while (ready.load() < 3) {
        }
        const bool last_drop = round % 2 == 0;
        if (last_drop) made = {};  // may destroy the node while its stop_callback runs
        stopper.join();
        canceller.join();
        if (!last_drop) REQUIRE(made.first.canceled());
    }
}

TEST_CASE("many threads deriving, cancelling and dropping children of one shared parent", "[context][race]") {
    auto [parent, cancel_parent] = cbm::with_cancel({});
    Counter counter;
    std::atomic<int> failed_stops{0};
    constexpr int kThreads = 4;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, parent = parent, t] {
            for (int i = 0; i < 2000; ++i) {
                auto [child, cancel] = cbm::with_cancel(parent);
                Context v = cbm::with_value(child, tracked_key, Tracked(counter));
                auto stop = cbm::after_func(v, [] {});
                if ((i + t) % 3 == 0 && !stop()) failed_stops.fetch_add(1);
                if (i % 2 == 0) cancel();
            }
        });
    }
    for (auto& t : threads) t.join();
    REQUIRE(failed_stops.load() == 0);
    cancel_parent();
    REQUIRE(children_held(parent) == 0);
    REQUIRE(eventually([&] { return counter.alive() == 0; }));
    REQUIRE(counter.errors.load() == 0);
}
