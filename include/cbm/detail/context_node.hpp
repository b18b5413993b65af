// cbm/detail/context_node.hpp - the nodes behind cbm::Context and the
// cancellation of a context tree.
//
// Shape (Go's context package, in reference-counted nodes):
//   * Every derived context is a ContextNode with a counted pointer to its
//     parent. Background is the null node.
//   * A CancelNode (with_cancel, with_deadline, with_stop_token ...) owns a
//     std::stop_source: done() hands out its tokens. It registers with its
//     nearest cancelable ancestor, the `link_parent`, in a circular list of
//     children, until either is canceled or the child is destroyed. The list
//     holds no reference: what keeps a node alive is what can still reach it
//     (handles, its timer, after_funcs and bound callbacks, its children's
//     parent pointers), never its parent, so a subtree nobody can reach is
//     freed even if it was never canceled. A child's destructor unlinks it
//     (its parent is alive: the child holds it). Value and without_cancel
//     nodes never register.
//   * Cancelling a tree runs in two phases. Phase 1, bookkeeping only (no
//     user code, each node's mutex held briefly): mark every node of the
//     subtree canceled (err and cause) and take its children out, taking a
//     reference to each child that is not already being destroyed; a child
//     being destroyed is dropped from the list and needs nothing. Phase 2,
//     with no lock held: for every node marked, request stop on its
//     stop_source (running std::stop_callbacks), remove its timer, fire its
//     listeners. Last, unlink the root from its parent.
//   * cancel() never waits for user code on another thread. A call that
//     finds a node (the root or a descendant) marked first by another call
//     waits only for that call's phase 1 to reach the node's subtree, which
//     runs no user code (as Go's second cancel waits for the first one's
//     mutex): so when any cancel returns, err() of every descendant is set.
//     (Their stop_callbacks may still be running on that other thread.) A
//     call nested in a stop_callback finds phase 1 long finished. Waits only
//     ever point down the tree, so they form no cycle.
//
// Memory ordering: everything a node's cancellation changes is written under
// the node's mutex, and `err` is stored last with release. Readers that load
// `err` with acquire and see it non-zero may read `cause` without the lock
// (it never changes again). std::stop_source::request_stop() is called after
// the store, so a thread that sees stop_requested() (an acquire load inside
// the standard library) also sees `err`. A child is linked into its parent's
// list under the parent's mutex only while the parent's `err` is zero, and
// the parent's cancellation empties the list in the same critical section in
// which it sets `err`: so a child is either taken (and canceled) by that
// cancellation, or created afterwards and then born canceled.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <optional>
#include <stop_token>
#include <system_error>
#include <utility>

#include "../errc.hpp"
#include "intrusive_ref.hpp"
#include "ring.hpp"
#include "timer_service.hpp"
#include "word_mutex.hpp"

namespace cbm::detail {

using steady_time = std::chrono::steady_clock::time_point;
inline constexpr steady_time kNoDeadline = steady_time::max();

inline constexpr std::uint8_t kActive = 0;
inline constexpr std::uint8_t kCanceled = static_cast<std::uint8_t>(errc::canceled);
inline constexpr std::uint8_t kDeadlineExceeded = static_cast<std::uint8_t>(errc::deadline_exceeded);

struct CancelNode;

struct ContextNode {
    std::atomic<std::uint32_t> refs{1};
    ContextNode* parent = nullptr;     // counted; null when the parent is background
    CancelNode* canceler = nullptr;    // nearest cancelable node, self included; kept alive by `parent` (or is this)
    steady_time deadline = kNoDeadline;
    const void* key = nullptr;         // value nodes (ValueNode<T>): the ContextKey's address

    ContextNode() = default;
    ContextNode(const ContextNode&) = delete;
    ContextNode& operator=(const ContextNode&) = delete;
    virtual ~ContextNode() = default;

    void add_ref() noexcept { refs.fetch_add(1, std::memory_order_relaxed); }

    // Adds a reference unless the count already reached zero (the node is
    // being destroyed). Returns whether it did.
    bool try_add_ref() noexcept {
        std::uint32_t seen = refs.load(std::memory_order_relaxed);
        while (seen != 0) {
            if (refs.compare_exchange_weak(seen, seen + 1, std::memory_order_relaxed)) return true;
        }
        return false;
    }
};

// Drops one reference, and walks up the parent chain while counts reach zero
// (a loop, not recursion: long chains must not overflow the stack).
inline void release_ref(ContextNode* n) noexcept {
    while (n != nullptr && n->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        ContextNode* parent = n->parent;
        delete n;
        n = parent;
    }
}

// How IntrusiveRef counts context nodes (the handles Context, CancelFunc
// and CancelCauseFunc).
struct ContextRefOps {
    static void add_ref(ContextNode* n) noexcept { n->add_ref(); }
    static void release_ref(ContextNode* n) noexcept { detail::release_ref(n); }
};

// Makes `child` a child of `parent` (taking over one reference to `parent`)
// and copies what it inherits.
inline void attach_to_parent(ContextNode* child, ContextNode* parent) noexcept {
    child->parent = parent;
    if (parent != nullptr) {
        child->canceler = parent->canceler;
        child->deadline = parent->deadline;
    }
}

// Something to run once when a CancelNode is canceled: an after_func, or the
// link of a callback registered with {.context = ctx}. Intrusive, in a
// circular list under the node's mutex.
struct CancelListener {
    CancelListener* prev = nullptr;
    CancelListener* next = nullptr;
    bool linked = false;  // under the node's mutex, while the node is active

    // After the cancellation, on the canceling thread, with no lock held.
    virtual void fire() noexcept = 0;
    // True when firing would do nothing (pruned when the list grows).
    virtual bool obsolete() const noexcept { return false; }
    // Drops the list's reference (after fire(), or when removed).
    virtual void release_ref() noexcept = 0;

protected:
    CancelListener() = default;
    ~CancelListener() = default;
};

// The deadline timer of a CancelNode, pointing back at it, with the cause
// to report when it fires.
struct NodeTimer : TimerEntry {
    CancelNode* node = nullptr;
    std::exception_ptr cause;
};

// CancelNode::word: the error code in the low byte, plus two flags.
inline constexpr std::uint32_t kCodeMask = 0xFFu;
inline constexpr std::uint32_t kSettled = 0x100u;       // phase 1 of the cancellation marked every descendant
inline constexpr std::uint32_t kSettleWaiter = 0x200u;  // a thread sleeps until kSettled

struct CancelNode : ContextNode {
    WordMutex mutex;
    // The error code (kActive until canceled): written under mutex, last,
    // with release; read with acquire anywhere. kSettled is added without
    // the mutex by the thread that canceled this node, once all of its
    // descendants are canceled too.
    std::atomic<std::uint32_t> word{kActive};
    std::uint32_t listener_count = 0;        // under mutex
    std::uint32_t prune_at = 16;             // under mutex
    std::exception_ptr cause;                // written once under mutex, before err
    std::stop_source source;
    CancelNode* link_parent = nullptr;       // where this node registered; kept alive by `parent`
    bool in_parent_list = false;             // under link_parent->mutex
    CancelNode* prev = nullptr;              // siblings while in the parent's list (under its mutex),
    CancelNode* next = nullptr;              // then a cancellation's work list (its own)
    CancelNode* children = nullptr;          // ring, under mutex; holds no references
    CancelListener* listeners = nullptr;     // ring, under mutex; each holds the list's reference
    NodeTimer* timer = nullptr;              // immutable once published: the deadline timer, if any

    CancelNode() { canceler = this; }
    // Unlinks the node from its parent's list, and drops listeners that are
    // still linked (a node is destroyed with listeners only when none of
    // them keeps it alive).
    ~CancelNode() override;

    std::uint8_t state() const noexcept {
        return static_cast<std::uint8_t>(word.load(std::memory_order_acquire) & kCodeMask);
    }
    // Under mutex (or where only the code matters and no ordering is needed).
    std::uint8_t state_relaxed() const noexcept {
        return static_cast<std::uint8_t>(word.load(std::memory_order_relaxed) & kCodeMask);
    }
};

// A CancelNode with a deadline timer of its own.
struct TimedNode final : CancelNode {
    NodeTimer own_timer;
};

// Returns the node's state, or kActive for background / never-canceled nodes.
inline std::uint8_t state_of(const CancelNode* c) noexcept { return c == nullptr ? kActive : c->state(); }

inline std::error_code error_of(std::uint8_t state) noexcept {
    if (state == kActive) return {};
    return make_error_code(static_cast<errc>(state));
}

// The cause reported when none was given: an error equal to err(). One
// exception object per error, made once and never destroyed.
inline std::exception_ptr default_cause(std::uint8_t state) {
    static const std::exception_ptr* const canceled =
        new std::exception_ptr(std::make_exception_ptr(std::system_error(make_error_code(errc::canceled))));
    static const std::exception_ptr* const deadline =
        new std::exception_ptr(std::make_exception_ptr(std::system_error(make_error_code(errc::deadline_exceeded))));
    return state == kDeadlineExceeded ? *deadline : *canceled;
}

// Under `n->mutex` (n active): removes listeners that would do nothing, so a
// long-lived context that sees many short-lived registrations stays small.
// Returns them as a ring, to be released after unlocking.
inline CancelListener* prune_listeners_locked(CancelNode* n) noexcept {
    CancelListener* dropped = nullptr;
    if (n->listeners != nullptr) {
        CancelListener* l = n->listeners;
        std::uint32_t remaining = n->listener_count;
        for (std::uint32_t i = 0; i < remaining; ++i) {
            CancelListener* following = l->next;
            if (l->obsolete()) {
                ring_unlink(n->listeners, l);
                l->linked = false;
                --n->listener_count;
                ring_push_back(dropped, l);
            }
            l = following;
        }
    }
    n->prune_at = n->listener_count * 2 > 16 ? n->listener_count * 2 : 16;
    return dropped;
}

inline void release_listeners(CancelListener* ring) noexcept {
    while (CancelListener* l = ring_pop_front(ring)) l->release_ref();
}

inline CancelNode::~CancelNode() {
    if (link_parent != nullptr) {
        std::lock_guard<WordMutex> lock(link_parent->mutex);
        if (in_parent_list) {
            ring_unlink(link_parent->children, this);
            in_parent_list = false;
        }
    }
    release_listeners(listeners);
}

// Effect: links `l` (taking over the list's reference) so it fires when `n`
// is canceled. Returns false, linking nothing, if `n` is already canceled.
inline bool add_listener(CancelNode* n, CancelListener* l) noexcept {
    CancelListener* dropped = nullptr;
    {
        std::lock_guard<WordMutex> lock(n->mutex);
        if (n->state_relaxed() != kActive) return false;
        if (n->listener_count + 1 > n->prune_at) dropped = prune_listeners_locked(n);
        ring_push_back(n->listeners, l);
        l->linked = true;
        ++n->listener_count;
    }
    release_listeners(dropped);
    return true;
}

// Effect: unlinks `l` if it is still waiting in `n`'s list.
// Returns: true if it did (the caller now owns the list's reference).
inline bool remove_listener(CancelNode* n, CancelListener* l) noexcept {
    std::lock_guard<WordMutex> lock(n->mutex);
    if (n->state_relaxed() != kActive || !l->linked) return false;
    ring_unlink(n->listeners, l);
    l->linked = false;
    --n->listener_count;
    return true;
}

inline void remove_timer(CancelNode* n) noexcept;

// Phase 1 for one node (under its mutex only): the first cancellation of
// `n` wins. Moves n's children onto `work`, each with a reference taken for
// the work list; a child already being destroyed (count zero) is only
// unlinked, and its destructor then leaves the list alone. The listeners
// stay in n->listeners, owned by this cancellation from now on (nobody
// links or unlinks one on a canceled node).
inline bool mark_canceled(CancelNode* n, std::uint8_t code, const std::exception_ptr& cause,
                          CancelNode*& work) noexcept {
    std::lock_guard<WordMutex> lock(n->mutex);
    if (n->state_relaxed() != kActive) return false;
    n->cause = cause;
    n->word.store(code, std::memory_order_release);
    while (CancelNode* child = ring_pop_front(n->children)) {
        child->in_parent_list = false;
        if (child->try_add_ref()) ring_push_back(work, child);
    }
    n->listener_count = 0;
    return true;
}

// Phase 2 for one node, with no lock held: the effects that run user code.
inline void finish_cancel(CancelNode* n) noexcept {
    n->source.request_stop();
    if (n->timer != nullptr) remove_timer(n);
    CancelListener* listeners = std::exchange(n->listeners, nullptr);
    while (CancelListener* l = ring_pop_front(listeners)) {
        l->fire();
        l->release_ref();
    }
}

// By the thread that marked `n`, once its phase 1 marked every descendant.
inline void settle(CancelNode* n) noexcept {
    if ((n->word.fetch_or(kSettled, std::memory_order_acq_rel) & kSettleWaiter) != 0) n->word.notify_all();
}

// Returns once the phase 1 that marked `n` (another thread's) has marked
// all of n's descendants. That phase runs no user code, so this never waits
// for a callback, a stop_callback or a listener.
inline void wait_settled(CancelNode* n) noexcept {
    std::uint32_t seen = n->word.load(std::memory_order_acquire);
    if ((seen & kSettled) != 0) return;
    seen = n->word.fetch_or(kSettleWaiter, std::memory_order_acq_rel) | kSettleWaiter;
    while ((seen & kSettled) == 0) {
        n->word.wait(seen, std::memory_order_acquire);
        seen = n->word.load(std::memory_order_acquire);
    }
}

// Effect: cancels `root` and every descendant with (code, cause), unless
// `root` was canceled before. Last, unlinks `root` from its parent. The
// caller holds a reference to `root`.
// Returns: true if this call canceled `root`.
// Postcondition: err() of `root` and of every descendant is set; when it
// returns true, the stop_callbacks and listeners of every node this call
// marked have run (here, with no lock held). Nodes another call marked first
// get theirs from that call.
// Blocking: never waits for user code on another thread (see the top).
inline bool cancel_tree(CancelNode* root, std::uint8_t code, const std::exception_ptr& cause) noexcept {
    CancelNode* work = nullptr;    // to mark; each with a reference
    CancelNode* marked = nullptr;  // marked by this call, root excluded, in order
    CancelNode* others = nullptr;  // marked first by another call
    if (!mark_canceled(root, code, cause, work)) {
        wait_settled(root);  // its canceller's bookkeeping only
        return false;
    }
    while (CancelNode* child = ring_pop_front(work)) {
        if (mark_canceled(child, code, cause, work)) {
            ring_push_back(marked, child);
        } else {
            ring_push_back(others, child);
        }
    }
    // Wait below before settling above: waits point down the tree only.
    for (CancelNode* other = others; other != nullptr;) {
        wait_settled(other);
        other = other->next == others ? nullptr : other->next;
    }
    for (CancelNode* n = marked; n != nullptr;) {
        settle(n);
        n = n->next == marked ? nullptr : n->next;
    }
    settle(root);
    finish_cancel(root);
    while (CancelNode* n = ring_pop_front(marked)) {
        finish_cancel(n);
        release_ref(n);  // the work list's reference
    }
    while (CancelNode* other = ring_pop_front(others)) release_ref(other);
    if (CancelNode* parent = root->link_parent) {
        std::lock_guard<WordMutex> lock(parent->mutex);
        if (root->in_parent_list) {
            ring_unlink(parent->children, root);
            root->in_parent_list = false;
        }
    }
    return true;
}

inline void expire_timer(TimerEntry* entry) noexcept;

inline void remove_timer(CancelNode* n) noexcept {
    if (TimerService::shared().remove(n->timer)) release_ref(n);  // the timer's reference
}

inline void expire_timer(TimerEntry* entry) noexcept {
    CancelNode* n = static_cast<NodeTimer*>(entry)->node;
    cancel_tree(n, kDeadlineExceeded, n->timer->cause);
    release_ref(n);  // the timer's reference
}

// Effect: registers the new node `child` (whose parent fields are set) with
// its nearest cancelable ancestor, or cancels it right away if that ancestor
// is already canceled.
inline void link_to_canceler(CancelNode* child, CancelNode* ancestor) noexcept {
    if (ancestor == nullptr) return;
    std::uint8_t inherited = kActive;
    std::exception_ptr inherited_cause;
    {
        std::lock_guard<WordMutex> lock(ancestor->mutex);
        inherited = ancestor->state_relaxed();
        if (inherited == kActive) {
            child->link_parent = ancestor;
            child->in_parent_list = true;
            ring_push_back(ancestor->children, child);
        } else {
            inherited_cause = ancestor->cause;
        }
    }
    if (inherited != kActive) cancel_tree(child, inherited, inherited_cause);
}

// Before the node is linked anywhere: gives it a deadline timer, due at
// n->deadline (which must be in the future). Armed by arm_timer().
inline void prepare_timer(TimedNode* n, std::exception_ptr cause) noexcept {
    n->own_timer.node = n;
    n->own_timer.due = n->deadline;
    n->own_timer.expire = &expire_timer;
    n->own_timer.cause = std::move(cause);
    n->timer = &n->own_timer;
}

// Effect: schedules the timer prepared above, with a reference for it.
// Throws: what TimerService::schedule throws (nothing is scheduled then).
inline void arm_timer(CancelNode* n) {
    n->add_ref();
    bool scheduled = false;
    try {
        // A node canceled already (by its parent) needs no timer.
        scheduled = n->state() == kActive && TimerService::shared().schedule(n->timer);
    } catch (...) {
        release_ref(n);
        throw;
    }
    if (!scheduled) {
        release_ref(n);
        return;
    }
    // A cancellation stores `err` before its remove_timer() takes the timer
    // mutex. If that removal ran before our schedule(), we see `err` here
    // and remove the timer ourselves; otherwise it removed the timer.
    if (n->state() != kActive) remove_timer(n);
}

// A with_value() node. Its key's type is T, so a key match identifies it.
template <class T>
struct ValueNode final : ContextNode {
    template <class V>
    ValueNode(const void* k, V&& v) : stored(std::forward<V>(v)) {
        key = k;
    }
    T stored;
};

// A CancelNode that is also canceled by an external std::stop_token.
struct StopTokenNode final : CancelNode {
    struct OnStop {
        StopTokenNode* node;
        // Holds a reference while cancelling: the cancellation may drop
        // every other one. If the count already reached zero, the node is
        // being destroyed by a thread that waits (in ~stop_callback) for
        // this call: there is nothing left to cancel.
        void operator()() const noexcept {
            if (!node->try_add_ref()) return;
            cancel_tree(node, kCanceled, nullptr);
            release_ref(node);  // may destroy the node, and this callback with it (allowed on its own thread)
        }
    };
    // Destroyed first (it is the last member), so a concurrent invocation
    // finishes before the rest of the node goes.
    std::optional<std::stop_callback<OnStop>> on_stop;
};

// Go's WithCancel core: a new cancelable child of `parent` (null for
// background), returned with one reference for the caller's handle.
// Throws: std::bad_alloc (nothing created).
template <class Node = CancelNode>
Node* make_cancelable_node(ContextNode* parent) {
    auto* n = new Node();
    if (parent != nullptr) parent->add_ref();
    attach_to_parent(n, parent);
    n->canceler = n;
    link_to_canceler(n, parent != nullptr ? parent->canceler : nullptr);
    return n;
}

// Go's WithDeadlineCause core: as make_cancelable_node, canceled with
// deadline_exceeded at `own_deadline` (a plain cancelable child when the
// parent's deadline comes first).
// Throws: std::bad_alloc, or what starting the timer thread throws (nothing
// is left behind then).
inline CancelNode* make_deadline_node(ContextNode* parent, steady_time own_deadline, std::exception_ptr cause) {
    const steady_time inherited = parent != nullptr ? parent->deadline : kNoDeadline;
    if (!(own_deadline < inherited)) return make_cancelable_node(parent);
    auto* n = new TimedNode();
    if (parent != nullptr) parent->add_ref();
    attach_to_parent(n, parent);
    n->canceler = n;
    n->deadline = own_deadline;
    const bool expired = own_deadline <= std::chrono::steady_clock::now();
    if (!expired) prepare_timer(n, cause);
    link_to_canceler(n, parent != nullptr ? parent->canceler : nullptr);
    if (expired) {
        cancel_tree(n, kDeadlineExceeded, cause);
    } else {
        try {
            arm_timer(n);
        } catch (...) {
            cancel_tree(n, kCanceled, nullptr);  // unlinks it from the parent
            release_ref(n);
            throw;
        }
    }
    return n;
}

// What CancelFunc and CancelCauseFunc hold: a counted reference to the node
// they cancel (Go's CancelFunc closes over its context the same way).
class CancelHandle {
public:
    CancelHandle() noexcept = default;
    explicit CancelHandle(CancelNode* counted) noexcept : node_(IntrusiveRef<CancelNode, ContextRefOps>::adopt(counted)) {}

protected:
    // Effect: cancels the node with errc::canceled and `cause`, unless it
    // was canceled already (cancel_tree).
    void cancel(std::exception_ptr cause) const noexcept {
        if (node_) cancel_tree(node_.get(), kCanceled, cause);
    }

private:
    IntrusiveRef<CancelNode, ContextRefOps> node_;
};

// now + d, saturated: huge timeouts mean "no deadline" instead of overflow.
template <class Rep, class Period>
steady_time deadline_after(const std::chrono::duration<Rep, Period>& d) {
    const steady_time now = std::chrono::steady_clock::now();
    using Wide = std::chrono::duration<long double, std::nano>;
    const Wide wide = std::chrono::duration_cast<Wide>(d);
    if (wide != wide) return now;  // NaN: treat as zero (already expired)
    if (wide >= Wide(kNoDeadline - now)) return kNoDeadline;
    // Far in the past: any time before now means "already expired".
    if (wide <= -Wide(now.time_since_epoch())) return steady_time{};
    return now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(wide);
}

}  // namespace cbm::detail
