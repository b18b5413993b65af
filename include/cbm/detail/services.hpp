// cbm/detail/services.hpp - the process-wide threads behind contexts: one
// timer thread (deadlines) and a small pool that runs after_func functions.
//
// Both are started lazily, by the first deadline or the first after_func, and
// are "immortal" objects (placement-new into static storage, never destroyed),
// so a static Context destroyed after them can still remove its timer. Their
// threads are stopped by a guard object registered with the C++ runtime when
// the first thread starts: at program exit, after the statics constructed
// later than that have been destroyed. Work scheduled after the shutdown is
// discarded, never run (deadlines no longer fire). A thread still inside user
// code (a blocked after_func, a slow std::stop_callback on an expiring
// context) one second into the shutdown is detached rather than joined, so
// exit never hangs on it - as Go does not wait for goroutines.
//
// Synchronisation: each service has one mutex that protects all its fields;
// callbacks (TimerEntry::expire, RunnerTask::run) are called without it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>
#include <thread>
#include <utility>
#include <vector>

namespace cbm::detail {

// How long the exit guards wait for user code still running on the services'
// threads before detaching them.
inline constexpr std::chrono::seconds kExitGrace{1};

// Joins `t`, or detaches it when it is the calling thread or `still_busy`.
inline void join_or_detach(std::thread& t, bool still_busy) noexcept {
    if (!t.joinable()) return;
    if (still_busy || t.get_id() == std::this_thread::get_id()) {
        t.detach();
    } else {
        t.join();
    }
}

// Makes the C++ runtime call Service::shared().shut_down() at exit (once,
// however often this is called): a function-local static's destructor.
template <class Service>
void register_exit_guard() {
    struct Guard {
        ~Guard() { Service::shared().shut_down(); }
    };
    static Guard guard;
    (void)guard;
}

// An object constructed on first use and never destroyed.
template <class T>
T& immortal() {
    alignas(T) static unsigned char storage[sizeof(T)];
    static T* const instance = ::new (static_cast<void*>(storage)) T();
    return *instance;
}

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
class TimerService {
public:
    using clock = TimerEntry::clock;

    TimerService() = default;
    TimerService(const TimerService&) = delete;
    TimerService& operator=(const TimerService&) = delete;
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
    void run() {
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

// A unit of work for the AsyncRunner. Intrusive: queuing allocates nothing.
struct RunnerTask {
    RunnerTask* next_task = nullptr;  // under the runner's mutex while queued
    virtual void run() noexcept = 0;      // on a runner thread
    virtual void discard() noexcept = 0;  // instead of run(), after shutdown

protected:
    RunnerTask() = default;
    ~RunnerTask() = default;
};

// Runs tasks on threads other than the poster's, like a goroutine per task:
// a task that blocks does not hold up the others, because a new thread is
// started whenever more tasks wait than threads are idle. Threads are kept
// (idle) once started, so the pool is as large as the most tasks that ever
// ran at once.
class AsyncRunner {
public:
    AsyncRunner() = default;
    AsyncRunner(const AsyncRunner&) = delete;
    AsyncRunner& operator=(const AsyncRunner&) = delete;
    ~AsyncRunner() { shut_down(); }

    static AsyncRunner& shared() { return immortal<AsyncRunner>(); }

    // Effect: t->run() on a runner thread soon, or t->discard() if the runner
    // was shut down. Last resort, when no thread can be started and none
    // exists (resource exhaustion): runs t on the caller's thread rather
    // than losing it.
    void post(RunnerTask* t) noexcept {
        {
            std::unique_lock<std::mutex> lock(mutex_);
            if (!stopping_) {
                t->next_task = nullptr;
                (tail_ != nullptr ? tail_->next_task : head_) = t;
                tail_ = t;
                ++queued_;
                if (queued_ <= idle_threads_) {
                    ready_.notify_one();
                    return;
                }
                try {
                    if (this == &shared()) register_exit_guard<AsyncRunner>();
                    threads_.emplace_back([this] { work(); });
                    return;
                } catch (...) {
                    if (!threads_.empty()) return;  // an existing thread will get to it
                    unlink_last(t);
                    lock.unlock();
                    t->run();
                    return;
                }
            }
        }
        t->discard();
    }

    // Effect: discards queued tasks, lets running ones finish, joins the
    // threads (all but the caller's own). Idempotent.
    void shut_down() noexcept {
        RunnerTask* queued = nullptr;
        std::vector<std::thread> threads;
        bool busy = false;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            stopping_ = true;
            queued = std::exchange(head_, nullptr);
            tail_ = nullptr;
            queued_ = 0;
            ready_.notify_all();
            // Tasks running on this thread (shut_down called from one) never finish first.
            busy = !idle_.wait_for(lock, kExitGrace, [this] { return running_ <= running_here(); });
            threads.swap(threads_);
        }
        while (queued != nullptr) std::exchange(queued, queued->next_task)->discard();
        for (std::thread& t : threads) join_or_detach(t, busy);
    }

    std::size_t thread_count() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return threads_.size();
    }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

private:
    // Under mutex_: takes back the task just queued.
    void unlink_last(RunnerTask* t) noexcept {
        RunnerTask** link = &head_;
        RunnerTask* previous = nullptr;
        while (*link != t) {
            previous = *link;
            link = &(*link)->next_task;
        }
        *link = nullptr;
        tail_ = previous;
        --queued_;
    }

    void work() {
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            while (head_ == nullptr && !stopping_) {
                ++idle_threads_;
                ready_.wait(lock);
                --idle_threads_;
            }
            if (stopping_) return;
            RunnerTask* t = head_;
            head_ = t->next_task;
            if (head_ == nullptr) tail_ = nullptr;
            --queued_;
            ++running_;
            lock.unlock();
            on_runner_thread() = true;
            t->run();
            on_runner_thread() = false;
            lock.lock();
            --running_;
            idle_.notify_all();
        }
    }

    static bool& on_runner_thread() noexcept {
        thread_local bool running_a_task = false;
        return running_a_task;
    }
    std::size_t running_here() const noexcept { return on_runner_thread() ? 1 : 0; }

    mutable std::mutex mutex_;
    std::condition_variable ready_;
    std::condition_variable idle_;  // running_ dropped
    RunnerTask* head_ = nullptr;  // under mutex_
    RunnerTask* tail_ = nullptr;  // under mutex_
    std::size_t queued_ = 0;      // under mutex_
    std::size_t idle_threads_ = 0;  // under mutex_: threads waiting for a task
    std::size_t running_ = 0;       // under mutex_: tasks being run
    bool stopping_ = false;       // under mutex_
    std::vector<std::thread> threads_;  // under mutex_
};

}  // namespace cbm::detail
