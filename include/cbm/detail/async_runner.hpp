// cbm/detail/async_runner.hpp - the shared runner of after_func functions: a
// thread per task that would otherwise wait (Go's goroutine per AfterFunc).
//
// Lifetime: see service_lifetime.hpp.
// Synchronisation: one mutex protects every field; RunnerTask::run and
// discard are called without it.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "non_copyable.hpp"
#include "service_lifetime.hpp"

namespace cbm::detail {

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
class AsyncRunner : NonCopyable {
public:
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
