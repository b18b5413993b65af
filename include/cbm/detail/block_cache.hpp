// cbm/detail/block_cache.hpp - fixed-size blocks recycled per thread, for
// objects made on one thread and freed on another (the shared state of a
// trigger_async, made by the producer and freed by the pool thread that
// finishes last). glibc's malloc serves that pattern through its arena
// lock; here a block freed elsewhere goes back to the cache of the thread
// that made it, through a lock-free stack, and that thread takes the whole
// stack back with one exchange when its own blocks run out.
//
// Size: a cache owns at most kMaxOwned blocks (out or cached) in the steady
// state. A burst may make more, and the cache then keeps as many as the
// burst needed, up to kMaxRetained, so that the next burst of the same size
// (a producer that posts faster than its consumer for a while, again and
// again) finds them instead of calling the allocator for each. It lets the
// extra go again, halving what it keeps, each time it has served
// kDecayRounds times that many blocks without needing a new one. Blocks
// beyond what it keeps are freed as they come back: by the owner at once,
// or, for blocks freed elsewhere, when the owner takes the stack back. No
// step walks a list it does not consume. A thread that stops allocating
// keeps what it has until it exits.
//
// Lifetime: a cache lives while its thread does or while any of its blocks
// is out; the last to see it go frees the cached blocks and the cache. The
// owner counts the blocks it has out in a plain word (`out_`), and other
// threads count their frees down in `refs_`, which starts at kOwnerBias;
// when the thread exits it subtracts kOwnerBias less `out_`, so `refs_` then
// holds the blocks still out, and reaches zero exactly once. A block costs
// its owner no atomic operation, and a remote free two (the push and the
// count), both on the line its own free touches anyway.
//
// Memory ordering: a remote free pushes with a release compare-exchange;
// the owner takes the stack with an acquire exchange, so it sees the block
// as the freeing thread left it. The owner alone pops from `local`, and
// takes `remote` only whole, so the stack has no ABA problem. `refs_` is
// acq_rel: whoever brings it to zero sees every push before it.
//
// Under AddressSanitizer the cache is off (plain operator new), so that a
// use after free of a recycled block is still caught.
#pragma once

#include <algorithm>
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

// One size class: blocks of `BlockBytes` (header included), at most
// `MaxOwned` of them per thread in the steady state. Each class has its own
// caches.
template <std::size_t BlockBytes, std::size_t MaxOwned, std::size_t MaxRetained = MaxOwned>
class BasicBlockCache {
    static_assert(MaxRetained >= MaxOwned, "cbm: a block cache cannot keep fewer blocks after a burst than before");

public:
    static constexpr std::size_t kBlockBytes = BlockBytes;      // including the header
    static constexpr std::size_t kMaxOwned = MaxOwned;          // blocks a thread keeps, out or cached, in the steady state
    static constexpr std::size_t kMaxRetained = MaxRetained;    // the most it keeps after bursts
    static constexpr std::size_t kDecayRounds = 8;              // see the top

    // A block for `n` bytes (aligned for std::max_align_t).
    static void* allocate(std::size_t n) {
#if !defined(CBM_BLOCK_CACHE_OFF)
        if (n <= kBlockBytes - sizeof(Header)) {
            if (BasicBlockCache* cache = mine()) return cache->take() + 1;
        }
#endif
        auto* h = static_cast<Header*>(::operator new(sizeof(Header) + n));
        h->owner = nullptr;
        return h + 1;
    }

    static void deallocate(void* p) noexcept {
        Header* h = static_cast<Header*>(p) - 1;
        BasicBlockCache* owner = h->owner;
        if (owner == nullptr) {
            ::operator delete(h);
            return;
        }
        owner->give_back(h);
    }

private:
    struct alignas(std::max_align_t) Header {
        BasicBlockCache* owner;
        Header* next;
    };

    static constexpr std::uint64_t kOwnerBias = std::uint64_t{1} << 62;  // see the top

    BasicBlockCache() = default;

    // This thread's cache (made on first use); null while the thread exits
    // or when none could be made. The pointer and the flag are trivially
    // destructible thread_locals, so they stay readable while other
    // thread_local destructors free blocks.
    static BasicBlockCache*& slot() noexcept {
        thread_local BasicBlockCache* cache = nullptr;
        return cache;
    }
    static bool& exited() noexcept {
        thread_local bool flag = false;
        return flag;
    }
    struct ExitHook {
        ~ExitHook() {
            BasicBlockCache* cache = slot();
            slot() = nullptr;
            exited() = true;
            if (cache != nullptr) cache->thread_exits();
        }
    };
    static BasicBlockCache* mine() noexcept {
        BasicBlockCache* cache = slot();
        if (cache == nullptr && !exited()) {
            cache = new (std::nothrow) BasicBlockCache();
            if (cache != nullptr) {
                thread_local ExitHook hook;  // registered once, with the first cache
                (void)hook;
                slot() = cache;
            }
        }
        return cache;
    }

    // On the owner thread: a cached block, else a new one.
    Header* take() {
        if (local_ == nullptr) local_ = remote_.exchange(nullptr, std::memory_order_acquire);
        Header* h = local_;
        if (h != nullptr) {
            local_ = h->next;
            if (++served_ >= kDecayRounds * keep_ && keep_ > kMaxOwned) {
                keep_ = std::max(kMaxOwned, keep_ / 2);
                served_ = 0;
            }
            // After a burst: free what came back beyond what it keeps.
            while (owned_ > keep_ && local_ != nullptr) {
                Header* excess = local_;
                local_ = excess->next;
                ::operator delete(excess);
                --owned_;
            }
        } else {
            h = static_cast<Header*>(::operator new(kBlockBytes));
            h->owner = this;
            ++owned_;
            keep_ = std::max(keep_, std::min(owned_, kMaxRetained));  // this much was needed at once
            served_ = 0;
        }
        ++out_;
        return h;
    }

    void give_back(Header* h) noexcept {
        if (slot() == this) {
            --out_;
            if (owned_ > keep_) {
                ::operator delete(h);
                --owned_;
            } else {
                h->next = local_;
                local_ = h;
            }
            return;
        }
        Header* top = remote_.load(std::memory_order_relaxed);
        do {
            h->next = top;
        } while (!remote_.compare_exchange_weak(top, h, std::memory_order_release, std::memory_order_relaxed));
        release(1);
    }

    void thread_exits() noexcept {
        free_list(local_);
        local_ = nullptr;
        free_list(remote_.exchange(nullptr, std::memory_order_acquire));
        release(kOwnerBias - out_);
    }

    void release(std::uint64_t n) noexcept {
        if (refs_.fetch_sub(n, std::memory_order_acq_rel) == n) {
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

    // Other threads write these two; the owner's words sit on a line of
    // their own, so that its every allocation does not contend with them.
    alignas(64) std::atomic<Header*> remote_{nullptr};  // freed by other threads
    std::atomic<std::uint64_t> refs_{kOwnerBias};       // less one per remote free (see the top)
    alignas(64) Header* local_ = nullptr;               // owner only
    std::uint64_t out_ = 0;                     // owner only: taken, less those the owner freed
    std::size_t owned_ = 0;                     // owner only: blocks made, less those freed
    std::size_t keep_ = kMaxOwned;              // owner only: blocks it keeps, kMaxOwned to kMaxRetained
    std::size_t served_ = 0;                    // owner only: blocks taken from the cache since it last made one or halved keep_
};

// The shared states of trigger_async (async_dispatch.hpp): about 120 bytes
// with the arguments of a small signature; a state with arguments too
// large for a block takes operator new instead.
using BlockCache = BasicBlockCache<256, 256>;

}  // namespace cbm::detail
