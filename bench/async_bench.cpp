// Asynchronous dispatch: cbm's trigger_async on cbm::ThreadPool against the
// pools C++ users reach for, each with two worker threads, running the same
// task (one relaxed increment of the producer's counter).
//
//   async_throughput  ns per task per producer thread, 1 and 2 producers;
//                     every 256 tasks the producer waits until its tasks ran,
//                     so the queue stays short and the time includes running
//                     them (throughput per producer = 1e9 / ns)
//   async_latency     from submission to the start of the task, on an idle
//                     pool (its threads asleep): p50, p99, max
//   async_memory      heap bytes per queued invocation (per callback task), with the pool's
//                     threads held busy (malloc's own count, mallinfo2, so
//                     that allocators which bypass operator new count too),
//                     and allocations per invocation through operator new
//                     (a replaced one; reported only where the library
//                     allocates through it)
//
// Peers: asio::thread_pool + asio::post (Debian libasio-dev); a
// std::mutex + std::condition_variable + std::deque<std::function<void()>>
// pool; a pool on moodycamel::BlockingConcurrentQueue (Debian
// libconcurrentqueue-dev). A missing peer is skipped.
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdlib>
#include <deque>
#include <functional>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include <cbm/cbm.hpp>

#include "bench_support.hpp"

#if defined(CBM_BENCH_HAVE_ASIO)
#include <asio.hpp>
#endif
#if defined(CBM_BENCH_HAVE_CONCURRENTQUEUE)
#include <concurrentqueue/blockingconcurrentqueue.h>
#endif

// Allocation counting, only while `g_counting` is set (async_memory). The
// replacement pairs malloc with free itself; g++ 12 cannot see that through
// inlining and warns of a mismatch.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_allocations{0};
}  // namespace

void* operator new(std::size_t n) {
    void* p = std::malloc(n == 0 ? 1 : n);
    if (p == nullptr) throw std::bad_alloc();
    if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1, std::memory_order_relaxed);
    return p;
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace {

constexpr int kWorkers = 2;
constexpr long kBatch = 256;

using Counter = std::atomic<long>;

// The task of every implementation. While g_hold is set (async_memory
// only), a task waits, so that the pool's threads are held and what follows
// stays queued.
std::atomic<bool> g_hold{false};
std::atomic<int> g_holding{0};
inline void task_body(Counter* done) {
    if (g_hold.load(std::memory_order_relaxed)) [[unlikely]] {
        g_holding.fetch_add(1);
        while (g_hold.load()) std::this_thread::yield();
        g_holding.fetch_sub(1);
    }
    done->fetch_add(1, std::memory_order_relaxed);
}

// --- the peers ------------------------------------------------------------

class MutexDequePool {
public:
    MutexDequePool() {
        for (int i = 0; i < kWorkers; ++i) threads_.emplace_back([this] { work(); });
    }
    ~MutexDequePool() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        cv_.notify_all();
        for (auto& t : threads_) t.join();
    }
    void post(std::function<void()> f) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            tasks_.push_back(std::move(f));
        }
        cv_.notify_one();
    }

private:
    void work() {
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            cv_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
            if (tasks_.empty()) return;
            std::function<void()> f = std::move(tasks_.front());
            tasks_.pop_front();
            lock.unlock();
            f();
            lock.lock();
        }
    }
    std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<std::function<void()>> tasks_;
    bool stop_ = false;
    std::vector<std::thread> threads_;
};

#if defined(CBM_BENCH_HAVE_CONCURRENTQUEUE)
class MoodycamelPool {
public:
    MoodycamelPool() {
        for (int i = 0; i < kWorkers; ++i) threads_.emplace_back([this] { work(); });
    }
    ~MoodycamelPool() {
        for (int i = 0; i < kWorkers; ++i) queue_.enqueue(std::function<void()>());  // one empty task per thread: stop
        for (auto& t : threads_) t.join();
    }
    void post(std::function<void()> f) { queue_.enqueue(std::move(f)); }

private:
    void work() {
        for (;;) {
            std::function<void()> f;
            queue_.wait_dequeue(f);
            if (!f) return;
            f();
        }
    }
    moodycamel::BlockingConcurrentQueue<std::function<void()>> queue_;
    std::vector<std::thread> threads_;
};
#endif

// --- what each implementation posts ----------------------------------------

struct CbmAsync {
    static constexpr long kTasksPerPost = 1;
    static constexpr bool kAllocatesThroughNew = true;
    cbm::ThreadPool pool{{.min_threads = kWorkers, .max_threads = kWorkers, .queue_capacity = 1 << 20}};
    cbm::CallbackGroup<void(Counter*)> group{cbm::GroupOptions{.executor = pool.executor()}};
    CbmAsync() {
        group.add([](Counter* done) { task_body(done); });
    }
    void post(Counter* done) { group.trigger_async(done); }
};

struct CbmAsyncThreeCallbacks : CbmAsync {  // one shared state for three tasks
    static constexpr long kTasksPerPost = 3;
    CbmAsyncThreeCallbacks() {
        group.add([](Counter* done) { task_body(done); });
        group.add([](Counter* done) { task_body(done); });
    }
};

struct CbmPoolOnly {  // the pool alone: its queue without trigger_async's bookkeeping
    static constexpr long kTasksPerPost = 1;
    static constexpr bool kAllocatesThroughNew = true;
    cbm::ThreadPool pool{{.min_threads = kWorkers, .max_threads = kWorkers, .queue_capacity = 1 << 20}};
    cbm::ThreadPool::Executor ex = pool.executor();
    void post(Counter* done) {
        ex.execute([done] { task_body(done); });
    }
};

struct MutexDeque {
    static constexpr long kTasksPerPost = 1;
    static constexpr bool kAllocatesThroughNew = true;
    MutexDequePool pool;
    void post(Counter* done) {
        pool.post([done] { task_body(done); });
    }
};

#if defined(CBM_BENCH_HAVE_CONCURRENTQUEUE)
struct Moodycamel {
    static constexpr long kTasksPerPost = 1;
    static constexpr bool kAllocatesThroughNew = false;  // std::malloc, in its own blocks
    MoodycamelPool pool;
    void post(Counter* done) {
        pool.post([done] { task_body(done); });
    }
};
#endif

#if defined(CBM_BENCH_HAVE_ASIO)
struct AsioPost {
    static constexpr long kTasksPerPost = 1;
    static constexpr bool kAllocatesThroughNew = false;  // its own recycling allocator
    asio::thread_pool pool{kWorkers};
    ~AsioPost() { pool.join(); }
    void post(Counter* done) {
        asio::post(pool, [done] { task_body(done); });
    }
};
#endif

void wait_for(const Counter& done, long target) {
    while (done.load(std::memory_order_acquire) < target) std::this_thread::yield();
}

// --- async_throughput -------------------------------------------------------

template <class Impl>
void throughput(benchmark::State& state) {
    static Impl* impl = nullptr;
    if (state.thread_index() == 0) impl = new Impl();
    // Google Benchmark starts every thread's loop together, after setup.
    Counter done{0};
    long posted = 0;
    for (auto _ : state) {
        impl->post(&done);
        if (++posted % kBatch == 0) wait_for(done, posted);
    }
    wait_for(done, posted);
    // The last thread out frees the pool (the others may still wait above).
    static std::atomic<int> finished{0};
    if (finished.fetch_add(1) + 1 == state.threads()) {
        finished = 0;
        delete impl;
        impl = nullptr;
    }
}

// --- async_latency ----------------------------------------------------------

template <class Impl>
void latency(benchmark::State& state) {
    Impl impl;
    constexpr int kSamples = 2000;
    std::vector<long> ns;
    ns.reserve(kSamples);
    for (auto _ : state) {
        ns.clear();
        for (int i = 0; i < kSamples; ++i) {
            Counter done{0};
            // Let the pool's threads fall asleep on their queue.
            std::this_thread::sleep_for(std::chrono::microseconds(200));
            const auto start = std::chrono::steady_clock::now();
            impl.post(&done);
            wait_for(done, 1);
            ns.push_back(static_cast<long>(
                std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
                    .count()));
        }
    }
    std::sort(ns.begin(), ns.end());
    state.counters["p50_ns"] = static_cast<double>(ns[ns.size() / 2]);
    state.counters["p99_ns"] = static_cast<double>(ns[ns.size() * 99 / 100]);
    state.counters["max_ns"] = static_cast<double>(ns.back());
}

// --- async_memory -----------------------------------------------------------

// Holds the pool's threads busy, queues kQueued invocations, and counts the
// heap bytes they hold and the allocations they made.
template <class Impl>
void memory(benchmark::State& state) {
    constexpr long kQueued = 20'000;
    double bytes = 0;
    double allocations = 0;
    for (auto _ : state) {
        Impl impl;
        Counter warm{0};  // the pool's own first structures
        for (long i = 0; i < 64; ++i) impl.post(&warm);
        wait_for(warm, 64);
        Counter done{0};
        g_hold = true;
        for (int i = 0; i < kWorkers; ++i) impl.post(&done);
        while (g_holding.load() < kWorkers) std::this_thread::yield();
        const long before_allocations = g_allocations.load();
        const auto before_bytes = static_cast<long>(mallinfo2().uordblks);
        g_counting = true;
        for (long i = 0; i < kQueued; ++i) impl.post(&done);
        g_counting = false;
        const long after_allocations = g_allocations.load();
        const auto after_bytes = static_cast<long>(mallinfo2().uordblks);
        g_hold = false;
        wait_for(done, (kQueued + kWorkers) * Impl::kTasksPerPost);
        bytes = static_cast<double>(after_bytes - before_bytes) / static_cast<double>(kQueued * Impl::kTasksPerPost);
        allocations = static_cast<double>(after_allocations - before_allocations) / kQueued;
    }
    state.counters["bytes_heap"] = bytes;
    if (Impl::kAllocatesThroughNew) state.counters["allocs_per_op"] = allocations;
}

}  // namespace

#define CBM_ASYNC_BENCH(impl_name, Impl)                                                                     \
    BENCHMARK(throughput<Impl>)->Name("async_throughput/" impl_name)->Threads(1)->Threads(2)->UseRealTime(); \
    BENCHMARK(latency<Impl>)->Name("async_latency/" impl_name)->Iterations(1)->Unit(benchmark::kMicrosecond); \
    BENCHMARK(memory<Impl>)->Name("async_memory/" impl_name)->Iterations(1)

CBM_ASYNC_BENCH("cbm_trigger_async", CbmAsync);
BENCHMARK(memory<CbmAsyncThreeCallbacks>)->Name("async_memory/cbm_trigger_async_3_callbacks")->Iterations(1);
CBM_ASYNC_BENCH("cbm_thread_pool_execute", CbmPoolOnly);
CBM_ASYNC_BENCH("mutex_deque_pool", MutexDeque);
#if defined(CBM_BENCH_HAVE_CONCURRENTQUEUE)
CBM_ASYNC_BENCH("moodycamel_pool", Moodycamel);
#endif
#if defined(CBM_BENCH_HAVE_ASIO)
CBM_ASYNC_BENCH("asio_post", AsioPost);
#endif

BENCHMARK_MAIN();
