// Shared pieces of cbm's benchmarks.
#pragma once

#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace cbm_bench {

// The callback body every library runs: keeps the argument alive, touches no
// shared memory, so that only the dispatch mechanism is measured.
inline void body(int x) { benchmark::DoNotOptimize(x); }

// Prints, once per process, that a peer was not built in.
inline void note_missing(const char* peer, const char* package) {
    std::fprintf(stderr, "note: %s not installed (Debian package %s); its rows are skipped\n", peer, package);
}

// The thread counts a multi-threaded benchmark runs with: 1 to
// `default_max`, or the list in CBM_BENCH_THREADS ("1,2,4,8,16", set by
// scripts/bench.sh --threads) for a machine with more cores. A benchmark
// that is single-threaded by nature (default_max 1) stays at 1.
inline std::vector<int> thread_counts(int default_max) {
    std::vector<int> counts;
    const char* list = std::getenv("CBM_BENCH_THREADS");
    if (list != nullptr && *list != '\0' && default_max > 1) {
        std::string text(list);
        std::size_t at = 0;
        while (at <= text.size()) {
            const std::size_t comma = text.find(',', at);
            const std::string item = text.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
            const int n = std::atoi(item.c_str());
            if (n >= 1) counts.push_back(n);
            if (comma == std::string::npos) break;
            at = comma + 1;
        }
    }
    if (counts.empty()) {
        for (int t = 1; t <= default_max; ++t) counts.push_back(t);
    }
    return counts;
}

}  // namespace cbm_bench
