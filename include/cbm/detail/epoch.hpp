// cbm/detail/epoch.hpp - reclamation of memory that readers (triggers) may
// still be traversing: callback arrays, detached nodes, the registry's table,
// links and entries, and the user's callables of removed callbacks.
//
// Each group (or registry) has its own RetireList, and reclamation is scoped
// to it: only threads inside a trigger of that group hold its memory back.
// Two rules, one per kind of object:
//   * epoch-retired (arrays, nodes, table parts): a writer unlinks the
//     object, then retires it with the global epoch stamped on it; it is
//     reclaimed once every trigger level inside this group entered at a later
//     epoch (thread_records.hpp publishes each level's epoch and domain).
//   * hazard-retired (a removed callback's callable and filter): reclaimed
//     once no thread has the callback's node announced, whatever else it is
//     inside. A trigger announces a node before it reads the node's state,
//     and the node was marked unregistered before its callable was retired,
//     so a trigger the scan misses reads "unregistered" and never touches the
//     callable. This is what lets a thread parked inside one callback leave
//     every other removed callable of the same group free to go.
//
// In a group's write-heavy mode (unregister.hpp) a pass runs a fence, not a
// heavy barrier: levels it does not see entered with a fence, so the
// epoch rule holds as is; a level it sees inside the group with an epoch at
// or below a callable's stamp may have announced the node unseen, so that
// callable waits for a later pass.
//
// Memory ordering: retire() stamps with a seq_cst RMW of the global epoch, so
// the unlink happens-before every later advance; a reclamation advances the
// epoch, runs writer_barrier() and only then reads the levels (acquire): a
// level that could still hold an epoch-retired object shows an epoch at or
// below its stamp, and a thread that could still run a hazard-retired
// callable shows its node announced.
//
// A registry entry is also retired "after older hazards": it is reclaimed
// only once every callable retired before it is, since clear() and erase()
// read the entry a detached node came from for as long as the node's
// callable is still retired (key_table.hpp, was_in).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "non_copyable.hpp"
#include "thread_records.hpp"

namespace cbm::detail {

struct Retirable {
    Retirable* retire_next = nullptr;
    std::uint64_t retire_stamp = 0;   // epoch-retired: the global epoch at retirement
    std::uint64_t retire_order = 0;   // position among its list's retirements
    void (*reclaim)(Retirable*) noexcept = nullptr;
    const void* hazard = nullptr;     // hazard-retired: the node whose announcement keeps it
    const std::atomic<bool>* harmless = nullptr;  // hazard-retired: set once reclaiming needs no scan
    bool after_older_hazards = false; // see the top of the file
};

// Objects that no reader can reach any more, to be reclaimed with no lock
// held (reclaiming runs user destructors, which may call back into cbm).
// Declare it before the lock_guard so that it runs after the unlock.
class ReclaimBatch : NonCopyable {
public:
    ~ReclaimBatch() { run(); }

    // Keeps retirement order within the batch. (Batches of different threads
    // may run concurrently, in any order: no reclaim function may depend on
    // another object's reclaim having run.)
    void append(Retirable* chain) noexcept {
        if (chain == nullptr) return;
        if (tail_ != nullptr) {
            tail_->retire_next = chain;
        } else {
            head_ = chain;
        }
        while (chain->retire_next != nullptr) chain = chain->retire_next;
        tail_ = chain;
    }
    void run() noexcept {
        while (head_ != nullptr) {
            Retirable* object = head_;
            head_ = object->retire_next;
            object->reclaim(object);
        }
        tail_ = nullptr;
    }

private:
    Retirable* head_ = nullptr;
    Retirable* tail_ = nullptr;
};

// Whether an epoch-retired object must wait for the hazard-retired objects
// retired before it.
enum class RetireAfter : bool { epoch, epoch_and_older_hazards };

// The retired objects of one domain (a group or a registry), oldest first,
// in two queues: epoch-retired and hazard-retired. Guarded by its owner's
// mutex.
class RetireList : NonCopyable {
public:
    // `domain`: the pointer triggers of the owner publish (TriggerScope).
    // `fast_writes`, `fast_writers`: the owner's write-heavy mode
    // (unregister.hpp): while it is on, a pass settles with a fence instead
    // of a heavy barrier.
    RetireList(const void* domain, const std::atomic<bool>* fast_writes,
               std::atomic<std::uint32_t>* fast_writers) noexcept
        : domain_(domain), fast_writes_(fast_writes), fast_writers_(fast_writers) {}
    ~RetireList() {
        ReclaimBatch batch;
        batch.append(take_all());
    }

    // `object` must already be unreachable for readers that start from now on.
    void retire(Retirable* object, void (*reclaim)(Retirable*) noexcept,
                RetireAfter after = RetireAfter::epoch) noexcept {
        // An RMW (not a load) so that the unlink happens-before every later
        // epoch advance, and so before every reader that sees a later epoch.
        object->retire_stamp = g_records.epoch.fetch_add(0, std::memory_order_seq_cst);
        object->hazard = nullptr;
        object->after_older_hazards = after == RetireAfter::epoch_and_older_hazards;
        epoch_retired_.push(object, reclaim, next_order_++);
        ++epoch_count_;
    }

    // `object` is reclaimed once no trigger level announces `hazard` (a node
    // already marked unregistered), or any time once `*harmless` is true.
    void retire_until_unannounced(Retirable* object, void (*reclaim)(Retirable*) noexcept, const void* hazard,
                                  const std::atomic<bool>* harmless) noexcept {
        // Stamped too: in a group's write-heavy mode a level that entered
        // at a later epoch read the node unregistered (reclaim_unreachable).
        object->retire_stamp = g_records.epoch.fetch_add(0, std::memory_order_seq_cst);
        object->hazard = hazard;
        object->harmless = harmless;
        object->after_older_hazards = false;
        hazard_retired_.push(object, reclaim, next_order_++);
        ++hazard_count_;
    }

    std::size_t size() const noexcept { return epoch_count_ + hazard_count_; }

    // Every object retired and not yet reclaimed.
    template <class Visit>
    void for_each(Visit&& visit) const {
        for (Retirable* r = hazard_retired_.head; r != nullptr; r = r->retire_next) visit(r);
        for (Retirable* r = epoch_retired_.head; r != nullptr; r = r->retire_next) visit(r);
    }

    // Moves what no reader can reach into `batch`: everything at once when no
    // other thread holds a record and the caller is not inside a trigger of
    // this domain (no barrier needed; see writer_barrier()), otherwise in
    // batches, once enough has piled up to be worth a heavy barrier. Call once
    // the operation that retired is done.
    void maybe_reclaim(ReclaimBatch& batch) noexcept {
        if (size() == 0) return;
        full_fence();
        const std::uint32_t mine = t_record != nullptr ? 1u : 0u;
        if (g_records.live.load(std::memory_order_seq_cst) <= mine && !self_inside_domain(domain_)) {
            batch.append(take_all());
        } else if (epoch_count_ >= threshold_ || hazard_count_ >= hazard_threshold_) {
            reclaim_unreachable(batch);
        }
    }

    void reclaim_unreachable(ReclaimBatch& batch) noexcept {
        if (size() == 0) return;
        // In the write-heavy mode every trigger of the domain that this
        // pass's scan does not see fenced after publishing its level, so a
        // fence suffices for epoch-retired objects; a hazard is then only
        // proven unannounced when no level at all is seen inside the domain.
        bool fast = false;
        if (fast_writes_ != nullptr && g_barrier_mode.load(std::memory_order_relaxed) == BarrierMode::membarrier &&
            fast_writes_->load(std::memory_order_acquire)) {
            fast_writers_->fetch_add(1, std::memory_order_seq_cst);
            fast = fast_writes_->load(std::memory_order_seq_cst);
            if (!fast) fast_writers_->fetch_sub(1, std::memory_order_release);
        }
        g_records.epoch.fetch_add(1, std::memory_order_seq_cst);
        if (fast) {
            full_fence();
        } else {
            writer_barrier();
        }
        // The oldest epoch a level inside this domain entered at. Also what
        // makes a hazard provable in the fast mode: a level that entered
        // later loaded an epoch advanced after the node was marked
        // unregistered, so it reads it unregistered; an older level inside
        // may have announced it unseen.
        const std::uint64_t oldest_reader = min_epoch_inside(domain_);
        Retirable* chain = nullptr;
        Retirable** chain_tail = &chain;
        auto move_to_chain = [&](Retirable* object) {
            object->retire_next = nullptr;
            *chain_tail = object;
            chain_tail = &object->retire_next;
        };
        if (hazard_retired_.head != nullptr) {
            try {
                const std::vector<const void*> announced = announced_nodes();
                hazard_count_ -= hazard_retired_.remove_if(
                    [&](Retirable* r) {
                        if (r->harmless != nullptr && r->harmless->load(std::memory_order_acquire)) return true;
                        if (fast && r->retire_stamp >= oldest_reader) return false;
                        for (const void* a : announced) {
                            if (a == r->hazard) return false;
                        }
                        return true;
                    },
                    move_to_chain);
            } catch (...) {
                // Out of memory: the callables wait for the next pass.
            }
        }
        const std::uint64_t oldest_hazard = hazard_retired_.head != nullptr
                                                ? hazard_retired_.head->retire_order
                                                : std::numeric_limits<std::uint64_t>::max();
        while (Retirable* head = epoch_retired_.head) {
            if (head->retire_stamp >= oldest_reader) break;
            if (head->after_older_hazards && oldest_hazard < head->retire_order) break;
            move_to_chain(epoch_retired_.pop());
            --epoch_count_;
        }
        if (fast) fast_writers_->fetch_sub(1, std::memory_order_release);
        batch.append(chain);
        // Whatever is still held back raises the bar for the next pass, so
        // the passes (one heavy barrier each) stay amortized O(1) per retire.
        threshold_ = epoch_count_ * 2 > kMinThreshold ? epoch_count_ * 2 : kMinThreshold;
        hazard_threshold_ = hazard_count_ * 2 > kMinThreshold ? hazard_count_ * 2 : kMinThreshold;
    }

    // Only when no reader can hold anything retired here (the domain is dead
    // and no trigger is inside it): everything, for the caller to reclaim.
    Retirable* take_all() noexcept {
        Retirable* chain = hazard_retired_.head;
        if (chain != nullptr) {
            hazard_retired_.tail->retire_next = epoch_retired_.head;
        } else {
            chain = epoch_retired_.head;
        }
        hazard_retired_ = Fifo{};
        epoch_retired_ = Fifo{};
        epoch_count_ = hazard_count_ = 0;
        return chain;
    }

private:
    static constexpr std::size_t kMinThreshold = 64;

    struct Fifo {
        Retirable* head = nullptr;
        Retirable* tail = nullptr;

        void push(Retirable* object, void (*reclaim)(Retirable*) noexcept, std::uint64_t order) noexcept {
            object->reclaim = reclaim;
            object->retire_order = order;
            append(object);
        }
        Retirable* pop() noexcept {
            Retirable* object = head;
            head = object->retire_next;
            if (head == nullptr) tail = nullptr;
            object->retire_next = nullptr;
            return object;
        }
        // Unlinks every object `pred` accepts, in order, handing each to
        // `take`; returns how many.
        template <class Pred, class Take>
        std::size_t remove_if(Pred&& pred, Take&& take) {
            std::size_t removed = 0;
            Retirable* r = head;
            head = nullptr;
            tail = nullptr;
            while (r != nullptr) {
                Retirable* next = r->retire_next;
                if (pred(r)) {
                    take(r);
                    ++removed;
                } else {
                    append(r);
                }
                r = next;
            }
            return removed;
        }

    private:
        void append(Retirable* object) noexcept {
            object->retire_next = nullptr;
            if (tail != nullptr) {
                tail->retire_next = object;
            } else {
                head = object;
            }
            tail = object;
        }
    };

    // Every node some trigger level announces right now (acquire loads).
    // Throws: std::bad_alloc.
    static std::vector<const void*> announced_nodes() {
        std::vector<const void*> nodes;
        any_record(true, [&](ThreadRecord& r) {
            for_each_level(r, [&](TriggerLevel& l) {
                if (const void* n = l.node.load(std::memory_order_acquire)) nodes.push_back(n);
            });
            return false;
        });
        return nodes;
    }

    const void* const domain_;
    const std::atomic<bool>* const fast_writes_;
    std::atomic<std::uint32_t>* const fast_writers_;
    Fifo epoch_retired_;
    Fifo hazard_retired_;
    std::size_t epoch_count_ = 0;
    std::size_t hazard_count_ = 0;
    std::uint64_t next_order_ = 0;
    std::size_t threshold_ = kMinThreshold;         // epoch-retired objects that start a pass
    std::size_t hazard_threshold_ = kMinThreshold;  // hazard-retired objects that start a pass
};

}  // namespace cbm::detail
