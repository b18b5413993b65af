// Once::call when already done, against an acquire load of std::atomic<bool>
// plus a branch (the floor) and std::call_once.
#include <cbm/once.hpp>

#include <atomic>
#include <mutex>

#include "bench_support.hpp"

namespace {

void floor_atomic_bool(benchmark::State& state) {
    static std::atomic<bool> done{true};
    int runs = 0;
    for (auto _ : state) {
        if (!done.load(std::memory_order_acquire)) ++runs;
        benchmark::DoNotOptimize(runs);
    }
}

void cbm_once(benchmark::State& state) {
    static cbm::Once once;
    int runs = 0;
    once.call([&] { ++runs; });
    for (auto _ : state) {
        once.call([&] { ++runs; });
        benchmark::DoNotOptimize(runs);
    }
}

void std_call_once(benchmark::State& state) {
    static std::once_flag flag;
    int runs = 0;
    for (auto _ : state) {
        std::call_once(flag, [&] { ++runs; });
        benchmark::DoNotOptimize(runs);
    }
}

void cbm_once_value(benchmark::State& state) {
    static cbm::OnceValue<long> value;
    for (auto _ : state) benchmark::DoNotOptimize(value.get([] { return 42L; }));
}

}  // namespace

BENCHMARK(floor_atomic_bool)->Name("once_done/floor_atomic_bool")->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(cbm_once)->Name("once_done/cbm_once")->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(cbm_once_value)->Name("once_done/cbm_once_value")->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(std_call_once)->Name("once_done/std_call_once")->Threads(1)->Threads(2)->UseRealTime();

BENCHMARK_MAIN();
