// cbm/detail/block_cache.hpp - fixed-size blocks recycled per thread, for
// objects made on one thread and freed on another (the shared state of a
// trigger_async, made by the producer and freed by the pool thread that
// finishes last). glibc's malloc serves that pattern through its arena
// lock; here a block freed elsewhere goes back to the cache of the thread
// that made it, through a lock-free stack, and that thread takes the whole
// stack back with one exchange when its own blocks run out.
//
// Lifetime: a cache lives while its thread does or while any of its blocks
// is out (`refs`: one for the thread, one per block out of the cache); the
// last to drop a reference frees the cached blocks and the cache.
//
// Memory ordering: a remote free pushes with a release compare-exchange;
// the owner takes the stack with an acquire exchange, so it sees the block
// as the freeing thread left it. The owner alone pops from `local`, and
// takes `remote` only whole, so the stack has no ABA problem. `refs` is
// acq_rel: whoever drops the last reference sees every push before it.
//
// Under AddressSanitizer the cache is off (plain operator new), so that a
// use after free of a recycled block is still caught.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>

#if defined(__SANITIZE_ADDRESS__)
#define CBM_BLOCK_CACHE_OFF 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CBM_BLOCK_CACHE_OFF 1
#endif
#endif

namespace cbm::detail {

class BlockCache {
public:
    static constexpr std::size_t kBlockBytes = 512;  // including the header
    static constexpr std::size_t kMaxLocal = 256;    // blocks a thread keeps for reuse at most

    // A block for `n` bytes (aligned for std::max_align_t).
    static void* allocate(std::size_t n) {
#if !defined(CBM_BLOCK_CACHE_OFF)
        if (n <= kBlockBytes - sizeof(Header)) {
            if (BlockCache* cache = mine()) return cache->take() + 1;
        }
#endif
        auto* h = static_cast<Header*>(::operator new(sizeof(Header) + n));
        h->owner = nullptr;
        return h + 1;
    }

    static void deallocate(void* p) noexcept {
        Header* h = static_cast<Header*>(p) - 1;
        BlockCache* owner = h->owner;
        if (owner == nullptr) {
            ::operator delete(h);
            return;
        }
        owner->give_back(h);
    }

private:
    struct alignas(std::max_align_t) Header {
        BlockCache* owner;
        Header* next;
    };

    BlockCache() = default;

    // This thread's cache (made on first use); null while the thread exits
    // or when none could be made. The pointer and the flag are trivially
    // destructible thread_locals, so they stay readable while other
    // thread_local destructors free blocks.
    static BlockCache*& slot() noexcept {
        thread_local BlockCache* cache = nullptr;
        return cache;
    }
    static bool& exited() noexcept {
        thread_local bool flag = false;
        return flag;
    }
    struct ExitHook {
        ~ExitHook() {
            BlockCache* cache = slot();
            slot() = nullptr;
            exited() = true;
            if (cache != nullptr) cache->thread_exits();
        }
    };
    static BlockCache* mine() noexcept {
        BlockCache* cache = slot();
        if (cache == nullptr && !exited()) {
            cache = new (std::nothrow) BlockCache();
            if (cache != nullptr) {
                thread_local ExitHook hook;  // registered once, with the first cache
                (void)hook;
                slot() = cache;
            }
        }
        return cache;
    }

    // On the owner thread: a cached block, else a new one. The block holds
    // a reference to the cache.
    Header* take() {
        if (local_ == nullptr) {
            // Take back what other threads freed, keeping at most kMaxLocal:
            // a burst of outstanding blocks is not kept for the thread's life.
            local_ = remote_.exchange(nullptr, std::memory_order_acquire);
            local_count_ = 0;
            for (Header* h = local_; h != nullptr; h = h->next) {
                if (++local_count_ == kMaxLocal) {
                    free_list(h->next);
                    h->next = nullptr;
                    break;
                }
            }
        }
        Header* h = local_;
        if (h != nullptr) {
            local_ = h->next;
            --local_count_;
        } else {
            h = static_cast<Header*>(::operator new(kBlockBytes));
            h->owner = this;
        }
        refs_.fetch_add(1, std::memory_order_relaxed);
        return h;
    }

    void give_back(Header* h) noexcept {
        if (slot() == this && local_count_ < kMaxLocal) {
            h->next = local_;
            local_ = h;
            ++local_count_;
        } else {
            Header* top = remote_.load(std::memory_order_relaxed);
            do {
                h->next = top;
            } while (!remote_.compare_exchange_weak(top, h, std::memory_order_release, std::memory_order_relaxed));
        }
        release();
    }


    void thread_exits() noexcept {
        free_list(local_);
        local_ = nullptr;
        free_list(remote_.exchange(nullptr, std::memory_order_acquire));
        release();
    }

    void release() noexcept {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            free_list(local_);
            free_list(remote_.exchange(nullptr, std::memory_order_acquire));
            delete this;
        }
    }

    static void free_list(Header* h) noexcept {
        while (h != nullptr) {
            Header* next = h->next;
            ::operator delete(h);
            h = next;
        }
    }

    std::atomic<Header*> remote_{nullptr};   // freed by other threads
    std::atomic<std::size_t> refs_{1};       // the thread + one per block out
    Header* local_ = nullptr;                // owner only
    std::size_t local_count_ = 0;            // owner only
};

}  // namespace cbm::detail
