// cbm/callback.hpp - cbm::Callback<R(Args...)>, a type-erased, move-only callable.
//
// Like std::move_only_function (C++23), but available in C++20 and with a
// guaranteed small buffer: any nothrow-movable callable of at most three
// pointers (24 bytes, pointer-aligned) is stored inline, so a lambda that
// captures up to three pointers or references never allocates.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <new>
#include <stdexcept>
#include <type_traits>
#include <utility>

namespace cbm {

template <class Signature>
class Callback;

namespace detail {

struct CallbackAccess;

template <class T>
struct is_callback : std::false_type {};
template <class Sig>
struct is_callback<Callback<Sig>> : std::true_type {};

// True when `f` is a value that means "no function": a null function pointer,
// an empty std::function, a null member pointer, or anything else whose
// explicit bool conversion is false.
template <class F>
bool is_empty_callable(const F& f) noexcept {
    if constexpr (std::is_function_v<F>) {
        return false;  // a function itself (not a pointer) is never null
    } else if constexpr (std::is_pointer_v<F> || std::is_member_pointer_v<F>) {
        return f == nullptr;
    } else if constexpr (is_callback<F>::value) {
        return !static_cast<bool>(f);
    } else if constexpr (requires { f == nullptr; }) {
        return static_cast<bool>(f == nullptr);
    } else {
        return false;
    }
}

}  // namespace detail

template <class R, class... Args>
class Callback<R(Args...)> {
public:
    // Inline storage: three pointers. Larger or throwing-move callables go to the heap.
    static constexpr std::size_t inline_size = 3 * sizeof(void*);
    static constexpr std::size_t inline_align = alignof(void*);

    template <class F>
    static constexpr bool stored_inline = sizeof(F) <= inline_size && alignof(F) <= inline_align &&
                                          std::is_nothrow_move_constructible_v<F>;

    // Effect: an empty Callback. Calling it throws std::bad_function_call.
    Callback() noexcept = default;
    Callback(std::nullptr_t) noexcept {}

    // Effect: stores `f` (decayed). A null function pointer or an empty
    // std::function gives an empty Callback (check with operator bool).
    // Throws: whatever moving `f` or allocating its heap copy throws.
    template <class F>
        requires(!std::is_same_v<std::remove_cvref_t<F>, Callback> &&
                 std::is_invocable_r_v<R, std::decay_t<F>&, Args...>)
    Callback(F&& f) {  // NOLINT(google-explicit-constructor): callables convert, as std::function does
        using Stored = std::decay_t<F>;
        if (detail::is_empty_callable(f)) return;
        if constexpr (stored_inline<Stored>) {
            ::new (static_cast<void*>(storage_)) Stored(std::forward<F>(f));
            invoke_ = &invoke_stored<Stored, true>;
            manage_ = &manage_inline<Stored>;
        } else {
            Stored* heap = new Stored(std::forward<F>(f));
            ::new (static_cast<void*>(storage_)) Stored*(heap);
            invoke_ = &invoke_stored<Stored, false>;
            manage_ = &manage_heap<Stored>;
        }
    }

    Callback(Callback&& other) noexcept { take(other); }
    Callback& operator=(Callback&& other) noexcept {
        if (this != &other) {
            reset();
            take(other);
        }
        return *this;
    }
    Callback(const Callback&) = delete;
    Callback& operator=(const Callback&) = delete;
    ~Callback() { reset(); }

    explicit operator bool() const noexcept { return invoke_ != nullptr; }

    // Effect: calls the stored callable with `args`.
    // Throws: std::bad_function_call if empty; otherwise what the callable throws.
    // Safety: as safe as the stored callable; cbm may call one Callback from
    // several threads at once (see CallbackGroup), so give it thread-safe state.
    R operator()(Args... args) const {
        if (invoke_ == nullptr) throw std::bad_function_call();
        return invoke_(storage_, std::forward<Args>(args)...);
    }

    // Effect: destroys the stored callable; *this becomes empty.
    void reset() noexcept {
        if (manage_ != nullptr) manage_(Op::destroy, storage_, nullptr);
        invoke_ = nullptr;
        manage_ = nullptr;
    }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

private:
    friend struct detail::CallbackAccess;

    // For cbm's dispatch loop, which never stores an empty Callback.
    R invoke_nonempty(Args... args) const { return invoke_(storage_, std::forward<Args>(args)...); }

    enum class Op { move, destroy };
    using Invoke = R (*)(const unsigned char*, Args&&...);
    using Manage = void (*)(Op, unsigned char*, unsigned char*) noexcept;

    template <class F>
    static F* inline_object(const unsigned char* storage) noexcept {
        return std::launder(reinterpret_cast<F*>(const_cast<unsigned char*>(storage)));
    }
    template <class F>
    static F* heap_object(const unsigned char* storage) noexcept {
        return *std::launder(reinterpret_cast<F* const*>(storage));
    }

    // A void Callback discards what the callable returns, as std::function
    // does. `Inline` says where the callable is stored.
    template <class F, bool Inline>
    static R invoke_stored(const unsigned char* storage, Args&&... args) {
        F* object = Inline ? inline_object<F>(storage) : heap_object<F>(storage);
        if constexpr (std::is_void_v<R>) {
            static_cast<void>(std::invoke(*object, std::forward<Args>(args)...));
        } else {
            return std::invoke(*object, std::forward<Args>(args)...);
        }
    }
    template <class F>
    static void manage_inline(Op op, unsigned char* self, unsigned char* target) noexcept {
        F* object = inline_object<F>(self);
        if (op == Op::move) ::new (static_cast<void*>(target)) F(std::move(*object));
        object->~F();
    }
    template <class F>
    static void manage_heap(Op op, unsigned char* self, unsigned char* target) noexcept {
        F* object = heap_object<F>(self);
        if (op == Op::move) {
            ::new (static_cast<void*>(target)) F*(object);
        } else {
            delete object;
        }
    }

    void take(Callback& other) noexcept {
        if (other.manage_ != nullptr) other.manage_(Op::move, other.storage_, storage_);
        invoke_ = std::exchange(other.invoke_, nullptr);
        manage_ = std::exchange(other.manage_, nullptr);
    }

    Invoke invoke_ = nullptr;
    Manage manage_ = nullptr;
    alignas(inline_align) mutable unsigned char storage_[inline_size] = {};
};

namespace detail {
struct CallbackAccess {
    template <class R, class... Args, class... A>
    static R invoke(const Callback<R(Args...)>& f, A&&... args) {
        return f.invoke_nonempty(std::forward<A>(args)...);
    }
    // The stored callable, if it is an F (null otherwise).
    template <class F, class R, class... Args>
    static F* target(Callback<R(Args...)>& f) noexcept {
        using C = Callback<R(Args...)>;
        if (f.manage_ == &C::template manage_inline<F>) return C::template inline_object<F>(f.storage_);
        if (f.manage_ == &C::template manage_heap<F>) return C::template heap_object<F>(f.storage_);
        return nullptr;
    }
};
}  // namespace detail

}  // namespace cbm
