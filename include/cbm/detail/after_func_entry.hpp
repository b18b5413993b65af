// cbm/detail/after_func_entry.hpp - one after_func registration: a listener
// on its context, a task for the shared runner, and what StopFunc points at.
//
// Memory ordering: `state` moves off kPending exactly once (a CAS, acq_rel);
// only the thread that moved it touches `fn` afterwards. The counted
// references (the StopFunc's, the listener list's, a queued run's) are
// dropped with acq_rel, so the last holder sees every earlier write.
#pragma once

#include <atomic>
#include <cstdint>
#include <utility>

#include "../callback.hpp"
#include "async_runner.hpp"
#include "context_node.hpp"

namespace cbm::detail {

// `ContextT` is cbm::Context and `ScopeT` cbm::ContextScope (after_func.hpp):
// parameters, so that this machinery does not include the public API it
// serves. While f runs, and while it is destroyed, the entry's context is
// the thread's current context.
template <class ContextT, class ScopeT>
struct AfterFuncEntry final : CancelListener, RunnerTask {
    static constexpr std::uint8_t kPending = 0;
    static constexpr std::uint8_t kStopped = 1;
    static constexpr std::uint8_t kStarted = 2;

    AfterFuncEntry(Callback<void()>&& f, const ContextT& c) noexcept : fn(std::move(f)), ctx(c) {}

    std::atomic<std::uint32_t> refs{1};
    std::atomic<std::uint8_t> state{kPending};  // pending -> stopped | started, once
    Callback<void()> fn;                        // touched only by whoever moved state off pending
    CancelNode* node = nullptr;                 // counted; null for a context never canceled
    ContextT ctx;                               // current_context() while f runs

    void add_ref() noexcept { refs.fetch_add(1, std::memory_order_relaxed); }

    bool claim(std::uint8_t next) noexcept {
        std::uint8_t expected = kPending;
        return state.compare_exchange_strong(expected, next, std::memory_order_acq_rel);
    }

    // CancelListener: the context was canceled; run f elsewhere.
    void fire() noexcept override {
        add_ref();
        AsyncRunner::shared().post(this);
    }
    bool obsolete() const noexcept override { return state.load(std::memory_order_acquire) != kPending; }
    void release_ref() noexcept override {
        if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            detail::release_ref(node);
            delete this;
        }
    }

    // RunnerTask. An exception escaping f calls std::terminate (as it would
    // on a std::thread): there is no caller to report it to.
    void run() noexcept override {
        if (claim(kStarted)) {
            const ScopeT scope(ctx);
            CallbackAccess::invoke(fn);
            fn.reset();
        }
        release_ref();
    }
    void discard() noexcept override { release_ref(); }

    // StopFunc: f will not run, unless it has been started.
    bool stop() noexcept {
        if (!claim(kStopped)) return false;
        if (node != nullptr && remove_listener(node, this)) release_ref();  // the list's reference
        fn.reset();
        return true;
    }

    // Effect: f runs once `c` is canceled (now, elsewhere, if it already is).
    // `c` may be null (never canceled): f never runs.
    void listen(CancelNode* c) noexcept {
        if (c == nullptr) return;
        c->add_ref();
        node = c;
        add_ref();  // the listener list's reference
        if (!add_listener(c, this)) {
            fire();  // already canceled: run it now, elsewhere
            release_ref();
        }
    }

private:
    ~AfterFuncEntry() = default;
};

}  // namespace cbm::detail
