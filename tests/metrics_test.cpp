// Tests for cbm/metrics.hpp: per-callback metrics, observers, Prometheus text.
#include <cbm/callback_group.hpp>
#include <cbm/callback_registry.hpp>
#include <cbm/metrics.hpp>
#include <cbm/detail/tick_clock.hpp>

#include <algorithm>

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using cbm::CallbackGroup;
using cbm::CallbackMetrics;
using cbm::GroupOptions;
using cbm::MetricsSnapshot;

namespace {

const CallbackMetrics* find(const MetricsSnapshot& s, const std::string& name) {
    for (const auto& m : s.callbacks) {
        if (m.name == name) return &m;
    }
    return nullptr;
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

}  // namespace

TEST_CASE("an instrumented group counts invocations, failures, filter skips and canceled skips per callback",
          "[metrics]") {
    CallbackGroup<void(int)> group(GroupOptions{.metrics = true, .latency_sample_every = 1});
    group.add([](int) {}, {.name = "ok"});
    group.add([](int x) { if (x < 0) throw std::runtime_error("negative"); }, {.name = "picky"});
    group.add([](int) {}, {.name = "even only", .filter = [](const int& x) { return x % 2 == 0; }});
    auto [ctx, cancel] = cbm::with_cancel({});
    group.add([cancel = cancel](int x) { if (x == 100) cancel(); }, {.priority = 10, .name = "canceller"});
    for (int x : {1, 2, -3, 4}) group.trigger(x);
    group.trigger(ctx, 100);  // the canceller (highest priority) runs, the other three are skipped as canceled

    const MetricsSnapshot s = group.metrics();
    REQUIRE(s.callbacks.size() == 4);
    const CallbackMetrics* ok = find(s, "ok");
    const CallbackMetrics* picky = find(s, "picky");
    const CallbackMetrics* even = find(s, "even only");
    REQUIRE(ok != nullptr);
    REQUIRE(picky != nullptr);
    REQUIRE(even != nullptr);
    REQUIRE(ok->invoked == 4);
    REQUIRE(ok->skipped_canceled == 1);
    REQUIRE(picky->invoked == 4);
    REQUIRE(picky->failed == 1);
    REQUIRE(even->invoked == 2);
    REQUIRE(even->skipped_filtered == 2);
    REQUIRE(even->skipped_canceled == 1);
    REQUIRE(find(s, "canceller")->invoked == 5);
    REQUIRE(ok->latency_ns.count() == 4);  // sampling every call
    REQUIRE(ok->key.empty());
}

TEST_CASE("latency is sampled one invocation in latency_sample_every per thread", "[metrics]") {
    CallbackGroup<void()> group(GroupOptions{.metrics = true, .latency_sample_every = 4});
    group.add([] {}, {.name = "f"});
    for (int i = 0; i < 100; ++i) group.trigger();
    const MetricsSnapshot s = group.metrics();
    REQUIRE(s.callbacks[0].invoked == 100);
    REQUIRE(s.callbacks[0].latency_ns.count() == 25);
}

TEST_CASE("metrics and observers need an instrumented group, and say so", "[metrics]") {
    CallbackGroup<void()> plain;
    REQUIRE_THROWS_AS(plain.metrics(), std::logic_error);
    REQUIRE_THROWS_AS(plain.set_observer(nullptr), std::logic_error);
    cbm::CallbackRegistry<int, void()> registry;
    REQUIRE_THROWS_AS(registry.metrics(), std::logic_error);
}

TEST_CASE("a label name Prometheus would reject is refused at add, and nothing is registered", "[metrics]") {
    CallbackGroup<void()> group(GroupOptions{.metrics = true});
    REQUIRE_THROWS_AS(group.add([] {}, {.labels = {{"team-name", "x"}}}), std::invalid_argument);
    REQUIRE_THROWS_AS(group.add([] {}, {.labels = {{"__reserved", "x"}}}), std::invalid_argument);
    REQUIRE_THROWS_AS(group.add([] {}, {.labels = {{"callback", "x"}}}), std::invalid_argument);
    REQUIRE_THROWS_AS(group.add([] {}, {.labels = {{"team", "a"}, {"team", "b"}}}), std::invalid_argument);
    REQUIRE_THROWS_AS(group.add([] {}, {.labels = {{"9lives", "x"}}}), std::invalid_argument);
    REQUIRE(group.empty());
    REQUIRE_NOTHROW(group.add([] {}, {.labels = {{"team_2", "x"}}}));
}

TEST_CASE("registry metrics carry each callback's key as text", "[metrics]") {
    cbm::CallbackRegistry<int, void()> numbers(GroupOptions{.metrics = true});
    numbers.add(42, [] {}, {.name = "answer"});
    numbers.trigger(42);
    const MetricsSnapshot s = numbers.metrics();
    REQUIRE(s.callbacks.size() == 1);
    REQUIRE(s.callbacks[0].key == "42");
    REQUIRE(s.callbacks[0].invoked == 1);

    cbm::CallbackRegistry<std::string, void()> words(GroupOptions{.metrics = true});
    words.add("login", [] {}, {.name = "audit"});
    words.add("logout", [] {}, {.name = "audit"});
    words.trigger("login");
    std::vector<std::string> keys;
    for (const auto& m : words.metrics().callbacks) keys.push_back(m.key + "=" + std::to_string(m.invoked));
    std::sort(keys.begin(), keys.end());
    REQUIRE(keys == std::vector<std::string>{"login=1", "logout=0"});
}

TEST_CASE("to_prometheus renders the text format line by line, escaping label values", "[metrics][prometheus]") {
    cbm::LatencyHistogram latency;
    for (int i = 0; i < 3; ++i) latency.record(1000);
    CallbackMetrics m;
    m.key = "order\"created";
    m.name = "ship\\it";
    m.labels = {{"team", "pay\nments"}};
    m.invoked = 7;
    m.failed = 2;
    m.skipped_filtered = 3;
    m.skipped_canceled = 1;
    m.skipped_circuit_open = 4;
    m.skipped_blocked = 8;
    m.timed_out = 5;
    m.retries = 6;
    m.circuit_open = true;
    m.latency_ns = latency.snapshot();
    m.registered = 1;
    const std::string labels = R"({key="order\"created",callback="ship\\it",team="pay\nments")";
    const std::vector<std::string> expected = {
        "# HELP cbm_callback_invocations_total Callback invocations started.",
        "# TYPE cbm_callback_invocations_total counter",
        "cbm_callback_invocations_total" + labels + "} 7",
        "# HELP cbm_callback_failures_total Failures reported to the error handler: invocations that threw or "
        "overran their timeout (after retries), and filters that threw.",
        "# TYPE cbm_callback_failures_total counter",
        "cbm_callback_failures_total" + labels + "} 2",
        "# HELP cbm_callback_skips_total Callbacks not run by a trigger, by reason.",
        "# TYPE cbm_callback_skips_total counter",
        "cbm_callback_skips_total" + labels + R"(,reason="filtered"} 3)",
        "cbm_callback_skips_total" + labels + R"(,reason="canceled"} 1)",
        "cbm_callback_skips_total" + labels + R"(,reason="circuit_open"} 4)",
        "cbm_callback_skips_total" + labels + R"(,reason="blocked"} 8)",
        "# HELP cbm_callback_timeouts_total Callback attempts that overran their timeout.",
        "# TYPE cbm_callback_timeouts_total counter",
        "cbm_callback_timeouts_total" + labels + "} 5",
        "# HELP cbm_callback_retries_total Callback attempts after the first.",
        "# TYPE cbm_callback_retries_total counter",
        "cbm_callback_retries_total" + labels + "} 6",
        "# HELP cbm_callback_slow_calls_total Invocations longer than the callback's slow threshold (exact).",
        "# TYPE cbm_callback_slow_calls_total counter",
        "# HELP cbm_callback_slow_threshold_seconds The callback's slow threshold.",
        "# TYPE cbm_callback_slow_threshold_seconds gauge",
        "# HELP cbm_callback_registered Callbacks of this series registered now (0: kept after they were "
        "unregistered).",
        "# TYPE cbm_callback_registered gauge",
        "cbm_callback_registered" + labels + "} 1",
        "# HELP cbm_callback_circuit_open 1 while the callback's circuit breaker is open or half open.",
        "# TYPE cbm_callback_circuit_open gauge",
        "cbm_callback_circuit_open" + labels + "} 1",
        "# HELP cbm_callback_latency_seconds Callback latency: of every invocation (sampled=\"false\") or of one "
        "in latency_sample_every per thread (sampled=\"true\").",
        "# TYPE cbm_callback_latency_seconds summary",
        "cbm_callback_latency_seconds" + labels + R"(,sampled="true",quantile="0.5"} 1e-06)",
        "cbm_callback_latency_seconds" + labels + R"(,sampled="true",quantile="0.95"} 1e-06)",
        "cbm_callback_latency_seconds" + labels + R"(,sampled="true",quantile="0.99"} 1e-06)",
        "cbm_callback_latency_seconds_sum" + labels + R"(,sampled="true"} 3e-06)",
        "cbm_callback_latency_seconds_count" + labels + R"(,sampled="true"} 3)",
        "# HELP cbm_callback_latency_max_seconds Largest callback latency (every invocation timed).",
        "# TYPE cbm_callback_latency_max_seconds gauge",
        "# HELP cbm_callback_latency_sampled_max_seconds Largest latency among the sampled invocations (not the "
        "true maximum).",
        "# TYPE cbm_callback_latency_sampled_max_seconds gauge",
        "cbm_callback_latency_sampled_max_seconds" + labels + "} 1e-06",
        "# HELP cbm_callback_series_dropped_total Series of unregistered callbacks dropped past the retention limit.",
        "# TYPE cbm_callback_series_dropped_total counter",
        "cbm_callback_series_dropped_total 0",
    };
    REQUIRE(lines_of(cbm::to_prometheus(MetricsSnapshot{{m}})) == expected);
}

namespace {

struct RecordingObserver final : cbm::CallbackObserver {
    std::mutex mutex;
    std::vector<std::string> events;
    void on_begin(const cbm::CallbackEvent& e) noexcept override {
        std::lock_guard<std::mutex> lock(mutex);
        events.push_back("begin " + std::string(e.key) + "/" + std::string(e.name));
    }
    void on_end(const cbm::CallbackEvent& e, std::chrono::nanoseconds d, const std::exception_ptr& error) noexcept override {
        std::lock_guard<std::mutex> lock(mutex);
        events.push_back("end " + std::string(e.name) + (error ? " threw" : " ok") + (d.count() >= 0 ? "" : " negative"));
    }
};

}  // namespace

TEST_CASE("an observer sees the begin and end of every invocation, with its key, duration and exception",
          "[metrics][observer]") {
    cbm::CallbackRegistry<std::string, void()> registry(GroupOptions{.metrics = true, .latency_sample_every = 1000});
    auto observer = std::make_shared<RecordingObserver>();
    registry.set_observer(observer);
    registry.add("pay", [] {}, {.name = "charge"});
    registry.add("pay", [] { throw std::runtime_error("declined"); }, {.name = "notify"});
    registry.trigger("pay");
    REQUIRE(observer->events ==
            std::vector<std::string>{"begin pay/charge", "end charge ok", "begin pay/notify", "end notify threw"});
    // With an observer every invocation is timed.
    for (const auto& m : registry.metrics().callbacks) REQUIRE(m.latency_ns.count() == 1);
    registry.set_observer(nullptr);
    registry.trigger("pay");
    REQUIRE(observer->events.size() == 4);
}

TEST_CASE("counts are exact while many threads trigger and another reads the metrics", "[metrics][race]") {
    CallbackGroup<void()> group(GroupOptions{.metrics = true});
    for (int i = 0; i < 4; ++i) group.add([] {}, {.name = "cb" + std::to_string(i)});
    constexpr int kThreads = 4;
    constexpr int kTriggers = 5000;
    std::atomic<bool> done{false};
    std::thread reader([&] {
        while (!done.load()) {
            for (const auto& m : group.metrics().callbacks) {
                if (m.invoked > kThreads * kTriggers) std::abort();
            }
        }
    });
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < kTriggers; ++i) group.trigger();
        });
    }
    for (auto& t : threads) t.join();
    done = true;
    reader.join();
    for (const auto& m : group.metrics().callbacks) REQUIRE(m.invoked == kThreads * kTriggers);
}

TEST_CASE("by_key sums the callbacks of each key and merges their latency", "[metrics]") {
    cbm::CallbackRegistry<std::string, void()> registry(GroupOptions{.metrics = true, .latency_sample_every = 1});
    registry.add("a", [] {}, {.name = "one", .labels = {{"team", "x"}, {"tier", "1"}}});
    registry.add("a", [] { throw std::runtime_error("no"); }, {.name = "two", .labels = {{"team", "x"}}});
    registry.add("b", [] {}, {.name = "three"});
    registry.trigger("a");
    registry.trigger("a");
    registry.trigger("b");
    std::vector<CallbackMetrics> totals = registry.metrics().by_key();
    std::sort(totals.begin(), totals.end(), [](const auto& l, const auto& r) { return l.key < r.key; });
    REQUIRE(totals.size() == 2);
    REQUIRE(totals[0].key == "a");
    REQUIRE(totals[0].invoked == 4);
    REQUIRE(totals[0].failed == 2);
    REQUIRE(totals[0].latency_ns.count() == 4);
    REQUIRE(totals[0].labels == cbm::Labels{{"team", "x"}});  // only the shared label
    REQUIRE(totals[1].key == "b");
    REQUIRE(totals[1].invoked == 1);
}

namespace {

// Keeps the thread busy (not asleep) for at least `d` by the steady clock:
// a call that surely takes longer than `d`.
void busy_for(std::chrono::nanoseconds d) {
    const auto until = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < until) {
    }
}

}  // namespace

TEST_CASE("every invocation of a callback with a timeout is timed, so the slow call is in the max and the p99",
          "[metrics][latency]") {
    CallbackGroup<void(int)> group(GroupOptions{.metrics = true});  // samples 1 in 64 otherwise
    group.add([](int i) {
        if (i % 50 == 49) busy_for(std::chrono::milliseconds(2));
    }, {.name = "guarded", .timeout = std::chrono::seconds(10)});
    group.add([](int) {}, {.name = "plain"});
    for (int i = 0; i < 136; ++i) group.trigger(i);
    const MetricsSnapshot s = group.metrics();
    const CallbackMetrics* guarded = find(s, "guarded");
    REQUIRE(guarded->latency_ns.count() == 136);
    REQUIRE_FALSE(guarded->latency_sampled);
    REQUIRE(guarded->latency_ns.max() >= 1'998'000);  // 2 ms, less the latency clock's 0.1% (tick_clock.hpp)
    REQUIRE(guarded->latency_ns.percentile(99) >= 1'900'000);  // 2 of 136 calls are slow; p99 is one of them
    // Without resilience the latency stays sampled, and says so.
    const CallbackMetrics* plain = find(s, "plain");
    REQUIRE(plain->latency_sampled);
    REQUIRE(plain->latency_ns.count() < 136);
    const std::string text = cbm::to_prometheus(s);
    REQUIRE(text.find(R"(cbm_callback_latency_max_seconds{key="",callback="guarded"})") != std::string::npos);
    REQUIRE(text.find(R"(cbm_callback_latency_sampled_max_seconds{key="",callback="plain"})") != std::string::npos);
    REQUIRE(text.find(R"(cbm_callback_latency_max_seconds{key="",callback="plain"})") == std::string::npos);
}

TEST_CASE("the latency clock measures what steady_clock measures, within its calibration error",
          "[metrics][latency]") {
    cbm::detail::TickClock::calibrate();  // what every group with metrics does first
    using std::chrono::steady_clock;
    // inner <= measured <= outer, whatever preemption adds: both clocks see it.
    for (int round = 0; round < 5; ++round) {
        const auto outer_start = steady_clock::now();
        const std::uint64_t start = cbm::detail::TickClock::now();
        const auto inner_start = steady_clock::now();
        busy_for(std::chrono::milliseconds(3));
        const auto inner_end = steady_clock::now();
        const std::uint64_t end = cbm::detail::TickClock::now();
        const auto outer_end = steady_clock::now();
        const double measured = static_cast<double>(cbm::detail::TickClock::between(start, end).count());
        const double inner = static_cast<double>((inner_end - inner_start).count());
        const double outer = static_cast<double>((outer_end - outer_start).count());
        // 0.1%: the calibration's error and steady_clock's slewing (see tick_clock.hpp).
        REQUIRE(measured >= inner * 0.999);
        REQUIRE(measured <= outer * 1.001);
    }
    REQUIRE(cbm::detail::TickClock::between(10, 5).count() == 0);  // a reading before the start reads as zero
}

TEST_CASE("a slow_threshold counts every invocation above it exactly, and needs metrics", "[metrics][latency]") {
    CallbackGroup<void(int)> group(GroupOptions{.metrics = true});
    group.add([](int i) {
        if (i % 40 == 0) busy_for(std::chrono::milliseconds(25));
    }, {.name = "watched", .slow_threshold = std::chrono::milliseconds(20)});
    for (int i = 0; i < 120; ++i) group.trigger(i);  // calls 0, 40 and 80 are slow
    const CallbackMetrics m = group.metrics().callbacks[0];
    REQUIRE(m.slow >= 3);  // the three (a preempted fast call could add one; none is missed)
    REQUIRE(m.latency_ns.count() == 120);
    REQUIRE(m.slow_threshold == std::chrono::milliseconds(20));
    REQUIRE(cbm::to_prometheus(group.metrics()).find(R"(cbm_callback_slow_calls_total{key="",callback="watched"} )") !=
            std::string::npos);

    CallbackGroup<void()> plain;
    REQUIRE_THROWS_AS(plain.add([] {}, {.slow_threshold = std::chrono::milliseconds(1)}), std::logic_error);
    REQUIRE_THROWS_AS(group.add([](int) {}, {.slow_threshold = std::chrono::milliseconds(-1)}), std::invalid_argument);
    REQUIRE(plain.empty());
}

TEST_CASE("the series of an unregistered callback stays, and continues when one with its key and name comes back",
          "[metrics][retention]") {
    cbm::CallbackRegistry<std::string, void()> registry(GroupOptions{.metrics = true});
    cbm::Registration audit = registry.add("orders", [] {}, {.name = "audit"});
    registry.add("orders", [] {}, {.once = true, .name = "welcome"});
    for (int i = 0; i < 5; ++i) registry.trigger("orders");
    audit.unregister();
    MetricsSnapshot s = registry.metrics();
    REQUIRE(s.callbacks.size() == 2);
    REQUIRE(find(s, "audit")->invoked == 5);
    REQUIRE(find(s, "audit")->registered == 0);
    REQUIRE(find(s, "welcome")->invoked == 1);  // `once`: used up, still reported
    REQUIRE(find(s, "welcome")->registered == 0);

    audit = registry.add("orders", [] {}, {.name = "audit"});
    registry.trigger("orders");
    registry.trigger("orders");
    s = registry.metrics();
    REQUIRE(s.callbacks.size() == 2);
    REQUIRE(find(s, "audit")->invoked == 7);  // the same series, no reset
    REQUIRE(find(s, "audit")->registered == 1);

    registry.erase("orders");
    REQUIRE(find(registry.metrics(), "audit")->invoked == 7);
    registry.clear();
    REQUIRE(registry.metrics().callbacks.size() == 2);
}

TEST_CASE("kept series are bounded: past metrics_retention the oldest go, and are counted", "[metrics][retention]") {
    CallbackGroup<void()> group(GroupOptions{.metrics = true, .metrics_retention = 10});
    cbm::Registration live = group.add([] {}, {.name = "live"});
    for (int i = 0; i < 25; ++i) {
        cbm::Registration r = group.add([] {}, {.name = "transient " + std::to_string(i)});
        group.trigger();
        r.unregister();
    }
    const MetricsSnapshot s = group.metrics();
    REQUIRE(s.callbacks.size() == 11);  // the live one and the 10 newest kept
    REQUIRE(s.dropped_series == 15);
    REQUIRE(find(s, "live")->invoked == 25);
    REQUIRE(find(s, "transient 14") == nullptr);
    REQUIRE(find(s, "transient 15")->invoked == 1);
    REQUIRE(cbm::to_prometheus(s).find("cbm_callback_series_dropped_total 15\n") != std::string::npos);
}

TEST_CASE("unnamed callbacks are told apart by an id label; callbacks sharing a key and name share a series",
          "[metrics][prometheus]") {
    cbm::CallbackRegistry<std::string, void()> registry(GroupOptions{.metrics = true});
    registry.add("k", [] {});
    registry.add("k", [] {});
    registry.add("k", [] {}, {.name = "twin"});
    registry.add("k", [] {}, {.name = "twin"});
    registry.trigger("k");
    const MetricsSnapshot s = registry.metrics();
    REQUIRE(s.callbacks.size() == 3);
    REQUIRE(s.callbacks[0].id != s.callbacks[1].id);
    REQUIRE(s.callbacks[0].id != 0);
    REQUIRE(find(s, "twin")->invoked == 2);
    REQUIRE(find(s, "twin")->registered == 2);
    const std::string text = cbm::to_prometheus(s);
    const std::vector<std::string> lines = lines_of(text);
    std::vector<std::string> invocation_lines;
    for (const std::string& line : lines) {
        if (line.rfind("cbm_callback_invocations_total{", 0) == 0) invocation_lines.push_back(line.substr(0, line.rfind(' ')));
    }
    REQUIRE(invocation_lines.size() == 3);
    std::sort(invocation_lines.begin(), invocation_lines.end());
    REQUIRE(std::adjacent_find(invocation_lines.begin(), invocation_lines.end()) == invocation_lines.end());
}

TEST_CASE("to_prometheus writes valid UTF-8 and refuses a prefix or label name Prometheus would reject",
          "[metrics][prometheus]") {
    CallbackMetrics m;
    m.key = "bad\xff key \xe2\x82";
    m.name = "ok \xc3\xa9";
    const std::string text = cbm::to_prometheus(MetricsSnapshot{{m}});
    REQUIRE(text.find("key=\"bad\xef\xbf\xbd key \xef\xbf\xbd\",callback=\"ok \xc3\xa9\"") != std::string::npos);
    REQUIRE_THROWS_AS(cbm::to_prometheus(MetricsSnapshot{}, "bad-prefix"), std::invalid_argument);
    REQUIRE_THROWS_AS(cbm::to_prometheus(MetricsSnapshot{}, ""), std::invalid_argument);
    REQUIRE_NOTHROW(cbm::to_prometheus(MetricsSnapshot{}, "my_app:callbacks"));
    CallbackMetrics labelled;
    labelled.labels = {{"id", "clash"}};
    REQUIRE_THROWS_AS(cbm::to_prometheus(MetricsSnapshot{{labelled}}), std::invalid_argument);
    CallbackGroup<void()> group(GroupOptions{.metrics = true});
    REQUIRE_THROWS_AS(group.add([] {}, {.labels = {{"sampled", "x"}}}), std::invalid_argument);
}

TEST_CASE("series that export alike are one series: label order and ill-formed UTF-8 do not split them, "
          "and a NUL cannot merge two",
          "[metrics][prometheus]") {
    CallbackGroup<void()> group(GroupOptions{.metrics = true});
    group.add([] {}, {.name = "n", .labels = {{"x", "1"}, {"y", "2"}}});
    group.add([] {}, {.name = "n", .labels = {{"y", "2"}, {"x", "1"}}});  // the same label set
    group.add([] {}, {.name = "bad\xff"});
    group.add([] {}, {.name = "bad\xfe"});  // both export as callback="bad\uFFFD"
    group.add([] {}, {.name = "m", .labels = {{"a", std::string("x\0b=y", 5)}}});
    group.add([] {}, {.name = "m", .labels = {{"a", "x"}, {"b", "y"}}});  // different: two series
    const MetricsSnapshot s = group.metrics();
    REQUIRE(s.callbacks.size() == 4);
    REQUIRE(s.callbacks[0].registered == 2);
    REQUIRE(s.callbacks[1].registered == 2);
    REQUIRE(s.callbacks[2].registered == 1);
    REQUIRE(s.callbacks[3].registered == 1);
}

TEST_CASE("a callback that is never registered leaves no series behind", "[metrics][retention]") {
    CallbackGroup<void()> group(GroupOptions{.metrics = true, .metrics_retention = 2});
    for (const char* name : {"keep1", "keep2"}) {
        cbm::Registration r = group.add([] {}, {.name = name});
        group.trigger();
        r.unregister();
    }
    auto [canceled, cancel] = cbm::with_cancel(cbm::Context::background());
    cancel();
    for (int i = 0; i < 2; ++i) group.add([] {}, {.context = canceled});                  // unnamed: a new series each
    group.add([] {}, {.name = "ghost", .context = canceled});                              // a new named one
    group.add([] {}, {.name = "keep1", .context = canceled});                              // an existing one
    const MetricsSnapshot s = group.metrics();
    REQUIRE(s.dropped_series == 0);
    REQUIRE(s.callbacks.size() == 2);
    REQUIRE(find(s, "keep1")->invoked == 1);
    REQUIRE(find(s, "keep2")->invoked == 1);
    REQUIRE(find(s, "ghost") == nullptr);

    struct ThrowingHash {
        std::size_t operator()(const std::string& k) const {
            if (k == "boom") throw std::runtime_error("hash failed");
            return std::hash<std::string>{}(k);
        }
    };
    cbm::CallbackRegistry<std::string, void(), ThrowingHash> registry(GroupOptions{.metrics = true});
    REQUIRE_THROWS(registry.add("boom", [] {}, {.name = "ghost"}));
    REQUIRE(registry.metrics().callbacks.empty());
}
