// Snapshot<T>::load read of one field, against a plain std::atomic<T*>
// acquire load (the floor) and std::atomic<std::shared_ptr<T>>.
#include <cbm/snapshot.hpp>

#include <atomic>
#include <memory>

#include "bench_support.hpp"

namespace {

struct Config {
    long limit = 42;
    long padding[7] = {};
};

void atomic_pointer_floor(benchmark::State& state) {
    static Config config;
    static std::atomic<Config*> current{&config};
    for (auto _ : state) {
        Config* c = current.load(std::memory_order_acquire);
        benchmark::DoNotOptimize(c->limit);
    }
}

void cbm_snapshot(benchmark::State& state) {
    static cbm::Snapshot<Config> snapshot{Config{}};
    for (auto _ : state) {
        auto handle = snapshot.load();
        benchmark::DoNotOptimize(handle->limit);
    }
}

void atomic_shared_ptr(benchmark::State& state) {
    static std::atomic<std::shared_ptr<Config>> current{std::make_shared<Config>()};
    for (auto _ : state) {
        std::shared_ptr<Config> c = current.load(std::memory_order_acquire);
        benchmark::DoNotOptimize(c->limit);
    }
}

}  // namespace

BENCHMARK(atomic_pointer_floor)->Name("snapshot_read/floor_atomic_pointer")->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(cbm_snapshot)->Name("snapshot_read/cbm_snapshot")->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(atomic_shared_ptr)->Name("snapshot_read/atomic_shared_ptr")->Threads(1)->Threads(2)->UseRealTime();

BENCHMARK_MAIN();
