// cbm/detail/callback_list.hpp - the ordered, lock-free-to-read list of
// callbacks behind CallbackGroup and every key of CallbackRegistry.
//
// Shape: a singly linked list (readers follow `next`) that writers also link
// backwards (`prev`, writer-only), ordered by priority (descending) then by
// registration order. Writers (add, unregister, clear) hold the Anchor's
// mutex; readers (trigger) take no lock and do no read-modify-write on shared
// memory except to claim a `once` callback.
//
// Lifecycle of a node's state word (low bits; the kFiltered and kOnce bits
// are set before publication and never change, so that a trigger learns
// "registered and plain" from one load and one compare with zero):
//   0 (registered) --fetch_or(kUnregistered)--> kUnregistered (terminal)
//   The thread whose fetch_or first sets kUnregistered "wins": it unlinks the
//   node (or finds it already unlinked by clear/destruction) and retires it.
//   A blocking unregister also sets kWaiter: a trigger that finishes a
//   callback and sees kWaiter wakes the waiters through `wake`.
//
// Memory ordering:
//   * add: the node is fully built, then published by a release store of the
//     predecessor's `next` (or `head`); readers load `next` with acquire.
//     `published_seq` (release) lets a trigger skip nodes added after it
//     started: a node is run only if its seq <= the value read at start.
//   * trigger: announce(node) is a relaxed store of the node into the thread's
//     TriggerLevel followed by light_barrier(); only then is the state read.
//     unregister: fetch_or(kUnregistered) then writer_barrier() then scan the
//     levels. So either the scan sees the announcement (and waits for it to be
//     withdrawn), or the trigger sees kUnregistered (and skips the node).
//   * withdraw is a release store; the waiter's acquire scan that sees it
//     also sees everything the callback did.
//   * Node memory is reclaimed by epochs (thread_records.hpp): an unlinked
//     node stays readable until every trigger that could have reached it has
//     left. The callable inside is destroyed earlier, as soon as a blocking
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
#include "thread_records.hpp"

namespace cbm::detail {

inline constexpr std::uint32_t kUnregistered = 1u;
inline constexpr std::uint32_t kWaiter = 2u;
inline constexpr std::uint32_t kFiltered = 4u;  // immutable: the node has a filter
inline constexpr std::uint32_t kOnce = 8u;      // immutable: the node runs at most once

struct ListCore;
struct Anchor;

struct NodeBase;

// Links a node into a RetireList without making Retirable its first base,
// which keeps the fields a trigger reads together at the start of the node.
struct NodeRetireHook : Retirable {
    NodeBase* node = nullptr;
};

// Size of the type-erased callable stored in every node (a Callback<Sig> of
// any signature: two function pointers and three pointers of storage).
inline constexpr std::size_t kCallableBytes = 5 * sizeof(void*);

// Everything a trigger reads of a node without a filter is in its first 64
// bytes. (Not alignas(64): over-aligned allocation bypasses malloc's fast
// per-thread caches and made add+unregister several times slower.)
struct NodeBase {
    // Hot: read by every trigger.
    std::atomic<NodeBase*> next{nullptr};  // written under the anchor mutex
    std::atomic<std::uint32_t> state{0};   // see the lifecycle above
    std::uint32_t seq = 0;                 // set under the mutex before publication
    std::atomic<bool> target_destroyed{false};
    alignas(void*) unsigned char callable[kCallableBytes];  // a Callback<Sig>, see Node<Sig>

    // Cold.
    NodeRetireHook retire_hook;
    std::atomic<std::uint32_t> refs{2};    // the list's reference + the first handle's
    std::atomic<std::uint32_t> wake{0};    // bumped to wake blocking unregisters
    int priority = 0;                      // immutable
    NodeBase* prev = nullptr;              // under the anchor mutex
    ListCore* core = nullptr;              // under the anchor mutex; null once unlinked
    Anchor* anchor = nullptr;              // counted reference, immutable
    std::string name;                      // immutable
    void (*destroy_target)(NodeBase*) noexcept = nullptr;
    void (*delete_node)(NodeBase*) noexcept = nullptr;

    NodeBase() noexcept { retire_hook.node = this; }
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
    explicit Anchor(ErrorPolicy p) : policy(p) {}

    std::mutex mutex;
    std::atomic<std::uint32_t> refs{1};
    bool alive = true;     // under mutex; false once the owner started destruction
    RetireList retired;    // under mutex
    const ErrorPolicy policy;

    std::mutex handler_mutex;
    std::shared_ptr<const ErrorHandler> handler;  // under handler_mutex

    void add_ref() noexcept { refs.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept {
        if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }
    std::shared_ptr<const ErrorHandler> error_handler() {
        std::lock_guard<std::mutex> lock(handler_mutex);
        return handler;
    }
    void set_error_handler(ErrorHandler h) {
        auto shared = h ? std::make_shared<const ErrorHandler>(std::move(h)) : nullptr;
        std::lock_guard<std::mutex> lock(handler_mutex);
        handler = std::move(shared);
    }
};

inline void NodeBase::release_ref() noexcept {
    if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        Anchor* a = anchor;
        delete_node(this);
        a->release();
    }
}

inline void reclaim_node(Retirable* r) noexcept {
    NodeBase* node = static_cast<NodeRetireHook*>(r)->node;
    node->destroy_target_once();
    node->release_ref();
}

// One ordered list. Every member is written under the anchor's mutex.
struct ListCore {
    std::atomic<NodeBase*> head{nullptr};
    std::atomic<std::uint32_t> published_seq{0};
    std::atomic<std::size_t> size{0};
    std::uint32_t next_seq = 0;
    // (priority, last node of that priority), by descending priority. A
    // vector: few distinct priorities, and no allocation once it has grown.
    std::vector<std::pair<int, NodeBase*>> tails;
    // Registry hook, called under the mutex when the last callback is unlinked.
    void (*on_empty)(ListCore*) noexcept = nullptr;

    // Links `n` after every node of priority >= n->priority.
    // Throws: std::bad_alloc, before anything changed.
    void insert(NodeBase* n) {
        const std::size_t at = tail_index(n->priority);
        if (at == tails.size() || tails[at].first != n->priority) {
            tails.insert(tails.begin() + static_cast<std::ptrdiff_t>(at), {n->priority, nullptr});
        }
        NodeBase* pred = tails[at].second;
        if (pred == nullptr && at > 0) pred = tails[at - 1].second;
        std::atomic<NodeBase*>& link = pred != nullptr ? pred->next : head;
        NodeBase* succ = link.load(std::memory_order_relaxed);
        n->seq = ++next_seq;
        n->next.store(succ, std::memory_order_relaxed);
        n->prev = pred;
        n->core = this;
        if (succ != nullptr) succ->prev = n;
        link.store(n, std::memory_order_release);
        tails[at].second = n;
        size.store(size.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        published_seq.store(n->seq, std::memory_order_release);
    }

    // Unlinks `n`; its own `next` stays intact so that triggers standing on it
    // can go on.
    void unlink(NodeBase* n) noexcept {
        NodeBase* succ = n->next.load(std::memory_order_relaxed);
        NodeBase* pred = n->prev;
        (pred != nullptr ? pred->next : head).store(succ, std::memory_order_release);
        if (succ != nullptr) succ->prev = pred;
        const std::size_t at = tail_index(n->priority);
        if (at < tails.size() && tails[at].second == n) {
            if (pred != nullptr && pred->priority == n->priority) {
                tails[at].second = pred;
            } else {
                tails.erase(tails.begin() + static_cast<std::ptrdiff_t>(at));
            }
        }
        n->core = nullptr;
        size.store(size.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
    }

    // Index of the first tails entry whose priority is <= `priority`.
    std::size_t tail_index(int priority) const noexcept {
        std::size_t lo = 0;
        std::size_t hi = tails.size();
        while (lo < hi) {
            const std::size_t mid = (lo + hi) / 2;
            if (tails[mid].first > priority) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        return lo;
    }

    std::size_t count() const noexcept { return size.load(std::memory_order_relaxed); }
};

// Under the anchor mutex: unlink `n` if still linked, retire it, and fire the
// registry's empty hook. The caller runs anchor.retired.maybe_reclaim() after.
inline void unlink_and_retire(Anchor& anchor, NodeBase* n) noexcept {
    ListCore* core = n->core;
    if (core == nullptr) return;
    core->unlink(n);
    anchor.retired.retire(&n->retire_hook, &reclaim_node);
    if (core->count() == 0 && core->on_empty != nullptr) core->on_empty(core);
}

inline void detach(NodeBase* n) {
    Anchor& anchor = *n->anchor;
    ReclaimBatch batch;
    std::lock_guard<std::mutex> lock(anchor.mutex);
    unlink_and_retire(anchor, n);
    anchor.retired.maybe_reclaim(batch);
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
        n.destroy_target_once();
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

    // Under the anchor mutex: marks every node of `core` unregistered, unlinks
    // and retires them all. Returns how many this call unregistered.
    // Throws: std::bad_alloc before changing anything.
    std::size_t take_all(Anchor& anchor, ListCore& core) {
        nodes_.reserve(nodes_.size() + core.count());
        std::size_t won = 0;
        NodeBase* n = core.head.load(std::memory_order_relaxed);
        while (n != nullptr) {
            NodeBase* next = n->next.load(std::memory_order_relaxed);
            n->add_ref();
            nodes_.push_back(n);
            const std::uint32_t old = n->state.fetch_or(kUnregistered | kWaiter, std::memory_order_acq_rel);
            if ((old & kUnregistered) == 0) ++won;
            unlink_and_retire(anchor, n);
            n = next;
        }
        return won;
    }

    // Outside the mutex: waits until no other thread runs any of the nodes,
    // then destroys their callables.
    void wait_and_destroy() {
        writer_barrier();
        for (NodeBase* n : nodes_) {
            wait_until_idle_elsewhere(*n);
            n->destroy_target_once();
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

}  // namespace cbm::detail
