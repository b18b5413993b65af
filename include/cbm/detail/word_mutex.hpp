// cbm/detail/word_mutex.hpp - a mutex in one word (futex-style, on
// std::atomic wait/notify).
//
// A context tree has one per cancelable node, so size matters more than
// fairness; its critical sections are a few pointer updates.
// Memory ordering: acquire on taking it, release on giving it back.
#pragma once

#include <atomic>
#include <cstdint>

namespace cbm::detail {

class WordMutex {
public:
    void lock() noexcept {
        std::uint32_t seen = kFree;
        if (word_.compare_exchange_strong(seen, kLocked, std::memory_order_acquire)) return;
        for (int spins = 0; spins < 64 && seen != kFree; ++spins) {
            seen = word_.load(std::memory_order_relaxed);
            if (seen == kFree && word_.compare_exchange_strong(seen, kLocked, std::memory_order_acquire)) return;
        }
        // Contended: announce a sleeper (kContended) and sleep until freed.
        while (word_.exchange(kContended, std::memory_order_acquire) != kFree) {
            word_.wait(kContended, std::memory_order_relaxed);
        }
    }
    void unlock() noexcept {
        if (word_.exchange(kFree, std::memory_order_release) == kContended) word_.notify_one();
    }

private:
    static constexpr std::uint32_t kFree = 0;
    static constexpr std::uint32_t kLocked = 1;
    static constexpr std::uint32_t kContended = 2;
    std::atomic<std::uint32_t> word_{kFree};
};

}  // namespace cbm::detail
