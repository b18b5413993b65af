// Churn: register one callback and unregister it again, with 0 or 10,000
// other callbacks present.
#include <memory>

#include "peers.hpp"

namespace {

using namespace cbm_bench;

template <class Peer>
void churn(benchmark::State& state) {
    auto peer = std::make_unique<Peer>();
    peer->setup(static_cast<int>(state.range(0)));
    for (auto _ : state) peer->churn();
    state.SetItemsProcessed(state.iterations());
}

template <class Peer>
void register_churn(const char* name) {
    benchmark::RegisterBenchmark(name, &churn<Peer>)->Arg(0)->Arg(10'000);
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
    register_churn<SigcSignal>("churn/sigcpp_single_threaded");
#else
    note_missing("libsigc++ 3", "libsigc++-3.0-dev");
#endif
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
}
