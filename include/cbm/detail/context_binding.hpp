// cbm/detail/context_binding.hpp - CallbackOptions::context: a callback that
// is unregistered when a context is canceled.
//
// The link is a listener in the context's list that holds a reference to
// the callback's node. When the context is canceled, the canceling thread
// unregisters the node without waiting (cancel never waits for callbacks
// running on other threads). When the callback is unregistered some other
// way first, the listener becomes obsolete and is pruned the next time the
// context's list grows, so a long-lived context with short-lived callbacks
// stays small.
#pragma once

#include <utility>

#include "context_node.hpp"
#include "intrusive_ref.hpp"
#include "node.hpp"
#include "unregister.hpp"

namespace cbm::detail {

struct UnregisterOnCancel final : CancelListener {
    IntrusiveRef<NodeBase, MemberRefOps> node;

    void fire() noexcept override {
        try {
            unregister_node(*node, false);
        } catch (...) {
            // Only a failing mutex could throw; the callback then stays registered.
        }
    }
    bool obsolete() const noexcept override { return node->unregistered(); }
    void release_ref() noexcept override { delete this; }
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
    // context is canceled; at once if that happened meanwhile.
    void attach(NodeBase* node) noexcept {
        if (listener_ == nullptr) return;
        UnregisterOnCancel* l = std::exchange(listener_, nullptr);
        node->add_ref();
        l->node = IntrusiveRef<NodeBase, MemberRefOps>::adopt(node);
        if (!add_listener(context_, l)) {
            l->fire();
            l->release_ref();
        }
    }

private:
    CancelNode* context_;
    UnregisterOnCancel* listener_ = nullptr;
};

}  // namespace cbm::detail
