// The cost of metrics: one trigger of 8 callbacks with metrics off, on
// (latency sampled one call in 64 per thread, the default), on with every
// call timed, on with a slow_threshold on every callback (every call timed
// and compared: the exact slow-call counter), and on with an observer; from
// one and from two threads. Each callback has a name of its own, so each is
// a series of its own. "counts only" samples one call in 2^31, so it is the
// counting part of metrics on without the sampled timing.
#include <cbm/callback_group.hpp>
#include <cbm/metrics.hpp>

#include <chrono>
#include <memory>
#include <string>
#include <utility>

#include "bench_support.hpp"

namespace {

struct NullObserver final : cbm::CallbackObserver {
    void on_begin(const cbm::CallbackEvent&) noexcept override {}
    void on_end(const cbm::CallbackEvent&, std::chrono::nanoseconds, const std::exception_ptr&) noexcept override {}
};

template <bool kMetrics, std::uint32_t kSampleEvery, bool kObserver, bool kSlowThreshold = false>
void emit(benchmark::State& state) {
    static cbm::CallbackGroup<void(int)>* group = nullptr;
    if (state.thread_index() == 0) {
        group = new cbm::CallbackGroup<void(int)>(
            cbm::GroupOptions{.metrics = kMetrics, .latency_sample_every = kSampleEvery});
        for (int i = 0; i < 8; ++i) {
            cbm::CallbackOptions<void(int)> options{.name = "cb" + std::to_string(i)};
            if constexpr (kSlowThreshold) options.slow_threshold = std::chrono::seconds(1);
            group->add(cbm_bench::body, std::move(options));
        }
        if constexpr (kObserver) group->set_observer(std::make_shared<NullObserver>());
    }
    for (auto _ : state) benchmark::DoNotOptimize(group->trigger(1).invoked);
    if (state.thread_index() == 0) {
        delete group;
        group = nullptr;
    }
}

}  // namespace

BENCHMARK(emit<false, 64, false>)->Name("metrics/cbm_metrics_off")->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(emit<true, 64, false>)->Name("metrics/cbm_metrics_on_sample_64")->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(emit<true, (1u << 31), false>)->Name("metrics/cbm_metrics_on_counts_only")->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(emit<true, 1, false>)->Name("metrics/cbm_metrics_on_time_every_call")->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(emit<true, 64, false, true>)->Name("metrics/cbm_metrics_on_slow_threshold")->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(emit<true, 64, true>)->Name("metrics/cbm_metrics_on_null_observer")->Threads(1)->Threads(2)->UseRealTime();

BENCHMARK_MAIN();
