// Helpers shared by the tests: lifetime counting and bounded waiting.
#pragma once

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>

namespace cbm_test {

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
