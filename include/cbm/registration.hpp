// cbm/registration.hpp - handles to one registered callback: Registration
// (copyable) and ScopedRegistration (move-only, unregisters on destruction).
#pragma once

#include <string>
#include <utility>

#include "detail/intrusive_ref.hpp"
#include "detail/node.hpp"
#include "detail/thread_records.hpp"
#include "detail/unregister.hpp"

namespace cbm {

// The lifecycle of one callback, as seen through its handle.
//
//   idle ──add()──> registered <──> executing
//                       │               │
//                       └──unregister / clear / erase / group destroyed / once ran
//                                       v
//                                  unregistered   (terminal)
enum class CallbackState {
    idle,          // the handle is not attached to any callback
    registered,    // attached and may run on the next trigger
    executing,     // registered and at least one thread is filtering or running it now
    unregistered,  // will never start again; a last invocation may still be finishing
};

inline const char* to_string(CallbackState s) noexcept {
    switch (s) {
        case CallbackState::idle: return "idle";
        case CallbackState::registered: return "registered";
        case CallbackState::executing: return "executing";
        case CallbackState::unregistered: return "unregistered";
    }
    return "?";
}

template <class Signature>
class CallbackGroup;
template <class Key, class Signature, class Hash, class KeyEqual>
class CallbackRegistry;

// A counted handle to one registered callback.
// Safety: copies may be used from any threads at once; one Registration object
// may be read (state, unregister, ...) from several threads, but assigning to
// it while others use it is a data race, as for std::shared_ptr.
// A Registration may outlive its group or registry.
class Self;

class Registration {
public:
    // Effect: an idle handle.
    Registration() noexcept = default;

    // Effect: the current state (see CallbackState). `unregistered`, once
    // returned, is returned forever. Never blocks; scans all threads' records,
    // so it is slower than a trigger: meant for diagnostics and tests.
    CallbackState state() const {
        if (!node_) return CallbackState::idle;
        if (node_->unregistered()) return CallbackState::unregistered;
        const bool running = detail::node_announced(node_.get(), true);
        if (node_->unregistered()) return CallbackState::unregistered;
        return running ? CallbackState::executing : CallbackState::registered;
    }

    // Effect: the callback never starts again, and when this returns it is not
    // running on any thread other than the caller's. Called from inside the
    // callback itself (or while it runs further up this thread's stack) it
    // does not wait for that invocation. Never deadlocks: it does not wait
    // for threads that are blocked in a cbm wait for an invocation the caller
    // is inside (a wait cycle; see the README's rules of the blocking waits);
    // those may still run it when this returns. Once no thread runs it, its
    // callable and filter are destroyed (if no other call did so already).
    // Returns: true only for the call that moved the callback to
    // `unregistered`; false for an idle handle or when clear(), erase(), the
    // group's destruction, a `once` run or another unregister got there first.
    // Blocks: while the callback runs on other threads.
    bool unregister() { return node_ && detail::unregister_node(*node_, true); }

    // Effect: as unregister(), but never waits: invocations already running on
    // other threads may still be in progress when it returns; the callable is
    // destroyed once they have finished and no trigger can reach it.
    // Never blocks on user code (it takes the group's writer lock briefly).
    bool unregister_nowait() { return node_ && detail::unregister_node(*node_, false); }

    // The name given in CallbackOptions (empty for an idle handle).
    const std::string& name() const noexcept {
        static const std::string empty;
        return node_ ? node_->name : empty;
    }

    // True unless idle.
    explicit operator bool() const noexcept { return static_cast<bool>(node_); }

    friend bool operator==(const Registration& a, const Registration& b) noexcept { return a.node_ == b.node_; }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

private:
    friend class Self;
    template <class Signature>
    friend class CallbackGroup;
    template <class Key, class Signature, class Hash, class KeyEqual>
    friend class CallbackRegistry;

    using Ref = detail::IntrusiveRef<detail::NodeBase, detail::MemberRefOps>;
    // Adopts one reference already counted in the node.
    explicit Registration(detail::NodeBase* adopted) noexcept : node_(Ref::adopt(adopted)) {}

    Ref node_;
};

// Owns a Registration and unregisters it (blocking, like unregister()) when
// destroyed or assigned over. Move-only.
class ScopedRegistration {
public:
    ScopedRegistration() noexcept = default;
    // [[nodiscard]]: `cbm::ScopedRegistration(g.add(f));` would unregister at
    // once; name the variable.
    [[nodiscard]] ScopedRegistration(Registration r) noexcept  // NOLINT: implicit by design
        : registration_(std::move(r)) {}
    ScopedRegistration(ScopedRegistration&&) noexcept = default;
    ScopedRegistration& operator=(ScopedRegistration&& other) noexcept {
        if (this != &other) {
            reset();
            registration_ = std::move(other.registration_);
        }
        return *this;
    }
    ScopedRegistration(const ScopedRegistration&) = delete;
    ScopedRegistration& operator=(const ScopedRegistration&) = delete;
    ~ScopedRegistration() { reset(); }

    CallbackState state() const { return registration_.state(); }
    bool unregister() { return registration_.unregister(); }
    bool unregister_nowait() { return registration_.unregister_nowait(); }
    const std::string& name() const noexcept { return registration_.name(); }
    const Registration& get() const noexcept { return registration_; }
    explicit operator bool() const noexcept { return static_cast<bool>(registration_); }

    // Effect: gives up ownership without unregistering.
    Registration release() noexcept { return std::exchange(registration_, Registration{}); }

    // Effect: unregisters (blocking) and becomes idle.
    void reset() {
        if (registration_) {
            registration_.unregister();
            registration_ = Registration{};
        }
    }

private:
    Registration registration_;
};

}  // namespace cbm
