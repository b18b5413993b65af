// cbm/detail/barrier.hpp - asymmetric memory barriers.
//
// Memory ordering:
//   cbm's readers (trigger, Snapshot::load) publish "I am here" with a plain
//   store and then read shared state; writers (unregister, reclamation,
//   Snapshot::store) change shared state and then read what readers
//   published. That store->load pattern (Dekker's) needs a full fence on both
//   sides. We make the reader's half free and the writer's half expensive:
//
//   * light_barrier() (readers): a compiler-only fence when the process is
//     registered for Linux membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
//     otherwise a real seq_cst fence.
//   * heavy_barrier() (writers): membarrier(), which runs a full barrier on
//     every CPU currently running a thread of this process; otherwise a
//     seq_cst fence that pairs with the readers' fences.
//
//   ThreadSanitizer cannot see membarrier, nor (with g++) stand-alone fences.
//   Under -fsanitize=thread both barriers become a seq_cst read-modify-write
//   of one shared atomic. RMWs of one object are totally ordered and each
//   reads the previous one, so every pair of barriers is ordered by
//   happens-before, which is strictly stronger than the fences it replaces
//   and visible to TSan. It is slow; it only exists for sanitizer builds.
//
//   Define CBM_NO_MEMBARRIER to force the portable fence path (tests use it
//   to exercise both paths).
#pragma once

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <thread>

#if defined(__linux__) && !defined(CBM_NO_MEMBARRIER)
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#define CBM_DETAIL_HAVE_MEMBARRIER 1
#else
#define CBM_DETAIL_HAVE_MEMBARRIER 0
#endif

#if defined(__SANITIZE_THREAD__)
#define CBM_DETAIL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CBM_DETAIL_TSAN 1
#endif
#endif
#ifndef CBM_DETAIL_TSAN
#define CBM_DETAIL_TSAN 0
#endif

namespace cbm::detail {

enum class BarrierMode : int { unknown, membarrier, fence, tsan };

// Written once, by the first thread that needs a barrier (under the
// function-local static below); read relaxed on every light_barrier().
inline std::atomic<BarrierMode> g_barrier_mode{BarrierMode::unknown};

inline BarrierMode choose_barrier_mode() noexcept {
#if CBM_DETAIL_TSAN
    return BarrierMode::tsan;
#elif CBM_DETAIL_HAVE_MEMBARRIER
    const long supported = ::syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    if (supported < 0 || (supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0) {
        return BarrierMode::fence;
    }
    if (::syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) != 0) {
        return BarrierMode::fence;
    }
    return BarrierMode::membarrier;
#else
    return BarrierMode::fence;
#endif
}

// Must run before a thread's first light_barrier(): readers call it when they
// acquire their thread record, writers before their first heavy_barrier().
inline BarrierMode ensure_barrier_mode() noexcept {
    static const BarrierMode mode = [] {
        const BarrierMode chosen = choose_barrier_mode();
        g_barrier_mode.store(chosen, std::memory_order_release);
        return chosen;
    }();
    return mode;
}

// Only used in TSan builds; see the file comment.
inline std::atomic<unsigned> g_tsan_barrier_word{0};

// `mode` is g_barrier_mode as read earlier by this thread (readers read it
// once per trigger rather than once per barrier).
inline void light_barrier(BarrierMode mode) noexcept {
#if CBM_DETAIL_TSAN
    (void)mode;
    g_tsan_barrier_word.fetch_add(1, std::memory_order_seq_cst);
#else
    if (mode == BarrierMode::membarrier) {
        std::atomic_signal_fence(std::memory_order_seq_cst);
    } else {
        std::atomic_thread_fence(std::memory_order_seq_cst);
    }
#endif
}

inline void light_barrier() noexcept { light_barrier(g_barrier_mode.load(std::memory_order_relaxed)); }

inline void heavy_barrier() noexcept {
#if CBM_DETAIL_TSAN
    g_tsan_barrier_word.fetch_add(1, std::memory_order_seq_cst);
#else
    if (ensure_barrier_mode() == BarrierMode::membarrier) {
#if CBM_DETAIL_HAVE_MEMBARRIER
        std::atomic_thread_fence(std::memory_order_seq_cst);
        // It can fail transiently (ENOMEM for its CPU mask); readers rely on
        // it, so retry, and give up loudly rather than run unsynchronized.
        for (int attempt = 0; ::syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0; ++attempt) {
            if (attempt == 10000) {
                std::fputs("cbm: membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) keeps failing\n", stderr);
                std::abort();
            }
            std::this_thread::yield();
        }
        std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
    } else {
        std::atomic_thread_fence(std::memory_order_seq_cst);
    }
#endif
}

// A writer-side full fence for the cases where no heavy barrier is needed
// (see thread_records.hpp: "no other thread holds a record").
inline void full_fence() noexcept {
#if CBM_DETAIL_TSAN
    g_tsan_barrier_word.fetch_add(1, std::memory_order_seq_cst);
#else
    std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

}  // namespace cbm::detail
