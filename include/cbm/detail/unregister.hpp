// cbm/detail/unregister.hpp - taking callbacks out: unregister (blocking or
// not), clear/erase (TakenNodes) and the destruction of a group or registry,
// with the waits that make "when it returns, the callback runs nowhere else"
// true.
//
// Memory ordering (the handshake with triggers, thread_records.hpp): a
// trigger announces a node (relaxed store into its TriggerLevel, then
// light_barrier()) and only then reads the node's state. An unregister sets
// kUnregistered (fetch_or), runs writer_barrier(), then scans every level.
// So either the scan sees the announcement (and waits until it is
// withdrawn), or the trigger sees kUnregistered (and skips the node). The
// withdrawal is a release store; the waiter's acquire scan that sees it also
// sees everything the callback did. A trigger that withdraws and then sees
// kWaiter bumps `wake` and notifies, so a sleeping waiter re-scans.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "backoff.hpp"
#include "callback_list.hpp"
#include "epoch.hpp"
#include "group_state.hpp"
#include "non_copyable.hpp"
#include "node.hpp"
#include "thread_records.hpp"

namespace cbm::detail {

// Runs maybe_reclaim for a group a trigger retired into; queued by
// reclaim_soon and run when the thread leaves its outermost trigger.
inline void reclaim_deferred(void* context) noexcept {
    auto* group = static_cast<GroupState*>(context);
    {
        ReclaimBatch batch;
        std::lock_guard<std::mutex> lock(group->mutex);
        group->retired.maybe_reclaim(batch);
    }
    group->release_ref();
}

// After retiring into `group`: reclaim now (the caller's batch), or, when
// the caller is inside a trigger (which may hold some of it back), again
// as soon as it leaves its outermost trigger. Under the group mutex.
inline void reclaim_soon(GroupState& group, ReclaimBatch& batch) noexcept {
    ThreadRecord* self = t_record;
    if (self != nullptr && self->depth != 0) {
        group.add_ref();
        if (!defer_until_outside_triggers(&reclaim_deferred, &group)) group.release_ref();
    }
    group.retired.maybe_reclaim(batch);
}

// Detaches `n` from its list, if it is still in one.
inline void detach(NodeBase* n) {
    GroupState& group = *n->group;
    ReclaimBatch batch;
    std::lock_guard<std::mutex> lock(group.mutex);
    if (CallbackList* list = n->list) list->remove(n, group.retired);
    reclaim_soon(group, batch);
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

// True when the thread of `blocker` (which runs a node this thread waits
// for) is itself blocked in a cbm wait that leads back to `self`: it waits
// for a node `self` is inside, or for a node run by a thread that does, and
// so on. Waiting for it would close a cycle. Follows the edges "a record ->
// the node it waits for -> the records running that node".
inline bool waits_back_on(ThreadRecord& self, ThreadRecord& blocker) noexcept {
    try {
        std::vector<ThreadRecord*> visited;
        std::vector<ThreadRecord*> pending{&blocker};
        while (!pending.empty()) {
            ThreadRecord* r = pending.back();
            pending.pop_back();
            bool seen_before = false;
            for (ThreadRecord* v : visited) seen_before = seen_before || v == r;
            if (seen_before) continue;
            visited.push_back(r);
            const void* awaited = r->waiting_for.load(std::memory_order_seq_cst);
            if (awaited == nullptr) continue;
            if (record_announces(self, awaited)) return true;
            for (ThreadRecord* u = g_records.head.load(std::memory_order_acquire); u != nullptr; u = u->next_record) {
                if (u != r && u != &self && record_announces(*u, awaited)) pending.push_back(u);
            }
        }
    } catch (...) {
        // Out of memory: no cycle found, so wait (as before this check existed).
    }
    return false;
}

// Returns once no thread other than the caller runs `n`, except threads on a
// wait cycle back to the caller (see waits_back_on): those are blocked in a
// cbm wait for an invocation the caller is inside, so waiting for them would
// deadlock. Returns true when it waited for every other thread, false when
// it left some on a cycle (their invocations may still be running). The
// caller must have set kUnregistered | kWaiter and run writer_barrier() since.
inline bool wait_until_idle_elsewhere(NodeBase& n) {
    ThreadRecord* self = t_record;
    // Only a thread inside a trigger can be on a cycle (it runs something).
    ThreadRecord* const inside = self != nullptr && self->depth != 0 ? self : nullptr;
    if (inside != nullptr) inside->waiting_for.store(&n, std::memory_order_seq_cst);
    Backoff backoff;
    bool cut = false;
    for (;;) {
        const std::uint32_t seen = n.wake.load(std::memory_order_acquire);
        bool blocked = false;
        cut = false;
        any_record(false, [&](ThreadRecord& r) {
            if (!record_announces(r, &n)) return false;
            if (inside != nullptr && waits_back_on(*inside, r)) {
                cut = true;
                return false;
            }
            blocked = true;
            return true;
        });
        if (!blocked) break;
        if (backoff.sleeping()) {
            n.wake.wait(seen, std::memory_order_acquire);
        } else {
            backoff.pause();
        }
    }
    if (inside != nullptr) inside->waiting_for.store(nullptr, std::memory_order_seq_cst);
    return !cut;
}

// After a wait: destroys the callable now unless some thread may still run
// it (this one, or one on a cut wait cycle); then the retirement of its
// target hook destroys it once no trigger can reach it.
inline void destroy_target_if_idle(NodeBase& n, bool waited_for_all) noexcept {
    if (waited_for_all && !node_announced_by_self(&n)) n.destroy_target_once();
}

// Registration::unregister (`wait`) and unregister_nowait.
inline bool unregister_node(NodeBase& n, bool wait) {
    const std::uint32_t bits = kUnregistered | (wait ? kWaiter : 0u);
    const bool won = (n.state.fetch_or(bits, std::memory_order_acq_rel) & kUnregistered) == 0;
    if (won) detach(&n);
    if (wait) {
        writer_barrier();
        destroy_target_if_idle(n, wait_until_idle_elsewhere(n));
    }
    return won;
}

// Nodes taken out of lists by clear(), erase() or destruction, each with a
// reference held so they stay valid while we wait for them.
class TakenNodes : NonCopyable {
public:
    ~TakenNodes() {
        for (NodeBase* n : nodes_) n->release_ref();
    }

    // Room for `more` nodes, so that the next take_all calls that many need
    // no allocation. Throws: std::bad_alloc.
    void reserve(std::size_t more) { nodes_.reserve(nodes_.size() + more); }

    // Under the group mutex: marks every node of `list` unregistered,
    // detaches and retires them all. Returns how many this call unregistered.
    // Throws: std::bad_alloc before changing anything.
    std::size_t take_all(GroupState& group, CallbackList& list) {
        // Grow geometrically: a registry's clear() calls this once per key,
        // and reserving exactly made it quadratic in the number of keys.
        const std::size_t needed = nodes_.size() + list.count();
        if (needed > nodes_.capacity()) nodes_.reserve(needed > 2 * nodes_.capacity() ? needed : 2 * nodes_.capacity());
        std::size_t won = 0;
        list.remove_all(group.retired, [&](NodeBase* n) {
            n->add_ref();
            nodes_.push_back(n);
            const std::uint32_t old = n->state.fetch_or(kUnregistered | kWaiter, std::memory_order_acq_rel);
            if ((old & kUnregistered) == 0) ++won;
        });
        return won;
    }

    // Under the group mutex: also takes (to wait for) every node detached
    // earlier, by any path, whose callable no trigger has been proven done
    // with yet (its target hook is still retired, not reclaimed), where
    // `belongs(node)` says it was in the lists being cleared. So clear() and
    // erase() wait for callbacks that were there when they began, whoever
    // removed them first. Throws: std::bad_alloc before changing anything.
    template <class Belongs>
    void take_detached(GroupState& group, Belongs&& belongs) {
        std::vector<NodeBase*> found;
        group.retired.for_each([&](Retirable* r) {
            if (r->reclaim != &reclaim_hooked_node) return;
            NodeBase* n = static_cast<NodeRetireHook*>(r)->node;
            if (r == &n->target_hook && belongs(*n)) found.push_back(n);
        });
        reserve(found.size());
        for (NodeBase* n : found) {
            n->add_ref();
            n->state.fetch_or(kWaiter, std::memory_order_acq_rel);
            nodes_.push_back(n);
        }
    }

    // Outside the mutex: waits until no other thread runs any of the nodes,
    // then destroys their callables.
    void wait_and_destroy() {
        writer_barrier();
        for (NodeBase* n : nodes_) destroy_target_if_idle(*n, wait_until_idle_elsewhere(*n));
    }

private:
    std::vector<NodeBase*> nodes_;
};

// Waits until no other thread is inside a trigger of `domain`.
inline void wait_until_domain_idle(const void* domain) {
    writer_barrier();
    Backoff backoff;
    while (domain_entered_elsewhere(domain)) backoff.pause();
}

// The destructor of a group or registry: marks the group dead, takes every
// callback out (`take_all(TakenNodes&)`, under the mutex), waits until no
// other thread is inside a trigger of the group, destroys the callables,
// reclaims everything retired (no trigger can reach it any more), and drops
// the owner's reference to the group state.
template <class TakeAll>
void shut_down(GroupState* group, TakeAll&& take_all) {
    TakenNodes taken;
    {
        std::lock_guard<std::mutex> lock(group->mutex);
        group->alive = false;
        take_all(taken);
    }
    wait_until_domain_idle(group);
    taken.wait_and_destroy();
    {
        ReclaimBatch batch;
        std::lock_guard<std::mutex> lock(group->mutex);
        batch.append(group->retired.take_all());
    }
    group->release_ref();
}

}  // namespace cbm::detail
