// Contention: emit while another thread keeps adding and unregistering
// callbacks on the same group, and the latency of a blocking unregister()
// while another thread keeps triggering.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "peers.hpp"

namespace {

using namespace cbm_bench;
constexpr int kCallbacks = 8;

// Emit of 8 callbacks on the measured thread while a second thread churns.
template <class Peer>
void emit_while_churning(benchmark::State& state) {
    Peer peer;
    peer.setup(kCallbacks);
    std::atomic<bool> stop{false};
    std::atomic<bool> measuring{false};
    std::atomic<long> churns{0};  // completed while the emits were timed
    std::thread churner([&] {
        long done = 0;
        while (!stop.load(std::memory_order_relaxed)) {
            peer.churn();
            if (measuring.load(std::memory_order_relaxed)) ++done;
        }
        churns.store(done);
    });
    int x = 1;
    benchmark::DoNotOptimize(x);
    measuring.store(true);
    for (auto _ : state) peer.emit(x);
    measuring.store(false);
    stop.store(true);
    churner.join();
    // How hard the other thread churned: a lock that starves the writer
    // makes emit look cheap.
    state.counters["churns_per_emit"] =
        static_cast<double>(churns.load()) / static_cast<double>(std::max<benchmark::IterationCount>(state.iterations(), 1));
}

// The unsynchronized floor, without churn (it cannot churn safely).
void floor_without_churn(benchmark::State& state) {
    FloorLoop floor;
    floor.setup(kCallbacks);
    int x = 1;
    benchmark::DoNotOptimize(x);
    for (auto _ : state) floor.emit(x);
}

// Latency of add + unregister (blocking, or unregister_nowait) while another
// thread triggers the same group in a loop: p50, p99 and max of the pair
// over the iterations.
template <bool Blocking>
void cbm_unregister_latency(benchmark::State& state) {
    cbm::CallbackGroup<void(int)> group;
    for (int i = 0; i < kCallbacks; ++i) group.add(kBody);
    std::atomic<bool> stop{false};
    std::thread emitter([&] {
        int x = 0;
        while (!stop.load(std::memory_order_relaxed)) group.trigger(++x);
    });
    std::vector<double> samples;
    samples.reserve(1 << 16);
    for (auto _ : state) {
        const auto start = std::chrono::steady_clock::now();
        auto r = group.add(kBody);
        if constexpr (Blocking) {
            r.unregister();
        } else {
            r.unregister_nowait();
        }
        const auto stop_time = std::chrono::steady_clock::now();
        samples.push_back(std::chrono::duration<double, std::nano>(stop_time - start).count());
    }
    stop.store(true);
    emitter.join();
    std::sort(samples.begin(), samples.end());
    auto at = [&](double q) { return samples[static_cast<std::size_t>(q * static_cast<double>(samples.size() - 1))]; };
    state.counters["p50_ns"] = at(0.50);
    state.counters["p99_ns"] = at(0.99);
    state.counters["max_ns"] = samples.back();
}

}  // namespace

int main(int argc, char** argv) {
    benchmark::RegisterBenchmark("contention/floor_std_function_loop_no_churn", &floor_without_churn);
    benchmark::RegisterBenchmark("contention/cbm_group", &emit_while_churning<CbmGroup>)->UseRealTime();
    benchmark::RegisterBenchmark("contention/shared_mutex_vector", &emit_while_churning<SharedMutexVector>)->UseRealTime();
#if CBM_BENCH_HAVE_BOOST
    benchmark::RegisterBenchmark("contention/boost_signals2", &emit_while_churning<BoostSignals2>)->UseRealTime();
#else
    cbm_bench::note_missing("Boost.Signals2", "libboost-dev");
#endif
    benchmark::RegisterBenchmark("unregister_latency/cbm_group_while_triggering", &cbm_unregister_latency<true>)
        ->UseRealTime()
        ->Iterations(20000);
    benchmark::RegisterBenchmark("unregister_latency/cbm_group_nowait_while_triggering",
                                 &cbm_unregister_latency<false>)
        ->UseRealTime()
        ->Iterations(20000);
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
}
