// A ResilienceClock that only moves when told to; sleeping advances it at
// once and is recorded. Tests of backoff, timeouts, redelivery and ack
// deadlines run on it, so nothing sleeps for real.
#pragma once

#include <cbm/resilience.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <vector>

namespace cbm_test {

class ManualClock final : public cbm::ResilienceClock {
public:
    std::chrono::steady_clock::time_point now() noexcept override {
        return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(ns_.load()));
    }
    bool sleep_for(std::chrono::nanoseconds d, const cbm::Context& ctx) override {
        if (ctx.canceled()) return false;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            sleeps_.push_back(d);
        }
        advance(d);
        return true;
    }
    void advance(std::chrono::nanoseconds d) { ns_.fetch_add(d.count()); }
    std::vector<std::chrono::nanoseconds> sleeps() {
        std::lock_guard<std::mutex> lock(mutex_);
        return sleeps_;
    }

private:
    std::atomic<std::int64_t> ns_{1'000'000'000};
    std::mutex mutex_;
    std::vector<std::chrono::nanoseconds> sleeps_;
};

}  // namespace cbm_test
