// Tests for cbm/histogram.hpp.
#include <cbm/histogram.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

using cbm::HistogramSnapshot;
using cbm::LatencyHistogram;

namespace {

// The exact nearest-rank percentile of a sample.
double exact_percentile(std::vector<std::uint64_t> sample, double p) {
    std::sort(sample.begin(), sample.end());
    const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(sample.size())));
    return static_cast<double>(sample[std::max<std::size_t>(rank, 1) - 1]);
}

}  // namespace

TEST_CASE("every value falls in the bucket whose range holds it, and buckets tile the range", "[histogram]") {
    std::vector<std::uint64_t> values;
    for (std::uint64_t v = 0; v < 5000; ++v) values.push_back(v);
    for (int bit = 5; bit < 42; ++bit) {
        const std::uint64_t p = std::uint64_t{1} << bit;
        values.insert(values.end(), {p - 1, p, p + 1, p + p / 3});
    }
    for (std::uint64_t v : values) {
        const std::size_t b = HistogramSnapshot::bucket_of(v);
        REQUIRE(b < HistogramSnapshot::kBucketCount);
        REQUIRE(HistogramSnapshot::bucket_low(b) <= v);
        REQUIRE(v < HistogramSnapshot::bucket_low(b) + HistogramSnapshot::bucket_width(b));
        // No bucket is wider than 1/16 of its lower bound (beyond the exact ones).
        if (v >= 32) REQUIRE(HistogramSnapshot::bucket_width(b) * 16 <= HistogramSnapshot::bucket_low(b));
    }
    for (std::size_t b = 0; b + 1 < HistogramSnapshot::kBucketCount; ++b) {
        REQUIRE(HistogramSnapshot::bucket_low(b) + HistogramSnapshot::bucket_width(b) == HistogramSnapshot::bucket_low(b + 1));
    }
    // Values past the range share the last bucket.
    REQUIRE(HistogramSnapshot::bucket_of(UINT64_MAX) == HistogramSnapshot::kBucketCount - 1);
}

TEST_CASE("percentiles are within 1/32 of the exact nearest-rank percentiles of a known sample", "[histogram]") {
    std::mt19937_64 random(12345);
    std::lognormal_distribution<double> latency(9.0, 1.5);  // a long tail around 8 us
    std::vector<std::uint64_t> sample;
    LatencyHistogram histogram;
    for (int i = 0; i < 100'000; ++i) {
        const auto v = static_cast<std::uint64_t>(latency(random));
        sample.push_back(v);
        histogram.record(v);
    }
    const HistogramSnapshot s = histogram.snapshot();
    REQUIRE(s.count() == sample.size());
    REQUIRE(s.max() == *std::max_element(sample.begin(), sample.end()));
    for (double p : {1.0, 10.0, 50.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0}) {
        const double exact = exact_percentile(sample, p);
        const double estimate = s.percentile(p);
        INFO("p" << p << ": exact " << exact << ", estimate " << estimate);
        REQUIRE(std::abs(estimate - exact) <= HistogramSnapshot::kRelativeError * exact);
    }
}

TEST_CASE("small values are exact and an empty histogram reports zeros", "[histogram]") {
    LatencyHistogram histogram;
    REQUIRE(histogram.snapshot().percentile(50) == 0.0);
    for (std::uint64_t v : {3, 7, 7, 20}) histogram.record(v);
    const HistogramSnapshot s = histogram.snapshot();
    REQUIRE(s.percentile(25) == 3.0);
    REQUIRE(s.percentile(50) == 7.0);
    REQUIRE(s.percentile(100) == 20.0);
    REQUIRE(s.sum() == 37);
    REQUIRE(s.mean() == Approx(9.25));
    REQUIRE_THROWS_AS(s.percentile(0), std::invalid_argument);
    REQUIRE_THROWS_AS(s.percentile(100.5), std::invalid_argument);
}

TEST_CASE("records from many threads at once are all counted", "[histogram][race]") {
    LatencyHistogram histogram;
    constexpr int kThreads = 4;
    constexpr std::uint64_t kPerThread = 50'000;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            for (std::uint64_t i = 0; i < kPerThread; ++i) histogram.record(i + static_cast<std::uint64_t>(t));
        });
    }
    for (auto& t : threads) t.join();
    const HistogramSnapshot s = histogram.snapshot();
    REQUIRE(s.count() == kThreads * kPerThread);
    REQUIRE(s.max() == kPerThread - 1 + kThreads - 1);
    std::uint64_t expected_sum = 0;
    for (int t = 0; t < kThreads; ++t) expected_sum += kPerThread * (kPerThread - 1) / 2 + kPerThread * static_cast<std::uint64_t>(t);
    REQUIRE(s.sum() == expected_sum);
}
