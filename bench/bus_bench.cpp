// The event bus: publish against a CallbackGroup trigger, and queued
// delivery (post, then a consumer thread delivers) against the queues a C++
// user would write instead, carrying the same events to the same handler.
//
//   bus_publish   ns per call, one thread: publish of one event type to one
//                 subscriber; publish of a type nobody subscribed to; a
//                 CallbackGroup<void(const Event&)> trigger of one callback;
//                 the floor: a std::function called directly
//   bus_queued    wall ns per event, post to handled, with 1 and 2 producer
//                 threads and one consumer thread: EventBus::post with
//                 run(ctx) on the consumer; std::mutex + condition_variable
//                 + std::deque<Event> (the consumer takes the whole deque
//                 under one lock); moodycamel::BlockingConcurrentQueue<Event>
//                 (Debian libconcurrentqueue-dev; bulk dequeue)
//   bus_memory    heap bytes per queued event beyond the event itself
//                 (malloc's own count, mallinfo2), nobody consuming
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include <cbm/event_bus.hpp>

#include "bench_support.hpp"

#if defined(CBM_BENCH_HAVE_CONCURRENTQUEUE)
#include <concurrentqueue/blockingconcurrentqueue.h>
#endif

namespace {

struct Event {
    std::uint64_t id;
    double total;
};
struct Unsubscribed {
    int n;
};

void handle(const Event& e) { benchmark::DoNotOptimize(e.id); }

// ---- bus_publish ------------------------------------------------------------

void floor_std_function(benchmark::State& state) {
    std::function<void(const Event&)> f = handle;
    Event e{1, 2.0};
    for (auto _ : state) {
        f(e);
        benchmark::ClobberMemory();
    }
}

void group_trigger(benchmark::State& state) {
    cbm::CallbackGroup<void(const Event&)> group;
    group.add(handle);
    Event e{1, 2.0};
    for (auto _ : state) benchmark::DoNotOptimize(group.trigger(e));
}

void bus_publish(benchmark::State& state) {
    cbm::EventBus bus;
    bus.subscribe<Event>(handle);
    Event e{1, 2.0};
    for (auto _ : state) benchmark::DoNotOptimize(bus.publish(e));
}

void bus_publish_unsubscribed(benchmark::State& state) {
    cbm::EventBus bus;
    bus.subscribe<Event>(handle);
    Unsubscribed u{1};
    for (auto _ : state) benchmark::DoNotOptimize(bus.publish(u));
}

// ---- bus_queued -------------------------------------------------------------

constexpr int kBatch = 100'000;  // events per timed batch, all producers together

// Each implementation: start() its consumer, post(e) from any producer,
// handled() events so far, stop().
class BusQueue {
public:
    BusQueue() : bus_({.queue_capacity = 200'000}) {
        bus_.subscribe<Event>([this](const Event& e) {
            handle(e);
            handled_.store(handled_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
        });
        auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
        cancel_ = cancel;
        consumer_ = std::thread([this, ctx = ctx] { bus_.run(ctx); });
    }
    ~BusQueue() {
        cancel_();
        consumer_.join();
    }
    void post(const Event& e) { bus_.post(e); }
    std::uint64_t handled() const { return handled_.load(std::memory_order_acquire); }

private:
    cbm::EventBus bus_;
    std::atomic<std::uint64_t> handled_{0};
    cbm::CancelFunc cancel_;
    std::thread consumer_;
};

class MutexDequeQueue {
public:
    MutexDequeQueue() {
        handler_ = handle;
        consumer_ = std::thread([this] {
            std::deque<Event> batch;
            for (;;) {
                {
                    std::unique_lock<std::mutex> lock(mutex_);
                    ++sleeping_;
                    ready_.wait(lock, [this] { return !queue_.empty() || stop_; });
                    --sleeping_;
                    if (queue_.empty() && stop_) return;
                    batch.swap(queue_);
                }
                for (const Event& e : batch) {
                    handler_(e);
                    handled_.store(handled_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
                }
                batch.clear();
            }
        });
    }
    ~MutexDequeQueue() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        ready_.notify_all();
        consumer_.join();
    }
    void post(const Event& e) {
        bool wake = false;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            queue_.push_back(e);
            wake = sleeping_ != 0;
        }
        if (wake) ready_.notify_one();
    }
    std::uint64_t handled() const { return handled_.load(std::memory_order_acquire); }

private:
    std::function<void(const Event&)> handler_;
    std::mutex mutex_;
    std::condition_variable ready_;
    std::deque<Event> queue_;
    int sleeping_ = 0;
    bool stop_ = false;
    std::atomic<std::uint64_t> handled_{0};
    std::thread consumer_;
};

#if defined(CBM_BENCH_HAVE_CONCURRENTQUEUE)
class MoodycamelQueue {
public:
    MoodycamelQueue() {
        handler_ = handle;
        consumer_ = std::thread([this] {
            Event batch[256];
            while (!stop_.load(std::memory_order_acquire)) {
                const std::size_t n = queue_.wait_dequeue_bulk_timed(batch, 256, std::chrono::milliseconds(5));
                for (std::size_t i = 0; i < n; ++i) {
                    handler_(batch[i]);
                    handled_.store(handled_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
                }
            }
        });
    }
    ~MoodycamelQueue() {
        stop_.store(true, std::memory_order_release);
        consumer_.join();
    }
    void post(const Event& e) { queue_.enqueue(e); }
    std::uint64_t handled() const { return handled_.load(std::memory_order_acquire); }

private:
    std::function<void(const Event&)> handler_;
    moodycamel::BlockingConcurrentQueue<Event> queue_;
    std::atomic<bool> stop_{false};
    std::atomic<std::uint64_t> handled_{0};
    std::thread consumer_;
};
#endif

// state.range(0) producers post kBatch events in all; the batch ends when
// the consumer handled all of them. Reports wall ns per event. The
// producers are long-lived threads, as in a service (a thread made per
// batch would measure thread start-up and cold per-thread caches): each
// batch starts when the round number moves and ends with their reports.
template <class Queue>
void queued(benchmark::State& state) {
    const int producers = static_cast<int>(state.range(0));
    Queue queue;
    std::atomic<std::uint64_t> round{0};
    std::atomic<int> finished{0};
    std::atomic<bool> quit{false};
    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p) {
        threads.emplace_back([&, p] {
            for (std::uint64_t seen = 0;;) {
                round.wait(seen, std::memory_order_acquire);
                if (quit.load(std::memory_order_acquire)) return;
                seen = round.load(std::memory_order_acquire);
                for (int i = p; i < kBatch; i += producers) queue.post(Event{static_cast<std::uint64_t>(i), 1.0});
                finished.fetch_add(1, std::memory_order_release);
            }
        });
    }
    std::uint64_t target = 0;
    std::chrono::nanoseconds total{0};
    std::int64_t events = 0;
    for (auto _ : state) {
        target += kBatch;
        finished.store(0, std::memory_order_relaxed);
        const auto start = std::chrono::steady_clock::now();
        round.fetch_add(1, std::memory_order_release);
        round.notify_all();
        while (finished.load(std::memory_order_acquire) < producers) std::this_thread::yield();
        while (queue.handled() < target) std::this_thread::yield();
        total += std::chrono::steady_clock::now() - start;
        events += kBatch;
    }
    quit.store(true, std::memory_order_release);
    round.fetch_add(1, std::memory_order_release);
    round.notify_all();
    for (auto& t : threads) t.join();
    state.counters["ns_per_op"] = static_cast<double>(total.count()) / static_cast<double>(events);
    state.SetItemsProcessed(events);
}

// ---- bus_memory ---------------------------------------------------------------

void bus_memory(benchmark::State& state) {
    constexpr long kQueued = 20'000;
    double bytes = 0;
    for (auto _ : state) {
        cbm::EventBus bus({.queue_capacity = 100'000});
        bus.subscribe<Event>(handle);
        for (int i = 0; i < 64; ++i) bus.post(Event{1, 1.0});  // the queue's first blocks
        bus.process();
        // Posted from a new thread: its envelope cache starts empty, so each
        // queued event's block is counted (blocks cached by this thread's
        // earlier runs would hide it).
        long before = 0;
        long after = 0;
        std::thread([&] {
            before = static_cast<long>(mallinfo2().uordblks);
            for (long i = 0; i < kQueued; ++i) bus.post(Event{static_cast<std::uint64_t>(i), 1.0});
            after = static_cast<long>(mallinfo2().uordblks);
        }).join();
        bytes = static_cast<double>(after - before) / kQueued - static_cast<double>(sizeof(Event));
        bus.process();
    }
    state.counters["bytes_heap"] = bytes;
}

}  // namespace

BENCHMARK(floor_std_function)->Name("bus_publish/floor_std_function_call");
BENCHMARK(group_trigger)->Name("bus_publish/cbm_group_trigger_1_callback");
BENCHMARK(bus_publish)->Name("bus_publish/cbm_bus_publish_1_subscriber");
BENCHMARK(bus_publish_unsubscribed)->Name("bus_publish/cbm_bus_publish_unsubscribed_type");
BENCHMARK(queued<BusQueue>)->Name("bus_queued/cbm_bus_post_run")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(queued<MutexDequeQueue>)->Name("bus_queued/mutex_deque")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
#if defined(CBM_BENCH_HAVE_CONCURRENTQUEUE)
BENCHMARK(queued<MoodycamelQueue>)->Name("bus_queued/moodycamel_blocking_queue")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
#endif
BENCHMARK(bus_memory)->Name("bus_memory/cbm_bus_post")->Iterations(1);

BENCHMARK_MAIN();
