// cbm/detail/backoff.hpp - how cbm's writers poll: spin, then yield, then
// sleep with a growing period. Waiting is library-internal; no test relies
// on its timing.
#pragma once

#include <chrono>
#include <thread>

namespace cbm::detail {

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// Backoff for writers that poll: spin briefly, then yield, then sleep with a
// growing period capped at one millisecond. Waiting is library-internal; no
// test relies on its timing.
class Backoff {
public:
    void pause() {
        if (round_ < 32) {
            cpu_relax();
        } else if (round_ < 96) {
            std::this_thread::yield();
        } else {
            std::this_thread::sleep_for(sleep_);
            if (sleep_ < std::chrono::microseconds(1000)) sleep_ *= 2;
        }
        ++round_;
    }
    bool sleeping() const noexcept { return round_ >= 96; }

private:
    unsigned round_ = 0;
    std::chrono::microseconds sleep_{20};
};

}  // namespace cbm::detail
