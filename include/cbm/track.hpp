// cbm/track.hpp - callbacks bound to an object's lifetime, and member
// functions as callbacks.
//
//   auto svc = std::make_shared<Service>();
//   group.add(&Service::on_order, std::weak_ptr(svc));     // tracked
//   group.add(cbm::tracked(std::weak_ptr(svc), [](const Order& o) { ... }));
//   group.add(&Audit::on_order, &audit);                   // a plain pointer: audit must outlive it
//
// A tracked callback locks its weak_ptr for each invocation, so the object
// lives at least until that invocation returns; the first invocation that
// finds it gone runs nothing and unregisters the callback (it counts as
// invoked). Since the object is held only during calls, unregister() still
// waits for running ones, as for any callback: when it returns, no call is
// using the object.
//
// A std::shared_ptr is refused: it would keep the object alive for as long as
// the callback stays registered. Pass a weak_ptr to track the object, or a
// lambda that captures the shared_ptr if that is what you mean.
#pragma once

#include <functional>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "self.hpp"

namespace cbm {

namespace detail {

template <class T>
struct is_shared_ptr : std::false_type {};
template <class T>
struct is_shared_ptr<std::shared_ptr<T>> : std::true_type {};
template <class T>
struct is_weak_ptr : std::false_type {};
template <class T>
struct is_weak_ptr<std::weak_ptr<T>> : std::true_type {};

template <class T, class F>
struct Tracked {
    std::weak_ptr<T> object;
    F f;

    template <class... A>
        requires std::is_invocable_v<F&, A...>
    void operator()(const Self& self, A&&... a) {
        if (const std::shared_ptr<T> alive = object.lock()) {
            static_cast<void>(std::invoke(f, std::forward<A>(a)...));
        } else {
            self.unregister();
        }
    }
};

template <class Method, class T>
struct TrackedMember {
    Method method;
    std::weak_ptr<T> object;

    template <class... A>
        requires std::is_invocable_v<const Method&, T*, A...>
    void operator()(const Self& self, A&&... a) {
        if (const std::shared_ptr<T> alive = object.lock()) {
            static_cast<void>(std::invoke(method, alive.get(), std::forward<A>(a)...));
        } else {
            self.unregister();
        }
    }
};

template <class Method, class T>
struct MemberCall {
    Method method;
    T* object;

    template <class... A>
        requires std::is_invocable_v<const Method&, T*, A...>
    decltype(auto) operator()(A&&... a) const {
        return std::invoke(method, object, std::forward<A>(a)...);
    }
};

// The callable that add(method, object) registers, in a group whose
// callbacks take Args...
template <class... Args, class M, class C, class Object>
auto bind_member(M C::*method, Object&& object) {
    using O = std::remove_cvref_t<Object>;
    static_assert(!is_shared_ptr<O>::value,
                  "cbm: add(&T::method, object) takes a std::weak_ptr (the callback is tracked: it unregisters "
                  "once the object dies) or a raw pointer to an object that outlives the registration; a "
                  "std::shared_ptr would keep the object alive while the callback is registered");
    static_assert(is_weak_ptr<O>::value || std::is_pointer_v<O> || is_shared_ptr<O>::value,
                  "cbm: add(&T::method, object) takes a pointer to the object or a std::weak_ptr to it");
    if (method == nullptr) throw std::invalid_argument("cbm: add(&T::method, object) needs a member, not null");
    if constexpr (is_weak_ptr<O>::value) {
        using T = typename O::element_type;
        static_assert(std::is_invocable_v<M C::*const&, T*, Args...>,
                      "cbm: this member function must be callable on the object with the group's argument "
                      "types; check its parameter list, and that it is const if the object is");
        return TrackedMember<M C::*, T>{method, std::forward<Object>(object)};
    } else if constexpr (std::is_pointer_v<O>) {
        using T = std::remove_pointer_t<O>;
        static_assert(std::is_invocable_v<M C::*const&, T*, Args...>,
                      "cbm: this member function must be callable on the object with the group's argument "
                      "types; check its parameter list, and that it is const if the object is");
        if (object == nullptr) throw std::invalid_argument("cbm: add(&T::method, object) needs an object, not null");
        return MemberCall<M C::*, T>{method, object};
    }
}

}  // namespace detail

// A callable that runs `f` while `object` lives, for add(): see the top.
template <class T, class F>
detail::Tracked<T, std::decay_t<F>> tracked(std::weak_ptr<T> object, F&& f) {
    return {std::move(object), std::forward<F>(f)};
}

}  // namespace cbm
