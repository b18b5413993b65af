// cbm/snapshot.hpp - cbm::Snapshot<T>: an atomically replaceable value with
// wait-free reads (Go's atomic.Value, for any C++ type).
//
// load() returns a ReadHandle that pins the value it saw; store() publishes a
// new value and destroys a replaced one as soon as no handle pins it.
// Readers never touch a shared reference count: each handle pins its value
// with a hazard slot in the reading thread's record (thread_records.hpp).
//
// Memory ordering (reader, wait-free, no loop):
//   1. slot = tag(this)   relaxed   "I am about to read this Snapshot"
//   2. light_barrier()
//   3. b = current        acquire
//   4. slot = b           relaxed   (the tag already protects b)
// Writer: exchange current (acq_rel), writer_barrier(), then scan the slots:
// a retired block is freed only if no slot holds it or this Snapshot's tag.
// If the scan misses step 1, the barrier pair guarantees step 3 read the new
// value, so the old block cannot be in use. Releasing a handle stores null
// (release), runs a barrier (light_barrier(), or a full fence on a thread
// that holds no record and so is not covered by writer_barrier()'s
// shortcut), then re-reads `current` and `tag_kept_`: if the pinned block was
// replaced, or a writer kept blocks only because it saw a tag (the reader may
// have gone on to pin the new value), the handle runs a reclamation. Either
// the writer's scan saw the null, or the releasing reader sees the change.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#include "detail/thread_records.hpp"

namespace cbm {

// Safety: load() and store() may be called concurrently from any threads.
// Precondition: the Snapshot outlives every ReadHandle obtained from it.
template <class T>
class Snapshot {
    struct Block {
        template <class... A>
        explicit Block(A&&... args) : value(std::forward<A>(args)...) {}
        const T value;
    };

public:
    // Pins one value: const access that stays valid while the handle lives,
    // whatever store() does meanwhile. Move-only; may be moved to and
    // destroyed on another thread.
    class ReadHandle {
    public:
        ReadHandle() noexcept = default;
        ReadHandle(ReadHandle&& other) noexcept
            : owner_(std::exchange(other.owner_, nullptr)),
              slot_(std::exchange(other.slot_, nullptr)),
              block_(std::exchange(other.block_, nullptr)) {}
        ReadHandle& operator=(ReadHandle&& other) noexcept {
            if (this != &other) {
                release();
                owner_ = std::exchange(other.owner_, nullptr);
                slot_ = std::exchange(other.slot_, nullptr);
                block_ = std::exchange(other.block_, nullptr);
            }
            return *this;
        }
        ReadHandle(const ReadHandle&) = delete;
        ReadHandle& operator=(const ReadHandle&) = delete;
        ~ReadHandle() { release(); }

        const T& operator*() const noexcept { return block_->value; }
        const T* operator->() const noexcept { return &block_->value; }
        const T* get() const noexcept { return block_ != nullptr ? &block_->value : nullptr; }
        explicit operator bool() const noexcept { return block_ != nullptr; }

        // Effect: unpins the value now (the handle becomes empty).
        void reset() noexcept { release(); }

    private:
        friend class Snapshot;
        ReadHandle(const Snapshot* owner, std::atomic<const void*>* slot, const Block* block) noexcept
            : owner_(owner), slot_(slot), block_(block) {}

        void release() noexcept {
            if (slot_ == nullptr) return;
            slot_->store(nullptr, std::memory_order_release);
            if (detail::t_record != nullptr) {
                detail::light_barrier();
            } else {
                detail::full_fence();
            }
            if (owner_->current_.load(std::memory_order_acquire) != block_ ||
                owner_->tag_kept_.load(std::memory_order_relaxed)) {
                owner_->reclaim_noexcept();
            }
            owner_ = nullptr;
            slot_ = nullptr;
            block_ = nullptr;
        }

        const Snapshot* owner_ = nullptr;
        std::atomic<const void*>* slot_ = nullptr;
        const Block* block_ = nullptr;
    };

    // Effect: holds `value`.
    explicit Snapshot(T value) : current_(new Block(std::move(value))) {}
    template <class... A>
    explicit Snapshot(std::in_place_t, A&&... args) : current_(new Block(std::forward<A>(args)...)) {}
    Snapshot(const Snapshot&) = delete;
    Snapshot& operator=(const Snapshot&) = delete;

    // Precondition: no ReadHandle of this Snapshot is alive.
    ~Snapshot() {
        for (const Block* b : retired_) delete b;
        delete current_.load(std::memory_order_relaxed);
    }

    // Effect: pins and returns the current value.
    // Never blocks, never allocates in the common case (a thread's first
    // handles beyond eight at once allocate one more slot chunk), wait-free.
    ReadHandle load() const {
        detail::ThreadRecord* record = detail::current_record();
        std::atomic<const void*>* slot = free_slot(*record);
        slot->store(tag(), std::memory_order_relaxed);
        detail::light_barrier();
        const Block* block = current_.load(std::memory_order_acquire);
        slot->store(block, std::memory_order_relaxed);
        return ReadHandle(this, slot, block);
    }

    // Effect: publishes `value`; readers that load() afterwards see it. The
    // replaced value is destroyed before store returns if no handle pins it,
    // else by whichever store() or handle release finds it unpinned.
    // Blocks: briefly on other store()s; never on readers.
    void store(T value) { publish(new Block(std::move(value))); }

    template <class... A>
    void emplace(A&&... args) {
        publish(new Block(std::forward<A>(args)...));
    }

    // Number of replaced values not yet destroyed (pinned by some handle).
    std::size_t retired_count() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return retired_.size();
    }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

private:
    const void* tag() const noexcept {
        return reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(this) | 1u);
    }

    // A null slot of the calling thread's record; only the owner claims slots.
    static std::atomic<const void*>* free_slot(detail::ThreadRecord& record) {
        detail::SlotChunk* chunk = &record.slots;
        for (;;) {
            for (auto& slot : chunk->slots) {
                if (slot.load(std::memory_order_relaxed) == nullptr) return &slot;
            }
            detail::SlotChunk* next = chunk->next.load(std::memory_order_relaxed);
            if (next == nullptr) {
                next = new detail::SlotChunk;
                chunk->next.store(next, std::memory_order_release);
            }
            chunk = next;
        }
    }

    void publish(Block* fresh) {
        std::vector<const Block*> unpinned;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            try {
                retired_.reserve(retired_.size() + 1);  // so nothing after the exchange throws
                unpinned.reserve(retired_.size() + 1);
            } catch (...) {
                lock.unlock();
                delete fresh;
                throw;
            }
            retired_.push_back(current_.exchange(fresh, std::memory_order_acq_rel));
            collect_unpinned(unpinned);
        }
        for (const Block* b : unpinned) delete b;
    }

    void reclaim_noexcept() const noexcept {
        std::vector<const Block*> unpinned;
        try {
            std::lock_guard<std::mutex> lock(mutex_);
            unpinned.reserve(retired_.size());
            collect_unpinned(unpinned);
        } catch (...) {
            return;  // a later store() or release will retry
        }
        for (const Block* b : unpinned) delete b;
    }

    // Under mutex_: moves retired blocks that no slot pins into `out`, which
    // has room for all of them. Sets tag_kept_ when a block stays only
    // because some reader's slot held the tag at the time of the scan.
    void collect_unpinned(std::vector<const Block*>& out) const noexcept {
        if (retired_.empty()) {
            tag_kept_.store(false, std::memory_order_relaxed);
            return;
        }
        // Set before the scan: a reader whose tag the scan sees must find
        // tag_kept_ set when it releases its handle (and then reclaim). Its
        // release fence comes after the writer barrier in the fences' total
        // order (else the scan would have seen its slot cleared), so it reads
        // this store or a later one. Stored only after the scan, the reader
        // could release first and leave the block retired for good.
        tag_kept_.store(true, std::memory_order_relaxed);
        detail::writer_barrier();
        const bool tag_seen = detail::slot_holds(tag());
        bool kept_for_tag = false;
        auto keep = retired_.begin();
        for (const Block* b : retired_) {
            if (detail::slot_holds(b)) {
                *keep++ = b;
            } else if (tag_seen) {
                *keep++ = b;
                kept_for_tag = true;
            } else {
                out.push_back(b);
            }
        }
        retired_.erase(keep, retired_.end());
        tag_kept_.store(kept_for_tag, std::memory_order_relaxed);
    }

    std::atomic<const Block*> current_;
    mutable std::atomic<bool> tag_kept_{false};  // written under mutex_
    mutable std::mutex mutex_;
    mutable std::vector<const Block*> retired_;  // under mutex_
};

}  // namespace cbm
