// A callback bound to a context whose deadline expires is unregistered by
// cbm's timer thread; its callable (user code) must be destroyed elsewhere.
// An executable of its own: the property shows only while no thread holds a
// trigger record (then an unregister reclaims at once), and the test
// programs of the headers trigger on their main threads.
#include <cbm/callback_group.hpp>
#include <cbm/context.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <stop_token>
#include <thread>

#include "test_support.hpp"

using cbm::CallbackGroup;
using cbm_test::eventually;

namespace {
// A callable that records the thread its destructor runs on (user code),
// once armed. Moved-from copies hold nothing and report nothing.
struct ReportsDestruction {
    struct Report {
        std::atomic<bool> armed{false};
        std::atomic<std::thread::id> destroyed_on{};
    };
    std::shared_ptr<Report> report = std::make_shared<Report>();
    ReportsDestruction() = default;
    ReportsDestruction(ReportsDestruction&&) noexcept = default;
    ReportsDestruction& operator=(ReportsDestruction&&) = delete;
    ~ReportsDestruction() {
        if (report && report->armed.load()) report->destroyed_on.store(std::this_thread::get_id());
    }
    void operator()() const {}
};
}  // namespace

TEST_CASE("a callback unregistered by its context's deadline is not destroyed on the timer thread",
          "[context][lifetime]") {
    // A round counts only when the deadline fired after the stop_callback
    // was in place. On a loaded machine the 1 ms deadline can pass before
    // that; std::stop_callback then runs inline, on this thread, which says
    // nothing about the timer thread, and the round is tried again.
    int counted_rounds = 0;
    for (int attempt = 0; attempt < 1000 && counted_rounds < 20; ++attempt) {
        CallbackGroup<void()> group;
        auto [ctx, cancel] = cbm::with_timeout(cbm::Context::background(), std::chrono::milliseconds(1));
        std::atomic<std::thread::id> canceled_on{};
        std::atomic<bool> registering_stop_callback{true};
        std::atomic<bool> fired_before_registered{false};
        const std::stop_callback on_stop(ctx.done(), [&] {
            if (registering_stop_callback.load()) fired_before_registered.store(true);
            canceled_on.store(std::this_thread::get_id());
        });
        registering_stop_callback.store(false);
        if (fired_before_registered.load()) continue;
        ++counted_rounds;
        ReportsDestruction callable;
        const std::shared_ptr<ReportsDestruction::Report> report = callable.report;
        // Armed before add: the 1 ms deadline may fire (and the callable die)
        // before add returns. Moved-from copies hold no report, so only the
        // callable cbm keeps can report.
        report->armed.store(true);
        group.add(std::move(callable), {.context = ctx});
        REQUIRE(eventually([&] { return report->destroyed_on.load() != std::thread::id{}; }));
        REQUIRE(canceled_on.load() != std::thread::id{});
        REQUIRE(canceled_on.load() != std::this_thread::get_id());  // the deadline fired on the timer thread
        REQUIRE(report->destroyed_on.load() != canceled_on.load()); // ... and the callable died elsewhere
    }
    REQUIRE(counted_rounds == 20);
}
