// cbm/callback_registry.hpp - cbm::CallbackRegistry<Key, void(Args...)>:
// event key -> ordered callbacks, keys created on demand and removed as soon
// as their last callback goes.
//
// Memory ordering: the key table is a chained hash table read without locks.
// Writers (under the registry's one writer mutex) publish a new chain link or
// a whole new bucket array with a release store; triggers load with acquire
// inside a TriggerScope, so unlinked entries, links and old bucket arrays stay
// readable until the epoch-based reclamation of thread_records.hpp frees them.
// Links are never re-pointed after a resize: a resize builds new links for a
// new array and retires the old array with its links.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <stop_token>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "callback_group.hpp"
#include "context.hpp"
#include "detail/callback_list.hpp"
#include "detail/context_binding.hpp"
#include "detail/dispatch.hpp"
#include "error_policy.hpp"
#include "registration.hpp"

namespace cbm {

namespace detail {

// A registry key as metric label text.
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

}  // namespace detail

// A transparent hash for string keys: with it and std::equal_to<>,
// CallbackRegistry<std::string, Sig, cbm::string_hash, std::equal_to<>> looks
// keys up by std::string_view or string literal without building a
// std::string per trigger.
struct string_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

namespace detail {
// K can look up a Key without conversion: both functors are transparent.
template <class Hash, class KeyEqual, class K, class Key>
concept transparent_lookup = requires {
    typename Hash::is_transparent;
    typename KeyEqual::is_transparent;
} && !std::is_same_v<std::remove_cvref_t<K>, Key> && std::is_invocable_r_v<std::size_t, const Hash&, const K&> &&
                             std::is_invocable_r_v<bool, const KeyEqual&, const Key&, const K&>;
}  // namespace detail

template <class Key, class Signature, class Hash = std::hash<Key>, class KeyEqual = std::equal_to<Key>>
class CallbackRegistry;

// Thread safety: as CallbackGroup, for every member.
template <class Key, class... Args, class Hash, class KeyEqual>
class CallbackRegistry<Key, void(Args...), Hash, KeyEqual> {
public:
    using key_type = Key;
    using signature = void(Args...);
    using options_type = CallbackOptions<signature>;

    explicit CallbackRegistry(ErrorPolicy policy = ErrorPolicy::collect, Hash hash = Hash{},
                              KeyEqual equal = KeyEqual{})
        : hash_(std::move(hash)), equal_(std::move(equal)), anchor_(new detail::Anchor(policy)) {
        table_.store(Table::make(kMinBuckets), std::memory_order_relaxed);
    }
    // Effect: an empty registry with these options (error policy, metrics).
    explicit CallbackRegistry(GroupOptions options, Hash hash = Hash{}, KeyEqual equal = KeyEqual{})
        : hash_(std::move(hash)),
          equal_(std::move(equal)),
          anchor_(new detail::Anchor(options.error_policy, options.metrics, options.latency_sample_every,
                                     options.clock)) {
        table_.store(Table::make(kMinBuckets), std::memory_order_relaxed);
    }
    CallbackRegistry(const CallbackRegistry&) = delete;
    CallbackRegistry& operator=(const CallbackRegistry&) = delete;

    // Effect: unregisters every callback of every key, waits until no other
    // thread is inside trigger() on this registry, destroys every callable.
    // Precondition: not called from inside a callback of this registry.
    ~CallbackRegistry() {
        detail::shut_down(anchor_, [this](detail::TakenNodes& taken) { take_every_key(taken); });
        Table::reclaim(table_.load(std::memory_order_relaxed));  // shut_down left no entry in it
    }

    // Effect: registers `f` under `key`, creating the key if needed.
    // Throws: std::invalid_argument for an empty callable; std::bad_alloc, or
    // what Hash or KeyEqual throw. When it throws, nothing is registered and
    // no key is created.
    // Blocks: never on user code; takes the registry's writer lock briefly.
    template <class F>
        requires std::is_invocable_v<std::decay_t<F>&, Args...>
    Registration add(const Key& key, F&& f, options_type options = {}) {
        detail::check_labels(options.labels);
        const Context bound = std::move(options.context);
        detail::ContextBinding binding(bound);
        std::string text = anchor_->metrics ? detail::key_text(key) : std::string();
        auto* node = detail::make_node<signature>(*anchor_, std::forward<F>(f), std::move(options), std::move(text));
        if (binding.already_canceled()) return Registration(detail::make_unregistered(node));
        detail::ReclaimBatch batch;
        try {
            const std::size_t h = hash_(key);
            std::lock_guard<std::mutex> lock(anchor_->mutex);
            Entry* entry = find(table_.load(std::memory_order_relaxed), key, h);
            const bool created = entry == nullptr;
            if (created) entry = create_entry(key, h);
            try {
                entry->insert(node, anchor_->retired);
            } catch (...) {
                if (created) remove_entry(entry);  // no key without callbacks
                throw;
            }
            anchor_->retired.maybe_reclaim(batch);
        } catch (...) {
            node->refs.store(1, std::memory_order_relaxed);
            node->release_ref();
            throw;
        }
        Registration registration(node);
        binding.attach(registration);
        return registration;
    }

    // Effect: runs the callbacks registered under `key` (as CallbackGroup::trigger).
    // An unknown key creates nothing and returns a result with invoked == 0.
    // Blocks: only inside the callbacks themselves.
    TriggerResult trigger(const Key& key, Args... args) { return run(key, detail::NeverStop{}, args...); }

    // Effect: as trigger(key, args...), checking `token` before each callback.
    TriggerResult trigger(const std::stop_token& token, const Key& key, Args... args) {
        return run(key, [&token] { return token.stop_requested(); }, args...);
    }

    // Effect: as trigger(key, args...), checking `ctx` before each callback
    // and making it cbm::current_context() while they run (see
    // CallbackGroup::trigger(ctx, ...)).
    TriggerResult trigger(const Context& ctx, const Key& key, Args... args) { return run_in(ctx, key, args...); }

    // Heterogeneous lookup (for example std::string_view against std::string
    // keys) when Hash and KeyEqual are both transparent; see cbm::string_hash.
    template <class K>
        requires detail::transparent_lookup<Hash, KeyEqual, K, Key>
    TriggerResult trigger(const K& key, Args... args) {
        return run(key, detail::NeverStop{}, args...);
    }
    template <class K>
        requires detail::transparent_lookup<Hash, KeyEqual, K, Key>
    TriggerResult trigger(const std::stop_token& token, const K& key, Args... args) {
        return run(key, [&token] { return token.stop_requested(); }, args...);
    }
    template <class K>
        requires detail::transparent_lookup<Hash, KeyEqual, K, Key>
    TriggerResult trigger(const Context& ctx, const K& key, Args... args) {
        return run_in(ctx, key, args...);
    }

    // Effect: unregisters every callback under `key` and waits as
    // Registration::unregister does. Returns how many it unregistered.
    std::size_t erase(const Key& key) {
        detail::TakenNodes taken;
        std::size_t removed = 0;
        {
            const std::size_t h = hash_(key);
            detail::ReclaimBatch batch;
            std::lock_guard<std::mutex> lock(anchor_->mutex);
            if (Entry* entry = find(table_.load(std::memory_order_relaxed), key, h)) {
                removed = taken.take_all(*anchor_, *entry);
            }
            detail::reclaim_soon(*anchor_, batch);
        }
        taken.wait_and_destroy();
        return removed;
    }

    // Effect: erase() for every key. Returns how many callbacks it unregistered.
    std::size_t clear() {
        detail::TakenNodes taken;
        std::size_t removed = 0;
        {
            detail::ReclaimBatch batch;
            std::lock_guard<std::mutex> lock(anchor_->mutex);
            removed = take_every_key(taken);
            detail::reclaim_soon(*anchor_, batch);
            anchor_->retired.reclaim_unreachable(batch);
        }
        taken.wait_and_destroy();
        return removed;
    }

    // Number of callbacks registered under `key` (0 for an unknown key).
    std::size_t size(const Key& key) const {
        const std::size_t h = hash_(key);
        std::lock_guard<std::mutex> lock(anchor_->mutex);
        const Entry* entry = find(table_.load(std::memory_order_relaxed), key, h);
        return entry != nullptr ? entry->count() : 0;
    }
    bool contains(const Key& key) const { return size(key) != 0; }

    // Number of keys that have at least one callback (a moment's value).
    std::size_t key_count() const noexcept { return key_count_.load(std::memory_order_relaxed); }

    // The numbers of every registered callback of every key (see
    // metrics.hpp; the key is rendered as text: strings as they are,
    // numbers and enums in decimal, other types through operator<<, else
    // empty). Takes the writer lock briefly; triggers go on meanwhile.
    // Throws: std::logic_error unless constructed with GroupOptions::metrics.
    MetricsSnapshot metrics() const {
        require_metrics("metrics");
        MetricsSnapshot snapshot;
        std::lock_guard<std::mutex> lock(anchor_->mutex);
        for_each_entry(table_.load(std::memory_order_relaxed), [&](Entry* e) {
            e->for_each_node([&](detail::NodeBase* n) {
                if (n->core == e && n->stats != nullptr) {
                    snapshot.callbacks.push_back(detail::read_stats(
                        *n->stats, n->name, n->resilience != nullptr && n->resilience->circuit_open()));
                }
            });
        });
        return snapshot;
    }

    // Effect: as CallbackGroup::set_dead_letter_handler; DeadLetter::key is
    // the key as text (see metrics()).
    void set_dead_letter_handler(DeadLetterHandler handler) { anchor_->set_dead_letter_handler(std::move(handler)); }

    // Effect: as CallbackGroup::set_observer.
    void set_observer(std::shared_ptr<CallbackObserver> observer) {
        require_metrics("set_observer");
        anchor_->set_observer(std::move(observer));
    }

    // Every key that has at least one callback (a moment's copy).
    std::vector<Key> keys() const {
        std::vector<Key> result;
        std::lock_guard<std::mutex> lock(anchor_->mutex);
        for_each_entry(table_.load(std::memory_order_relaxed), [&](Entry* e) { result.push_back(e->key); });
        return result;
    }

    ErrorPolicy error_policy() const noexcept { return anchor_->policy; }
    void set_error_handler(ErrorHandler handler) { anchor_->set_error_handler(std::move(handler)); }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

private:
    static constexpr std::size_t kMinBuckets = 16;

    struct Entry final : detail::Retirable, detail::ListCore {
        Entry(const Key& k, std::size_t h, CallbackRegistry* r) : key(k), hash(h), registry(r) {}
        const Key key;
        const std::size_t hash;
        CallbackRegistry* const registry;
    };

    struct Link final : detail::Retirable {
        Entry* entry = nullptr;
        std::atomic<Link*> next{nullptr};
    };

    struct Table final : detail::Retirable {
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
        static void reclaim(detail::Retirable* r) noexcept {
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

    static void reclaim_link(detail::Retirable* r) noexcept { delete static_cast<Link*>(r); }
    static void reclaim_entry(detail::Retirable* r) noexcept { delete static_cast<Entry*>(r); }

    template <class K, class ShouldStop>
    TriggerResult run(const K& key, ShouldStop&& should_stop, Args&... args) {
        const std::size_t h = hash_(key);
        detail::TriggerScope scope(anchor_);
        Entry* entry = find(table_.load(std::memory_order_acquire), key, h);
        if (entry == nullptr) return TriggerResult{};
        return detail::run_list<signature>(scope, *entry, *anchor_, should_stop, args...);
    }

    void require_metrics(const char* what) const {
        if (!anchor_->metrics) {
            throw std::logic_error(std::string("cbm::CallbackRegistry::") + what +
                                   ": metrics are off; construct the registry with GroupOptions{.metrics = true}");
        }
    }

    template <class K>
    TriggerResult run_in(const Context& ctx, const K& key, Args&... args) {
        const ContextScope scope(ctx);
        if (const detail::CancelNode* c = detail::ContextAccess::canceler(ctx)) {
            return run(key, [c] { return c->state() != detail::kActive; }, args...);
        }
        return run(key, detail::NeverStop{}, args...);
    }

    template <class K>
    Entry* find(Table* table, const K& key, std::size_t h) const {
        for (Link* l = table->bucket(h).load(std::memory_order_acquire); l != nullptr;
             l = l->next.load(std::memory_order_acquire)) {
            Entry* e = l->entry;
            if (e->hash == h && equal_(e->key, key)) return e;
        }
        return nullptr;
    }

    template <class Visit>
    static void for_each_entry(Table* table, Visit&& visit) {
        for (std::size_t i = 0; i < table->bucket_count(); ++i) {
            for (Link* l = table->buckets[i].load(std::memory_order_relaxed); l != nullptr;
                 l = l->next.load(std::memory_order_relaxed)) {
                visit(l->entry);
            }
        }
    }

    // Under the mutex. Throws before publishing anything.
    Entry* create_entry(const Key& key, std::size_t h) {
        Table* table = table_.load(std::memory_order_relaxed);
        if (key_count() + 1 > table->bucket_count()) table = rebuild(table->bucket_count() * 2);
        auto entry = std::make_unique<Entry>(key, h, this);
        entry->on_empty = &on_entry_empty;
        entry->describe = [](const detail::ListCore* core) { return detail::key_text(static_cast<const Entry*>(core)->key); };
        auto link = std::make_unique<Link>();
        link->entry = entry.get();
        std::atomic<Link*>& bucket = table->bucket(h);
        link->next.store(bucket.load(std::memory_order_relaxed), std::memory_order_relaxed);
        bucket.store(link.release(), std::memory_order_release);
        key_count_.store(key_count() + 1, std::memory_order_relaxed);
        return entry.release();
    }

    // Under the mutex: publishes a table of `bucket_count` buckets holding every
    // current entry and retires the old one. Throws std::bad_alloc before
    // publishing anything.
    Table* rebuild(std::size_t bucket_count) {
        Table* old = table_.load(std::memory_order_relaxed);
        std::unique_ptr<Table, void (*)(Table*)> fresh(Table::make(bucket_count),
                                                      [](Table* t) { Table::reclaim(t); });
        for_each_entry(old, [&](Entry* e) {
            auto link = std::make_unique<Link>();
            link->entry = e;
            std::atomic<Link*>& bucket = fresh->bucket(e->hash);
            link->next.store(bucket.load(std::memory_order_relaxed), std::memory_order_relaxed);
            bucket.store(link.release(), std::memory_order_relaxed);
        });
        Table* published = fresh.release();
        table_.store(published, std::memory_order_release);
        anchor_->retired.retire(old, &Table::reclaim);
        return published;
    }

    // ListCore::on_empty, under the mutex: the key's last callback is gone.
    static void on_entry_empty(detail::ListCore* core) noexcept {
        auto* entry = static_cast<Entry*>(core);
        entry->registry->remove_entry(entry);
    }

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
        anchor_->retired.retire(l, &reclaim_link);
        anchor_->retired.retire(entry, &reclaim_entry);
        key_count_.store(key_count() - 1, std::memory_order_relaxed);
        const std::size_t buckets = table->bucket_count();
        if (anchor_->alive && buckets > kMinBuckets && key_count() < buckets / 8) {
            try {
                rebuild(buckets / 4);
            } catch (...) {
                // Shrinking is an optimisation; keep the larger table.
            }
        }
    }

    // Under the mutex.
    std::size_t take_every_key(detail::TakenNodes& taken) {
        std::vector<Entry*> entries;
        entries.reserve(key_count());
        for_each_entry(table_.load(std::memory_order_relaxed), [&](Entry* e) { entries.push_back(e); });
        std::size_t removed = 0;
        for (Entry* e : entries) removed += taken.take_all(*anchor_, *e);
        return removed;
    }

    Hash hash_;
    KeyEqual equal_;
    detail::Anchor* anchor_;
    std::atomic<Table*> table_{nullptr};      // written under the mutex
    std::atomic<std::size_t> key_count_{0};  // written under the mutex
};

}  // namespace cbm
