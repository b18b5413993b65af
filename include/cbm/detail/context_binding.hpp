// cbm/detail/context_binding.hpp - CallbackOptions::context: a callback that
// is unregistered when a context is canceled.
//
// The link is a listener in the context's list that holds a Registration.
// When the context is canceled, the canceling thread calls
// unregister_nowait() on it (cancel never waits for callbacks running on
// other threads). When the callback is unregistered some other way first,
// the listener becomes obsolete and is pruned the next time the context's
// list grows, so a long-lived context with short-lived callbacks stays small.
#pragma once

#include <utility>

#include "../context.hpp"
#include "../registration.hpp"
#include "callback_list.hpp"
#include "context_node.hpp"

namespace cbm::detail {

struct RegistrationListener final : CancelListener {
    Registration registration;

    void fire() noexcept override {
        try {
            registration.unregister_nowait();
        } catch (...) {
            // Only a failing mutex could throw; the callback then stays registered.
        }
    }
    bool obsolete() const noexcept override {
        return (registration.node_->state.load(std::memory_order_acquire) & kUnregistered) != 0;
    }
    void release() noexcept override { delete this; }
};

// Used by add(): allocate first (the only step that can throw), register the
// callback, then attach (never throws).
class ContextBinding {
public:
    // Throws: std::bad_alloc (nothing registered yet).
    explicit ContextBinding(const Context& ctx) : context_(ContextAccess::canceler(ctx)) {
        if (context_ != nullptr) listener_ = new RegistrationListener();
    }
    ContextBinding(const ContextBinding&) = delete;
    ContextBinding& operator=(const ContextBinding&) = delete;
    ~ContextBinding() { delete listener_; }

    // True if the context was canceled before the callback was added: the
    // callback must never be registered.
    bool already_canceled() const noexcept { return context_ != nullptr && context_->state() != kActive; }

    // Effect: `r` is unregistered (nowait) when the context is canceled; at
    // once if that happened meanwhile.
    void attach(const Registration& r) noexcept {
        if (listener_ == nullptr) return;
        RegistrationListener* l = std::exchange(listener_, nullptr);
        l->registration = r;
        if (!add_listener(context_, l)) {
            l->fire();
            l->release();
        }
    }

private:
    CancelNode* context_;  // kept alive by the caller's Context
    RegistrationListener* listener_ = nullptr;
};

}  // namespace cbm::detail
