// cbm_stress: several threads run random operations on shared groups and a
// shared registry for a bounded time, and check cbm's promises as they go:
//
//   - after a blocking unregister(), ScopedRegistration reset, erase(key) or
//     clear() made by a thread that is inside no callback, no callback it
//     covers is running anywhere, none starts again, and its callable
//     (captures) was destroyed exactly once;
//   - a callable is never used after its destruction, never destroyed twice,
//     and every callable and filter is destroyed exactly once by the end;
//   - nothing deadlocks: a watchdog prints what every thread was doing and
//     aborts when no thread makes progress for a while.
//
// Callbacks do work of their own: some unregister themselves (blocking or
// not), trigger other keys, or unregister other callbacks, so re-entrant
// and cross-thread wait paths are exercised together.
//
// Usage: cbm_stress [--seconds S] [--threads T] [--transient-keys]
//                   [--rss-log FILE] [--stall-seconds S]
// --transient-keys adds short-lived registry keys (add, trigger, erase on a
// key of a wide space); --rss-log samples the resident set once a second
// (the soak, scripts/soak.sh). Exits 0 when every check held.
#include <cbm/callback_group.hpp>
#include <cbm/callback_registry.hpp>
#include <cbm/context.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

std::atomic<long> g_violations{0};

void violation(const char* what) {
    if (g_violations.fetch_add(1) < 20) std::fprintf(stderr, "cbm_stress: violation: %s\n", what);
}

// One registered callback, as the harness tracks it.
struct Probe {
    int list = 0;                         // which group or key
    int shape = -1;                       // 0: once, 1-2: filtered, 3: bound to a context
    std::atomic<int> running{0};          // invocations in progress, all threads
    std::atomic<bool> removed{false};     // a checked blocking removal returned
    std::atomic<bool> body_destruction_began{false};
    std::atomic<int> bodies_destroyed{0};
    std::atomic<int> filters_destroyed{0};
    bool filtered = false;
    std::atomic<std::uint64_t> added_at{0};  // the add counter when add returned; 0 before
    std::mutex handle_mutex;
    cbm::Registration handle;  // under handle_mutex
    std::atomic<bool> has_handle{false};

    cbm::Registration registration() {
        std::lock_guard<std::mutex> lock(handle_mutex);
        return handle;
    }
};

class Harness;

// The callable: counts its own life on the probe; its body reports to the
// harness. The probe is held by a plain pointer, kept alive by the harness
// until the end, so that the callable's captures are what is counted.
struct Body {
    Harness* harness;
    Probe* probe;
    std::uint32_t magic = kAlive;
    static constexpr std::uint32_t kAlive = 0xB0D1E5u;
    Body(Harness* h, Probe* p) noexcept : harness(h), probe(p) {}
    Body(Body&& other) noexcept : harness(other.harness), probe(std::exchange(other.probe, nullptr)) {}
    Body(const Body&) = delete;
    Body& operator=(const Body&) = delete;
    Body& operator=(Body&&) = delete;
    ~Body() {
        if (magic != kAlive) violation("a callable was destroyed twice");
        magic = 0;
        if (probe != nullptr) {
            probe->body_destruction_began.store(true);
            probe->bodies_destroyed.fetch_add(1);
        }
    }
    void operator()(int depth);
};

struct Filter {
    Probe* probe;
    std::uint32_t magic = Body::kAlive;
    explicit Filter(Probe* p) noexcept : probe(p) {}
    Filter(Filter&& other) noexcept : probe(std::exchange(other.probe, nullptr)) {}
    Filter(const Filter&) = delete;
    Filter& operator=(const Filter&) = delete;
    Filter& operator=(Filter&&) = delete;
    ~Filter() {
        if (magic != Body::kAlive) violation("a filter was destroyed twice");
        magic = 0;
        if (probe != nullptr) probe->filters_destroyed.fetch_add(1);
    }
    bool operator()(const int& depth) const {
        if (magic != Body::kAlive) violation("a filter ran after its destruction");
        return depth % 3 != 2;
    }
};

constexpr int kKeys = 6;
constexpr int kGroups = 2;
constexpr int kLists = kKeys + kGroups;
constexpr std::size_t kPoolSize = 256;
constexpr int kContexts = 4;

// What one thread is doing, for the watchdog.
struct ThreadStatus {
    std::atomic<const char*> doing{"starting"};
    std::atomic<std::uint64_t> ops{0};
};

thread_local int t_inside = 0;  // callbacks this thread is inside
thread_local std::minstd_rand t_rng;

int roll(int n) { return static_cast<int>(t_rng() % static_cast<unsigned>(n)); }

class Harness {
public:
    Harness(int threads, bool transient_keys) : statuses_(static_cast<std::size_t>(threads)), transient_(transient_keys) {
        for (auto& c : contexts_) c = cbm::with_cancel(cbm::Context::background());
    }

    void worker(std::size_t index, Clock::time_point until) {
        t_rng.seed(static_cast<unsigned>(index * 7919 + 17));
        ThreadStatus& me = statuses_[index];
        while (Clock::now() < until && g_violations.load() == 0) {
            top_level_step(me);
            me.ops.fetch_add(1, std::memory_order_relaxed);
        }
        me.doing.store("finished");
    }

    void body(Probe& p, int depth) {
        p.running.fetch_add(1);
        if (p.removed.load()) violation("a callback ran after a blocking removal of it returned");
        ++t_inside;
        const int r = roll(64);
        if (r < 3 && p.has_handle.load()) {
            p.registration().unregister();  // from inside itself: never waits for itself
        } else if (r < 5 && p.has_handle.load()) {
            p.registration().unregister_nowait();
        } else if (r < 9 && depth < 2) {
            trigger_list(roll(kLists), depth + 1);
        } else if (r < 10) {
            if (auto h = random_handle()) h->unregister();  // may close a wait cycle: cbm must not deadlock
        } else if (r < 11) {
            if (auto h = random_handle()) h->unregister_nowait();
        }
        --t_inside;
        p.running.fetch_sub(1);
    }

    // The end: every callable and filter was destroyed exactly once.
    void finish() {
        registry_.reset();
        for (auto& g : groups_) g.reset();
        std::lock_guard<std::mutex> lock(mutex_);
        for (const auto& p : pending_) {
            if (p->bodies_destroyed.load() != 1) violation("a callable was not destroyed exactly once by the end");
            if (p->filtered && p->filters_destroyed.load() != 1) {
                violation("a filter was not destroyed exactly once by the end");
            }
        }
    }

    std::vector<ThreadStatus>& statuses() { return statuses_; }
    std::uint64_t adds() const { return add_counter_.load(); }

private:
    void top_level_step(ThreadStatus& me) {
        const int r = roll(100);
        if (r < 30) {
            me.doing.store("add");
            add(roll(kLists));
        } else if (r < 60) {
            me.doing.store("trigger");
            trigger_list(roll(kLists), 0);
        } else if (r < 72) {
            me.doing.store("unregister (blocking, checked)");
            if (auto p = random_probe()) {
                p->registration().unregister();
                check_removed(*p, true);
            }
        } else if (r < 78) {
            me.doing.store("ScopedRegistration reset (checked)");
            if (auto p = random_probe()) {
                cbm::ScopedRegistration scoped(p->registration());
                scoped.reset();
                check_removed(*p, true);
            }
        } else if (r < 84) {
            me.doing.store("unregister_nowait");
            if (auto p = random_probe()) p->registration().unregister_nowait();
        } else if (r < 88) {
            me.doing.store("erase (checked)");
            const int key = roll(kKeys);
            const std::uint64_t begin = add_counter_.load();
            registry_->erase(key);
            check_list_removed(key, begin);
        } else if (r < 91) {
            me.doing.store("clear (checked)");
            const int list = roll(kGroups + 1);  // kGroups: the registry
            const std::uint64_t begin = add_counter_.load();
            if (list == kGroups) {
                registry_->clear();
                for (int key = 0; key < kKeys; ++key) check_list_removed(key, begin);
            } else {
                groups_[static_cast<std::size_t>(list)]->clear();
                check_list_removed(kKeys + list, begin);
            }
        } else if (r < 94) {
            me.doing.store("cancel a context");
            cancel_context(roll(kContexts));
        } else if (transient_) {
            me.doing.store("transient key");
            transient_key();
        } else {
            me.doing.store("trigger");
            trigger_list(roll(kLists), 0);
        }
    }

    void add(int list) {
        auto probe = std::make_shared<Probe>();
        probe->list = list;
        const int shape = roll(16);
        probe->shape = shape;
        cbm::CallbackOptions<void(int)> options;
        options.priority = roll(3) - 1;
        options.once = shape == 0;
        if (shape == 1 || shape == 2) {
            probe->filtered = true;
            options.filter = Filter(probe.get());
        }
        if (shape == 3) {
            std::lock_guard<std::mutex> lock(contexts_mutex_);
            options.context = contexts_[static_cast<std::size_t>(roll(kContexts))].first;
        }
        std::vector<std::shared_ptr<Probe>> finished;  // released outside the lock
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (pool_.size() >= kPoolSize) return;  // full: let removals catch up
            if (++adds_since_sweep_ == 128) {
                adds_since_sweep_ = 0;
                sweep(finished);
            }
            pending_.push_back(probe);
            pool_.push_back(probe);
        }
        Body body(this, probe.get());
        cbm::Registration handle = list < kKeys ? registry_->add(list, std::move(body), std::move(options))
                                                : groups_[static_cast<std::size_t>(list - kKeys)]->add(
                                                      std::move(body), std::move(options));
        {
            std::lock_guard<std::mutex> lock(probe->handle_mutex);
            probe->handle = std::move(handle);
        }
        probe->has_handle.store(true);
        probe->added_at.store(add_counter_.fetch_add(1) + 1);
    }

    void trigger_list(int list, int depth) {
        if (list < kKeys) {
            registry_->trigger(list, depth);
        } else {
            groups_[static_cast<std::size_t>(list - kKeys)]->trigger(depth);
        }
    }

    // Under mutex_: moves the probes whose callable (and filter) are gone,
    // each exactly once, out of pending_, so a long run stays small.
    void sweep(std::vector<std::shared_ptr<Probe>>& finished) {
        auto done = [](const std::shared_ptr<Probe>& p) {
            const int bodies = p->bodies_destroyed.load();
            const int filters = p->filters_destroyed.load();
            if (bodies > 1 || filters > 1) {
                std::fprintf(stderr, "cbm_stress: shape %d list %d: callable destroyed %d times, filter %d times\n",
                             p->shape, p->list, bodies, filters);
                violation("a callable or filter was destroyed twice");
            }
            return bodies == 1 && (!p->filtered || filters == 1);
        };
        const auto split = std::stable_partition(pending_.begin(), pending_.end(), [&](const auto& p) { return !done(p); });
        finished.insert(finished.end(), std::make_move_iterator(split), std::make_move_iterator(pending_.end()));
        pending_.erase(split, pending_.end());
    }

    // After a blocking removal by a thread inside no callback. `direct`: the
    // call had the callback itself (unregister, reset), so it destroyed the
    // callable or found another call doing so; erase() and clear() may find
    // a callback that reclamation is about to destroy on another thread.
    void check_removed(Probe& p, bool direct) {
        if (t_inside != 0) return;
        p.removed.store(true);
        if (p.running.load() != 0) violation("a callback was still running after a blocking removal returned");
        // The call destroyed the callable, or found another thread (a
        // reclamation that proved it idle) about to: then it goes at once.
        if (direct && !destroyed_soon(p)) {
            violation("a callable was not destroyed after a blocking unregister returned");
        }
        std::lock_guard<std::mutex> lock(mutex_);
        pool_.erase(std::remove_if(pool_.begin(), pool_.end(), [&](const auto& q) { return q.get() == &p; }),
                    pool_.end());
    }

    // Polls (bounded) for the destruction of a callable that no thread may
    // run any more.
    static bool destroyed_soon(const Probe& p) {
        const auto deadline = Clock::now() + std::chrono::seconds(10);
        while (!p.body_destruction_began.load()) {
            if (Clock::now() > deadline) return false;
            std::this_thread::yield();
        }
        return true;
    }

    void check_list_removed(int list, std::uint64_t begin) {
        std::vector<std::shared_ptr<Probe>> covered;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            for (const auto& p : pool_) {
                const std::uint64_t at = p->added_at.load();
                if (p->list == list && at != 0 && at <= begin) covered.push_back(p);
            }
        }
        for (const auto& p : covered) check_removed(*p, false);
    }

    std::shared_ptr<Probe> random_probe() {
        std::lock_guard<std::mutex> lock(mutex_);
        if (pool_.empty()) return nullptr;
        auto p = pool_[static_cast<std::size_t>(roll(static_cast<int>(pool_.size())))];
        return p->has_handle.load() ? p : nullptr;
    }

    std::optional<cbm::Registration> random_handle() {
        auto p = random_probe();
        if (!p) return std::nullopt;
        return p->registration();
    }

    void cancel_context(int c) {
        cbm::CancelFunc cancel;
        {
            std::lock_guard<std::mutex> lock(contexts_mutex_);
            cancel = std::move(contexts_[static_cast<std::size_t>(c)].second);
            contexts_[static_cast<std::size_t>(c)] = cbm::with_cancel(cbm::Context::background());
        }
        cancel();  // unregisters the bound callbacks, without waiting
    }

    // A short-lived key: added, triggered, erased, checked.
    void transient_key() {
        const int key = 1000 + roll(1'000'000);
        auto probe = std::make_shared<Probe>();
        probe->list = -1;
        {
            // Kept until its callable is gone: a concurrent clear() may take
            // it and destroy it after this returns.
            std::lock_guard<std::mutex> lock(mutex_);
            pending_.push_back(probe);
        }
        registry_->add(key, Body(this, probe.get()));
        registry_->trigger(key, 2);
        const std::size_t erased = registry_->erase(key);
        if (probe->running.load() != 0) violation("a transient key's callback ran after erase returned");
        // When a concurrent clear() took it first, that call destroys it.
        if (erased == 1 && !destroyed_soon(*probe)) {
            violation("a transient key's callable survived the erase that removed it");
        }
    }

    std::vector<ThreadStatus> statuses_;
    bool transient_;
    std::optional<cbm::CallbackRegistry<int, void(int)>> registry_{std::in_place};
    std::array<std::optional<cbm::CallbackGroup<void(int)>>, kGroups> groups_{
        std::optional<cbm::CallbackGroup<void(int)>>{std::in_place},
        std::optional<cbm::CallbackGroup<void(int)>>{std::in_place}};
    std::mutex contexts_mutex_;
    std::array<std::pair<cbm::Context, cbm::CancelFunc>, kContexts> contexts_;
    std::mutex mutex_;
    std::vector<std::shared_ptr<Probe>> pending_;  // probes whose callable or filter may still exist
    std::vector<std::shared_ptr<Probe>> pool_;     // probes not yet checked removed
    int adds_since_sweep_ = 0;
    std::atomic<std::uint64_t> add_counter_{0};
};

void Body::operator()(int depth) {
    if (magic != kAlive) violation("a callable ran after its destruction");
    harness->body(*probe, depth);
}

long resident_kib() {
    std::ifstream statm("/proc/self/statm");
    long pages = 0;
    long resident = 0;
    statm >> pages >> resident;
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

}  // namespace

int main(int argc, char** argv) {
    double seconds = 5;
    int threads = static_cast<int>(std::max(2u, std::thread::hardware_concurrency()));
    bool transient = false;
    const char* rss_log = nullptr;
    int stall_seconds = 60;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        const bool has_value = i + 1 < argc;
        if (arg == "--seconds" && has_value) {
            seconds = std::atof(argv[++i]);
        } else if (arg == "--threads" && has_value) {
            threads = std::atoi(argv[++i]);
        } else if (arg == "--transient-keys") {
            transient = true;
        } else if (arg == "--rss-log" && has_value) {
            rss_log = argv[++i];
        } else if (arg == "--stall-seconds" && has_value) {
            stall_seconds = std::atoi(argv[++i]);
        } else {
            std::fprintf(stderr, "usage: cbm_stress [--seconds S] [--threads T] [--transient-keys] "
                                 "[--rss-log FILE] [--stall-seconds S]\n");
            return 2;
        }
    }
    if (threads < 1 || seconds <= 0 || stall_seconds < 1) {
        std::fprintf(stderr, "cbm_stress: --threads, --seconds and --stall-seconds must be positive\n");
        return 2;
    }

    auto harness = std::make_unique<Harness>(threads, transient);
    const auto start = Clock::now();
    const auto until = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) workers.emplace_back([&, t] { harness->worker(static_cast<std::size_t>(t), until); });

    // The watchdog and the RSS sampler: wakes once a second until the
    // workers finish (a timed wait on the finish signal, not a sleep used
    // for ordering).
    std::mutex done_mutex;
    std::condition_variable done_cv;
    bool done = false;
    std::thread monitor([&] {
        std::FILE* log = rss_log != nullptr ? std::fopen(rss_log, "w") : nullptr;
        if (log != nullptr) std::fprintf(log, "second,rss_kib,adds\n");
        std::vector<std::uint64_t> last(static_cast<std::size_t>(threads), 0);
        auto last_progress = Clock::now();
        std::unique_lock<std::mutex> lock(done_mutex);
        for (long tick = 1; !done_cv.wait_for(lock, std::chrono::seconds(1), [&] { return done; }); ++tick) {
            if (log != nullptr) {
                std::fprintf(log, "%ld,%ld,%llu\n", tick, resident_kib(),
                             static_cast<unsigned long long>(harness->adds()));
                std::fflush(log);
            }
            bool progressed = false;
            for (std::size_t t = 0; t < last.size(); ++t) {
                const std::uint64_t ops = harness->statuses()[t].ops.load();
                const bool finished = std::strcmp(harness->statuses()[t].doing.load(), "finished") == 0;
                progressed = progressed || ops != last[t] || finished;
                last[t] = ops;
            }
            if (progressed) last_progress = Clock::now();
            if (Clock::now() - last_progress > std::chrono::seconds(stall_seconds)) {
                std::fprintf(stderr, "cbm_stress: no thread made progress for %ds: a deadlock?\n", stall_seconds);
                for (std::size_t t = 0; t < last.size(); ++t) {
                    std::fprintf(stderr, "  thread %zu: %s (after %llu operations)\n", t,
                                 harness->statuses()[t].doing.load(), static_cast<unsigned long long>(last[t]));
                }
                std::fflush(stderr);
                std::_Exit(3);
            }
        }
        if (log != nullptr) std::fclose(log);
    });
    for (auto& w : workers) w.join();
    {
        std::lock_guard<std::mutex> lock(done_mutex);
        done = true;
    }
    done_cv.notify_all();
    monitor.join();
    harness->finish();

    std::uint64_t total = 0;
    for (auto& s : harness->statuses()) total += s.ops.load();
    std::printf("cbm_stress: %d threads, %.1f s, %llu operations, %ld violations\n", threads,
                std::chrono::duration<double>(Clock::now() - start).count(), static_cast<unsigned long long>(total),
                g_violations.load());
    return g_violations.load() == 0 ? 0 : 1;
}
