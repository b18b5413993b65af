// cbm/detail/callback_list.hpp - the ordered, lock-free-to-read list of
// callbacks behind CallbackGroup and every key of CallbackRegistry.
//
// Shape: an array of node pointers, ordered by priority (descending) then by
// registration order, published through one atomic pointer. Writers (add,
// unregister, clear) hold the GroupState's mutex; readers (trigger) take no
// lock and do no read-modify-write on shared memory except to claim a `once`
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
// Memory ordering (publication): the node is fully built, then stored into
// its slot (release), then the array's count is published (release). A
// trigger reads the array pointer and then its count once (acquire), so
// callbacks appended after it started are beyond its count, and callbacks
// placed by a rebuild are in an array it does not hold: a trigger never runs
// a callback added after it started. A replaced array, and the tombstones
// only it held, are retired (epoch.hpp) and stay readable until every
// trigger that could hold that array has left.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>
#include <string>

#include "epoch.hpp"
#include "node.hpp"

namespace cbm::detail {

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

// One ordered list. Every member is written under the group mutex.
struct CallbackList {
    CallbackList() = default;
    CallbackList(const CallbackList&) = delete;
    CallbackList& operator=(const CallbackList&) = delete;

    std::atomic<NodeArray*> array{nullptr};  // null while nothing was ever added
    std::atomic<std::size_t> size{0};        // live callbacks
    std::uint32_t tombstones = 0;            // detached nodes still in `array`

    std::size_t count() const noexcept { return size.load(std::memory_order_relaxed); }

    // Under the mutex, when the list's last callback was just detached. A
    // group's list stays; a registry key removes itself (key_table.hpp).
    virtual void on_emptied(RetireList&) noexcept {}

    // The registry key as text (for metrics and dead letters); "" for a group.
    virtual std::string key_text() const { return {}; }

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
        n->list = this;
        size.store(count() + 1, std::memory_order_relaxed);
    }

    // Detaches `n` (leaving a tombstone that triggers skip), retires its
    // callable, and compacts the array once tombstones outnumber live
    // callbacks. Calls on_emptied() when it was the last one.
    void remove(NodeBase* n, RetireList& retired) noexcept {
        n->former_list = this;
        n->list = nullptr;
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
        if (count() == 0) on_emptied(retired);
    }

    // Detaches every node, then retires the array and calls on_emptied().
    // `visit(n)` sees each node before it is detached.
    template <class Visit>
    void remove_all(RetireList& retired, Visit&& visit) noexcept {
        for_each_live_node([&](NodeBase* n) {
            visit(n);
            n->former_list = this;
            n->list = nullptr;
            retire_target(n, retired);
        });
        size.store(0, std::memory_order_relaxed);
        retire_array(retired);
        on_emptied(retired);
    }

    // Retires the array and every node in it (all detached by now).
    void retire_array(RetireList& retired) noexcept {
        NodeArray* a = array.load(std::memory_order_relaxed);
        if (a == nullptr) return;
        retire_array_of(a, retired);
        array.store(nullptr, std::memory_order_release);
        tombstones = 0;
    }

    // Every node in the array, tombstones included.
    template <class Visit>
    void for_each_node(Visit&& visit) const {
        NodeArray* a = array.load(std::memory_order_relaxed);
        if (a == nullptr) return;
        const std::uint32_t used = a->count.load(std::memory_order_relaxed);
        for (std::uint32_t i = 0; i < used; ++i) visit(a->slots()[i].load(std::memory_order_relaxed));
    }

    // Every node still registered in this list (under the mutex).
    template <class Visit>
    void for_each_live_node(Visit&& visit) const {
        for_each_node([&](NodeBase* n) {
            if (n->list == this) visit(n);
        });
    }

    // Never deleted through this type (a registry key is deleted as its
    // Entry). By then every node was taken out and retired.
    ~CallbackList() {
        if (NodeArray* a = array.load(std::memory_order_relaxed)) NodeArray::destroy(a);
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
        for_each_live_node([&](NodeBase* node) {
            if (!placed && node->priority < extra->priority) {
                put(extra);
                placed = true;
            }
            put(node);
        });
        if (!placed) put(extra);
        fresh->count.store(out, std::memory_order_relaxed);
        array.store(fresh, std::memory_order_release);
        if (old != nullptr) retire_array_of(old, retired);
        tombstones = 0;
    }

    // Retires `old` with the tombstones that only it holds.
    void retire_array_of(NodeArray* old, RetireList& retired) noexcept {
        const std::uint32_t used = old->count.load(std::memory_order_relaxed);
        for (std::uint32_t i = 0; i < used; ++i) {
            NodeBase* node = old->slots()[i].load(std::memory_order_relaxed);
            if (node->list != this) retire_list_reference(node, retired);
        }
        retired.retire(old, &NodeArray::reclaim);
    }
};

}  // namespace cbm::detail
