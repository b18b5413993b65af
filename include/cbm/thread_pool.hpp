// cbm/thread_pool.hpp - cbm::ThreadPool: an elastic pool of threads with a
// bounded queue, the executor cbm ships for trigger_async() (executor.hpp).
//
//   cbm::ThreadPool pool({.min_threads = 2, .max_threads = 8, .queue_capacity = 10'000,
//                         .overflow = cbm::Overflow::block, .idle_timeout = 30s});
//   cbm::CallbackGroup<void(const Order&)> g({.executor = pool.executor()});
//   g.trigger_async(order);
//   pool.drain();     // the queue is empty and nothing runs
//   pool.shutdown();  // runs what is queued, takes nothing new, joins
//
// * Elastic: it starts min_threads threads, and starts another (up to
//   max_threads) whenever a task is queued while more tasks wait than
//   threads are idle. A thread beyond min_threads that finds nothing to do
//   for idle_timeout exits.
// * Bounded: at most queue_capacity tasks wait. When the queue is full,
//   execute() blocks until there is room (Overflow::block), throws
//   std::system_error(cbm::errc::queue_full) (Overflow::reject), or runs the
//   task on the calling thread (Overflow::caller_runs). A task of this pool
//   that submits to it while it is full never blocks (it would wait for
//   itself, or for threads all waiting likewise): it runs the new task
//   itself, as with caller_runs.
// * Shutdown: shutdown() (and the destructor) stops taking work, lets the
//   threads run every task already queued, and joins them. Afterwards
//   execute() throws std::system_error(cbm::errc::executor_shut_down), and
//   no task runs. Tasks that the queued ones submit meanwhile are refused
//   the same way.
// * Errors: a task that throws is counted (ThreadPoolMetrics::task_errors)
//   and its exception goes to ThreadPoolOptions::on_task_error, if set.
//   (cbm's own tasks never throw: failures of callbacks reach the group's
//   handlers and the AsyncResult.)
// * A task that calls drain() or shutdown() on its own pool gets
//   std::logic_error: it would wait for itself.
//
// Thread safety: every member may be called from any thread; executors
// (copies of executor()) may outlive the pool: execute() on them throws
// executor_shut_down.
//
// Synchronisation: one mutex protects the queue and the counts; tasks run
// without it. The queue is a ring of Tasks that grows by doubling up to the
// capacity, so a task costs no allocation once the ring has grown. A thread
// takes a share of the waiting tasks (up to 8) under one lock, and looks
// for work a little while (64 yields, reading a relaxed copy of the queue's
// size) before it sleeps, so that a busy pool is fed without system calls;
// a producer wakes a thread only if one sleeps. The copy is only a hint:
// every decision is made again under the mutex.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <list>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "errc.hpp"
#include "executor.hpp"
#include "metrics.hpp"

namespace cbm {

// What execute() does when the queue is full.
enum class Overflow : std::uint8_t {
    block,        // wait for room (a task of the pool itself runs the new task instead)
    reject,       // throw std::system_error(cbm::errc::queue_full)
    caller_runs,  // run the task on the calling thread
};

// Fields in this order for designated initializers.
struct ThreadPoolOptions {
    std::size_t min_threads = 1;  // kept even when idle (0: none while idle)
    std::size_t max_threads = std::max<std::size_t>(1, std::thread::hardware_concurrency());
    std::size_t queue_capacity = 10'000;  // tasks waiting at most (>= 1)
    Overflow overflow = Overflow::block;
    std::chrono::nanoseconds idle_timeout = std::chrono::seconds(30);  // for threads beyond min_threads
    std::function<void(std::exception_ptr)> on_task_error = {};        // a task threw (on its thread)
};

class ThreadPool;

namespace detail {

// The shared part of a pool: its threads and every executor hold a
// reference, so an executor that outlives the ThreadPool object finds it
// shut down rather than freed.
class PoolCore {
public:
    explicit PoolCore(ThreadPoolOptions options) : options_(std::move(options)) {
        if (options_.max_threads == 0) throw std::invalid_argument("cbm::ThreadPool: max_threads must be at least 1");
        if (options_.min_threads > options_.max_threads) {
            throw std::invalid_argument("cbm::ThreadPool: min_threads (" + std::to_string(options_.min_threads) +
                                        ") exceeds max_threads (" + std::to_string(options_.max_threads) + ")");
        }
        if (options_.queue_capacity == 0) {
            throw std::invalid_argument("cbm::ThreadPool: queue_capacity must be at least 1");
        }
        if (options_.idle_timeout.count() <= 0) {
            throw std::invalid_argument("cbm::ThreadPool: idle_timeout must be positive");
        }
    }
    PoolCore(const PoolCore&) = delete;
    PoolCore& operator=(const PoolCore&) = delete;

    void add_ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release_ref() noexcept {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }

    // Starts the min_threads threads. Throws std::system_error when a
    // thread cannot start (the caller then shuts down).
    void start() {
        std::lock_guard<std::mutex> lock(mutex_);
        while (threads_ < options_.min_threads) spawn_locked();
    }

    // True on a thread of this pool.
    bool on_worker() const noexcept { return current_pool() == this; }

    // See ThreadPool::Executor::execute.
    void submit(Task&& task) {
        std::list<Worker> exited;  // joined after the lock is released
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            if (stopping_) {
                throw std::system_error(make_error_code(errc::executor_shut_down),
                                        "cbm::ThreadPool: shut down, no task is taken");
            }
            if (queue_.size() < options_.queue_capacity) break;
            if (options_.overflow == Overflow::reject) {
                ++rejected_;
                throw std::system_error(make_error_code(errc::queue_full),
                                        "cbm::ThreadPool: the queue is full (queue_capacity " +
                                            std::to_string(options_.queue_capacity) + ")");
            }
            if (options_.overflow == Overflow::caller_runs || on_worker()) {
                ++ran_on_caller_;
                ++busy_;
                lock.unlock();
                // Inside this task the thread counts as the pool's: its
                // drain() or shutdown() would wait for itself.
                const PoolCore* const outer = std::exchange(current_pool(), this);
                run_task(task);
                current_pool() = outer;
                lock.lock();
                finish_task_locked();
                return;
            }
            ++blocked_producers_;
            room_.wait(lock);
            --blocked_producers_;
        }
        queue_.push(std::move(task));
        queued_hint_.store(queue_.size(), std::memory_order_relaxed);
        ++submitted_;
        if (queue_.size() > idle_threads_ + spinning_ && threads_ < options_.max_threads) {
            take_exited_locked(exited);
            try {
                spawn_locked();
            } catch (...) {
                // No new thread: the task waits for the existing ones; with
                // none at all it would wait forever, so it is refused.
                if (threads_ == 0) {
                    task = queue_.take_back();  // not consumed: the caller still has it
                    queued_hint_.store(queue_.size(), std::memory_order_relaxed);
                    --submitted_;
                    throw;
                }
            }
        }
        if (idle_threads_ > 0) work_.notify_one();
        lock.unlock();
        for (Worker& w : exited) w.thread.join();  // their loops returned: only the thread's exit is waited for
    }

    void drain() {
        if (on_worker()) {
            throw std::logic_error("cbm::ThreadPool::drain: called from a task of this pool, which would wait for "
                                   "itself; drain from another thread");
        }
        std::unique_lock<std::mutex> lock(mutex_);
        ++drainers_;
        idle_.wait(lock, [this] { return queue_.empty() && busy_ == 0; });
        --drainers_;
    }

    // `from_destructor`: called by ~ThreadPool, which may run inside a task
    // of the pool (its thread is then left to finish that task, and then
    // what is still queued).
    void shutdown(bool from_destructor) {
        const bool in_task = on_worker();
        if (in_task && !from_destructor) {
            throw std::logic_error("cbm::ThreadPool::shutdown: called from a task of this pool, which would wait "
                                   "for itself; shut down from another thread");
        }
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
            work_.notify_all();
            room_.notify_all();
        }
        // The workers run what is queued, then exit; none is started any
        // more. Join them all, except this thread if it is one: its entry
        // stays, detached, for its loop to mark.
        bool self_is_worker = false;
        for (;;) {
            std::list<Worker> workers;
            {
                std::lock_guard<std::mutex> lock(mutex_);
                for (auto it = workers_.begin(); it != workers_.end();) {
                    auto next = std::next(it);
                    if (it->thread.joinable()) workers.splice(workers.end(), workers_, it);
                    it = next;
                }
            }
            if (workers.empty()) break;
            for (auto it = workers.begin(); it != workers.end();) {
                auto next = std::next(it);
                if (it->thread.get_id() == std::this_thread::get_id()) {
                    it->thread.detach();
                    self_is_worker = true;
                    std::lock_guard<std::mutex> lock(mutex_);
                    workers_.splice(workers_.end(), workers, it);
                } else {
                    it->thread.join();
                }
                it = next;
            }
        }
        // Tasks that callers run (caller_runs) finish too, and a concurrent
        // shutdown() returns only once the threads it did not join are gone.
        std::vector<Task> left;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            ++drainers_;
            idle_.wait(lock, [&] {
                return threads_ == (self_is_worker ? 1u : 0u) && busy_ == (in_task ? 1u : 0u);
            });
            --drainers_;
            // Nothing is left unless no thread could ever start, or the last
            // one is this thread (it runs them after its task). Tasks left
            // with no thread are destroyed unrun, outside the lock (cbm's
            // report themselves dropped).
            if (threads_ == 0) {
                while (!queue_.empty()) left.push_back(queue_.pop());
            queued_hint_.store(0, std::memory_order_relaxed);
            }
        }
    }

    ThreadPoolMetrics metrics() const {
        std::lock_guard<std::mutex> lock(mutex_);
        ThreadPoolMetrics m;
        m.threads = threads_;
        m.busy = busy_;
        m.queued = queue_.size();
        m.queue_capacity = options_.queue_capacity;
        m.blocked_producers = blocked_producers_;
        m.min_threads = options_.min_threads;
        m.max_threads = options_.max_threads;
        m.peak_threads = peak_threads_;
        m.submitted = submitted_;
        m.completed = completed_;
        m.rejected = rejected_;
        m.ran_on_caller = ran_on_caller_;
        m.task_errors = task_errors_;
        m.threads_started = threads_started_;
        m.shut_down = stopping_;
        return m;
    }

private:
    ~PoolCore() = default;

    struct Worker {
        std::thread thread;
        bool exited = false;  // under mutex_: its loop returned (join is quick)
    };

    // A ring of tasks, growing by doubling.
    class TaskRing {
    public:
        std::size_t size() const noexcept { return size_; }
        bool empty() const noexcept { return size_ == 0; }
        void push(Task&& t) {
            if (size_ == slots_.size()) grow();
            slots_[(head_ + size_) % slots_.size()] = std::move(t);
            ++size_;
        }
        Task pop() noexcept {
            Task t = std::move(slots_[head_]);
            head_ = (head_ + 1) % slots_.size();
            --size_;
            return t;
        }
        Task take_back() noexcept {
            --size_;
            return std::move(slots_[(head_ + size_) % slots_.size()]);
        }

    private:
        void grow() {
            std::vector<Task> bigger(slots_.empty() ? 64 : slots_.size() * 2);
            for (std::size_t i = 0; i < size_; ++i) bigger[i] = std::move(slots_[(head_ + i) % slots_.size()]);
            slots_ = std::move(bigger);
            head_ = 0;
        }
        std::vector<Task> slots_;
        std::size_t head_ = 0;
        std::size_t size_ = 0;
    };

    static constexpr std::size_t kBatch = 8;  // tasks a thread takes under one lock, at most
    static constexpr int kSpins = 64;         // yields before a thread sleeps

    static const PoolCore*& current_pool() noexcept {
        thread_local const PoolCore* pool = nullptr;
        return pool;
    }

    // Under mutex_. Throws std::system_error (no thread) or std::bad_alloc;
    // nothing changed then.
    void spawn_locked() {
        workers_.emplace_back();
        Worker& w = workers_.back();
        add_ref();
        try {
            w.thread = std::thread([this, &w] { work(w); });
        } catch (...) {
            workers_.pop_back();
            release_ref();
            throw;
        }
        ++threads_;
        ++threads_started_;
        peak_threads_ = std::max(peak_threads_, threads_);
    }

    // Under mutex_: moves the workers that exited on their idle timeout to
    // `out`, to be joined without the lock (a thread_local destructor of an
    // exiting thread may still use the pool).
    void take_exited_locked(std::list<Worker>& out) noexcept {
        for (auto it = workers_.begin(); it != workers_.end();) {
            auto next = std::next(it);
            if (it->exited && it->thread.joinable()) out.splice(out.end(), workers_, it);
            it = next;
        }
    }

    void run_task(Task& task) noexcept {
        try {
            task();
        } catch (...) {
            std::lock_guard<std::mutex> lock(mutex_);
            ++task_errors_;
            if (options_.on_task_error) {
                try {
                    options_.on_task_error(std::current_exception());
                } catch (...) {
                    // The handler's own failure stops nothing.
                }
            }
        }
        task.reset();  // the function's captures go before the task counts as finished
    }

    void finish_task_locked() noexcept { finish_tasks_locked(1); }
    void finish_tasks_locked(std::size_t n) noexcept {
        --busy_;
        completed_ += n;
        if (drainers_ > 0) idle_.notify_all();
    }

    void work(Worker& self) noexcept {
        current_pool() = this;
        std::unique_lock<std::mutex> lock(mutex_);
        Task batch[kBatch];
        for (;;) {
            if (!queue_.empty()) {
                // A share of what waits, so that one lock serves several
                // tasks without starving the other threads.
                const std::size_t n = std::clamp<std::size_t>(queue_.size() / threads_, 1, kBatch);
                for (std::size_t i = 0; i < n; ++i) batch[i] = queue_.pop();
                queued_hint_.store(queue_.size(), std::memory_order_relaxed);
                ++busy_;
                if (blocked_producers_ > 0) room_.notify_all();
                lock.unlock();
                for (std::size_t i = 0; i < n; ++i) run_task(batch[i]);
                lock.lock();
                finish_tasks_locked(n);
                continue;
            }
            if (stopping_) break;
            // Before sleeping, look for work a little while without the lock:
            // a producer then queues without waking anyone (no system call).
            ++spinning_;
            lock.unlock();
            for (int i = 0; i < kSpins && queued_hint_.load(std::memory_order_relaxed) == 0; ++i) {
                std::this_thread::yield();
            }
            lock.lock();
            --spinning_;
            if (!queue_.empty() || stopping_) continue;
            ++idle_threads_;
            bool timed_out = false;
            if (threads_ > options_.min_threads) {
                timed_out = work_.wait_for(lock, options_.idle_timeout) == std::cv_status::timeout;
            } else {
                work_.wait(lock);
            }
            --idle_threads_;
            if (timed_out && queue_.empty() && !stopping_ && threads_ > options_.min_threads) break;
        }
        --threads_;
        self.exited = true;
        if (drainers_ > 0) idle_.notify_all();
        lock.unlock();
        current_pool() = nullptr;
        release_ref();
    }

    const ThreadPoolOptions options_;
    std::atomic<std::uint32_t> refs_{1};
    mutable std::mutex mutex_;
    std::condition_variable work_;  // a task was queued, or stopping_
    std::condition_variable room_;  // the queue has room (blocked producers)
    std::condition_variable idle_;  // the queue is empty and nothing runs (drainers)
    TaskRing queue_;
    std::atomic<std::size_t> queued_hint_{0};  // queue_.size(), stored under mutex_, read by spinning threads
    std::list<Worker> workers_;  // started and not yet joined (list: a worker keeps a reference to its entry)
    std::size_t threads_ = 0;           // running their loop
    std::size_t idle_threads_ = 0;      // asleep, waiting for work (a producer wakes one)
    std::size_t spinning_ = 0;          // looking for work without the lock, before sleeping
    std::size_t busy_ = 0;              // running a task (on a pool thread or a caller)
    std::size_t blocked_producers_ = 0;
    std::size_t drainers_ = 0;
    std::size_t peak_threads_ = 0;
    std::uint64_t threads_started_ = 0;
    std::uint64_t submitted_ = 0;
    std::uint64_t completed_ = 0;
    std::uint64_t rejected_ = 0;
    std::uint64_t ran_on_caller_ = 0;
    std::uint64_t task_errors_ = 0;
    bool stopping_ = false;
};

}  // namespace detail

class ThreadPool {
public:
    // A handle to the pool that satisfies cbm::Executor. Copies are cheap
    // (one atomic increment) and may outlive the pool.
    class Executor {
    public:
        Executor(const Executor& other) noexcept : core_(other.core_) { core_->add_ref(); }
        Executor& operator=(const Executor& other) noexcept {
            Executor copy(other);
            std::swap(core_, copy.core_);
            return *this;
        }
        ~Executor() { core_->release_ref(); }

        // Effect: queues `f` to run on a thread of the pool, or (queue full)
        // blocks, throws or runs it here, per Overflow (see the top of
        // thread_pool.hpp). Throws: std::system_error with errc::queue_full
        // or errc::executor_shut_down, std::bad_alloc; `f` is not run then.
        void execute(Task&& task) const { core_->submit(std::move(task)); }
        template <class F>
            requires(!std::is_same_v<std::remove_cvref_t<F>, Task> && std::is_invocable_v<std::decay_t<F>&>)
        void execute(F&& f) const {
            core_->submit(Task(std::forward<F>(f)));
        }

        // True on a thread of this pool (inside one of its tasks).
        bool running_in_this_thread() const noexcept { return core_->on_worker(); }

        friend bool operator==(const Executor& a, const Executor& b) noexcept { return a.core_ == b.core_; }

    private:
        friend class ThreadPool;
        explicit Executor(detail::PoolCore* core) noexcept : core_(core) { core_->add_ref(); }
        detail::PoolCore* core_;
    };

    // Effect: starts options.min_threads threads.
    // Throws: std::invalid_argument for max_threads 0, min_threads above
    // max_threads, queue_capacity 0 or an idle_timeout <= 0;
    // std::system_error when a thread cannot start (none is left running).
    explicit ThreadPool(ThreadPoolOptions options = {}) : core_(new detail::PoolCore(std::move(options))) {
        try {
            core_->start();
        } catch (...) {
            core_->shutdown(true);
            core_->release_ref();
            throw;
        }
    }
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    // Effect: shutdown(). If it runs on a thread of this pool (a task
    // destroying its pool), that thread is not joined: it finishes its task.
    ~ThreadPool() {
        core_->shutdown(true);
        core_->release_ref();
    }

    Executor executor() const noexcept { return Executor(core_); }

    // Effect: waits until the queue is empty and no task runs (tasks queued
    // meanwhile are waited for too).
    // Throws: std::logic_error when called from a task of this pool.
    void drain() { core_->drain(); }

    // Effect: takes no more work, runs every task already queued, joins the
    // threads. No task of this pool runs once it returns. Idempotent.
    // Throws: std::logic_error when called from a task of this pool.
    void shutdown() { core_->shutdown(false); }

    // The pool's numbers now (under its lock).
    ThreadPoolMetrics metrics() const { return core_->metrics(); }

private:
    detail::PoolCore* core_;
};

}  // namespace cbm
