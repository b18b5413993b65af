// cbm/detail/callback_stats.hpp - the counters and the latency histogram of
// one callback in an instrumented group or registry (GroupOptions::metrics).
//
// Memory ordering: every counter is a relaxed atomic; readers (metrics())
// only need each value at some moment, never an ordering between them.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../histogram.hpp"

namespace cbm {

// Metric labels of one callback, for example {{"team", "payments"}}.
using Labels = std::vector<std::pair<std::string, std::string>>;

// What an observer is told about one invocation.
struct CallbackEvent {
    std::string_view key;   // the registry key as text ("" for a group)
    std::string_view name;  // CallbackOptions::name
    const Labels& labels;   // CallbackOptions::labels
};

// Notified around every invocation of a callback of an instrumented group
// or registry (GroupOptions::metrics), on the triggering thread: a bridge to
// a logger or to OpenTelemetry spans. Must not throw; should be quick (it
// runs inline, twice per callback).
class CallbackObserver {
public:
    virtual ~CallbackObserver() = default;
    virtual void on_begin(const CallbackEvent& event) noexcept = 0;
    // `error` is null unless the callback threw.
    virtual void on_end(const CallbackEvent& event, std::chrono::nanoseconds duration,
                        const std::exception_ptr& error) noexcept = 0;
};

namespace detail {

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

struct CallbackStats {
    CallbackStats(std::string key, Labels l) : key_text(std::move(key)), labels(std::move(l)) {}

    const std::string key_text;  // the registry key as text; empty in a group
    const Labels labels;
    ShardedCounter invoked;                          // started (filter passed), including those that threw
    ShardedCounter skipped_filtered;                 // the filter said no
    std::atomic<std::uint64_t> failed{0};            // threw (from the callback or its filter)
    std::atomic<std::uint64_t> skipped_canceled{0};  // not reached: the trigger's context or token stopped it
    std::atomic<std::uint64_t> skipped_circuit_open{0};
    std::atomic<std::uint64_t> timed_out{0};
    std::atomic<std::uint64_t> retries{0};
    LatencyHistogram latency;                        // sampled invocations, in ns

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

}  // namespace detail
}  // namespace cbm
