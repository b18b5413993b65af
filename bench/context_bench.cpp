// cbm::Context against the standard's stop tokens, measured in one run:
//   cancel_one    with_cancel + cancel vs std::stop_source construct + request_stop
//   timeout       with_timeout + cancel (before it fires) vs with_cancel + cancel
//   cancel_tree   cancelling a tree of N contexts vs the same tree of
//                 std::stop_source + std::stop_callback (each child's callback
//                 requests stop on the child's source)
//   context_memory bytes per live child context (1,000,000 children of one parent)
//   trigger_ctx   CallbackGroup::trigger(ctx, ...) vs trigger(...) with 8 callbacks
//   timer_lateness how late 10,000 pending timeouts fire (p50, p99, max)
#include <cbm/callback_group.hpp>
#include <cbm/context.hpp>

#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstddef>
#include <cstdio>
#include <memory>
#include <optional>
#include <stop_token>
#include <vector>

#include "bench_support.hpp"

namespace {

using namespace std::chrono_literals;

void floor_stop_source(benchmark::State& state) {
    for (auto _ : state) {
        std::stop_source source;
        source.request_stop();
        benchmark::DoNotOptimize(source);
    }
}

void cbm_with_cancel(benchmark::State& state) {
    for (auto _ : state) {
        auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
        cancel();
        benchmark::DoNotOptimize(ctx);
    }
}

// The usual shape in a server: a short-lived child of a long-lived request
// context (links into the parent, and unlinks on cancel).
void cbm_with_cancel_child(benchmark::State& state) {
    auto [parent, cancel_parent] = cbm::with_cancel(cbm::Context::background());
    for (auto _ : state) {
        auto [ctx, cancel] = cbm::with_cancel(parent);
        cancel();
        benchmark::DoNotOptimize(ctx);
    }
    cancel_parent();
}

void cbm_with_timeout(benchmark::State& state) {
    for (auto _ : state) {
        auto [ctx, cancel] = cbm::with_timeout(cbm::Context::background(), 1h);
        cancel();
        benchmark::DoNotOptimize(ctx);
    }
}

// Tree shape shared by both sides: node i (i >= 1) is a child of (i - 1) / 8.
std::size_t parent_of(std::size_t i) { return (i - 1) / 8; }

struct StdTreeNode {
    struct RequestStop {
        std::stop_source* source;
        void operator()() const noexcept { source->request_stop(); }
    };
    std::stop_source source;
    std::optional<std::stop_callback<RequestStop>> on_parent_stop;
};

void floor_std_stop_callback_tree(benchmark::State& state) {
    const auto n = static_cast<std::size_t>(state.range(0));
    for (auto _ : state) {
        state.PauseTiming();
        auto nodes = std::make_unique<StdTreeNode[]>(n);
        for (std::size_t i = 1; i < n; ++i) {
            nodes[i].on_parent_stop.emplace(nodes[parent_of(i)].source.get_token(),
                                            StdTreeNode::RequestStop{&nodes[i].source});
        }
        state.ResumeTiming();
        nodes[0].source.request_stop();
        state.PauseTiming();
        benchmark::DoNotOptimize(nodes[n - 1].source.stop_requested());
        nodes.reset();
        state.ResumeTiming();
    }
}

void cbm_context_tree(benchmark::State& state) {
    const auto n = static_cast<std::size_t>(state.range(0));
    for (auto _ : state) {
        state.PauseTiming();
        std::vector<cbm::Context> nodes;
        nodes.reserve(n);
        auto [root, cancel_root] = cbm::with_cancel(cbm::Context::background());
        nodes.push_back(root);
        for (std::size_t i = 1; i < n; ++i) nodes.push_back(cbm::with_cancel(nodes[parent_of(i)]).first);
        state.ResumeTiming();
        cancel_root();
        state.PauseTiming();
        benchmark::DoNotOptimize(nodes[n - 1].canceled());
        nodes.clear();
        state.ResumeTiming();
    }
}

// Memory: resident set and heap bytes in use, before and after creating
// 1,000,000 live children of one parent. The handle vector is allocated and
// touched before the first reading, so it is not counted.
long resident_bytes() {
    long pages_total = 0;
    long pages_resident = 0;
    if (std::FILE* f = std::fopen("/proc/self/statm", "r")) {
        if (std::fscanf(f, "%ld %ld", &pages_total, &pages_resident) != 2) pages_resident = 0;
        std::fclose(f);
    }
    return pages_resident * 4096;
}

template <class MakeChild>
void measure_children(benchmark::State& state, MakeChild&& make_child) {
    constexpr std::size_t kChildren = 1'000'000;
    double rss_per_child = 0;
    double heap_per_child = 0;
    for (auto _ : state) {
        auto children = make_child.prepare(kChildren);
        malloc_trim(0);
        const long rss_before = resident_bytes();
        const std::size_t heap_before = mallinfo2().uordblks;
        for (std::size_t i = 0; i < kChildren; ++i) make_child.add(children, i);
        rss_per_child = static_cast<double>(resident_bytes() - rss_before) / kChildren;
        heap_per_child = static_cast<double>(mallinfo2().uordblks - heap_before) / kChildren;
        benchmark::DoNotOptimize(children);
    }
    state.counters["bytes_rss"] = rss_per_child;
    state.counters["bytes_heap"] = heap_per_child;
}

struct CbmChildren {
    cbm::Context parent;
    cbm::CancelFunc cancel_parent;
    CbmChildren() { std::tie(parent, cancel_parent) = cbm::with_cancel(cbm::Context::background()); }
    std::vector<std::pair<cbm::Context, cbm::CancelFunc>> prepare(std::size_t n) {
        return std::vector<std::pair<cbm::Context, cbm::CancelFunc>>(n);
    }
    void add(std::vector<std::pair<cbm::Context, cbm::CancelFunc>>& v, std::size_t i) {
        v[i] = cbm::with_cancel(parent);
    }
};

// Each child on the heap, as a context node is: its stop_source's shared
// state plus the node holding the source and the stop_callback.
struct StdChildren {
    std::stop_source parent;
    std::vector<std::unique_ptr<StdTreeNode>> prepare(std::size_t n) {
        return std::vector<std::unique_ptr<StdTreeNode>>(n);
    }
    void add(std::vector<std::unique_ptr<StdTreeNode>>& v, std::size_t i) {
        v[i] = std::make_unique<StdTreeNode>();
        v[i]->on_parent_stop.emplace(parent.get_token(), StdTreeNode::RequestStop{&v[i]->source});
    }
};

void cbm_child_memory(benchmark::State& state) {
    CbmChildren children;
    measure_children(state, children);
}

void std_stop_callback_child_memory(benchmark::State& state) {
    StdChildren children;
    measure_children(state, children);
}

// What a context costs a trigger: the check before each callback and the
// current_context() scope.
void cbm_trigger(benchmark::State& state) {
    cbm::CallbackGroup<void(int)> group;
    for (int i = 0; i < 8; ++i) group.add(cbm_bench::body);
    for (auto _ : state) benchmark::DoNotOptimize(group.trigger(1).invoked);
}

void cbm_trigger_ctx(benchmark::State& state) {
    cbm::CallbackGroup<void(int)> group;
    for (int i = 0; i < 8; ++i) group.add(cbm_bench::body);
    auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
    for (auto _ : state) benchmark::DoNotOptimize(group.trigger(ctx, 1).invoked);
    cancel();
}

// Timer lateness: 10,000 timeouts due over the next 100 ms, all pending at
// once; each records (on the timer thread, through a std::stop_callback)
// how long after its deadline it fired.
void cbm_timer_lateness(benchmark::State& state) {
    constexpr std::size_t kTimers = 10'000;
    std::vector<std::int64_t> late_ns(kTimers);
    for (auto _ : state) {
        struct Record {
            std::int64_t* slot;
            std::chrono::steady_clock::time_point due;
            std::atomic<std::size_t>* fired;
            void operator()() const noexcept {
                *slot = (std::chrono::steady_clock::now() - due).count();
                fired->fetch_add(1, std::memory_order_release);
                fired->notify_one();
            }
        };
        std::atomic<std::size_t> fired{0};
        std::vector<std::pair<cbm::Context, cbm::CancelFunc>> timeouts;
        std::vector<std::unique_ptr<std::stop_callback<Record>>> records;
        timeouts.reserve(kTimers);
        records.reserve(kTimers);
        const auto base = std::chrono::steady_clock::now() + 10ms;
        for (std::size_t i = 0; i < kTimers; ++i) {
            const auto due = base + std::chrono::microseconds((i * 7919) % 100'000);  // spread, shuffled
            timeouts.push_back(cbm::with_deadline(cbm::Context::background(), due));
            records.push_back(std::make_unique<std::stop_callback<Record>>(timeouts.back().first.done(),
                                                                           Record{&late_ns[i], due, &fired}));
        }
        for (std::size_t seen = fired.load(); seen < kTimers; seen = fired.load()) fired.wait(seen);
    }
    std::sort(late_ns.begin(), late_ns.end());
    state.counters["p50_ns"] = static_cast<double>(late_ns[kTimers / 2]);
    state.counters["p99_ns"] = static_cast<double>(late_ns[kTimers * 99 / 100]);
    state.counters["max_ns"] = static_cast<double>(late_ns.back());
}

}  // namespace

BENCHMARK(floor_stop_source)->Name("cancel_one/floor_stop_source");
BENCHMARK(cbm_with_cancel)->Name("cancel_one/cbm_with_cancel");
BENCHMARK(cbm_with_cancel_child)->Name("cancel_one/cbm_with_cancel_child");

BENCHMARK(cbm_with_cancel)->Name("timeout/cbm_with_cancel");
BENCHMARK(cbm_with_timeout)->Name("timeout/cbm_with_timeout");

BENCHMARK(floor_std_stop_callback_tree)->Name("cancel_tree/floor_std_stop_callbacks")->Arg(1000)->UseRealTime();
BENCHMARK(cbm_context_tree)->Name("cancel_tree/cbm_context")->Arg(1000)->UseRealTime();

BENCHMARK(std_stop_callback_child_memory)->Name("context_memory/std_stop_source_and_callback")->Iterations(1);
BENCHMARK(cbm_child_memory)->Name("context_memory/cbm_with_cancel")->Iterations(1);

BENCHMARK(cbm_trigger)->Name("trigger_ctx/cbm_trigger");
BENCHMARK(cbm_trigger_ctx)->Name("trigger_ctx/cbm_trigger_ctx");

BENCHMARK(cbm_timer_lateness)->Name("timer_lateness/cbm_with_deadline_10000")->Iterations(1)->UseRealTime();

BENCHMARK_MAIN();
