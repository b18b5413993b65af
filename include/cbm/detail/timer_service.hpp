// cbm/detail/timer_service.hpp - the one timer thread of the process: every
// context deadline is an entry in its min-heap.
//
// Lifetime: see service_lifetime.hpp.
// Synchronisation: one mutex protects every field; TimerEntry::expire is
// called without it, on the timer thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "non_copyable.hpp"
#include "service_lifetime.hpp"

namespace cbm::detail {

// One pending deadline. Intrusive: the heap stores pointers and keeps each
// entry's position, so removal is O(log n) without a search.
struct TimerEntry {
    using clock = std::chrono::steady_clock;
    static constexpr std::size_t kNotScheduled = SIZE_MAX;

    clock::time_point due{};
    std::size_t heap_index = kNotScheduled;         // under the service's mutex
    void (*expire)(TimerEntry*) noexcept = nullptr;  // on the timer thread, no lock held
};

// A min-heap of TimerEntry served by one thread.
class TimerService : NonCopyable {
public:
    using clock = TimerEntry::clock;

    ~TimerService() { shut_down(); }

    // The one service of the process (never destroyed; its thread is joined
    // at exit).
    static TimerService& shared() { return immortal<TimerService>(); }

    // Effect: `entry->expire(entry)` runs on the timer thread at or after
    // `entry->due`, unless remove(entry) returns true first. Starts the
    // thread on first use. The entry must stay valid until then.
    // Returns: false (and schedules nothing) after shut_down().
    // Throws: std::bad_alloc or std::system_error (thread start); nothing is
    // scheduled then.
    bool schedule(TimerEntry* entry) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_) return false;
        heap_.push_back(entry);
        place(heap_.size() - 1, entry);
        sift_up(entry->heap_index);
        if (!thread_.joinable()) {
            try {
                if (this == &shared()) register_exit_guard<TimerService>();
                thread_ = std::thread([this] { run(); });
            } catch (...) {
                remove_at(entry->heap_index);
                throw;
            }
            return true;
        }
        // Wake the thread only if it would otherwise sleep past this entry:
        // a timeout that is cancelled before the current wake-up costs no
        // system call.
        if (entry->due < thread_wakes_at_) {
            thread_wakes_at_ = entry->due;
            wake_.notify_one();
        }
        return true;
    }

    // Returns: true if `entry` was pending and now never expires; false if it
    // was not scheduled or its expire() has already been started.
    bool remove(TimerEntry* entry) noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        if (entry->heap_index == TimerEntry::kNotScheduled) return false;
        remove_at(entry->heap_index);
        return true;
    }

    // True on the timer thread itself (while it expires an entry, for
    // example): code that may run user code hands it elsewhere then.
    static bool on_timer_thread() noexcept { return timer_thread_flag(); }

    std::size_t pending() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return heap_.size();
    }

    // Effect: stops the thread and joins it (unless called on it). Pending
    // entries never expire. Idempotent.
    void shut_down() noexcept {
        std::thread thread;
        bool busy = false;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            stopping_ = true;
            wake_.notify_all();
            if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) {
                busy = !idle_.wait_for(lock, kExitGrace, [this] { return !expiring_; });
            }
            thread.swap(thread_);
        }
        join_or_detach(thread, busy);
    }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

private:
    static bool& timer_thread_flag() noexcept {
        thread_local bool is_timer_thread = false;
        return is_timer_thread;
    }

    void run() {
        timer_thread_flag() = true;
        std::unique_lock<std::mutex> lock(mutex_);
        while (!stopping_) {
            if (heap_.empty()) {
                thread_wakes_at_ = clock::time_point::max();
                wake_.wait(lock);
                continue;
            }
            TimerEntry* top = heap_.front();
            // A copy: the entry may be removed and freed while we sleep, and
            // wait_until reads its deadline argument again after waking.
            const clock::time_point due = top->due;
            if (due > clock::now()) {
                thread_wakes_at_ = due;
                wake_.wait_until(lock, due);
                continue;
            }
            thread_wakes_at_ = clock::time_point::min();  // awake: it looks again right after
            remove_at(0);
            expiring_ = true;
            lock.unlock();
            top->expire(top);
            lock.lock();
            expiring_ = false;
            idle_.notify_all();
        }
    }

    void place(std::size_t i, TimerEntry* e) noexcept {
        heap_[i] = e;
        e->heap_index = i;
    }
    void sift_up(std::size_t i) noexcept {
        TimerEntry* e = heap_[i];
        while (i > 0) {
            const std::size_t parent = (i - 1) / 2;
            if (!(e->due < heap_[parent]->due)) break;
            place(i, heap_[parent]);
            i = parent;
        }
        place(i, e);
    }
    void sift_down(std::size_t i) noexcept {
        TimerEntry* e = heap_[i];
        const std::size_t n = heap_.size();
        for (;;) {
            std::size_t child = 2 * i + 1;
            if (child >= n) break;
            if (child + 1 < n && heap_[child + 1]->due < heap_[child]->due) ++child;
            if (!(heap_[child]->due < e->due)) break;
            place(i, heap_[child]);
            i = child;
        }
        place(i, e);
    }
    void remove_at(std::size_t i) noexcept {
        TimerEntry* removed = heap_[i];
        TimerEntry* last = heap_.back();
        heap_.pop_back();
        removed->heap_index = TimerEntry::kNotScheduled;
        if (i < heap_.size()) {
            place(i, last);
            sift_up(i);
            sift_down(last->heap_index);
        }
    }

    mutable std::mutex mutex_;
    std::condition_variable wake_;
    std::condition_variable idle_;                                     // expiring_ became false
    std::vector<TimerEntry*> heap_;                                    // under mutex_
    bool expiring_ = false;                                            // under mutex_: in expire()
    clock::time_point thread_wakes_at_ = clock::time_point::min();     // under mutex_
    bool stopping_ = false;                                            // under mutex_
    std::thread thread_;                                               // under mutex_
};

}  // namespace cbm::detail
