// cbm/detail/key_table.hpp - the registry's key -> CallbackList table, read
// without locks.
//
// Shape: a chained hash table. Each bucket is a singly linked chain of Links;
// each Link points at an Entry (a CallbackList with its key). Keys are
// created on demand and removed as soon as their last callback goes (the
// entry's on_emptied()).
//
// Memory ordering: writers (under the group mutex) publish a new chain link
// or a whole new bucket array with a release store; triggers load with
// acquire inside a TriggerScope, so unlinked entries, links and old bucket
// arrays stay readable until the epoch-based reclamation (epoch.hpp) frees
// them. Links are never re-pointed after a resize: a resize builds new links
// for a new array and retires the old array with its links.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "callback_list.hpp"
#include "epoch.hpp"
#include "group_state.hpp"
#include "unregister.hpp"

namespace cbm::detail {

// A registry key as text (metric label, dead letter): strings as they are,
// numbers and enums in decimal, other types through operator<<, else empty.
template <class Key>
std::string key_text(const Key& key) {
    if constexpr (std::is_convertible_v<const Key&, std::string_view>) {
        return std::string(std::string_view(key));
    } else if constexpr (std::is_arithmetic_v<Key>) {
        return std::to_string(key);
    } else if constexpr (std::is_enum_v<Key>) {
        return std::to_string(static_cast<std::underlying_type_t<Key>>(key));
    } else if constexpr (requires(std::ostream& os) { os << key; }) {
        std::ostringstream out;
        out << key;
        return out.str();
    } else {
        return std::string();
    }
}

// K can look up a Key without conversion: both functors are transparent.
template <class Hash, class KeyEqual, class K, class Key>
concept transparent_lookup = requires {
    typename Hash::is_transparent;
    typename KeyEqual::is_transparent;
} && !std::is_same_v<std::remove_cvref_t<K>, Key> && std::is_invocable_r_v<std::size_t, const Hash&, const K&> &&
                             std::is_invocable_r_v<bool, const KeyEqual&, const Key&, const K&>;

template <class Key, class Hash, class KeyEqual>
class KeyTable {
public:
    // One key's callbacks.
    struct Entry final : Retirable, CallbackList {
        Entry(const Key& k, std::size_t h, KeyTable* t) : key(k), hash(h), table(t) {}
        const Key key;
        const std::size_t hash;
        KeyTable* const table;

        // The key's last callback is gone: the key goes too.
        void on_emptied(RetireList& retired) noexcept override {
            retire_array(retired);
            if (!table->removing_every_key_) table->remove_entry(this);
        }
        std::string key_text() const override { return detail::key_text(key); }
    };

    KeyTable(GroupState& group, Hash hash, KeyEqual equal)
        : group_(group), hash_(std::move(hash)), equal_(std::move(equal)) {
        table_.store(Table::make(kMinBuckets), std::memory_order_relaxed);
    }
    KeyTable(const KeyTable&) = delete;
    KeyTable& operator=(const KeyTable&) = delete;
    // Precondition: every entry was taken out (take_every_key) and no
    // trigger is inside the table.
    ~KeyTable() { Table::reclaim(table_.load(std::memory_order_relaxed)); }

    template <class K>
    std::size_t hash(const K& key) const {
        return hash_(key);
    }

    // Readers (inside a TriggerScope) and writers (under the mutex).
    template <class K>
    Entry* find(const K& key, std::size_t h) const {
        for (Link* l = table_.load(std::memory_order_acquire)->bucket(h).load(std::memory_order_acquire);
             l != nullptr; l = l->next.load(std::memory_order_acquire)) {
            Entry* e = l->entry;
            if (e->hash == h && equal_(e->key, key)) return e;
        }
        return nullptr;
    }

    // Under the mutex: true when `node`, detached and with its target hook
    // still retired, was detached from an entry of `key`. That entry is then
    // still allocated: it was retired after the node's hook (on_emptied runs
    // after the last remove), and entries wait for older hooks (epoch.hpp).
    template <class K>
    bool was_in(const NodeBase& node, const K& key, std::size_t h) const {
        const auto* e = static_cast<const Entry*>(node.former_list);
        return e != nullptr && e->hash == h && equal_(e->key, key);
    }

    // Under the mutex: the entry of `key`, created if missing (`created`).
    // Throws std::bad_alloc before publishing anything.
    Entry* find_or_create(const Key& key, std::size_t h, bool& created) {
        Entry* entry = find(key, h);
        created = entry == nullptr;
        return created ? create_entry(key, h) : entry;
    }

    // Under the mutex: unlinks and retires `entry`, which has no callbacks.
    void remove_entry(Entry* entry) noexcept {
        Table* table = table_.load(std::memory_order_relaxed);
        std::atomic<Link*>* link_to = &table->bucket(entry->hash);
        Link* l = link_to->load(std::memory_order_relaxed);
        while (l != nullptr && l->entry != entry) {
            link_to = &l->next;
            l = l->next.load(std::memory_order_relaxed);
        }
        if (l == nullptr) return;
        link_to->store(l->next.load(std::memory_order_relaxed), std::memory_order_release);
        group_.retired.retire(l, &reclaim_link);
        group_.retired.retire(entry, &reclaim_entry, RetireAfter::epoch_and_older_hazards);
        key_count_.store(key_count() - 1, std::memory_order_relaxed);
        const std::size_t buckets = table->bucket_count();
        if (group_.alive && buckets > kMinBuckets && key_count() < buckets / 8) {
            try {
                rebuild(buckets / 4);
            } catch (...) {
                // Shrinking is an optimisation; keep the larger table.
            }
        }
    }

    // Under the mutex: every entry.
    template <class Visit>
    void for_each_entry(Visit&& visit) const {
        Table* table = table_.load(std::memory_order_relaxed);
        for (std::size_t i = 0; i < table->bucket_count(); ++i) {
            for (Link* l = table->buckets[i].load(std::memory_order_relaxed); l != nullptr;
                 l = l->next.load(std::memory_order_relaxed)) {
                visit(l->entry);
            }
        }
    }

    // Under the mutex: takes every callback of every key (the keys go with
    // them). Returns how many this call unregistered.
    // In bulk: the keys leave with one new, empty table (their links go with
    // the old one), not one unlink and table resize per key.
    std::size_t take_every_key(TakenNodes& taken) {
        Table* old = table_.load(std::memory_order_relaxed);
        Table* empty = Table::make(kMinBuckets);  // these two may throw: before anything changed
        std::size_t callbacks = 0;
        for_each_entry([&](const Entry* e) { callbacks += e->count(); });
        try {
            taken.reserve(callbacks);
        } catch (...) {
            Table::reclaim(empty);
            throw;
        }
        std::size_t removed = 0;
        removing_every_key_ = true;
        for_each_entry([&](Entry* e) { removed += taken.take_all(group_, *e); });
        removing_every_key_ = false;
        table_.store(empty, std::memory_order_release);
        for (std::size_t i = 0; i < old->bucket_count(); ++i) {
            for (Link* l = old->buckets[i].load(std::memory_order_relaxed); l != nullptr;
                 l = l->next.load(std::memory_order_relaxed)) {
                group_.retired.retire(l->entry, &reclaim_entry, RetireAfter::epoch_and_older_hazards);
            }
        }
        group_.retired.retire(old, &Table::reclaim);
        key_count_.store(0, std::memory_order_relaxed);
        return removed;
    }

    // Keys that have at least one callback (a moment's value).
    std::size_t key_count() const noexcept { return key_count_.load(std::memory_order_relaxed); }

private:
    static constexpr std::size_t kMinBuckets = 16;

    struct Link final : Retirable {
        Entry* entry = nullptr;
        std::atomic<Link*> next{nullptr};
    };

    struct Table final : Retirable {
        std::size_t mask = 0;
        std::unique_ptr<std::atomic<Link*>[]> buckets;

        static Table* make(std::size_t bucket_count) {
            auto table = std::make_unique<Table>();
            table->buckets = std::make_unique<std::atomic<Link*>[]>(bucket_count);
            for (std::size_t i = 0; i < bucket_count; ++i) table->buckets[i].store(nullptr, std::memory_order_relaxed);
            table->mask = bucket_count - 1;
            return table.release();
        }
        std::size_t bucket_count() const noexcept { return mask + 1; }
        std::atomic<Link*>& bucket(std::size_t h) const noexcept { return buckets[h & mask]; }

        // Deletes the array and the links still in it (not the entries).
        static void reclaim(Retirable* r) noexcept {
            auto* table = static_cast<Table*>(r);
            for (std::size_t i = 0; i < table->bucket_count(); ++i) {
                Link* l = table->buckets[i].load(std::memory_order_relaxed);
                while (l != nullptr) {
                    Link* next = l->next.load(std::memory_order_relaxed);
                    delete l;
                    l = next;
                }
            }
            delete table;
        }
    };

    static void reclaim_link(Retirable* r) noexcept { delete static_cast<Link*>(r); }
    static void reclaim_entry(Retirable* r) noexcept { delete static_cast<Entry*>(r); }

    // Under the mutex. Throws before publishing anything.
    Entry* create_entry(const Key& key, std::size_t h) {
        Table* table = table_.load(std::memory_order_relaxed);
        if (key_count() + 1 > table->bucket_count()) table = rebuild(table->bucket_count() * 2);
        auto entry = std::make_unique<Entry>(key, h, this);
        auto link = std::make_unique<Link>();
        link->entry = entry.get();
        std::atomic<Link*>& bucket = table->bucket(h);
        link->next.store(bucket.load(std::memory_order_relaxed), std::memory_order_relaxed);
        bucket.store(link.release(), std::memory_order_release);
        key_count_.store(key_count() + 1, std::memory_order_relaxed);
        return entry.release();
    }

    // Under the mutex: publishes a table of `bucket_count` buckets holding
    // every current entry and retires the old one. Throws std::bad_alloc
    // before publishing anything.
    Table* rebuild(std::size_t bucket_count) {
        Table* old = table_.load(std::memory_order_relaxed);
        std::unique_ptr<Table, void (*)(Table*)> fresh(Table::make(bucket_count), [](Table* t) { Table::reclaim(t); });
        for_each_entry([&](Entry* e) {
            auto link = std::make_unique<Link>();
            link->entry = e;
            std::atomic<Link*>& bucket = fresh->bucket(e->hash);
            link->next.store(bucket.load(std::memory_order_relaxed), std::memory_order_relaxed);
            bucket.store(link.release(), std::memory_order_relaxed);
        });
        Table* published = fresh.release();
        table_.store(published, std::memory_order_release);
        group_.retired.retire(old, &Table::reclaim);
        return published;
    }

    GroupState& group_;
    Hash hash_;
    KeyEqual equal_;
    std::atomic<Table*> table_{nullptr};     // written under the mutex
    std::atomic<std::size_t> key_count_{0};  // written under the mutex
    bool removing_every_key_ = false;        // under the mutex: take_every_key unlinks in bulk
};

}  // namespace cbm::detail
