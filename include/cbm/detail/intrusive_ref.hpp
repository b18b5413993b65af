// cbm/detail/intrusive_ref.hpp - the counted pointer behind every cbm
// handle: Context, CancelFunc, CancelCauseFunc, StopFunc and Registration.
//
// The object carries its own count; `Ops` says how to take and drop one
// reference (`Ops::add_ref(T*)`, `Ops::release_ref(T*)`, both noexcept).
// Copy adds a reference, move steals it, assignment is copy-and-swap: the
// handle classes default their copy and move members onto this one.
// Safety: as std::shared_ptr: distinct IntrusiveRef objects may be used from
// any threads; assigning to one object while others read it is a race.
#pragma once

#include <atomic>
#include <cstdint>
#include <utility>

namespace cbm::detail {

template <class T, class Ops>
class IntrusiveRef {
public:
    IntrusiveRef() noexcept = default;

    // Takes over one reference the caller already counted in `p`.
    static IntrusiveRef adopt(T* p) noexcept {
        IntrusiveRef r;
        r.ptr_ = p;
        return r;
    }

    IntrusiveRef(const IntrusiveRef& other) noexcept : ptr_(other.ptr_) {
        if (ptr_ != nullptr) Ops::add_ref(ptr_);
    }
    IntrusiveRef(IntrusiveRef&& other) noexcept : ptr_(std::exchange(other.ptr_, nullptr)) {}
    IntrusiveRef& operator=(IntrusiveRef other) noexcept {
        std::swap(ptr_, other.ptr_);
        return *this;
    }
    ~IntrusiveRef() {
        if (ptr_ != nullptr) Ops::release_ref(ptr_);
    }

    T* get() const noexcept { return ptr_; }
    T* operator->() const noexcept { return ptr_; }
    T& operator*() const noexcept { return *ptr_; }
    explicit operator bool() const noexcept { return ptr_ != nullptr; }

    friend bool operator==(const IntrusiveRef& a, const IntrusiveRef& b) noexcept { return a.ptr_ == b.ptr_; }

private:
    T* ptr_ = nullptr;
};

// Ops for types whose members are add_ref() and release_ref().
struct MemberRefOps {
    template <class T>
    static void add_ref(T* p) noexcept {
        p->add_ref();
    }
    template <class T>
    static void release_ref(T* p) noexcept {
        p->release_ref();
    }
};

// A base for an object that counts its own references (starting at one,
// the creator's) and deletes itself when the last goes: as `Derived`, so a
// class hierarchy names its root (whose destructor is virtual). Use it with
// IntrusiveRef<T, MemberRefOps>. Not copyable: a copy would share no count.
// Memory ordering: taking a reference needs none (the taker already holds
// one); dropping one is acq_rel, so that the thread that deletes sees every
// other holder's writes.
template <class Derived>
class SelfCounted {
public:
    SelfCounted(const SelfCounted&) = delete;
    SelfCounted& operator=(const SelfCounted&) = delete;

    void add_ref() const noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release_ref() const noexcept {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete static_cast<const Derived*>(this);
    }

protected:
    SelfCounted() noexcept = default;
    ~SelfCounted() = default;

private:
    mutable std::atomic<std::uint32_t> refs_{1};
};

}  // namespace cbm::detail
