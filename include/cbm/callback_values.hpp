// cbm/callback_values.hpp - what a group of value-returning callbacks gives
// back: CallbackGroup<R(Args...)> and CallbackRegistry<Key, R(Args...)>.
//
//   cbm::CallbackGroup<double(const Order&)> quotes;
//   quotes.add(&Carrier::quote, &ups, {.name = "ups"});
//   quotes.add([](const Order& o) { return 4.5 + o.kg; }, {.name = "local"});
//   cbm::ValueResult<double> r = quotes.trigger(order);  // every value, with its name, in call order
//   quotes.collect([](cbm::CallbackValue<double>&& v) {  // or one by one; false stops the trigger
//       return v.value > 10.0;                          // keep asking while quotes are high
//   }, order);
//
// A value group is a void group underneath: each callback is stored as one
// that hands its value to the trigger's sink, so every guarantee of the
// void group holds as it is (unregister, metrics, resilience, contexts).
// A callback that throws gives no value and counts as failed; one skipped
// (filtered, blocked, not reached) gives none either. Values come back from
// the synchronous triggers only; use a void group for trigger_async.
#pragma once

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "callback.hpp"
#include "callback_options.hpp"
#include "error_policy.hpp"
#include "self.hpp"
#include "track.hpp"

namespace cbm {

// One callback's value.
template <class R>
struct CallbackValue {
    std::string name;  // the callback's CallbackOptions::name (may be empty)
    R value;
};

// What one trigger of a value group did, and the values it got, in call
// order (callbacks that threw or were skipped have none).
template <class R>
struct ValueResult : TriggerResult {
    std::vector<CallbackValue<R>> values;
};

namespace detail {

// Where the callbacks of one trigger put their values: a vector, or a
// collector that may ask to stop. Used on the triggering thread only.
// The members a value group or registry forwards unchanged to the void
// one it wraps (`Derived::inner_`, of type Inner): the error policy, the
// metrics and every handler setter, declared once for both facades. The
// setters take what Inner's take.
template <class Derived, class Inner>
class ForwardedControls {
    template <class Member>
    struct parameter_of;
    template <class C, class P>
    struct parameter_of<void (C::*)(P)> {
        using type = P;
    };
    template <auto Member>
    using parameter = typename parameter_of<decltype(Member)>::type;

public:
    auto error_policy() const noexcept { return inner().error_policy(); }
    auto metrics() const { return inner().metrics(); }
    void set_error_handler(parameter<&Inner::set_error_handler> h) { inner().set_error_handler(std::move(h)); }
    void set_dead_letter_handler(parameter<&Inner::set_dead_letter_handler> h) {
        inner().set_dead_letter_handler(std::move(h));
    }
    void set_circuit_change_handler(parameter<&Inner::set_circuit_change_handler> h) {
        inner().set_circuit_change_handler(std::move(h));
    }
    void set_observer(parameter<&Inner::set_observer> o) { inner().set_observer(std::move(o)); }

private:
    Inner& inner() noexcept { return static_cast<Derived&>(*this).inner_; }
    const Inner& inner() const noexcept { return static_cast<const Derived&>(*this).inner_; }
};

template <class R>
class ValueSink {
public:
    explicit ValueSink(std::vector<CallbackValue<R>>& values) noexcept : values_(&values) {}
    template <class Collector>
    explicit ValueSink(Collector& collector) noexcept
        : collector_(&collector), collect_([](void* c, CallbackValue<R>&& v) -> bool {
              return static_cast<bool>(std::invoke(*static_cast<Collector*>(c), std::move(v)));
          }) {}

    void put(const std::string& name, R&& value) {
        if (values_ != nullptr) {
            values_->push_back(CallbackValue<R>{name, std::move(value)});
        } else if (!collect_(collector_, CallbackValue<R>{name, std::move(value)})) {
            stop_ = true;
        }
    }
    bool stop_requested() const noexcept { return stop_; }

private:
    std::vector<CallbackValue<R>>* values_ = nullptr;
    void* collector_ = nullptr;
    bool (*collect_)(void*, CallbackValue<R>&&) = nullptr;
    bool stop_ = false;
};

// A trigger's own stop condition, or the collector's.
template <class R, class ShouldStop>
struct StopWhenCollected {
    ShouldStop inner;
    const ValueSink<R>& sink;
    bool operator()() const noexcept { return sink.stop_requested() || inner(); }
};

template <class R, class F, class... Args>
inline constexpr bool produces_plain = std::is_invocable_r_v<R, std::decay_t<F>&, Args...>;
template <class R, class F, class... Args>
inline constexpr bool produces_with_self =
    !produces_plain<R, F, Args...> && std::is_invocable_r_v<R, std::decay_t<F>&, Self&, Args...>;

// A value-returning callback as the void group underneath stores it.
template <class R, class F>
struct Producing {
    F f;

    template <class... A>
    void operator()(Self& self, ValueSink<R>& sink, A&&... a) {
        if constexpr (std::is_invocable_v<F&, A...>) {
            sink.put(self.name(), R(std::invoke(f, std::forward<A>(a)...)));
        } else {
            sink.put(self.name(), R(std::invoke(f, self, std::forward<A>(a)...)));
        }
    }
};

// A member function on an object tracked by weak_ptr: no value once the
// object is gone, and the callback unregisters itself (as in track.hpp).
template <class R, class Method, class T>
struct ProducingTracked {
    Method method;
    std::weak_ptr<T> object;

    template <class... A>
    void operator()(Self& self, ValueSink<R>& sink, A&&... a) {
        if (const std::shared_ptr<T> alive = object.lock()) {
            sink.put(self.name(), R(std::invoke(method, alive.get(), std::forward<A>(a)...)));
        } else {
            self.unregister();
        }
    }
};

template <class R, class... Args, class F>
auto produce(F&& f) {
    static_assert(produces_plain<R, F, Args...> || produces_with_self<R, F, Args...>,
                  "cbm: this callback must be callable with the group's argument types and return something "
                  "convertible to the group's result type R, as R(Args...) for the group's R(Args...), or as "
                  "R(cbm::Self&, Args...) to receive its own handle; check its parameters and what it returns");
    if (is_empty_callable(f)) throw std::invalid_argument("cbm: cannot register an empty callable");
    return Producing<R, std::decay_t<F>>{std::forward<F>(f)};
}

template <class R, class... Args, class M, class C, class Object>
auto produce_member(M C::*method, Object&& object) {
    using O = std::remove_cvref_t<Object>;
    if constexpr (is_weak_ptr<O>::value) {
        using T = typename O::element_type;
        static_assert(std::is_invocable_r_v<R, M C::*const&, T*, Args...>,
                      "cbm: this member function must be callable on the object with the group's argument "
                      "types and return something convertible to the group's result type");
        if (method == nullptr) throw std::invalid_argument("cbm: add(&T::method, object) needs a member, not null");
        return ProducingTracked<R, M C::*, T>{method, std::forward<Object>(object)};
    } else {
        return produce<R, Args...>(bind_member<Args...>(method, std::forward<Object>(object)));
    }
}

// The options of a value callback, for the void group underneath: the same
// fields, the filter taking the sink first (and ignoring it). A new field
// of CallbackOptions must be moved here too.
template <class R, class... Args>
CallbackOptions<void(ValueSink<R>&, Args...)> rebind_options(CallbackOptions<R(Args...)>&& o) {
    CallbackOptions<void(ValueSink<R>&, Args...)> inner;
    inner.priority = o.priority;
    inner.once = o.once;
    inner.name = std::move(o.name);
    if (o.filter) {
        inner.filter = [filter = std::move(o.filter)](const ValueSink<R>&, const std::remove_cvref_t<Args>&... a) {
            return filter(a...);
        };
    }
    inner.context = std::move(o.context);
    inner.labels = std::move(o.labels);
    inner.timeout = o.timeout;
    inner.retry = o.retry;
    inner.circuit_breaker = o.circuit_breaker;
    inner.slow_threshold = o.slow_threshold;
    inner.executor = std::move(o.executor);
    return inner;
}

template <class R>
void check_value_type() {
    static_assert(!std::is_reference_v<R> && std::is_move_constructible_v<R>,
                  "cbm: a value group's result type R must be a movable value type (not a reference); return "
                  "a pointer or std::reference_wrapper to hand out references");
}

}  // namespace detail
}  // namespace cbm
