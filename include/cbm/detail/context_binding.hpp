// cbm/detail/context_binding.hpp - CallbackOptions::context: a callback that
// is unregistered when a context is canceled.
//
// The link is a listener in the context's list that holds a reference to
// the callback's node and one to the context: a registered callback keeps
// its context cancelable (by its parent, its deadline), as a handle does.
// When the context is canceled, the canceling thread unregisters the node
// without waiting (cancel never waits for callbacks running on other
// threads). When the callback is unregistered some other way, the node
// tells the link once its callable is destroyed (TargetCompanion, node.hpp):
// the link leaves the context's list and drops the context, so a context
// whose other handles are gone is freed. Until then an obsolete link is
// also pruned when the list grows.
//
// Counts: the listener list holds one reference to the link, the node
// another (the companion's), a queued run a third. Memory ordering: the
// link's count is dropped with acq_rel (the last holder sees every write);
// the companion hand-off is node.hpp's; the rest is unregister.hpp's.
#pragma once

#include <atomic>
#include <cstdint>
#include <utility>

#include "async_runner.hpp"
#include "context_node.hpp"
#include "intrusive_ref.hpp"
#include "node.hpp"
#include "timer_service.hpp"
#include "unregister.hpp"

namespace cbm::detail {

// The listener. On the timer thread (a deadline expired) it does not
// unregister there: unregistering may destroy the callable and run other
// user code, which must not hold up every other deadline of the process, so
// it hands the work to the shared runner (async_runner.hpp).
struct UnregisterOnCancel final : CancelListener, RunnerTask, TargetCompanion {
    IntrusiveRef<NodeBase, MemberRefOps> node;
    CancelNode* context = nullptr;       // counted once attached
    std::atomic<std::uint32_t> refs{2};  // the listener list's and the node's; a queued run holds another

    UnregisterOnCancel() = default;
    UnregisterOnCancel(const UnregisterOnCancel&) = delete;
    UnregisterOnCancel& operator=(const UnregisterOnCancel&) = delete;
    ~UnregisterOnCancel() { detail::release_ref(context); }

    void fire() noexcept override {
        if (TimerService::on_timer_thread()) {
            refs.fetch_add(1, std::memory_order_relaxed);
            AsyncRunner::shared().post(this);
            return;
        }
        unregister_now();
    }
    bool obsolete() const noexcept override { return node->unregistered(); }
    void release_ref() noexcept override {
        if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }

    // RunnerTask: on a runner thread; after the runner's shutdown (process
    // exit), on the thread that discards it.
    void run() noexcept override {
        unregister_now();
        release_ref();
    }
    void discard() noexcept override { run(); }

    // TargetCompanion: the callback's callable is gone, so firing would do
    // nothing: leave the context's list (unless a cancellation took it) and
    // drop the node's reference.
    void target_destroyed() noexcept override {
        if (remove_listener(context, this)) release_ref();
        release_ref();
    }

private:
    void unregister_now() noexcept {
        try {
            unregister_node(*node, false);
        } catch (...) {
            // Only a failing mutex could throw; the callback then stays registered.
        }
    }
};

// Used by add(): allocate first (the only step that can throw), register the
// callback, then attach (never throws).
class ContextBinding {
public:
    // `context` is the bound context's cancelable node (null: never canceled),
    // kept alive by the caller's Context.
    // Throws: std::bad_alloc (nothing registered yet).
    explicit ContextBinding(CancelNode* context) : context_(context) {
        if (context_ != nullptr) listener_ = new UnregisterOnCancel();
    }
    ContextBinding(ContextBinding&& other) noexcept
        : context_(other.context_), listener_(std::exchange(other.listener_, nullptr)) {}
    ContextBinding& operator=(ContextBinding&&) = delete;
    ~ContextBinding() { delete listener_; }

    // True if the context was canceled before the callback was added: the
    // callback must never be registered.
    bool already_canceled() const noexcept { return context_ != nullptr && context_->state() != kActive; }

    // Effect: `node` (registered) is unregistered without waiting when the
    // context is canceled; at once if that happened meanwhile. The link
    // keeps the context alive until the node's callable is destroyed.
    void attach(NodeBase* node) noexcept {
        if (listener_ == nullptr) return;
        UnregisterOnCancel* l = std::exchange(listener_, nullptr);
        node->add_ref();
        l->node = IntrusiveRef<NodeBase, MemberRefOps>::adopt(node);
        context_->add_ref();
        l->context = context_;
        if (!add_listener(context_, l)) {
            l->fire();
            l->release_ref();
        }
        // After linking: a destruction that ran before this finds no
        // companion, and set_companion then sees it and unlinks.
        node->set_companion(l);
    }

private:
    CancelNode* context_;
    UnregisterOnCancel* listener_ = nullptr;
};

}  // namespace cbm::detail
