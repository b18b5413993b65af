// cbm/detail/thread_records.hpp - per-thread hazard records and epochs.
//
// Every thread that triggers a group or reads a Snapshot owns one
// ThreadRecord. Records live in a global, append-only list and are never
// freed (a thread that exits hands its record to the next thread), so a
// writer can scan them at any time without further protection.
//
// A record publishes four things, each written only by its owner:
//   * epoch: the global epoch seen when the owner entered its outermost
//     trigger, or 0 outside triggers. Epoch-based reclamation: memory that
//     was unlinked while the global epoch was s is freed only when every
//     record's epoch is 0 or greater than s.
//   * one TriggerLevel per nesting depth of trigger(): the domain (group or
//     registry) being triggered and the callback node being filtered or run.
//     unregister() waits while another record names its node; a group's
//     destructor waits while another record names its domain.
//   * hazard slots for Snapshot read handles.
//   * waiting_for: the node whose invocations the owner waits for in a
//     blocking unregister/clear/erase while it is itself inside a trigger, so
//     that waiters can find wait cycles (unregister.hpp). Stored and loaded
//     seq_cst: of two threads that start waiting, at least one sees the other.
//
// Memory ordering:
//   Owner stores are relaxed, followed by light_barrier() before the owner
//   reads the shared state they protect; writers change that shared state,
//   then call writer_barrier() (heavy_barrier() unless no other thread holds
//   a record), then scan with acquire loads. See barrier.hpp. Owners clear a
//   level, an epoch or a slot with a release store, so a writer whose acquire
//   scan sees the clear also sees every access the owner made before it.
//
//   The "no other thread holds a record" shortcut: a thread takes a record
//   with a seq_cst RMW on g_records.live before its first light_barrier();
//   writers run a seq_cst fence before loading live. Either the writer's fence
//   is first (the new reader then sees the writer's changes) or the writer's
//   load sees the reader counted (and the writer runs the heavy barrier).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "barrier.hpp"

namespace cbm::detail {

inline constexpr std::size_t kLevelsPerChunk = 16;
inline constexpr std::size_t kSlotsPerChunk = 8;

struct TriggerLevel {
    std::atomic<const void*> domain{nullptr};  // group or registry triggered at this depth
    std::atomic<const void*> node{nullptr};    // callback being filtered or run at this depth
};

// Levels beyond the first chunk live in further chunks, appended by the owner
// and never freed or moved, so scanners can follow `next` at any time.
struct LevelChunk {
    TriggerLevel levels[kLevelsPerChunk];
    std::atomic<LevelChunk*> next{nullptr};
};

struct SlotChunk {
    std::atomic<const void*> slots[kSlotsPerChunk] = {};
    std::atomic<SlotChunk*> next{nullptr};
};

// Work the owner postponed until it leaves its outermost trigger (see
// defer_until_outside_triggers).
struct Deferred {
    void (*run)(void* context) noexcept;
    void* context;
};

struct alignas(64) ThreadRecord {
    std::atomic<std::uint64_t> epoch{0};  // written by the owner
    std::uint32_t depth = 0;              // owner only: current trigger nesting
    std::uint32_t index = 0;              // immutable: unique among records, so among live threads
    std::atomic<bool> in_use{false};
    std::atomic<const void*> waiting_for{nullptr};  // written by the owner, see above
    ThreadRecord* next_record = nullptr;  // immutable once the record is published
    std::vector<Deferred> deferred;       // owner only
    LevelChunk levels;
    SlotChunk slots;

    // Runs (and clears) the deferred work; called outside any trigger.
    void run_deferred() noexcept {
        while (!deferred.empty()) {
            const Deferred d = deferred.back();
            deferred.pop_back();
            d.run(d.context);
        }
    }
};

struct RecordList {
    std::atomic<ThreadRecord*> head{nullptr};
    std::atomic<std::uint32_t> created{0};  // records ever created (the next index)
    std::atomic<std::uint32_t> live{0};   // records currently owned by a thread
    std::atomic<std::uint64_t> epoch{1};  // global reclamation epoch, never 0
};

inline RecordList g_records;
inline constinit thread_local ThreadRecord* t_record = nullptr;

// When the calling thread is inside a trigger, queues `run(context)` for when
// it leaves its outermost trigger and returns true (a `context` already queued
// with the same `run` is not queued twice: returns false then too, as it will
// run); otherwise returns false and queues nothing.
inline bool defer_until_outside_triggers(void (*run)(void*) noexcept, void* context) noexcept {
    ThreadRecord* self = t_record;
    if (self == nullptr || self->depth == 0) return false;
    for (const Deferred& d : self->deferred) {
        if (d.run == run && d.context == context) return false;
    }
    try {
        self->deferred.push_back(Deferred{run, context});
    } catch (...) {
        return false;  // the work then waits for the next regular occasion
    }
    return true;
}


struct RecordReleaser {
    ThreadRecord* record = nullptr;
    RecordReleaser() = default;
    RecordReleaser(const RecordReleaser&) = delete;
    RecordReleaser& operator=(const RecordReleaser&) = delete;
    ~RecordReleaser() {
        if (record == nullptr) return;
        t_record = nullptr;
        record->in_use.store(false, std::memory_order_release);
        g_records.live.fetch_sub(1, std::memory_order_seq_cst);
    }
};

// Slow path of current_record(): reuse a released record or append a new one.
inline ThreadRecord* acquire_record() {
    ensure_barrier_mode();
    ThreadRecord* found = nullptr;
    for (ThreadRecord* r = g_records.head.load(std::memory_order_acquire); r; r = r->next_record) {
        bool expected = false;
        if (!r->in_use.load(std::memory_order_relaxed) &&
            r->in_use.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) {
            found = r;
            break;
        }
    }
    if (found == nullptr) {
        found = new ThreadRecord;
        found->index = g_records.created.fetch_add(1, std::memory_order_relaxed);
        found->in_use.store(true, std::memory_order_relaxed);
        ThreadRecord* head = g_records.head.load(std::memory_order_relaxed);
        do {
            found->next_record = head;
        } while (!g_records.head.compare_exchange_weak(head, found, std::memory_order_acq_rel));
    }
    g_records.live.fetch_add(1, std::memory_order_seq_cst);
    static thread_local RecordReleaser releaser;
    releaser.record = found;
    t_record = found;
    return found;
}

inline ThreadRecord* current_record() {
    ThreadRecord* r = t_record;
    return r != nullptr ? r : acquire_record();
}

template <class Visit>
void for_each_level(ThreadRecord& r, Visit&& visit) {
    for (LevelChunk* c = &r.levels; c != nullptr; c = c->next.load(std::memory_order_acquire)) {
        for (TriggerLevel& level : c->levels) visit(level);
    }
}

template <class Visit>
void for_each_slot(ThreadRecord& r, Visit&& visit) {
    for (SlotChunk* c = &r.slots; c != nullptr; c = c->next.load(std::memory_order_acquire)) {
        for (auto& slot : c->slots) visit(slot);
    }
}

template <class Pred>
bool any_record(bool include_self, Pred&& pred) {
    ThreadRecord* self = t_record;
    for (ThreadRecord* r = g_records.head.load(std::memory_order_acquire); r; r = r->next_record) {
        if (r == self && !include_self) continue;
        if (pred(*r)) return true;
    }
    return false;
}

// The writer's half of the Dekker handshake described at the top of the file.
inline void writer_barrier() noexcept {
    full_fence();
    const std::uint32_t live = g_records.live.load(std::memory_order_seq_cst);
    const std::uint32_t mine = t_record != nullptr ? 1u : 0u;
    if (live > mine) heavy_barrier();
}

// True when some record's level has `field` == `value` (acquire loads).
inline bool some_level_holds(std::atomic<const void*> TriggerLevel::*field, const void* value, bool include_self) {
    return any_record(include_self, [&](ThreadRecord& r) {
        bool hit = false;
        for_each_level(r, [&](TriggerLevel& l) { hit = hit || (l.*field).load(std::memory_order_acquire) == value; });
        return hit;
    });
}

inline bool node_announced(const void* node, bool include_self) {
    return some_level_holds(&TriggerLevel::node, node, include_self);
}

// True when `r` has `node` announced at some level (acquire loads).
inline bool record_announces(ThreadRecord& r, const void* node) {
    bool hit = false;
    for_each_level(r, [&](TriggerLevel& l) { hit = hit || l.node.load(std::memory_order_acquire) == node; });
    return hit;
}

// True when the calling thread itself has `node` announced at some level
// (it is inside that callback, or further up its own stack).
inline bool node_announced_by_self(const void* node) {
    ThreadRecord* self = t_record;
    return self != nullptr && record_announces(*self, node);
}

inline bool domain_entered_elsewhere(const void* domain) {
    return some_level_holds(&TriggerLevel::domain, domain, false);
}

// True when some thread's hazard slot holds `value` (a Snapshot block or tag).
inline bool slot_holds(const void* value) {
    return any_record(true, [value](ThreadRecord& r) {
        bool hit = false;
        for_each_slot(r, [&](std::atomic<const void*>& s) { hit = hit || s.load(std::memory_order_acquire) == value; });
        return hit;
    });
}

// Smallest epoch announced by a thread inside a trigger (the caller's own
// record included), or the maximum value if none is.
inline std::uint64_t min_active_epoch() {
    std::uint64_t result = std::numeric_limits<std::uint64_t>::max();
    any_record(true, [&](ThreadRecord& r) {
        const std::uint64_t e = r.epoch.load(std::memory_order_acquire);
        if (e != 0 && e < result) result = e;
        return false;
    });
    return result;
}

// RAII publication of one trigger() nesting level on the calling thread.
class TriggerScope {
public:
    // Always inlined: it is on every trigger, and the compiler sometimes
    // outlines it in larger translation units.
    [[gnu::always_inline]] explicit TriggerScope(const void* domain)
        : record_(current_record()), mode_(g_barrier_mode.load(std::memory_order_relaxed)) {
        depth_ = record_->depth;
        level_ = depth_ < kLevelsPerChunk ? &record_->levels.levels[depth_] : deep_level(depth_);
        record_->depth = depth_ + 1;
        if (depth_ == 0) {
            record_->epoch.store(g_records.epoch.load(std::memory_order_acquire),
                                 std::memory_order_relaxed);
        }
        level_->domain.store(domain, std::memory_order_relaxed);
        light_barrier(mode_);
    }
    TriggerScope(const TriggerScope&) = delete;
    TriggerScope& operator=(const TriggerScope&) = delete;
    [[gnu::always_inline]] ~TriggerScope() {
        level_->domain.store(nullptr, std::memory_order_release);
        record_->depth = depth_;
        if (depth_ == 0) {
            record_->epoch.store(0, std::memory_order_release);
            if (!record_->deferred.empty()) [[unlikely]] record_->run_deferred();
        }
    }

    BarrierMode mode() const noexcept { return mode_; }
    // This thread's record index (unique among live threads).
    std::uint32_t thread_index() const noexcept { return record_->index; }

    // Announce that `node` may be filtered or run next; its state must be read
    // only after this returns. `Mode` must equal mode().
    template <BarrierMode Mode>
    void announce(const void* node) noexcept {
        level_->node.store(node, std::memory_order_relaxed);
        light_barrier(Mode);
    }
    // Withdraw the announcement; the caller then checks for waiters.
    template <BarrierMode Mode>
    void withdraw() noexcept {
        level_->node.store(nullptr, std::memory_order_release);
        light_barrier(Mode);
    }

private:
    TriggerLevel* deep_level(std::uint32_t depth) {
        LevelChunk* chunk = &record_->levels;
        while (depth >= kLevelsPerChunk) {
            LevelChunk* next = chunk->next.load(std::memory_order_relaxed);
            if (next == nullptr) {
                next = new LevelChunk;
                chunk->next.store(next, std::memory_order_release);
            }
            chunk = next;
            depth -= static_cast<std::uint32_t>(kLevelsPerChunk);
        }
        return &chunk->levels[depth];
    }

    ThreadRecord* record_;
    BarrierMode mode_;
    TriggerLevel* level_;
    std::uint32_t depth_;
};

}  // namespace cbm::detail
