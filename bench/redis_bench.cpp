// The Redis bridge end to end on localhost, against raw hiredis doing the
// same work in the same run:
//   redis_throughput: one batch of 64 events from publish to handled and
//     acknowledged; the iteration ends when the last is. floor: this thread
//     pipelines 64 XADDs, and a consumer thread of raw hiredis reads with
//     XREADGROUP (COUNT 64, BLOCK) and acknowledges each read with one
//     XACK (no decoding, no handler). cbm: publish_batch() of 64 events,
//     and a consumer of the bridge decodes, handles and acknowledges them
//     on its own thread.
//   redis_latency: one event from publish to its handler (p50, p99).
//     floor: XADD, then XREADGROUP and XACK, on one thread.
// The server comes from CBM_REDIS_PORT (scripts/bench.sh starts one on
// 127.0.0.1); without it the benchmarks skip.
#include <cbm/redis/bridge.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr int kBatch = 64;

int redis_port() {
    const char* p = std::getenv("CBM_REDIS_PORT");
    return p != nullptr ? std::atoi(p) : 0;
}

cbm::redis::Endpoint endpoint() { return {.host = "127.0.0.1", .port = redis_port()}; }

std::string fresh_topic(const char* what) {
    static int n = 0;
    return std::string("cbm-bench:") + what + ":" + std::to_string(++n);
}

const std::string& payload() {
    static const std::string p(100, 'x');  // a 100-byte event
    return p;
}

void wait_for(const std::atomic<long>& counter, long target) {
    while (counter.load(std::memory_order_acquire) < target) std::this_thread::yield();
}

void record_latencies(benchmark::State& state, std::vector<double>& ns) {
    if (ns.empty()) return;
    std::sort(ns.begin(), ns.end());
    state.counters["p50_ns"] = ns[ns.size() / 2];
    state.counters["p99_ns"] = ns[std::min(ns.size() - 1, ns.size() * 99 / 100)];
    state.counters["max_ns"] = ns.back();
}

void floor_throughput(benchmark::State& state) {
    if (redis_port() == 0) return state.SkipWithError("CBM_REDIS_PORT is not set (run scripts/bench.sh)");
    const std::string topic = fresh_topic("floor");
    cbm::redis::Connection producer(endpoint());
    producer.command({"XGROUP", "CREATE", topic, "g", "$", "MKSTREAM"}).check("XGROUP");
    // The consumer: the same thread structure as the bridge's (read, ack), with no decoding and no handler.
    std::atomic<long> handled{0};
    std::atomic<bool> stop{false};
    std::jthread consumer_thread([&] {
        cbm::redis::Connection consumer(endpoint());
        const std::string count = std::to_string(kBatch);
        while (!stop.load(std::memory_order_relaxed)) {
            cbm::redis::Reply read = consumer.command(
                {"XREADGROUP", "GROUP", "g", "c", "COUNT", count, "BLOCK", "100", "STREAMS", topic, ">"});
            if ((*read).is_nil()) continue;
            const cbm::redis::ReplyView entries = (*read)[0][1];
            std::vector<std::string_view> ack{"XACK", topic, "g"};
            for (std::size_t i = 0; i < entries.size(); ++i) ack.push_back(entries[i][0].text());
            consumer.command(std::span<const std::string_view>(ack)).check("XACK");
            handled.fetch_add(static_cast<long>(entries.size()), std::memory_order_release);
        }
    });
    std::vector<std::vector<std::string_view>> adds(kBatch, {"XADD", topic, "*", "data", payload(), "trace", ""});
    long target = 0;
    for (auto _ : state) {
        producer.pipeline(adds);
        target += kBatch;
        wait_for(handled, target);
    }
    stop.store(true);
    consumer_thread.join();
    producer.command({"DEL", topic});
    state.SetItemsProcessed(state.iterations() * kBatch);
}

void bridge_throughput(benchmark::State& state) {
    if (redis_port() == 0) return state.SkipWithError("CBM_REDIS_PORT is not set (run scripts/bench.sh)");
    const std::string topic = fresh_topic("bridge");
    cbm::redis::Bridge bridge({.endpoint = endpoint()});
    std::atomic<long> handled{0};
    auto consumer = bridge.subscribe<std::string>(
        topic, [&](const std::string&) { handled.fetch_add(1, std::memory_order_release); },
        {.group = "g", .consumer = "c", .batch = kBatch, .from_beginning = true});
    const std::vector<std::string> events(kBatch, payload());
    bridge.publish(topic, payload());  // the consumer is connected and its group exists
    wait_for(handled, 1);
    long target = 1;
    for (auto _ : state) {
        bridge.publish_batch(topic, std::span<const std::string>(events));
        target += kBatch;
        wait_for(handled, target);
    }
    consumer.stop();
    cbm::redis::Connection(endpoint()).command({"DEL", topic});
    state.SetItemsProcessed(state.iterations() * kBatch);
}

void floor_latency(benchmark::State& state) {
    if (redis_port() == 0) return state.SkipWithError("CBM_REDIS_PORT is not set (run scripts/bench.sh)");
    const std::string topic = fresh_topic("floor-latency");
    cbm::redis::Connection c(endpoint());
    c.command({"XGROUP", "CREATE", topic, "g", "$", "MKSTREAM"}).check("XGROUP");
    std::vector<double> ns;
    for (auto _ : state) {
        const auto start = std::chrono::steady_clock::now();
        c.command({"XADD", topic, "*", "data", payload(), "trace", ""}).check("XADD");
        cbm::redis::Reply read = c.command({"XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "STREAMS", topic, ">"});
        const std::string id((*read)[0][1][0][0].text());
        ns.push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count());
        c.command({"XACK", topic, "g", id}).check("XACK");
    }
    c.command({"DEL", topic});
    record_latencies(state, ns);
}

void bridge_latency(benchmark::State& state) {
    if (redis_port() == 0) return state.SkipWithError("CBM_REDIS_PORT is not set (run scripts/bench.sh)");
    const std::string topic = fresh_topic("bridge-latency");
    cbm::redis::Bridge bridge({.endpoint = endpoint()});
    std::atomic<long> handled{0};
    std::atomic<std::int64_t> handled_at{0};
    auto consumer = bridge.subscribe<std::string>(
        topic,
        [&](const std::string&) {
            handled_at.store(std::chrono::steady_clock::now().time_since_epoch().count(), std::memory_order_relaxed);
            handled.fetch_add(1, std::memory_order_release);
        },
        {.group = "g", .consumer = "c", .from_beginning = true});
    bridge.publish(topic, payload());
    wait_for(handled, 1);
    long target = 1;
    std::vector<double> ns;
    for (auto _ : state) {
        const auto start = std::chrono::steady_clock::now();
        bridge.publish(topic, payload());
        wait_for(handled, ++target);
        const auto at = std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(handled_at.load()));
        ns.push_back(std::chrono::duration<double, std::nano>(at - start).count());
    }
    consumer.stop();
    cbm::redis::Connection(endpoint()).command({"DEL", topic});
    record_latencies(state, ns);
}

}  // namespace

BENCHMARK(floor_throughput)->Name("redis_throughput/floor_hiredis_pipelined_64")->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(bridge_throughput)->Name("redis_throughput/cbm_bridge_batch_64")->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(floor_latency)->Name("redis_latency/floor_hiredis_xadd_xreadgroup")->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(bridge_latency)->Name("redis_latency/cbm_bridge_publish_to_handler")->UseRealTime()->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
