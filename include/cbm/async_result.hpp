// cbm/async_result.hpp - cbm::AsyncResult: the outcome of one
// trigger_async(), ready once every callback it started has finished.
//
//   cbm::AsyncResult r = group.trigger_async(order);
//   if (r.wait_for(10ms)) log(r.get().invoked);
//   cbm::TriggerResult res = co_await group.trigger_async(order);  // in a coroutine
//
// It is a shared handle, like std::shared_future: copies see the same
// result, and any thread may wait on it. The TriggerResult counts every
// callback the trigger found: invoked (including those that threw), failed,
// and skipped (filtered, unregistered before its turn, its context canceled
// before it started, refused by an open circuit, or not started after
// ErrorPolicy::stop). Failures are listed in the order they completed.
//
// Memory ordering: every task adds its counts (if any) before its acq_rel
// decrement of the pending count, and the walk stores how many tasks it
// made before its own; these read-modify-writes form one release sequence,
// so whoever brings the count to zero sees all of it. That thread then sets
// kDone in a word of flags with an acq_rel fetch_or (ready() acquires it).
// A thread that waits, or a coroutine that awaits, first sets kWatched; only
// then does the completion take the mutex, notify and resume. The two
// read-modify-writes on one word are totally ordered, so either the
// completion sees kWatched (and a waiter, which checks kDone under the mutex
// before it sleeps, is woken; an awaiter, listed under the mutex, is
// resumed), or the waiter or awaiter sees kDone and does not sleep or
// suspend. Each awaiting coroutine is resumed exactly once.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <utility>
#include <vector>

#include "detail/block_cache.hpp"
#include "error_policy.hpp"

namespace cbm {

class AsyncResult;

namespace detail {

// What one trigger_async shares with its tasks: the counts, the failures,
// and the completion. Counted: each AsyncResult handle holds a reference,
// and the unfinished work holds one more, all together: `pending` counts
// the tasks not finished plus the submission (the walk), and whoever brings
// it to zero completes the result and drops that reference. So a task
// costs the state one read-modify-write (its finish_task), not four.
//
// The walk does not know in advance how many tasks it will hand out, and a
// task may finish before the next one is made; so `pending` starts at
// kSubmitting, far above any count, tasks only ever subtract, and the walk,
// when done, subtracts kSubmitting less the number of tasks it made. Until
// then `pending` cannot reach zero.
//
// Most tasks invoke their callback and nothing else happens to them: such a
// task adds nothing to the counts (finish_task), and is counted as invoked
// at the end, from the number of tasks less those that did add theirs.
//
// Layout: the state holds only the words every task touches (these, and
// the arguments and context of the derived AsyncState), on as few cache
// lines as may be. What only waiters, awaiters and failure lists need
// (AsyncWatch: a mutex, a condition variable, the failures, the awaiting
// coroutines) is made on first need and installed with a compare-exchange
// (release; readers acquire). Most results are never waited on and never
// fail: their state (120 bytes with small arguments, 136 with its block's
// header) spans two or three cache lines rather than five, which is what
// the producer writes and the pool thread that finishes reads, per trigger.
struct AsyncWatch {
    mutable std::mutex mutex;
    std::condition_variable cv;
    std::vector<Failure> failures;                       // under mutex, in the order they were merged
    std::vector<std::coroutine_handle<>> continuations;  // under mutex: coroutines awaiting the result
};

class AsyncStateBase {
public:
    AsyncStateBase(const AsyncStateBase&) = delete;
    AsyncStateBase& operator=(const AsyncStateBase&) = delete;

    void add_ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release_ref() noexcept {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }

    // Made by the caller of trigger_async and freed by whichever thread
    // finishes last: recycled per thread (block_cache.hpp), not through
    // malloc's arena lock.
    static void* operator new(std::size_t n) { return BlockCache::allocate(n); }
    static void operator delete(void* p) noexcept { BlockCache::deallocate(p); }

    // One task finished with `part`. The last to finish (a task, or the
    // walk) completes the result, which may resume a coroutine on this
    // thread, and may free the state: the caller must not touch it
    // afterwards.
    void finish_task(TriggerResult&& part) noexcept {
        if (part.invoked != 1 || part.skipped != 0 || part.failed != 0 || part.stopped || !part.failures.empty()) {
            merged_tasks_.fetch_add(1, std::memory_order_relaxed);
            merge(std::move(part));
        }
        finish(1);
    }
    // The walk finished, having made `tasks` tasks (each of which calls
    // finish_task once). The same contract as finish_task.
    void finish_submission(std::uint64_t tasks) noexcept {
        tasks_ = tasks;  // published by the release half of finish()
        finish(kSubmitting - tasks);
    }

    // Adds one task's (or the submission's) counts and failures.
    void merge(TriggerResult&& part) noexcept {
        if (part.invoked != 0) invoked_.fetch_add(part.invoked, std::memory_order_relaxed);
        if (part.skipped != 0) skipped_.fetch_add(part.skipped, std::memory_order_relaxed);
        if (part.blocked != 0) blocked_.fetch_add(part.blocked, std::memory_order_relaxed);
        if (part.failed != 0) failed_.fetch_add(part.failed, std::memory_order_relaxed);
        if (part.stopped) stopped_.store(true, std::memory_order_relaxed);
        if (part.failures.empty()) return;
        try {
            AsyncWatch& w = watch();
            std::lock_guard<std::mutex> lock(w.mutex);
            for (Failure& f : part.failures) w.failures.push_back(std::move(f));
        } catch (...) {
            // Out of memory: the failure stays counted in `failed`.
        }
    }

    // ErrorPolicy::stop after a failure: tasks not yet started are skipped.
    void request_stop() noexcept { stop_.store(true, std::memory_order_relaxed); }
    bool stop_requested() const noexcept { return stop_.load(std::memory_order_relaxed); }

    ErrorPolicy policy() const noexcept { return policy_; }

protected:
    explicit AsyncStateBase(ErrorPolicy policy) noexcept : policy_(policy) {}
    // By the last holder of a reference (acq_rel above): it sees the watch.
    virtual ~AsyncStateBase() { delete watch_.load(std::memory_order_relaxed); }

private:
    friend class cbm::AsyncResult;

    // The watch, made by the first thread that needs it (see the layout
    // note). Throws: std::bad_alloc.
    AsyncWatch& watch() {
        AsyncWatch* w = watch_.load(std::memory_order_acquire);
        if (w != nullptr) return *w;
        auto* made = new AsyncWatch;
        if (watch_.compare_exchange_strong(w, made, std::memory_order_acq_rel, std::memory_order_acquire)) return *made;
        delete made;  // another thread installed one first: `w` is it
        return *w;
    }

    static constexpr std::uint64_t kSubmitting = std::uint64_t{1} << 62;  // see the top of the class

    void finish(std::uint64_t n) noexcept {
        if (pending_.fetch_sub(n, std::memory_order_acq_rel) == n) {
            complete();
            release_ref();  // the unfinished work's reference
        }
    }

    static constexpr std::uint32_t kDone = 1;     // every task has finished
    static constexpr std::uint32_t kWatched = 2;  // a thread waits or a coroutine awaits: completion takes the mutex

    void complete() noexcept {
        if ((flags_.fetch_or(kDone, std::memory_order_acq_rel) & kWatched) == 0) return;  // nobody to tell
        // Whoever set kWatched installed the watch first, and the fetch_or
        // above read that flag: the watch is visible here.
        AsyncWatch& w = *watch_.load(std::memory_order_acquire);
        std::vector<std::coroutine_handle<>> awaiting;
        {
            // A waiter checks kDone under the mutex before it sleeps, and an
            // awaiter is listed under it.
            std::lock_guard<std::mutex> lock(w.mutex);
            awaiting.swap(w.continuations);
        }
        w.cv.notify_all();
        for (std::coroutine_handle<> h : awaiting) h.resume();
    }

    bool ready() const noexcept { return (flags_.load(std::memory_order_acquire) & kDone) != 0; }

    void wait() {
        if (ready()) return;
        AsyncWatch& w = watch();
        flags_.fetch_or(kWatched, std::memory_order_acq_rel);
        std::unique_lock<std::mutex> lock(w.mutex);
        w.cv.wait(lock, [this] { return ready(); });
    }
    template <class Clock, class Duration>
    bool wait_until(const std::chrono::time_point<Clock, Duration>& time) {
        if (ready()) return true;
        AsyncWatch& w = watch();
        flags_.fetch_or(kWatched, std::memory_order_acq_rel);
        std::unique_lock<std::mutex> lock(w.mutex);
        return w.cv.wait_until(lock, time, [this] { return ready(); });
    }

    // True when the coroutine was suspended and will be resumed by the
    // completion; false when the result is ready already (do not suspend).
    // Throws: std::bad_alloc (the coroutine is not suspended then).
    bool suspend(std::coroutine_handle<> h) {
        AsyncWatch& w = watch();
        std::lock_guard<std::mutex> lock(w.mutex);
        if (ready()) return false;
        w.continuations.push_back(h);
        // The two read-modify-writes of flags_ are ordered: if the
        // completion's came first, it will not look at the list.
        if ((flags_.fetch_or(kWatched, std::memory_order_acq_rel) & kDone) != 0) {
            w.continuations.pop_back();
            return false;
        }
        return true;
    }

    // Once ready().
    TriggerResult result() const {
        TriggerResult r;
        if (const AsyncWatch* w = watch_.load(std::memory_order_acquire)) {
            std::lock_guard<std::mutex> lock(w->mutex);
            r.failures = w->failures;
        }
        r.failed = failed_.load(std::memory_order_relaxed);
        r.stopped = stopped_.load(std::memory_order_relaxed);
        r.invoked = invoked_.load(std::memory_order_relaxed) +
                    static_cast<std::size_t>(tasks_ - merged_tasks_.load(std::memory_order_relaxed));
        r.skipped = skipped_.load(std::memory_order_relaxed);
        r.blocked = blocked_.load(std::memory_order_relaxed);
        return r;
    }

    std::atomic<std::uint32_t> refs_{2};  // the first handle's, and the unfinished work's
    std::atomic<std::uint32_t> flags_{0};  // kDone, kWatched
    std::atomic<std::uint64_t> pending_{kSubmitting};
    std::atomic<std::size_t> invoked_{0};       // by the walk, and by tasks that merged their counts
    std::atomic<std::size_t> skipped_{0};
    std::atomic<std::size_t> blocked_{0};
    std::atomic<std::uint64_t> merged_tasks_{0};  // tasks that added their counts (finish_task)
    std::uint64_t tasks_ = 0;                     // made by the walk; set before its finish
    std::atomic<std::size_t> failed_{0};
    std::atomic<bool> stopped_{false};
    std::atomic<bool> stop_{false};
    const ErrorPolicy policy_;
    std::atomic<AsyncWatch*> watch_{nullptr};  // made on first need (see the layout note)
};

}  // namespace detail

// The outcome of one trigger_async(). Default-constructed: no result
// (valid() is false; the other members throw std::logic_error).
// Thread safety: every member may be called from any thread, on the same
// handle or on copies.
// Blocking: wait() and get() block until every callback of the trigger has
// finished. Calling them from a task of the executor those callbacks need
// can wait for itself (a pool whose every thread waits so); co_await, or
// wait outside the pool.
class AsyncResult {
public:
    AsyncResult() noexcept = default;
    AsyncResult(const AsyncResult& other) noexcept : state_(other.state_) {
        if (state_ != nullptr) state_->add_ref();
    }
    AsyncResult(AsyncResult&& other) noexcept : state_(std::exchange(other.state_, nullptr)) {}
    AsyncResult& operator=(AsyncResult other) noexcept {
        std::swap(state_, other.state_);
        return *this;
    }
    ~AsyncResult() {
        if (state_ != nullptr) state_->release_ref();
    }

    bool valid() const noexcept { return state_ != nullptr; }

    // True once every callback of the trigger has finished.
    bool ready() const { return state().ready(); }

    // Blocks until ready().
    // Throws: std::bad_alloc when it must wait and the result's watch (made
    // by the first thread that waits, awaits or records a failure) cannot
    // be made; likewise wait_for, wait_until, get and co_await.
    void wait() const { state().wait(); }
    // Blocks until ready() or `timeout` has passed. Returns ready().
    template <class Rep, class Period>
    bool wait_for(const std::chrono::duration<Rep, Period>& timeout) const {
        return wait_until(std::chrono::steady_clock::now() + timeout);
    }
    template <class Clock, class Duration>
    bool wait_until(const std::chrono::time_point<Clock, Duration>& time) const {
        return state().wait_until(time);
    }

    // Waits, then returns the result (a copy: get() may be called again).
    // Throws: under ErrorPolicy::rethrow, the first failure's exception (as
    // trigger() would; a failure that could not be listed for want of
    // memory is counted in `failed` only, and then nothing is rethrown).
    TriggerResult get() const {
        wait();
        TriggerResult r = state().result();
        if (state().policy() == ErrorPolicy::rethrow && r.failed != 0 && !r.failures.empty()) {
            std::rethrow_exception(r.failures.front().error);
        }
        return r;
    }

    // Awaitable: `co_await r` resumes the coroutine once ready() (on the
    // thread that finished the last callback, or at once if ready), and
    // gives get(). Any number of coroutines may await one result.
    bool await_ready() const { return ready(); }
    bool await_suspend(std::coroutine_handle<> h) const { return state().suspend(h); }
    TriggerResult await_resume() const { return get(); }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

    explicit AsyncResult(detail::AsyncStateBase* adopted) noexcept : state_(adopted) {}

private:
    detail::AsyncStateBase& state() const {
        if (state_ == nullptr) throw std::logic_error("cbm::AsyncResult: no result (default-constructed or moved from)");
        return *state_;
    }
    detail::AsyncStateBase* state_ = nullptr;
};

}  // namespace cbm
