// The implementations every benchmark compares, behind one shape:
//   setup(n)  registers n callbacks running cbm_bench::body
//   emit(x)   triggers them all with x
//   churn()   registers one more callback and unregisters it again
#pragma once

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

namespace cbm_bench {

inline const auto kBody = [](int x) { body(x); };

// The floor: unsynchronized, cannot churn while others emit.
struct FloorLoop {
    std::vector<std::function<void(int)>> callbacks;
    void setup(int n) { callbacks.assign(static_cast<std::size_t>(n), kBody); }
    void emit(int x) {
        for (auto& f : callbacks) f(x);
    }
};

struct SharedMutexVector {
    std::shared_mutex mutex;
    std::vector<std::shared_ptr<std::function<void(int)>>> callbacks;
    void setup(int n) {
        std::unique_lock lock(mutex);
        for (int i = 0; i < n; ++i) callbacks.push_back(std::make_shared<std::function<void(int)>>(kBody));
    }
    void emit(int x) {
        std::shared_lock lock(mutex);
        for (auto& f : callbacks) (*f)(x);
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

struct CbmGroup {
    cbm::CallbackGroup<void(int)> group;
    void setup(int n) {
        for (int i = 0; i < n; ++i) group.add(kBody);
    }
    void emit(int x) { benchmark::DoNotOptimize(group.trigger(x).invoked); }
    void churn() { group.add(kBody).unregister(); }
};

struct CbmGroupNowait : CbmGroup {
    void churn() { group.add(kBody).unregister_nowait(); }
};

// Triggers one key among 65; churn creates and removes a key each time.
struct CbmRegistry {
    cbm::CallbackRegistry<int, void(int)> registry;
    void setup(int n) {
        for (int key = 0; key < 64; ++key) registry.add(key + 1000, kBody);
        for (int i = 0; i < n; ++i) registry.add(7, kBody);
    }
    void emit(int x) { benchmark::DoNotOptimize(registry.trigger(7, x).invoked); }
    void churn() { registry.add(-1, kBody).unregister(); }
};

#if CBM_BENCH_HAVE_BOOST
struct BoostSignals2 {
    boost::signals2::signal<void(int)> signal;
    void setup(int n) {
        for (int i = 0; i < n; ++i) signal.connect(kBody);
    }
    void emit(int x) { signal(x); }
    void churn() { signal.connect(kBody).disconnect(); }
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
    void churn() { signal.connect(kBody).disconnect(); }
};
#endif

}  // namespace cbm_bench
