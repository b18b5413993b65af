// Churn: register one callback and unregister it again, with 0 or 10,000
// other callbacks present.
#include <cbm/callback_group.hpp>
#include <cbm/callback_registry.hpp>

#include <algorithm>
#include <functional>
#include <memory>
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

struct CbmGroupBlocking {
    cbm::CallbackGroup<void(int)> group;
    void setup(int present) {
        for (int i = 0; i < present; ++i) group.add(kBody);
    }
    void churn() {
        auto r = group.add(kBody);
        r.unregister();
    }
};

struct CbmGroupNowait : CbmGroupBlocking {
    void churn() {
        auto r = group.add(kBody);
        r.unregister_nowait();
    }
};

struct CbmRegistryNewKey {
    cbm::CallbackRegistry<int, void(int)> registry;
    void setup(int present) {
        for (int i = 0; i < present; ++i) registry.add(i, kBody);
    }
    void churn() {
        auto r = registry.add(-1, kBody);  // creates the key, and removes it again
        r.unregister();
    }
};

struct SharedMutexVector {
    std::shared_mutex mutex;
    std::vector<std::shared_ptr<std::function<void(int)>>> callbacks;
    void setup(int present) {
        for (int i = 0; i < present; ++i) callbacks.push_back(std::make_shared<std::function<void(int)>>(kBody));
    }
    void churn() {
        auto f = std::make_shared<std::function<void(int)>>(kBody);
        {
            std::unique_lock lock(mutex);
            callbacks.push_back(f);
        }
        std::unique_lock lock(mutex);
        callbacks.erase(std::find(callbacks.begin(), callbacks.end(), f));
    }
};

#if CBM_BENCH_HAVE_BOOST
struct BoostSignals2 {
    boost::signals2::signal<void(int)> signal;
    void setup(int present) {
        for (int i = 0; i < present; ++i) signal.connect(kBody);
    }
    void churn() {
        auto c = signal.connect(kBody);
        c.disconnect();
    }
};
#endif

#if CBM_BENCH_HAVE_SIGCPP
struct SigcSignal {
    sigc::signal<void(int)> signal;
    void setup(int present) {
        for (int i = 0; i < present; ++i) signal.connect(kBody);
    }
    void churn() {
        auto c = signal.connect(kBody);
        c.disconnect();
    }
};
#endif

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
    register_churn<CbmGroupBlocking>("churn/cbm_group_unregister");
    register_churn<CbmGroupNowait>("churn/cbm_group_unregister_nowait");
    register_churn<CbmRegistryNewKey>("churn/cbm_registry_new_key");
    register_churn<SharedMutexVector>("churn/shared_mutex_vector");
#if CBM_BENCH_HAVE_BOOST
    register_churn<BoostSignals2>("churn/boost_signals2");
#else
    cbm_bench::note_missing("Boost.Signals2", "libboost-dev");
#endif
#if CBM_BENCH_HAVE_SIGCPP
    register_churn<SigcSignal>("churn/sigcpp_single_threaded");
#else
    cbm_bench::note_missing("libsigc++ 3", "libsigc++-3.0-dev");
#endif
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
}
