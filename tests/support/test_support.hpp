// Helpers shared by the tests: lifetime counting and bounded waiting.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>

namespace cbm_test {

// The error code of the std::system_error an exception_ptr holds ({} for any
// other exception).
inline std::error_code code_of(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::system_error& ex) {
        return ex.code();
    } catch (...) {
        return {};
    }
}

// Counts constructions and destructions of objects that share one Counter;
// a destruction of an object that is not alive (double destruction) is
// recorded as an error.
struct Counter {
    std::atomic<int> constructed{0};
    std::atomic<int> destroyed{0};
    std::atomic<int> errors{0};
    int alive() const { return constructed.load() - destroyed.load(); }
};

class Tracked {
public:
    explicit Tracked(Counter& c) : counter_(&c) { counter_->constructed.fetch_add(1); }
    Tracked(const Tracked& other) : counter_(other.counter_) { counter_->constructed.fetch_add(1); }
    Tracked(Tracked&& other) noexcept : counter_(other.counter_) { counter_->constructed.fetch_add(1); }
    Tracked& operator=(const Tracked&) = delete;
    ~Tracked() {
        if (magic_ != kAlive) {
            counter_->errors.fetch_add(1);
            return;
        }
        magic_ = kDead;
        counter_->destroyed.fetch_add(1);
    }
    bool alive() const { return magic_ == kAlive; }

private:
    static constexpr unsigned kAlive = 0xA11CEu;
    static constexpr unsigned kDead = 0xDEADu;
    Counter* counter_;
    volatile unsigned magic_ = kAlive;
};

// Polls `done` (yielding) until it holds or `limit` passes; returns whether it
// held. A bounded wait for a condition, never a sleep used as synchronization.
template <class Pred>
bool eventually(Pred&& done, std::chrono::milliseconds limit = std::chrono::seconds(20)) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::yield();
    }
    return true;
}

// A one-shot flag a callback can block on, with a bounded wait.
class Gate {
public:
    void open() {
        open_.store(true);
        open_.notify_all();
    }
    // Waits until opened; throws after `limit` so that a broken test fails
    // instead of hanging.
    void wait(std::chrono::milliseconds limit = std::chrono::seconds(20)) const {
        if (!eventually([this] { return open_.load(); }, limit)) throw std::runtime_error("Gate: timed out");
    }
    bool is_open() const { return open_.load(); }

private:
    std::atomic<bool> open_{false};
};

}  // namespace cbm_test

namespace cbm_test {

// A callback body that blocks until released, for tests of operations that
// must wait for a callback running on another thread.
class BlockingCallback {
public:
    // Call from the callback.
    void run() {
        entered_.open();
        release_.wait();
        finished_.store(true);
    }
    void wait_until_running() const { entered_.wait(); }
    bool finished() const { return finished_.load(); }
    // Lets the callback go.
    void release() { release_.open(); }

    // Runs `operation` on a new thread while the callback is blocked, lets the
    // callback go once `operation_started()` holds, and returns whether the
    // callback had finished by the time `operation` returned: true when the
    // operation waited for it.
    template <class Operation, class Started>
    bool operation_waited(Operation&& operation, Started&& operation_started) {
        wait_until_running();
        bool finished_on_return = false;
        std::thread worker([&] {
            operation();
            finished_on_return = finished();
        });
        const bool started = eventually(operation_started);
        release_.open();
        worker.join();
        if (!started) throw std::runtime_error("BlockingCallback: the operation never started");
        return finished_on_return;
    }

private:
    Gate entered_;
    Gate release_;
    std::atomic<bool> finished_{false};
};

}  // namespace cbm_test

namespace cbm_test {

// Ends the whole test program with a message if it is not destroyed within
// `limit`: a deadlock becomes a reported failure instead of a hang (the
// stuck threads cannot be joined, so failing the one test is not possible).
class Watchdog {
public:
    // The environment variable CBM_WATCHDOG_SECONDS overrides `limit`.
    explicit Watchdog(const char* what, std::chrono::seconds limit = std::chrono::seconds(60))
        : thread_([this, what, limit = limit_from_environment(limit)] {
              std::unique_lock<std::mutex> lock(mutex_);
              if (!done_cv_.wait_for(lock, limit, [this] { return done_; })) {
                  std::fprintf(stderr, "watchdog: \"%s\" did not finish within %llds: a deadlock?\n", what,
                               static_cast<long long>(limit.count()));
                  std::fflush(stderr);
                  std::_Exit(3);
              }
          }) {}
    Watchdog(const Watchdog&) = delete;
    Watchdog& operator=(const Watchdog&) = delete;
    ~Watchdog() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            done_ = true;
        }
        done_cv_.notify_all();
        thread_.join();
    }

private:
    static std::chrono::seconds limit_from_environment(std::chrono::seconds fallback) {
        const char* text = std::getenv("CBM_WATCHDOG_SECONDS");
        const long seconds = text != nullptr ? std::strtol(text, nullptr, 10) : 0;
        return seconds > 0 ? std::chrono::seconds(seconds) : fallback;
    }

    std::mutex mutex_;
    std::condition_variable done_cv_;
    bool done_ = false;
    std::thread thread_;  // last: starts once the members above exist
};

}  // namespace cbm_test
