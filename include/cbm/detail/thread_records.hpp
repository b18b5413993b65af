// cbm/detail/thread_records.hpp - per-thread hazard records and epochs.
//
// Every thread that triggers a group or reads a Snapshot owns one
// ThreadRecord. Records live in a global, append-only list and are never
// freed: a thread that exits hands its record back (in_use = false) and the
// next new thread takes it, so the list is as long as the most threads that
// ever held records at once, and a writer can scan it at any time without
// further protection. Scans skip records not in use.
//
// A record publishes, each written only by its owner:
//   * one TriggerLevel per nesting depth of trigger(): the domain (group or
//     registry) being triggered, the global epoch seen when the level was
//     entered, and the callback node being filtered or run. unregister()
//     waits while another record names its node; a group's destructor waits
//     while another record names its domain. Epoch-based reclamation is per
//     domain: memory a domain unlinked while the global epoch was s is freed
//     only when every level inside that domain entered at an epoch above s
//     (a thread parked in one group holds back nothing of the others).
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
//   level or a slot with a release store, so a writer whose acquire scan sees
//   the clear also sees every access the owner made before it.
//
//   A level's epoch is stored (release) before its domain, and a level's
//   epochs only grow. A scan loads the epoch, then the domain: if it reads
//   the epoch of a later trigger of that level, the release makes it see the
//   earlier trigger's exit (domain cleared) too; if it reads an older epoch
//   with a newer domain, the epoch is smaller than the truth (conservative).
//
//   Level scans skip records not in use (hazard-slot scans do not: a moved
//   Snapshot handle may outlive its thread). That is safe for the same
//   reason reading a level is: a thread takes a record (in_use, acq_rel CAS) before its first
//   announcement, so a writer that, after its barrier, still sees the record
//   free is one whose changes that thread's later reads see.
//
//   The "no other thread holds a record" shortcut: a thread takes a record
//   with a seq_cst RMW on g_records.live before its first light_barrier();
//   writers run a seq_cst fence before loading live. Either the writer's fence
//   is first (the new reader then sees the writer's changes) or the writer's
//   load sees the reader counted (and the writer runs the heavy barrier).
//
// Thread exit: a record goes back to the pool from a POSIX thread-specific
// destructor, which glibc runs after every C++ thread_local destructor of
// the thread, so a thread_local whose destructor triggers or loads a Snapshot
// still uses (and does not leak) the thread's record. If a later
// thread-specific destructor takes a record again, the key is set again and
// the C library calls the release once more (glibc: for up to 4 rounds; a
// record taken in the last round stays taken).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <vector>

#include "barrier.hpp"

#if __has_include(<pthread.h>)
#include <pthread.h>
#define CBM_DETAIL_HAVE_PTHREAD_KEYS 1
#else
#define CBM_DETAIL_HAVE_PTHREAD_KEYS 0
#endif

namespace cbm::detail {

inline constexpr std::size_t kLevelsPerChunk = 16;
inline constexpr std::size_t kSlotsPerChunk = 8;

struct TriggerLevel {
    std::atomic<const void*> domain{nullptr};  // group or registry triggered at this depth
    std::atomic<std::uint64_t> epoch{0};       // the global epoch when this level was entered
    std::atomic<std::uint64_t> entries{0};     // how many triggers entered this level (release)
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


// Gives the calling thread's record back to the pool (it must be outside
// every trigger; its hazard slots may still pin Snapshot values for handles
// moved to other threads, which slot scans still see).
inline void release_record(ThreadRecord* record) noexcept {
    if (t_record == record) t_record = nullptr;
    record->in_use.store(false, std::memory_order_release);
    g_records.live.fetch_sub(1, std::memory_order_seq_cst);
}

#if CBM_DETAIL_HAVE_PTHREAD_KEYS
inline void release_record_at_thread_exit(void* record) noexcept { release_record(static_cast<ThreadRecord*>(record)); }

// The key whose destructor releases a thread's record. Created once; never
// deleted (records may be released until the process ends).
inline pthread_key_t record_key() {
    static const pthread_key_t key = [] {
        pthread_key_t k{};
        if (pthread_key_create(&k, &release_record_at_thread_exit) != 0) throw std::bad_alloc();
        return k;
    }();
    return key;
}

inline void release_at_thread_exit(ThreadRecord* record) {
    if (pthread_setspecific(record_key(), record) != 0) throw std::bad_alloc();
}
#else
struct RecordReleaser {
    ThreadRecord* record = nullptr;
    RecordReleaser() = default;
    RecordReleaser(const RecordReleaser&) = delete;
    RecordReleaser& operator=(const RecordReleaser&) = delete;
    ~RecordReleaser() {
        if (record != nullptr) release_record(record);
    }
};

inline void release_at_thread_exit(ThreadRecord* record) {
    static thread_local RecordReleaser releaser;
    releaser.record = record;
}
#endif

// Slow path of current_record(): reuse a released record or append a new one.
// Throws: std::bad_alloc, holding no record then.
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
    try {
        release_at_thread_exit(found);
    } catch (...) {
        release_record(found);
        throw;
    }
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
        if (r == self ? !include_self : !r->in_use.load(std::memory_order_acquire)) continue;
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

// True when some record's hazard slot holds `value` (a Snapshot block or
// tag). Every record, in use or not: a read handle may be moved to another
// thread and outlive the thread (and the record tenure) that loaded it.
inline bool slot_holds(const void* value) {
    for (ThreadRecord* r = g_records.head.load(std::memory_order_acquire); r; r = r->next_record) {
        bool hit = false;
        for_each_slot(*r, [&](std::atomic<const void*>& s) { hit = hit || s.load(std::memory_order_acquire) == value; });
        if (hit) return true;
    }
    return false;
}

// True when the calling thread is inside a trigger of `domain` at some depth.
inline bool self_inside_domain(const void* domain) noexcept {
    ThreadRecord* self = t_record;
    if (self == nullptr || self->depth == 0) return false;
    bool hit = false;
    for_each_level(*self, [&](TriggerLevel& l) { hit = hit || l.domain.load(std::memory_order_relaxed) == domain; });
    return hit;
}

// Smallest epoch at which a level still inside `domain` entered it (the
// caller's own levels included), or the maximum value if none is inside.
inline std::uint64_t min_epoch_inside(const void* domain) {
    std::uint64_t result = std::numeric_limits<std::uint64_t>::max();
    any_record(true, [&](ThreadRecord& r) {
        for_each_level(r, [&](TriggerLevel& l) {
            const std::uint64_t e = l.epoch.load(std::memory_order_acquire);
            if (l.domain.load(std::memory_order_acquire) == domain && e < result) result = e;
        });
        return false;
    });
    return result;
}

// RAII publication of one trigger() nesting level on the calling thread.
class TriggerScope {
public:
    // Always inlined: it is on every trigger, and the compiler sometimes
    // outlines it in larger translation units.
    //
    // `fenced_entry`: the domain's write-heavy mode (unregister.hpp, "fast
    // blocking waits"). Read after the domain is published: a trigger that
    // reads it false published the domain before the barrier that turned
    // the mode on, so that barrier made the domain visible to writers.
    [[gnu::always_inline]] TriggerScope(const void* domain, const std::atomic<bool>& fenced_entry)
        : record_(current_record()), mode_(g_barrier_mode.load(std::memory_order_relaxed)) {
        depth_ = record_->depth;
        level_ = depth_ < kLevelsPerChunk ? &record_->levels.levels[depth_] : deep_level(depth_);
        record_->depth = depth_ + 1;
        // Release: a scan that reads this epoch also sees the previous
        // trigger of this level leave (its domain cleared) and all it did.
        level_->epoch.store(g_records.epoch.load(std::memory_order_acquire), std::memory_order_release);
        level_->entries.store(level_->entries.load(std::memory_order_relaxed) + 1, std::memory_order_release);
        level_->domain.store(domain, std::memory_order_release);
        light_barrier(mode_);
        if (fenced_entry.load(std::memory_order_relaxed)) [[unlikely]] full_fence();
    }
    TriggerScope(const TriggerScope&) = delete;
    TriggerScope& operator=(const TriggerScope&) = delete;
    [[gnu::always_inline]] ~TriggerScope() {
        // The node too: an exception between announce and withdraw must not
        // leave it announced (release: it may be the withdrawal).
        level_->node.store(nullptr, std::memory_order_release);
        level_->domain.store(nullptr, std::memory_order_release);
        record_->depth = depth_;
        if (depth_ == 0 && !record_->deferred.empty()) [[unlikely]] record_->run_deferred();
    }

    BarrierMode mode() const noexcept { return mode_; }
    // This thread's record index (unique among live threads).
    std::uint32_t thread_index() const noexcept { return record_->index; }

    // Announce that `node` may be filtered or run next; its state must be read
    // only after this returns. `Mode` must equal mode().
    // (A release store: free on x86; a waiter that reads the node then reads
    // this trigger's `entries`, see unregister.hpp.)
    template <BarrierMode Mode>
    void announce(const void* node) noexcept {
        level_->node.store(node, std::memory_order_release);
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
