// Tests for cbm/resilience.hpp: timeouts, retries, circuit breakers and dead
// letters, on a clock the tests advance by hand (nothing sleeps for real).
#include <cbm/callback_group.hpp>
#include <cbm/callback_registry.hpp>
#include <cbm/resilience.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "manual_clock.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using cbm_test::code_of;
using cbm::CallbackGroup;
using cbm::GroupOptions;

namespace {

using cbm_test::ManualClock;

}  // namespace

TEST_CASE("a failing callback is retried with growing, capped backoff until it succeeds", "[resilience][retry]") {
    ManualClock clock;
    CallbackGroup<void()> group(GroupOptions{.metrics = true, .clock = &clock});
    int calls = 0;
    std::vector<cbm::DeadLetter> letters;
    group.set_dead_letter_handler([&](const cbm::DeadLetter& d) { letters.push_back(d); });
    group.add([&] { if (++calls < 4) throw std::runtime_error("flaky"); },
              {.name = "flaky",
               .retry = {.attempts = 5, .initial_backoff = 10ms, .multiplier = 2.0, .max_backoff = 25ms, .jitter = 0.0}});
    const cbm::TriggerResult r = group.trigger();
    REQUIRE(calls == 4);
    REQUIRE(r.ok());
    REQUIRE(r.invoked == 1);
    REQUIRE(letters.empty());
    REQUIRE(clock.sleeps() == std::vector<std::chrono::nanoseconds>{10ms, 20ms, 25ms});
    const cbm::CallbackMetrics m = group.metrics().callbacks.at(0);
    REQUIRE(m.retries == 3);
    REQUIRE(m.invoked == 4);  // attempts
}

TEST_CASE("a callback that fails for good reaches the dead-letter handler once, with key, name, error and attempts",
          "[resilience][dead_letter]") {
    ManualClock clock;
    cbm::CallbackRegistry<int, void()> registry(GroupOptions{.clock = &clock});
    std::vector<std::string> letters;
    registry.set_dead_letter_handler([&](const cbm::DeadLetter& d) {
        letters.push_back(d.key + "/" + d.name + "/" + d.what() + "/" + std::to_string(d.attempts));
    });
    registry.add(7, [] { throw std::runtime_error("partner down"); }, {.name = "partner", .retry = {.attempts = 3, .jitter = 0.0}});
    registry.add(7, [] { throw std::logic_error("bug"); }, {.name = "plain"});  // no retry: its first failure is final
    const cbm::TriggerResult r = registry.trigger(7);
    REQUIRE(r.failed == 2);
    REQUIRE(letters == std::vector<std::string>{"7/partner/partner down/3", "7/plain/bug/1"});
    REQUIRE(clock.sleeps().size() == 2);
}

TEST_CASE("retries stop early when the trigger's context is canceled", "[resilience][retry]") {
    ManualClock clock;
    CallbackGroup<void()> group(GroupOptions{.clock = &clock});
    auto [ctx, cancel] = cbm::with_cancel({});
    int calls = 0;
    std::uint32_t attempts_seen = 0;
    group.set_dead_letter_handler([&](const cbm::DeadLetter& d) { attempts_seen = d.attempts; });
    group.add([&, cancel = cancel] {
        ++calls;
        cancel();
        throw std::runtime_error("no");
    }, {.retry = {.attempts = 5}});
    group.trigger(ctx);
    REQUIRE(calls == 1);
    REQUIRE(attempts_seen == 1);
    REQUIRE(clock.sleeps().empty());
}

TEST_CASE("jitter keeps every wait within [1 - jitter, 1 + jitter] of the nominal backoff", "[resilience][retry]") {
    const cbm::RetryOptions r{.attempts = 10, .initial_backoff = 100ms, .multiplier = 3.0, .max_backoff = 2s, .jitter = 0.25};
    bool varied = false;
    for (std::uint32_t attempt = 1; attempt < 10; ++attempt) {
        double nominal = 100e6;
        for (std::uint32_t i = 1; i < attempt; ++i) nominal = std::min(nominal * 3.0, 2e9);
        for (int sample = 0; sample < 200; ++sample) {
            const double d = static_cast<double>(cbm::detail::backoff_after(r, attempt).count());
            REQUIRE(d >= nominal * 0.75 - 1);
            REQUIRE(d <= nominal * 1.25 + 1);
            varied = varied || std::abs(d - nominal) > nominal * 0.01;
        }
    }
    REQUIRE(varied);
}

TEST_CASE("a circuit breaker opens after K consecutive failures, skips during the cool-down, then one trial decides",
          "[resilience][circuit]") {
    ManualClock clock;
    CallbackGroup<void()> group(GroupOptions{.metrics = true, .clock = &clock});
    bool failing = true;
    int calls = 0;
    group.add([&] {
        ++calls;
        if (failing) throw std::runtime_error("down");
    }, {.name = "partner", .circuit_breaker = {.failures = 3, .cool_down = 1s}});
    for (int i = 0; i < 3; ++i) REQUIRE(group.trigger().failed == 1);
    REQUIRE(group.metrics().callbacks[0].circuit_open);

    cbm::TriggerResult skipped = group.trigger();  // open: not called
    REQUIRE(calls == 3);
    REQUIRE(skipped.invoked == 0);
    REQUIRE(skipped.skipped == 1);

    clock.advance(1s);
    REQUIRE(group.trigger().failed == 1);  // the trial fails: open again
    REQUIRE(calls == 4);
    group.trigger();
    REQUIRE(calls == 4);

    clock.advance(1s);
    failing = false;
    REQUIRE(group.trigger().ok());  // the trial succeeds: closed
    REQUIRE_FALSE(group.metrics().callbacks[0].circuit_open);
    group.trigger();
    REQUIRE(calls == 6);
    const cbm::CallbackMetrics m = group.metrics().callbacks[0];
    REQUIRE(m.skipped_circuit_open == 2);
    REQUIRE(m.failed == 4);
}

TEST_CASE("while the circuit is half open, exactly one trial runs and concurrent triggers skip",
          "[resilience][circuit][race]") {
    for (int round = 0; round < 50; ++round) {
        ManualClock clock;
        CallbackGroup<void()> group(GroupOptions{.metrics = true, .clock = &clock});
        std::atomic<bool> failing{true};
        std::atomic<int> running{0};
        std::atomic<int> max_running{0};
        cbm_test::Gate release;
        group.add([&] {
            const int now_running = running.fetch_add(1) + 1;
            int seen = max_running.load();
            while (seen < now_running && !max_running.compare_exchange_weak(seen, now_running)) {
            }
            if (!failing.load()) release.wait();
            running.fetch_sub(1);
            if (failing.load()) throw std::runtime_error("down");
        }, {.circuit_breaker = {.failures = 1, .cool_down = 1s}});
        group.trigger();  // opens
        clock.advance(2s);
        failing = false;
        std::atomic<int> finished{0};
        std::vector<std::thread> threads;
        for (int t = 0; t < 4; ++t) {
            threads.emplace_back([&] {
                group.trigger();
                finished.fetch_add(1);
            });
        }
        // Three triggers skip while the one trial blocks.
        const bool others_skipped = cbm_test::eventually([&] { return finished.load() == 3; });
        release.open();
        for (auto& t : threads) t.join();
        REQUIRE(others_skipped);
        REQUIRE(max_running.load() == 1);
        REQUIRE(group.metrics().callbacks[0].skipped_circuit_open == 3);
        REQUIRE_FALSE(group.metrics().callbacks[0].circuit_open);
    }
}

TEST_CASE("a timeout gives each attempt a child context with that deadline, and an overrun fails with deadline_exceeded",
          "[resilience][timeout]") {
    ManualClock clock;
    CallbackGroup<void(int)> group(GroupOptions{.metrics = true, .clock = &clock});
    std::vector<std::error_code> errors;
    group.set_dead_letter_handler([&](const cbm::DeadLetter& d) { errors.push_back(code_of(d.error)); });
    bool saw_deadline = false;
    group.add([&](int work_ms) {
        saw_deadline = cbm::current_context().deadline().has_value();
        clock.advance(std::chrono::milliseconds(work_ms));  // "takes" that long
    }, {.name = "slow", .timeout = 50ms});
    REQUIRE(group.trigger(10).ok());
    REQUIRE(saw_deadline);
    const cbm::TriggerResult r = group.trigger(80);
    REQUIRE(r.failed == 1);
    REQUIRE(code_of(r.failures[0].error) == cbm::errc::deadline_exceeded);
    REQUIRE(errors == std::vector<std::error_code>{cbm::errc::deadline_exceeded});
    REQUIRE(group.metrics().callbacks[0].timed_out == 1);
}

TEST_CASE("a callback that waits on its context is woken by its timeout (real clock)", "[resilience][timeout]") {
    CallbackGroup<void()> group;
    bool woken_by_deadline = false;
    group.add([&] {
        const cbm::Context& ctx = cbm::current_context();
        woken_by_deadline = ctx.wait_for(10s) && ctx.err() == cbm::errc::deadline_exceeded;
    }, {.timeout = 5ms});
    const cbm::TriggerResult r = group.trigger();
    REQUIRE(woken_by_deadline);
    REQUIRE(r.failed == 1);
    REQUIRE(code_of(r.failures[0].error) == cbm::errc::deadline_exceeded);
}

TEST_CASE("resilience settings that make no sense are refused at add, and nothing is registered", "[resilience]") {
    CallbackGroup<void()> group;
    auto f = [] {};
    REQUIRE_THROWS_AS(group.add(f, {.timeout = -1ms}), std::invalid_argument);
    REQUIRE_THROWS_AS(group.add(f, {.retry = {.attempts = 0}}), std::invalid_argument);
    REQUIRE_THROWS_AS(group.add(f, {.retry = {.attempts = 2, .multiplier = 0.5}}), std::invalid_argument);
    REQUIRE_THROWS_AS(group.add(f, {.retry = {.attempts = 2, .jitter = 1.5}}), std::invalid_argument);
    REQUIRE_THROWS_AS(group.add(f, {.retry = {.initial_backoff = 2s, .max_backoff = 1s}}), std::invalid_argument);
    REQUIRE_THROWS_AS(group.add(f, {.circuit_breaker = {.failures = 1, .cool_down = -1s}}), std::invalid_argument);
    REQUIRE_THROWS_AS(group.add(f, {.once = true, .circuit_breaker = {.failures = 1}}), std::invalid_argument);
    REQUIRE(group.empty());
}

TEST_CASE("no retry starts after the callback unregisters itself during an attempt, by any path",
          "[resilience][retry][unregister]") {
    ManualClock clock;
    CallbackGroup<void()> group(GroupOptions{.clock = &clock});
    for (const char* path : {"unregister", "unregister_nowait", "context"}) {
        INFO(path);
        int attempts = 0;
        cbm::Registration r;
        auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
        r = group.add(
            [&, cancel = cancel, path] {
                ++attempts;
                if (std::string(path) == "unregister") r.unregister();
                if (std::string(path) == "unregister_nowait") r.unregister_nowait();
                if (std::string(path) == "context") cancel();
                throw std::runtime_error("fails");
            },
            {.context = ctx, .retry = {.attempts = 5}});
        const cbm::TriggerResult result = group.trigger();
        REQUIRE(attempts == 1);
        REQUIRE(result.failed == 1);
        REQUIRE(r.state() == cbm::CallbackState::unregistered);
    }
}

TEST_CASE("a once callback with retries runs its attempts inside the one invocation that claimed it",
          "[resilience][retry][once]") {
    ManualClock clock;
    CallbackGroup<void()> group(GroupOptions{.clock = &clock});
    int attempts = 0;
    group.add(
        [&] {
            if (++attempts < 3) throw std::runtime_error("not yet");
        },
        {.once = true, .retry = {.attempts = 5}});
    REQUIRE(group.trigger().ok());
    REQUIRE(attempts == 3);
    group.trigger();
    REQUIRE(attempts == 3);
}

namespace {

// A ManualClock whose now() parks one chosen thread until released: a test
// can stop a trigger inside the breaker's admission, between reading the
// circuit and claiming its trial.
class ParkingClock final : public cbm::ResilienceClock {
public:
    std::chrono::steady_clock::time_point now() noexcept override {
        if (park_thread_.load() == std::this_thread::get_id()) {
            park_thread_.store(std::thread::id{});
            parked_.open();
            resume_.wait();
        }
        return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(ns_.load()));
    }
    bool sleep_for(std::chrono::nanoseconds d, const cbm::Context&) override {
        advance(d);
        return true;
    }
    void advance(std::chrono::nanoseconds d) { ns_.fetch_add(d.count()); }
    void park_next_call_on(std::thread::id id) { park_thread_.store(id); }
    void wait_until_parked() { parked_.wait(); }
    void resume() { resume_.open(); }

private:
    std::atomic<std::int64_t> ns_{1'000'000'000};
    std::atomic<std::thread::id> park_thread_{};
    cbm_test::Gate parked_;
    cbm_test::Gate resume_;
};

struct CircuitLog {
    std::mutex mutex;
    std::vector<cbm::CircuitState> states;
    std::vector<std::string> keys;
    std::vector<std::string> names;
    void record(const cbm::CircuitChange& c) {
        const std::lock_guard<std::mutex> lock(mutex);
        states.push_back(c.state);
        keys.emplace_back(c.key);
        names.emplace_back(c.name);
    }
    std::vector<cbm::CircuitState> copy() {
        const std::lock_guard<std::mutex> lock(mutex);
        return states;
    }
};

}  // namespace

TEST_CASE("a trigger that saw the circuit open cannot claim a trial after the real trial closed it",
          "[resilience][circuit][race]") {
    ParkingClock clock;
    CallbackGroup<void()> group(GroupOptions{.metrics = true, .clock = &clock});
    std::atomic<bool> failing{true};
    group.add([&] {
        if (failing.load()) throw std::runtime_error("down");
    }, {.name = "partner", .circuit_breaker = {.failures = 3, .cool_down = 1s}});
    for (int i = 0; i < 3; ++i) group.trigger();
    REQUIRE(group.metrics().callbacks[0].circuit_open);
    clock.advance(2s);  // the cool-down has passed: the next trigger may try

    // A reads the open circuit and is parked inside the breaker's clock read.
    cbm_test::Gate armed;
    std::thread a([&] {
        armed.wait();  // parking is armed for this thread before it triggers
        group.trigger();
    });
    clock.park_next_call_on(a.get_id());
    armed.open();
    clock.wait_until_parked();
    // Meanwhile the real trial succeeds and closes the circuit.
    failing = false;
    REQUIRE(group.trigger().ok());
    REQUIRE_FALSE(group.metrics().callbacks[0].circuit_open);
    // A goes on, and its call fails once: one failure of three, in a closed
    // circuit. Were A a trial, that failure would reopen it.
    failing = true;
    clock.resume();
    a.join();
    const cbm::CallbackMetrics m = group.metrics().callbacks[0];
    REQUIRE(m.circuit == cbm::CircuitState::closed);
    REQUIRE_FALSE(m.circuit_open);
    REQUIRE(m.failed == 4);
}

TEST_CASE("every transition of a circuit reaches the circuit-change handler with its key and name",
          "[resilience][circuit]") {
    ManualClock clock;
    cbm::CallbackRegistry<std::string, void()> registry(GroupOptions{.clock = &clock});
    CircuitLog log;
    registry.set_circuit_change_handler([&](const cbm::CircuitChange& c) { log.record(c); });
    bool failing = true;
    registry.add("orders", [&] {
        if (failing) throw std::runtime_error("down");
    }, {.name = "partner", .circuit_breaker = {.failures = 2, .cool_down = 1s}});
    registry.trigger("orders");
    REQUIRE(log.copy().empty());  // one failure of two: still closed
    registry.trigger("orders");   // opens
    registry.trigger("orders");   // skipped: no transition
    clock.advance(1s);
    registry.trigger("orders");   // half open, the trial fails: open again
    clock.advance(1s);
    failing = false;
    registry.trigger("orders");   // half open, the trial succeeds: closed
    using S = cbm::CircuitState;
    REQUIRE(log.copy() == std::vector<S>{S::open, S::half_open, S::open, S::half_open, S::closed});
    REQUIRE(log.keys == std::vector<std::string>(5, "orders"));
    REQUIRE(log.names == std::vector<std::string>(5, "partner"));
    REQUIRE(std::string(cbm::to_string(S::half_open)) == "half_open");
}

TEST_CASE("many threads racing the trial: every transition is reported once and they add up",
          "[resilience][circuit][race]") {
    ManualClock clock;
    CallbackGroup<void(int)> group(GroupOptions{.metrics = true, .clock = &clock});
    CircuitLog log;
    group.set_circuit_change_handler([&](const cbm::CircuitChange& c) { log.record(c); });
    group.add([](int i) {
        if (i % 3 != 0) throw std::runtime_error("flaky");
    }, {.circuit_breaker = {.failures = 2, .cool_down = 1ms}});
    constexpr int kThreads = 4;
    constexpr int kTriggers = 5'000;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < kTriggers; ++i) {
                group.trigger(i + t);
                if (i % 7 == 0) clock.advance(1ms);
            }
        });
    }
    for (std::thread& t : threads) t.join();
    const std::vector<cbm::CircuitState> states = log.copy();
    using S = cbm::CircuitState;
    const auto count = [&](S s) { return std::count(states.begin(), states.end(), s); };
    const S final_state = group.metrics().callbacks[0].circuit;
    // The circuit's life is closed -> open -> (half_open -> open)* ->
    // half_open -> closed -> ...: each trial (half_open) ends in exactly one
    // closed or open, and each closed period but a still open-ended last one
    // ends in one open. So, with no trial running at the end:
    REQUIRE(final_state != S::half_open);
    REQUIRE(count(S::closed) <= count(S::half_open));
    REQUIRE(count(S::open) == count(S::half_open) + (final_state == S::open ? 1 : 0));
    REQUIRE(count(S::half_open) > 0);
}

TEST_CASE("a cool-down as long as the clock can count keeps the circuit open (no overflow)",
          "[resilience][circuit][saturation]") {
    CallbackGroup<void()> group(GroupOptions{.metrics = true});  // the steady clock
    int calls = 0;
    group.add([&] {
        ++calls;
        throw std::runtime_error("down");
    }, {.circuit_breaker = {.failures = 1, .cool_down = std::chrono::nanoseconds::max()}});
    group.trigger();  // opens, until the end of the clock
    for (int i = 0; i < 3; ++i) REQUIRE(group.trigger().skipped == 1);
    REQUIRE(calls == 1);
    REQUIRE(group.metrics().callbacks[0].circuit == cbm::CircuitState::open);
}

TEST_CASE("backoff with the largest durations saturates instead of overflowing", "[resilience][retry][saturation]") {
    const cbm::RetryOptions huge{.attempts = 10,
                                 .initial_backoff = std::chrono::nanoseconds::max(),
                                 .multiplier = 10.0,
                                 .max_backoff = std::chrono::nanoseconds::max(),
                                 .jitter = 1.0};
    for (std::uint32_t attempt = 1; attempt < 10; ++attempt) {
        const std::chrono::nanoseconds d = cbm::detail::backoff_after(huge, attempt);
        REQUIRE(d >= 0ns);
        REQUIRE(d <= std::chrono::nanoseconds::max());
    }
    const cbm::RetryOptions growing{.attempts = 100, .initial_backoff = 1s, .multiplier = 1e300,
                                    .max_backoff = std::chrono::nanoseconds::max(), .jitter = 0.0};
    REQUIRE(cbm::detail::backoff_after(growing, 50) == std::chrono::nanoseconds::max());
}

TEST_CASE("a callback's timeout counts only its own deadline: a trigger context's earlier deadline stops the trigger",
          "[resilience][timeout]") {
    CallbackGroup<void()> group(GroupOptions{.metrics = true});
    int dead_letters = 0;
    group.set_dead_letter_handler([&](const cbm::DeadLetter&) { ++dead_letters; });
    group.add([] {
        // Runs until the trigger's context ends (5 ms), well inside its own 1 s.
        REQUIRE(cbm::current_context().wait_for(10s));
    }, {.name = "patient", .timeout = 1s});
    bool second_ran = false;
    group.add([&] { second_ran = true; }, {.name = "after"});
    auto [request, cancel_request] = cbm::with_timeout(cbm::Context::background(), 5ms);
    const cbm::TriggerResult r = group.trigger(request);
    REQUIRE(r.failed == 0);
    REQUIRE(dead_letters == 0);
    REQUIRE(r.stopped);  // the request's deadline stopped the trigger ...
    REQUIRE_FALSE(r.ok());  // ... so it is not ok, though nothing failed
    REQUIRE_FALSE(second_ran);
    const cbm::MetricsSnapshot m = group.metrics();
    REQUIRE(m.callbacks[0].timed_out == 0);
    REQUIRE(m.callbacks[0].failed == 0);
    REQUIRE(m.callbacks[1].skipped_canceled == 1);
}

TEST_CASE("a timeout overrun is a failure: failures_total, the error handler and the dead-letter handler agree",
          "[resilience][timeout][metrics]") {
    ManualClock clock;
    CallbackGroup<void()> group(GroupOptions{.metrics = true, .clock = &clock});
    int errors = 0;
    int dead_letters = 0;
    std::uint32_t last_attempts = 0;
    group.set_error_handler([&](const cbm::Failure&) { ++errors; });
    group.set_dead_letter_handler([&](const cbm::DeadLetter& d) {
        ++dead_letters;
        last_attempts = d.attempts;
    });
    group.add([&] { clock.advance(80ms); }, {.name = "slow", .timeout = 50ms});  // returns, but late
    group.add([&] { clock.advance(80ms); }, {.name = "slow_retried", .timeout = 50ms, .retry = {.attempts = 3}});
    for (int i = 0; i < 4; ++i) {
        const cbm::TriggerResult r = group.trigger();
        REQUIRE(r.failed == 2);
        REQUIRE_FALSE(r.ok());
    }
    const cbm::MetricsSnapshot m = group.metrics();
    REQUIRE(m.callbacks[0].failed == 4);     // one per failed invocation ...
    REQUIRE(m.callbacks[0].timed_out == 4);  // ... each an overrun
    REQUIRE(m.callbacks[1].failed == 4);     // after its retries: still one per invocation
    REQUIRE(m.callbacks[1].timed_out == 12); // every attempt overran
    REQUIRE(m.callbacks[1].retries == 8);
    REQUIRE(errors == 8);
    REQUIRE(dead_letters == 8);
    REQUIRE(last_attempts == 3);
}

TEST_CASE("Context::wait_until a time 1,000 years ahead waits for the cancellation (no overflow)",
          "[context][saturation]") {
    auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
    using hours = std::chrono::hours;
    const auto far = std::chrono::time_point_cast<hours>(std::chrono::system_clock::now()) + hours(24 * 365 * 1000);
    std::atomic<bool> cancel_called{false};
    std::thread canceller([&, cancel = cancel] {
        // Cancels only once the main thread is (about to be) waiting.
        cancel_called.store(true);
        cancel();
    });
    const bool canceled = ctx.wait_until(far);
    canceller.join();
    REQUIRE(canceled);
    REQUIRE(cancel_called.load());
    // An uncancelable context cannot wait forever: it throws, as wait() does.
    REQUIRE_THROWS_AS(cbm::Context::background().wait_until(far), std::logic_error);
}

TEST_CASE("an attempt expired by its own deadline is a timeout, also when the trigger's context ended later",
          "[resilience][timeout]") {
    ManualClock clock;  // frozen: only the contexts' real deadlines tell
    CallbackGroup<void()> group(GroupOptions{.metrics = true, .clock = &clock});
    auto [outer, cancel_outer] = cbm::with_cancel(cbm::Context::background());
    group.add([cancel_outer = cancel_outer] {
        REQUIRE(cbm::current_context().wait_for(10s));  // its own 5 ms deadline expires
        cancel_outer();                                 // then the trigger's context ends
    }, {.name = "slow", .timeout = 5ms});
    const cbm::TriggerResult r = group.trigger(outer);
    REQUIRE(r.failed == 1);
    REQUIRE(code_of(r.failures[0].error) == cbm::errc::deadline_exceeded);
    REQUIRE(group.metrics().callbacks[0].timed_out == 1);
}
