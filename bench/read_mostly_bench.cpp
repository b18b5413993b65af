// Read-mostly shared configuration: the classic Go comparison (sync.Once vs
// map + RWMutex vs atomic.Value) in C++. Every implementation does the same
// work per operation - look one key up in a 16-entry std::unordered_map<int, int> - so
// the difference is the synchronization around it.
//
//   floor_unsynchronized   the lookup alone, no synchronization, no writer
//   std_call_once          std::call_once(init) then the lookup (no writer: a once cannot be updated)
//   cbm_once               cbm::Once::call(init) then the lookup (no writer)
//   shared_mutex_map       std::shared_lock around the lookup; the writer takes a unique_lock
//   atomic_shared_ptr      std::atomic<std::shared_ptr<const Config>>::load(); the writer stores a new one
//   cbm_snapshot           cbm::Snapshot<Config>::load(); the writer stores a new one
//
// Writes: for the last three, thread 0 replaces the value every 1024 of its
// operations (the "occasional writer"). Threads: 1, 2, 8 and 1000, sharing
// 4M operations (as Go's table runs 1000 goroutines over 100k operations);
// on a machine with fewer cores the larger counts are oversubscribed, which
// the report says beside the numbers.
//
// Allocations per operation (the C++ stand-in for Go's GC pressure) are
// counted by replacing the global operator new in this program.
#include <cbm/once.hpp>
#include <cbm/snapshot.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <latch>
#include <memory>
#include <mutex>
#include <new>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "bench_support.hpp"

namespace {
thread_local std::uint64_t allocations_on_this_thread = 0;
}  // namespace

// Counting replacements of the global allocation functions (the sized and
// array forms forward to these). Alignment-taking forms are not used here.
void* operator new(std::size_t size) {
    ++allocations_on_this_thread;
    if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace {

struct Config {
    std::unordered_map<int, int> values;
};

Config make_config(int version) {
    Config c;
    for (int i = 0; i < 16; ++i) c.values.emplace(i, version + i);
    return c;
}

constexpr int lookup_key() { return 7; }

constexpr std::int64_t kWriteEvery = 1024;

// One benchmark iteration = `threads` threads doing kTotalOps operations
// between them (at least kMinOpsPerThread each), started together. Reports,
// as counters: wall-clock ns per operation (the wall time from the common
// start to the last thread's end, divided by all operations: 1 / throughput),
// millions of operations per second, and allocations per operation.
constexpr std::int64_t kTotalOps = 1 << 22;
constexpr std::int64_t kMinOpsPerThread = 4096;

template <class Op>
void run(benchmark::State& state, Op&& op) {
    const auto threads = static_cast<int>(state.range(0));
    const std::int64_t per_thread = std::max(kTotalOps / threads, kMinOpsPerThread);
    double wall_ns = 0;  // summed over iterations
    std::uint64_t allocations = 0;
    for (auto _ : state) {
        std::latch ready(threads);
        std::atomic<bool> go{false};
        std::atomic<std::int64_t> last_end{0};
        std::atomic<std::uint64_t> allocated{0};
        std::vector<std::thread> pool;
        pool.reserve(static_cast<std::size_t>(threads));
        for (int t = 0; t < threads; ++t) {
            pool.emplace_back([&, t] {
                ready.count_down();
                go.wait(false);
                const std::uint64_t before = allocations_on_this_thread;
                for (std::int64_t i = 0; i < per_thread; ++i) op(t, i);
                allocated.fetch_add(allocations_on_this_thread - before);
                const std::int64_t end = std::chrono::steady_clock::now().time_since_epoch().count();
                std::int64_t seen = last_end.load();
                while (seen < end && !last_end.compare_exchange_weak(seen, end)) {
                }
            });
        }
        ready.wait();
        const std::int64_t start = std::chrono::steady_clock::now().time_since_epoch().count();
        go = true;
        go.notify_all();
        for (auto& thread : pool) thread.join();
        const auto wall = static_cast<double>(last_end.load() - start);
        wall_ns += wall;
        allocations += allocated.load();
        state.SetIterationTime(wall * 1e-9);
    }
    const double ops = static_cast<double>(per_thread) * threads * static_cast<double>(state.iterations());
    state.counters["ns_per_op"] = wall_ns / ops;
    state.counters["mops_per_s"] = ops / wall_ns * 1e3;
    state.counters["allocs_per_op"] = static_cast<double>(allocations) / ops;
}

void floor_unsynchronized(benchmark::State& state) {
    static const Config config = make_config(0);
    run(state, [&](int, std::int64_t) { benchmark::DoNotOptimize(config.values.find(lookup_key())->second); });
}

void std_call_once(benchmark::State& state) {
    static std::once_flag flag;
    static Config config;
    run(state, [&](int, std::int64_t) {
        std::call_once(flag, [] { config = make_config(0); });
        benchmark::DoNotOptimize(config.values.find(lookup_key())->second);
    });
}

void cbm_once(benchmark::State& state) {
    static cbm::Once once;
    static Config config;
    run(state, [&](int, std::int64_t) {
        once.call([] { config = make_config(0); });
        benchmark::DoNotOptimize(config.values.find(lookup_key())->second);
    });
}

void shared_mutex_map(benchmark::State& state) {
    static std::shared_mutex mutex;
    static Config config = make_config(0);
    run(state, [&](int thread, std::int64_t i) {
        if (thread == 0 && i % kWriteEvery == 0) {
            std::unique_lock<std::shared_mutex> lock(mutex);
            config.values[lookup_key()] = static_cast<int>(i);
        }
        std::shared_lock<std::shared_mutex> lock(mutex);
        benchmark::DoNotOptimize(config.values.find(lookup_key())->second);
    });
}

void atomic_shared_ptr(benchmark::State& state) {
    static std::atomic<std::shared_ptr<const Config>> config{std::make_shared<const Config>(make_config(0))};
    run(state, [&](int thread, std::int64_t i) {
        if (thread == 0 && i % kWriteEvery == 0) config.store(std::make_shared<const Config>(make_config(static_cast<int>(i))));
        const std::shared_ptr<const Config> current = config.load();
        benchmark::DoNotOptimize(current->values.find(lookup_key())->second);
    });
}

void cbm_snapshot(benchmark::State& state) {
    static cbm::Snapshot<Config> config{make_config(0)};
    run(state, [&](int thread, std::int64_t i) {
        if (thread == 0 && i % kWriteEvery == 0) config.store(make_config(static_cast<int>(i)));
        const auto current = config.load();
        benchmark::DoNotOptimize(current->values.find(lookup_key())->second);
    });
}

void register_family(const char* name, void (*fn)(benchmark::State&)) {
    benchmark::RegisterBenchmark(name, fn)->ArgName("thr")->Arg(1)->Arg(2)->Arg(8)->Arg(1000)->UseManualTime()->Iterations(3);
}

}  // namespace

int main(int argc, char** argv) {
    register_family("read_mostly/floor_unsynchronized", floor_unsynchronized);
    register_family("read_mostly/std_call_once", std_call_once);
    register_family("read_mostly/cbm_once", cbm_once);
    register_family("read_mostly/shared_mutex_map", shared_mutex_map);
    register_family("read_mostly/atomic_shared_ptr", atomic_shared_ptr);
    register_family("read_mostly/cbm_snapshot", cbm_snapshot);
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
}
