// cbm/detail/callback_list.hpp - the ordered, lock-free-to-read list of
// callbacks behind CallbackGroup and every key of CallbackRegistry.
//
// Shape: an array of node pointers, ordered by priority (descending) then by
// registration order, published through one atomic pointer. Writers (add,
// unregister, clear) hold the Anchor's mutex; readers (trigger) take no lock
// and do no read-modify-write on shared memory except to claim a `once`
// callback. Readers walk contiguous pointers, not a linked list, so the
// loads of successive nodes do not depend on each other.
//
// Writers keep the array cheap to change:
//   * add appends in place when the new callback sorts last (the common case:
//     equal priorities) and there is room: store the slot, then publish the
//     new count. Otherwise it builds a new array (doubling the capacity).
//   * unregister leaves the node in the array as a tombstone (readers skip it
//     by its state); once tombstones outnumber live callbacks (plus slack) a
//     new, compacted array replaces the old one. Copies are amortized O(1)
//     per change.
//
// Lifecycle of a node's state word (low bits; the kFiltered and kOnce bits
// are set before publication and never change, so that a trigger learns
// "registered and plain" from one load and one compare with zero):
//   0 (registered) --fetch_or(kUnregistered)--> kUnregistered (terminal)
//   The thread whose fetch_or first sets kUnregistered "wins": it detaches
//   the node from its list (or finds it detached by clear/destruction).
//   A blocking unregister also sets kWaiter: a trigger that finishes a
//   callback and sees kWaiter wakes the waiters through `wake`.
//
// Memory ordering:
//   * add: the node is fully built, then stored into its slot (release), then
//     the array's count is published (release). A trigger reads the array
//     pointer and then its count once (acquire), so callbacks appended after
//     it started are beyond its count, and callbacks placed by a rebuild are
//     in an array it does not hold: a trigger never runs a callback added
//     after it started.
//   * trigger: announce(node) is a relaxed store of the node into the thread's
//     TriggerLevel followed by light_barrier(); only then is the state read.
//     unregister: fetch_or(kUnregistered) then writer_barrier() then scan the
//     levels. So either the scan sees the announcement (and waits for it to be
//     withdrawn), or the trigger sees kUnregistered (and skips the node).
//   * withdraw is a release store; the waiter's acquire scan that sees it
//     also sees everything the callback did.
//   * Node and array memory is reclaimed by epochs (thread_records.hpp): a
//     replaced array, and the tombstones only it held, stay readable until
//     every trigger that could hold that array has left. The callable inside is destroyed earlier, as soon as a blocking
//     unregister, clear or destructor has seen no thread running it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "../error_policy.hpp"
#include "../resilience.hpp"
#include "callback_stats.hpp"
#include "thread_records.hpp"

namespace cbm::detail {

inline constexpr std::uint32_t kUnregistered = 1u;
inline constexpr std::uint32_t kWaiter = 2u;
inline constexpr std::uint32_t kFiltered = 4u;  // immutable: the node has a filter
inline constexpr std::uint32_t kOnce = 8u;      // immutable: the node runs at most once
inline constexpr std::uint32_t kMeasured = 16u; // immutable: the node has CallbackStats
inline constexpr std::uint32_t kResilient = 32u; // immutable: the node has a Resilience block

struct ListCore;
struct Anchor;

struct NodeBase;

// Links a node into a RetireList without making Retirable its first base,
// which keeps the fields a trigger reads together at the start of the node.
struct NodeRetireHook : Retirable {
    NodeBase* node = nullptr;
};

// Two hooks per node, two lifetimes: `target_hook` is retired when the node
// is detached and destroys the user's callable once no trigger can still be
// running it; `retire_hook` is retired when the last array holding the node
// is dropped and drops the list's reference to the node. Each holds a
// reference, so either may be reclaimed first.

// Size of the type-erased callable stored in every node (a Callback<Sig> of
// any signature: two function pointers and three pointers of storage).
inline constexpr std::size_t kCallableBytes = 5 * sizeof(void*);

// Everything a trigger reads of a node without a filter is in its first 64
// bytes. (Not alignas(64): over-aligned allocation bypasses malloc's fast
// per-thread caches and made add+unregister several times slower.)
struct NodeBase {
    // Hot: read by every trigger.
    std::atomic<std::uint32_t> state{0};   // see the lifecycle above
    std::atomic<bool> target_destroyed{false};
    alignas(void*) unsigned char callable[kCallableBytes];  // a Callback<Sig>, see Node<Sig>

    // Cold.
    NodeRetireHook retire_hook;
    NodeRetireHook target_hook;
    std::atomic<std::uint32_t> refs{2};    // the list's reference + the first handle's
    std::atomic<std::uint32_t> wake{0};    // bumped to wake blocking unregisters
    int priority = 0;                      // immutable
    ListCore* core = nullptr;              // under the anchor mutex; null once detached
    Anchor* anchor = nullptr;              // counted reference, immutable
    std::string name;                      // immutable
    CallbackStats* stats = nullptr;        // immutable; owned; set when the group is instrumented
    Resilience* resilience = nullptr;      // immutable; owned; timeout / retry / circuit breaker
    void (*destroy_target)(NodeBase*) noexcept = nullptr;
    void (*delete_node)(NodeBase*) noexcept = nullptr;

    NodeBase() noexcept {
        retire_hook.node = this;
        target_hook.node = this;
    }
    NodeBase(const NodeBase&) = delete;
    NodeBase& operator=(const NodeBase&) = delete;

    bool is_once() const noexcept { return (state.load(std::memory_order_relaxed) & kOnce) != 0; }

    void add_ref() noexcept { refs.fetch_add(1, std::memory_order_relaxed); }
    void release_ref() noexcept;

    // Destroys the user's callable and filter exactly once.
    void destroy_target_once() noexcept {
        if (!target_destroyed.exchange(true, std::memory_order_acq_rel)) destroy_target(this);
    }
};

// The writer side shared by a group, or by all keys of one registry: the
// mutex, the retire list, the error configuration. Counted: the owner holds
// one reference and every node one, so a Registration that outlives its group
// can still lock the mutex and learn that the group is gone.
struct Anchor {
    explicit Anchor(ErrorPolicy p, bool instrumented = false, std::uint32_t sample_every = 1,
                    ResilienceClock* c = nullptr)
        : policy(p),
          metrics(instrumented),
          latency_sample_every(sample_every == 0 ? 1 : sample_every),
          clock(c != nullptr ? *c : steady_resilience_clock()) {}

    std::mutex mutex;
    std::atomic<std::uint32_t> refs{1};
    bool alive = true;     // under mutex; false once the owner started destruction
    RetireList retired;    // under mutex
    const ErrorPolicy policy;
    const bool metrics;                         // nodes get CallbackStats
    const std::uint32_t latency_sample_every;   // time one invocation in this many, per thread
    ResilienceClock& clock;                     // timeouts, backoff, cool-downs
    std::shared_ptr<const DeadLetterHandler> dead_letter;  // under handler_mutex
    std::atomic<CallbackObserver*> observer{nullptr};        // read by triggers
    std::vector<std::shared_ptr<CallbackObserver>> observers;  // under handler_mutex: every one ever set, kept alive

    std::mutex handler_mutex;
    std::shared_ptr<const ErrorHandler> handler;  // under handler_mutex

    void add_ref() noexcept { refs.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept {
        if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }
    // Observers stay alive until the anchor goes: a trigger may still be
    // calling the previous one.
    void set_observer(std::shared_ptr<CallbackObserver> o) {
        std::lock_guard<std::mutex> lock(handler_mutex);
        if (o) observers.push_back(o);
        observer.store(o.get(), std::memory_order_release);
    }
    std::shared_ptr<const DeadLetterHandler> dead_letter_handler() { return read_locked(dead_letter); }
    void set_dead_letter_handler(DeadLetterHandler h) { replace_locked(dead_letter, std::move(h)); }
    std::shared_ptr<const ErrorHandler> error_handler() { return read_locked(handler); }
    void set_error_handler(ErrorHandler h) { replace_locked(handler, std::move(h)); }

private:
    template <class F>
    std::shared_ptr<const F> read_locked(const std::shared_ptr<const F>& slot) {
        std::lock_guard<std::mutex> lock(handler_mutex);
        return slot;
    }
    template <class F>
    void replace_locked(std::shared_ptr<const F>& slot, F h) {
        auto shared = h ? std::make_shared<const F>(std::move(h)) : nullptr;
        {
            std::lock_guard<std::mutex> lock(handler_mutex);
            slot.swap(shared);
        }
        // `shared` now holds the old handler: destroyed here, unlocked, since
        // its destructor is user code.
    }
};

inline void NodeBase::release_ref() noexcept {
    if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        Anchor* a = anchor;
        delete_node(this);
        a->release();
    }
}

// The target hook holds its own reference to the node (taken by
// retire_target): batches of different threads may run out of retirement
// order, so the node's memory must not depend on which hook goes first.
inline void reclaim_target(Retirable* r) noexcept {
    NodeBase* node = static_cast<NodeRetireHook*>(r)->node;
    node->destroy_target_once();
    node->release_ref();
}

inline void retire_target(NodeBase* n, RetireList& retired) noexcept {
    n->add_ref();
    retired.retire(&n->target_hook, &reclaim_target);
}

inline void reclaim_node(Retirable* r) noexcept {
    NodeBase* node = static_cast<NodeRetireHook*>(r)->node;
    node->destroy_target_once();
    node->release_ref();
}

// An immutable-capacity array of node pointers with a published length.
// Allocated in one block: the slots follow the header.
struct NodeArray final : Retirable {
    std::atomic<std::uint32_t> count{0};  // slots [0, count) are published
    std::uint32_t capacity = 0;

    std::atomic<NodeBase*>* slots() noexcept { return reinterpret_cast<std::atomic<NodeBase*>*>(this + 1); }

    // Throws: std::bad_alloc.
    static NodeArray* make(std::uint32_t capacity) {
        static_assert(sizeof(NodeArray) % alignof(std::atomic<NodeBase*>) == 0);
        void* memory = ::operator new(sizeof(NodeArray) + capacity * sizeof(std::atomic<NodeBase*>));
        auto* array = ::new (memory) NodeArray;
        array->capacity = capacity;
        for (std::uint32_t i = 0; i < capacity; ++i) {
            ::new (static_cast<void*>(array->slots() + i)) std::atomic<NodeBase*>(nullptr);
        }
        return array;
    }
    static void destroy(NodeArray* array) noexcept {
        array->~NodeArray();
        ::operator delete(static_cast<void*>(array));
    }
    static void reclaim(Retirable* r) noexcept { destroy(static_cast<NodeArray*>(r)); }
};

// One ordered list. Every member is written under the anchor's mutex.
struct ListCore {
    ListCore() = default;
    ListCore(const ListCore&) = delete;
    ListCore& operator=(const ListCore&) = delete;
    ~ListCore() {  // by then every node was taken out and retired
        if (NodeArray* a = array.load(std::memory_order_relaxed)) NodeArray::destroy(a);
    }

    std::atomic<NodeArray*> array{nullptr};  // null while nothing was ever added
    std::atomic<std::size_t> size{0};         // live callbacks
    std::uint32_t tombstones = 0;             // detached nodes still in `array`
    // Registry hook, called under the mutex when the last callback is detached.
    void (*on_empty)(ListCore*) noexcept = nullptr;
    // Registry hook: the key as text (for dead letters).
    std::string (*describe)(const ListCore*) = nullptr;

    std::size_t count() const noexcept { return size.load(std::memory_order_relaxed); }

    // Places `n` after every callback of priority >= n->priority.
    // Throws: std::bad_alloc, before anything changed.
    void insert(NodeBase* n, RetireList& retired) {
        NodeArray* a = array.load(std::memory_order_relaxed);
        const std::uint32_t used = a != nullptr ? a->count.load(std::memory_order_relaxed) : 0;
        const bool sorts_last =
            used == 0 || a->slots()[used - 1].load(std::memory_order_relaxed)->priority >= n->priority;
        if (a != nullptr && used < a->capacity && sorts_last) {
            a->slots()[used].store(n, std::memory_order_release);
            a->count.store(used + 1, std::memory_order_release);
        } else {
            rebuild(n, retired);
        }
        n->core = this;
        size.store(count() + 1, std::memory_order_relaxed);
    }

    // Detaches `n` (leaving a tombstone that triggers skip), compacting the
    // array once tombstones outnumber live callbacks.
    void remove(NodeBase* n, RetireList& retired) noexcept {
        n->core = nullptr;
        retire_target(n, retired);
        size.store(count() - 1, std::memory_order_relaxed);
        ++tombstones;
        if (tombstones > count() + 8) {
            try {
                rebuild(nullptr, retired);
            } catch (...) {
                // Compaction is an optimisation; the tombstones stay for now.
            }
        }
    }

    // Retires the array and every node in it (all detached by now).
    void retire_all(RetireList& retired) noexcept {
        NodeArray* a = array.load(std::memory_order_relaxed);
        if (a == nullptr) return;
        retire_array(a, retired);
        array.store(nullptr, std::memory_order_release);
        tombstones = 0;
    }

    template <class Visit>
    void for_each_node(Visit&& visit) const {
        NodeArray* a = array.load(std::memory_order_relaxed);
        if (a == nullptr) return;
        const std::uint32_t used = a->count.load(std::memory_order_relaxed);
        for (std::uint32_t i = 0; i < used; ++i) visit(a->slots()[i].load(std::memory_order_relaxed));
    }

private:
    // Publishes a new array holding the live nodes in order, plus `extra`
    // (if not null) at its place; retires the old array and its tombstones.
    // Throws: std::bad_alloc, before anything changed.
    void rebuild(NodeBase* extra, RetireList& retired) {
        const std::size_t live = count() + (extra != nullptr ? 1 : 0);
        // Room for as many appends as there are live callbacks, and at least
        // 16: a group that churns at its tail rebuilds once per 16 changes.
        const auto capacity = static_cast<std::uint32_t>(live * 2 + 16);
        NodeArray* fresh = NodeArray::make(capacity);
        std::uint32_t out = 0;
        auto put = [&](NodeBase* node) { fresh->slots()[out++].store(node, std::memory_order_relaxed); };
        NodeArray* old = array.load(std::memory_order_relaxed);
        bool placed = extra == nullptr;
        for_each_node([&](NodeBase* node) {
            if (node->core != this) return;  // tombstone
            if (!placed && node->priority < extra->priority) {
                put(extra);
                placed = true;
            }
            put(node);
        });
        if (!placed) put(extra);
        fresh->count.store(out, std::memory_order_relaxed);
        array.store(fresh, std::memory_order_release);
        if (old != nullptr) retire_array(old, retired);
        tombstones = 0;
    }

    // Retires `old` with the tombstones that only it holds.
    void retire_array(NodeArray* old, RetireList& retired) noexcept;
};

// Under the anchor mutex: detach `n` if still in a list, and fire the
// registry's empty hook. The caller runs anchor.retired.maybe_reclaim() after.
inline void detach_locked(Anchor& anchor, NodeBase* n) noexcept {
    ListCore* core = n->core;
    if (core == nullptr) return;
    core->remove(n, anchor.retired);
    if (core->count() == 0 && core->on_empty != nullptr) {
        core->retire_all(anchor.retired);
        core->on_empty(core);
    }
}

inline void ListCore::retire_array(NodeArray* old, RetireList& retired) noexcept {
    const std::uint32_t used = old->count.load(std::memory_order_relaxed);
    for (std::uint32_t i = 0; i < used; ++i) {
        NodeBase* node = old->slots()[i].load(std::memory_order_relaxed);
        if (node->core != this) retired.retire(&node->retire_hook, &reclaim_node);
    }
    retired.retire(old, &NodeArray::reclaim);
}

// Runs maybe_reclaim for an anchor a trigger retired into; queued by
// reclaim_soon and run when the thread leaves its outermost trigger.
inline void reclaim_deferred(void* context) noexcept {
    auto* anchor = static_cast<Anchor*>(context);
    {
        ReclaimBatch batch;
        std::lock_guard<std::mutex> lock(anchor->mutex);
        anchor->retired.maybe_reclaim(batch);
    }
    anchor->release();
}

// After retiring into `anchor`: reclaim now (the caller's batch), or, when
// the caller is inside a trigger (whose epoch holds everything back), again
// as soon as it leaves its outermost trigger. Under the anchor mutex.
inline void reclaim_soon(Anchor& anchor, ReclaimBatch& batch) noexcept {
    ThreadRecord* self = t_record;
    if (self != nullptr && self->depth != 0) {
        anchor.add_ref();
        if (!defer_until_outside_triggers(&reclaim_deferred, &anchor)) anchor.release();
    }
    anchor.retired.maybe_reclaim(batch);
}

inline void detach(NodeBase* n) {
    Anchor& anchor = *n->anchor;
    ReclaimBatch batch;
    std::lock_guard<std::mutex> lock(anchor.mutex);
    detach_locked(anchor, n);
    reclaim_soon(anchor, batch);
}

// A node that is never linked into a list (its context was canceled before
// add()): its only reference is the returned handle's, which reports
// `unregistered` from the start. Its callable is destroyed right away.
inline NodeBase* make_unregistered(NodeBase* n) noexcept {
    n->state.fetch_or(kUnregistered, std::memory_order_relaxed);
    n->refs.store(1, std::memory_order_relaxed);
    n->destroy_target_once();
    return n;
}

inline void notify_waiters(NodeBase& n) noexcept {
    n.wake.fetch_add(1, std::memory_order_release);
    n.wake.notify_all();
}

// Returns when no thread other than the caller has `n` announced. The caller
// must have set kUnregistered | kWaiter and run writer_barrier() since.
inline void wait_until_idle_elsewhere(NodeBase& n) {
    Backoff backoff;
    for (;;) {
        const std::uint32_t seen = n.wake.load(std::memory_order_acquire);
        if (!node_named(&n, false)) return;
        if (backoff.sleeping()) {
            n.wake.wait(seen, std::memory_order_acquire);
        } else {
            backoff.pause();
        }
    }
}

// Registration::unregister and unregister_nowait.
inline bool unregister_node(NodeBase& n, bool wait) {
    const std::uint32_t bits = kUnregistered | (wait ? kWaiter : 0u);
    const bool won = (n.state.fetch_or(bits, std::memory_order_acq_rel) & kUnregistered) == 0;
    if (won) detach(&n);
    if (wait) {
        writer_barrier();
        wait_until_idle_elsewhere(n);
        // Not while this thread itself runs it: then the reclamation of
        // target_hook destroys it, after this thread's trigger has returned.
        if (!node_named_by_self(&n)) n.destroy_target_once();
    }
    return won;
}

// Nodes taken out of a list by clear(), erase() or destruction, each with a
// reference held so they stay valid while we wait for them.
class TakenNodes {
public:
    TakenNodes() = default;
    TakenNodes(const TakenNodes&) = delete;
    TakenNodes& operator=(const TakenNodes&) = delete;
    ~TakenNodes() {
        for (NodeBase* n : nodes_) n->release_ref();
    }

    // Under the anchor mutex: marks every node of `core` unregistered,
    // detaches and retires them all. Returns how many this call unregistered.
    // Throws: std::bad_alloc before changing anything.
    std::size_t take_all(Anchor& anchor, ListCore& core) {
        nodes_.reserve(nodes_.size() + core.count());
        std::size_t won = 0;
        core.for_each_node([&](NodeBase* n) {
            if (n->core != &core) return;  // tombstone
            n->add_ref();
            nodes_.push_back(n);
            const std::uint32_t old = n->state.fetch_or(kUnregistered | kWaiter, std::memory_order_acq_rel);
            if ((old & kUnregistered) == 0) ++won;
            n->core = nullptr;
            retire_target(n, anchor.retired);
        });
        core.size.store(0, std::memory_order_relaxed);
        core.retire_all(anchor.retired);
        if (core.on_empty != nullptr) core.on_empty(&core);
        return won;
    }

    // Outside the mutex: waits until no other thread runs any of the nodes,
    // then destroys their callables.
    void wait_and_destroy() {
        writer_barrier();
        for (NodeBase* n : nodes_) {
            wait_until_idle_elsewhere(*n);
            if (!node_named_by_self(n)) n->destroy_target_once();
        }
    }

private:
    std::vector<NodeBase*> nodes_;
};

// Waits until no other thread is inside a trigger of `domain`.
inline void wait_until_domain_idle(const void* domain) {
    writer_barrier();
    Backoff backoff;
    while (domain_named_elsewhere(domain)) backoff.pause();
}

// The destructor of a group or registry: marks the anchor dead, takes every
// callback out (`take_all(TakenNodes&)`, under the mutex), waits until no
// other thread is inside a trigger of the domain, destroys the callables,
// reclaims everything retired (no trigger can reach it any more), and drops
// the owner's reference to the anchor.
template <class TakeAll>
void shut_down(Anchor* anchor, TakeAll&& take_all) {
    TakenNodes taken;
    {
        std::lock_guard<std::mutex> lock(anchor->mutex);
        anchor->alive = false;
        take_all(taken);
    }
    wait_until_domain_idle(anchor);
    taken.wait_and_destroy();
    {
        ReclaimBatch batch;
        std::lock_guard<std::mutex> lock(anchor->mutex);
        batch.append(anchor->retired.take_all());
    }
    anchor->release();
}

}  // namespace cbm::detail
