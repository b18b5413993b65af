// cbm/callback_registry.hpp - cbm::CallbackRegistry<Key, void(Args...)>:
// event key -> ordered callbacks, keys created on demand and removed as soon
// as their last callback goes.
//
// The key table is detail/key_table.hpp; everything else is shared with
// CallbackGroup (detail/group_core.hpp).
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "async_result.hpp"
#include "callback_options.hpp"
#include "callback_values.hpp"
#include "context.hpp"
#include "detail/group_core.hpp"
#include "detail/key_table.hpp"
#include "detail/trigger_loop.hpp"
#include "detail/unregister.hpp"
#include "error_policy.hpp"
#include "group_options.hpp"
#include "metrics.hpp"
#include "observer.hpp"
#include "registration.hpp"
#include "self.hpp"
#include "track.hpp"

namespace cbm {

// A transparent hash for string keys: with it and std::equal_to<>, a
// registry looks keys up by std::string_view or string literal without
// building a std::string per trigger. It is the default for std::string keys.
struct string_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

namespace detail {
// A first argument that cannot be a registry key (nor a stop token or a
// context): what a call with its arguments swapped passes. The registries
// catch it with an overload whose static_assert says so.
template <class Hash, class KeyEqual, class K, class Key>
concept misplaced_key =
    !std::is_convertible_v<const K&, const Key&> && !transparent_lookup<Hash, KeyEqual, K, Key> &&
    !std::is_same_v<std::remove_cvref_t<K>, std::stop_token> && !std::is_same_v<std::remove_cvref_t<K>, Context>;
template <class K>
inline constexpr bool always_false = false;

// The default Hash and KeyEqual of a registry with keys of type Key.
template <class Key>
struct default_key_ops {
    using hash = std::hash<Key>;
    using equal = std::equal_to<Key>;
};
template <>
struct default_key_ops<std::string> {
    using hash = string_hash;
    using equal = std::equal_to<>;
};
}  // namespace detail

// CallbackRegistry<std::string, Sig> takes std::string_view and literals
// wherever it takes a key (trigger, erase, size, contains...).
template <class Key, class Signature, class Hash = typename detail::default_key_ops<Key>::hash,
          class KeyEqual = typename detail::default_key_ops<Key>::equal>
class CallbackRegistry;

// Thread safety: as CallbackGroup, for every member.
template <class Key, class... Args, class Hash, class KeyEqual>
class CallbackRegistry<Key, void(Args...), Hash, KeyEqual> {
    static_assert(!(std::is_rvalue_reference_v<Args> || ...),
                  "cbm::CallbackRegistry: a parameter may not be an rvalue reference (T&&): every callback sees "
                  "the same arguments, so none may take them over; use const T& (or T, each callback getting "
                  "a copy)");

public:
    using key_type = Key;
    using signature = void(Args...);
    using options_type = CallbackOptions<signature>;

    explicit CallbackRegistry(ErrorPolicy policy = ErrorPolicy::collect, Hash hash = Hash{},
                              KeyEqual equal = KeyEqual{})
        : CallbackRegistry(GroupOptions{.error_policy = policy}, std::move(hash), std::move(equal)) {}
    // Effect: an empty registry with these options (error policy, metrics).
    explicit CallbackRegistry(GroupOptions options, Hash hash = Hash{}, KeyEqual equal = KeyEqual{})
        : core_(options, "CallbackRegistry", "registry"), table_(core_.state(), std::move(hash), std::move(equal)) {}
    CallbackRegistry(const CallbackRegistry&) = delete;
    CallbackRegistry& operator=(const CallbackRegistry&) = delete;

    // Effect: unregisters every callback of every key, waits until no other
    // thread is inside trigger() on this registry, destroys every callable.
    // Precondition: not called from inside a callback of this registry.
    ~CallbackRegistry() {
        core_.shut_down([this](detail::TakenNodes& taken) { table_.take_every_key(taken); });
    }

    // Effect: registers `f` under `key`, creating the key if needed.
    // Throws: std::invalid_argument for an empty callable; std::bad_alloc, or
    // what Hash or KeyEqual throw. When it throws, nothing is registered and
    // no key is created.
    // Blocks: never on user code; takes the registry's writer lock briefly.
    template <class F>
    Registration add(const Key& key, F&& f, options_type options = {}) {
        auto pending = core_.prepare(detail::adapt_callable<Args...>(std::forward<F>(f)), std::move(options),
                                     [&] { return detail::key_text(key); });
        const std::size_t h = pending.born_unregistered() ? 0 : table_.hash(key);
        return Registration(core_.commit(std::move(pending), [&](detail::NodeBase* node) {
            bool created = false;
            Entry* entry = table_.find_or_create(key, h, created);
            try {
                entry->insert(node, core_.state().retired);
            } catch (...) {
                if (created) table_.remove_entry(entry);  // no key without callbacks
                throw;
            }
        }));
    }

    // Effect: registers the member function `method` called on `object` (a
    // raw pointer, or a std::weak_ptr that tracks it; see cbm/track.hpp)
    // under `key`. As add(key, f, options) otherwise.
    template <class M, class C, class Object>
    Registration add(const Key& key, M C::*method, Object&& object, options_type options = {}) {
        return add(key, detail::bind_member<Args...>(method, std::forward<Object>(object)), std::move(options));
    }

    // Effect: runs the callbacks registered under `key` (as CallbackGroup::trigger).
    // An unknown key creates nothing and returns a result with invoked == 0.
    // Blocks: only inside the callbacks themselves.
    TriggerResult trigger(const Key& key, Args... args) { return run(key, detail::NeverStop{}, args...); }

    // Effect: as trigger(key, args...), checking `token` before each callback.
    TriggerResult trigger(const std::stop_token& token, const Key& key, Args... args) {
        return run(key, detail::StopWhenRequested{token}, args...);
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
        return run(key, detail::StopWhenRequested{token}, args...);
    }
    template <class K>
        requires detail::transparent_lookup<Hash, KeyEqual, K, Key>
    TriggerResult trigger(const Context& ctx, const K& key, Args... args) {
        return run_in(ctx, key, args...);
    }
    // A first argument that is no key: a compile-time error that says so.
    template <class K, class... A>
        requires detail::misplaced_key<Hash, KeyEqual, K, Key>
    TriggerResult trigger(const K&, A&&...) {
        static_assert(detail::always_false<K>,
                      "cbm::CallbackRegistry::trigger: the first argument must be the key (a Key, or a type the "
                      "registry's Hash and KeyEqual look up transparently), then the callbacks' arguments: "
                      "trigger(key, args...); check the argument order");
        return {};
    }

    // Effect: runs the callbacks registered under `key` asynchronously, as
    // CallbackGroup::trigger_async does. An unknown key gives a ready result
    // with invoked == 0.
    AsyncResult trigger_async(const Key& key, Args... args) { return run_async(current_context(), key, args...); }
    AsyncResult trigger_async(const Context& ctx, const Key& key, Args... args) {
        return run_async(ctx, key, args...);
    }
    template <class K>
        requires detail::transparent_lookup<Hash, KeyEqual, K, Key>
    AsyncResult trigger_async(const K& key, Args... args) {
        return run_async(current_context(), key, args...);
    }
    template <class K>
        requires detail::transparent_lookup<Hash, KeyEqual, K, Key>
    AsyncResult trigger_async(const Context& ctx, const K& key, Args... args) {
        return run_async(ctx, key, args...);
    }

    // Effect: unregisters every callback under `key` and waits as
    // Registration::unregister does, also for callbacks of the key removed
    // earlier (unregister_nowait, a context, a once run, another erase) that
    // may still run. Returns how many it unregistered.
    std::size_t erase(const Key& key) { return erase_key(key); }
    // The same, looked up by an equivalent key (std::string_view or a literal
    // for std::string keys) when Hash and KeyEqual are both transparent.
    template <class K>
        requires detail::transparent_lookup<Hash, KeyEqual, K, Key>
    std::size_t erase(const K& key) {
        return erase_key(key);
    }

    // Effect: erase() for every key. Returns how many callbacks it unregistered.
    std::size_t clear() {
        return core_.take_and_wait([this](detail::TakenNodes& taken) { return table_.take_every_key(taken); },
                                   [](const detail::NodeBase&) { return true; },  // every key
                                   detail::AfterTaking::reclaim_unreachable_now);
    }

    // Number of callbacks registered under `key` (0 for an unknown key).
    std::size_t size(const Key& key) const { return size_of(key); }
    template <class K>
        requires detail::transparent_lookup<Hash, KeyEqual, K, Key>
    std::size_t size(const K& key) const {
        return size_of(key);
    }
    bool contains(const Key& key) const { return size_of(key) != 0; }
    template <class K>
        requires detail::transparent_lookup<Hash, KeyEqual, K, Key>
    bool contains(const K& key) const {
        return size_of(key) != 0;
    }

    // Number of keys that have at least one callback (a moment's value).
    std::size_t key_count() const noexcept { return table_.key_count(); }

    // The numbers of every registered callback of every key (see
    // metrics.hpp; the key is rendered as text: strings as they are,
    // numbers and enums in decimal, other types through operator<<, else
    // empty). Takes the writer lock briefly; triggers go on meanwhile.
    // Throws: std::logic_error unless constructed with GroupOptions::metrics.
    MetricsSnapshot metrics() const {
        return core_.metrics([this](auto&& visit) { table_.for_each_entry([&](const Entry* e) { visit(*e); }); });
    }

    // Effect: as CallbackGroup::set_dead_letter_handler; DeadLetter::key is
    // the key as text (see metrics()).
    void set_dead_letter_handler(DeadLetterHandler handler) { core_.set_dead_letter_handler(std::move(handler)); }

    // Effect: as CallbackGroup::set_circuit_change_handler; CircuitChange::key
    // is the key as text.
    void set_circuit_change_handler(CircuitChangeHandler handler) {
        core_.set_circuit_change_handler(std::move(handler));
    }

    // Effect: as CallbackGroup::set_observer.
    void set_observer(std::shared_ptr<CallbackObserver> observer) {
        core_.set_observer(std::move(observer));
    }

    // Every key that has at least one callback (a moment's copy).
    std::vector<Key> keys() const {
        std::vector<Key> result;
        std::lock_guard<std::mutex> lock(core_.state().mutex);
        table_.for_each_entry([&](const Entry* e) { result.push_back(e->key); });
        return result;
    }

    ErrorPolicy error_policy() const noexcept { return core_.error_policy(); }
    void set_error_handler(ErrorHandler handler) { core_.set_error_handler(std::move(handler)); }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

private:
    template <class K, class S, class H, class E>
    friend class CallbackRegistry;  // a value registry runs its void registry with a stop of its own

    template <class K>
    std::size_t erase_key(const K& key) {
        const std::size_t h = table_.hash(key);
        return core_.take_and_wait(
            [&](detail::TakenNodes& taken) -> std::size_t {
                Entry* entry = table_.find(key, h);
                return entry != nullptr ? taken.take_all(core_.state(), *entry) : 0;
            },
            [&](const detail::NodeBase& node) { return table_.was_in(node, key, h); },
            detail::AfterTaking::reclaim_soon);
    }
    template <class K>
    std::size_t size_of(const K& key) const {
        const std::size_t h = table_.hash(key);
        std::lock_guard<std::mutex> lock(core_.state().mutex);
        const Entry* entry = table_.find(key, h);
        return entry != nullptr ? entry->count() : 0;
    }
    using Table = detail::KeyTable<Key, Hash, KeyEqual>;
    using Entry = typename Table::Entry;

    template <class K, class ShouldStop>
    // Always inlined (with GroupCore::trigger and TriggerScope): the loop is
    // the one call a trigger makes.
    [[gnu::always_inline]] TriggerResult run(const K& key, ShouldStop&& should_stop, Args&... args) {
        const std::size_t h = table_.hash(key);
        return core_.trigger([&]() -> detail::CallbackList* { return table_.find(key, h); }, should_stop, args...);
    }

    template <class K>
    TriggerResult run_in(const Context& ctx, const K& key, Args&... args) {
        return core_.trigger_in(ctx, [&](auto should_stop) { return run(key, should_stop, args...); });
    }

    template <class K>
    AsyncResult run_async(const Context& ctx, const K& key, Args&... args) {
        static_assert((detail::kAsyncArgument<Args> && ...),
                      "cbm::CallbackRegistry::trigger_async: the arguments are copied once and shared by the "
                      "callbacks, so each parameter must be a value or a const reference; pass a pointer (or "
                      "std::reference_wrapper) to let callbacks change the caller's object");
        const std::size_t h = table_.hash(key);
        return core_.trigger_async([&]() -> detail::CallbackList* { return table_.find(key, h); }, ctx,
                                   std::move(args)...);
    }

    detail::GroupCore<signature> core_;
    Table table_;
};

// A registry of callbacks that return values (see callback_values.hpp): the
// same members as CallbackRegistry<Key, void(Args...)>, with the same
// blocking and thread-safety rules, except that the triggers give the
// values back and there is no trigger_async.
template <class Key, class R, class... Args, class Hash, class KeyEqual>
    requires(!std::is_void_v<R>)
class CallbackRegistry<Key, R(Args...), Hash, KeyEqual>
    : public detail::ForwardedControls<CallbackRegistry<Key, R(Args...), Hash, KeyEqual>,
                                       CallbackRegistry<Key, void(detail::ValueSink<R>&, Args...), Hash, KeyEqual>> {
    using Sink = detail::ValueSink<R>;
    using Inner = CallbackRegistry<Key, void(Sink&, Args...), Hash, KeyEqual>;

public:
    using key_type = Key;
    using signature = R(Args...);
    using options_type = CallbackOptions<signature>;
    using value_type = R;

    explicit CallbackRegistry(ErrorPolicy policy = ErrorPolicy::collect, Hash hash = Hash{},
                              KeyEqual equal = KeyEqual{})
        : inner_(policy, std::move(hash), std::move(equal)) {
        detail::check_value_type<R>();
    }
    explicit CallbackRegistry(GroupOptions options, Hash hash = Hash{}, KeyEqual equal = KeyEqual{})
        : inner_(std::move(options), std::move(hash), std::move(equal)) {
        detail::check_value_type<R>();
    }
    CallbackRegistry(const CallbackRegistry&) = delete;
    CallbackRegistry& operator=(const CallbackRegistry&) = delete;

    template <class F>
    Registration add(const Key& key, F&& f, options_type options = {}) {
        return inner_.add(key, detail::produce<R, Args...>(std::forward<F>(f)),
                          detail::rebind_options(std::move(options)));
    }
    template <class M, class C, class Object>
    Registration add(const Key& key, M C::*method, Object&& object, options_type options = {}) {
        return inner_.add(key, detail::produce_member<R, Args...>(method, std::forward<Object>(object)),
                          detail::rebind_options(std::move(options)));
    }

    // Effect: as CallbackRegistry::trigger; the result also holds every
    // value, with its callback's name, in call order. `key` may be any type
    // the registry looks up transparently (std::string_view for std::string).
    template <class K = Key>
        requires(std::is_same_v<K, Key> || detail::transparent_lookup<Hash, KeyEqual, K, Key>)
    ValueResult<R> trigger(const K& key, Args... args) {
        return gather(key, detail::NeverStop{}, args...);
    }
    template <class K = Key>
        requires(std::is_same_v<K, Key> || detail::transparent_lookup<Hash, KeyEqual, K, Key>)
    ValueResult<R> trigger(const std::stop_token& token, const K& key, Args... args) {
        return gather(key, detail::StopWhenRequested{token}, args...);
    }
    template <class K = Key>
        requires(std::is_same_v<K, Key> || detail::transparent_lookup<Hash, KeyEqual, K, Key>)
    ValueResult<R> trigger(const Context& ctx, const K& key, Args... args) {
        ValueResult<R> result;
        Sink sink(result.values);
        static_cast<TriggerResult&>(result) = inner_.core_.trigger_in(ctx, [&](auto should_stop) {
            return inner_.run(key, detail::StopWhenCollected<R, decltype(should_stop)>{should_stop, sink}, sink,
                              args...);
        });
        return result;
    }

    // A first argument that is no key: a compile-time error that says so.
    template <class K, class... A>
        requires detail::misplaced_key<Hash, KeyEqual, K, Key>
    ValueResult<R> trigger(const K&, A&&...) {
        static_assert(detail::always_false<K>,
                      "cbm::CallbackRegistry::trigger: the first argument must be the key (a Key, or a type the "
                      "registry's Hash and KeyEqual look up transparently), then the callbacks' arguments: "
                      "trigger(key, args...); check the argument order");
        return {};
    }

    // Effect: as CallbackGroup<R(Args...)>::collect, for the callbacks of `key`.
    template <class Collector, class K = Key>
        requires std::is_invocable_r_v<bool, Collector&, CallbackValue<R>&&> &&
                 (std::is_same_v<K, Key> || detail::transparent_lookup<Hash, KeyEqual, K, Key>)
    TriggerResult collect(const K& key, Collector&& collector, Args... args) {
        Sink sink(collector);
        return inner_.run(key, detail::StopWhenCollected<R, detail::NeverStop>{detail::NeverStop{}, sink}, sink,
                          args...);
    }

    template <class K = Key>
        requires(std::is_same_v<K, Key> || detail::transparent_lookup<Hash, KeyEqual, K, Key>)
    std::size_t erase(const K& key) {
        return inner_.erase_key(key);
    }
    template <class K = Key>
        requires(std::is_same_v<K, Key> || detail::transparent_lookup<Hash, KeyEqual, K, Key>)
    std::size_t size(const K& key) const {
        return inner_.size_of(key);
    }
    template <class K = Key>
        requires(std::is_same_v<K, Key> || detail::transparent_lookup<Hash, KeyEqual, K, Key>)
    bool contains(const K& key) const {
        return inner_.size_of(key) != 0;
    }
    std::size_t clear() { return inner_.clear(); }
    std::size_t key_count() const noexcept { return inner_.key_count(); }
    std::vector<Key> keys() const { return inner_.keys(); }
    // error_policy(), metrics() and the handler setters: as the void one's
    // (ForwardedControls).

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

private:
    template <class K, class ShouldStop>
    ValueResult<R> gather(const K& key, ShouldStop&& should_stop, Args&... args) {
        ValueResult<R> result;
        Sink sink(result.values);
        static_cast<TriggerResult&>(result) =
            inner_.run(key, detail::StopWhenCollected<R, std::decay_t<ShouldStop>>{should_stop, sink}, sink, args...);
        return result;
    }

    friend class detail::ForwardedControls<CallbackRegistry, Inner>;
    Inner inner_;
};

}  // namespace cbm
