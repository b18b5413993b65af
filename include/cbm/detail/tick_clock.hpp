// cbm/detail/tick_clock.hpp - the clock of measured latency (metrics and
// observers): the CPU's time-stamp counter where it runs at a constant rate
// on every core (x86-64 with an invariant TSC), else std::chrono::steady_clock.
//
// Why: a timed invocation reads the clock twice. On the machine we measure
// on, steady_clock::now() costs about 24 ns (the vDSO reads the same counter,
// then scales and checks it) and rdtsc about 10 ns: a trigger of eight
// callbacks with every call timed went from about 500 to about 290 ns
// (bench/metrics_bench.cpp).
//
// Used only where the CPU says the counter is invariant (CPUID) and, on
// Linux, the kernel uses it as its clock source (it is not, where the
// cores' counters disagree).
//
// Rate: measured once against steady_clock, over kCalibration of busy
// waiting, by calibrate(), which the first group or registry built with
// metrics calls (never a trigger). The error of the rate is about the time
// of a clock read over kCalibration, 0.01% or better, plus whatever slewing
// (NTP) steady_clock undergoes meanwhile and later (at most 0.05%). A
// duration is the difference of two readings, which may come from two
// cores; the counters of the cores of one machine are synchronized by the
// hardware (the invariant TSC), and a negative difference reads as zero.
//
// Memory ordering: calibrate() runs inside a function-local static's
// initializer, so its writes happen before every call to calibrate()
// returns; a group calls it in its constructor, before any thread can
// trigger it. Readers then load `rate_` relaxed: it never changes again.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <x86intrin.h>

#include <cstdio>
#include <cstring>
#define CBM_DETAIL_HAVE_TSC 1
#else
#define CBM_DETAIL_HAVE_TSC 0
#endif

namespace cbm::detail {

class TickClock {
public:
    static constexpr std::chrono::microseconds kCalibration{1000};

    // A reading: counter ticks, or nanoseconds where the counter is not used.
    [[gnu::always_inline]] static std::uint64_t now() noexcept {
#if CBM_DETAIL_HAVE_TSC
        if (rate_.load(std::memory_order_relaxed) != 0.0) return __rdtsc();
#endif
        return steady_ns();
    }

    // The nanoseconds between two readings (zero if `end` precedes `start`).
    static std::chrono::nanoseconds between(std::uint64_t start, std::uint64_t end) noexcept {
        if (end <= start) return std::chrono::nanoseconds{0};
        const double rate = rate_.load(std::memory_order_relaxed);
        const std::uint64_t ticks = end - start;
        if (rate == 0.0) return std::chrono::nanoseconds{static_cast<std::int64_t>(ticks)};
        return std::chrono::nanoseconds{static_cast<std::int64_t>(static_cast<double>(ticks) * rate)};
    }

    // Measures the counter's rate once per process (the first call spends
    // kCalibration; later ones return at once). Before it, and where the
    // counter is not usable, now() reads steady_clock.
    static void calibrate() noexcept {
        static const bool done = (measure_rate(), true);
        (void)done;
    }

    // Nanoseconds per counter tick, or 0 where now() reads steady_clock.
    static double nanoseconds_per_tick() noexcept { return rate_.load(std::memory_order_relaxed); }

private:
    static std::uint64_t steady_ns() noexcept {
        return static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
                .count());
    }

#if CBM_DETAIL_HAVE_TSC
    // The tightest of a few tries, so that a preemption between the
    // readings (which would move the midpoint) does not count.
    static std::uint64_t paired_reading(std::uint64_t& tsc) noexcept {
        std::uint64_t best_gap = ~std::uint64_t{0};
        std::uint64_t best_ns = 0;
        for (int attempt = 0; attempt < 5; ++attempt) {
            const std::uint64_t before = __rdtsc();
            const std::uint64_t ns = steady_ns();
            const std::uint64_t after = __rdtsc();
            if (after >= before && after - before < best_gap) {
                best_gap = after - before;
                best_ns = ns;
                tsc = before + (after - before) / 2;
            }
        }
        return best_ns;
    }

    // Linux checks at boot that the cores' counters agree and stops using
    // the TSC as its clock source when they do not (or when it drifts);
    // follow its verdict where it can be read.
    static bool kernel_trusts_tsc() noexcept {
        std::FILE* f = std::fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");
        if (f == nullptr) return true;  // not Linux, or no sysfs: the CPU's word stands
        char name[32] = {};
        const bool read = std::fgets(name, sizeof name, f) != nullptr;
        std::fclose(f);
        return !read || std::strncmp(name, "tsc", 3) == 0;
    }
#endif

    static void measure_rate() noexcept {
#if CBM_DETAIL_HAVE_TSC
        unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
        // CPUID 0x80000007, EDX bit 8: the counter runs at a constant rate
        // in every power state (Intel and AMD name it the invariant TSC).
        if (__get_cpuid(0x80000007u, &eax, &ebx, &ecx, &edx) == 0 || (edx & (1u << 8)) == 0) return;
        if (!kernel_trusts_tsc()) return;
        // Each end pairs a steady_clock reading with the midpoint of two
        // counter readings around it, so the pairing error is a few ns.
        std::uint64_t tsc0 = 0;
        const std::uint64_t ns0 = paired_reading(tsc0);
        const std::uint64_t deadline =
            ns0 + static_cast<std::uint64_t>(std::chrono::nanoseconds(kCalibration).count());
        while (steady_ns() < deadline) {
        }
        std::uint64_t tsc1 = 0;
        const std::uint64_t ns1 = paired_reading(tsc1);
        if (ns0 == 0 || ns1 <= ns0 || tsc1 <= tsc0) return;  // no tight pairing (see paired_reading)
        const double rate = static_cast<double>(ns1 - ns0) / static_cast<double>(tsc1 - tsc0);
        // A counter slower than 50 MHz or faster than 20 GHz is not the
        // invariant TSC we expect (a hypervisor's odd emulation): keep
        // steady_clock.
        if (rate > 20.0 || rate < 0.05) return;
        rate_.store(rate, std::memory_order_relaxed);
#endif
    }

    static inline std::atomic<double> rate_{0.0};
};

}  // namespace cbm::detail
