// Emit cost: one trigger of N callbacks, from one and from two threads at
// once on the same group. The floor is an unsynchronized loop over a
// std::vector<std::function<void(int)>>.
#include "peers.hpp"

namespace {

using namespace cbm_bench;

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
    for (int t : cbm_bench::thread_counts(max_threads)) b->Threads(t);
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
    note_missing("Boost.Signals2", "libboost-dev");
#endif
#if CBM_BENCH_HAVE_SIGCPP
    register_emit<SigcSignal>("emit/sigcpp_single_threaded", 1);
#else
    note_missing("libsigc++ 3", "libsigc++-3.0-dev");
#endif
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
}
