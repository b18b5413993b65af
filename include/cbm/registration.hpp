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

// A scoped block of one callback, from Registration::block(): while any
// Blocker of a callback is alive, triggers skip it (counted as skipped, and
// in metrics as skips with reason "blocked"); the last one to go unblocks
// it. Blocking does not wait: an invocation that began before block()
// returned may still be running. A trigger that starts after block()
// returned (as seen through any synchronization) does not run it.
// Move-only. Thread safety: Blockers of one callback may be made and
// destroyed on any threads at once; one Blocker object is not for
// concurrent use.
class Blocker {
public:
    // Effect: blocks nothing.
    Blocker() noexcept = default;
    Blocker(Blocker&& other) noexcept = default;
    // Effect: ends this block (the old one goes with the temporary) and
    // takes over `other`'s.
    Blocker& operator=(Blocker&& other) noexcept {
        Blocker(std::move(other)).swap(*this);
        return *this;
    }
    void swap(Blocker& other) noexcept { std::swap(node_, other.node_); }
    Blocker(const Blocker&) = delete;
    Blocker& operator=(const Blocker&) = delete;
    ~Blocker() { unblock(); }

    // Effect: ends this block now (later calls do nothing). The callback
    // runs again once no other Blocker of it is alive.
    // Blocks: takes the group's writer lock briefly.
    void unblock() noexcept {
        if (node_) {
            node_->remove_blocker();
            node_ = Ref();
        }
    }

    // True while this Blocker blocks a callback.
    bool blocking() const noexcept { return static_cast<bool>(node_); }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

private:
    friend class Registration;
    using Ref = detail::IntrusiveRef<detail::NodeBase, detail::MemberRefOps>;
    explicit Blocker(Ref node) : node_(std::move(node)) { node_->add_blocker(); }

    Ref node_;
};

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

    // Effect: blocks the callback until the returned Blocker (and every
    // other Blocker of it) is gone; see Blocker. An idle handle gives a
    // Blocker that blocks nothing. [[nodiscard]]: a dropped Blocker unblocks
    // at once.
    // Throws: std::system_error if the group's lock cannot be taken.
    // Blocks: takes the group's writer lock briefly.
    [[nodiscard]] Blocker block() const { return node_ ? Blocker(node_) : Blocker(); }

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
    [[nodiscard]] Blocker block() const { return registration_.block(); }
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
