// Churn: register one callback and unregister it again, with N = 1, 8, 64
// or 10,000 other callbacks present; from one thread, and from two threads
// at once on the same group (each churning its own callbacks).
#include <memory>

#include "peers.hpp"

namespace {

using namespace cbm_bench;

template <class Peer>
void churn(benchmark::State& state) {
    static Peer* peer = nullptr;
    if (state.thread_index() == 0) {
        peer = new Peer;
        peer->setup(static_cast<int>(state.range(0)));
    }
    for (auto _ : state) peer->churn();
    state.SetItemsProcessed(state.iterations());
    if (state.thread_index() == 0) {
        delete peer;
        peer = nullptr;
    }
}

template <class Peer>
void register_churn(const char* name, int max_threads = 2) {
    auto* b = benchmark::RegisterBenchmark(name, &churn<Peer>);
    b->Arg(1)->Arg(8)->Arg(64)->Arg(10'000)->UseRealTime();
    for (int t : cbm_bench::thread_counts(max_threads)) b->Threads(t);
}

}  // namespace

int main(int argc, char** argv) {
    register_churn<CbmGroup>("churn/cbm_group_unregister");
    register_churn<CbmGroupNowait>("churn/cbm_group_unregister_nowait");
    register_churn<CbmRegistry>("churn/cbm_registry_new_key");
    register_churn<SharedMutexVector>("churn/shared_mutex_vector");
#if CBM_BENCH_HAVE_BOOST
    register_churn<BoostSignals2>("churn/boost_signals2");
#else
    note_missing("Boost.Signals2", "libboost-dev");
#endif
#if CBM_BENCH_HAVE_SIGCPP
    register_churn<SigcSignal>("churn/sigcpp_single_threaded", 1);
#else
    note_missing("libsigc++ 3", "libsigc++-3.0-dev");
#endif
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
}
