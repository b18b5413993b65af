// cbm/detail/node.hpp - one registered callback, as the machinery sees it
// before knowing its signature (NodeBase); typed_node.hpp adds the callable.
//
// Lifecycle of a node's state word (low bits; kFiltered, kOnce, kMeasured
// and kResilient are set before publication and never change, so that a
// trigger learns "registered and plain" from one load and one compare with
// zero):
//   0 (registered) --fetch_or(kUnregistered)--> kUnregistered (terminal)
//   The thread whose fetch_or first sets kUnregistered "wins": it detaches
//   the node from its list (or finds it detached by clear/destruction).
//   A blocking unregister also sets kWaiter: a trigger that finishes a
//   callback and sees kWaiter wakes the waiters through `wake`.
//
// Memory ordering: see callback_list.hpp (publication) and unregister.hpp
// (the handshake between a trigger and a blocking unregister).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>

#include "../executor.hpp"
#include "callback_stats.hpp"
#include "epoch.hpp"
#include "group_state.hpp"

namespace cbm::detail {

inline constexpr std::uint32_t kUnregistered = 1u;
inline constexpr std::uint32_t kWaiter = 2u;
inline constexpr std::uint32_t kFiltered = 4u;    // immutable: the node has a filter
inline constexpr std::uint32_t kOnce = 8u;        // immutable: the node runs at most once
inline constexpr std::uint32_t kMeasured = 16u;   // immutable: the node has CallbackStats
inline constexpr std::uint32_t kResilient = 32u;  // immutable: the node has a Resilience block
inline constexpr std::uint32_t kTimed = 64u;      // immutable: every invocation is timed (exact latency)
// Set while at least one cbm::Blocker blocks the node (NodeBase::blockers,
// under the group's mutex, decides; the bit tells triggers). Any set bit
// sends a trigger off the plain path, so blocking costs it nothing else.
inline constexpr std::uint32_t kBlocked = 128u;

struct NodeBase;
struct CallbackList;
struct Resilience;

// Links a node into a RetireList without making Retirable its first base,
// which keeps the fields a trigger reads together at the start of the node.
struct NodeRetireHook : Retirable {
    NodeBase* node = nullptr;
};

// Something that must learn when a node's callable is destroyed: the link
// of CallbackOptions::context, which then leaves its context's list and lets
// the context go. The node holds one reference to it (its own count), which
// target_destroyed() drops.
struct TargetCompanion {
    virtual void target_destroyed() noexcept = 0;

protected:
    TargetCompanion() = default;
    ~TargetCompanion() = default;
};

// Size of the type-erased callable stored in every node (a Callback<Sig> of
// any signature: two function pointers and three pointers of storage).
inline constexpr std::size_t kCallableBytes = 5 * sizeof(void*);

// Two hooks per node, two lifetimes: `target_hook` is retired when the node
// is detached and destroys the user's callable once no trigger announces the
// node (epoch.hpp: hazard-retired); `retire_hook` is retired when the last array holding the node
// is dropped and drops the list's reference to the node. Each holds a
// reference, so either may be reclaimed first.
//
// Everything a trigger reads of a node without a filter is in its first 64
// bytes. (Not alignas(64): over-aligned allocation bypasses malloc's fast
// per-thread caches and made add+unregister several times slower.)
struct NodeBase {
    // Hot: read by every trigger.
    std::atomic<std::uint32_t> state{0};  // see the lifecycle above
    std::atomic<bool> target_destroyed{false};
    alignas(void*) unsigned char callable[kCallableBytes];  // a Callback<Sig>, see Node<Sig>

    // Cold.
    NodeRetireHook retire_hook;
    NodeRetireHook target_hook;
    std::atomic<std::uint32_t> refs{2};  // the list's reference + the first handle's
    std::atomic<std::uint32_t> wake{0};  // bumped to wake blocking unregisters
    int priority = 0;                    // immutable
    CallbackList* list = nullptr;        // under the group mutex; null once detached
    CallbackList* former_list = nullptr; // under the group mutex: the list it was detached from
    GroupState* group = nullptr;         // counted reference, immutable
    std::string name;                    // immutable
    CallbackStats* stats = nullptr;      // immutable, counted: the node's metric series (instrumented groups)
    Resilience* resilience = nullptr;    // immutable; owned by Node<Sig>: timeout / retry / circuit breaker
    AnyExecutor* executor = nullptr;     // immutable; owned by Node<Sig>: CallbackOptions::executor (null: the group's)
    // Set once, after publication (ContextBinding::attach); taken by whoever
    // sees both it and target_destroyed (seq_cst on both sides).
    std::atomic<TargetCompanion*> companion{nullptr};
    std::uint32_t blockers = 0;  // under the group mutex: live cbm::Blockers of this node

    NodeBase() noexcept {
        retire_hook.node = this;
        target_hook.node = this;
    }
    NodeBase(const NodeBase&) = delete;
    NodeBase& operator=(const NodeBase&) = delete;

    bool is_once() const noexcept { return (state.load(std::memory_order_relaxed) & kOnce) != 0; }
    bool blocked() const noexcept { return (state.load(std::memory_order_acquire) & kBlocked) != 0; }

    // One more (or one fewer) blocker; the first sets kBlocked and the last
    // clears it, under the group's mutex so that the two cannot interleave.
    // Release: a trigger that acquires the state and sees the bit sees the
    // block as the blocking thread left it.
    void add_blocker() {
        std::lock_guard<std::mutex> lock(group->mutex);
        if (blockers++ == 0) state.fetch_or(kBlocked, std::memory_order_release);
    }
    void remove_blocker() noexcept {
        std::lock_guard<std::mutex> lock(group->mutex);
        if (--blockers == 0) state.fetch_and(~kBlocked, std::memory_order_release);
    }
    bool unregistered() const noexcept { return (state.load(std::memory_order_acquire) & kUnregistered) != 0; }

    void add_ref() noexcept { refs.fetch_add(1, std::memory_order_relaxed); }
    // The last reference deletes the node and then drops its group reference.
    void release_ref() noexcept {
        if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            GroupState* g = group;
            delete this;
            g->release_ref();
        }
    }

    // Destroys the user's callable and filter exactly once, then tells the
    // metric series and the companion. `was_registered`: false for a node
    // that was never linked into a list. The caller holds a reference.
    void destroy_target_once(bool was_registered = true) noexcept {
        if (target_destroyed.exchange(true, std::memory_order_seq_cst)) return;
        destroy_target();
        if (stats != nullptr) {
            // The series is kept (metric_series.hpp), unless only this node,
            // never registered, had it.
            if (was_registered) {
                group->series.detach(stats);
            } else {
                group->series.abandon(stats);
            }
        }
        take_companion_after_destroy();
    }

    // Effect: `c` (holding one reference for the node) learns of the
    // target's destruction: when it happens, or now if it already has.
    void set_companion(TargetCompanion* c) noexcept {
        companion.store(c, std::memory_order_seq_cst);
        if (target_destroyed.load(std::memory_order_seq_cst)) take_companion_after_destroy();
    }

protected:
    virtual ~NodeBase() = default;

private:
    // Store-then-load on both sides (Dekker): at least one side sees the
    // other, and the exchange lets exactly one of them tell the companion.
    void take_companion_after_destroy() noexcept {
        if (TargetCompanion* c = companion.exchange(nullptr, std::memory_order_seq_cst)) c->target_destroyed();
    }

protected:
    // Destroys the callable and filter (Node<Sig> knows their types).
    virtual void destroy_target() noexcept = 0;
};

// Reclaim functions for the two hooks. Each hook holds its own node
// reference: batches of different threads may run out of retirement order,
// so the node's memory must not depend on which hook goes first.
inline void reclaim_hooked_node(Retirable* r) noexcept {
    NodeBase* node = static_cast<NodeRetireHook*>(r)->node;
    node->destroy_target_once();
    node->release_ref();
}

// Retires the user's callable of a node just detached and marked
// unregistered: reclaimed once no trigger announces the node, that is once
// no trigger can still be filtering or running it.
inline void retire_target(NodeBase* n, RetireList& retired) noexcept {
    n->add_ref();
    retired.retire_until_unannounced(&n->target_hook, &reclaim_hooked_node, static_cast<const void*>(n),
                                     &n->target_destroyed);
}

// Retires the list's reference to a node that the last array holding it
// no longer does.
inline void retire_list_reference(NodeBase* n, RetireList& retired) noexcept {
    retired.retire(&n->retire_hook, &reclaim_hooked_node);
}

}  // namespace cbm::detail
