// cbm/detail/callback_stats.hpp - the counters and the latency histogram of
// one callback in an instrumented group or registry (GroupOptions::metrics).
//
// Memory ordering: every counter is a relaxed atomic; readers (metrics())
// only need each value at some moment, never an ordering between them.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <utility>

#include "../histogram.hpp"
#include "../observer.hpp"

namespace cbm::detail {

// A counter incremented without a read-modify-write: shard i is written
// only by the thread that owns the thread record with index i (records are
// unique among live threads, and handed over with release/acquire), so a
// plain load + store suffices; threads beyond the shards share an atomic.
// Each shard has its own cache line. Readers sum relaxed loads.
class ShardedCounter {
public:
    static constexpr std::uint32_t kShards = 16;

    void add_from(std::uint32_t thread_index) noexcept {
        if (thread_index < kShards) {
            std::atomic<std::uint64_t>& v = shards_[thread_index].value;
            v.store(v.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        } else {
            overflow_.fetch_add(1, std::memory_order_relaxed);
        }
    }
    std::uint64_t read() const noexcept {
        std::uint64_t total = overflow_.load(std::memory_order_relaxed);
        for (const Shard& s : shards_) total += s.value.load(std::memory_order_relaxed);
        return total;
    }

private:
    struct alignas(64) Shard {
        std::atomic<std::uint64_t> value{0};
    };
    Shard shards_[kShards];
    alignas(64) std::atomic<std::uint64_t> overflow_{0};
};

// The numbers of one metric series: one callback, or the callbacks that
// share a key, name and labels (metric_series.hpp). Counted: the series
// table holds one reference and every node of the series one.
struct CallbackStats {
    CallbackStats(std::string key, Labels l) : key_text(std::move(key)), labels(std::move(l)) {}
    CallbackStats(const CallbackStats&) = delete;
    CallbackStats& operator=(const CallbackStats&) = delete;

    // Immutable once the series is published.
    const std::string key_text;  // the registry key as text; empty in a group
    const Labels labels;
    std::string name;                     // CallbackOptions::name
    std::uint64_t id = 0;                 // unnamed series: a per-group sequence number; 0 when named
    bool exact_latency = false;           // every invocation is timed (else one in latency_sample_every)
    std::uint64_t slow_threshold_ns = 0;  // invocations longer than this count as slow (0: not counted)

    ShardedCounter invoked;                          // started (filter passed), including those that threw
    ShardedCounter skipped_filtered;                 // the filter said no
    ShardedCounter skipped_blocked;                  // a cbm::Blocker blocked it
    std::atomic<std::uint64_t> failed{0};            // reported failures: threw, overran, or the filter threw
    std::atomic<std::uint64_t> skipped_canceled{0};  // not reached: the trigger's context or token stopped it
    std::atomic<std::uint64_t> skipped_circuit_open{0};
    std::atomic<std::uint64_t> timed_out{0};
    std::atomic<std::uint64_t> retries{0};
    std::atomic<std::uint64_t> slow{0};              // timed invocations above slow_threshold_ns
    LatencyHistogram latency;                        // timed invocations, in ns
    LatencyHistogram queue_wait;                     // trigger_async: from submission to start, in ns (every task)

    // The series table's bookkeeping (under its mutex).
    std::uint32_t registered = 0;       // callbacks of the series not yet gone (being added included)
    bool ever_registered = false;       // a callback of the series was registered (and is gone)
    bool in_table = true;               // false once dropped past the retention limit
    std::uint64_t retained_round = 0;   // bumped each time the series loses its last callback
    const std::string* identity = nullptr;  // its key in the table's map (named series)

    std::atomic<std::uint32_t> refs{1};
    void add_ref() noexcept { refs.fetch_add(1, std::memory_order_relaxed); }
    void release_ref() noexcept {
        if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }

    static void bump(std::atomic<std::uint64_t>& counter) noexcept { counter.fetch_add(1, std::memory_order_relaxed); }
};

// Decides which invocations are timed: one in `every` on each thread, so
// that the clock reads (two per timed call) stay off most calls. One
// countdown per thread serves all groups: where groups with different
// periods interleave on a thread, each gets about its period (a shorter
// period takes effect at once; every == 1 times every call).
inline bool sample_this_call(std::uint32_t every) noexcept {
    thread_local std::uint32_t countdown = 0;
    if (countdown == 0 || countdown >= every) {
        countdown = every - 1;
        return true;
    }
    --countdown;
    return false;
}

}  // namespace cbm::detail
