// Read-mostly shared configuration: the classic Go comparison (sync.Once vs
// map + RWMutex vs atomic.Value) in C++. Every implementation does the same
// work per operation - look one key up in a 16-entry std::unordered_map - so
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
// operations (the "occasional writer"). Threads: 1, 2, 8 and 1000; on a
// machine with fewer cores the larger counts are oversubscribed, which the
// report says beside the numbers.
//
// Allocations per operation (the C++ stand-in for Go's GC pressure) are
// counted by replacing the global operator new in this program.
#include <cbm/once.hpp>
#include <cbm/snapshot.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <new>
#include <shared_mutex>
#include <string>
#include <unordered_map>

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
    std::unordered_map<std::string, int> values;
};

Config make_config(int version) {
    Config c;
    for (int i = 0; i < 16; ++i) c.values.emplace("key" + std::to_string(i), version + i);
    return c;
}

const std::string& lookup_key() {
    static const std::string key = "key7";
    return key;
}

constexpr std::int64_t kWriteEvery = 1024;

// Runs `op(i)` per iteration and reports allocations per operation.
template <class Op>
void run(benchmark::State& state, Op&& op) {
    const std::uint64_t allocations_before = allocations_on_this_thread;
    std::int64_t i = 0;
    for (auto _ : state) op(i++);
    state.counters["allocs_per_op"] = benchmark::Counter(
        static_cast<double>(allocations_on_this_thread - allocations_before), benchmark::Counter::kAvgIterations);
}

void floor_unsynchronized(benchmark::State& state) {
    static const Config config = make_config(0);
    run(state, [&](std::int64_t) { benchmark::DoNotOptimize(config.values.find(lookup_key())->second); });
}

void std_call_once(benchmark::State& state) {
    static std::once_flag flag;
    static Config config;
    run(state, [&](std::int64_t) {
        std::call_once(flag, [] { config = make_config(0); });
        benchmark::DoNotOptimize(config.values.find(lookup_key())->second);
    });
}

void cbm_once(benchmark::State& state) {
    static cbm::Once once;
    static Config config;
    run(state, [&](std::int64_t) {
        once.call([] { config = make_config(0); });
        benchmark::DoNotOptimize(config.values.find(lookup_key())->second);
    });
}

void shared_mutex_map(benchmark::State& state) {
    static std::shared_mutex mutex;
    static Config config = make_config(0);
    const bool writer = state.thread_index() == 0;
    run(state, [&](std::int64_t i) {
        if (writer && i % kWriteEvery == 0) {
            std::unique_lock<std::shared_mutex> lock(mutex);
            config.values[lookup_key()] = static_cast<int>(i);
        }
        std::shared_lock<std::shared_mutex> lock(mutex);
        benchmark::DoNotOptimize(config.values.find(lookup_key())->second);
    });
}

void atomic_shared_ptr(benchmark::State& state) {
    static std::atomic<std::shared_ptr<const Config>> config{std::make_shared<const Config>(make_config(0))};
    const bool writer = state.thread_index() == 0;
    run(state, [&](std::int64_t i) {
        if (writer && i % kWriteEvery == 0) config.store(std::make_shared<const Config>(make_config(static_cast<int>(i))));
        const std::shared_ptr<const Config> current = config.load();
        benchmark::DoNotOptimize(current->values.find(lookup_key())->second);
    });
}

void cbm_snapshot(benchmark::State& state) {
    static cbm::Snapshot<Config> config{make_config(0)};
    const bool writer = state.thread_index() == 0;
    run(state, [&](std::int64_t i) {
        if (writer && i % kWriteEvery == 0) config.store(make_config(static_cast<int>(i)));
        const auto current = config.load();
        benchmark::DoNotOptimize(current->values.find(lookup_key())->second);
    });
}

void register_family(const char* name, void (*fn)(benchmark::State&)) {
    benchmark::RegisterBenchmark(name, fn)->Threads(1)->Threads(2)->Threads(8)->Threads(1000)->UseRealTime();
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
