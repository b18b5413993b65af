// Bytes live on the heap, counted by a replacement of the global operator
// new (live_bytes.cpp). A program that links live_bytes.cpp measures memory
// as a count, not a time: a leak shows as bytes that never come back.
#pragma once

#include <cstdint>

namespace cbm_test {

// The bytes currently allocated through operator new (usable sizes).
std::int64_t live_bytes() noexcept;

}  // namespace cbm_test
