// Emit cost: one trigger of N callbacks, from one and from two threads at
// once on the same group. The floor is an unsynchronized loop over a
// std::vector<std::function<void(int)>>.
#include <cbm/callback_group.hpp>
#include <cbm/callback_registry.hpp>

#include <functional>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "bench_support.hpp"

#if CBM_BENCH_HAVE_BOOST
#include <boost/signals2/signal.hpp>
#endif
#if CBM_BENCH_HAVE_SIGCPP
#include <sigc++/sigc++.h>
#endif

namespace {

const auto kBody = [](int x) { cbm_bench::body(x); };

struct FloorLoop {
    std::vector<std::function<void(int)>> callbacks;
    void setup(int n) {
        for (int i = 0; i < n; ++i) callbacks.emplace_back(kBody);
    }
    void emit(int x) {
        for (auto& f : callbacks) f(x);
    }
};

struct SharedMutexVector {
    std::shared_mutex mutex;
    std::vector<std::function<void(int)>> callbacks;
    void setup(int n) {
        std::unique_lock lock(mutex);
        for (int i = 0; i < n; ++i) callbacks.emplace_back(kBody);
    }
    void emit(int x) {
        std::shared_lock lock(mutex);
        for (auto& f : callbacks) f(x);
    }
};

struct CbmGroup {
    cbm::CallbackGroup<void(int)> group;
    void setup(int n) {
        for (int i = 0; i < n; ++i) group.add(kBody);
    }
    void emit(int x) { benchmark::DoNotOptimize(group.trigger(x).invoked); }
};

struct CbmRegistry {
    cbm::CallbackRegistry<int, void(int)> registry;
    void setup(int n) {
        for (int key = 0; key < 64; ++key) registry.add(key + 1000, kBody);  // other keys present
        for (int i = 0; i < n; ++i) registry.add(7, kBody);
    }
    void emit(int x) { benchmark::DoNotOptimize(registry.trigger(7, x).invoked); }
};

#if CBM_BENCH_HAVE_BOOST
struct BoostSignals2 {
    boost::signals2::signal<void(int)> signal;
    void setup(int n) {
        for (int i = 0; i < n; ++i) signal.connect(kBody);
    }
    void emit(int x) { signal(x); }
};
#endif

#if CBM_BENCH_HAVE_SIGCPP
// libsigc++ is not thread-safe: measured on one thread only.
struct SigcSignal {
    sigc::signal<void(int)> signal;
    void setup(int n) {
        for (int i = 0; i < n; ++i) signal.connect(kBody);
    }
    void emit(int x) { signal.emit(x); }
};
#endif

template <class Peer>
void emit(benchmark::State& state) {
    static Peer* peer = nullptr;
    if (state.thread_index() == 0) {
        peer = new Peer;
        peer->setup(static_cast<int>(state.range(0)));
    }
    int x = 1;
    benchmark::DoNotOptimize(x);
    for (auto _ : state) peer->emit(x);
    state.SetItemsProcessed(state.iterations() * state.range(0));
    if (state.thread_index() == 0) {
        delete peer;
        peer = nullptr;
    }
}

template <class Peer>
void register_emit(const char* name, int max_threads) {
    auto* b = benchmark::RegisterBenchmark(name, &emit<Peer>);
    b->Arg(1)->Arg(8)->Arg(64)->UseRealTime();
    for (int t = 1; t <= max_threads; ++t) b->Threads(t);
}

}  // namespace

int main(int argc, char** argv) {
    register_emit<FloorLoop>("emit/floor_std_function_loop", 2);
    register_emit<CbmGroup>("emit/cbm_group", 2);
    register_emit<CbmRegistry>("emit/cbm_registry", 2);
    register_emit<SharedMutexVector>("emit/shared_mutex_vector", 2);
#if CBM_BENCH_HAVE_BOOST
    register_emit<BoostSignals2>("emit/boost_signals2", 2);
#else
    cbm_bench::note_missing("Boost.Signals2", "libboost-dev");
#endif
#if CBM_BENCH_HAVE_SIGCPP
    register_emit<SigcSignal>("emit/sigcpp_single_threaded", 1);
#else
    cbm_bench::note_missing("libsigc++ 3", "libsigc++-3.0-dev");
#endif
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
}
