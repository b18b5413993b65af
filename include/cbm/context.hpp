// cbm/context.hpp - Go's context package for C++20, built on std::stop_token:
// Context, CancelFunc, CancelCauseFunc and the with_* functions (AfterFunc is
// in after_func.hpp, included at the end, so this header is the whole package).
//
//   auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
//   auto [tctx, tcancel] = cbm::with_timeout(ctx, 50ms);
//   std::stop_token tok = tctx.done();   // works with std::stop_callback, std::jthread,
//                                        // std::condition_variable_any
//   cancel();                            // tctx is canceled too, before this returns
//   tctx.err() == cbm::errc::canceled;   // and == std::errc::operation_canceled
//
// Semantics follow Go's context package (https://pkg.go.dev/context); the
// C++ mapping:
//   * A Context is a cheap, copyable, thread-safe handle (one counted
//     pointer). A default-constructed or moved-from Context is background():
//     never canceled, no deadline, no values.
//   * Cancelling a context cancels all its descendants synchronously, before
//     cancel() returns, and never affects its parent. A child of a canceled
//     parent is born canceled. The first cancellation wins: err() and the
//     cause never change afterwards.
//   * done() is a std::stop_token of a std::stop_source owned by the nearest
//     cancelable context; its stop is requested right after err() is set, so
//     whoever sees stop_requested() also sees err(). std::stop_callbacks on
//     it run on the cancelling thread, as the standard specifies.
//   * A canceled context unlinks from its parent, so a long-lived parent
//     holds only its live children.
//   * Lifetime: a context lives while something can still reach it: a
//     Context or CancelFunc of it or of a descendant, its deadline timer
//     (until it fires), a pending after_func on it, or a callback still
//     registered with {.context = it}. The parent's link to a child does not
//     count, so a subtree dropped without cancel is freed at once (where Go's
//     garbage collector would free it; there is no leak to avoid by calling
//     cancel). A bare std::stop_token from done() does not count either: a
//     token whose context was freed reports stop_possible() == false, so keep
//     the Context while a std::stop_callback relies on it.
//   * cancel() never waits for user code on another thread. The call that
//     cancels a context returns once err() is set on every descendant and
//     the std::stop_callbacks of the nodes it reached have run. A call that
//     finds the context (or a descendant) canceled by another thread
//     returns as soon as that cancellation's bookkeeping has set err() on
//     the descendants: a brief wait for a few mutexes, never for a
//     stop_callback, which that other thread runs.
//   * A callback bound with {.context = ctx} keeps ctx, and so its
//     ancestors and their values, alive while it is registered: a value
//     that owns the group would keep itself alive (cancel or unregister to
//     break it), as a callable that captures its own group would.
//   * Deadlines use std::chrono::steady_clock and one shared timer thread for
//     the whole process, started on first use (detail/services.hpp).
//
// Thread safety: every function here may be called from any thread. A
// Context, CancelFunc or StopFunc object may be used by several threads at
// once, except that assigning to one object while others use it is a race
// (as for std::shared_ptr).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>

#include "detail/context_node.hpp"
#include "detail/intrusive_ref.hpp"
#include "errc.hpp"

namespace cbm {

namespace detail {
struct ContextAccess;
}  // namespace detail

// A typed key for Context values (Go's context.WithValue key). Its identity
// is the key object itself: two keys never collide, even with equal names
// and types. Declare keys as objects that outlive every context using them,
// typically `static const cbm::ContextKey<std::string> trace_id{"trace_id"};`.
template <class T>
class ContextKey {
    static_assert(std::is_object_v<T> && !std::is_const_v<T>, "cbm::ContextKey<T>: T must be a non-const object type");

public:
    using value_type = T;
    constexpr explicit ContextKey(std::string_view name) noexcept : name_(name) {}
    ContextKey(const ContextKey&) = delete;
    ContextKey& operator=(const ContextKey&) = delete;

    // For diagnostics only; lookups compare addresses, never names.
    constexpr std::string_view name() const noexcept { return name_; }

private:
    std::string_view name_;
};

// A handle to a node of a context tree (Go's context.Context).
class Context {
public:
    using clock = std::chrono::steady_clock;

    // Effect: background(). Never throws, allocates nothing.
    Context() noexcept = default;

    // The root: never canceled, no deadline, no values (Go: Background()).
    static Context background() noexcept { return Context(); }

    // A token whose stop is requested when this context is canceled. For a
    // context that can never be canceled (background, without_cancel and
    // values on top of them) it is a token with stop_possible() == false.
    // Never blocks.
    std::stop_token done() const noexcept {
        detail::CancelNode* c = canceler();
        return c != nullptr ? c->source.get_token() : std::stop_token();
    }

    // Empty while active; then errc::canceled or errc::deadline_exceeded,
    // forever. One acquire load; never blocks.
    std::error_code err() const noexcept { return detail::error_of(detail::state_of(canceler())); }

    // Shorthand for static_cast<bool>(err()).
    bool canceled() const noexcept { return detail::state_of(canceler()) != detail::kActive; }

    // The time at which this context is canceled with deadline_exceeded (the
    // earliest deadline on its chain), if any.
    std::optional<clock::time_point> deadline() const noexcept {
        const detail::ContextNode* n = ref_.get();
        if (n == nullptr || n->deadline == detail::kNoDeadline) return std::nullopt;
        return n->deadline;
    }

    // The value bound to `key` by the nearest with_value() up the chain, or
    // nullptr. The pointee lives as long as any context that can reach it.
    // Walks the chain (O(depth), as in Go); never blocks.
    template <class T>
    const T* value(const ContextKey<T>& key) const noexcept {
        for (const detail::ContextNode* n = ref_.get(); n != nullptr; n = n->parent) {
            if (n->key == &key) return &static_cast<const detail::ValueNode<T>*>(n)->stored;
        }
        return nullptr;
    }

    // Blocks until this context is canceled.
    // Throws: std::logic_error if it can never be canceled (it would block
    // forever: Go's `<-ctx.Done()` on Background()).
    void wait() const {
        std::stop_token token = done();
        if (!token.stop_possible()) {
            throw std::logic_error("cbm::Context::wait: this context can never be canceled");
        }
        if (token.stop_requested()) return;
        std::mutex mutex;
        std::condition_variable_any woken;
        std::unique_lock<std::mutex> lock(mutex);
        woken.wait(lock, token, [] { return false; });
    }

    // Blocks until this context is canceled or `timeout` has passed.
    // Returns: true if canceled.
    // A timeout too large for the clock waits as wait() does (and throws
    // like it for a context that can never be canceled).
    template <class Rep, class Period>
    bool wait_for(const std::chrono::duration<Rep, Period>& timeout) const;

    // Blocks until this context is canceled or `time` is reached (any clock;
    // read once, on entry, and waited for on the steady clock).
    // Returns: true if canceled.
    // A time too far ahead for the steady clock waits as wait() does (and
    // throws like it for a context that can never be canceled); the
    // arithmetic saturates, whatever the clock and duration types.
    template <class Clock, class Duration>
    bool wait_until(const std::chrono::time_point<Clock, Duration>& time) const {
        std::stop_token token = done();
        if (token.stop_requested()) return true;
        using Wide = std::chrono::duration<long double, std::nano>;
        const detail::steady_time until =
            detail::deadline_after(Wide(time.time_since_epoch()) - Wide(Clock::now().time_since_epoch()));
        if (until == detail::kNoDeadline) {
            wait();
            return true;
        }
        std::mutex mutex;
        std::condition_variable_any woken;
        std::unique_lock<std::mutex> lock(mutex);
        woken.wait_until(lock, token, until, [&token] { return token.stop_requested(); });
        // Not the call's result: libstdc++ 12 returns false when the stop
        // request lands between its predicate check and its wait.
        return token.stop_requested();
    }

    // True if both handles name the same context.
    friend bool operator==(const Context& a, const Context& b) noexcept { return a.ref_ == b.ref_; }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

private:
    friend struct detail::ContextAccess;

    using Ref = detail::IntrusiveRef<detail::ContextNode, detail::ContextRefOps>;
    explicit Context(detail::ContextNode* adopted) noexcept : ref_(Ref::adopt(adopted)) {}
    detail::CancelNode* canceler() const noexcept { return ref_ ? ref_->canceler : nullptr; }

    Ref ref_;
};

namespace detail {
// What current_context() returns; set by ContextScope.
inline thread_local const Context* current_context_slot = nullptr;
}  // namespace detail

// The context of the callbacks running on this thread: set by
// CallbackGroup::trigger(ctx, ...) and CallbackRegistry::trigger(ctx, ...),
// around an after_func's function (its context), and by ContextScope, for
// the duration of the call; background() where
// none is set. The reference stays valid while that call runs; copy it to
// keep it longer. Never blocks.
inline const Context& current_context() noexcept {
    static const Context* const background = new Context();
    const Context* current = detail::current_context_slot;
    return current != nullptr ? *current : *background;
}

// Makes `ctx` this thread's current_context() until destroyed, then restores
// the previous one (scopes nest). `ctx` must outlive the scope. Not movable.
class ContextScope {
public:
    explicit ContextScope(const Context& ctx) noexcept
        : previous_(std::exchange(detail::current_context_slot, &ctx)) {}
    // A temporary would be gone before the scope: keep the context in a
    // variable (`cbm::Context ctx = ...; cbm::ContextScope scope(ctx);`).
    explicit ContextScope(Context&&) = delete;
    ContextScope(const ContextScope&) = delete;
    ContextScope& operator=(const ContextScope&) = delete;
    ~ContextScope() { detail::current_context_slot = previous_; }

private:
    const Context* previous_;
};

// Cancels its context (Go's context.CancelFunc). Copyable; every copy
// cancels the same context.
class CancelFunc : private detail::CancelHandle {
public:
    CancelFunc() noexcept = default;  // does nothing when called

    // Effect: cancels the context with errc::canceled, unless it was
    // canceled already. Idempotent and thread-safe. err() of every
    // descendant is set before it returns. Never waits for user code on
    // other threads (takes each affected context's mutex briefly, and waits
    // at most for another cancellation's bookkeeping); std::stop_callbacks
    // registered on the tokens of the contexts this call cancels run inline,
    // on this thread.
    void operator()() const noexcept {
        cancel(nullptr);
    }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

private:
    friend struct detail::ContextAccess;
    explicit CancelFunc(detail::CancelNode* counted) noexcept : CancelHandle(counted) {}
};

// Cancels its context with a cause (Go's context.CancelCauseFunc).
class CancelCauseFunc : private detail::CancelHandle {
public:
    CancelCauseFunc() noexcept = default;

    // Effect: as CancelFunc, and cause(ctx) reports `cause` (if this call is
    // the first cancellation). A null cause reports an error equal to
    // errc::canceled, as Go's cancel(nil) does.
    void operator()(std::exception_ptr cause = nullptr) const noexcept {
        cancel(std::move(cause));
    }

    // Effect: as above with a std::system_error(code) as the cause (an empty
    // code counts as no cause).
    // Never throws: if the cause cannot be allocated, cancels without one.
    void operator()(std::error_code code) const noexcept {
        std::exception_ptr cause;
        try {
            if (code) cause = std::make_exception_ptr(std::system_error(code));
        } catch (...) {
            cause = nullptr;
        }
        (*this)(std::move(cause));
    }

private:
    friend struct detail::ContextAccess;
    explicit CancelCauseFunc(detail::CancelNode* counted) noexcept : CancelHandle(counted) {}
};

namespace detail {

// cbm's own access to the handles' nodes.
struct ContextAccess {
    static ContextNode* node(const Context& c) noexcept { return c.ref_.get(); }
    static CancelNode* canceler(const Context& c) noexcept { return c.canceler(); }
    // Adopts the caller's reference to `n`.
    static Context adopt(ContextNode* n) noexcept { return Context(n); }
    // A new handle pair for a new cancelable node (holding one reference).
    template <class Func>
    static std::pair<Context, Func> adopt_with(CancelNode* n) noexcept {
        n->add_ref();
        return {Context(n), Func(n)};
    }
};

}  // namespace detail

template <class Rep, class Period>
bool Context::wait_for(const std::chrono::duration<Rep, Period>& timeout) const {
    const detail::steady_time until = detail::deadline_after(timeout);
    if (until == detail::kNoDeadline) {
        wait();
        return true;
    }
    return wait_until(until);
}

// Go's WithCancel: a child that is canceled by the returned function or with
// its parent. Throws: std::bad_alloc (nothing created).
[[nodiscard]] inline std::pair<Context, CancelFunc> with_cancel(const Context& parent) {
    return detail::ContextAccess::adopt_with<CancelFunc>(
        detail::make_cancelable_node(detail::ContextAccess::node(parent)));
}

// Go's WithCancelCause: as with_cancel; the function takes the cause that
// cbm::cause() then reports.
[[nodiscard]] inline std::pair<Context, CancelCauseFunc> with_cancel_cause(const Context& parent) {
    return detail::ContextAccess::adopt_with<CancelCauseFunc>(
        detail::make_cancelable_node(detail::ContextAccess::node(parent)));
}

// Go's WithDeadlineCause: as with_cancel, and canceled with
// errc::deadline_exceeded at `deadline` (steady clock); cause() then reports
// `cause` (or, if null, an error equal to deadline_exceeded). Canceled
// earlier by the function, it reports canceled. A deadline at or before now
// gives a context that is already deadline_exceeded. If the parent's
// deadline is earlier, the child simply inherits it (no timer of its own).
// Throws: std::bad_alloc, or std::system_error if the timer thread cannot
// be started (nothing created).
[[nodiscard]] inline std::pair<Context, CancelFunc> with_deadline_cause(const Context& parent,
                                                          std::chrono::steady_clock::time_point deadline,
                                                          std::exception_ptr cause) {
    return detail::ContextAccess::adopt_with<CancelFunc>(
        detail::make_deadline_node(detail::ContextAccess::node(parent), deadline, std::move(cause)));
}

// Go's WithDeadline.
[[nodiscard]] inline std::pair<Context, CancelFunc> with_deadline(const Context& parent,
                                                    std::chrono::steady_clock::time_point deadline) {
    return with_deadline_cause(parent, deadline, nullptr);
}

// Go's WithTimeoutCause: with_deadline_cause(parent, now + timeout, cause).
// A zero or negative timeout gives a context that is already expired.
template <class Rep, class Period>
[[nodiscard]] std::pair<Context, CancelFunc> with_timeout_cause(const Context& parent,
                                                  const std::chrono::duration<Rep, Period>& timeout,
                                                  std::exception_ptr cause) {
    return with_deadline_cause(parent, detail::deadline_after(timeout), std::move(cause));
}

// Go's WithTimeout.
template <class Rep, class Period>
[[nodiscard]] std::pair<Context, CancelFunc> with_timeout(const Context& parent, const std::chrono::duration<Rep, Period>& timeout) {
    return with_timeout_cause(parent, timeout, nullptr);
}

// Go's WithValue: a child in which ctx.value(key) is the given value (a copy
// of `value` converted to T); everything else passes through to `parent`.
// Throws: what T's constructor throws, or std::bad_alloc.
template <class T, class V>
    requires std::is_constructible_v<T, V&&>
[[nodiscard]] Context with_value(const Context& parent, const ContextKey<T>& key, V&& value) {
    auto* n = new detail::ValueNode<T>(&key, std::forward<V>(value));
    detail::ContextNode* p = detail::ContextAccess::node(parent);
    if (p != nullptr) p->add_ref();
    detail::attach_to_parent(n, p);
    return detail::ContextAccess::adopt(n);
}

// Go's WithoutCancel: keeps the parent's values, but is never canceled, has
// no deadline, and its done() token has stop_possible() == false.
[[nodiscard]] inline Context without_cancel(const Context& parent) {
    auto* n = new detail::ContextNode();
    n->parent = detail::ContextAccess::node(parent);  // values only: canceler and deadline stay empty
    if (n->parent != nullptr) n->parent->add_ref();
    return detail::ContextAccess::adopt(n);
}

// A child that is canceled (errc::canceled) when `token` is stopped, when the
// returned function is called, or with its parent: the bridge from a
// std::jthread's or any std::stop_source's token into a context tree. If the
// token is already stopped, the child is born canceled.
[[nodiscard]] inline std::pair<Context, CancelFunc> with_stop_token(const Context& parent, std::stop_token token) {
    auto* node = detail::make_cancelable_node<detail::StopTokenNode>(detail::ContextAccess::node(parent));
    auto handles = detail::ContextAccess::adopt_with<CancelFunc>(node);
    if (token.stop_possible()) node->on_stop.emplace(std::move(token), detail::StopTokenNode::OnStop{node});
    return handles;
}

// Go's Cause: null while ctx is active; after cancellation, the cause given
// to a CancelCauseFunc or with_*_cause (inherited from the ancestor whose
// cancellation reached ctx), else an exception_ptr to a std::system_error
// whose code equals ctx.err().
inline std::exception_ptr cause(const Context& ctx) {
    detail::CancelNode* c = detail::ContextAccess::canceler(ctx);
    const std::uint8_t state = detail::state_of(c);
    if (state == detail::kActive) return nullptr;
    return c->cause ? c->cause : detail::default_cause(state);
}

}  // namespace cbm

// Go's context package also holds AfterFunc; it has a header of its own.
#include "after_func.hpp"
