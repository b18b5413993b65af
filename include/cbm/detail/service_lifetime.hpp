// cbm/detail/service_lifetime.hpp - how cbm's process-wide services (the
// timer thread, the after_func runner) are born and how they end.
//
// Both are started lazily, by the first deadline or the first after_func, and
// are "immortal" objects (placement-new into static storage, never destroyed),
// so a static Context destroyed after them can still remove its timer. Their
// threads are stopped by a guard object registered with the C++ runtime when
// the first thread starts: at program exit, after the statics constructed
// later than that have been destroyed. Work scheduled after the shutdown is
// discarded, never run (deadlines no longer fire). A thread still inside user
// code (a blocked after_func, a slow std::stop_callback on an expiring
// context) one second into the shutdown is detached rather than joined, so
// exit never hangs on it - as Go does not wait for goroutines.
#pragma once

#include <chrono>
#include <new>
#include <thread>

namespace cbm::detail {

// How long the exit guards wait for user code still running on the services'
// threads before detaching them.
inline constexpr std::chrono::seconds kExitGrace{1};

// Joins `t`, or detaches it when it is the calling thread or `still_busy`.
inline void join_or_detach(std::thread& t, bool still_busy) noexcept {
    if (!t.joinable()) return;
    if (still_busy || t.get_id() == std::this_thread::get_id()) {
        t.detach();
    } else {
        t.join();
    }
}

// Makes the C++ runtime call Service::shared().shut_down() at exit (once,
// however often this is called): a function-local static's destructor.
template <class Service>
void register_exit_guard() {
    struct Guard {
        ~Guard() { Service::shared().shut_down(); }
    };
    static Guard guard;
    (void)guard;
}

// An object constructed on first use and never destroyed.
template <class T>
T& immortal() {
    alignas(T) static unsigned char storage[sizeof(T)];
    static T* const instance = ::new (static_cast<void*>(storage)) T();
    return *instance;
}

}  // namespace cbm::detail
