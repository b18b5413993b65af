// cbm/detail/epoch.hpp - epoch-based reclamation of memory that readers
// (triggers) may still be traversing: callback arrays, detached nodes, the
// registry's table, links and entries.
//
// A writer unlinks an object, then retires it with the global epoch stamped
// on it; the object is reclaimed once every thread inside a trigger entered
// its outermost trigger at a later epoch (thread_records.hpp publishes each
// thread's epoch). Memory ordering: retire() stamps with a seq_cst RMW of the
// global epoch, so the unlink happens-before every later advance; a
// reclamation advances the epoch, runs writer_barrier() and only then reads
// the readers' epochs (acquire): a reader that could still hold the object
// shows an epoch at or below its stamp.
#pragma once

#include <cstddef>
#include <cstdint>

#include "non_copyable.hpp"
#include "thread_records.hpp"

namespace cbm::detail {

struct Retirable {
    Retirable* retire_next = nullptr;
    std::uint64_t retire_stamp = 0;
    void (*reclaim)(Retirable*) noexcept = nullptr;
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

// A FIFO of retired objects. Guarded by its owner's mutex.
class RetireList : NonCopyable {
public:
    ~RetireList() {
        ReclaimBatch batch;
        batch.append(take_all());
    }

    // `object` must already be unreachable for readers that start from now on.
    void retire(Retirable* object, void (*reclaim)(Retirable*) noexcept) noexcept {
        // An RMW (not a load) so that the unlink happens-before every later
        // epoch advance, and so before every reader that sees a later epoch.
        object->retire_stamp = g_records.epoch.fetch_add(0, std::memory_order_seq_cst);
        object->reclaim = reclaim;
        object->retire_next = nullptr;
        if (tail_ != nullptr) {
            tail_->retire_next = object;
        } else {
            head_ = object;
        }
        tail_ = object;
        ++count_;
    }

    std::size_t size() const noexcept { return count_; }

    // Every object retired and not yet reclaimed, oldest first.
    template <class Visit>
    void for_each(Visit&& visit) const {
        for (Retirable* r = head_; r != nullptr; r = r->retire_next) visit(r);
    }

    // Moves what no reader can reach into `batch`: everything at once when no
    // other thread holds a record and the caller is outside any trigger (no
    // barrier needed; see writer_barrier()), otherwise in batches, once enough
    // has piled up to be worth a heavy barrier. Call once the operation that
    // retired is done.
    void maybe_reclaim(ReclaimBatch& batch) noexcept {
        if (head_ == nullptr) return;
        full_fence();
        ThreadRecord* self = t_record;
        const std::uint32_t mine = self != nullptr ? 1u : 0u;
        if (g_records.live.load(std::memory_order_seq_cst) <= mine &&
            (self == nullptr || self->epoch.load(std::memory_order_relaxed) == 0)) {
            batch.append(take_all());
        } else if (count_ >= threshold_) {
            reclaim_unreachable(batch);
        }
    }

    void reclaim_unreachable(ReclaimBatch& batch) noexcept {
        if (head_ == nullptr) return;
        g_records.epoch.fetch_add(1, std::memory_order_seq_cst);
        writer_barrier();
        const std::uint64_t oldest_reader = min_active_epoch();
        Retirable* chain = nullptr;
        Retirable** chain_tail = &chain;
        while (head_ != nullptr && head_->retire_stamp < oldest_reader) {
            Retirable* object = pop();
            *chain_tail = object;
            chain_tail = &object->retire_next;
        }
        batch.append(chain);
        threshold_ = count_ * 2 > kMinThreshold ? count_ * 2 : kMinThreshold;
    }

    // Only when no reader can hold anything retired here (the domain is dead
    // and no trigger is inside it): everything, for the caller to reclaim.
    Retirable* take_all() noexcept {
        Retirable* chain = head_;
        head_ = tail_ = nullptr;
        count_ = 0;
        return chain;
    }

private:
    static constexpr std::size_t kMinThreshold = 64;

    Retirable* pop() noexcept {
        Retirable* object = head_;
        head_ = object->retire_next;
        if (head_ == nullptr) tail_ = nullptr;
        object->retire_next = nullptr;
        --count_;
        return object;
    }

    Retirable* head_ = nullptr;
    Retirable* tail_ = nullptr;
    std::size_t count_ = 0;
    std::size_t threshold_ = kMinThreshold;
};

}  // namespace cbm::detail
