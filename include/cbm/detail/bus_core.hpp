// cbm/detail/bus_core.hpp - the part of an EventBus that does not know the
// event types: the bounded queue of posted events, the heap of work that
// waits (redeliveries, ack deadlines), who delivers (process(), run(), the
// executor's tasks, a timer for the waiting work), the handlers, and the
// counts that make "nothing is lost uncounted" checkable.
//
// Synchronisation: one mutex (`mutex_`) protects the queue, the heap, the
// counts of outstanding work and the handlers; no user code runs under it.
// Counters read by metrics() are relaxed atomics. An event is outstanding
// from post() until every subscription has settled it (delivered and
// acked, dead-lettered, filtered out, or found no subscriber); drain()
// waits for that count to reach zero.
//
// Lifetime: the core is counted. The EventBus holds one reference, and so
// does every task handed to an executor, the timer while it is armed, and a
// parked delivery, so a task that runs after the bus is gone finds the core
// closed, not freed. The core owns the channels (per event type), so they
// too outlive every task; the EventBus ends their subscriptions when it goes.
// Work handed to a subscription's own executor is registered with the core
// until its task claims it, so close() concludes (dead-letters) what such an
// executor has not run yet, and the task, run later, does nothing.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "../context.hpp"
#include "../errc.hpp"
#include "../error_policy.hpp"
#include "../executor.hpp"
#include "../histogram.hpp"
#include "../resilience.hpp"
#include "../subscribe_options.hpp"
#include "../thread_pool.hpp"
#include "block_cache.hpp"
#include "intrusive_ref.hpp"
#include "resilience_state.hpp"
#include "timer_service.hpp"

namespace cbm::detail {

class BusCore;
class ChannelBase;

// Envelopes are made by the posting thread and freed by the delivering
// one: blocks recycled per thread (block_cache.hpp) spare that pattern the
// allocator's arena lock. An envelope larger than a block is allocated
// plainly. A thread keeps 1024 blocks (128 KiB), or, after bursts of
// posts that outran delivery, as many as a burst needed, up to 32768
// (4 MiB), decaying while it posts less.
using EnvelopeCache = BasicBlockCache<128, 1024, 32768>;

// One posted event, shared by all its deliveries (counted). The event
// itself lives in the derived Envelope<E>.
class EnvelopeBase : public SelfCounted<EnvelopeBase> {
public:
    static void* operator new(std::size_t n) { return EnvelopeCache::allocate(n); }
    static void operator delete(void* p) noexcept { EnvelopeCache::deallocate(p); }

    EnvelopeBase(ChannelBase* owner, Context ctx, std::chrono::steady_clock::time_point posted) noexcept
        : channel(owner), context(std::move(ctx)), posted_at(posted) {}

    ChannelBase* const channel;  // channels live as long as their bus core
    const Context context;       // the poster's current_context(): deliveries run under it
    const std::chrono::steady_clock::time_point posted_at;  // by the bus clock

protected:
    friend class SelfCounted<EnvelopeBase>;
    virtual ~EnvelopeBase() = default;
};

using EnvelopeRef = IntrusiveRef<EnvelopeBase, MemberRefOps>;

// Work that waits in the heap until `due` (by the bus clock): a redelivery,
// or the deadline of a parked manual-ack delivery.
class DelayedWork {
public:
    virtual ~DelayedWork() = default;
    // When due, on a delivering thread (no lock held).
    virtual void run() noexcept = 0;
    // Instead of run(), when the bus closes first (no lock held).
    virtual void discard() noexcept = 0;
    // Whether it still holds outstanding work (a settled ack deadline does not).
    virtual bool live() const noexcept { return true; }

    std::chrono::steady_clock::time_point due{};
    std::uint64_t seq = 0;  // equal dues run in the order they were scheduled
    static constexpr std::size_t kNotQueued = SIZE_MAX;
    std::size_t heap_index = kNotQueued;  // under the core's mutex
};

// Work handed to an executor that is not the bus's own (a subscription's):
// registered with the core while its task waits. Exactly one of these
// happens to it, decided under the core's mutex by who claims it first: its
// task runs it, or its task is dropped unrun (or refused) and it is
// discarded, or close() discards it. Counted: the task holds a reference,
// and whoever claims it holds one while concluding it.
class HandedWork : public SelfCounted<HandedWork> {
public:

    // By its task, as a delivery of the bus (no lock held).
    virtual void run() noexcept = 0;
    // Instead of run() (no lock held): `closing` when close() discards it
    // (dead-letter it: errc::bus_closed), else its task was refused or
    // dropped unrun, with `why`.
    virtual void discard(bool closing, std::exception_ptr why) noexcept = 0;

protected:
    friend class SelfCounted<HandedWork>;
    virtual ~HandedWork() = default;

private:
    friend class BusCore;
    HandedWork* prev_ = nullptr;  // the core's list of registered work (under its mutex)
    HandedWork* next_ = nullptr;
    bool linked_ = false;
    bool dropped_in_submit_ = false;  // its task was destroyed inside execute() (the submitting thread's)
};

using HandedRef = IntrusiveRef<HandedWork, MemberRefOps>;

// Per-event-type counts (in ChannelBase).
struct TypeCounters {
    std::atomic<std::uint64_t> published{0};  // publish() calls (metrics on)
    std::atomic<std::uint64_t> unrouted{0};   // events that found no subscription at all
    LatencyHistogram queue_wait_ns;           // post to the start of its delivery (metrics on)
    // Events that left the queue (delivered or discarded), counted by the
    // delivering thread once per run of events: posted - taken are queued.
    std::atomic<std::uint64_t> taken{0};
    // Under the bus core's mutex (the queue's own lock, taken anyway):
    std::uint64_t posted = 0;    // post() calls that queued (or ran) the event
    std::uint64_t rejected = 0;  // post() calls refused: queue full or bus closed
};

// The posted events waiting, in posting order: a vector and the index of
// its first live entry, so that a consumer takes every event with one swap
// and a vector that has grown keeps its capacity (no allocation per event
// in the steady state). Under the core's mutex.
class PostedQueue {
public:
    std::size_t size() const noexcept { return items_.size() - head_; }
    bool empty() const noexcept { return size() == 0; }
    void push(EnvelopeRef&& e) { items_.push_back(std::move(e)); }
    EnvelopeRef take_front() noexcept {
        EnvelopeRef e = std::move(items_[head_++]);
        if (head_ == items_.size()) reset();
        return e;
    }
    // Appends every waiting event to `out` (cheapest when `out` is empty).
    void take_all(std::vector<EnvelopeRef>& out) {
        if (head_ == 0 && out.empty()) {
            out.swap(items_);
        } else {
            out.insert(out.end(), std::make_move_iterator(items_.begin() + static_cast<std::ptrdiff_t>(head_)),
                       std::make_move_iterator(items_.end()));
        }
        reset();
    }

private:
    void reset() noexcept {
        items_.clear();
        head_ = 0;
    }
    std::vector<EnvelopeRef> items_;
    std::size_t head_ = 0;
};

// The type-erased side of Channel<E>.
class ChannelBase {
public:
    ChannelBase(std::string type_name, BusCore& core, bool metrics)
        : type_name_(std::move(type_name)), core_(&core), metrics_(metrics) {}
    ChannelBase(const ChannelBase&) = delete;
    ChannelBase& operator=(const ChannelBase&) = delete;
    virtual ~ChannelBase() = default;

    // Delivers posted events (in order, all of this channel) to every
    // subscription, on the calling thread or by handing subscriptions with
    // an executor to it. No lock held. The caller keeps the references.
    virtual void deliver_posted(EnvelopeRef* envelopes, std::size_t count) noexcept = 0;
    // A posted event the bus will never deliver (closed): dead-letter it.
    virtual void discard_posted(EnvelopeRef envelope, std::exception_ptr why) noexcept = 0;
    // Ends every subscription (as unregister() does), when the EventBus goes.
    virtual void end_subscriptions() noexcept = 0;

    const std::string& type_name() const noexcept { return type_name_; }
    BusCore& core() const noexcept { return *core_; }
    TypeCounters counters;

private:
    const std::string type_name_;
    BusCore* const core_;

public:
    // The core's metrics setting, kept here: publish() reads it without
    // going through the core.
    bool metrics_on() const noexcept { return metrics_; }

private:
    const bool metrics_;
};

// How many times a delivery is tried per event and how long to wait.
inline std::chrono::nanoseconds redelivery_wait(const RedeliveryBackoff& b, std::uint32_t delivered) noexcept {
    RetryOptions r;
    r.initial_backoff = b.initial;
    r.multiplier = b.multiplier;
    r.max_backoff = b.max;
    r.jitter = b.jitter;
    return backoff_after(r, delivered);
}

class BusCore : public SelfCounted<BusCore> {
public:
    BusCore(const EventBusOptions& options)
        : executor_(options.executor),
          capacity_(options.queue_capacity),
          overflow_(options.overflow),
          metrics_(options.metrics),
          clock_(options.clock != nullptr ? options.clock : &steady_resilience_clock()) {
        if (capacity_ == 0) throw std::invalid_argument("cbm::EventBus: queue_capacity must be at least 1");
        timer_.core = this;
        timer_.expire = [](TimerEntry* entry) noexcept {
            BusCore* core = static_cast<CoreTimer*>(entry)->core;
            core->on_timer();
            core->release_ref();  // the armed timer's reference
        };
    }

    bool metrics_on() const noexcept { return metrics_; }
    ResilienceClock& clock() const noexcept { return *clock_; }
    bool has_executor() const noexcept { return static_cast<bool>(executor_); }

    // ---- outstanding work -------------------------------------------------

    // One more piece of work that drain() must wait for (a redelivery or a
    // parked delivery made outside the queue, by publish()).
    void begin_work() noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        ++outstanding_;
    }
    // That work is done (settled, dead-lettered, dropped).
    void end_work() noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        if (--outstanding_ == 0) wake_idle_locked();
    }

    // ---- posting ------------------------------------------------------------

    // Effect: queues `envelope` (counted as outstanding until delivered), or
    // refuses it per the Overflow policy, or delivers it here (caller_runs,
    // and a full queue seen by a thread that is delivering this bus's events,
    // which would otherwise wait for itself).
    // Throws: std::system_error(errc::queue_full) (reject) or
    // (errc::bus_closed); nothing is queued then.
    void post(EnvelopeRef envelope) {
        ChannelBase& channel = *envelope->channel;
        bool wake = false;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            for (;;) {
                if (closed_) {
                    ++channel.counters.rejected;
                    throw std::system_error(make_error_code(errc::bus_closed), "cbm::EventBus::post");
                }
                if (ready_.size() < capacity_) break;
                if (overflow_ == Overflow::reject) {
                    ++channel.counters.rejected;
                    throw std::system_error(make_error_code(errc::queue_full), "cbm::EventBus::post");
                }
                if (overflow_ == Overflow::caller_runs || delivering_here()) {
                    ++outstanding_;
                    ++delivering_;
                    ++channel.counters.posted;
                    channel.counters.taken.fetch_add(1, std::memory_order_relaxed);
                    lock.unlock();
                    {
                        DeliveringScope scope(*this);
                        deliver_now(&envelope, 1);
                    }
                    lock.lock();
                    finish_batch_locked(1);
                    return;
                }
                ++blocked_producers_;
                room_.wait(lock);
                --blocked_producers_;
            }
            ready_.push(std::move(envelope));  // (bad_alloc: nothing queued, nothing counted)
            ready_hint_.store(ready_.size(), std::memory_order_relaxed);
            ++outstanding_;
            ++channel.counters.posted;
            wake = sleeping_consumers_ != 0;
            if (executor_) ++pumps_outstanding_;
        }
        // Outside the lock, so that the woken consumer does not find it held.
        if (wake) work_.notify_one();
        if (executor_) submit_pump();
    }

    // Effect: `work` runs when due (by the bus clock), on a delivering
    // thread; the caller counted it with begin_work() or holds outstanding
    // work it hands over. After close(), it is discarded instead (now).
    void schedule(std::unique_ptr<DelayedWork> work) noexcept {
        bool arm = false;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            if (!closed_) {
                work->seq = next_seq_++;
                DelayedWork* raw = work.get();
                try {
                    delayed_.push_back(std::move(work));
                } catch (...) {
                    lock.unlock();
                    // No room to wait: run it now rather than lose it.
                    work->run();
                    return;
                }
                raw->heap_index = delayed_.size() - 1;
                sift_up(raw->heap_index);
                if (sleeping_consumers_ != 0) work_.notify_all();
                arm = executor_ && raw->due < timer_armed_for_;  // sooner than the timer fires
            }
        }
        if (work) {  // closed: not moved into the heap
            work->discard();
            return;
        }
        if (arm) arm_timer();
    }

    // ---- delivering ---------------------------------------------------------

    // Effect: delivers, on this thread, every posted event queued now and
    // every waiting work that is due by the bus clock.
    // Returns: how many it delivered (events and due works).
    std::size_t process() { return deliver_here(kBatch, false); }

    // Effect: delivers as process() does, then waits for more, until `ctx`
    // is canceled or the bus closes.
    // Returns: how many it delivered.
    std::size_t run(const Context& ctx) {
        std::size_t done = 0;
        std::stop_callback wake(ctx.done(), [this] {
            std::lock_guard<std::mutex> lock(mutex_);
            work_.notify_all();
        });
        for (;;) {
            done += process();
            // Look for new events a little while before sleeping (a relaxed
            // hint, decided again under the lock): a busy bus then feeds its
            // consumer without a system call per event.
            for (int spin = 0; spin < kSpinsBeforeSleep && ready_hint_.load(std::memory_order_relaxed) == 0; ++spin) {
                std::this_thread::yield();
            }
            std::unique_lock<std::mutex> lock(mutex_);
            if (closed_ || ctx.canceled()) return done;
            if (has_work_locked()) continue;
            ++sleeping_consumers_;
            wait_for_work_locked(lock);
            --sleeping_consumers_;
        }
    }

    // Effect: returns once nothing is outstanding: every posted event, every
    // redelivery and every parked delivery settled. Without an executor it
    // delivers on this thread meanwhile (as process()); with one it lets
    // the executor deliver, and delivers itself only what no task of the
    // executor will (a task the executor dropped).
    // Throws: std::logic_error from inside a delivery of this bus (it would
    // wait for itself).
    void drain() {
        if (delivering_here()) {
            throw std::logic_error("cbm::EventBus::drain: called from inside a delivery of this bus, which it would wait for");
        }
        for (;;) {
            std::unique_lock<std::mutex> lock(mutex_);
            if (outstanding_ == 0) return;
            if ((!executor_ || pumps_outstanding_ == 0) && has_work_locked()) {
                // No task of the executor will deliver it (none is on its
                // way: refused, dropped, or the timer has not fired yet).
                lock.unlock();
                process();
                continue;
            }
            if (!executor_) {
                ++sleeping_consumers_;
                ++draining_;
                wait_for_work_locked(lock);
                --draining_;
                --sleeping_consumers_;
            } else {
                ++draining_;
                idle_.wait_for(lock, std::chrono::milliseconds(50));  // also re-checks for dropped tasks
                --draining_;
            }
        }
    }

    // Effect: takes no more posts (they throw errc::bus_closed), wakes run()
    // and blocked posters, waits until no delivery of queued work runs on
    // another thread (a publish() in progress is not waited for), then
    // dead-letters (errc::bus_closed) every posted event not delivered,
    // every waiting redelivery and every delivery handed to a
    // subscription's executor that has not started, and times out every
    // parked delivery. Idempotent; several threads may close at once.
    void close() noexcept {
        std::vector<EnvelopeRef> ready;
        std::vector<std::unique_ptr<DelayedWork>> delayed;
        HandedWork* handed = nullptr;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            closed_ = true;
            work_.notify_all();
            room_.notify_all();
            // A handler of this bus that closes it (perhaps nested in
            // several deliveries) waits for the others only; so does each of
            // several closers that are handlers.
            const std::size_t mine = deliveries_here();
            closing_deliveries_ += mine;
            ++closers_;
            idle_.notify_all();
            idle_.wait(lock, [&] { return delivering_ <= closing_deliveries_; });
            closing_deliveries_ -= mine;
            --closers_;
            // The handed work not claimed yet is this closer's to discard.
            for (HandedWork* w = handed_; w != nullptr; w = w->next_) {
                w->add_ref();
                w->linked_ = false;
            }
            handed = std::exchange(handed_, nullptr);
            try {
                ready_.take_all(ready);
            } catch (...) {  // no memory to move them: deliver none, dead-letter them where they are
                while (!ready_.empty()) ready.push_back(ready_.take_front());
            }
            ready_hint_.store(0, std::memory_order_relaxed);
            delayed.swap(delayed_);
            for (auto& w : delayed) w->heap_index = DelayedWork::kNotQueued;
        }
        {
            std::lock_guard<std::mutex> timer_lock(timer_mutex_);  // arm_timer() sees closed_ under it
            if (TimerService::shared().remove(&timer_)) release_ref();
        }
        const std::exception_ptr why =
            std::make_exception_ptr(std::system_error(make_error_code(errc::bus_closed), "cbm::EventBus closed"));
        for (EnvelopeRef& envelope : ready) {
            ChannelBase* channel = envelope->channel;
            channel->counters.taken.fetch_add(1, std::memory_order_relaxed);
            channel->discard_posted(std::move(envelope), why);
            end_work();
        }
        for (auto& work : delayed) work->discard();
        while (handed != nullptr) {
            HandedRef work = HandedRef::adopt(handed);  // the reference taken above
            handed = handed->next_;
            work->discard(true, why);
            end_work();
        }
    }

    // ---- work handed to other executors -------------------------------------

    // Effect: registers `work` (outstanding until it concludes) and hands a
    // task for it to `executor`. When the bus is closed it is discarded
    // here instead, as by close(); when `executor` refuses the task (throws)
    // or destroys it inside execute(), discarded here with that error.
    void hand_to(const AnyExecutor& executor, HandedRef work) noexcept {
        {
            std::unique_lock<std::mutex> lock(mutex_);
            if (closed_) {
                lock.unlock();
                work->discard(true, std::make_exception_ptr(std::system_error(make_error_code(errc::bus_closed),
                                                                                "cbm::EventBus closed")));
                return;
            }
            ++outstanding_;
            work->linked_ = true;
            work->prev_ = nullptr;
            work->next_ = handed_;
            if (handed_ != nullptr) handed_->prev_ = work.get();
            handed_ = work.get();
        }
        HandedRef kept = work;  // alive for a refusal, whoever else lets it go
        std::exception_ptr refused;
        SubmittingScope submitting(kept.get());
        try {
            detail::execute_on(executor, Task(HandedTask(this, std::move(work))));
        } catch (...) {
            refused = std::current_exception();
        }
        submitting.end();
        if (!refused && !kept->dropped_in_submit_) return;
        if (!claim_handed(kept.get())) return;  // close() took it meanwhile
        if (!refused) refused = std::make_exception_ptr(std::system_error(make_error_code(errc::task_dropped),
                                                                          "cbm::EventBus: the executor dropped the delivery"));
        {
            DeliveringScope scope(*this);
            kept->discard(false, refused);
        }
        finish_handed();
    }

    // Effect: removes the work `*slot` points to from the heap if it still
    // waits there (it is then destroyed, unrun). `*slot` is read under the
    // core's mutex, and a work that holds such a slot clears it with
    // forget() when destroyed, so it is never read dangling.
    void cancel(const DelayedWork* const* slot) noexcept {
        std::unique_ptr<DelayedWork> removed;  // destroyed after the lock is released
        std::lock_guard<std::mutex> lock(mutex_);
        const DelayedWork* work = *slot;
        if (work == nullptr) return;
        const std::size_t i = work->heap_index;
        if (i == DelayedWork::kNotQueued || i >= delayed_.size() || delayed_[i].get() != work) return;
        removed = take_at(i);
    }
    void forget(const DelayedWork** slot) noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        *slot = nullptr;
    }

    bool closed() const noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        return closed_;
    }

    // ---- handlers ----------------------------------------------------------

    void set_dead_letter_handler(DeadLetterHandler handler) {
        auto fresh = handler ? std::make_shared<const DeadLetterHandler>(std::move(handler)) : nullptr;
        std::lock_guard<std::mutex> lock(mutex_);
        dead_letter_handler_ = std::move(fresh);
    }
    void set_error_handler(ErrorHandler handler) {
        auto fresh = handler ? std::make_shared<const ErrorHandler>(std::move(handler)) : nullptr;
        std::lock_guard<std::mutex> lock(mutex_);
        error_handler_ = std::move(fresh);
    }
    void report_dead_letter(const DeadLetter& letter) noexcept { report(dead_letter_handler_, letter); }
    void report_failure(const Failure& failure) noexcept { report(error_handler_, failure); }

    // ---- numbers -------------------------------------------------------------

    struct QueueNumbers {
        std::size_t queued = 0;            // posted events waiting now
        std::size_t waiting = 0;           // redeliveries and ack deadlines in the heap
        std::size_t outstanding = 0;       // what drain() waits for
        std::size_t blocked_producers = 0;
        bool closed = false;
    };
    QueueNumbers numbers() const {
        std::lock_guard<std::mutex> lock(mutex_);
        std::size_t waiting = 0;
        for (const auto& w : delayed_) waiting += w->live() ? 1 : 0;
        return {ready_.size(), waiting, outstanding_, blocked_producers_, closed_};
    }
    std::size_t capacity() const noexcept { return capacity_; }

    struct TypeCounts {
        std::uint64_t posted = 0;
        std::uint64_t rejected = 0;
        std::uint64_t queued = 0;
    };
    TypeCounts type_counts(const ChannelBase& channel) const {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::uint64_t taken = channel.counters.taken.load(std::memory_order_relaxed);
        return {channel.counters.posted, channel.counters.rejected,
                channel.counters.posted > taken ? channel.counters.posted - taken : 0};
    }

    // True while this thread delivers an event of this bus (a handler runs).
    bool delivering_here() const noexcept { return deliveries_here() != 0; }

    // How many deliveries of this bus this thread is inside (nested: a
    // handler that calls process(), or posts to a full queue).
    std::size_t deliveries_here() const noexcept {
        std::size_t n = 0;
        for (const DeliveringScope* s = DeliveringScope::innermost(); s != nullptr; s = s->outer) {
            n += s->core == this ? 1 : 0;
        }
        return n;
    }

    // Effect: the core takes ownership of `channel` (it lives as long as the
    // core). Returns it.
    ChannelBase* adopt_channel(std::unique_ptr<ChannelBase> channel) {
        std::lock_guard<std::mutex> lock(mutex_);
        channels_.push_back(std::move(channel));
        return channels_.back().get();
    }

    // Effect: ends every channel's subscriptions (the EventBus is going).
    void end_subscriptions() noexcept {
        std::vector<ChannelBase*> channels;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            try {
                for (const auto& c : channels_) channels.push_back(c.get());
            } catch (...) {  // no memory for the list: they end with the core
            }
        }
        for (ChannelBase* c : channels) c->end_subscriptions();
    }

    // Marks this thread as delivering for `core` (a thread-local list, so
    // that nested buses are told apart). Who counts the delivery in
    // delivering_ (which close() waits for) is the caller's business.
    class DeliveringScope {
    public:
        explicit DeliveringScope(BusCore& c) noexcept : core(&c), outer(innermost()) { innermost() = this; }
        ~DeliveringScope() { innermost() = outer; }
        DeliveringScope(const DeliveringScope&) = delete;
        DeliveringScope& operator=(const DeliveringScope&) = delete;

        static const DeliveringScope*& innermost() noexcept {
            thread_local const DeliveringScope* scope = nullptr;
            return scope;
        }

        BusCore* const core;
        const DeliveringScope* const outer;
    };

    // ------------------------------------------------------------------
    // Implementation details follow.

private:
    friend class SelfCounted<BusCore>;
    // Channels go after everything that could still reach them.
    ~BusCore() { channels_.clear(); }

    // Calls the handler `slot` holds (copied under the mutex, called
    // outside it); a handler that throws stops nothing.
    template <class Handler, class Arg>
    void report(const std::shared_ptr<const Handler>& slot, const Arg& arg) noexcept {
        std::shared_ptr<const Handler> handler;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            handler = slot;
        }
        if (!handler) return;
        try {
            (*handler)(arg);
        } catch (...) {
        }
    }

    // The heap of waiting work: a binary min-heap on (due, seq) that keeps
    // each work's position, so that a settled ack deadline is removed at
    // once (and with it what it holds) instead of waiting for its due time.
    static bool earlier(const DelayedWork& a, const DelayedWork& b) noexcept {
        return a.due != b.due ? a.due < b.due : a.seq < b.seq;
    }
    void place(std::size_t i, std::unique_ptr<DelayedWork> w) noexcept {
        w->heap_index = i;
        delayed_[i] = std::move(w);
    }
    void sift_up(std::size_t i) noexcept {
        while (i > 0) {
            const std::size_t parent = (i - 1) / 2;
            if (!earlier(*delayed_[i], *delayed_[parent])) break;
            std::unique_ptr<DelayedWork> child = std::move(delayed_[i]);
            place(i, std::move(delayed_[parent]));
            place(parent, std::move(child));
            i = parent;
        }
    }
    void sift_down(std::size_t i) noexcept {
        const std::size_t n = delayed_.size();
        for (;;) {
            std::size_t least = i;
            for (std::size_t c : {2 * i + 1, 2 * i + 2}) {
                if (c < n && earlier(*delayed_[c], *delayed_[least])) least = c;
            }
            if (least == i) return;
            std::unique_ptr<DelayedWork> top = std::move(delayed_[i]);
            place(i, std::move(delayed_[least]));
            place(least, std::move(top));
            i = least;
        }
    }
    std::unique_ptr<DelayedWork> take_at(std::size_t i) noexcept {
        std::unique_ptr<DelayedWork> out = std::move(delayed_[i]);
        out->heap_index = DelayedWork::kNotQueued;
        if (i + 1 != delayed_.size()) {
            place(i, std::move(delayed_.back()));
            delayed_.pop_back();
            sift_down(i);
            sift_up(i);
        } else {
            delayed_.pop_back();
        }
        return out;
    }

    bool has_work_locked() const noexcept {
        return !ready_.empty() || (!delayed_.empty() && delayed_.front()->due <= clock_->now());
    }

    static constexpr std::size_t kBatch = 64;
    static constexpr int kSpinsBeforeSleep = 64;

    // Under mutex_: the end of a batch of deliveries that held `posted`
    // posted events (now settled or handed over).
    void finish_batch_locked(std::size_t posted) noexcept {
        outstanding_ -= posted;
        --delivering_;
        if (outstanding_ == 0 || delivering_ == 0 || closers_ != 0) wake_idle_locked();
    }

    // Under mutex_: tells close() and drain() (which, without an executor,
    // sleeps on work_ so that new work wakes it too) to look again.
    void wake_idle_locked() noexcept {
        idle_.notify_all();
        if (draining_ != 0) work_.notify_all();
    }

    // Delivers on this thread, in batches of at most `most`: due waiting
    // work first (it is older), then posted events in posting order; one
    // batch only when `once`. Returns how many things it delivered.
    std::size_t deliver_here(std::size_t most, bool once) noexcept {
        std::array<std::unique_ptr<DelayedWork>, kBatch> due;
        std::vector<EnvelopeRef> posted;  // the spare buffer, taken under the lock
        std::size_t done = 0;
        std::size_t n_posted = 0;
        for (bool first = true;; first = false) {
            std::size_t n_due = 0;
            {
                std::lock_guard<std::mutex> lock(mutex_);
                if (!first) finish_batch_locked(n_posted);
                n_posted = 0;
                const bool stop = !first && once;
                if (!stop) {
                    if (!delayed_.empty()) {  // the clock is read only when something waits
                        const auto now = clock_->now();
                        while (n_due < kBatch && n_due < most && !delayed_.empty() && delayed_.front()->due <= now) {
                            due[n_due++] = take_at(0);
                        }
                    }
                    if (n_due < most && !ready_.empty()) {
                        if (posted.capacity() == 0) posted.swap(spare_);
                        if (most == 1) {
                            try {
                                posted.push_back(ready_.take_front());
                            } catch (...) {  // (cannot fail: the spare has room)
                            }
                        } else {
                            try {
                                ready_.take_all(posted);
                            } catch (...) {  // no memory to move them: one at a time
                                if (posted.size() < posted.capacity()) posted.push_back(ready_.take_front());
                            }
                        }
                        n_posted = posted.size();
                        ready_hint_.store(ready_.size(), std::memory_order_relaxed);
                    }
                }
                if (n_due + n_posted == 0) {
                    if (spare_.capacity() < posted.capacity()) spare_.swap(posted);  // keep the bigger buffer
                    return done;
                }
                ++delivering_;
                if (n_posted != 0 && blocked_producers_ != 0) room_.notify_all();
            }
            DeliveringScope scope(*this);
            for (std::size_t i = 0; i < n_due; ++i) {
                due[i]->run();
                due[i].reset();
            }
            // Runs of events of one channel go together (its routes are
            // loaded once per run).
            for (std::size_t i = 0; i < n_posted;) {
                std::size_t end = i + 1;
                while (end < n_posted && posted[end]->channel == posted[i]->channel) ++end;
                ChannelBase* channel = posted[i]->channel;
                deliver_now(&posted[i], end - i);
                channel->counters.taken.fetch_add(end - i, std::memory_order_relaxed);
                i = end;
            }
            posted.clear();  // frees the envelopes; keeps the capacity
            done += n_due + n_posted;
        }
    }

    // Precondition: a DeliveringScope of this core is active; every
    // envelope is of one channel.
    void deliver_now(EnvelopeRef* envelopes, std::size_t count) noexcept {
        ChannelBase* channel = envelopes[0]->channel;
        if (metrics_) {
            const auto now = clock_->now();
            for (std::size_t i = 0; i < count; ++i) {
                const auto waited = std::chrono::nanoseconds(now - envelopes[i]->posted_at).count();
                channel->counters.queue_wait_ns.record(static_cast<std::uint64_t>(std::max<std::int64_t>(0, waited)));
            }
        }
        channel->deliver_posted(envelopes, count);
    }

    void wait_for_work_locked(std::unique_lock<std::mutex>& lock) {
        if (delayed_.empty()) {
            work_.wait(lock);
        } else {
            const auto left = delayed_.front()->due - clock_->now();
            work_.wait_for(lock, std::max<std::chrono::steady_clock::duration>(left, std::chrono::microseconds(100)));
        }
    }

    // ---- executor mode ---------------------------------------------------

    // One task per posted event (and per due waiting work): it delivers the
    // oldest thing there is. Counted in pumps_outstanding_ (and, for due
    // work, in due_pumps_) until it ran or was dropped unrun.
    using SelfRef = IntrusiveRef<BusCore, MemberRefOps>;
    static SelfRef share(BusCore* c) noexcept {
        c->add_ref();
        return SelfRef::adopt(c);
    }

    struct Pump {
        SelfRef core;
        bool for_due;
        Pump(BusCore* c, bool due) : core(share(c)), for_due(due) {}
        Pump(Pump&&) noexcept = default;
        Pump(const Pump&) = delete;
        ~Pump() {
            if (core) core->pump_done(false, for_due);  // dropped (or refused) unrun
        }
        // It stays in pumps_outstanding_ until it has delivered: counted
        // done first, a drain() woken in between would find the work and no
        // task on its way, and deliver it on the draining thread. It leaves
        // due_pumps_ before it delivers, so that work falling due meanwhile
        // gets a task of its own from the timer.
        void operator()() {
            if (!core) return;
            SelfRef mine = std::move(core);
            if (for_due) mine->due_pump_started();
            mine->pump_one();
            mine->pump_done(true, false);
        }
    };

    void submit_pump() noexcept {
        try {
            detail::execute_on(executor_, Task(Pump(this, false)));
        } catch (...) {
            // The executor refused (full, shut down; the pump counted itself
            // dropped): deliver here instead.
            process_one_here();
        }
    }

    void pump_done(bool ran, bool for_due) noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        --pumps_outstanding_;
        if (for_due) --due_pumps_;
        if (!ran) ++pumps_dropped_;
        if (draining_ != 0) idle_.notify_all();
    }

    void due_pump_started() noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        --due_pumps_;
    }

    void pump_one() noexcept { deliver_here(1, true); }
    void process_one_here() noexcept { deliver_here(1, true); }

    // Under mutex_: when the timer should fire next (by the bus clock): now
    // if some due work has no task on its way yet, else at the earliest work
    // not due yet; time_point::max() for never.
    std::chrono::steady_clock::time_point timer_target_locked(std::chrono::steady_clock::time_point now) const noexcept {
        using time_point = std::chrono::steady_clock::time_point;
        if (delayed_.empty()) return time_point::max();
        if (delayed_.front()->due > now) return delayed_.front()->due;
        std::size_t due = 0;
        time_point next = time_point::max();
        for (const auto& w : delayed_) {
            if (w->due <= now) {
                ++due;
            } else {
                next = std::min(next, w->due);
            }
        }
        return due > due_pumps_ ? now : next;
    }

    // Arms the timer for the next waiting work that needs it (executor
    // mode), no sooner than `not_before` from now. Serialised by
    // timer_mutex_: the entry is one, and the timer service must never see
    // it scheduled twice or its due time change while it waits.
    void arm_timer(std::chrono::steady_clock::duration not_before = {}) noexcept {
        std::lock_guard<std::mutex> timer_lock(timer_mutex_);
        const bool was_armed = TimerService::shared().remove(&timer_);  // its reference is reused or released
        std::chrono::steady_clock::duration left{};
        bool arm = false;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!closed_) {
                const auto now = clock_->now();
                const auto target = timer_target_locked(now);
                arm = target != std::chrono::steady_clock::time_point::max();
                if (arm) left = std::max(target - now, not_before);
                timer_armed_for_ = arm ? now + left : std::chrono::steady_clock::time_point::max();
            }
        }
        if (!arm) {
            if (was_armed) release_ref();  // (never the last: the caller holds one)
            return;
        }
        if (!was_armed) add_ref();
        timer_.due = TimerEntry::clock::now() + std::max<std::chrono::steady_clock::duration>(left, {});
        try {
            if (TimerService::shared().schedule(&timer_)) return;
        } catch (...) {
        }
        release_ref();
    }

    // On the timer thread: hand every due work that has no task on its way
    // to the executor, then re-arm for the next.
    void on_timer() noexcept {
        std::size_t submit = 0;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (closed_) return;
            timer_armed_for_ = std::chrono::steady_clock::time_point::max();  // it fired
            const auto now = clock_->now();
            std::size_t due = 0;
            for (const auto& w : delayed_) due += w->due <= now ? 1 : 0;
            submit = due > due_pumps_ ? due - due_pumps_ : 0;
            due_pumps_ += submit;
            pumps_outstanding_ += submit;
        }
        bool refused = false;
        for (std::size_t i = 0; i < submit; ++i) {
            if (refused) {
                pump_done(false, true);  // not tried: the executor refuses now
                continue;
            }
            try {
                detail::execute_on(executor_, Task(Pump(this, true)));
            } catch (...) {
                refused = true;  // (the pump counted itself dropped)
            }
        }
        // An executor that refuses is asked again later, not at once: the
        // work stays in the heap for drain() meanwhile.
        arm_timer(refused ? kRefusedRetry : std::chrono::steady_clock::duration{});
    }
    static constexpr std::chrono::milliseconds kRefusedRetry{10};

    // ---- handed work ------------------------------------------------------

    // The task that runs a HandedWork on another executor.
    struct HandedTask {
        SelfRef core;
        HandedRef work;
        HandedTask(BusCore* c, HandedRef w) noexcept : core(share(c)), work(std::move(w)) {}
        HandedTask(HandedTask&&) noexcept = default;
        HandedTask(const HandedTask&) = delete;
        ~HandedTask() {
            if (!work) return;
            if (SubmittingScope::current() == work.get()) {
                work->dropped_in_submit_ = true;  // hand_to() concludes it, with the refusal
                return;
            }
            if (!core->claim_handed(work.get())) return;
            {
                DeliveringScope scope(*core);
                work->discard(false, std::make_exception_ptr(std::system_error(
                                         make_error_code(errc::task_dropped), "cbm::EventBus: the executor dropped the delivery")));
            }
            core->finish_handed();
        }
        void operator()() {
            if (!work) return;
            HandedRef mine = std::move(work);
            if (!core->claim_handed(mine.get())) return;  // close() discarded it
            {
                DeliveringScope scope(*core);
                mine->run();
            }
            core->finish_handed();
        }
    };

    // Marks, on the submitting thread, the work whose task is inside
    // execute(): a task destroyed there leaves the conclusion to hand_to().
    class SubmittingScope {
    public:
        explicit SubmittingScope(const HandedWork* w) noexcept : outer_(current()) { current() = w; }
        ~SubmittingScope() { end(); }
        SubmittingScope(const SubmittingScope&) = delete;
        SubmittingScope& operator=(const SubmittingScope&) = delete;
        void end() noexcept {
            if (!ended_) current() = outer_;
            ended_ = true;
        }
        static const HandedWork*& current() noexcept {
            thread_local const HandedWork* submitting = nullptr;
            return submitting;
        }

    private:
        const HandedWork* outer_;
        bool ended_ = false;
    };

    // Returns: true if `w` was still registered; it is then the caller's to
    // run or discard, counted as a delivery (close() waits for it) until
    // finish_handed().
    bool claim_handed(HandedWork* w) noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!w->linked_) return false;
        w->linked_ = false;
        if (w->prev_ != nullptr) {
            w->prev_->next_ = w->next_;
        } else {
            handed_ = w->next_;
        }
        if (w->next_ != nullptr) w->next_->prev_ = w->prev_;
        w->prev_ = w->next_ = nullptr;
        ++delivering_;
        return true;
    }
    void finish_handed() noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        finish_batch_locked(1);
    }

    AnyExecutor executor_;
    const std::size_t capacity_;
    const Overflow overflow_;
    const bool metrics_;
    ResilienceClock* const clock_;

    mutable std::mutex mutex_;
    std::condition_variable work_;  // consumers: something to deliver, or closed
    std::condition_variable room_;  // blocked producers: room in the queue, or closed
    std::condition_variable idle_;  // drain() and close(): outstanding or delivering went down
    PostedQueue ready_;                                  // posted, in posting order
    std::vector<EnvelopeRef> spare_;                     // an empty buffer with capacity, for the next consumer
    std::atomic<std::size_t> ready_hint_{0};             // ready_.size(), stored under mutex_, read as a hint
    std::vector<std::unique_ptr<DelayedWork>> delayed_;  // a min-heap on (due, seq)
    std::uint64_t next_seq_ = 0;
    std::size_t outstanding_ = 0;
    std::size_t delivering_ = 0;  // threads inside a delivery of this bus
    std::size_t blocked_producers_ = 0;
    std::size_t sleeping_consumers_ = 0;
    std::size_t draining_ = 0;
    std::size_t pumps_outstanding_ = 0;
    std::size_t due_pumps_ = 0;      // of those, submitted by the timer for due work
    std::size_t pumps_dropped_ = 0;  // tasks the executor dropped or refused, ever
    std::size_t closers_ = 0;        // threads inside close()
    std::size_t closing_deliveries_ = 0;  // deliveries those closers are inside themselves
    HandedWork* handed_ = nullptr;   // registered handed work (a doubly linked list)
    // When the timer fires next, by the bus clock (max: not armed).
    std::chrono::steady_clock::time_point timer_armed_for_ = std::chrono::steady_clock::time_point::max();
    std::vector<std::unique_ptr<ChannelBase>> channels_;
    bool closed_ = false;
    std::shared_ptr<const DeadLetterHandler> dead_letter_handler_;
    std::shared_ptr<const ErrorHandler> error_handler_;

    // The timer's entry knows its core (no offsetof: BusCore is not
    // standard-layout).
    struct CoreTimer : TimerEntry {
        BusCore* core = nullptr;
    };
    CoreTimer timer_;
    std::mutex timer_mutex_;  // arm_timer() and close(): timer_'s scheduling
};

using BusCoreRef = IntrusiveRef<BusCore, MemberRefOps>;

}  // namespace cbm::detail
