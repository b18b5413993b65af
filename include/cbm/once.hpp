// cbm/once.hpp - Go's sync.Once, OnceValue and OnceFunc for C++20.
//
//   cbm::Once once;             once.call([] { init(); });  once.done();  once.reset();
//   cbm::OnceValue<Config> cfg; const Config& c = cfg.get([] { return load(); });
//   auto f = cbm::once_func([] { return expensive(); });   // f() runs it at most once
//
// Semantics (differences from Go and std::call_once stated):
//   * Once::call(f): f runs to completion successfully at most once. Callers
//     that arrive while f runs block until it finishes and then see its
//     effects. If f throws, the exception reaches that caller and the Once
//     stays not done, so the next call retries (std::call_once's rule; Go
//     marks a panicked Once as done). Calling call() or reset() on the same
//     Once from inside f throws std::system_error(resource_deadlock_would_occur)
//     instead of deadlocking.
//   * Once::call when done is one acquire load and a branch, inline.
//   * once_func(f) follows Go's OnceFunc/OnceValue: f runs at most once, also
//     when it throws: every later call rethrows that same exception. f, and
//     what it captures, is released right after its one run.
//
// Memory ordering: `state_` is the only synchronisation. The thread that runs
// f publishes its effects with a release store of kDone (or of kIdle after an
// exception); callers read kDone with acquire, so they see the effects.
// Waiters sleep on `state_` with std::atomic::wait(kRunning), which returns
// at once if the state already changed; the runner always notifies when it
// leaves kRunning, so no wake-up is lost.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>

#include "callback.hpp"

namespace cbm {

// Go's sync.Once, with std::call_once's exception rule and recursion check.
// Safety: every member may be called concurrently from any threads.
class Once {
public:
    Once() noexcept = default;
    Once(const Once&) = delete;
    Once& operator=(const Once&) = delete;

    // Effect: runs `f` unless a previous call ran it to completion; see the
    // file comment. Throws: std::invalid_argument for an empty callable (null
    // function pointer, empty std::function); what f throws;
    // std::system_error(resource_deadlock_would_occur) from inside f.
    // Blocks: while another thread runs f.
    template <class F>
        requires std::is_invocable_v<F&>
    void call(F&& f) {
        if (state_.load(std::memory_order_acquire) == kDone) [[likely]] return;
        call_slow(f);
    }

    // True once a call ran f to completion (and no reset() came after).
    bool done() const noexcept { return state_.load(std::memory_order_acquire) == kDone; }

    // Effect: the next call() runs f again. Waits for an f in progress.
    // Throws: std::system_error(resource_deadlock_would_occur) from inside f.
    void reset() {
        reset_with([] {});
    }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

private:
    template <class T>
    friend class OnceValue;

    // reset(), running `teardown()` (noexcept) between "done" and "idle"
    // while holding the Once as if running, so no call() starts meanwhile.
    template <class Teardown>
    void reset_with(Teardown&& teardown) {
        for (;;) {
            std::uint32_t state = state_.load(std::memory_order_acquire);
            if (state == kIdle) return;
            if (state == kDone) {
                if (!state_.compare_exchange_weak(state, kRunning, std::memory_order_acq_rel)) continue;
                teardown();
                finish(kIdle);
                return;
            }
            throw_if_recursive();
            state_.wait(kRunning, std::memory_order_acquire);
        }
    }

    static constexpr std::uint32_t kIdle = 0;
    static constexpr std::uint32_t kRunning = 1;
    static constexpr std::uint32_t kDone = 2;

    template <class F>
    [[gnu::noinline]] void call_slow(F& f) {
        if (detail::is_empty_callable(f)) throw std::invalid_argument("cbm::Once::call: empty callable");
        for (;;) {
            std::uint32_t state = kIdle;
            if (state_.compare_exchange_strong(state, kRunning, std::memory_order_acq_rel)) {
                run(f);
                return;
            }
            if (state == kDone) return;
            throw_if_recursive();
            state_.wait(kRunning, std::memory_order_acquire);
        }
    }

    template <class F>
    void run(F& f) {
        owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
        try {
            std::invoke(f);
        } catch (...) {
            finish(kIdle);
            throw;
        }
        finish(kDone);
    }

    void finish(std::uint32_t state) noexcept {
        owner_.store(std::thread::id{}, std::memory_order_relaxed);
        state_.store(state, std::memory_order_release);
        state_.notify_all();
    }

    void throw_if_recursive() const {
        // Only the running thread itself can read its own id here.
        if (owner_.load(std::memory_order_relaxed) == std::this_thread::get_id()) {
            throw std::system_error(std::make_error_code(std::errc::resource_deadlock_would_occur),
                                    "cbm::Once: called from inside its own function");
        }
    }

    std::atomic<std::uint32_t> state_{kIdle};
    std::atomic<std::thread::id> owner_{};  // the thread running f, while kRunning
};

// A value computed once and cached: get(f) runs f the first time (with
// Once's exception rule: a throw leaves it not computed) and returns a
// reference to the cached value ever after.
// Safety: get() and has_value() may be called concurrently from any threads.
// reset() waits for a computation in progress; references returned by get()
// must not be used across a reset().
template <class T>
class OnceValue {
public:
    OnceValue() noexcept = default;
    OnceValue(const OnceValue&) = delete;
    OnceValue& operator=(const OnceValue&) = delete;
    ~OnceValue() {
        if (once_.done()) value()->~T();
    }

    // Effect: returns the cached value, computing it with f() first if needed.
    // Throws: as Once::call.
    // Blocks: while another thread computes it.
    template <class F>
        requires std::is_convertible_v<std::invoke_result_t<F&>, T>
    const T& get(F&& f) {
        if (!once_.done()) {
            if (detail::is_empty_callable(f)) throw std::invalid_argument("cbm::OnceValue::get: empty callable");
            once_.call([&] { ::new (static_cast<void*>(storage_)) T(std::invoke(f)); });
        }
        return *value();
    }

    bool has_value() const noexcept { return once_.done(); }

    // Effect: destroys the cached value; the next get() computes it again.
    void reset() {
        once_.reset_with([this]() noexcept { value()->~T(); });
    }

private:
    const T* value() const noexcept { return std::launder(reinterpret_cast<const T*>(storage_)); }
    T* value() noexcept { return std::launder(reinterpret_cast<T*>(storage_)); }

    Once once_;
    alignas(T) unsigned char storage_[sizeof(T)];
};

namespace detail {

template <class R>
struct OnceFuncState {
    std::mutex mutex;
    std::atomic<bool> done{false};
    std::atomic<std::thread::id> runner{};     // the thread running f, while it runs
    std::optional<Callback<R()>> f;            // released after its one run
    std::exception_ptr error;                  // written before done
    std::optional<std::conditional_t<std::is_void_v<R>, char, R>> value;  // written before done

    R get() {
        if (!done.load(std::memory_order_acquire)) run_once();
        if (error) std::rethrow_exception(error);
        if constexpr (!std::is_void_v<R>) return *value;
    }

    [[gnu::noinline]] void run_once() {
        if (runner.load(std::memory_order_relaxed) == std::this_thread::get_id()) {
            throw std::system_error(std::make_error_code(std::errc::resource_deadlock_would_occur),
                                    "cbm::once_func: called from inside its own function");
        }
        std::lock_guard<std::mutex> lock(mutex);
        if (done.load(std::memory_order_relaxed)) return;
        runner.store(std::this_thread::get_id(), std::memory_order_relaxed);
        try {
            if constexpr (std::is_void_v<R>) {
                (*f)();
            } else {
                value.emplace((*f)());
            }
        } catch (...) {
            error = std::current_exception();
        }
        runner.store(std::thread::id{}, std::memory_order_relaxed);
        f.reset();  // release f and its captures after the one run
        done.store(true, std::memory_order_release);
    }
};

}  // namespace detail

// Go's OnceFunc / OnceValue: returns a copyable function object that runs f
// the first time it is called and returns (a copy of) its result, or rethrows
// its exception, on every call. All copies share the one run.
// Throws: std::invalid_argument for an empty callable.
template <class F>
[[nodiscard]] auto once_func(F&& f) {
    using R = std::invoke_result_t<std::decay_t<F>&>;
    if (detail::is_empty_callable(f)) throw std::invalid_argument("cbm::once_func: empty callable");
    auto state = std::make_shared<detail::OnceFuncState<R>>();
    state->f.emplace(std::forward<F>(f));
    return [state]() -> R { return state->get(); };
}

}  // namespace cbm
