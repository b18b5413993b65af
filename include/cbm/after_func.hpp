// cbm/after_func.hpp - Go's context.AfterFunc: run a function once a context
// is canceled, on another thread.
//
//   cbm::StopFunc stop = cbm::after_func(ctx, [] { flush(); });
//   stop();   // true if this prevented the function from running
//
// The function runs on a thread of the shared runner (detail/async_runner.hpp),
// never on the canceling thread, with its context as current_context().
#pragma once

#include <stdexcept>
#include <type_traits>
#include <utility>

#include "callback.hpp"
#include "context.hpp"
#include "detail/after_func_entry.hpp"
#include "detail/intrusive_ref.hpp"

namespace cbm {

// Stops an after_func registration (the function Go's AfterFunc returns).
// Copyable; every copy stops the same registration.
class StopFunc {
public:
    StopFunc() noexcept = default;  // returns false when called

    // Effect: f will not run, if it has not been started.
    // Returns: true if and only if this call prevented f from running (false
    // if f was started, or stop() was called before). Never waits for f.
    bool operator()() const noexcept { return entry_ && entry_->stop(); }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

private:
    template <class F>
        requires std::is_invocable_v<std::decay_t<F>&>
    friend StopFunc after_func(const Context& ctx, F&& f);

    using Entry = detail::AfterFuncEntry<Context, ContextScope>;
    using Ref = detail::IntrusiveRef<Entry, detail::MemberRefOps>;
    explicit StopFunc(Entry* adopted) noexcept : entry_(Ref::adopt(adopted)) {}

    Ref entry_;
};

// Go's AfterFunc: `f()` runs once, after ctx is canceled, on a thread of the
// shared runner (never on the thread that cancels; cancel() does not wait
// for f, and f may block). If ctx is already canceled, f runs promptly,
// likewise not inline. For a context that can never be canceled, f never
// runs. While f runs, current_context() is ctx. Dropping the returned
// StopFunc does not unregister f; calling it does. An exception escaping f
// calls std::terminate.
// Throws: std::invalid_argument for an empty callable (null function
// pointer, empty std::function); std::bad_alloc. Nothing is registered then.
template <class F>
    requires std::is_invocable_v<std::decay_t<F>&>
StopFunc after_func(const Context& ctx, F&& f) {
    Callback<void()> fn(std::forward<F>(f));
    if (!fn) throw std::invalid_argument("cbm::after_func: empty callable");
    auto* entry = new StopFunc::Entry(std::move(fn), ctx);
    StopFunc stop(entry);
    entry->listen(detail::ContextAccess::canceler(ctx));
    return stop;
}

}  // namespace cbm
