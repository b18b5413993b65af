// Shared pieces of cbm's benchmarks.
#pragma once

#include <benchmark/benchmark.h>

#include <cstdio>

namespace cbm_bench {

// The callback body every library runs: keeps the argument alive, touches no
// shared memory, so that only the dispatch mechanism is measured.
inline void body(int x) { benchmark::DoNotOptimize(x); }

// Prints, once per process, that a peer was not built in.
inline void note_missing(const char* peer, const char* package) {
    std::fprintf(stderr, "note: %s not installed (Debian package %s); its rows are skipped\n", peer, package);
}

}  // namespace cbm_bench
