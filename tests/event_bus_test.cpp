// Tests for cbm/event_bus.hpp: routing by type, publish and post, ack and
// redelivery, consumer groups, back-pressure, unsubscribe, metrics and
// shutdown. Time-dependent behaviour (backoff, ack deadlines) runs on a
// clock the tests advance by hand.
#include <cbm/event_bus.hpp>
#include <cbm/thread_pool.hpp>
#include <cbm/trace.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "manual_clock.hpp"
#include "dead_letters.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using cbm::AckMode;
using cbm::Delivery;
using cbm::EventBus;
using cbm_test::code_of;
using cbm_test::ManualClock;

namespace {

struct OrderPaid {
    std::string id;
    double total = 0;
};
struct OrderShipped {
    std::string id;
};
struct Named {
    static constexpr std::string_view event_name = "shop.named";
    int n = 0;
};

// Counts how it was made: what post() must do once, and deliveries never.
struct Counted {
    static inline std::atomic<int> copies{0};
    static inline std::atomic<int> moves{0};
    int value = 0;
    explicit Counted(int v) : value(v) {}
    Counted(const Counted& o) : value(o.value) { copies.fetch_add(1); }
    Counted(Counted&& o) noexcept : value(o.value) { moves.fetch_add(1); }
    Counted& operator=(const Counted&) = delete;
    static void reset() {
        copies = 0;
        moves = 0;
    }
};

// An event whose every copy is counted alive, to catch leaks and double
// destruction of queued events.
struct TrackedEvent {
    cbm_test::Tracked life;
    int n;
};

cbm::RedeliveryBackoff fixed(std::chrono::nanoseconds wait) {
    return {.initial = wait, .multiplier = 1.0, .max = wait, .jitter = 0.0};
}

using Letters = cbm_test::DeadLetters;

const cbm::SubscriptionMetrics& sub_metrics(const cbm::EventBusMetrics& m, std::string_view type, std::string_view name) {
    for (const auto& t : m.types) {
        if (t.type != type) continue;
        for (const auto& s : t.subscriptions) {
            if (s.name == name) return s;
        }
    }
    throw std::runtime_error("no such subscription in the metrics");
}

const cbm::EventTypeMetrics& type_metrics(const cbm::EventBusMetrics& m, std::string_view type) {
    for (const auto& t : m.types) {
        if (t.type == type) return t;
    }
    throw std::runtime_error("no such type in the metrics");
}

}  // namespace

// ---------------------------------------------------------------- routing

TEST_CASE("an event reaches the subscriptions of its own type only", "[event_bus][routing]") {
    EventBus bus;
    std::vector<std::string> seen;
    bus.subscribe<OrderPaid>([&](const OrderPaid& e) { seen.push_back("paid " + e.id); });
    bus.subscribe<OrderShipped>([&](const OrderShipped& e) { seen.push_back("shipped " + e.id); });
    const cbm::TriggerResult r = bus.publish(OrderPaid{"o1", 10});
    bus.publish(OrderShipped{"o2"});
    REQUIRE(r.invoked == 1);
    REQUIRE(r.ok());
    REQUIRE(seen == std::vector<std::string>{"paid o1", "shipped o2"});
}

TEST_CASE("publishing a type nobody subscribed to runs nothing and reports nothing", "[event_bus][routing]") {
    EventBus bus;
    bus.subscribe<OrderPaid>([](const OrderPaid&) {});
    const cbm::TriggerResult r = bus.publish(OrderShipped{"o1"});
    REQUIRE(r.invoked == 0);
    REQUIRE(r.skipped == 0);
    REQUIRE(r.ok());
    REQUIRE(bus.subscriber_count<OrderShipped>() == 0);
    REQUIRE(bus.subscriber_count<OrderPaid>() == 1);
}

TEST_CASE("event types are named by the compiler, or by their own event_name", "[event_bus][routing]") {
    EventBus bus({.metrics = true});
    bus.subscribe<OrderPaid>([](const OrderPaid&) {});
    bus.subscribe<Named>([](const Named&) {});
    const auto m = bus.metrics();
    REQUIRE(m.types.size() == 2);
    REQUIRE(m.types[0].type.find("OrderPaid") != std::string::npos);
    REQUIRE(m.types[1].type == "shop.named");
}

TEST_CASE("subscriptions run in priority order, a consumer group at its highest member's priority",
          "[event_bus][routing]") {
    EventBus bus;
    std::vector<std::string> order;
    bus.subscribe<OrderPaid>([&](const OrderPaid&) { order.push_back("low"); }, {.priority = 1});
    bus.subscribe<OrderPaid>([&](const OrderPaid&) { order.push_back("group"); }, {.priority = 0, .group = "g"});
    bus.subscribe<OrderPaid>([&](const OrderPaid&) { order.push_back("group"); }, {.priority = 9, .group = "g"});
    bus.subscribe<OrderPaid>([&](const OrderPaid&) { order.push_back("high"); }, {.priority = 5});
    bus.publish(OrderPaid{"o1", 1});
    REQUIRE(order == std::vector<std::string>{"group", "high", "low"});
}

TEST_CASE("a subscription takes the callback options: filter, once, context, self, error codes",
          "[event_bus][options]") {
    EventBus bus;
    int big = 0;
    int once = 0;
    int until_canceled = 0;
    int self_count = 0;
    auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
    bus.subscribe<OrderPaid>([&](const OrderPaid&) { ++big; }, {.filter = [](const OrderPaid& e) { return e.total > 100; }});
    bus.subscribe<OrderPaid>([&](const OrderPaid&) { ++once; }, {.once = true});
    bus.subscribe<OrderPaid>([&](const OrderPaid&) { ++until_canceled; }, {.context = ctx});
    bus.subscribe<OrderPaid>([&](cbm::Self& self, const OrderPaid&) {
        if (++self_count == 2) self.unregister();
    });
    bus.subscribe<OrderPaid>([](const OrderPaid& e) {
        return e.id == "bad" ? std::make_error_code(std::errc::invalid_argument) : std::error_code();
    }, {.name = "checker"});
    bus.publish(OrderPaid{"a", 50});
    bus.publish(OrderPaid{"b", 500});
    cancel();
    const cbm::TriggerResult bad = bus.publish(OrderPaid{"bad", 500});
    bus.publish(OrderPaid{"c", 5});
    REQUIRE(big == 2);
    REQUIRE(once == 1);
    REQUIRE(until_canceled == 2);
    REQUIRE(self_count == 2);
    REQUIRE(bad.failed == 1);
    REQUIRE(bad.failures.at(0).name == "checker");
    REQUIRE(bad.failures.at(0).code() == std::errc::invalid_argument);
}

TEST_CASE("in-call retries and the circuit breaker of a subscription work as for a callback", "[event_bus][options]") {
    ManualClock clock;
    EventBus bus({.clock = &clock});
    int calls = 0;
    bus.subscribe<OrderPaid>([&](const OrderPaid&) { if (++calls < 3) throw std::runtime_error("flaky"); },
                             {.name = "flaky", .retry = {.attempts = 3, .initial_backoff = 5ms, .jitter = 0.0}});
    const cbm::TriggerResult r = bus.publish(OrderPaid{"o1", 1});
    REQUIRE(r.ok());
    REQUIRE(calls == 3);
    REQUIRE(clock.sleeps() == std::vector<std::chrono::nanoseconds>{5ms, 10ms});
}

TEST_CASE("subscribe rejects options that make no sense, and subscribes nothing then", "[event_bus][options]") {
    EventBus bus;
    auto handler = [](const OrderPaid&) {};
    REQUIRE_THROWS_AS(bus.subscribe<OrderPaid>(handler, {.max_deliveries = 0}), std::invalid_argument);
    REQUIRE_THROWS_AS(bus.subscribe<OrderPaid>(handler, {.weight = 0}), std::invalid_argument);
    REQUIRE_THROWS_AS(bus.subscribe<OrderPaid>(handler, {.redelivery_backoff = {.multiplier = 0.5}}),
                      std::invalid_argument);
    REQUIRE_THROWS_WITH(bus.subscribe<OrderPaid>(handler, {.ack = AckMode::manual}),
                        Catch::Contains("needs a handler that takes a cbm::Delivery<E>&"));
    REQUIRE_THROWS_AS(bus.subscribe<OrderPaid>([](Delivery<OrderPaid>&) {}, {.ack = AckMode::manual, .ack_timeout = 0s}),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(bus.subscribe<OrderPaid>(handler, {.labels = {{"event", "x"}}}), std::invalid_argument);
    REQUIRE_THROWS_AS(bus.subscribe<OrderPaid>(std::function<void(const OrderPaid&)>{}), std::invalid_argument);
    REQUIRE(bus.subscriber_count<OrderPaid>() == 0);
    REQUIRE(bus.publish(OrderPaid{"o1", 1}).invoked == 0);
}

// ---------------------------------------------------------------- queued delivery

TEST_CASE("post moves an rvalue once and copies an lvalue once; deliveries copy nothing", "[event_bus][post]") {
    EventBus bus;
    int sum = 0;
    for (int i = 0; i < 3; ++i) bus.subscribe<Counted>([&](const Counted& c) { sum += c.value; });
    Counted::reset();
    bus.post(Counted{1});
    REQUIRE(Counted::moves == 1);
    REQUIRE(Counted::copies == 0);
    Counted lvalue{2};
    Counted::reset();
    bus.post(lvalue);
    REQUIRE(Counted::copies == 1);
    REQUIRE(Counted::moves == 0);
    Counted::reset();
    REQUIRE(bus.process() == 2);
    REQUIRE(sum == 9);
    REQUIRE(Counted::copies == 0);
    REQUIRE(Counted::moves == 0);
}

TEST_CASE("events posted by one thread reach each subscription in posting order (one delivering thread)",
          "[event_bus][post][order]") {
    SECTION("process() on this thread") {
        EventBus bus;
        std::vector<int> a, b;
        bus.subscribe<int>([&](const int& n) { a.push_back(n); });
        bus.subscribe<int>([&](const int& n) { b.push_back(n); }, {.priority = 3});
        for (int i = 0; i < 500; ++i) bus.post(i);
        bus.drain();
        REQUIRE(a.size() == 500);
        REQUIRE(std::is_sorted(a.begin(), a.end()));
        REQUIRE(a == b);
    }
    SECTION("a one-thread executor") {
        cbm::ThreadPool pool({.min_threads = 1, .max_threads = 1});
        EventBus bus({.executor = pool.executor()});
        std::mutex m;
        std::vector<int> seen;
        bus.subscribe<int>([&](const int& n) {
            std::lock_guard<std::mutex> lock(m);
            seen.push_back(n);
        });
        for (int i = 0; i < 500; ++i) bus.post(i);
        bus.drain();
        std::lock_guard<std::mutex> lock(m);
        REQUIRE(seen.size() == 500);
        REQUIRE(std::is_sorted(seen.begin(), seen.end()));
    }
}

TEST_CASE("run(ctx) delivers on a consumer thread until its context is canceled", "[event_bus][post]") {
    cbm_test::Watchdog watchdog("run(ctx) until canceled");
    EventBus bus;
    std::atomic<int> got{0};
    bus.subscribe<int>([&](const int&) { got.fetch_add(1); });
    auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
    std::atomic<std::size_t> delivered{0};
    std::thread consumer([&, ctx = ctx] { delivered = bus.run(ctx); });
    for (int i = 0; i < 100; ++i) bus.post(i);
    REQUIRE(cbm_test::eventually([&] { return got.load() == 100; }));
    cancel();
    consumer.join();
    REQUIRE(delivered == 100);
}

TEST_CASE("a posted event carries the poster's context to its handlers", "[event_bus][post][context]") {
    EventBus bus;
    std::string trace;
    bus.subscribe<int>([&](const int&) { trace = std::string(cbm::trace_id(cbm::current_context())); });
    {
        const cbm::Context traced = cbm::with_trace_id(cbm::Context::background(), "trace-42");
        cbm::ContextScope scope(traced);
        bus.post(1);
    }
    bus.process();
    REQUIRE(trace == "trace-42");
}

TEST_CASE("a posted event whose context ended before delivery is dead-lettered with the context's error",
          "[event_bus][post][context]") {
    EventBus bus;
    Letters letters;
    bus.set_dead_letter_handler(std::ref(letters));
    int ran = 0;
    bus.subscribe<int>([&](const int&) { ++ran; }, {.name = "late"});
    auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
    {
        cbm::ContextScope scope(ctx);
        bus.post(1);
    }
    cancel();
    bus.process();
    REQUIRE(ran == 0);
    REQUIRE(letters.size() == 1);
    REQUIRE(code_of(letters.all[0].error) == cbm::errc::canceled);
}

// ---------------------------------------------------------------- ack and redelivery

TEST_CASE("a failing delivery is redelivered after its backoff, then dead-lettered with what happened",
          "[event_bus][redelivery]") {
    ManualClock clock;
    EventBus bus({.metrics = true, .clock = &clock});
    Letters letters;
    bus.set_dead_letter_handler(std::ref(letters));
    std::vector<std::uint32_t> counts;
    bus.subscribe<OrderPaid>([&](Delivery<OrderPaid>& d) {
        counts.push_back(d.delivery_count());
        throw std::runtime_error("card declined");
    }, {.name = "billing", .max_deliveries = 3, .redelivery_backoff = {.initial = 100ms, .multiplier = 2.0, .jitter = 0.0}});
    bus.post(OrderPaid{"o1", 5});
    REQUIRE(bus.process() == 1);
    REQUIRE(counts == std::vector<std::uint32_t>{1});
    clock.advance(99ms);
    REQUIRE(bus.process() == 0);  // not due yet
    clock.advance(1ms);
    REQUIRE(bus.process() == 1);
    REQUIRE(counts == std::vector<std::uint32_t>{1, 2});
    clock.advance(199ms);
    REQUIRE(bus.process() == 0);
    clock.advance(1ms);
    REQUIRE(bus.process() == 1);
    REQUIRE(counts == std::vector<std::uint32_t>{1, 2, 3});
    REQUIRE(letters.size() == 1);
    const cbm::DeadLetter& d = letters.all[0];
    REQUIRE(d.key.find("OrderPaid") != std::string::npos);
    REQUIRE(d.name == "billing");
    REQUIRE(d.what() == "card declined");
    REQUIRE(d.attempts == 3);
    const auto m = sub_metrics(bus.metrics(), d.key, "billing");
    REQUIRE(m.delivered == 3);
    REQUIRE(m.failed == 3);
    REQUIRE(m.redelivered == 2);
    REQUIRE(m.dead_lettered == 1);
    REQUIRE(m.acked == 0);
    REQUIRE(bus.metrics().outstanding == 0);
}

TEST_CASE("a delivery that succeeds on a redelivery is acked and not dead-lettered", "[event_bus][redelivery]") {
    ManualClock clock;
    EventBus bus({.metrics = true, .clock = &clock});
    Letters letters;
    bus.set_dead_letter_handler(std::ref(letters));
    int calls = 0;
    bus.subscribe<int>([&](const int&) { if (++calls < 2) throw std::runtime_error("once"); },
                       {.name = "x", .max_deliveries = 5, .redelivery_backoff = fixed(10ms)});
    bus.post(7);
    bus.process();
    clock.advance(10ms);
    bus.process();
    REQUIRE(calls == 2);
    REQUIRE(letters.size() == 0);
    const auto m = sub_metrics(bus.metrics(), type_metrics(bus.metrics(), bus.metrics().types[0].type).type, "x");
    REQUIRE(m.acked == 1);
    REQUIRE(m.failed == 1);
}

TEST_CASE("a published event that fails is redelivered later from a copy", "[event_bus][redelivery]") {
    ManualClock clock;
    EventBus bus({.clock = &clock});
    std::vector<std::string> seen;
    bus.subscribe<OrderPaid>([&](const OrderPaid& e) {
        seen.push_back(e.id);
        if (seen.size() == 1) throw std::runtime_error("first fails");
    }, {.max_deliveries = 2, .redelivery_backoff = fixed(1ms)});
    {
        OrderPaid event{"o9", 1};
        const cbm::TriggerResult r = bus.publish(event);
        REQUIRE(r.failed == 1);
        event.id = "changed";  // the redelivery has its own copy
    }
    clock.advance(1ms);
    REQUIRE(bus.process() == 1);
    REQUIRE(seen == std::vector<std::string>{"o9", "o9"});
}

TEST_CASE("manual ack: ack() settles, nack(delay) redelivers after the delay, an unsettled delivery times out",
          "[event_bus][ack]") {
    ManualClock clock;
    EventBus bus({.metrics = true, .clock = &clock});
    Letters letters;
    bus.set_dead_letter_handler(std::ref(letters));
    std::vector<Delivery<OrderPaid>> kept;
    std::vector<std::string> log;
    bus.subscribe<OrderPaid>([&](Delivery<OrderPaid>& d) {
        log.push_back(d.event().id + "#" + std::to_string(d.delivery_count()));
        if (d.event().id == "ack") d.ack();
        if (d.event().id == "nack") d.delivery_count() == 1 ? d.nack(50ms) : d.ack();
        if (d.event().id == "later") kept.push_back(d);  // acked after the call
        // "silent": never settled
    }, {.name = "ship", .max_deliveries = 2, .redelivery_backoff = fixed(0ms), .ack = AckMode::manual, .ack_timeout = 1s});
    for (const char* id : {"ack", "nack", "later", "silent"}) bus.post(OrderPaid{id, 1});
    REQUIRE(bus.process() == 4);
    REQUIRE(kept.size() == 1);
    REQUIRE(kept[0].ack());
    REQUIRE_FALSE(kept[0].ack());  // settled once
    clock.advance(50ms);
    bus.process();
    REQUIRE(log == std::vector<std::string>{"ack#1", "nack#1", "later#1", "silent#1", "nack#2"});
    clock.advance(1s);
    bus.process();  // silent's deadline: redelivered
    REQUIRE(log.back() == "silent#2");
    clock.advance(1s);
    bus.process();  // silent#2's deadline: out of deliveries
    REQUIRE(letters.size() == 1);
    REQUIRE(code_of(letters.all[0].error) == cbm::errc::ack_timeout);
    REQUIRE(letters.all[0].attempts == 2);
    const auto m = sub_metrics(bus.metrics(), letters.all[0].key, "ship");
    REQUIRE(m.acked == 3);
    REQUIRE(m.nacked == 1);
    REQUIRE(m.ack_timeouts == 2);
    REQUIRE(m.dead_lettered == 1);
    REQUIRE(bus.metrics().outstanding == 0);
}

TEST_CASE("an ack that comes after the ack timeout returns false and changes nothing", "[event_bus][ack]") {
    ManualClock clock;
    EventBus bus({.clock = &clock});
    Letters letters;
    bus.set_dead_letter_handler(std::ref(letters));
    std::vector<Delivery<int>> kept;
    bus.subscribe<int>([&](Delivery<int>& d) { kept.push_back(d); }, {.ack = AckMode::manual, .ack_timeout = 10ms});
    bus.post(1);
    bus.process();
    clock.advance(10ms);
    bus.process();
    REQUIRE(letters.size() == 1);
    REQUIRE_FALSE(kept.at(0).ack());
    REQUIRE(kept[0].settled());
    REQUIRE_FALSE(kept[0].acked());
}

TEST_CASE("a manual delivery acked from another thread while the bus parks it is settled exactly once",
          "[event_bus][ack][race]") {
    cbm_test::Watchdog watchdog("manual ack race");
    ManualClock clock;
    EventBus bus({.metrics = true, .clock = &clock});
    Letters letters;
    bus.set_dead_letter_handler(std::ref(letters));
    constexpr int kEvents = 2000;
    std::atomic<int> acks_won{0};
    std::vector<std::thread> ackers;
    std::mutex m;
    bus.subscribe<int>([&](Delivery<int>& d) {
        std::lock_guard<std::mutex> lock(m);
        ackers.emplace_back([d, &acks_won]() mutable { acks_won.fetch_add(d.ack() ? 1 : 0); });
    }, {.name = "racy", .ack = AckMode::manual, .ack_timeout = 1h});
    for (int i = 0; i < kEvents; ++i) bus.post(i);
    bus.process();
    {
        std::lock_guard<std::mutex> lock(m);
        for (auto& t : ackers) t.join();
    }
    REQUIRE(acks_won == kEvents);
    const auto metrics = bus.metrics();
    REQUIRE(sub_metrics(metrics, metrics.types[0].type, "racy").acked == kEvents);
    REQUIRE(metrics.outstanding == 0);
    REQUIRE(letters.size() == 0);
}

TEST_CASE("every event is acked or dead-lettered, whatever mix of failures, nacks and timeouts (random model)",
          "[event_bus][redelivery][model]") {
    for (unsigned seed = 1; seed <= 20; ++seed) {
        ManualClock clock;
        EventBus bus({.metrics = true, .clock = &clock});
        Letters letters;
        bus.set_dead_letter_handler(std::ref(letters));
        std::mt19937 rng(seed);
        std::map<int, int> acked_by_event;
        std::vector<Delivery<int>> late;
        auto handler = [&](Delivery<int>& d) {
            switch (rng() % 5) {
                case 0: throw std::runtime_error("boom");
                case 1: d.nack(std::chrono::milliseconds(rng() % 20)); return;
                case 2: return;  // times out
                case 3: late.push_back(d); return;
                default:
                    if (d.ack()) ++acked_by_event[d.event()];
                    return;
            }
        };
        bus.subscribe<int>(handler, {.name = "a", .max_deliveries = 4, .redelivery_backoff = fixed(5ms),
                                     .ack = AckMode::manual, .ack_timeout = 30ms});
        bus.subscribe<int>(handler, {.name = "b", .max_deliveries = 2, .redelivery_backoff = fixed(1ms),
                                     .ack = AckMode::manual, .ack_timeout = 10ms, .group = "g"});
        bus.subscribe<int>(handler, {.name = "c", .max_deliveries = 2, .redelivery_backoff = fixed(1ms),
                                     .ack = AckMode::manual, .ack_timeout = 10ms, .group = "g"});
        constexpr int kEvents = 200;
        for (int i = 0; i < kEvents; ++i) bus.post(i);
        for (int round = 0; round < 400 && bus.metrics().outstanding != 0; ++round) {
            bus.process();
            for (auto& d : late) {
                if (rng() % 2 == 0 && d.ack()) ++acked_by_event[d.event()];
            }
            late.clear();
            clock.advance(5ms);
        }
        const auto m = bus.metrics();
        REQUIRE(m.outstanding == 0);
        const auto& t = m.types.at(0);
        std::uint64_t acked = 0, dead = 0;
        for (const auto& s : t.subscriptions) {
            acked += s.acked;
            dead += s.dead_lettered;
        }
        // Two routes (a alone, group g): each event settles once per route.
        REQUIRE(acked + dead == 2 * kEvents);
        REQUIRE(dead == letters.size());
        std::uint64_t acked_seen = 0;
        for (const auto& [event, n] : acked_by_event) {
            REQUIRE(n <= 2);
            acked_seen += static_cast<std::uint64_t>(n);
        }
        REQUIRE(acked_seen == acked);
    }
}

// ---------------------------------------------------------------- consumer groups

TEST_CASE("a consumer group gives each event to one member, by weight; others get every event",
          "[event_bus][groups]") {
    EventBus bus;
    std::map<std::string, int> got;
    auto count = [&](std::string name) { return [&got, name](const int&) { ++got[name]; }; };
    bus.subscribe<int>(count("heavy"), {.name = "heavy", .group = "billing", .weight = 3});
    bus.subscribe<int>(count("light"), {.name = "light", .group = "billing", .weight = 1});
    bus.subscribe<int>(count("audit"), {.name = "audit"});
    bus.subscribe<int>(count("other-1"), {.name = "other-1", .group = "other"});
    bus.subscribe<int>(count("other-2"), {.name = "other-2", .group = "other"});
    for (int i = 0; i < 400; ++i) {
        const cbm::TriggerResult r = bus.publish(i);
        REQUIRE(r.invoked == 3);  // one per route
    }
    REQUIRE(got["heavy"] == 300);
    REQUIRE(got["light"] == 100);
    REQUIRE(got["audit"] == 400);
    REQUIRE(got["other-1"] == 200);
    REQUIRE(got["other-2"] == 200);
}

TEST_CASE("a consumer group fails over to another member: gone, circuit open, blocked, filtered out",
          "[event_bus][groups]") {
    ManualClock clock;
    EventBus bus({.clock = &clock});
    std::map<std::string, int> got;
    cbm::Registration gone = bus.subscribe<int>([&](const int&) { ++got["gone"]; }, {.name = "gone", .group = "g"});
    cbm::Registration blocked = bus.subscribe<int>([&](const int&) { ++got["blocked"]; }, {.name = "blocked", .group = "g"});
    bus.subscribe<int>([&](const int&) { ++got["picky"]; },
                       {.name = "picky", .filter = [](const int& n) { return n < 0; }, .group = "g"});
    bus.subscribe<int>([&](const int& n) { ++got["open"]; if (n >= 0) throw std::runtime_error("down"); },
                       {.name = "open", .circuit_breaker = {.failures = 1, .cool_down = 1h}, .group = "g"});
    bus.subscribe<int>([&](const int&) { ++got["ok"]; }, {.name = "ok", .group = "g"});
    gone.unregister();
    cbm::Blocker block = blocked.block();
    // Trip the breaker of "open" once (its failure goes to the dead letters: max_deliveries 1).
    for (int i = 0; i < 5 && got["open"] == 0; ++i) bus.publish(i);
    REQUIRE(got["open"] == 1);
    got.clear();
    for (int i = 0; i < 40; ++i) {
        const cbm::TriggerResult r = bus.publish(i);
        REQUIRE(r.invoked == 1);
        REQUIRE(r.failed == 0);
    }
    REQUIRE(got["ok"] == 40);
    REQUIRE(got.count("gone") == 0);
    REQUIRE(got.count("blocked") == 0);
    REQUIRE(got.count("picky") == 0);
    REQUIRE(got.count("open") == 0);
}

TEST_CASE("a redelivery goes to another member of the group than the one that failed", "[event_bus][groups][redelivery]") {
    ManualClock clock;
    EventBus bus({.clock = &clock});
    std::vector<std::string> log;
    bus.subscribe<int>([&](const int&) { log.push_back("a"); throw std::runtime_error("a fails"); },
                       {.name = "a", .max_deliveries = 2, .redelivery_backoff = fixed(1ms), .group = "g"});
    bus.subscribe<int>([&](const int&) { log.push_back("b"); },
                       {.name = "b", .max_deliveries = 2, .redelivery_backoff = fixed(1ms), .group = "g"});
    bus.post(1);  // round robin starts at "a"
    bus.process();
    clock.advance(1ms);
    bus.process();
    REQUIRE(log == std::vector<std::string>{"a", "b"});
}

TEST_CASE("an event no member can take (blocked, circuit open) is redelivered later, then dead-lettered",
          "[event_bus][groups][redelivery]") {
    ManualClock clock;
    EventBus bus({.clock = &clock});
    Letters letters;
    bus.set_dead_letter_handler(std::ref(letters));
    int ran = 0;
    cbm::Registration r = bus.subscribe<int>([&](const int&) { ++ran; },
                                             {.name = "paused", .max_deliveries = 2, .redelivery_backoff = fixed(1ms)});
    auto block = std::make_unique<cbm::Blocker>(r.block());
    bus.post(1);
    bus.process();
    REQUIRE(ran == 0);
    block.reset();
    clock.advance(1ms);
    bus.process();
    REQUIRE(ran == 1);
    REQUIRE(letters.size() == 0);
    block = std::make_unique<cbm::Blocker>(r.block());
    bus.post(2);
    bus.process();
    clock.advance(1ms);
    bus.process();
    REQUIRE(letters.size() == 1);
    REQUIRE(code_of(letters.all[0].error) == cbm::errc::undeliverable);
}

// ---------------------------------------------------------------- back-pressure

TEST_CASE("a full queue rejects with errc::queue_full, counted, under Overflow::reject", "[event_bus][overflow]") {
    EventBus bus({.queue_capacity = 2, .overflow = cbm::Overflow::reject});
    bus.subscribe<int>([](const int&) {});
    bus.post(1);
    bus.post(2);
    try {
        bus.post(3);
        FAIL("post to a full queue must throw");
    } catch (const std::system_error& e) {
        REQUIRE(e.code() == cbm::errc::queue_full);
    }
    const auto m = bus.metrics();
    REQUIRE(m.types.at(0).rejected == 1);
    REQUIRE(m.types.at(0).posted == 2);
    REQUIRE(m.types.at(0).queued == 2);
    REQUIRE(bus.process() == 2);
}

TEST_CASE("Overflow::caller_runs delivers on the posting thread when the queue is full", "[event_bus][overflow]") {
    EventBus bus({.queue_capacity = 1, .overflow = cbm::Overflow::caller_runs});
    std::vector<int> seen;
    bus.subscribe<int>([&](const int& n) { seen.push_back(n); });
    bus.post(1);
    bus.post(2);  // full: runs here
    REQUIRE(seen == std::vector<int>{2});
    bus.process();
    REQUIRE(seen == std::vector<int>{2, 1});
}

TEST_CASE("Overflow::block waits for room, and a handler posting to its full bus does not wait for itself",
          "[event_bus][overflow]") {
    cbm_test::Watchdog watchdog("Overflow::block");
    EventBus bus({.queue_capacity = 1, .overflow = cbm::Overflow::block});
    std::atomic<int> got{0};
    bus.subscribe<int>([&](const int& n) {
        got.fetch_add(1);
        if (n == 0) {
            bus.post(100);  // the queue holds 1: full; this thread is the consumer
            bus.post(101);
        }
    });
    bus.post(0);
    std::atomic<bool> second_returned{false};
    std::thread producer([&] {
        bus.post(1);  // blocks: the queue is full
        second_returned = true;
    });
    REQUIRE(cbm_test::eventually([&] { return bus.metrics().blocked_producers == 1; }));
    REQUIRE_FALSE(second_returned.load());
    bus.drain();
    producer.join();
    bus.drain();
    REQUIRE(got == 4);
}

TEST_CASE("post after close fails with errc::bus_closed", "[event_bus][shutdown]") {
    EventBus bus;
    bus.subscribe<int>([](const int&) {});
    bus.close();
    try {
        bus.post(1);
        FAIL("post after close must throw");
    } catch (const std::system_error& e) {
        REQUIRE(e.code() == cbm::errc::bus_closed);
    }
    REQUIRE(bus.metrics().types.at(0).rejected == 1);
}

// ---------------------------------------------------------------- unsubscribe

TEST_CASE("queued events are not delivered to a subscription unregistered before them; a group gives them to another",
          "[event_bus][unsubscribe]") {
    EventBus bus;
    std::map<std::string, int> got;
    cbm::Registration alone = bus.subscribe<int>([&](const int&) { ++got["alone"]; });
    cbm::Registration first = bus.subscribe<int>([&](const int&) { ++got["first"]; }, {.group = "g"});
    bus.subscribe<int>([&](const int&) { ++got["second"]; }, {.group = "g"});
    for (int i = 0; i < 10; ++i) bus.post(i);
    alone.unregister();
    first.unregister();
    bus.drain();
    REQUIRE(got.count("alone") == 0);
    REQUIRE(got.count("first") == 0);
    REQUIRE(got["second"] == 10);
    REQUIRE(bus.metrics().types.at(0).unrouted == 0);  // the group took every one
}

TEST_CASE("events queued for subscriptions that all went are counted as unrouted", "[event_bus][unsubscribe]") {
    EventBus bus;
    int got = 0;
    cbm::Registration r = bus.subscribe<int>([&](const int&) { ++got; });
    for (int i = 0; i < 10; ++i) bus.post(i);
    r.unregister();
    bus.drain();
    REQUIRE(got == 0);
    REQUIRE(bus.metrics().types.at(0).unrouted == 10);
}

TEST_CASE("unregister() waits for a delivery running on the consumer thread", "[event_bus][unsubscribe][race]") {
    cbm_test::Watchdog watchdog("unregister waits for a delivery");
    EventBus bus;
    cbm_test::BlockingCallback blocking;
    cbm::Registration r = bus.subscribe<int>([&](const int&) { blocking.run(); });
    bus.post(1);
    auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
    std::thread consumer([&, ctx = ctx] { bus.run(ctx); });
    std::atomic<bool> unregistering{false};
    const bool waited = blocking.operation_waited(
        [&] {
            unregistering = true;
            r.unregister();
        },
        [&] { return unregistering.load(); });
    REQUIRE(waited);
    cancel();
    consumer.join();
}

TEST_CASE("many producers, several consumers and subscriptions that come and go: every event is counted, none "
          "runs after unregister returned", "[event_bus][race]") {
    cbm_test::Watchdog watchdog("event bus stress");
    cbm_test::Counter life;
    {
        EventBus bus({.queue_capacity = 256, .metrics = true});
        constexpr int kProducers = 3;
        constexpr int kPerProducer = 3000;
        std::atomic<int> after_unregister{0};
        std::atomic<std::uint64_t> handled{0};
        bus.subscribe<TrackedEvent>([&](const TrackedEvent&) { handled.fetch_add(1); }, {.name = "steady"});
        auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
        std::vector<std::thread> threads;
        for (int c = 0; c < 2; ++c) threads.emplace_back([&bus, ctx = ctx] { bus.run(ctx); });
        for (int p = 0; p < kProducers; ++p) {
            threads.emplace_back([&] {
                for (int i = 0; i < kPerProducer; ++i) bus.post(TrackedEvent{cbm_test::Tracked(life), i});
            });
        }
        std::thread churn([&] {
            for (int round = 0; round < 200; ++round) {
                auto done = std::make_shared<std::atomic<bool>>(false);
                cbm::Registration r = bus.subscribe<TrackedEvent>(
                    [&after_unregister, done](const TrackedEvent&) {
                        if (done->load()) after_unregister.fetch_add(1);
                    },
                    {.name = "transient", .group = round % 2 == 0 ? "g" : ""});
                std::this_thread::yield();
                r.unregister();
                done->store(true);
            }
        });
        for (int p = 0; p < kProducers; ++p) threads[2 + static_cast<std::size_t>(p)].join();
        churn.join();
        bus.drain();
        cancel();
        threads[0].join();
        threads[1].join();
        REQUIRE(after_unregister == 0);
        REQUIRE(handled == static_cast<std::uint64_t>(kProducers) * kPerProducer);
        const auto m = bus.metrics();
        REQUIRE(m.outstanding == 0);
        REQUIRE(m.types.at(0).posted == static_cast<std::uint64_t>(kProducers) * kPerProducer);
        REQUIRE(sub_metrics(m, m.types[0].type, "steady").acked == static_cast<std::uint64_t>(kProducers) * kPerProducer);
    }
    REQUIRE(life.alive() == 0);
    REQUIRE(life.errors == 0);
}

// ---------------------------------------------------------------- executors and shutdown

TEST_CASE("with an executor, posted events are delivered on it and drain() waits for them", "[event_bus][executor]") {
    cbm_test::Watchdog watchdog("executor delivery");
    cbm::ThreadPool pool({.min_threads = 2, .max_threads = 2});
    EventBus bus({.executor = pool.executor()});
    std::atomic<int> on_pool{0};
    const auto me = std::this_thread::get_id();
    bus.subscribe<int>([&](const int&) { on_pool.fetch_add(std::this_thread::get_id() != me ? 1 : 0); });
    for (int i = 0; i < 200; ++i) bus.post(i);
    bus.drain();
    REQUIRE(on_pool == 200);
}

TEST_CASE("drain() leaves an event to the executor task that is about to deliver it, round after round", "[event_bus][executor]") {
    // Regression: a pump counted itself done before it took its event, so a
    // drain() woken in between found work and no pump and delivered it on
    // the draining thread.
    cbm_test::Watchdog watchdog("drain leaves work to the pump");
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 1});
    EventBus bus({.executor = pool.executor()});
    std::atomic<int> on_caller{0};
    std::atomic<int> handled{0};
    const auto me = std::this_thread::get_id();
    bus.subscribe<int>([&](const int&) {
        on_caller.fetch_add(std::this_thread::get_id() == me ? 1 : 0);
        handled.fetch_add(1);
    });
    constexpr int kRounds = 5000;
    for (int i = 0; i < kRounds; ++i) {
        bus.post(i);
        bus.drain();
    }
    REQUIRE(handled == kRounds);
    REQUIRE(on_caller == 0);
}

TEST_CASE("a subscription's own executor runs its queued deliveries; a slow one delays no other",
          "[event_bus][executor]") {
    cbm_test::Watchdog watchdog("subscription executor");
    cbm::ThreadPool slow_pool({.min_threads = 1, .max_threads = 1});
    EventBus bus;
    cbm_test::Gate release;
    std::atomic<int> slow{0}, fast{0};
    bus.subscribe<int>([&](const int&) { release.wait(); slow.fetch_add(1); }, {.executor = slow_pool.executor()});
    bus.subscribe<int>([&](const int&) { fast.fetch_add(1); });
    for (int i = 0; i < 5; ++i) bus.post(i);
    bus.process();
    REQUIRE(fast == 5);  // delivered while the slow one still waits
    REQUIRE(slow == 0);
    release.open();
    bus.drain();
    REQUIRE(slow == 5);
}

TEST_CASE("redeliveries come due on the executor by the timer", "[event_bus][executor][redelivery]") {
    cbm_test::Watchdog watchdog("executor redelivery");
    cbm::ThreadPool pool({.min_threads = 1, .max_threads = 1});
    EventBus bus({.executor = pool.executor()});
    std::atomic<int> calls{0};
    bus.subscribe<int>([&](const int&) { if (calls.fetch_add(1) < 2) throw std::runtime_error("again"); },
                       {.max_deliveries = 3, .redelivery_backoff = fixed(1ms)});
    bus.post(1);
    bus.drain();
    REQUIRE(calls == 3);
}

TEST_CASE("destroying the bus dead-letters what it did not deliver: queued, waiting for a redelivery or an ack",
          "[event_bus][shutdown]") {
    ManualClock clock;
    Letters letters;
    cbm_test::Counter life;
    {
        EventBus bus({.clock = &clock});
        bus.set_dead_letter_handler(std::ref(letters));
        bus.subscribe<TrackedEvent>([](const TrackedEvent& e) { if (e.n == 1) throw std::runtime_error("retry me"); },
                                    {.name = "retrying", .max_deliveries = 3, .redelivery_backoff = fixed(1h)});
        bus.subscribe<int>([](Delivery<int>&) {}, {.name = "parked", .ack = AckMode::manual, .ack_timeout = 1h});
        bus.post(TrackedEvent{cbm_test::Tracked(life), 1});
        bus.post(5);
        bus.process();  // one waits for a redelivery, one for an ack
        bus.post(TrackedEvent{cbm_test::Tracked(life), 2});  // queued
    }
    REQUIRE(letters.size() == 3);
    for (const auto& d : letters.all) {
        REQUIRE(code_of(d.error) == cbm::errc::bus_closed);
    }
    REQUIRE(life.alive() == 0);
    REQUIRE(life.errors == 0);
}

TEST_CASE("the typed dead-letter handler gets the event itself", "[event_bus][shutdown]") {
    EventBus bus;
    std::vector<std::string> ids;
    bus.set_dead_letter_handler<OrderPaid>([&](const cbm::DeadLetter& d, const OrderPaid& e) {
        ids.push_back(e.id + ":" + d.what());
    });
    bus.subscribe<OrderPaid>([](const OrderPaid&) { throw std::runtime_error("no"); });
    bus.post(OrderPaid{"o7", 1});
    bus.process();
    REQUIRE(ids == std::vector<std::string>{"o7:no"});
}

TEST_CASE("the bus's Prometheus text has per-type and per-subscription series", "[event_bus][metrics]") {
    EventBus bus({.metrics = true});
    bus.subscribe<OrderPaid>([](const OrderPaid&) {}, {.name = "billing", .labels = {{"team", "pay"}}, .group = "bill"});
    bus.publish(OrderPaid{"o1", 1});
    bus.post(OrderPaid{"o2", 1});
    bus.process();
    const std::string text = cbm::to_prometheus(bus.metrics());
    REQUIRE_THAT(text, Catch::Contains("cbm_bus_published_total{event=\"OrderPaid\"} 1"));
    REQUIRE_THAT(text, Catch::Contains("cbm_bus_posted_total{event=\"OrderPaid\"} 1"));
    REQUIRE_THAT(text, Catch::Contains(
                           "cbm_bus_delivered_total{event=\"OrderPaid\",subscription=\"billing\",group=\"bill\",team=\"pay\"} 2"));
    REQUIRE_THAT(text, Catch::Contains("cbm_bus_queue_wait_seconds_count{event=\"OrderPaid\"} 1"));
    const auto m = bus.metrics();
    REQUIRE(m.types.at(0).subscriptions.at(0).callback.invoked == 2);
}

// ------------------------------------------------ shutdown and settlement edges

namespace {

// An executor that keeps its tasks until the test runs or drops them, or
// refuses every task (execute() throws) when told to.
class HeldExecutor {
public:
    explicit HeldExecutor(bool refuse = false) : state_(std::make_shared<State>()) { state_->refuse = refuse; }

    void execute(cbm::Task&& task) const {
        state_->submitted.fetch_add(1);
        if (state_->refuse) throw std::runtime_error("HeldExecutor: refused");
        std::lock_guard<std::mutex> lock(state_->mutex);
        state_->tasks.push_back(std::move(task));
    }
    int submitted() const { return state_->submitted.load(); }
    std::size_t held() const {
        std::lock_guard<std::mutex> lock(state_->mutex);
        return state_->tasks.size();
    }
    // Runs the oldest task held, on this thread. Returns false if none was.
    bool run_one() {
        cbm::Task task;
        {
            std::lock_guard<std::mutex> lock(state_->mutex);
            if (state_->tasks.empty()) return false;
            task = std::move(state_->tasks.front());
            state_->tasks.erase(state_->tasks.begin());
        }
        task();
        return true;
    }
    // Runs the tasks held now (and those they submit), on this thread.
    std::size_t run_all() {
        std::size_t ran = 0;
        for (;;) {
            cbm::Task task;
            {
                std::lock_guard<std::mutex> lock(state_->mutex);
                if (state_->tasks.empty()) return ran;
                task = std::move(state_->tasks.front());
                state_->tasks.erase(state_->tasks.begin());
            }
            task();
            ++ran;
        }
    }
    // Destroys the tasks held, unrun (as an executor that shuts down).
    void drop_all() {
        std::vector<cbm::Task> dropped;
        {
            std::lock_guard<std::mutex> lock(state_->mutex);
            dropped.swap(state_->tasks);
        }
    }

private:
    struct State {
        mutable std::mutex mutex;
        std::vector<cbm::Task> tasks;
        std::atomic<int> submitted{0};
        bool refuse = false;
    };
    std::shared_ptr<State> state_;
};

}  // namespace

TEST_CASE("a delivery waiting on a subscription's executor when the bus goes is dead-lettered then, and its task "
          "does nothing later",
          "[event_bus][shutdown][executor]") {
    HeldExecutor held;
    Letters letters;
    cbm_test::Counter life;
    std::atomic<int> calls{0};
    {
        EventBus bus;
        bus.set_dead_letter_handler(std::ref(letters));
        bus.subscribe<TrackedEvent>([&](const TrackedEvent&) { calls.fetch_add(1); },
                                    {.name = "held", .executor = held});
        bus.post(TrackedEvent{cbm_test::Tracked(life), 1});
        bus.process();  // hands the delivery to the held executor
        REQUIRE(held.held() == 1);
    }
    REQUIRE(letters.size() == 1);
    REQUIRE(code_of(letters.all[0].error) == cbm::errc::bus_closed);
    REQUIRE(life.alive() == 0);  // the event went with its dead letter
    held.run_all();              // the bus is gone: the task finds it closed
    REQUIRE(calls == 0);
    REQUIRE(letters.size() == 1);
    REQUIRE(life.errors == 0);
}

TEST_CASE("a delivery whose task the executor drops unrun is dead-lettered with errc::task_dropped",
          "[event_bus][executor]") {
    HeldExecutor held;
    EventBus bus;
    Letters letters;
    bus.set_dead_letter_handler(std::ref(letters));
    bus.subscribe<int>([](const int&) {}, {.name = "dropped", .executor = held});
    bus.post(1);
    bus.process();
    held.drop_all();
    REQUIRE(letters.size() == 1);
    REQUIRE(code_of(letters.all[0].error) == cbm::errc::task_dropped);
    REQUIRE(bus.metrics().outstanding == 0);
}

TEST_CASE("a Delivery kept after its handler acked a posted event still holds the event", "[event_bus][ack]") {
    cbm_test::Counter life;
    std::vector<Delivery<TrackedEvent>> kept;
    {
        EventBus bus;
        bus.subscribe<TrackedEvent>([&](Delivery<TrackedEvent>& d) {
            d.ack();
            kept.push_back(d);
        });
        bus.post(TrackedEvent{cbm_test::Tracked(life), 7});
        bus.process();
        REQUIRE(life.alive() == 1);  // held by the kept Delivery, not freed with the queue's envelope
        REQUIRE(kept.at(0).event().n == 7);
    }
    REQUIRE(kept.at(0).event().n == 7);  // outlives the bus too
    kept.clear();
    REQUIRE(life.alive() == 0);
    REQUIRE(life.errors == 0);
}

TEST_CASE("a handler that acks and then throws ends acked: the failure is reported, nothing is dead-lettered",
          "[event_bus][ack]") {
    EventBus bus({.metrics = true});
    Letters letters;
    bus.set_dead_letter_handler(std::ref(letters));
    std::atomic<int> failures{0};
    bus.set_error_handler([&](const cbm::Failure&) { failures.fetch_add(1); });
    bus.subscribe<int>([](Delivery<int>& d) {
        d.ack();
        throw std::runtime_error("after the ack");
    }, {.name = "acked"});
    bus.post(1);
    bus.process();
    REQUIRE(letters.size() == 0);
    REQUIRE(failures == 1);
    const auto m = bus.metrics();
    REQUIRE(sub_metrics(m, m.types[0].type, "acked").acked == 1);
    REQUIRE(m.outstanding == 0);
}

TEST_CASE("a second nack of one delivery changes nothing, not even the delay", "[event_bus][ack]") {
    ManualClock clock;
    EventBus bus({.clock = &clock});
    std::vector<std::uint32_t> seen;
    bus.subscribe<int>([&](Delivery<int>& d) {
        seen.push_back(d.delivery_count());
        if (d.delivery_count() == 1) {
            REQUIRE(d.nack(1h));
            REQUIRE_FALSE(d.nack(1ms));
        } else {
            d.ack();
        }
    }, {.max_deliveries = 2, .ack = AckMode::manual, .ack_timeout = 10h});
    bus.post(1);
    bus.process();
    clock.advance(2ms);
    bus.process();
    REQUIRE(seen == std::vector<std::uint32_t>{1});  // the first nack's hour still runs
    clock.advance(1h);
    bus.process();
    REQUIRE(seen == std::vector<std::uint32_t>{1, 2});
}

TEST_CASE("in-call retries of a manual delivery share one Delivery: a copy from the first try settles it",
          "[event_bus][ack][options]") {
    ManualClock clock;
    EventBus bus({.clock = &clock});
    std::vector<Delivery<int>> kept;
    bus.subscribe<int>([&](Delivery<int>& d) {
        kept.push_back(d);
        if (kept.size() == 1) throw std::runtime_error("first try");
    }, {.retry = {.attempts = 2, .initial_backoff = 0ms, .jitter = 0.0}, .ack = AckMode::manual, .ack_timeout = 1h});
    bus.post(1);
    bus.process();
    REQUIRE(kept.size() == 2);
    REQUIRE(bus.metrics().outstanding == 1);  // parked, waiting for its ack
    REQUIRE(kept[0].ack());                   // the first try's copy
    REQUIRE_FALSE(kept[1].ack());
    REQUIRE(bus.metrics().outstanding == 0);
}

TEST_CASE("a due redelivery is handed to the executor once, not again while its task waits", "[event_bus][executor]") {
    cbm_test::Watchdog watchdog("timer flood");
    HeldExecutor held;
    EventBus bus({.executor = held});
    std::atomic<int> calls{0};
    bus.subscribe<int>([&](const int&) { if (calls.fetch_add(1) == 0) throw std::runtime_error("once"); },
                       {.max_deliveries = 2, .redelivery_backoff = fixed(0ms)});
    bus.post(1);
    REQUIRE(held.run_one());  // the first delivery fails: a redelivery is due at once
    REQUIRE(cbm_test::eventually([&] { return held.held() >= 1; }));  // the timer handed it over
    // A flooding timer hands the same due work over again and again: give it
    // a moment to show itself (a bounded look, not a synchronisation).
    REQUIRE_FALSE(cbm_test::eventually([&] { return held.submitted() > 2; }, std::chrono::milliseconds(200)));
    held.run_all();
    REQUIRE(calls == 2);
    bus.drain();
}

TEST_CASE("an executor that refuses every task still gets due redeliveries delivered by drain()",
          "[event_bus][executor]") {
    cbm_test::Watchdog watchdog("refusing executor");
    HeldExecutor refusing(true);
    EventBus bus({.executor = refusing});
    std::atomic<int> calls{0};
    bus.subscribe<int>([&](const int&) { if (calls.fetch_add(1) == 0) throw std::runtime_error("once"); },
                       {.max_deliveries = 2, .redelivery_backoff = fixed(0ms)});
    bus.post(1);  // refused: delivered on this thread, fails, waits for a redelivery
    REQUIRE(calls == 1);
    // The timer's task is refused too: drain() delivers it.
    REQUIRE(cbm_test::eventually([&] { return refusing.submitted() >= 2; }));
    bus.drain();
    REQUIRE(calls == 2);
}

TEST_CASE("close() from a handler nested two deliveries deep returns", "[event_bus][shutdown]") {
    cbm_test::Watchdog watchdog("nested close");
    EventBus bus;
    std::atomic<bool> closed{false};
    bus.subscribe<int>([&](const int& n) {
        if (n == 1) {
            bus.post(2);
            bus.process();  // delivers 2 inside the delivery of 1
        } else {
            bus.close();
            closed = true;
        }
    });
    bus.post(1);
    bus.process();
    REQUIRE(closed);
    REQUIRE(bus.metrics().closed);
}

TEST_CASE("two handlers on two threads that close the bus at once both return", "[event_bus][shutdown][race]") {
    cbm_test::Watchdog watchdog("concurrent close");
    cbm::ThreadPool pool({.min_threads = 2, .max_threads = 2});
    EventBus bus({.executor = pool.executor()});
    std::atomic<int> inside{0}, closed{0};
    bus.subscribe<int>([&](const int&) {
        inside.fetch_add(1);
        // Both are inside a delivery before either closes.
        if (!cbm_test::eventually([&] { return inside.load() == 2; })) throw std::runtime_error("no partner");
        bus.close();
        closed.fetch_add(1);
    });
    bus.post(1);
    bus.post(2);
    REQUIRE(cbm_test::eventually([&] { return closed.load() == 2; }));
}

TEST_CASE("redeliveries scheduled from many threads at once arm the bus's one timer safely",
          "[event_bus][executor][race]") {
    cbm_test::Watchdog watchdog("timer arming race");
    cbm::ThreadPool pool({.min_threads = 2, .max_threads = 4});
    EventBus bus({.executor = pool.executor()});
    constexpr int kThreads = 4;
    constexpr int kEvents = 300;
    std::atomic<int> acked{0};
    std::mutex seen_mutex;
    std::map<int, int> seen;
    bus.subscribe<int>([&](const int& n) {
        {
            std::lock_guard<std::mutex> lock(seen_mutex);
            if (seen[n]++ == 0) throw std::runtime_error("first delivery fails");
        }
        acked.fetch_add(1);
    }, {.max_deliveries = 2, .redelivery_backoff = {.initial = 50us, .multiplier = 1.0, .max = 200us, .jitter = 1.0}});
    std::vector<std::thread> producers;
    for (int t = 0; t < kThreads; ++t) {
        producers.emplace_back([&, t] {
            for (int i = 0; i < kEvents; ++i) bus.publish(t * kEvents + i);
        });
    }
    for (auto& p : producers) p.join();
    bus.drain();
    REQUIRE(acked == kThreads * kEvents);
}

TEST_CASE("a lone subscription that fails after leaving every route meanwhile is dead-lettered, not lost",
          "[event_bus][unsubscribe]") {
    EventBus bus;
    Letters letters;
    bus.set_dead_letter_handler(std::ref(letters));
    std::atomic<int> newcomer{0};
    bus.subscribe<int>([&](cbm::Self& self, const int& n) {
        if (n != 1) return;
        self.unregister();  // it leaves; a newcomer comes; a nested publish prunes it from the routes
        bus.subscribe<int>([&](const int&) { newcomer.fetch_add(1); }, {.name = "newcomer"});
        bus.publish(2);
        throw std::runtime_error("failed after leaving");
    }, {.name = "leaver", .max_deliveries = 3});
    const cbm::TriggerResult r = bus.publish(1);
    REQUIRE(r.failed == 1);
    REQUIRE(letters.size() == 1);
    REQUIRE(letters.all[0].name == "leaver");
    REQUIRE(letters.all[0].what().find("failed after leaving") != std::string::npos);
    REQUIRE(newcomer >= 1);  // the nested publish reached it
    REQUIRE(bus.subscriber_count<int>() == 1);
}
