// cbm/histogram.hpp - a concurrent latency histogram with log-linear buckets
// (the HdrHistogram layout), and the percentiles read from it.
//
// Buckets: values below 32 have one bucket each (exact). Above, every power
// of two [2^k, 2^(k+1)) is split into 16 equal sub-buckets, so a bucket is at
// most 1/16 of its lower bound wide. A percentile is reported as the middle
// of the bucket holding the exact nearest-rank value, so it is within
// kRelativeError = 1/32 (3.125%) of that value - and never above the largest
// value recorded. Values above 2^42 ns (about 73 minutes) share the last
// bucket; max() stays exact.
//
// Memory ordering: record() does relaxed fetch_adds; a snapshot reads each
// bucket with relaxed loads, so while records run it sees each bucket at
// some moment and the total as the sum of what it saw (consistent with its
// own percentiles, not a global instant). Nothing is published through the
// histogram, so no stronger ordering is needed.
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <stdexcept>

namespace cbm {

// A copy of a LatencyHistogram's counts at one moment, with the queries.
class HistogramSnapshot {
public:
    static constexpr int kSubBucketBits = 4;  // 16 sub-buckets per power of two
    static constexpr int kExactBelowBits = kSubBucketBits + 1;  // values < 32 are exact
    static constexpr int kMaxBits = 42;  // values up to 2^42 ns are bucketed precisely
    static constexpr std::size_t kBucketCount =
        static_cast<std::size_t>((kMaxBits - kExactBelowBits + 1) << kSubBucketBits) + (std::size_t{1} << kSubBucketBits);
    static constexpr double kRelativeError = 1.0 / (1 << (kSubBucketBits + 1));

    // The bucket of value `v`.
    static constexpr std::size_t bucket_of(std::uint64_t v) noexcept {
        constexpr std::uint64_t largest = (std::uint64_t{1} << kMaxBits) - 1;
        if (v > largest) v = largest;
        const int width = std::bit_width(v);
        const int octave = width > kExactBelowBits ? width - kExactBelowBits : 0;
        return (static_cast<std::size_t>(octave) << kSubBucketBits) + static_cast<std::size_t>(v >> octave);
    }
    // The smallest value of bucket `b`, and its width.
    static constexpr std::uint64_t bucket_low(std::size_t b) noexcept {
        if (b < (std::size_t{2} << kSubBucketBits)) return b;
        const std::size_t octave = (b >> kSubBucketBits) - 1;
        const std::uint64_t mantissa = (b & ((std::size_t{1} << kSubBucketBits) - 1)) | (std::size_t{1} << kSubBucketBits);
        return mantissa << octave;
    }
    static constexpr std::uint64_t bucket_width(std::size_t b) noexcept {
        if (b < (std::size_t{2} << kSubBucketBits)) return 1;
        return std::uint64_t{1} << ((b >> kSubBucketBits) - 1);
    }

    std::uint64_t count() const noexcept { return count_; }
    std::uint64_t max() const noexcept { return max_; }
    std::uint64_t sum() const noexcept { return sum_; }
    double mean() const noexcept { return count_ == 0 ? 0.0 : static_cast<double>(sum_) / static_cast<double>(count_); }

    // The p-th percentile (0 < p <= 100) by nearest rank, within
    // kRelativeError of the exact value; 0 when empty.
    // Throws: std::invalid_argument for p outside (0, 100].
    double percentile(double p) const {
        if (!(p > 0.0 && p <= 100.0)) throw std::invalid_argument("cbm::HistogramSnapshot::percentile: p must be in (0, 100]");
        if (count_ == 0) return 0.0;
        // The rank, ceil(p% of count) and at least 1 (in integers: no <cmath>).
        const double exact_rank = p / 100.0 * static_cast<double>(count_);
        auto rank = static_cast<std::uint64_t>(exact_rank);
        if (static_cast<double>(rank) < exact_rank) ++rank;
        if (rank == 0) rank = 1;
        std::uint64_t seen = 0;
        for (std::size_t b = 0; b < kBucketCount; ++b) {
            seen += counts_[b];
            if (seen >= rank) {
                const double middle = static_cast<double>(bucket_low(b)) +
                                      (static_cast<double>(bucket_width(b)) - 1.0) / 2.0;
                const double largest = static_cast<double>(max_);
                return middle < largest ? middle : largest;
            }
        }
        return static_cast<double>(max_);
    }

    // Values recorded in bucket b (for exporters that publish buckets).
    std::uint64_t bucket_count(std::size_t b) const noexcept { return counts_[b]; }

    // Effect: this snapshot also holds `other`'s values (for totals over
    // several callbacks); the error bound still holds.
    void merge(const HistogramSnapshot& other) noexcept {
        for (std::size_t b = 0; b < kBucketCount; ++b) counts_[b] += other.counts_[b];
        count_ += other.count_;
        sum_ += other.sum_;
        if (other.max_ > max_) max_ = other.max_;
    }

private:
    friend class LatencyHistogram;
    std::array<std::uint64_t, kBucketCount> counts_{};
    std::uint64_t count_ = 0;
    std::uint64_t max_ = 0;
    std::uint64_t sum_ = 0;
};

// Many threads record; any thread may take a snapshot at any time.
// record() is wait-free: two relaxed fetch_adds and, for a new maximum, a
// compare-exchange loop. About 5 KB (one 8-byte counter per bucket).
class LatencyHistogram {
public:
    using Snapshot = HistogramSnapshot;

    void record(std::uint64_t value) noexcept {
        counts_[Snapshot::bucket_of(value)].fetch_add(1, std::memory_order_relaxed);
        sum_.fetch_add(value, std::memory_order_relaxed);
        std::uint64_t seen = max_.load(std::memory_order_relaxed);
        while (value > seen && !max_.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
        }
    }

    Snapshot snapshot() const noexcept {
        Snapshot s;
        for (std::size_t b = 0; b < Snapshot::kBucketCount; ++b) {
            s.counts_[b] = counts_[b].load(std::memory_order_relaxed);
            s.count_ += s.counts_[b];
        }
        s.max_ = max_.load(std::memory_order_relaxed);
        s.sum_ = sum_.load(std::memory_order_relaxed);
        return s;
    }

private:
    std::array<std::atomic<std::uint64_t>, Snapshot::kBucketCount> counts_{};
    std::atomic<std::uint64_t> sum_{0};
    std::atomic<std::uint64_t> max_{0};
};

}  // namespace cbm
