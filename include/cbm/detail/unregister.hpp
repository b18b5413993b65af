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
    n->destroy_target_once(false);
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

// What a scan of the thread records collects: at most N items; one more
// sets `overflow` instead (the caller then falls back to a coarser wait).
template <class Item, std::size_t N>
struct BoundedList {
    Item items[N];
    std::size_t count = 0;
    bool overflow = false;
    void add(const Item& item) noexcept {
        if (count == N) {
            overflow = true;
        } else {
            items[count++] = item;
        }
    }
};

// Returns once no thread other than the caller runs `n`, except threads on a
// wait cycle back to the caller (see waits_back_on): those are blocked in a
// cbm wait for an invocation the caller is inside, so waiting for them would
// deadlock. Returns true when it waited for every other thread, false when
// it left some on a cycle (their invocations may still be running). The
// caller must have set kUnregistered | kWaiter and run writer_barrier() (or
// settled, see barrier_before_waiting) since.
//
// Only the announcements visible at the first scan can still run `n`: a
// trigger that announces it later reads it unregistered and skips it. So
// the wait follows those levels (a level is done once its node changes or it
// entered another trigger: `entries` moved; both are release stores, so the
// invocation happens-before the return) and ignores later announcements of
// the tombstone by triggers that walk past it.
inline bool wait_until_idle_elsewhere(NodeBase& n) {
    struct Held {
        ThreadRecord* record;
        TriggerLevel* level;
        std::uint64_t entries;
        bool done;
    };
    BoundedList<Held, 16> held;
    any_record(false, [&](ThreadRecord& r) {
        for_each_level(r, [&](TriggerLevel& l) {
            // The node first: the announcement is a release store after the
            // level's `entries`, so this reads the entries of that trigger.
            if (l.node.load(std::memory_order_acquire) != &n) return;
            held.add(Held{&r, &l, l.entries.load(std::memory_order_acquire), false});
        });
        return false;
    });
    const std::size_t count = held.count;
    const bool overflow = held.overflow;
    if (count == 0 && !overflow) return true;
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
        auto still_runs = [&](ThreadRecord& r) {
            if (inside != nullptr && waits_back_on(*inside, r)) {
                cut = true;
                return false;
            }
            return true;
        };
        if (overflow) {  // too many to follow one by one: every announcement counts
            any_record(false, [&](ThreadRecord& r) {
                blocked = record_announces(r, &n) && still_runs(r);
                return blocked;
            });
        } else {
            for (std::size_t i = 0; i < count; ++i) {
                Held& h = held.items[i];
                if (h.done) continue;
                if (h.level->node.load(std::memory_order_acquire) != &n ||
                    h.level->entries.load(std::memory_order_acquire) != h.entries) {
                    h.done = true;
                    continue;
                }
                if (still_runs(*h.record)) blocked = true;
            }
        }
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
// target hook destroys it once no trigger announces the node.
inline void destroy_target_if_idle(NodeBase& n, bool waited_for_all) noexcept {
    if (waited_for_all && !node_announced_by_self(&n)) n.destroy_target_once();
}

// ---- Fast blocking waits (the write-heavy mode of a group) ----------------
//
// A blocking unregister normally pays a heavy barrier (membarrier), several
// microseconds when another thread is running, because triggers announce
// with a compiler-only fence. A group whose blocking waits keep finding
// triggers inside it switches to a mode where every trigger of the group
// also runs one full fence on entry (after publishing its level), and a
// blocking unregister then settles with its own fence instead:
//
//   * A trigger level of the group that the writer's scan (after its fence)
//     does not see entered with a fence after publishing, so (Dekker) it
//     reads the node's new state and never runs it.
//   * A level it sees announcing the node is waited for precisely, as always.
//   * A level it sees inside the group announcing something else may have
//     announced the node after its entry fence and read a stale state (its
//     per-node announcement has only a compiler fence). The writer waits,
//     for a bounded spin, until that trigger has left (the level's `entries`
//     counter moved, or its domain changed; both stored with release, so the
//     trigger's work happens-before). If one does not leave in time, the
//     writer falls back to the heavy barrier and the ordinary wait.
//
// Turning the mode on: set `fenced_entry`, heavy barrier, then set
// `fast_writes`. A trigger reads `fenced_entry` after publishing its domain:
// either it published before the barrier (so a writer sees it) or it reads
// the flag set and fences. Turning it off: clear `fast_writes` (seq_cst),
// wait until no writer is settling (`fast_writers`, incremented seq_cst
// before the writer rereads `fast_writes`: of the two, at least one sees the
// other), heavy barrier (so triggers that start unfenced see every state a
// fast writer set), clear `fenced_entry`. Only with membarrier: with fences
// or under TSan the writer's barrier already is a fence.

// Blocking unregisters of this thread that settled without a heavy barrier,
// and how often any group entered and left the mode (for tests).
inline constinit thread_local std::uint64_t t_fast_settles = 0;
inline std::atomic<std::uint64_t> g_fast_mode_entries{0};
inline std::atomic<std::uint64_t> g_fast_mode_exits{0};

inline constexpr std::uint32_t kContendedWaitsToGoFast = 8;  // in a row
inline constexpr std::uint32_t kQuietWaitsToGoBack = 1024;   // in a row
inline constexpr std::uint32_t kTimeoutsToGoBack = 4;        // in a row
// About the cost of the membarrier it replaces (a few microseconds here):
// waiting longer than that for a trigger to leave gains nothing.
inline constexpr int kSettleSpins = 128;

// Counters of the mode live on a line that writers share; triggers never
// read it, but a store of an unchanged zero would still take it exclusive.
inline void reset_if_set(std::atomic<std::uint32_t>& counter) noexcept {
    if (counter.load(std::memory_order_relaxed) != 0) counter.store(0, std::memory_order_relaxed);
}

inline void enter_fast_writes(GroupState& group) {
    std::lock_guard<std::mutex> lock(group.mutex);
    if (group.fast_writes.load(std::memory_order_relaxed)) return;
    group.fenced_entry.store(true, std::memory_order_relaxed);
    heavy_barrier();
    group.fast_writes.store(true, std::memory_order_release);
    group.quiet_waits.store(0, std::memory_order_relaxed);
    group.settle_timeouts.store(0, std::memory_order_relaxed);
    g_fast_mode_entries.fetch_add(1, std::memory_order_relaxed);
}

// `timed_out`: left because settles kept timing out; the group then needs
// twice as many contended waits in a row to enter again (so a thread parked
// inside it does not make it flip back and forth), else as many as at first.
inline void leave_fast_writes(GroupState& group, bool timed_out) {
    std::lock_guard<std::mutex> lock(group.mutex);
    if (!group.fast_writes.load(std::memory_order_relaxed)) return;
    const std::uint32_t bar = group.contended_waits_to_enter.load(std::memory_order_relaxed);
    group.contended_waits_to_enter.store(timed_out ? (bar < (1u << 20) ? bar * 2 : bar) : kContendedWaitsToGoFast,
                                         std::memory_order_relaxed);
    group.fast_writes.store(false, std::memory_order_seq_cst);
    // Settling writers spin for a bounded time and never take the mutex.
    Backoff backoff;
    while (group.fast_writers.load(std::memory_order_seq_cst) != 0) backoff.pause();
    heavy_barrier();
    group.fenced_entry.store(false, std::memory_order_relaxed);
    group.contended_waits.store(0, std::memory_order_relaxed);
    g_fast_mode_exits.fetch_add(1, std::memory_order_relaxed);
}

// After the writer's fence: waits until every other thread's level inside
// `group` that does not announce `n` has left that trigger. Returns false
// when one has not within the spin budget (or there are too many to track).
inline bool settle_levels_of(const GroupState& group, const NodeBase& n, bool& found_inside) {
    struct Inside {
        TriggerLevel* level;
        std::uint64_t entries;
    };
    BoundedList<Inside, 32> inside;
    any_record(false, [&](ThreadRecord& r) {
        for_each_level(r, [&](TriggerLevel& l) {
            if (l.domain.load(std::memory_order_acquire) != &group) return;
            found_inside = true;
            const std::uint64_t entries = l.entries.load(std::memory_order_acquire);
            if (l.node.load(std::memory_order_acquire) == &n) return;  // the precise wait's
            inside.add(Inside{&l, entries});
        });
        return inside.overflow;
    });
    if (inside.overflow) return false;
    for (int spin = 0; inside.count != 0; ++spin) {
        if (spin == kSettleSpins) return false;
        const Inside& last = inside.items[inside.count - 1];
        if (last.level->entries.load(std::memory_order_acquire) != last.entries ||
            last.level->domain.load(std::memory_order_acquire) != &group) {
            --inside.count;
        } else {
            cpu_relax();
        }
    }
    return true;
}

// The barrier half of a blocking unregister of `n`: a fence and a settle in
// the write-heavy mode, else the writer barrier. Also decides when the
// group enters or leaves that mode.
inline void barrier_before_waiting(NodeBase& n) {
    GroupState& group = *n.group;
    if (g_barrier_mode.load(std::memory_order_relaxed) != BarrierMode::membarrier) {
        writer_barrier();
        return;
    }
    bool found_inside = false;
    if (group.fast_writes.load(std::memory_order_acquire)) {
        group.fast_writers.fetch_add(1, std::memory_order_seq_cst);
        bool settled = false;
        if (group.fast_writes.load(std::memory_order_seq_cst)) {
            full_fence();
            settled = settle_levels_of(group, n, found_inside);
        }
        group.fast_writers.fetch_sub(1, std::memory_order_release);
        if (settled) {
            ++t_fast_settles;
            reset_if_set(group.settle_timeouts);
            if (found_inside) {
                reset_if_set(group.quiet_waits);
            } else if (group.quiet_waits.fetch_add(1, std::memory_order_relaxed) + 1 >= kQuietWaitsToGoBack) {
                leave_fast_writes(group, false);
            }
            return;
        }
        writer_barrier();
        // A trigger that stays inside (a long or parked callback) makes every
        // settle time out: the mode then only costs, so leave it.
        if (group.settle_timeouts.fetch_add(1, std::memory_order_relaxed) + 1 >= kTimeoutsToGoBack) {
            leave_fast_writes(group, true);
        }
        return;
    }
    writer_barrier();
    if (!domain_entered_elsewhere(&group)) {
        reset_if_set(group.contended_waits);  // the mode needs contended waits in a row
    } else if (group.contended_waits.fetch_add(1, std::memory_order_relaxed) + 1 >=
               group.contended_waits_to_enter.load(std::memory_order_relaxed)) {
        enter_fast_writes(group);
    }
}

// Registration::unregister (`wait`) and unregister_nowait.
inline bool unregister_node(NodeBase& n, bool wait) {
    const std::uint32_t bits = kUnregistered | (wait ? kWaiter : 0u);
    const bool won = (n.state.fetch_or(bits, std::memory_order_acq_rel) & kUnregistered) == 0;
    if (won) detach(&n);
    if (wait) {
        barrier_before_waiting(n);
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
